"""An AutoscalePolicy's status: conditions, the shield's memory, and minimal patches (pure).

The status is written only when something in it changes: it holds no timestamps that move by
themselves (a condition's ``lastTransitionTime`` moves only when its status flips, the last
action's time only with a new action), Q-values only with the action they led to, and the
shield's memory only as far as it matters after a restart
(:meth:`qscale.guardrails.ShieldState.to_records`). So 1,000
policies in a steady state cost no writes at all.

Reason codes are :class:`qscale.guardrails.Reason` names plus the operator's own
(:class:`OpReason`); the same strings go into status, Events and the operator's metrics.

What a tick made of one policy becomes its status here, from plain data: the policy's spec, its
:class:`Verdict` (the decision as the tick left it), the observation and the little memory the
status needs. The Events that go with it come back as :class:`Notice` values; the tick posts
them and keeps the memory.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from qscale import actions
from qscale.guardrails import Reason
from qscale.operator.models import Model, describe
from qscale.operator.prom import Observation
from qscale.operator.spec import PolicySpec, training_mismatch

__all__ = [
    "CONDITION_TYPES",
    "FALLBACK_ENDED",
    "HPA_LIMIT_REASONS",
    "LIMIT_REASONS",
    "Notice",
    "OpReason",
    "Verdict",
    "base_status",
    "decided_status",
    "failure_code",
    "failure_message",
    "fallback_notice",
    "iso",
    "last_action",
    "merge_patch",
    "metrics_condition",
    "model_conditions",
    "model_problem",
    "model_status",
    "outside_notice",
    "percent",
    "problem_status",
    "scale_failed_notice",
    "scaled_notice",
    "scaling_conditions",
    "set_condition",
    "shadow_action",
    "target_conflict_message",
]

CONDITION_TYPES = (
    "Ready",
    "MetricsAvailable",
    "ModelReady",
    "ScalingActive",
    "ScalingLimited",
    "MatchesTraining",
)


class OpReason(StrEnum):
    """Operator-level reason codes (beside :class:`~qscale.guardrails.Reason`'s)."""

    FALLBACK_ACTIVE = "FALLBACK_ACTIVE"
    """The HPA rule decides (after ``afterFailedTicks`` ticks without a model decision)."""
    FALLBACK_ENDED = "FALLBACK_ENDED"
    MODEL_LOADED = "MODEL_LOADED"
    MODEL_REFUSED = "MODEL_REFUSED"
    """The model could not be loaded or verified (sha256, spec hash, ConfigMap missing)."""
    TARGET_MISSING = "TARGET_MISSING"
    INVALID_SPEC = "INVALID_SPEC"
    MODE_SHADOW = "MODE_SHADOW"
    MODE_OFF = "MODE_OFF"
    TRAINING_MISMATCH = "TRAINING_MISMATCH"
    TRAINING_UNKNOWN = "TRAINING_UNKNOWN"
    OUTSIDE_SCALE = "OUTSIDE_SCALE"
    SCALE_FAILED = "SCALE_FAILED"
    METRICS_OK = "METRICS_OK"
    QUERY_FAILED = "QUERY_FAILED"
    TARGET_CONFLICT = "TARGET_CONFLICT"
    """Another AutoscalePolicy in mode Enforce already scales the same Deployment."""
    PROMETHEUS_NOT_ALLOWED = "PROMETHEUS_NOT_ALLOWED"
    """The policy names a Prometheus the operator's allow-list does not hold."""
    KILL_SWITCH = "KILL_SWITCH"
    """A kill switch holds the policy: the HPA rule decides, or it only reports."""
    KILL_SWITCH_RELEASED = "KILL_SWITCH_RELEASED"
    CANARY_INCUMBENT_HPA = "CANARY_INCUMBENT_HPA"
    """A canary's incumbent is the HPA rule, and this is its part of the period."""
    MODEL_DRIFT = "MODEL_DRIFT"
    """The model's inputs are unlike its training (``spec.drift``); with ``action: Fallback``
    the HPA rule decides, with ``Shadow`` nothing is written."""
    MODEL_DRIFT_ENDED = "MODEL_DRIFT_ENDED"


LIMIT_REASONS = frozenset(
    r.name
    for r in (
        Reason.STABILIZED,
        Reason.COOLDOWN_UP,
        Reason.COOLDOWN_DOWN,
        Reason.STEP_LIMIT_UP,
        Reason.STEP_LIMIT_DOWN,
        Reason.AT_MIN,
        Reason.AT_MAX,
    )
)
"""Decision reasons that mean the shield changed the proposal."""
HPA_LIMIT_REASONS = frozenset(
    (
        "ScaleUpStabilized",
        "ScaleDownStabilized",
        "ScaleUpLimit",
        "ScaleDownLimit",
        "TooManyReplicas",
        "TooFewReplicas",
        "AboveMax",
        "BelowMin",
    )
)
"""The HPA controller's own condition reasons that mean a limit held its proposal."""


_CONDITION_ORDER = {t: i for i, t in enumerate(CONDITION_TYPES)}


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: Sequence[Mapping[str, Any]] | None,
    type_: str,
    status: bool | None,
    reason: str,
    message: str,
    now: float,
    generation: int,
) -> list[dict[str, Any]]:
    """``conditions`` with ``type_`` set; its ``lastTransitionTime`` moves only on a flip."""
    value = "Unknown" if status is None else ("True" if status else "False")
    out = []
    old = None
    for c in conditions or ():
        if c.get("type") != type_:
            out.append(dict(c))
        elif old is None:
            old = c
    since = old.get("lastTransitionTime") if old and old.get("status") == value else None
    if since is None:
        since = iso(now)
    out.append(
        {
            "type": type_,
            "status": value,
            "reason": reason,
            "message": message[:1000],
            "lastTransitionTime": since,
            "observedGeneration": generation,
        }
    )
    out.sort(key=lambda c: _CONDITION_ORDER.get(c.get("type", ""), len(_CONDITION_ORDER)))
    return out


def json_copy(value: Any) -> Any:
    """A deep copy of JSON-shaped data (mappings, lists, scalars): what ``copy.deepcopy`` gives
    for it, about 3x faster (no memo; a status is a tree). Mappings become dicts, tuples lists."""
    t = type(value)
    if t is dict:
        return {k: json_copy(v) for k, v in value.items()}
    if t is list:
        return [json_copy(v) for v in value]
    if t is str or t is int or t is float or t is bool or value is None:
        return value
    if isinstance(value, Mapping):
        return {k: json_copy(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_copy(v) for v in value]
    return copy.deepcopy(value)


def merge_patch(old: Any, new: Any) -> Any:
    """The JSON merge patch (RFC 7386) that turns ``old`` into ``new``; ``None`` when equal."""
    # ``type(x) is dict`` first, here and below: isinstance against the Mapping ABC is slow,
    # and a status is dicts all the way down (this diff runs for every policy every tick).
    if not (
        (type(old) is dict or isinstance(old, Mapping))
        and (type(new) is dict or isinstance(new, Mapping))
    ):
        return None if _same(old, new) else new
    patch: dict[str, Any] = {}
    for k in old.keys() - new.keys():
        patch[k] = None
    for k, v in new.items():
        if k not in old:
            patch[k] = v
            continue
        o = old[k]
        if (type(v) is dict or isinstance(v, Mapping)) and (
            type(o) is dict or isinstance(o, Mapping)
        ):
            sub = merge_patch(o, v)
            if sub is not None:
                patch[k] = sub
        elif not _same(o, v):
            patch[k] = v
    return patch or None


def _same(a: Any, b: Any) -> bool:
    ta = type(a)
    if ta is type(b):  # the common cases, exactly
        if ta is str or ta is int or a is None:
            return a == b
        if ta is dict:
            return merge_patch(a, b) is None
        if ta is list:
            return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b or (a == b and type(a) is type(b))
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return merge_patch(a, b) is None
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


_DECISION_KEYS = ("desiredReplicas", "wouldScaleTo", "fallback")
"""What a status says only while the policy is decided (gone with a problem or mode Off)."""


@dataclass(frozen=True)
class Notice:
    """An Event to post about a policy (as data: the tick posts it)."""

    type: str
    """``Normal`` or ``Warning``."""
    reason: str
    message: str


@dataclass
class Verdict:
    """What the tick made of one policy: its count, and why."""

    desired: int | None = None
    """The replica count decided (``None``: no count this tick)."""
    action: str = ""
    """The action's name, ``hold`` or ``hpa`` (the fallback)."""
    reason: str = ""
    """A :class:`~qscale.guardrails.Reason` name or an :class:`OpReason` value."""
    q_values: list[float] | None = None
    """The model's Q-values, when its decision stands."""
    proposal: int | None = None
    """What the model's action proposed before the shield."""
    by_fallback: bool = False
    model_decided: bool = False
    """The model's decision stands (metrics were usable)."""
    hpa_reason: str = ""
    """The HPA rule's reason (the fallback's decisions)."""
    model_output_invalid: bool = False
    """The model answered NaN/inf Q-values this tick (its action was not followed)."""
    capacity_estimate: float = math.nan
    """The per-pod capacity (req/s) the model decided with, estimated from the metrics (NaN:
    declared in the spec, or none)."""


def base_status(status: Mapping[str, Any], generation: int) -> dict[str, Any]:
    """The status as last written, for ``generation``."""
    st = dict(status)
    st["observedGeneration"] = generation
    return st


def target_conflict_message(target: str, owner: str) -> str:
    return (
        f"Deployment {target} is already scaled by AutoscalePolicy {owner} (mode Enforce, the "
        "older one); this policy writes nothing: delete one, or set this one to mode Shadow"
    )


def problem_status(
    status: Mapping[str, Any], generation: int, reason: OpReason, message: str, now: float
) -> dict[str, Any]:
    """The status of a policy that cannot be decided (its spec, its target)."""
    g, code = generation, reason.value
    st = dict(status)
    conds = st.get("conditions")
    conds = set_condition(conds, "Ready", False, code, message, now, g)
    conds = set_condition(conds, "ScalingActive", False, code, message, now, g)
    conds = set_condition(conds, "MetricsAvailable", None, code, "no target to observe", now, g)
    st["conditions"] = conds
    st["reason"] = code
    for k in (*_DECISION_KEYS, "replicas"):  # no target observed: no count to show
        st.pop(k, None)
    return st


def model_status(spec: PolicySpec, model: Model | None) -> dict[str, str]:
    """The status's ``model``: the one served, else the one asked for."""
    if model is not None:
        return describe(model)
    if not spec.model.is_default:
        return {"name": spec.model.configmap, "sha256": spec.model.sha256}
    return {"name": "default"}


def model_conditions(
    conds: list[dict[str, Any]] | None,
    spec: PolicySpec,
    model: Model | None,
    model_error: str,
    now: float,
    generation: int,
    output_invalid: bool = False,
) -> list[dict[str, Any]]:
    """``Ready``, ``ModelReady`` and (with a model) ``MatchesTraining``; ``output_invalid``:
    the model answered NaN/inf this tick (``ModelReady=False``, the fallback takes over)."""
    g = generation
    ready = model is not None or spec.mode == "Off"
    ready_reason = "OK" if ready else OpReason.MODEL_REFUSED.value
    conds = set_condition(conds, "Ready", ready, ready_reason, "" if ready else model_error, now, g)
    if model is None:
        refused = OpReason.MODEL_REFUSED.value
        return set_condition(conds, "ModelReady", False, refused, model_error, now, g)
    loaded = f"{model.name} sha256 {model.digest[:12]} spec {model.spec_hash}"
    if output_invalid:
        code = Reason.MODEL_OUTPUT_INVALID.name
        why = f"{loaded} answered NaN/inf Q-values: its action is not followed"
        conds = set_condition(conds, "ModelReady", False, code, why, now, g)
    else:
        conds = set_condition(
            conds, "ModelReady", True, OpReason.MODEL_LOADED.value, loaded, now, g
        )
    if model.serving is None:
        unknown = "the model's manifest does not record its serving settings"
        code = OpReason.TRAINING_UNKNOWN.value
        return set_condition(conds, "MatchesTraining", None, code, unknown, now, g)
    diff = training_mismatch(spec, model.serving)
    code = OpReason.TRAINING_MISMATCH.value if diff else "OK"
    return set_condition(conds, "MatchesTraining", not diff, code, "; ".join(diff), now, g)


def metrics_condition(
    conds: list[dict[str, Any]] | None,
    obs: Observation,
    now: float,
    generation: int,
    stale_after_s: float = math.inf,
) -> list[dict[str, Any]]:
    """``MetricsAvailable``: all three series and fresh; else why not: a Prometheus the
    operator does not allow, a failed query, data that came back unusable (a gap, a NaN p95
    with traffic), series missing, or the newest sample older than ``stale_after_s``."""
    g = generation
    if obs.refused:
        code = OpReason.PROMETHEUS_NOT_ALLOWED.value
        return set_condition(conds, "MetricsAvailable", False, code, obs.refused, now, g)
    if obs.present and obs.age_s > stale_after_s:
        msg = (
            f"the newest request-rate point is {obs.age_s:.0f}s old "
            f"(the operator holds past {stale_after_s:g}s)"
        )
        code = Reason.METRICS_STALE.name
        return set_condition(conds, "MetricsAvailable", False, code, msg, now, g)
    if obs.present:
        note = "; ".join(sorted(set(obs.gaps)))[:500]  # what was read as no history
        return set_condition(
            conds, "MetricsAvailable", True, OpReason.METRICS_OK.value, note, now, g
        )
    if obs.errors:
        errors = "; ".join(sorted(set(obs.errors)))[:500]
        code = OpReason.QUERY_FAILED.value
        return set_condition(conds, "MetricsAvailable", False, code, errors, now, g)
    series = (
        ("request_rate", obs.has_rate),
        ("latency_p95", obs.has_latency),
        ("cpu_utilization", obs.has_cpu),
        ("cpu_peak", obs.has_cpu_peak),
    )
    missing = [n for n, ok in series if not ok and not any(x.startswith(n) for x in obs.gaps)]
    why = [*sorted(set(obs.gaps)), *([f"no series for {', '.join(missing)}"] if missing else [])]
    code = Reason.METRICS_MISSING.name
    return set_condition(conds, "MetricsAvailable", False, code, "; ".join(why)[:500], now, g)


def scaling_conditions(
    conds: list[dict[str, Any]] | None,
    spec: PolicySpec,
    verdict: Verdict,
    reason: str,
    now: float,
    generation: int,
    kill: str = "",
) -> list[dict[str, Any]]:
    """``ScalingActive`` (who decides, if anyone) and ``ScalingLimited`` (a limit held the
    proposal); ``reason`` is the status's, ``kill`` the kill switch's text (if one holds it)."""
    g = generation
    if kill:
        shadow = "; Shadow: recorded, never written" if spec.mode == "Shadow" else ""
        active = (spec.mode == "Enforce", OpReason.KILL_SWITCH.value, kill + shadow)
    elif spec.mode == "Shadow":
        shadow = "Shadow: decisions are recorded, never written"
        active = (False, OpReason.MODE_SHADOW.value, shadow)
    elif verdict.by_fallback and reason == OpReason.CANARY_INCUMBENT_HPA.value:
        rule = (
            f"canary: the HPA rule at {spec.fallback_target * 100:g}% CPU (the incumbent) decides"
        )
        active = (True, reason, rule)
    elif verdict.by_fallback:
        rule = f"the HPA rule at {spec.fallback_target * 100:g}% CPU decides"
        active = (True, OpReason.FALLBACK_ACTIVE.value, rule)
    elif verdict.model_decided:
        active = (True, "OK", "the model decides")
    else:
        active = (False, reason or Reason.METRICS_MISSING.name, "holding: no decision this tick")
    conds = set_condition(conds, "ScalingActive", *active, now, g)
    lim = verdict.hpa_reason if verdict.by_fallback else verdict.reason
    limited = lim in LIMIT_REASONS or lim in HPA_LIMIT_REASONS
    return set_condition(conds, "ScalingLimited", limited, lim or "OK", "", now, g)


def _off_conditions(
    conds: list[dict[str, Any]] | None, now: float, generation: int, kill: str = ""
) -> list[dict[str, Any]]:
    off = OpReason.KILL_SWITCH.value if kill else OpReason.MODE_OFF.value
    why = kill or "mode is Off"
    conds = set_condition(conds, "ScalingActive", False, off, why, now, generation)
    return set_condition(conds, "ScalingLimited", False, off, "", now, generation)


def failure_code(model: Model | None, obs: Observation) -> str:
    """Why the model did not decide, as the status's ``fallback.reason``."""
    if model is None:
        return OpReason.MODEL_REFUSED.value
    if not obs.present:
        return Reason.METRICS_MISSING.name
    return Reason.METRICS_STALE.name


def failure_message(model: Model | None, model_error: str, reason: str) -> str:
    """Why the model did not decide, for the fallback's Event."""
    if model is None:
        return f"{OpReason.MODEL_REFUSED.value}: {model_error}"
    return reason or Reason.METRICS_MISSING.name


def decided_status(
    status: Mapping[str, Any],
    *,
    spec: PolicySpec,
    generation: int,
    replicas: int,
    model: Model | None,
    model_error: str,
    obs: Observation,
    verdict: Verdict,
    last: dict[str, Any] | None,
    outside: tuple[int, int] | None,
    fallback_since: float | None,
    shield_record: dict[str, Any] | None,
    now: float,
    stale_after_s: float = math.inf,
    kill: str = "",
    shadow: dict[str, Any] | None = None,
    canary: dict[str, Any] | None = None,
    drift: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The status of a policy the tick decided (or, in mode Off, observed): ``replicas`` is
    the target's count after the tick's write, ``last`` a new ``lastAction`` (if any),
    ``outside`` a scale by someone else (from, to), ``shield_record`` the shield's memory
    (:meth:`qscale.guardrails.ShieldState.to_records`) and ``kill`` the text of the kill
    switch that holds it (:mod:`qscale.operator.killswitch`; a switch to Off arrives as mode
    Off) and ``shadow`` the score of a policy in Shadow mode
    (:mod:`qscale.operator.shadowscore`; in another mode the key goes) and ``canary`` the
    state of an Enforce policy's canary (:mod:`qscale.operator.canary`), or of its part in a
    ModelRollout (:mod:`qscale.operator.rollout`; kept as it was while a kill switch holds the
    policy, gone with the spec's canary and the membership) and ``drift`` the judgement of
    its inputs against the model's training (:mod:`qscale.operator.driftwatch`; ``None``: no
    model, the key and the ``ModelDrift`` condition go)."""
    g = generation
    st = dict(status)
    if canary is not None:
        st["canary"] = canary
    elif spec.canary is None or spec.mode != "Enforce":
        st.pop("canary", None)
    if shadow is not None and spec.mode == "Shadow":
        st["shadow"] = shadow
    else:
        st.pop("shadow", None)
    conds = st.get("conditions")
    st["replicas"] = replicas
    if last is not None:
        st["lastAction"] = last
    if outside is not None:
        st["lastOutsideScale"] = {"from": outside[0], "to": outside[1], "time": iso(now)}
    st["model"] = model_status(spec, model)
    conds = model_conditions(conds, spec, model, model_error, now, g, verdict.model_output_invalid)
    conds = metrics_condition(conds, obs, now, g, stale_after_s)
    conds = drift_condition(conds, drift, spec, now, g)
    if drift is not None:
        st["drift"] = drift
    else:
        st.pop("drift", None)
    if spec.mode == "Off":
        conds = _off_conditions(conds, now, g, kill)
        st["reason"] = (OpReason.KILL_SWITCH if kill else OpReason.MODE_OFF).value
        for k in (*_DECISION_KEYS, "lastAction"):  # an older mode's last action is no news
            st.pop(k, None)
        st["conditions"] = conds
        return st
    if verdict.desired is not None:
        st["desiredReplicas"] = verdict.desired
    if spec.mode == "Shadow" and verdict.desired is not None:
        st["wouldScaleTo"] = verdict.desired
    else:
        st.pop("wouldScaleTo", None)
    st["reason"] = verdict.reason or OpReason.MODEL_REFUSED.value
    if fallback_since is not None:
        code = (
            OpReason.KILL_SWITCH.value
            if kill
            else OpReason.MODEL_DRIFT.value
            if verdict.reason == OpReason.MODEL_DRIFT.value
            else failure_code(model, obs)
        )
        st["fallback"] = {"active": True, "since": iso(fallback_since), "reason": code}
    else:
        st.pop("fallback", None)
    conds = scaling_conditions(conds, spec, verdict, st["reason"], now, g, kill)
    if shield_record is not None:
        rec = dict(shield_record)
        if spec.mode == "Shadow":  # it never scales: a would-be proposal is no memory to keep
            rec.pop("proposals", None)
        if rec:
            st["shield"] = rec
    st["conditions"] = conds
    return st


def drift_condition(
    conds: list[dict[str, Any]] | None,
    drift: Mapping[str, Any] | None,
    spec: PolicySpec,
    now: float,
    generation: int,
) -> list[dict[str, Any]]:
    """``ModelDrift``: True while the inputs are unlike the model's training (what it does to
    the policy per ``spec.drift.action``), False when judged alike, Unknown before a judgement
    or without a reference; gone without a model."""
    if drift is None:
        return [dict(c) for c in conds or [] if c.get("type") != "ModelDrift"]
    state = drift.get("state")
    message = str(drift.get("message", ""))
    if state == "Drifting":
        effect = {
            "Report": "reported only (spec.drift.action: Report)",
            "Shadow": "the policy writes nothing while it lasts (spec.drift.action: Shadow)",
            "Fallback": "the HPA rule decides while it lasts (spec.drift.action: Fallback)",
        }[spec.drift_action]
        return set_condition(
            conds, "ModelDrift", True, "FEATURE_DRIFT", f"{message}; {effect}", now, generation
        )
    if state == "Normal":
        return set_condition(conds, "ModelDrift", False, "NO_DRIFT", message, now, generation)
    reason = "NO_REFERENCE" if state == "NoReference" else "INSUFFICIENT_DATA"
    return set_condition(conds, "ModelDrift", None, reason, message, now, generation)


def model_problem(spec: PolicySpec, model: Model | None) -> str:
    """The operator-level problem a decided policy has (``""``: none)."""
    return OpReason.MODEL_REFUSED.value if model is None and spec.mode != "Off" else ""


def last_action(replicas: int, verdict: Verdict, now: float, applied: bool) -> dict[str, Any]:
    """The status's ``lastAction`` for a step ``replicas -> verdict.desired``."""
    v = verdict
    a = {
        "from": replicas,
        "to": v.desired,
        "action": v.action,
        "reason": v.reason,
        "time": iso(now),
        "applied": applied,
        "summary": f"{replicas}->{v.desired} {v.action}" + ("" if applied else " (shadow)"),
    }
    if v.q_values is not None and not v.by_fallback:
        a["qValues"] = dict(zip(actions.ACTION_NAMES, v.q_values, strict=True))
        if math.isfinite(v.capacity_estimate):
            a["estimatedCapacityPerPod"] = round(v.capacity_estimate, 2)
    return a


def shadow_action(
    status: Mapping[str, Any], replicas: int, verdict: Verdict, now: float
) -> dict[str, Any] | None:
    """A would-be step's ``lastAction`` (Shadow), recorded once: ``None`` while the one in
    ``status`` already says it."""
    prev = status.get("lastAction") or {}
    seen = (prev.get("from"), prev.get("to"), prev.get("action"), prev.get("applied"))
    if seen == (replicas, verdict.desired, verdict.action, False):
        return None
    return last_action(replicas, verdict, now, applied=False)


def scaled_notice(
    spec: PolicySpec, model: Model | None, obs: Observation, verdict: Verdict, replicas: int
) -> Notice:
    """The Event of a step ``replicas -> verdict.desired`` that landed."""
    v = verdict
    if v.by_fallback:
        cpu = percent(obs.cpu_utilization)
        how = f"by the HPA rule ({v.hpa_reason}, CPU {cpu} of {spec.fallback_target * 100:g}%)"
    elif model is not None:
        how = f"({v.action}, model {model.name} {model.digest[:8]})"
    else:
        how = f"({v.reason})"
    return Notice("Normal", v.reason, f"scaled {spec.target} {replicas} -> {v.desired} {how}")


def scale_failed_notice(spec: PolicySpec, desired: int, error: str) -> Notice:
    msg = f"scale {spec.target} to {desired}: {error}"
    return Notice("Warning", OpReason.SCALE_FAILED.value, msg)


def outside_notice(spec: PolicySpec, outside: tuple[int, int]) -> Notice:
    a, b = outside
    msg = f"{spec.target} was scaled {a} -> {b} by someone else (a scale event for the cooldowns)"
    return Notice("Normal", OpReason.OUTSIDE_SCALE.value, msg)


def fallback_notice(spec: PolicySpec, failed: int, why: str) -> Notice:
    """The HPA rule takes over after ``failed`` ticks without a model decision (``why``:
    :func:`failure_message`)."""
    msg = (
        f"{failed} ticks without a model decision ({why}): the HPA rule at "
        f"{spec.fallback_target * 100:g}% CPU takes over"
    )
    return Notice("Warning", OpReason.FALLBACK_ACTIVE.value, msg)


def drift_notice(
    before: Mapping[str, Any] | None, after: Mapping[str, Any] | None, spec: PolicySpec
) -> Notice | None:
    """The Event of a drift judgement that changed: into ``Drifting`` (a Warning that says
    what it does to the policy) or out of it."""
    was = (before or {}).get("state") == "Drifting"
    now_ = (after or {}).get("state") == "Drifting"
    if now_ and not was:
        effect = {
            "Report": "reported only",
            "Shadow": "nothing is written while it lasts",
            "Fallback": "the HPA rule decides while it lasts",
        }[spec.drift_action]
        what = (after or {}).get("message", "")
        msg = f"{what}; {effect} (spec.drift.action: {spec.drift_action})"
        return Notice("Warning", OpReason.MODEL_DRIFT.value, msg)
    if was and (after or {}).get("state") == "Normal":
        msg = f"inputs like the model's training again: {(after or {}).get('message', '')}"
        return Notice("Normal", OpReason.MODEL_DRIFT_ENDED.value, msg)
    return None


FALLBACK_ENDED = Notice("Normal", OpReason.FALLBACK_ENDED.value, "the model decides again")


def percent(u: float) -> str:
    return f"{u * 100:.0f}%" if math.isfinite(u) else "unknown"
