"""One policy's way through a tick (:class:`Row`), and the batched tensor work over rows.

A :class:`Row` is made for each policy with a target this tick; the tick fills in its
observation, then its :class:`~qscale.operator.status.Verdict` (here, from
:func:`qscale.decision.decide`, or the HPA rule's), then what the write did. The policy's memory
between ticks is its :class:`Runtime`, rebuilt from the status when it is first seen.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from qscale import actions, batching, decision, features
from qscale.guardrails import Reason, ShieldConfig, ShieldState, bound, record_scale
from qscale.operator import fallback as fb
from qscale.operator.deployments import Target
from qscale.operator.killswitch import Engaged
from qscale.operator.models import Model
from qscale.operator.prom import Observation, QueryGroup
from qscale.operator.spec import TEMPLATES, PolicySpec, SpecError, parse_spec, shield_config
from qscale.operator.status import OpReason, Verdict, json_copy

__all__ = [
    "IndexedPolicy",
    "PolicyIndex",
    "Row",
    "Runtime",
    "busy_pods",
    "decide_rows",
    "enforcers",
    "estimate_capacities",
    "fallback_inputs",
    "forward",
    "hold_within_bounds",
    "query_groups",
    "restore_shield",
    "shield_record",
    "signals_of",
    "take_fallback",
]

_FAILED = (
    int(Reason.METRICS_MISSING),
    int(Reason.METRICS_STALE),
    int(Reason.REPLICAS_UNKNOWN),
    int(Reason.MODEL_OUTPUT_INVALID),
)


@dataclass(frozen=True)
class IndexedPolicy:
    """What the operator keeps of one AutoscalePolicy (never the whole object)."""

    namespace: str
    name: str
    uid: str
    generation: int
    spec: PolicySpec | None
    error: str
    status: Mapping[str, Any]
    created: str = ""
    """``metadata.creationTimestamp`` (RFC 3339, so it sorts by time)."""
    labels: Mapping[str, str] = field(default_factory=dict)
    """``metadata.labels`` (what a ModelRollout's selector matches)."""

    @staticmethod
    def from_body(body: Mapping[str, Any], prev: IndexedPolicy | None = None) -> IndexedPolicy:
        """``prev``: what was kept of the same object before. Its parsed spec is reused when
        the object's generation is unchanged: with the status subresource only a change of
        the spec moves it, and most events are the operator's own status writes (a parse is
        about 0.7 ms, at 1,000 policies a second of every relist)."""
        meta = body.get("metadata") or {}
        uid = meta.get("uid", "")
        generation = int(meta.get("generation") or 0)
        if prev is not None and generation and (prev.uid, prev.generation) == (uid, generation):
            spec, error = prev.spec, prev.error
        else:
            try:
                spec, error = parse_spec(body.get("spec")), ""
            except SpecError as e:
                spec, error = None, str(e)
        return IndexedPolicy(
            namespace=meta.get("namespace", ""),
            name=meta.get("name", ""),
            uid=uid,
            generation=generation,
            spec=spec,
            error=error,
            status=json_copy(body.get("status") or {}),
            created=str(meta.get("creationTimestamp") or ""),
            labels={str(k): str(v) for k, v in (meta.get("labels") or {}).items()},
        )


class PolicyIndex:
    """Every AutoscalePolicy kopf has seen, by uid (the tick's input), fed by kopf's events.

    kopf relists after a broken watch (a 410 Gone, an API server restart) and hands over what
    the listing holds, but never reports the objects deleted while it was not watching: they
    would stay here, and be decided (and scale their Deployment) for good. :meth:`resync`
    drops them against a listing of the policies there are."""

    def __init__(self) -> None:
        self._by_uid: dict[str, IndexedPolicy] = {}
        self._seen: dict[str, int] = {}
        """The event count at each uid's last event."""
        self._events = 0

    def put(self, body: Mapping[str, Any]) -> None:
        uid = (body.get("metadata") or {}).get("uid", "")
        p = IndexedPolicy.from_body(body, self._by_uid.get(uid))
        self._events += 1
        self._by_uid[p.uid], self._seen[p.uid] = p, self._events

    def drop(self, uid: str) -> None:
        self._events += 1
        self._by_uid.pop(uid, None)
        self._seen.pop(uid, None)

    def values(self) -> list[IndexedPolicy]:
        return list(self._by_uid.values())

    def mark(self) -> int:
        """Take before the listing that is handed to :meth:`resync`."""
        return self._events

    def resync(self, listed: set[str], mark: int) -> list[str]:
        """Drop the policies indexed before ``mark`` that the listing (made after it) lacks:
        they were deleted. One indexed since may be newer than the listing: it stays."""
        gone = [u for u, seen in self._seen.items() if seen <= mark and u not in listed]
        for uid in gone:
            self.drop(uid)
        return gone


@dataclass
class Runtime:
    """The operator's memory of one policy between ticks."""

    uid: str
    status: dict[str, Any]
    """The status as last decided (the next tick's starting point, written or not: a refused
    write must not lose a ``lastAction``); it reaches the API after the tick, by
    :class:`~qscale.operator.statuswriter.StatusWriter`."""
    written: dict[str, Any] = field(default_factory=dict)
    """The status as last written (or as found): what a patch is taken against."""
    shield: ShieldState | None = None
    shield_config: ShieldConfig | None = None
    target_uid: str = ""
    """The Deployment object (its uid) the shield's memory belongs to ("": not known yet)."""
    hpa_state: Any = None
    failed: int = 0
    fallback_since: float | None = None
    next_due: float = 0.0
    problem: str = ""
    """The operator-level problem last reported by an Event (so that each is posted once)."""
    write_failing: bool = False
    logged_ts: float | None = None
    """When its last decision was logged (the next record links to it)."""
    judged_by: str = ""
    """The model (its metric label) whose decision the next tick's outcome judges ("": none)."""
    transition: tuple[str, float, int, bool] | None = None
    """The last Enforce model decision, for its TD error at the next tick: (model label,
    Q of the chosen action, replicas decided, whether that was a change)."""
    peak_busy: float = 0.0
    """Busy pods at the recent peak (decaying over a day): the reward's cost normalizer."""
    killed: str = ""
    """The kill switch the policy was last put under (its ``describe``; "": none), so that
    engaging and releasing it are each posted once."""

    def __post_init__(self) -> None:
        if not self.written:
            self.written = json_copy(self.status)


@dataclass
class Row:
    """One policy being decided this tick."""

    policy: IndexedPolicy
    runtime: Runtime
    spec: PolicySpec
    target: Target
    """The target as the cache shows it (after a write that landed: as written)."""
    model: Model | None
    model_error: str
    shield_config: ShieldConfig | None = None
    obs: Observation = field(default_factory=Observation)
    verdict: Verdict = field(default_factory=Verdict)
    new_shield: ShieldState | None = None
    """The shield's memory after this tick's step (kept only if the step is not undone)."""
    new_hpa: Any = None
    """The HPA rule's history after this tick's step (likewise)."""
    outside: tuple[int, int] | None = None
    """Someone else scaled the target since the last tick: (from, to)."""
    last_action: dict[str, Any] | None = None
    """A new ``lastAction`` for the status."""
    kill: Engaged | None = None
    """The kill switch the policy is under this tick (see :mod:`qscale.operator.killswitch`)."""
    features: list[float] | None = None
    """The network's input for this row, when the model was asked."""
    before: int = 0
    """The target's count when the tick began."""
    arm: str | None = None
    """The canary arm deciding this tick (``candidate``/``incumbent``; ``None``: no canary)."""
    by_rule: bool = False
    """The HPA rule decides this tick as the canary's incumbent (not as a fallback)."""
    rollout: str | None = None
    """The uid of the ModelRollout whose arm ``arm`` is (``None``: the policy's own canary, or
    none)."""
    drift_fallback: bool = False
    """Drift (``spec.drift.action: Fallback``): the model is asked (its input feeds the drift
    window) but the HPA rule decides, as a fallback."""
    capacity_estimate: float = math.nan
    """The per-pod capacity estimated this tick (NaN: none, or one is declared)."""

    @property
    def moves(self) -> bool:
        """A count was decided, and it is not the target's."""
        return self.verdict.desired is not None and self.verdict.desired != self.target.replicas


def busy_pods(r: Row) -> float:
    """Pods' worth of CPU the target uses (its CPU utilization of requests, over the limit
    ratio, times the replicas standing)."""
    o = r.obs
    return o.cpu_utilization / max(r.target.cpu_limit_ratio, 1e-6) * r.target.replicas


def enforcers(policies: Sequence[IndexedPolicy]) -> dict[tuple[str, str], IndexedPolicy]:
    """The one policy that may write each target: of those in mode Enforce on it, the oldest
    (then by name). Any other Enforce policy on the same Deployment is refused: two writers
    would undo each other's scales every tick."""
    out: dict[tuple[str, str], IndexedPolicy] = {}
    for p in policies:
        if p.spec is None or p.spec.mode != "Enforce":
            continue
        key = (p.namespace, p.spec.target)
        held = out.get(key)
        if held is None or (p.created, p.name) < (held.created, held.name):
            out[key] = p
    return out


def _t(values: Sequence[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def query_groups(
    rows: Sequence[Row], address_of: Callable[[str], str | None]
) -> dict[QueryGroup, list[Row]]:
    """The rows by what Prometheus is asked for them: one group per distinct (Prometheus,
    four templates), with each group's targets. ``address_of`` resolves a policy's address
    (``None``: not allowed; such rows get ``obs.refused`` and no group).

    The default templates serve every namespace in one query. A policy's own templates are
    grouped per namespace as well: a tenant's query is only ever filled with its own namespace,
    so whatever it does with its results can only reach its own policies."""
    by_queries: dict[tuple[str, ...], list[Row]] = {}
    for r in rows:
        q = r.spec.metrics
        address = address_of(q.address)
        if address is None:
            r.obs = Observation(
                refused="spec.metrics.prometheus.address is not one of the Prometheus "
                "addresses the operator allows (QSCALE_PROMETHEUS_ALLOWED_URLS)"
            )
            continue
        templates = tuple(q.template(n) for n in TEMPLATES)
        own = any(t != features.PROMQL[n] for t, n in zip(templates, TEMPLATES, strict=True))
        key = (address, *templates, r.policy.namespace if own else "")
        by_queries.setdefault(key, []).append(r)
    return {
        QueryGroup(
            *k[: 1 + len(TEMPLATES)],
            tuple(sorted({(r.policy.namespace, r.spec.target) for r in rs})),
        ): rs
        for k, rs in by_queries.items()
    }


def restore_shield(r: Row, now: float) -> None:
    """The row's shield behaviour, its memory (restored from the status when there is none or
    the behaviour changed) and a scale by someone else since the last applied count."""
    serving = r.model.serving if r.model is not None else None
    try:
        r.shield_config = shield_config(r.spec, serving)
    except SpecError:  # the manifest's trained settings do not combine with the spec
        r.shield_config = shield_config(r.spec, None)
    rt = r.runtime
    uid = r.target.uid
    if rt.shield is None or rt.shield_config != r.shield_config or rt.target_uid != uid:
        # The memory belongs to one Deployment object: a target deleted and created again
        # under the same name starts fresh (no cooldowns, no "scaled by someone else").
        record = rt.status.get("shield")
        owner = record.get("targetUID") if isinstance(record, Mapping) else None
        if rt.target_uid not in ("", uid) or owner not in (None, uid):
            record, rt.hpa_state = None, None
        rt.shield = ShieldState.from_records(
            [record], r.shield_config, [float(r.target.replicas)], now
        )
        rt.shield_config, rt.target_uid = r.shield_config, uid
    last = float(rt.shield.last_applied[0])
    if math.isfinite(last) and int(last) != r.target.replicas:
        r.outside = (int(last), r.target.replicas)


def hold_within_bounds(rows: Sequence[Row]) -> None:
    """No model: hold, within the bounds (the shield's bounds stage)."""
    if not rows:
        return
    replicas = _t([float(r.target.replicas) for r in rows])
    held, _ = bound(
        replicas,
        replicas.clone(),
        _t([float(r.spec.min_replicas) for r in rows]),
        _t([float(r.spec.max_replicas) for r in rows]),
    )
    for r, desired in zip(rows, held.tolist(), strict=True):
        r.verdict.desired = int(desired)
        r.verdict.action, r.verdict.reason = "hold", OpReason.MODEL_REFUSED.value


def _busy_peak(r: Row) -> float:
    """The highest busy pods of 30 minutes: the ``cpu_peak`` cores over the pod template's CPU
    limit per pod; 0 (the busy pods now, which the features never go below) where Prometheus has
    no CPU history yet."""
    cores = r.obs.cpu_peak_cores
    return cores / r.target.cpu_limit_cores if math.isfinite(cores) else 0.0


_ALIGN_S = 30.0
"""A CPU point pairs with the rate point within this many seconds of it (the rate range's
points fall where the tick's second does, the CPU subquery's on whole minutes)."""
_POINTS = round(features.LONG_PEAK_SPAN_S / features.RATE_PEAK_STEP_S) + 1


def _aligned(r: Row) -> tuple[list[float], list[float]]:
    """The rate points of the last 30 minutes and the busy pods at the same instants (NaN where
    no CPU point is near), :data:`_POINTS` each, oldest first, NaN-padded in front."""
    cpu = r.obs.cpu_points
    times = [t for t, _ in cpu]
    limit = r.target.cpu_limit_cores
    rate, busy = [], []
    for t, v in r.obs.rate_points[-_POINTS:]:
        k = bisect.bisect_left(times, t)
        near = [j for j in (k - 1, k) if 0 <= j < len(cpu) and abs(times[j] - t) <= _ALIGN_S]
        j = min(near, key=lambda j: abs(times[j] - t)) if near else None
        rate.append(v)
        busy.append(cpu[j][1] / limit if j is not None and limit > 0 else math.nan)
    pad = [math.nan] * (_POINTS - len(rate))
    return pad + rate, pad + busy


def _rate_grid(r: Row) -> list[float]:
    """The rate points of the last 30 minutes on the range query's grid, :data:`_POINTS` of
    them 60 s apart ending at the newest, oldest first, NaN where none is (a history that
    starts late, a point missing inside it): :func:`qscale.features.rate_forecast`'s input."""
    grid = [math.nan] * _POINTS
    pts = r.obs.rate_points
    if not pts:
        return grid
    newest = pts[-1][0]
    for t, v in pts:
        k = _POINTS - 1 - round((newest - t) / features.RATE_PEAK_STEP_S)
        if 0 <= k < _POINTS:
            grid[k] = v
    return grid


def _forecasts(rows: Sequence[Row]) -> torch.Tensor:
    """``[B]`` each row's request-rate forecast (NaN without rate points)."""
    if not rows:
        return _t([])
    return features.rate_forecast(torch.tensor([_rate_grid(r) for r in rows], dtype=torch.float32))


def estimate_capacities(rows: Sequence[Row]) -> None:
    """``Row.capacity_estimate`` of each row with no declared capacity whose policy allows an
    estimate, from its rate and CPU points (:func:`qscale.features.estimate_capacity`, as the
    simulator computes it)."""
    todo = [r for r in rows if r.spec.capacity_rps is None and r.spec.capacity_estimate]
    if not todo:
        return
    pairs = [_aligned(r) for r in todo]
    est = features.estimate_capacity(
        torch.tensor([p[0] for p in pairs], dtype=torch.float64),
        torch.tensor([p[1] for p in pairs], dtype=torch.float64),
        _t([float(r.target.ready) for r in todo]),
    )
    for r, c in zip(todo, est.tolist(), strict=True):
        r.capacity_estimate = c


def _capacity(r: Row) -> float:
    """The capacity the row sizes with: declared, else estimated, else NaN."""
    return r.spec.capacity_rps if r.spec.capacity_rps is not None else r.capacity_estimate


def signals_of(rows: Sequence[Row]) -> decision.Signals:
    """The rows' signals, as :func:`qscale.decision.decide` takes them."""
    nan = math.nan
    o = [r.obs for r in rows]
    inputs = features.FeatureInputs(
        cpu_utilization=_t([x.cpu_utilization if x.has_cpu else nan for x in o]),
        cpu_limit_ratio=_t([r.target.cpu_limit_ratio for r in rows]),
        p95_s=_t([x.p95_s for x in o]),
        slo_s=_t([r.spec.slo_s for r in rows]),
        rate_now=_t([x.rate_now for x in o]),
        rate_1m=_t([x.rate_1m for x in o]),
        rate_5m=_t([x.rate_5m for x in o]),
        rate_15m=_t([x.rate_15m for x in o]),
        rate_peak_15m=_t([x.rate_peak_15m for x in o]),
        rate_peak_30m=_t([x.rate_peak_30m for x in o]),
        busy_peak_30m=_t([_busy_peak(r) for r in rows]),
        replicas=_t([float(r.target.replicas) for r in rows]),
        ready_replicas=_t([float(r.target.ready) for r in rows]),
        min_replicas=_t([float(r.spec.min_replicas) for r in rows]),
        since_scale_up_s=_t([0.0] * len(rows)),
        since_scale_down_s=_t([0.0] * len(rows)),
        capacity_rps=_t([_capacity(r) for r in rows]),
        slo_priority=_t([r.spec.slo_priority for r in rows]),
        rate_forecast=_forecasts(rows),
    )
    return decision.Signals(
        inputs=inputs,
        max_replicas=_t([float(r.spec.max_replicas) for r in rows]),
        present=torch.tensor([x.present for x in o]),
        age_s=_t([x.age_s for x in o]),
    )


def forward(
    rows: Sequence[Row], sig: decision.Signals, state: ShieldState, now: float
) -> tuple[torch.Tensor, list[tuple[str, float]]]:
    """``[B, N_ACTIONS]`` Q-values, one forward pass per model over its rows; and each pass's
    (model name, seconds). Each row keeps its input (``Row.features``)."""
    by_model: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        assert r.model is not None
        by_model.setdefault(r.model.digest, []).append(i)
    q_values = torch.full((len(rows), actions.N_ACTIONS), math.nan)
    passes = []
    for idx in by_model.values():
        model = rows[idx[0]].model
        assert model is not None
        ix = torch.tensor(idx)
        obs = decision.observe(batching.select(sig, ix), batching.select(state, ix), now)
        t0 = time.perf_counter()
        with torch.no_grad():
            q = model.module(obs).float()
        passes.append((model.name, time.perf_counter() - t0))
        q_values[ix] = q
        for i, x in zip(idx, obs.tolist(), strict=True):
            rows[i].features = x
    return q_values, passes


def decide_rows(
    rows: Sequence[Row],
    sig: decision.Signals,
    state: ShieldState,
    q_values: torch.Tensor,
    now: float,
    stale_after_s: float,
) -> None:
    """Each row's verdict from its Q-values: :func:`qscale.decision.decide` takes one
    ShieldConfig, so one call per distinct shield behaviour (the bounds are per target and do
    not split the batch)."""
    by_config: dict[ShieldConfig, list[int]] = {}
    for i, r in enumerate(rows):
        assert r.shield_config is not None
        by_config.setdefault(r.shield_config, []).append(i)
    for config, idx in by_config.items():
        ix = torch.tensor(idx)
        commit = torch.tensor(
            [rows[i].spec.mode == "Enforce" and not rows[i].drift_fallback for i in idx]
        )
        d = decision.decide(
            batching.select(sig, ix),
            batching.select(state, ix),
            now,
            config,
            q_values=q_values[ix],
            stale_after_s=stale_after_s,
            commit=commit,
        )
        replicas = d.replicas.tolist()
        proposals = d.proposal.tolist()
        reasons = d.reason.tolist()
        acts = d.action.tolist()
        usable = d.usable.tolist()
        q_shown = d.q_values.tolist()
        states = batching.split(d.shield_state)
        for j, i in enumerate(idx):
            r, v = rows[i], rows[i].verdict
            v.reason = Reason(reasons[j]).name
            r.new_shield = states[j]
            # Missing/stale metrics hold (within the bounds): a count, not a model decision.
            v.desired = int(replicas[j]) if math.isfinite(replicas[j]) else None
            # The model's say counts only with usable metrics (a bound applied without them,
            # AT_MIN/AT_MAX, is still a tick without a model decision).
            v.model_decided = usable[j] and reasons[j] not in _FAILED
            v.model_output_invalid = reasons[j] == int(Reason.MODEL_OUTPUT_INVALID)
            v.action = actions.ACTION_NAMES[acts[j]] if v.model_decided else "hold"
            v.proposal = int(proposals[j]) if math.isfinite(proposals[j]) else None
            if v.model_decided:
                v.q_values = [round(x, 4) for x in q_shown[j]]
                v.capacity_estimate = r.capacity_estimate


def fallback_inputs(rows: Sequence[Row]) -> list[fb.FallbackInput]:
    """What the HPA rule needs of each row."""
    return [
        fb.FallbackInput(
            replicas=r.target.replicas,
            ready=r.target.ready,
            cpu_utilization=r.obs.cpu_utilization if r.obs.has_cpu else math.nan,
            min_replicas=r.spec.min_replicas,
            max_replicas=r.spec.max_replicas,
            target=r.spec.fallback_target,
            interval_s=r.spec.interval_s,
            state=r.runtime.hpa_state,
        )
        for r in rows
    ]


def take_fallback(r: Row, desired: int, why: str, hpa_state: Any, now: float) -> None:
    """The HPA rule decides the row (``why``: its reason); in Enforce its step is a scale for
    the shield's memory too (cooldowns hold when the model takes over again)."""
    v = r.verdict
    v.desired, v.action, v.by_fallback, v.hpa_reason = desired, "hpa", True, why
    v.reason = (
        OpReason.KILL_SWITCH
        if r.kill is not None
        else OpReason.CANARY_INCUMBENT_HPA
        if r.by_rule
        else OpReason.MODEL_DRIFT
        if r.drift_fallback
        else OpReason.FALLBACK_ACTIVE
    ).value
    r.new_hpa = hpa_state
    base = r.new_shield or r.runtime.shield
    if r.spec.mode == "Enforce" and base is not None:
        r.new_shield = record_scale(base, _t([float(r.target.replicas)]), _t([float(desired)]), now)


def shield_record(r: Row, now: float) -> dict[str, Any] | None:
    """The shield's memory as the status keeps it (``None``: no shield this tick)."""
    if r.runtime.shield is None or r.shield_config is None:
        return None
    rec = r.runtime.shield.to_records(now, r.shield_config, _t([float(r.spec.max_replicas)]))[0]
    return {**rec, "targetUID": r.target.uid}
