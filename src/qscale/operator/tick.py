"""The batched tick: every policy due at once, one path from metrics to writes.

    due policies -> 3 Prometheus queries -> Signals -> one forward pass per model
                 -> decide() (features, actions, shield) -> fallback where it failed
                 -> the writer (deployments/scale) -> status patches that changed -> Events

:func:`qscale.decision.decide` is the decision; this module only gathers its inputs, runs the
fallback where the model could not decide, and hands results to the writer, the status and
the Events. Per-policy memory (the shield's state, the fallback's HPA history, the status as
last written) lives in :class:`Runtime`, rebuilt from the policy's status when a policy is first
seen (an operator restart, a new leader), so cooldowns survive restarts.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from qscale import actions, batching, decision, features
from qscale.guardrails import Reason, ShieldConfig, ShieldState, bound, record_scale
from qscale.operator import fallback as fb
from qscale.operator.deployments import DeploymentCache, Target
from qscale.operator.events import Event, EventPoster
from qscale.operator.kube import ApiError, Kube
from qscale.operator.metrics import Metrics
from qscale.operator.models import Model, ModelRegistry, describe
from qscale.operator.prom import Observation, PromClient, QueryGroup
from qscale.operator.settings import Settings
from qscale.operator.spec import PolicySpec, SpecError, parse_spec, shield_config, training_mismatch
from qscale.operator.status import (
    HPA_LIMIT_REASONS,
    LIMIT_REASONS,
    OpReason,
    iso,
    merge_patch,
    set_condition,
)
from qscale.operator.writer import Outcome, ScaleRequest, scale_one, updated_target

__all__ = ["Engine", "IndexedPolicy", "Runtime", "TickReport"]

log = logging.getLogger("qscale.operator")

GROUP, VERSION, PLURAL = "qscale.io", "v1alpha1", "autoscalepolicies"
_FAILED = (int(Reason.METRICS_MISSING), int(Reason.METRICS_STALE), int(Reason.REPLICAS_UNKNOWN))


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

    @staticmethod
    def from_body(body: Mapping[str, Any]) -> IndexedPolicy:
        meta = body.get("metadata") or {}
        try:
            spec, error = parse_spec(body.get("spec")), ""
        except SpecError as e:
            spec, error = None, str(e)
        return IndexedPolicy(
            namespace=meta.get("namespace", ""),
            name=meta.get("name", ""),
            uid=meta.get("uid", ""),
            generation=int(meta.get("generation") or 0),
            spec=spec,
            error=error,
            status=copy.deepcopy(dict(body.get("status") or {})),
        )


@dataclass
class Runtime:
    """The operator's memory of one policy between ticks."""

    uid: str
    status: dict[str, Any]
    """The status as last written (or as found)."""
    shield: ShieldState | None = None
    shield_config: ShieldConfig | None = None
    hpa_state: Any = None
    failed: int = 0
    fallback_since: float | None = None
    next_due: float = 0.0
    problem: str = ""
    """The operator-level problem last reported by an Event (so that each is posted once)."""
    write_failing: bool = False


@dataclass
class TickReport:
    now: float
    due: int = 0
    decided: int = 0
    queries: int = 0
    scale_writes: int = 0
    conflicts: int = 0
    status_writes: int = 0
    events: int = 0
    decide_s: float = 0.0
    forward_s: float = 0.0
    seconds: float = 0.0
    changed: list[tuple[str, str, int, int]] = field(default_factory=list)
    decided_at: float = 0.0
    """Epoch time the decisions were taken (before the writes)."""
    phases: dict[str, float] = field(default_factory=dict)
    """Seconds spent in each part of the tick."""


@dataclass
class _Row:
    """One policy being decided this tick."""

    policy: IndexedPolicy
    runtime: Runtime
    spec: PolicySpec
    target: Target
    model: Model | None
    model_error: str
    shield_config: ShieldConfig | None = None
    obs: Observation = field(default_factory=Observation)
    # results
    desired: int | None = None
    """The replica count decided (``None``: no count this tick)."""
    action: str = ""
    reason: str = ""
    q_values: list[float] | None = None
    new_shield: ShieldState | None = None
    new_hpa: Any = None
    by_fallback: bool = False
    model_decided: bool = False
    """The model's decision stands (metrics were usable)."""
    hpa_reason: str = ""
    outside: tuple[int, int] | None = None
    last_action: dict[str, Any] | None = None


def _t(values: Sequence[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


class Engine:
    """Runs ticks over the policies it is handed (what kopf has seen)."""

    def __init__(
        self,
        settings: Settings,
        kube: Kube,
        cache: DeploymentCache,
        prom: PromClient,
        models: ModelRegistry,
        metrics: Metrics,
        events: EventPoster,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.kube = kube
        self.cache = cache
        self.prom = prom
        self.models = models
        self.metrics = metrics
        self.events = events
        self.clock = clock
        self.runtimes: dict[str, Runtime] = {}

    def forget(self) -> None:
        """Drop every policy's memory (leadership lost: the next leader restores from status)."""
        self.runtimes.clear()

    # --- the tick -------------------------------------------------------------------------

    async def run_once(
        self, policies: Sequence[IndexedPolicy], now: float | None = None
    ) -> TickReport:
        t0 = time.perf_counter()
        now = self.clock() if now is None else now
        rep = TickReport(now=now)
        seen = {p.uid for p in policies}
        for uid in [u for u in self.runtimes if u not in seen]:
            del self.runtimes[uid]
        due: list[tuple[IndexedPolicy, Runtime]] = []
        for p in policies:
            rt = self.runtimes.get(p.uid)
            if rt is None:
                rt = self.runtimes[p.uid] = Runtime(uid=p.uid, status=copy.deepcopy(dict(p.status)))
            if now + 1e-3 >= rt.next_due:
                interval = p.spec.interval_s if p.spec else actions.DECISION_INTERVAL_S
                rt.next_due = (math.floor(now / interval + 1e-6) + 1) * interval
                due.append((p, rt))
        rep.due = len(due)
        if not due:
            return rep
        mark = time.perf_counter()

        def phase(name: str) -> None:
            nonlocal mark
            t = time.perf_counter()
            rep.phases[name] = t - mark
            mark = t

        await self._refresh_models([p for p, _ in due])

        statuses: dict[str, dict[str, Any]] = {}
        rows: list[_Row] = []
        for p, rt in due:
            st = self._base_status(p, rt)
            if p.spec is None:
                self._problem(p, rt, st, OpReason.INVALID_SPEC, p.error, now)
                statuses[p.uid] = st
                continue
            if not self.cache.synced(p.namespace):
                continue  # replicas unknown: no decision, no write, nothing new to report
            target = self.cache.get(p.namespace, p.spec.target)
            if target is None:
                msg = f"Deployment {p.spec.target} not found in namespace {p.namespace}"
                self._problem(p, rt, st, OpReason.TARGET_MISSING, msg, now)
                statuses[p.uid] = st
                continue
            model, err = self._model_for(p)
            rows.append(_Row(p, rt, p.spec, target, model, err))
            statuses[p.uid] = st

        phase("prepare")
        await self._observe(rows, now, rep)
        phase("prometheus")
        t1 = time.perf_counter()
        self._decide(rows, now, rep)
        self._fallback(rows, now)
        rep.decide_s = time.perf_counter() - t1
        phase("decide")
        rep.decided_at = time.time()
        self.events.hold()
        try:
            await self._apply(due, rows, statuses, now, rep)
        finally:
            self.events.release()
        phase("writes")
        rep.seconds = time.perf_counter() - t0
        self.metrics.tick.observe(rep.seconds)
        self.metrics.ticks.inc()
        self.metrics.tick_policies.set(rep.decided)
        self.metrics.fallback_active.set(
            sum(1 for rt in self.runtimes.values() if rt.fallback_since is not None)
        )
        level = logging.INFO if rep.scale_writes else logging.DEBUG
        log.log(
            level,
            "tick: %d due, %d decided, %d queries, %d scaled, %d status writes, %.0f ms",
            rep.due,
            rep.decided,
            rep.queries,
            rep.scale_writes,
            rep.status_writes,
            rep.seconds * 1e3,
        )
        return rep

    # --- inputs ---------------------------------------------------------------------------

    async def _refresh_models(self, due: Sequence[IndexedPolicy]) -> None:
        wanted = {
            (p.namespace, p.spec.model.configmap, p.spec.model.sha256)
            for p in due
            if p.spec is not None and not p.spec.model.is_default
        }
        stale = [k for k in wanted if self.models.due(*k)]

        async def fetch(ns: str, name: str, pin: str) -> None:
            try:
                cm = await self.kube.get(f"/api/v1/namespaces/{ns}/configmaps/{name}")
                self.models.put(ns, name, pin, cm)
            except ApiError as e:
                cached = self.models.cached(ns, name, pin)
                if e.status == 0 and isinstance(cached, Model):
                    return  # API down: keep serving the verified model
                self.models.put(
                    ns, name, pin, None, f"ConfigMap {name}: {e}" if e.status != 404 else ""
                )

        await asyncio.gather(*(fetch(*k) for k in stale))
        for m in self.models.loaded():
            self.metrics.model_info.labels(m.name, m.digest[:16], m.spec_hash).set(1)

    def _model_for(self, p: IndexedPolicy) -> tuple[Model | None, str]:
        assert p.spec is not None
        ref = p.spec.model
        got = (
            self.models.default()
            if ref.is_default
            else self.models.cached(p.namespace, ref.configmap, ref.sha256)
        )
        if isinstance(got, Model):
            return got, ""
        return None, str(got) if got is not None else f"ConfigMap {ref.configmap} not read yet"

    async def _observe(self, rows: list[_Row], now: float, rep: TickReport) -> None:
        groups: dict[tuple[str, str, str, str], list[_Row]] = {}
        for r in rows:
            q = r.spec.metrics
            key = (
                q.address or self.settings.prometheus_url.rstrip("/"),
                q.request_rate,
                q.latency_p95,
                q.cpu_utilization,
            )
            groups.setdefault(key, []).append(r)
        qgroups = [
            QueryGroup(
                k[0], k[1], k[2], k[3], tuple({(r.policy.namespace, r.spec.target) for r in rs})
            )
            for k, rs in groups.items()
        ]
        rep.queries = 3 * len(qgroups)
        if not qgroups:
            return
        got = await self.prom.fetch(qgroups, now)
        for k, rs in groups.items():
            for r in rs:
                r.obs = got.get((k[0], r.policy.namespace, r.spec.target), Observation())

    # --- decisions ------------------------------------------------------------------------

    def _decide(self, rows: list[_Row], now: float, rep: TickReport) -> None:
        deciding = [r for r in rows if r.spec.mode != "Off" and r.model is not None]
        for r in rows:
            if r.spec.mode == "Off":
                continue
            serving = r.model.serving if r.model is not None else None
            try:
                r.shield_config = shield_config(r.spec, serving)
            except SpecError:  # the manifest's trained settings do not combine with the spec
                r.shield_config = shield_config(r.spec, None)
            if r.runtime.shield is None or r.runtime.shield_config != r.shield_config:
                r.runtime.shield = ShieldState.from_records(
                    [r.runtime.status.get("shield")],
                    r.shield_config,
                    [float(r.target.replicas)],
                    now,
                )
                r.runtime.shield_config = r.shield_config
            last = float(r.runtime.shield.last_applied[0])
            if math.isfinite(last) and int(last) != r.target.replicas:
                r.outside = (int(last), r.target.replicas)
        unmodelled = [r for r in rows if r.spec.mode != "Off" and r.model is None]
        if unmodelled:  # no model: hold, within the bounds (the shield's bounds stage)
            held, _ = bound(
                _t([float(r.target.replicas) for r in unmodelled]),
                _t([float(r.target.replicas) for r in unmodelled]),
                _t([float(r.spec.min_replicas) for r in unmodelled]),
                _t([float(r.spec.max_replicas) for r in unmodelled]),
            )
            for r, to in zip(unmodelled, held.tolist(), strict=True):
                r.desired = int(to)
                r.action, r.reason = "hold", OpReason.MODEL_REFUSED.value
        if not deciding:
            return
        t0 = time.perf_counter()
        signals = self._signals(deciding)
        state = batching.cat([r.runtime.shield for r in deciding])
        # One forward pass per model over its rows; decide() takes the argmax and shields it.
        by_model: dict[str, list[int]] = {}
        for i, r in enumerate(deciding):
            by_model.setdefault(r.model.digest, []).append(i)
        q_all = torch.full((len(deciding), actions.N_ACTIONS), math.nan)
        for idx in by_model.values():
            model = deciding[idx[0]].model
            ix = torch.tensor(idx)
            obs = decision.observe(batching.select(signals, ix), batching.select(state, ix), now)
            f0 = time.perf_counter()
            with torch.no_grad():
                q = model.module(obs).float()
            dt = time.perf_counter() - f0
            rep.forward_s += dt
            self.metrics.inference.labels(model.name).observe(dt)
            q_all[ix] = q
        # decide() takes one ShieldConfig: one call per distinct shield behaviour (the bounds
        # are per target and do not split the batch).
        by_cfg: dict[ShieldConfig, list[int]] = {}
        for i, r in enumerate(deciding):
            by_cfg.setdefault(r.shield_config, []).append(i)
        for cfg, idx in by_cfg.items():
            ix = torch.tensor(idx)
            commit = torch.tensor([deciding[i].spec.mode == "Enforce" for i in idx])
            d = decision.decide(
                batching.select(signals, ix),
                batching.select(state, ix),
                now,
                cfg,
                q_values=q_all[ix],
                stale_after_s=self.settings.stale_after_s,
                commit=commit,
            )
            reps = d.replicas.tolist()
            reasons = d.reason.tolist()
            acts = d.action.tolist()
            usable = d.usable.tolist()
            q_shown = d.q_values.tolist()
            states = batching.split(d.shield_state)
            for j, i in enumerate(idx):
                r = deciding[i]
                r.reason = Reason(reasons[j]).name
                r.new_shield = states[j]
                # Missing/stale metrics hold (within the bounds): a count, not a model decision.
                r.desired = int(reps[j]) if math.isfinite(reps[j]) else None
                # The model's say counts only with usable metrics (a bound applied without them,
                # AT_MIN/AT_MAX, is still a tick without a model decision).
                r.model_decided = usable[j] and reasons[j] not in _FAILED
                r.action = actions.ACTION_NAMES[acts[j]] if r.model_decided else "hold"
                if r.model_decided:
                    r.q_values = [round(v, 4) for v in q_shown[j]]
        rep.decided = len(deciding)
        self.metrics.decide.observe(time.perf_counter() - t0)

    def _signals(self, rows: Sequence[_Row]) -> decision.Signals:
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
            replicas=_t([float(r.target.replicas) for r in rows]),
            ready_replicas=_t([float(r.target.ready) for r in rows]),
            min_replicas=_t([float(r.spec.min_replicas) for r in rows]),
            since_scale_up_s=_t([0.0] * len(rows)),
            since_scale_down_s=_t([0.0] * len(rows)),
        )
        return decision.Signals(
            inputs=inputs,
            max_replicas=_t([float(r.spec.max_replicas) for r in rows]),
            present=torch.tensor([x.present for x in o]),
            age_s=_t([0.0] * len(rows)),
        )

    def _fallback(self, rows: list[_Row], now: float) -> None:
        """Count failed ticks; past ``afterFailedTicks`` the HPA rule decides instead."""
        hpa_rows = []
        for r in rows:
            if r.spec.mode == "Off":
                continue
            if r.model_decided:
                if r.runtime.fallback_since is not None:
                    self._event(
                        r.policy, "Normal", OpReason.FALLBACK_ENDED, "the model decides again", now
                    )
                r.runtime.failed, r.runtime.fallback_since = 0, None
                continue
            r.runtime.failed += 1
            if r.runtime.failed >= r.spec.fallback_after:
                hpa_rows.append(r)
        if not hpa_rows:
            return
        items = [
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
            for r in hpa_rows
        ]
        for r, (to, why, state) in zip(hpa_rows, fb.hpa_decide(items, now), strict=True):
            log.debug(
                "%s/%s fallback: %d replicas (%d ready), CPU %s -> %d (%s)",
                r.policy.namespace,
                r.policy.name,
                r.target.replicas,
                r.target.ready,
                _pct(r.obs.cpu_utilization),
                to,
                why,
            )
            if r.runtime.fallback_since is None:
                r.runtime.fallback_since = now
                self.metrics.fallbacks.inc()
                self._event(
                    r.policy,
                    "Warning",
                    OpReason.FALLBACK_ACTIVE,
                    f"{r.runtime.failed} ticks without a model decision ({self._failure(r)}): "
                    "the HPA rule at "
                    f"{r.spec.fallback_target * 100:g}% CPU takes over",
                    now,
                )
            r.desired, r.action, r.by_fallback, r.hpa_reason, r.new_hpa = (
                to,
                "hpa",
                True,
                why,
                state,
            )
            r.reason = OpReason.FALLBACK_ACTIVE.value
            base = r.new_shield or r.runtime.shield
            if r.spec.mode == "Enforce" and base is not None:
                r.new_shield = record_scale(
                    base, _t([float(r.target.replicas)]), _t([float(to)]), now
                )

    def _failure(self, r: _Row) -> str:
        if r.model is None:
            return f"{OpReason.MODEL_REFUSED.value}: {r.model_error}"
        return r.reason or Reason.METRICS_MISSING.name

    # --- writes ---------------------------------------------------------------------------

    async def _write(self, r: _Row, now: float, rep: TickReport, sem: asyncio.Semaphore) -> None:
        """The row's scale write (Enforce, a changed count), then what follows from it."""
        if r.spec.mode == "Enforce" and r.desired is not None and r.desired != r.target.replicas:
            req = ScaleRequest(
                r.policy.namespace,
                r.spec.target,
                r.target.replicas,
                r.desired,
                r.target.resource_version,
            )
            res = await scale_one(self.kube, req, sem)
            self.metrics.writes.labels("scale", res.outcome.value).inc()
            self.metrics.conflicts.inc(res.conflicts)
            rep.scale_writes += 1
            rep.conflicts += res.conflicts
            if res.landed:
                rep.changed.append(
                    (r.policy.namespace, r.spec.target, r.target.replicas, r.desired)
                )
                r.runtime.write_failing = False
                how = (
                    f"by the HPA rule ({r.hpa_reason}, CPU {_pct(r.obs.cpu_utilization)} of "
                    f"{r.spec.fallback_target * 100:g}%)"
                    if r.by_fallback
                    else f"({r.action}, model {r.model.name} {r.model.digest[:8]})"
                    if r.model
                    else f"({r.reason})"
                )
                msg = f"scaled {r.spec.target} {r.target.replicas} -> {r.desired} {how}"
                self._event(r.policy, "Normal", r.reason, msg, now)
                r.last_action = self._action(r, now, applied=True)
                r.target = updated_target(r.target, res)
                self.cache.note(r.target)
            else:
                if res.outcome == Outcome.FAILED and not r.runtime.write_failing:
                    msg = f"scale {r.spec.target} to {r.desired}: {res.error}"
                    self._event(r.policy, "Warning", OpReason.SCALE_FAILED, msg, now)
                r.runtime.write_failing = res.outcome == Outcome.FAILED
                r.new_shield, r.new_hpa = None, None  # as if the step had not been decided
        if r.outside is not None:
            a, b = r.outside
            msg = (
                f"{r.spec.target} was scaled {a} -> {b} by someone else "
                "(a scale event for the cooldowns)"
            )
            self._event(r.policy, "Normal", OpReason.OUTSIDE_SCALE, msg, now)
        if r.new_shield is not None:
            r.runtime.shield = r.new_shield
        if r.new_hpa is not None:
            r.runtime.hpa_state = r.new_hpa
        if r.spec.mode == "Shadow" and r.desired is not None and r.desired != r.target.replicas:
            # A would-be scale is recorded once, not again on every tick it stays the same.
            prev = r.runtime.status.get("lastAction") or {}
            seen = (prev.get("from"), prev.get("to"), prev.get("action"), prev.get("applied"))
            if seen != (r.target.replicas, r.desired, r.action, False):
                r.last_action = self._action(r, now, applied=False)
        if r.spec.mode != "Off":
            self.metrics.decisions.labels(r.action or "none", r.spec.mode, r.reason or "NONE").inc()
            if r.reason in LIMIT_REASONS:
                self.metrics.interventions.labels(r.reason).inc()

    async def _apply(
        self,
        due: Sequence[tuple[IndexedPolicy, Runtime]],
        rows: Sequence[_Row],
        statuses: Mapping[str, dict[str, Any]],
        now: float,
        rep: TickReport,
    ) -> None:
        """Per policy: its scale write, then its status patch; all policies at once, the API
        calls ``write_concurrency`` at a time, scale writes first in line."""
        sem = asyncio.Semaphore(self.settings.write_concurrency)
        by_uid = {r.policy.uid: r for r in rows}

        async def one(p: IndexedPolicy, rt: Runtime) -> None:
            r = by_uid.get(p.uid)
            if r is not None:
                await self._write(r, now, rep, sem)
                self._render(r, statuses[p.uid], now)
            if p.uid in statuses:
                await self._patch_status(p, rt, statuses[p.uid], rep, sem)

        def writes_first(item: tuple[IndexedPolicy, Runtime]) -> int:
            r = by_uid.get(item[0].uid)
            return (
                0
                if r is not None and r.desired is not None and r.desired != r.target.replicas
                else 1
            )

        await asyncio.gather(*(one(p, rt) for p, rt in sorted(due, key=writes_first)))

    def _action(self, r: _Row, now: float, applied: bool) -> dict[str, Any]:
        a = {
            "from": r.target.replicas,
            "to": r.desired,
            "action": r.action,
            "reason": r.reason,
            "time": iso(now),
            "applied": applied,
            "summary": f"{r.target.replicas}->{r.desired} {r.action}"
            + ("" if applied else " (shadow)"),
        }
        if r.q_values is not None and not r.by_fallback:
            a["qValues"] = dict(zip(actions.ACTION_NAMES, r.q_values, strict=True))
        return a

    # --- status ---------------------------------------------------------------------------

    def _base_status(self, p: IndexedPolicy, rt: Runtime) -> dict[str, Any]:
        st = dict(rt.status)
        st["observedGeneration"] = p.generation
        return st

    def _problem(
        self,
        p: IndexedPolicy,
        rt: Runtime,
        st: dict[str, Any],
        reason: OpReason,
        msg: str,
        now: float,
    ) -> None:
        g = p.generation
        conds = st.get("conditions")
        conds = set_condition(conds, "Ready", False, reason.value, msg, now, g)
        conds = set_condition(conds, "ScalingActive", False, reason.value, msg, now, g)
        conds = set_condition(
            conds, "MetricsAvailable", None, reason.value, "no target to observe", now, g
        )
        st["conditions"] = conds
        st["reason"] = reason.value
        for k in ("desiredReplicas", "wouldScaleTo", "fallback"):
            st.pop(k, None)
        if rt.problem != reason.value:
            self._event(p, "Warning", reason, msg, now)
            rt.problem = reason.value
        rt.shield = None  # restored from the record once the target is back
        rt.failed, rt.fallback_since = 0, None

    def _render(self, r: _Row, st: dict[str, Any], now: float) -> None:
        p, g, spec = r.policy, r.policy.generation, r.spec
        conds = st.get("conditions")
        st["replicas"] = r.target.replicas
        if r.last_action is not None:
            st["lastAction"] = r.last_action
        if r.outside is not None:
            st["lastOutsideScale"] = {"from": r.outside[0], "to": r.outside[1], "time": iso(now)}
        if r.model is not None:
            st["model"] = describe(r.model)
        elif not spec.model.is_default:
            st["model"] = {"name": spec.model.configmap, "sha256": spec.model.sha256}
        else:
            st["model"] = {"name": "default"}
        ready = r.model is not None or spec.mode == "Off"
        conds = set_condition(
            conds,
            "Ready",
            ready,
            "OK" if ready else OpReason.MODEL_REFUSED.value,
            "" if ready else r.model_error,
            now,
            g,
        )
        if r.model is not None:
            conds = set_condition(
                conds,
                "ModelReady",
                True,
                OpReason.MODEL_LOADED.value,
                f"{r.model.name} sha256 {r.model.digest[:12]} spec {r.model.spec_hash}",
                now,
                g,
            )
            diff = training_mismatch(spec, r.model.serving)
            if r.model.serving is None:
                conds = set_condition(
                    conds,
                    "MatchesTraining",
                    None,
                    OpReason.TRAINING_UNKNOWN.value,
                    "the model's manifest does not record its serving settings",
                    now,
                    g,
                )
            else:
                conds = set_condition(
                    conds,
                    "MatchesTraining",
                    not diff,
                    OpReason.TRAINING_MISMATCH.value if diff else "OK",
                    "; ".join(diff),
                    now,
                    g,
                )
        else:
            conds = set_condition(
                conds, "ModelReady", False, OpReason.MODEL_REFUSED.value, r.model_error, now, g
            )
        problem = OpReason.MODEL_REFUSED.value if r.model is None and spec.mode != "Off" else ""
        if problem and r.runtime.problem != problem:
            self._event(p, "Warning", OpReason.MODEL_REFUSED, r.model_error, now)
        r.runtime.problem = problem
        conds = self._metrics_condition(r, conds, now)
        if spec.mode == "Off":
            conds = set_condition(
                conds, "ScalingActive", False, OpReason.MODE_OFF.value, "mode is Off", now, g
            )
            conds = set_condition(
                conds, "ScalingLimited", False, OpReason.MODE_OFF.value, "", now, g
            )
            st["reason"] = OpReason.MODE_OFF.value
            for k in ("desiredReplicas", "wouldScaleTo", "fallback"):
                st.pop(k, None)
            st["conditions"] = conds
            return
        if r.desired is not None:
            st["desiredReplicas"] = r.desired
        if spec.mode == "Shadow" and r.desired is not None:
            st["wouldScaleTo"] = r.desired
        else:
            st.pop("wouldScaleTo", None)
        st["reason"] = r.reason or OpReason.MODEL_REFUSED.value
        if r.runtime.fallback_since is not None:
            st["fallback"] = {
                "active": True,
                "since": iso(r.runtime.fallback_since),
                "reason": self._failure_code(r),
            }
        else:
            st.pop("fallback", None)
        if spec.mode == "Shadow":
            active = (
                False,
                OpReason.MODE_SHADOW.value,
                "Shadow: decisions are recorded, never written",
            )
        elif r.by_fallback:
            active = (
                True,
                OpReason.FALLBACK_ACTIVE.value,
                f"the HPA rule at {spec.fallback_target * 100:g}% CPU decides",
            )
        elif r.model_decided:
            active = (True, "OK", "the model decides")
        else:
            active = (
                False,
                st["reason"] or Reason.METRICS_MISSING.name,
                "holding: no decision this tick",
            )
        conds = set_condition(conds, "ScalingActive", active[0], active[1], active[2], now, g)
        lim = r.hpa_reason if r.by_fallback else r.reason
        limited = lim in LIMIT_REASONS or lim in HPA_LIMIT_REASONS
        conds = set_condition(conds, "ScalingLimited", limited, lim or "OK", "", now, g)
        if r.runtime.shield is not None and r.shield_config is not None:
            rec = r.runtime.shield.to_records(now, r.shield_config, _t([float(spec.max_replicas)]))[
                0
            ]
            if spec.mode == "Shadow":  # it never scales: a would-be proposal is no memory to keep
                rec.pop("proposals", None)
            if rec:
                st["shield"] = rec
        st["conditions"] = conds

    def _failure_code(self, r: _Row) -> str:
        if r.model is None:
            return OpReason.MODEL_REFUSED.value
        if not r.obs.present:
            return Reason.METRICS_MISSING.name
        return Reason.METRICS_STALE.name

    def _metrics_condition(
        self, r: _Row, conds: list[dict[str, Any]], now: float
    ) -> list[dict[str, Any]]:
        o, g = r.obs, r.policy.generation
        if o.present:
            return set_condition(
                conds, "MetricsAvailable", True, OpReason.METRICS_OK.value, "", now, g
            )
        if o.errors:
            return set_condition(
                conds,
                "MetricsAvailable",
                False,
                OpReason.QUERY_FAILED.value,
                "; ".join(sorted(set(o.errors)))[:500],
                now,
                g,
            )
        missing = [
            n
            for n, ok in (
                ("request_rate", o.has_rate),
                ("latency_p95", o.has_latency),
                ("cpu_utilization", o.has_cpu),
            )
            if not ok
        ]
        return set_condition(
            conds,
            "MetricsAvailable",
            False,
            Reason.METRICS_MISSING.name,
            f"no series for {', '.join(missing)}",
            now,
            g,
        )

    async def _patch_status(
        self,
        p: IndexedPolicy,
        rt: Runtime,
        st: dict[str, Any],
        rep: TickReport,
        sem: asyncio.Semaphore,
    ) -> None:
        patch = merge_patch(rt.status, st)
        if patch is None:
            return
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{p.namespace}/{PLURAL}/{p.name}/status"
        async with sem:
            try:
                await self.kube.patch_merge(path, {"status": patch})
            except ApiError as e:
                self.metrics.writes.labels("status", "error").inc()
                if e.status != 404:
                    log.warning("status of %s/%s not written: %s", p.namespace, p.name, e)
                return
        self.metrics.writes.labels("status", "ok").inc()
        rep.status_writes += 1
        rt.status = copy.deepcopy(st)

    def _event(
        self, p: IndexedPolicy, type_: str, reason: OpReason | str, msg: str, now: float
    ) -> None:
        code = reason.value if isinstance(reason, OpReason) else reason
        self.events.post(Event(p.namespace, p.name, p.uid, type_, code, msg, now))


def _pct(u: float) -> str:
    return f"{u * 100:.0f}%" if math.isfinite(u) else "unknown"
