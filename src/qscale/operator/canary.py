"""Canary: a candidate model decides a share of an Enforce policy's time, the incumbent (the
policy's own model) the rest; the candidate is rolled back on its own measured figures, and
optionally promoted (pure: the tick hands it each tick's outcome; no I/O).

**Who decides when.** Time is cut in periods (``spec.canary.period``, counted from the epoch,
so a restart keeps the schedule); the candidate decides the first ``percent`` of each period,
the incumbent the rest. Alternating within each period, both arms meet the same kind of load.

**What each arm is charged.** A tick's outcome (the replicas standing, the request rate, the
measured p95 against the SLO) is charged to the arm that decided at the tick before: it is the
state that decision left. A decision the shield limited (a ``LIMIT_REASONS`` code) counts as an
intervention of the arm that made it. Only ``window`` seconds are kept.

**Rollback**, at once and for good: once the candidate has decided ``MIN_DECISIONS`` times in
the window, if the share of its time with p95 over the SLO exceeds ``maxSloViolationPercent``,
or the share of its decisions the shield limited exceeds ``maxInterventionPercent``, or its
model cannot be served. The state ``RolledBack`` is kept in status; only a change of the spec
(a new generation) starts the canary again.

**Promotion** (``promotion.enabled``), after one whole window: per period, the candidate's
replica-seconds per request against the incumbent's, and its share of violating time against
the incumbent's; over the periods, a bootstrap (fixed seed) of the mean of each. Promoted when
the lower end of the cost saving's 95 % interval is at least ``minCostSavingPercent`` and the
upper end of the SLO difference is at most 0. The state ``Promoted`` makes the candidate decide
all the time; the Event says to set ``spec.model`` to it to make that permanent.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from qscale.operator.metrics import Metrics
from qscale.operator.spec import CanarySpec
from qscale.operator.status import HPA_LIMIT_REASONS, LIMIT_REASONS, Notice, iso

__all__ = ["ARMS", "Canaries", "Canary", "Ledger", "Transition", "charge", "rollback_reason"]

ARMS = ("candidate", "incumbent")
RUNNING, ROLLED_BACK, PROMOTED = "Running", "RolledBack", "Promoted"
STATES = (RUNNING, ROLLED_BACK, PROMOTED)
MIN_DECISIONS = 5
_RESAMPLES = 400


@dataclass(frozen=True)
class _Tick:
    t: float
    dt: float
    arm: str
    replicas: float
    rate: float
    violated: bool | None
    """p95 over the SLO (``None``: not measured)."""
    busy: float = 0.0
    """Pods' worth of CPU in use (:func:`qscale.operator.rows.busy_pods`)."""


@dataclass(frozen=True)
class Transition:
    state: str
    reason: str
    message: str


@dataclass
class _Arm:
    seconds: float = 0.0
    known_s: float = 0.0
    violating_s: float = 0.0
    replica_s: float = 0.0
    requests: float = 0.0
    busy_s: float = 0.0
    decisions: int = 0
    interventions: int = 0

    def add(self, k: _Tick) -> None:
        self.seconds += k.dt
        self.replica_s += k.replicas * k.dt
        self.requests += k.rate * k.dt
        self.busy_s += k.busy * k.dt
        if k.violated is not None:
            self.known_s += k.dt
            self.violating_s += k.dt if k.violated else 0.0

    def merge(self, o: _Arm) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(o, f.name))

    def as_status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "seconds": round(self.seconds, 1),
            "decisions": self.decisions,
            "replicaHours": round(self.replica_s / 3600.0, 4),
        }
        if self.known_s > 0:
            out["sloViolationPercent"] = round(100.0 * self.violating_s / self.known_s, 2)
        if self.decisions:
            out["interventionPercent"] = round(100.0 * self.interventions / self.decisions, 2)
        return out


@dataclass
class Ledger:
    """One target's outcomes and decisions over a window, each charged to an arm."""

    window_s: float
    interval_s: float
    ticks: deque[_Tick] = field(default_factory=deque)
    decisions: deque[tuple[float, str, bool]] = field(default_factory=deque)
    """(time, arm, limited by the shield) of each decision in the window."""
    last: tuple[float, str] | None = None
    """(time, arm) of the last decision: who is charged for the next outcome."""

    def record(
        self,
        now: float,
        arm: str,
        decided: bool,
        limited: bool,
        replicas: float,
        rate: float,
        p95_s: float,
        slo_s: float,
        busy: float = 0.0,
    ) -> _Tick | None:
        """This tick: the outcome of the last decision (returned), then this tick's decision
        by ``arm``."""
        new = None
        if self.last is not None:
            t_prev, arm_prev = self.last
            dt = min(now - t_prev, 2.0 * self.interval_s)
            if dt > 0:
                known = math.isfinite(p95_s) and math.isfinite(rate) and rate > 0
                new = _Tick(
                    now,
                    dt,
                    arm_prev,
                    replicas,
                    rate if math.isfinite(rate) else 0.0,
                    (p95_s > slo_s) if known else None,
                    busy if math.isfinite(busy) else 0.0,
                )
                self.ticks.append(new)
        if decided:
            self.decisions.append((now, arm, limited))
        self.last = (now, arm) if decided else None
        start = now - self.window_s
        while self.ticks and self.ticks[0].t <= start:
            self.ticks.popleft()
        while self.decisions and self.decisions[0][0] <= start:
            self.decisions.popleft()
        return new

    def arms(self) -> dict[str, _Arm]:
        out = {a: _Arm() for a in ARMS}
        for k in self.ticks:
            out[k.arm].add(k)
        for _, arm, limited in self.decisions:
            out[arm].decisions += 1
            out[arm].interventions += int(limited)
        return out


def rollback_reason(c: _Arm, max_slo_violation: float, max_interventions: float):
    """``(reason, message)`` when a candidate arm's figures call for a rollback, else ``None``:
    once it has decided ``MIN_DECISIONS`` times, its share of time with p95 over the SLO, then
    its share of decisions the shield limited."""
    if c.decisions < MIN_DECISIONS:
        return None
    if c.known_s > 0:
        share = c.violating_s / c.known_s
        if share > max_slo_violation:
            return (
                "SLO_VIOLATION",
                f"the candidate's p95 was over the SLO {share:.0%} of its "
                f"{c.seconds:.0f} s (limit {max_slo_violation:.0%})",
            )
    share = c.interventions / c.decisions
    if share > max_interventions:
        return (
            "SHIELD_INTERVENTIONS",
            f"the shield limited {share:.0%} of the candidate's {c.decisions} "
            f"decisions (limit {max_interventions:.0%})",
        )
    return None


@dataclass
class Canary:
    """One policy's canary: its schedule, its window of outcomes, its state."""

    spec: CanarySpec
    generation: int
    interval_s: float
    state: str = RUNNING
    since: float = 0.0
    reason: str = ""
    message: str = ""
    ledger: Ledger = field(init=False)
    shown: dict[str, Any] | None = None
    """``status.canary`` as last made (it is remade on a change of arm or state, and at least
    once a period: not on every tick)."""
    shown_at: float = -math.inf
    checked: float = -math.inf
    """When promotion was last weighed."""

    @classmethod
    def restore(
        cls, spec: CanarySpec, generation: int, interval_s: float, status: Any, now: float
    ) -> Canary:
        """From ``status.canary`` when it is of this generation, else a new one from ``now``."""
        c = cls(spec, generation, interval_s, since=now)
        if isinstance(status, dict) and status.get("generation") == generation:
            state = status.get("state")
            if state in STATES:
                c.state = state
                c.reason, c.message = status.get("reason", ""), status.get("message", "")
                since = status.get("sinceEpoch")
                c.since = float(since) if isinstance(since, int | float) else now
                if state == RUNNING:
                    c.since = now  # its window starts again (the outcomes were in memory)
        return c

    def arm_at(self, now: float) -> str:
        if self.state == ROLLED_BACK:
            return "incumbent"
        if self.state == PROMOTED:
            return "candidate"
        phase = (now % self.spec.period_s) / self.spec.period_s
        return "candidate" if phase < self.spec.fraction else "incumbent"

    def __post_init__(self) -> None:
        self.ledger = Ledger(self.spec.window_s, self.interval_s)

    def arms(self) -> dict[str, _Arm]:
        return self.ledger.arms()

    def refuse(self, now: float, why: str) -> Transition | None:
        """The candidate's model cannot be served: roll back at once."""
        if self.state != RUNNING:
            return None
        return self._go(now, ROLLED_BACK, "MODEL_REFUSED", f"the candidate model: {why}")

    def judge(self, now: float) -> Transition | None:
        """Rollback or promotion, if this tick calls for one (see the module's text)."""
        if self.state != RUNNING:
            return None
        s = self.spec
        why = rollback_reason(self.arms()["candidate"], s.max_slo_violation, s.max_interventions)
        if why is not None:
            return self._go(now, ROLLED_BACK, *why)
        if s.promote and now - self.since >= s.window_s and now - self.checked >= s.period_s / 2:
            self.checked = now  # a bootstrap twice a period, not every tick
            verdict = self._promotion()
            if verdict is not None:
                return self._go(now, PROMOTED, "PROMOTED", verdict)
        return None

    def _periods(self) -> list[tuple[_Arm, _Arm]]:
        by: dict[int, dict[str, _Arm]] = {}
        for k in self.ledger.ticks:  # by the period of the decision the outcome followed
            period = int((k.t - k.dt) // self.spec.period_s)
            by.setdefault(period, {x: _Arm() for x in ARMS})[k.arm].add(k)
        return [
            (p["candidate"], p["incumbent"])
            for p in by.values()
            if p["candidate"].requests > 0 and p["incumbent"].requests > 0
        ]

    def _promotion(self) -> str | None:
        periods = self._periods()
        if len(periods) < 2:
            return None
        saving = torch.tensor(
            [1.0 - (c.replica_s / c.requests) / (i.replica_s / i.requests) for c, i in periods],
            dtype=torch.float64,
        )
        slo = torch.tensor(
            [
                (c.violating_s / c.known_s if c.known_s else 0.0)
                - (i.violating_s / i.known_s if i.known_s else 0.0)
                for c, i in periods
            ],
            dtype=torch.float64,
        )
        gen = torch.Generator().manual_seed(0)
        idx = torch.randint(0, len(periods), (_RESAMPLES, len(periods)), generator=gen)
        q = torch.tensor([0.025, 0.975], dtype=torch.float64)
        save_lo = float(torch.quantile(saving[idx].mean(dim=1), q)[0])
        slo_hi = float(torch.quantile(slo[idx].mean(dim=1), q)[1])
        if save_lo >= self.spec.min_cost_saving and slo_hi <= 0.0:
            return (
                f"over {len(periods)} periods the candidate used at least {save_lo:.0%} fewer "
                f"replica-seconds per request (95 % interval) and was no worse on the SLO"
            )
        return None

    def _go(self, now: float, state: str, reason: str, message: str) -> Transition:
        self.state, self.reason, self.message, self.since = state, reason, message, now
        return Transition(state, reason, message)

    def as_status(
        self, now: float, now_iso: str, since_iso: str, model: dict[str, str]
    ) -> dict[str, Any]:
        arms = self.arms()
        out: dict[str, Any] = {
            "state": self.state,
            "generation": self.generation,
            "since": since_iso,
            "sinceEpoch": round(self.since, 3),
            "arm": self.arm_at(now),
            "model": model,
            "windowSeconds": self.spec.window_s,
            "candidate": arms["candidate"].as_status(),
            "incumbent": arms["incumbent"].as_status(),
            "updatedAt": now_iso,
        }
        if self.reason:
            out["reason"], out["message"] = self.reason, self.message
        return out


def charge(m: Metrics, ledger: Ledger, r: Any, now: float, busy: float = 0.0) -> None:
    """Row ``r``'s tick into ``ledger``: the outcome of the last decision (the count it left:
    this tick's is not yet seen), then this tick's decision by ``r.arm``; and the arm metrics."""
    v, o = r.verdict, r.obs
    decided = (v.model_decided and not v.by_fallback) or (r.by_rule and v.by_fallback)
    limited = v.hpa_reason in HPA_LIMIT_REASONS if r.by_rule else v.reason in LIMIT_REASONS
    outcome = (float(r.before), o.rate_now, o.p95_s, r.spec.slo_s, busy)
    tick = ledger.record(now, r.arm, decided, limited, *outcome)
    if tick is not None:
        m.canary_seconds.labels(tick.arm).inc(tick.dt)
        if tick.violated:
            m.canary_violation_seconds.labels(tick.arm).inc(tick.dt)
    if decided:
        m.canary_decisions.labels(r.arm).inc()
        if limited:
            m.canary_interventions.labels(r.arm).inc()


class Canaries:
    """The canary of every Enforce policy that has one: which arm decides, what it is
    charged, the transitions (Events) and ``status.canary``."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._c: dict[str, Canary] = {}

    def arm(self, p: Any, status: Any, now: float) -> str | None:
        """The arm that decides policy ``p`` now (``None``: no canary)."""
        spec = p.spec
        if spec is None or spec.mode != "Enforce" or spec.canary is None:
            self._c.pop(p.uid, None)
            return None
        c = self._c.get(p.uid)
        if c is None or (c.generation, c.spec, c.interval_s) != (
            p.generation,
            spec.canary,
            spec.interval_s,
        ):
            saved = status.get("canary") if isinstance(status, dict) else None
            c = self._c[p.uid] = Canary.restore(
                spec.canary, p.generation, spec.interval_s, saved, now
            )
        return c.arm_at(now)

    def observe(self, r: Any, now: float) -> tuple[dict[str, Any] | None, Notice | None]:
        """The row's tick for its canary: its ``status.canary`` and a transition's Notice."""
        c = self._c.get(r.policy.uid)
        if c is None or r.arm is None:
            return None, None
        trans = None
        if r.arm == "candidate" and r.model is None:
            trans = c.refuse(now, r.model_error or "not loaded")
        charge(self.metrics, c.ledger, r, now)
        m = self.metrics
        trans = trans or c.judge(now)
        notice = None
        if trans is not None:
            if trans.state == ROLLED_BACK:
                m.canary_rollbacks.inc()
                notice = Notice(
                    "Warning",
                    "CANARY_ROLLED_BACK",
                    f"{trans.message}: the incumbent decides again; a change of the spec "
                    "starts the canary again",
                )
            else:
                m.canary_promotions.inc()
                notice = Notice(
                    "Normal",
                    "CANARY_PROMOTED",
                    f"{trans.message}: it decides from now on; set spec.model to it to keep it",
                )
        shown_arm = (c.shown or {}).get("arm")
        if (
            trans is not None
            or c.shown is None
            or (c.state == RUNNING and shown_arm != c.arm_at(now))
            or (c.state == RUNNING and now - c.shown_at >= c.spec.period_s)
        ):  # once rolled back or promoted, the figures stay those of the transition
            ref = c.spec.model
            c.shown = c.as_status(
                now, iso(now), iso(c.since), {"configMap": ref.configmap, "sha256": ref.sha256}
            )
            c.shown_at = now
        return c.shown, notice

    def retain(self, uids: set[str]) -> None:
        for u in [u for u in self._c if u not in uids]:
            del self._c[u]

    def clear(self) -> None:
        self._c.clear()
        self.export()

    def export(self) -> None:
        """Canaries by state to the metrics, once per tick (the tick calls it)."""
        counts = dict.fromkeys(STATES, 0)
        for c in self._c.values():
            counts[c.state] += 1
        for state, n in counts.items():
            self.metrics.canary_policies.labels(state).set(n)
