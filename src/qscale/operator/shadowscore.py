"""Shadow scoring in the operator: each policy in Shadow mode keeps a window of its ticks and,
every 1/30 of the window, scores its model's choices against the controller in charge
(:func:`qscale.counterfactual.score`) into ``status.shadow``.

A tick counts when the model's decision stood (metrics usable, no fallback, no kill switch):
its sample is the observed load, the target's counts, its busy pods and measured p95, and the
count the model would have set. The samples are the leader's memory: a restart or a new
leader starts the window again, and until half of it is covered the status keeps the last
score that had enough data (its ``updatedAt`` says how old it is).

Metrics stay without per-policy labels: Shadow policies by verdict, and the arms' replica-hours
and SLO minutes summed over them (what enforcing every Shadow policy would have changed).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from qscale.counterfactual import VERDICTS, Sample, score
from qscale.operator.metrics import Metrics
from qscale.operator.rows import Row
from qscale.operator.status import iso

__all__ = ["ShadowScores"]

_MAX_SAMPLES = 20_000
_RESCORES_PER_WINDOW = 30


@dataclass
class _State:
    window_s: float
    interval_s: float
    samples: deque[Sample]
    scored_at: float = -math.inf
    status: dict[str, Any] | None = None
    figures: dict[str, float] = field(default_factory=dict)


class ShadowScores:
    def __init__(self, metrics: Metrics, startup_s: float = 30.0) -> None:
        self.metrics = metrics
        self.startup_s = startup_s
        self._state: dict[str, _State] = {}
        self._dirty = True

    def observe(self, r: Row, now: float) -> dict[str, Any] | None:
        """Record the row's tick; its ``status.shadow`` (``None``: the policy is not in Shadow).

        ``r.runtime.status`` holds the last score written, kept while a new window fills."""
        uid = r.policy.uid
        if r.spec.mode != "Shadow":
            if self._state.pop(uid, None) is not None:
                self._dirty = True
            return None
        window, interval = r.spec.shadow_window_s, r.spec.interval_s
        st = self._state.get(uid)
        if st is None or (st.window_s, st.interval_s) != (window, interval):
            size = min(_MAX_SAMPLES, math.ceil(window / interval) + 2)
            st = self._state[uid] = _State(window, interval, deque(maxlen=size))
        v, t, o = r.verdict, r.target, r.obs
        if v.model_decided and not v.by_fallback and r.kill is None and v.desired is not None:
            busy = o.cpu_utilization / max(t.cpu_limit_ratio, 1e-6) * t.replicas
            st.samples.append(
                Sample(now, o.rate_now, t.replicas, t.ready, busy, o.p95_s, float(v.desired))
            )
        if now - st.scored_at >= max(interval, window / _RESCORES_PER_WINDOW):
            st.scored_at = now
            s = score(
                st.samples,
                now=now,
                window_s=window,
                slo_s=r.spec.slo_s,
                interval_s=interval,
                startup_s=self.startup_s,
            )
            new = {**s.as_status(), "updatedAt": iso(now)}
            kept = (st.status or r.runtime.status.get("shadow")) or None
            if s.verdict == "INSUFFICIENT_DATA" and kept and kept.get("verdict") != s.verdict:
                new = kept
            st.status = new
            st.figures = _figures(new)
            self._dirty = True
        return st.status or r.runtime.status.get("shadow")

    def retain(self, uids: set[str]) -> None:
        """Forget the policies not in ``uids`` (deleted)."""
        gone = [u for u in self._state if u not in uids]
        for u in gone:
            del self._state[u]
        if gone:
            self._dirty = True

    def clear(self) -> None:
        self._state.clear()
        self._dirty = True
        self.export()

    def export(self) -> None:
        """The totals to the metrics, once per tick (the tick calls it) and only after a
        change: a sum over every Shadow policy, not one per policy scored."""
        if not self._dirty:
            return
        self._dirty = False
        m = self.metrics
        counts = dict.fromkeys(VERDICTS, 0)
        totals: dict[str, float] = {}
        for st in self._state.values():
            if st.status:
                counts[st.status.get("verdict", "INSUFFICIENT_DATA")] += 1
            for k, x in st.figures.items():
                totals[k] = totals.get(k, 0.0) + x
        for verdict, n in counts.items():
            m.shadow_policies.labels(verdict).set(n)
        for arm in ("candidate", "incumbent"):
            m.shadow_replica_hours.labels(arm).set(totals.get(f"{arm}.replicaHours", 0.0))
        for arm in ("candidate", "incumbent", "incumbent_measured"):
            m.shadow_slo_minutes.labels(arm).set(totals.get(f"{arm}.sloMinutes", 0.0))


def _figures(status: dict[str, Any]) -> dict[str, float]:
    out = {}
    for arm in ("candidate", "incumbent"):
        for k, x in (status.get(arm) or {}).items():
            if k == "measuredSloMinutes":
                out["incumbent_measured.sloMinutes"] = float(x)
            else:
                out[f"{arm}.{k}"] = float(x)
    return out
