"""An AutoscalePolicy's spec as plain, checked values (pure: no I/O, no kopf).

The API server already validated the object against the CRD's schema and CEL rules; this
module turns it into what the tick needs and applies the defaults that live outside the CRD:
omitted queries are exactly :data:`qscale.features.PROMQL`, omitted behavior fields are the
settings the model was trained under (its manifest's ``serving.shield``), else
:class:`~qscale.guardrails.ShieldConfig`'s defaults. Anything the schema let through but that
cannot be served (e.g. an object stored before a CRD upgrade) raises :class:`SpecError` with one
line, which the operator reports as a condition instead of crashing.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from qscale import features
from qscale.actions import DECISION_INTERVAL_S
from qscale.guardrails import ShieldConfig
from qscale.operator.promql import TemplateError, check_template

__all__ = [
    "MODES",
    "MetricQueries",
    "ModelRef",
    "PolicySpec",
    "RolloutSpec",
    "Selector",
    "SpecError",
    "parse_duration",
    "parse_rollout",
    "parse_selector",
    "parse_spec",
    "shield_config",
]

MODES = ("Enforce", "Shadow", "Off")
TEMPLATES = ("request_rate", "latency_p95", "cpu_utilization", "cpu_peak")
"""The four metric templates, keyed as in :data:`qscale.features.PROMQL`."""
_SPEC_KEYS = {
    "requestRate": "request_rate",
    "latencyP95": "latency_p95",
    "cpuUtilization": "cpu_utilization",
    "cpuPeak": "cpu_peak",
}
_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")
"""A DNS-1123 subdomain: what the API server allows in a Deployment's name (and so nothing
that could close a PromQL string or regex when the operator fills a template with it)."""
_UNITS = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")


class SpecError(ValueError):
    """A policy that cannot be served; the message is one line."""


def parse_duration(value: Any, field: str) -> float:
    """Seconds in a Kubernetes duration string (``"1m30s"``, ``"250ms"``); numbers are seconds."""
    if isinstance(value, bool):
        raise SpecError(f"{field}: {value!r} is not a duration")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        s = value.strip()
        pos, seconds = 0, 0.0
        for m in _DURATION.finditer(s):
            if m.start() != pos:
                break
            seconds += float(m.group(1)) * _UNITS[m.group(2)]
            pos = m.end()
        if pos != len(s) or not s:
            raise SpecError(f"{field}: {value!r} is not a duration like 15s, 2m or 250ms")
    else:
        raise SpecError(f"{field}: {value!r} is not a duration")
    if not (math.isfinite(seconds) and seconds >= 0):
        raise SpecError(f"{field}: {value!r} must be a finite duration >= 0")
    return seconds


@dataclass(frozen=True)
class ModelRef:
    """``configmap`` empty: the operator's default model."""

    configmap: str = ""
    sha256: str = ""

    @property
    def is_default(self) -> bool:
        return not self.configmap


@dataclass(frozen=True)
class MetricQueries:
    address: str
    """Prometheus base URL; empty: the operator's default."""
    request_rate: str
    latency_p95: str
    cpu_utilization: str
    cpu_peak: str

    def template(self, name: str) -> str:
        return getattr(self, name)


@dataclass(frozen=True)
class Behavior:
    """The behavior fields the user set (``None``: take the model's trained value)."""

    max_step_up_pods: int | None = None
    max_step_up_percent: float | None = None
    up_cooldown_s: float | None = None
    max_step_down_pods: int | None = None
    max_step_down_percent: float | None = None
    down_cooldown_s: float | None = None
    down_stabilization_s: float | None = None

    def explicit(self) -> dict[str, float]:
        # Read the fields directly: dataclasses.asdict deep-copies, and this runs twice per
        # policy per tick.
        return {k: v for k in _BEHAVIOR_FIELDS if (v := getattr(self, k)) is not None}


_BEHAVIOR_FIELDS = tuple(f.name for f in dataclasses.fields(Behavior))


@dataclass(frozen=True)
class CanarySpec:
    """``spec.canary``: a candidate model deciding a fraction of the policy's time."""

    model: ModelRef
    fraction: float
    """Share of each period the candidate decides (its first part; the incumbent the rest)."""
    period_s: float
    window_s: float
    """What the candidate is judged over (its rates; promotion after one whole window)."""
    max_slo_violation: float
    """Roll back when the candidate's share of time with p95 over the SLO exceeds this."""
    max_interventions: float
    """Roll back when the share of its decisions the shield limited exceeds this."""
    promote: bool
    min_cost_saving: float
    """Promote when it is no worse on SLO and cheaper per request by at least this share."""
    incumbent_hpa: bool = False
    """The incumbent is the HPA rule (``spec.fallback``'s), not the policy's model."""


@dataclass(frozen=True)
class PolicySpec:
    """What the tick needs of one AutoscalePolicy."""

    target: str
    min_replicas: int
    max_replicas: int
    mode: str
    interval_s: float
    slo_s: float
    metrics: MetricQueries
    behavior: Behavior
    model: ModelRef
    fallback_target: float
    """HPA target utilization of the fallback, as a fraction (0.7 = 70 %)."""
    fallback_after: int
    shadow_window_s: float = 3600.0
    """Shadow mode: the window its score (:mod:`qscale.counterfactual`) is taken over."""
    canary: CanarySpec | None = None
    drift_window_s: float = 3600.0
    """The sliding window the model's inputs are compared with its training over."""
    capacity_rps: float | None = None
    """``spec.capacity.requestsPerSecondPerPod``: what one pod serves (None: not declared; the
    capacity is then estimated, or with ``capacity_estimate`` off the model's rate actions are
    unavailable)."""
    capacity_estimate: bool = True
    """``spec.capacity.estimate``: with no capacity declared, estimate it from the metrics
    (:func:`qscale.features.estimate_capacity`) and size with it."""
    slo_priority: float = 1.0
    """``spec.slo.priority``: the trade-off the model plays (2: a minute over the SLO weighs
    twice the default against the pods that would prevent it; 0.5: half), one of the model's
    inputs (:data:`qscale.features.SLO_PRIORITY_RANGE`)."""
    drift_action: str = "Report"
    """What drift does to the policy: ``Report`` (status, condition, Event, metrics only),
    ``Shadow`` (an Enforce policy stops writing) or ``Fallback`` (the HPA rule decides)."""


SHADOW_WINDOW_RANGE_S = (60.0, 86400.0)
DRIFT_WINDOW_RANGE_S = (60.0, 86400.0)
DRIFT_ACTIONS = ("Report", "Shadow", "Fallback")


def _int(spec: Mapping[str, Any], key: str, default: int | None, lo: int, field: str) -> int:
    value = spec.get(key, default)
    if value is None:
        raise SpecError(f"{field} is required")
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise SpecError(f"{field}: {value!r} is not a whole number")
    if value < lo:
        raise SpecError(f"{field} must be >= {lo}, got {value}")
    return int(value)


def _num(spec: Mapping[str, Any], key: str, field: str) -> float | None:
    value = spec.get(key)
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        raise SpecError(f"{field}: {value!r} must be a number >= 0")
    return float(value)


MAX_QUERY_CHARS = 8192
"""The longest PromQL override a policy may carry (the CRD's ``maxLength``)."""


def parse_spec(spec: Mapping[str, Any] | None) -> PolicySpec:
    """Parse ``spec`` of an AutoscalePolicy; raises :class:`SpecError` with one line."""
    if not isinstance(spec, Mapping):
        raise SpecError("spec is missing")
    target_ref = spec.get("targetRef") or {}
    if not isinstance(target_ref, Mapping) or not target_ref.get("name"):
        raise SpecError("spec.targetRef.name is required")
    if not _NAME.fullmatch(str(target_ref["name"])) or len(str(target_ref["name"])) > 253:
        raise SpecError("spec.targetRef.name must be a Kubernetes name ([a-z0-9.-], <= 253)")
    kind = target_ref.get("kind", "Deployment")
    api = target_ref.get("apiVersion", "apps/v1")
    if kind != "Deployment" or api != "apps/v1":
        raise SpecError(f"spec.targetRef must be an apps/v1 Deployment, got {api} {kind}")
    lo = _int(spec, "minReplicas", 1, 1, "spec.minReplicas")
    hi = _int(spec, "maxReplicas", None, 1, "spec.maxReplicas")
    if lo > hi:
        raise SpecError(f"spec.minReplicas ({lo}) must be <= spec.maxReplicas ({hi})")
    mode = spec.get("mode", "Enforce")
    if mode not in MODES:
        raise SpecError(f"spec.mode must be one of {', '.join(MODES)}, got {mode!r}")
    interval = parse_duration(spec.get("interval", f"{DECISION_INTERVAL_S:g}s"), "spec.interval")
    if interval < 1.0:
        raise SpecError(f"spec.interval must be at least 1s, got {spec.get('interval')!r}")
    slo = (spec.get("slo") or {}).get("latencyP95")
    if slo is None:
        raise SpecError("spec.slo.latencyP95 is required")
    slo_s = parse_duration(slo, "spec.slo.latencyP95")
    if slo_s <= 0:
        raise SpecError("spec.slo.latencyP95 must be > 0")
    priority = _num(spec["slo"], "priority", "spec.slo.priority")
    priority = 1.0 if priority is None else priority
    lo_p, hi_p = features.SLO_PRIORITY_RANGE
    if not lo_p <= priority <= hi_p:
        raise SpecError(
            f"spec.slo.priority must be between {lo_p:g} and {hi_p:g}, got {priority:g}"
        )

    m = spec.get("metrics") or {}
    queries = {}
    for key, name in _SPEC_KEYS.items():
        q = m.get(key) or features.PROMQL[name]
        if not isinstance(q, str):
            raise SpecError(f"spec.metrics.{key} must be a PromQL string")
        if len(q) > MAX_QUERY_CHARS:  # the CRD's maxLength, also where the schema is older
            raise SpecError(f"spec.metrics.{key} is longer than {MAX_QUERY_CHARS} characters")
        try:
            check_template(q)
        except TemplateError as e:
            raise SpecError(f"spec.metrics.{key}: {e}") from None
        queries[name] = q
    address = ((m.get("prometheus") or {}).get("address") or "").rstrip("/")
    metrics = MetricQueries(address=address, **queries)

    b = spec.get("behavior") or {}
    up, down = b.get("scaleUp") or {}, b.get("scaleDown") or {}

    def opt_dur(d: Mapping[str, Any], key: str, field: str) -> float | None:
        return None if d.get(key) is None else parse_duration(d[key], field)

    def opt_pods(d: Mapping[str, Any], key: str, field: str) -> int | None:
        return None if d.get(key) is None else _int(d, key, None, 1, field)

    behavior = Behavior(
        max_step_up_pods=opt_pods(up, "maxPods", "spec.behavior.scaleUp.maxPods"),
        max_step_up_percent=_num(up, "maxPercent", "spec.behavior.scaleUp.maxPercent"),
        up_cooldown_s=opt_dur(up, "cooldown", "spec.behavior.scaleUp.cooldown"),
        max_step_down_pods=opt_pods(down, "maxPods", "spec.behavior.scaleDown.maxPods"),
        max_step_down_percent=_num(down, "maxPercent", "spec.behavior.scaleDown.maxPercent"),
        down_cooldown_s=opt_dur(down, "cooldown", "spec.behavior.scaleDown.cooldown"),
        down_stabilization_s=opt_dur(
            down, "stabilizationWindow", "spec.behavior.scaleDown.stabilizationWindow"
        ),
    )

    model_ref = _model_ref(spec.get("model") or {}, "spec.model")

    fb = spec.get("fallback") or {}
    target_pct = _int(fb, "targetUtilization", 70, 1, "spec.fallback.targetUtilization")
    after = _int(fb, "afterFailedTicks", 3, 1, "spec.fallback.afterFailedTicks")
    sh = spec.get("shadow") or {}
    window = parse_duration(sh.get("window", "1h"), "spec.shadow.window")
    lo_w, hi_w = SHADOW_WINDOW_RANGE_S
    if not lo_w <= window <= hi_w:
        raise SpecError(f"spec.shadow.window must be between 1m and 24h, got {sh.get('window')!r}")
    canary = _canary(spec.get("canary"), interval)
    dr = spec.get("drift") or {}
    drift_window = parse_duration(dr.get("window", "1h"), "spec.drift.window")
    if not DRIFT_WINDOW_RANGE_S[0] <= drift_window <= DRIFT_WINDOW_RANGE_S[1]:
        raise SpecError(f"spec.drift.window must be between 1m and 24h, got {dr.get('window')!r}")
    drift_action = dr.get("action", "Report")
    if drift_action not in DRIFT_ACTIONS:
        raise SpecError(
            f"spec.drift.action must be one of {', '.join(DRIFT_ACTIONS)}, got {drift_action!r}"
        )
    cap = spec.get("capacity") or {}
    if not isinstance(cap, Mapping):
        raise SpecError("spec.capacity must be an object")
    capacity = _num(cap, "requestsPerSecondPerPod", "spec.capacity.requestsPerSecondPerPod")
    if capacity is not None and not 0 < capacity <= 1e9:
        raise SpecError(
            f"spec.capacity.requestsPerSecondPerPod must be > 0 and <= 1e9, got {capacity:g}"
        )
    estimate = cap.get("estimate", True)
    if not isinstance(estimate, bool):
        raise SpecError(f"spec.capacity.estimate must be true or false, got {estimate!r}")
    return PolicySpec(
        target=str(target_ref["name"]),
        min_replicas=lo,
        max_replicas=hi,
        mode=mode,
        interval_s=interval,
        slo_s=slo_s,
        metrics=metrics,
        behavior=behavior,
        model=model_ref,
        fallback_target=target_pct / 100.0,
        fallback_after=after,
        shadow_window_s=window,
        canary=canary,
        drift_window_s=drift_window,
        drift_action=drift_action,
        capacity_rps=capacity,
        capacity_estimate=estimate,
        slo_priority=priority,
    )


def _model_ref(model: Mapping[str, Any], field: str) -> ModelRef:
    cm = (model.get("configMapRef") or {}).get("name", "")
    sha = model.get("sha256", "")
    if bool(cm) != bool(sha):
        raise SpecError(f"{field} needs both configMapRef and sha256, or neither")
    if sha and not re.fullmatch(r"[a-f0-9]{64}", sha):
        raise SpecError(f"{field}.sha256 must be 64 lowercase hex digits")
    return ModelRef(configmap=cm, sha256=sha)


def _percent(d: Mapping[str, Any], key: str, default: float, field: str) -> float:
    value = _num(d, key, field)
    value = default if value is None else value
    if value > 100:
        raise SpecError(f"{field} is a percentage (0-100), got {value:g}")
    return value / 100.0


def _canary(c: Any, interval: float) -> CanarySpec | None:
    if not c:
        return None
    if not isinstance(c, Mapping):
        raise SpecError("spec.canary must be an object")
    ref, fraction = _candidate(c, "spec.canary")
    period = parse_duration(c.get("period", "10m"), "spec.canary.period")
    if period < 4 * interval:
        raise SpecError(
            f"spec.canary.period must be at least 4 intervals ({4 * interval:g}s), "
            f"got {c.get('period', '10m')!r}"
        )
    window = parse_duration(c.get("window", "1h"), "spec.canary.window")
    if window < 2 * period:
        raise SpecError("spec.canary.window must be at least 2 periods")
    incumbent = c.get("incumbent", "Model")
    if incumbent not in ("Model", "HPA"):
        raise SpecError(f"spec.canary.incumbent must be Model or HPA, got {incumbent!r}")
    return CanarySpec(
        model=ref,
        fraction=fraction,
        period_s=period,
        window_s=window,
        incumbent_hpa=incumbent == "HPA",
        **_judging(c, "spec.canary"),
    )


def _candidate(c: Mapping[str, Any], field: str) -> tuple[ModelRef, float]:
    """``model`` (a pinned ConfigMap: the candidate) and ``percent`` (5-95), as a canary and a
    rollout both take them."""
    ref = _model_ref(c.get("model") or {}, f"{field}.model")
    if ref.is_default:
        raise SpecError(f"{field}.model needs a configMapRef and its sha256 (the candidate)")
    fraction = _percent(c, "percent", 50, f"{field}.percent")
    if not 0.05 <= fraction <= 0.95:
        raise SpecError(f"{field}.percent must be between 5 and 95, got {fraction * 100:g}")
    return ref, fraction


def _judging(c: Mapping[str, Any], field: str) -> dict[str, Any]:
    """``rollback`` and ``promotion``, as a canary and a rollout both take them."""
    rb = c.get("rollback") or {}
    pr = c.get("promotion") or {}
    if not isinstance(rb, Mapping) or not isinstance(pr, Mapping):
        raise SpecError(f"{field}.rollback and {field}.promotion must be objects")
    return {
        "max_slo_violation": _percent(
            rb, "maxSloViolationPercent", 5, f"{field}.rollback.maxSloViolationPercent"
        ),
        "max_interventions": _percent(
            rb, "maxInterventionPercent", 50, f"{field}.rollback.maxInterventionPercent"
        ),
        "promote": bool(pr.get("enabled", False)),
        "min_cost_saving": _percent(
            pr, "minCostSavingPercent", 5, f"{field}.promotion.minCostSavingPercent"
        ),
    }


_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


@dataclass(frozen=True)
class Selector:
    """A Kubernetes label selector (``matchLabels`` and ``matchExpressions``, ANDed)."""

    match_labels: tuple[tuple[str, str], ...] = ()
    expressions: tuple[tuple[str, str, tuple[str, ...]], ...] = ()
    """(key, operator, values)."""

    def matches(self, labels: Mapping[str, str]) -> bool:
        if any(labels.get(k) != v for k, v in self.match_labels):
            return False
        for key, op, values in self.expressions:
            has = key in labels
            if op == "In" and not (has and labels[key] in values):
                return False
            if op == "NotIn" and has and labels[key] in values:
                return False
            if op == "Exists" and not has:
                return False
            if op == "DoesNotExist" and has:
                return False
        return True


def parse_selector(sel: Any, field: str) -> Selector:
    """A label selector; an empty one is refused (it would take every policy)."""
    if not isinstance(sel, Mapping):
        raise SpecError(f"{field} must be an object (matchLabels, matchExpressions)")
    ml = sel.get("matchLabels") or {}
    me = sel.get("matchExpressions") or []
    if not isinstance(ml, Mapping) or not isinstance(me, list):
        raise SpecError(f"{field}.matchLabels must be a map and matchExpressions a list")
    labels = tuple(sorted((str(k), str(v)) for k, v in ml.items()))
    exprs = []
    for i, e in enumerate(me):
        where = f"{field}.matchExpressions[{i}]"
        if not isinstance(e, Mapping) or not e.get("key"):
            raise SpecError(f"{where} needs a key")
        op, values = e.get("operator"), e.get("values") or []
        if op not in _OPERATORS:
            raise SpecError(f"{where}.operator must be one of {', '.join(_OPERATORS)}, got {op!r}")
        if not isinstance(values, list):
            raise SpecError(f"{where}.values must be a list")
        if (op in ("In", "NotIn")) != bool(values):
            raise SpecError(f"{where}: In and NotIn need values, Exists and DoesNotExist none")
        exprs.append((str(e["key"]), op, tuple(str(v) for v in values)))
    if not labels and not exprs:
        raise SpecError(f"{field} is empty: it would select every policy in the namespace")
    return Selector(labels, tuple(exprs))


@dataclass(frozen=True)
class RolloutSpec:
    """A ModelRollout's spec: a candidate model on a share of the targets of the Enforce
    policies its selector matches (:mod:`qscale.operator.rollout`)."""

    selector: Selector
    model: ModelRef
    fraction: float
    """Share of the matched policies whose targets the candidate decides."""
    window_s: float
    max_slo_violation: float
    max_interventions: float
    promote: bool
    min_cost_saving: float
    incumbent_hpa: bool = False
    """The incumbent is each member's HPA rule (its ``spec.fallback``), not its model."""


ROLLOUT_WINDOW_RANGE_S = (10.0, 7 * 86400.0)


def parse_rollout(spec: Mapping[str, Any] | None) -> RolloutSpec:
    """A ModelRollout's ``spec``, checked as the CRD's schema checks it (a reader of an older
    CRD, or of one applied without validation, gets the same refusals)."""
    if not isinstance(spec, Mapping):
        raise SpecError("spec must be an object")
    ref, fraction = _candidate(spec, "spec")
    window = parse_duration(spec.get("window", "1h"), "spec.window")
    lo, hi = ROLLOUT_WINDOW_RANGE_S
    if not lo <= window <= hi:
        raise SpecError(f"spec.window must be between 10s and 168h, got {spec.get('window')!r}")
    incumbent = spec.get("incumbent", "Model")
    if incumbent not in ("Model", "HPA"):
        raise SpecError(f"spec.incumbent must be Model or HPA, got {incumbent!r}")
    return RolloutSpec(
        selector=parse_selector(spec.get("selector"), "spec.selector"),
        model=ref,
        fraction=fraction,
        window_s=window,
        incumbent_hpa=incumbent == "HPA",
        **_judging(spec, "spec"),
    )


_SHIELD_FIELDS = {f.name for f in dataclasses.fields(ShieldConfig)}


def trained_shield(serving: Mapping[str, Any] | None) -> dict[str, float]:
    """The shield settings a model's manifest records (``serving.shield``); bounds that older
    manifests record there are not behaviour and are left out."""
    shield = (serving or {}).get("shield") or {}
    out = {}
    for k, v in shield.items() if isinstance(shield, Mapping) else ():
        if k in _SHIELD_FIELDS and isinstance(v, int | float) and not isinstance(v, bool):
            out[k] = v
    return out


def shield_config(spec: PolicySpec, serving: Mapping[str, Any] | None = None) -> ShieldConfig:
    """The policy's shield behaviour: its explicit behavior over the model's trained settings
    over :class:`ShieldConfig`'s defaults (its bounds reach the shield per target, as tensors)."""
    values: dict[str, Any] = {**trained_shield(serving), **spec.behavior.explicit()}
    for k in ("max_step_up_pods", "max_step_down_pods"):
        if k in values:
            values[k] = int(values[k])
    try:
        return ShieldConfig(**values)
    except ValueError as e:
        raise SpecError(str(e)) from None


def training_mismatch(spec: PolicySpec, serving: Mapping[str, Any] | None) -> list[str]:
    """What the policy sets differently from what its model was trained under (empty: all
    matches, or the manifest does not say). One short phrase per difference."""
    if not isinstance(serving, Mapping):
        return []
    out = []
    trained_interval = serving.get("interval_s")
    if isinstance(trained_interval, int | float) and not math.isclose(
        float(trained_interval), spec.interval_s, rel_tol=1e-6
    ):
        out.append(f"interval {spec.interval_s:g}s (trained {float(trained_interval):g}s)")
    trained = trained_shield(serving)
    for k, v in spec.behavior.explicit().items():
        if k in trained and not math.isclose(float(trained[k]), float(v), rel_tol=1e-6):
            out.append(f"{k} {v:g} (trained {float(trained[k]):g})")
    tu = serving.get("target_utilization")
    if isinstance(tu, int | float) and not math.isclose(
        float(tu), spec.fallback_target, rel_tol=1e-6
    ):
        out.append(
            f"fallback.targetUtilization {spec.fallback_target * 100:g}% "
            f"(trained {float(tu) * 100:g}%)"
        )
    return out
