"""The batched tick: every policy due at once, one path from metrics to writes.

    prepare: due policies, their models and targets (a problem: its status, no row)
    query:   5 Prometheus queries per distinct (Prometheus, templates) -> Observations
    decide:  Signals -> one forward pass per model -> one decide() per shield behaviour
             (features, argmax, shield) -> the HPA rule where the model could not decide
    scale:   every scale write the tick owes (deployments/scale), ``scale_concurrency`` at a
             time; from the tick's start to here no status patch or Event starts
    status:  each policy's status, computed after its scale write (it never claims a count that
             did not land), handed to the :class:`StatusWriter`, which patches them behind the
             tick: a status backlog never delays the next tick's scale writes
    report:  the tick's metrics; its log line once its statuses are written (Events are posted
             in the background)

:func:`qscale.decision.decide` is the decision; this module only gathers its inputs, lets
the HPA rule decide where the model could not (:mod:`qscale.operator.failover`), and hands
results to the writer, the status (:mod:`qscale.operator.status`, pure) and the Events. Who
decides each target (a canary's or a ModelRollout's arm) is :mod:`qscale.operator.arms`; what
each decision tells the metrics, :mod:`qscale.operator.telemetry`.

Per-policy memory (the shield's state, the fallback's HPA history, the status as last written)
lives in :class:`Runtime`, rebuilt from the policy's status when a policy is first seen (an
operator restart, a new leader), so cooldowns survive restarts.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from qscale import actions, batching
from qscale.operator import arms
from qscale.operator.canary import Canaries
from qscale.operator.decisionlog import DecisionLog
from qscale.operator.deployments import DeploymentCache
from qscale.operator.driftwatch import DriftWatch, act_on_drift
from qscale.operator.events import Event, EventPoster
from qscale.operator.failover import fail_over
from qscale.operator.killswitch import KillSwitch
from qscale.operator.kube import Kube
from qscale.operator.metrics import Metrics
from qscale.operator.models import ModelRegistry
from qscale.operator.prom import Observation, PromClient
from qscale.operator.rollout import Rollouts
from qscale.operator.rows import (
    IndexedPolicy,
    Row,
    Runtime,
    decide_rows,
    enforcers,
    estimate_capacities,
    forward,
    hold_within_bounds,
    query_groups,
    restore_shield,
    shield_record,
    signals_of,
)
from qscale.operator.settings import Settings
from qscale.operator.shadowscore import ShadowScores
from qscale.operator.spec import TEMPLATES
from qscale.operator.status import (
    Notice,
    OpReason,
    base_status,
    decided_status,
    drift_notice,
    json_copy,
    last_action,
    model_problem,
    outside_notice,
    problem_status,
    scale_failed_notice,
    scaled_notice,
    shadow_action,
    target_conflict_message,
)
from qscale.operator.statuswriter import GROUP, PLURAL, VERSION, StatusWriter, TickBatch
from qscale.operator.telemetry import Telemetry
from qscale.operator.writer import Outcome, ScaleRequest, scale_one, updated_target

__all__ = [
    "GROUP",
    "PLURAL",
    "VERSION",
    "Engine",
    "IndexedPolicy",
    "Runtime",
    "StatusWriter",
    "TickReport",
]

log = logging.getLogger("qscale.operator")


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
    scale_s: float | None = None
    """Tick start to its last scale write done (``None``: no scale write)."""
    status_s: float | None = None
    """Tick start to its last status patch done (``None``: none; final once ``written``)."""
    written_s: float | None = None
    """Tick start to every status of the tick in the API (final once ``written``)."""
    written: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once the tick's statuses are written (``status_writes``, ``status_s`` final)."""

    def report(self, t0: float, metrics: Metrics, runtimes: Iterable[Runtime]) -> None:
        """The tick's figures, its decisions handed over: to the metrics."""
        self.seconds = time.perf_counter() - t0
        metrics.tick.observe(self.seconds)
        metrics.ticks.inc()
        metrics.due.inc(self.due)
        metrics.tick_policies.set(self.decided)
        rts = list(runtimes)  # a kill switch's HPA rule is not a fallback
        metrics.fallback_active.set(
            sum(1 for rt in rts if rt.fallback_since is not None and not rt.killed)
        )
        metrics.killed.set(sum(1 for rt in rts if rt.killed))

    def finish(self, batch: TickBatch, metrics: Metrics) -> None:
        """Every status of the tick is in the API: its last figures, its log line."""
        self.status_writes = batch.writes
        self.status_s = batch.last_write_s
        self.written_s = batch.done_s
        if self.status_s is not None:
            metrics.tick_status.observe(self.status_s)
        _log_tick(self)
        self.written.set()


class _Laps:
    """Seconds per phase of the tick, into ``TickReport.phases``."""

    def __init__(self, rep: TickReport) -> None:
        self.rep, self.mark = rep, time.perf_counter()

    def lap(self, name: str) -> None:
        t = time.perf_counter()
        self.rep.phases[name] = t - self.mark
        self.mark = t


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
        statuses: StatusWriter | None = None,
    ) -> None:
        self.settings = settings
        self.kube = kube
        self.cache = cache
        self.prom = prom
        self.models = models
        self.metrics = metrics
        self.events = events
        self.clock = clock
        self.statuses = statuses or StatusWriter(
            kube,
            settings.write_concurrency,
            on_write=lambda k, r: metrics.writes.labels(k, r).inc(),
        )
        self.runtimes: dict[str, Runtime] = {}
        self.shadow = ShadowScores(metrics)
        self.canaries = Canaries(metrics)
        self.rollouts = Rollouts(metrics)
        self.drift = DriftWatch(metrics)
        self.telemetry = Telemetry(metrics)
        # Per-policy memory beside the Runtime: each retains the policies there are, is
        # cleared with leadership and exports its metrics once per tick.
        self.watchers = (self.shadow, self.canaries, self.drift)
        self.kill = KillSwitch.from_settings(settings)
        self.decision_log = DecisionLog.from_settings(settings, metrics)

    def forget(self) -> None:
        """Drop every policy's memory and the statuses not yet sent (leadership lost: the next
        leader restores from status)."""
        self.runtimes.clear()
        self.statuses.clear()
        self.rollouts.clear()
        for w in self.watchers:
            w.clear()

    # --- the tick -------------------------------------------------------------------------

    async def run_once(
        self, policies: Sequence[IndexedPolicy], now: float | None = None
    ) -> TickReport:
        t0 = time.perf_counter()
        now = self.clock() if now is None else now
        rep = TickReport(now=now)
        due = self._due(policies, now)
        rep.due = len(due)
        if not due:
            rep.written.set()
            return rep
        laps = _Laps(rep)
        self.metrics.status_backlog.set(self.statuses.backlog)
        # Until the scale writes are done, no status patch or Event starts (those in flight
        # finish): a backlog of them must not slow the queries, the decisions or the writes.
        self.events.hold()
        self.statuses.hold()
        try:
            namespaces = {p.namespace for p, _ in due}
            await asyncio.gather(
                self.kill.refresh(self.kube, namespaces),
                self.rollouts.refresh(self.kube, namespaces),
            )
            owners = enforcers(policies)
            for e in self.rollouts.assign(policies, owners, now):
                self.events.post(e)
            await self._refresh_models([p for p, _ in due])
            self.kill.export(self.metrics)
            rows, statuses = self._prepare(due, owners, now)
            laps.lap("prepare")
            await self._observe(rows, now, rep)
            laps.lap("prometheus")
            t1 = time.perf_counter()
            self._decide(rows, now, rep)
            fail_over(rows, now, self.metrics, self._post)
            rep.decide_s = time.perf_counter() - t1
            laps.lap("decide")
            rep.decided_at = time.time()
            await self._scale_all(rows, now, rep, t0)
            laps.lap("scale writes")
        finally:
            self.events.release()
            self.statuses.release()
        self._conclude(rows, statuses, now)
        batch = self._hand_over(due, rows, statuses, rep, t0)
        laps.lap("statuses")
        if self.decision_log is not None:
            self.decision_log.write_rows(rows, now)
        rep.report(t0, self.metrics, self.runtimes.values())
        batch.seal()
        return rep

    # --- prepare --------------------------------------------------------------------------

    def _due(
        self, policies: Sequence[IndexedPolicy], now: float
    ) -> list[tuple[IndexedPolicy, Runtime]]:
        """The policies due now (each with its memory, new ones restored from their status);
        the memory of policies gone is dropped."""
        seen = {p.uid for p in policies}
        for uid in [u for u in self.runtimes if u not in seen]:
            del self.runtimes[uid]
        for w in self.watchers:
            w.retain(seen)
        due: list[tuple[IndexedPolicy, Runtime]] = []
        for p in policies:
            rt = self.runtimes.get(p.uid)
            if rt is None:
                found = json_copy(p.status)
                rt = self.runtimes[p.uid] = Runtime(uid=p.uid, status=found, written=found)
            if now + 1e-3 >= rt.next_due:
                interval = p.spec.interval_s if p.spec else actions.DECISION_INTERVAL_S
                rt.next_due = (math.floor(now / interval + 1e-6) + 1) * interval
                due.append((p, rt))
        return due

    def _prepare(
        self,
        due: Sequence[tuple[IndexedPolicy, Runtime]],
        owners: dict[tuple[str, str], IndexedPolicy],
        now: float,
    ) -> tuple[list[Row], dict[str, dict[str, Any]]]:
        """A row per policy to decide, and each policy's status to be (a problem's already
        final). Replicas unknown (the namespace not synced): neither, nothing to report. An
        Enforce policy on a target another Enforce policy already writes is refused."""
        statuses: dict[str, dict[str, Any]] = {}
        rows: list[Row] = []
        for p, rt in due:
            if p.spec is None:
                statuses[p.uid] = self._problem(p, rt, OpReason.INVALID_SPEC, p.error, now)
                continue
            if not self.cache.synced(p.namespace):
                continue
            owner = owners.get((p.namespace, p.spec.target))
            if p.spec.mode == "Enforce" and owner is not None and owner.uid != p.uid:
                msg = target_conflict_message(p.spec.target, owner.name)
                statuses[p.uid] = self._problem(p, rt, OpReason.TARGET_CONFLICT, msg, now)
                continue
            target = self.cache.get(p.namespace, p.spec.target)
            if target is None:
                msg = f"Deployment {p.spec.target} not found in namespace {p.namespace}"
                statuses[p.uid] = self._problem(p, rt, OpReason.TARGET_MISSING, msg, now)
                continue
            kill = self.kill.for_namespace(p.namespace)
            c = arms.choose(self.canaries, self.rollouts, p, rt.status, kill, now)
            model, err = self.models.lookup(p.namespace, c.ref.configmap, c.ref.sha256)
            row = Row(p, rt, p.spec, target, model, err, kill=kill, before=target.replicas)
            row.arm, row.by_rule, row.rollout = c.arm, c.by_rule, c.rollout
            notice = self.kill.notice(row)
            if notice is not None:
                self._post(p, notice, now)
            act_on_drift(row)
            rows.append(row)
            statuses[p.uid] = base_status(rt.status, p.generation)
        return rows, statuses

    def _problem(
        self, p: IndexedPolicy, rt: Runtime, reason: OpReason, msg: str, now: float
    ) -> dict[str, Any]:
        """The status of a policy that cannot be decided; its Event once; its memory reset."""
        st = problem_status(base_status(rt.status, p.generation), p.generation, reason, msg, now)
        if rt.problem != reason.value:
            self._post(p, Notice("Warning", reason.value, msg), now)
            rt.problem = reason.value
        rt.shield = None  # restored from the record once the target is back
        rt.failed, rt.fallback_since = 0, None
        return st

    async def _refresh_models(self, due: Sequence[IndexedPolicy]) -> None:
        refs = {
            (p.namespace, ref.configmap, ref.sha256)
            for p in due
            if p.spec is not None
            for ref in (p.spec.model, *((p.spec.canary.model,) if p.spec.canary else ()))
            if not ref.is_default
        }
        await self.models.refresh(self.kube, refs | self.rollouts.model_refs())
        for m in self.models.loaded():
            self.metrics.model_info.labels(m.name, m.digest[:16], m.spec_hash).set(1)

    # --- query ----------------------------------------------------------------------------

    async def _observe(self, rows: list[Row], now: float, rep: TickReport) -> None:
        """Each row's Observation: 5 queries per distinct (Prometheus, templates)."""
        groups = query_groups(rows, self.settings.prometheus_address)
        rep.queries = (len(TEMPLATES) + 1) * len(groups)  # and timestamp() of the rate
        if not groups:
            return
        got = await self.prom.fetch(list(groups), now)
        for g, rs in groups.items():
            for r in rs:
                r.obs = got[g].get((r.policy.namespace, r.spec.target), Observation())

    # --- decide ---------------------------------------------------------------------------

    def _decide(self, rows: list[Row], now: float, rep: TickReport) -> None:
        """Each row's verdict: the model's, shielded; without a model, hold within the bounds."""
        active = [r for r in rows if r.spec.mode != "Off"]
        for r in active:
            restore_shield(r, now)
        hold_within_bounds(
            [r for r in active if r.model is None or r.kill is not None or r.by_rule]
        )
        deciding = [r for r in active if r.model is not None and r.kill is None and not r.by_rule]
        if not deciding:
            return
        t0 = time.perf_counter()
        estimate_capacities(deciding)
        signals = signals_of(deciding)
        state = batching.cat([r.runtime.shield for r in deciding])
        q_values, passes = forward(deciding, signals, state, now)
        for name, seconds in passes:
            rep.forward_s += seconds
            self.metrics.inference.labels(name).observe(seconds)
        decide_rows(deciding, signals, state, q_values, now, self.settings.stale_after_s)
        rep.decided = len(deciding)
        self.metrics.decide.observe(time.perf_counter() - t0)

    # --- write ----------------------------------------------------------------------------

    async def _scale_all(self, rows: Sequence[Row], now: float, rep: TickReport, t0: float) -> None:
        """Every scale write the tick owes, ``scale_concurrency`` at a time (status patches and
        Events are held meanwhile: :meth:`run_once`)."""
        moving = [r for r in rows if r.spec.mode == "Enforce" and r.moves]
        if not moving:
            return
        sem = asyncio.Semaphore(self.settings.scale_concurrency)
        await asyncio.gather(*(self._scale(r, now, rep, sem) for r in moving))
        rep.scale_s = time.perf_counter() - t0
        self.metrics.tick_scale.observe(rep.scale_s)

    def _conclude(self, rows: Sequence[Row], statuses: dict[str, dict[str, Any]], now: float):
        """After the scale writes: each row's memory, notices and status."""
        for r in rows:
            self._settle(r, now)
            statuses[r.policy.uid] = self._status(r, statuses[r.policy.uid], now)
        for w in self.watchers:  # once per tick, not once per policy
            w.export()
        for e in self.rollouts.conclude(self.kube, now):
            self.events.post(e)

    def _hand_over(
        self,
        due: Sequence[tuple[IndexedPolicy, Runtime]],
        rows: Sequence[Row],
        statuses: dict[str, dict[str, Any]],
        rep: TickReport,
        t0: float,
    ) -> TickBatch:
        """Each policy's status to the status writer (the scaled ones first), as one batch to
        seal; the tick does not wait for them (:class:`StatusWriter`)."""
        scaled = {r.policy.uid for r in rows if r.last_action is not None}
        batch = TickBatch(t0, on_done=lambda b: rep.finish(b, self.metrics))
        for p, rt in sorted(due, key=lambda item: item[0].uid not in scaled):
            st = statuses.get(p.uid)
            if st is not None:
                rt.status = st
                self.statuses.submit(p, rt, st, batch)
        return batch

    def _settle(self, r: Row, now: float) -> None:
        """What follows from the row's decision and its scale write (memory, notices, metrics)."""
        if r.outside is not None:
            self._post(r.policy, outside_notice(r.spec, r.outside), now)
        if r.new_shield is not None:
            r.runtime.shield = r.new_shield
        if r.new_hpa is not None:
            r.runtime.hpa_state = r.new_hpa
        v = r.verdict
        if r.spec.mode == "Shadow" and r.moves:
            # A would-be scale is recorded once, not again on every tick it stays the same.
            r.last_action = shadow_action(r.runtime.status, r.target.replicas, v, now)
        if r.spec.mode != "Off":
            self.telemetry.observe(r)

    async def _scale(self, r: Row, now: float, rep: TickReport, sem: asyncio.Semaphore) -> None:
        """Write ``replicas -> desired``; a step that did not land is undone (its memory)."""
        v, before, rt = r.verdict, r.target.replicas, r.runtime
        assert v.desired is not None
        ns, name = r.policy.namespace, r.spec.target
        req = ScaleRequest(ns, name, before, v.desired, r.target.resource_version, r.target.uid)
        res = await scale_one(self.kube, req, sem)
        self.metrics.writes.labels("scale", res.outcome.value).inc()
        self.metrics.conflicts.inc(res.conflicts)
        rep.scale_writes += 1
        rep.conflicts += res.conflicts
        if res.landed:
            rep.changed.append((ns, name, before, v.desired))
            rt.write_failing = False
            self._post(r.policy, scaled_notice(r.spec, r.model, r.obs, v, before), now)
            r.last_action = last_action(before, v, now, applied=True)
            r.target = updated_target(r.target, res)
            self.cache.note(r.target)
            return
        if res.outcome == Outcome.FAILED and not rt.write_failing:
            self._post(r.policy, scale_failed_notice(r.spec, v.desired, res.error), now)
        rt.write_failing = res.outcome == Outcome.FAILED
        r.new_shield, r.new_hpa = None, None  # as if the step had not been decided

    def _status(self, r: Row, st: dict[str, Any], now: float) -> dict[str, Any]:
        """The row's status after its write; a model refused is reported once."""
        canary, events = arms.observe(self.canaries, self.rollouts, r, now)
        for e in events:
            self.events.post(e)
        drift = self.drift.observe(r, now)
        notice = drift_notice(r.runtime.status.get("drift"), drift, r.spec)
        if notice is not None:
            self._post(r.policy, notice, now)
        new = decided_status(
            st,
            spec=r.spec,
            generation=r.policy.generation,
            replicas=r.target.replicas,
            model=r.model,
            model_error=r.model_error,
            obs=r.obs,
            verdict=r.verdict,
            last=r.last_action,
            outside=r.outside,
            fallback_since=r.runtime.fallback_since,
            shield_record=shield_record(r, now),
            now=now,
            stale_after_s=self.settings.stale_after_s,
            kill=r.kill.describe if r.kill is not None else "",
            shadow=self.shadow.observe(r, now),
            canary=canary,
            drift=drift,
        )
        problem = model_problem(r.spec, r.model)
        if problem and r.runtime.problem != problem:
            self._post(r.policy, Notice("Warning", problem, r.model_error), now)
        r.runtime.problem = problem
        return new

    def _post(self, p: IndexedPolicy, n: Notice, now: float) -> None:
        self.events.post(Event(p.namespace, p.name, p.uid, n.type, n.reason, n.message, now))

    # --- report ---------------------------------------------------------------------------


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.0f} ms"


def _log_tick(rep: TickReport) -> None:
    level = logging.INFO if rep.scale_writes or rep.status_writes else logging.DEBUG
    phases = ", ".join(f"{k} {v * 1e3:.0f}" for k, v in rep.phases.items())
    log.log(
        level,
        "tick: %d due, %d decided, %d queries, %d scaled (last %s), %d status writes "
        "(last %s), %.0f ms to the writer (%s ms)",
        rep.due,
        rep.decided,
        rep.queries,
        rep.scale_writes,
        _ms(rep.scale_s),
        rep.status_writes,
        _ms(rep.status_s),
        rep.seconds * 1e3,
        phases,
    )
