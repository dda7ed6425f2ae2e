"""Shadow scoring: what a candidate's choices would have cost, and how often they would have
missed the SLO, against the controller in charge, estimated from the load a cluster observed.

A policy in Shadow mode decides every tick on the live state and writes nothing. Each tick
leaves a :class:`Sample`: the observed request rate, the incumbent's replicas (spec and
ready), its busy pods (CPU), its measured p95 and the count the candidate would have set.
:func:`score` turns a window of samples into a :class:`Score`:

* **The service**, estimated from the same window: a pod's capacity is the observed rate over
  the busy pods (the median over ticks with at least half a pod busy and not every ready pod
  saturated); the mean service time is
  the measured p95 at low utilization over ``ln 20`` (the p95 of an exponential service time,
  as :mod:`qscale.service` models it); the pod start-up delay is the incumbent's own pending
  pod-seconds per pod it added (Little's law), or ``startup_s`` when it added none.
* **Both arms through the same queueing model** (:func:`qscale.service.p95_no_backlog`, the
  simulator's): the incumbent with its observed ready pods, the candidate with its counts, a
  pod it adds counted ready after the start-up delay. A tick is an SLO-violating one when the
  estimated p95 exceeds the SLO; cost is replica-hours of the counts set.
* **The estimate's error**: the incumbent's SLO minutes are also *measured*; the gap between
  its measured and estimated minutes widens the interval of the difference, and a moving-block
  bootstrap over the window's ticks (blocks of ~sqrt(n) ticks, fixed seed) gives the interval
  of each difference (candidate minus incumbent).
* **The verdict**, beyond those intervals: ``CANDIDATE_BETTER`` (no worse on either, better on
  one), ``INCUMBENT_BETTER``, ``TRADE_OFF`` (better on one, worse on the other),
  ``NO_DIFFERENCE``, ``UNCERTAIN``; ``INSUFFICIENT_DATA`` until half the window is covered and
  the service could be estimated.

What the estimate cannot know: the candidate decided on the state the incumbent made, not on
its own (an open-loop replay, as every shadow evaluation is), and a queue carried over from
one tick to the next is not modelled (each tick is a steady state).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from qscale import features, service

__all__ = ["VERDICTS", "Sample", "Score", "score"]

VERDICTS = (
    "CANDIDATE_BETTER",
    "INCUMBENT_BETTER",
    "TRADE_OFF",
    "NO_DIFFERENCE",
    "UNCERTAIN",
    "INSUFFICIENT_DATA",
)
_LN20 = math.log(20.0)
_RESAMPLES = 400


@dataclass(frozen=True)
class Sample:
    """One tick of a policy in Shadow mode (NaN: not known)."""

    t: float
    """Wall-clock seconds."""
    rate: float
    """Observed requests/s."""
    replicas: float
    """The incumbent's count (the target's spec.replicas)."""
    ready: float
    busy: float
    """Busy pods, from CPU (:func:`qscale.features.busy_pods`)."""
    p95_s: float
    """Measured p95 latency."""
    candidate: float
    """The count the candidate would have set."""


@dataclass(frozen=True)
class Arm:
    replica_hours: float
    slo_minutes: float
    """Estimated by the service model."""


@dataclass(frozen=True)
class Score:
    verdict: str
    message: str
    window_s: float
    covered_s: float
    samples: int
    capacity_rps: float = math.nan
    service_time_s: float = math.nan
    startup_s: float = math.nan
    startup_observed: bool = False
    candidate: Arm | None = None
    incumbent: Arm | None = None
    incumbent_measured_slo_minutes: float = math.nan
    model_error_minutes: float = math.nan
    d_replica_hours: tuple[float, float] = (math.nan, math.nan)
    """95 % interval of candidate minus incumbent."""
    d_slo_minutes: tuple[float, float] = (math.nan, math.nan)

    def as_status(self) -> dict:
        """The policy's ``status.shadow`` (numbers rounded; unknowns left out)."""

        def r(x: float, nd: int = 3) -> float | None:
            return round(x, nd) if math.isfinite(x) else None

        out: dict = {
            "verdict": self.verdict,
            "message": self.message,
            "windowSeconds": r(self.window_s, 0),
            "coveredSeconds": r(self.covered_s, 0),
            "samples": self.samples,
        }
        svc = {
            "capacityPerPod": r(self.capacity_rps, 2),
            "serviceTimeSeconds": r(self.service_time_s, 4),
            "startupSeconds": r(self.startup_s, 1),
            "startupObserved": self.startup_observed,
        }
        out["service"] = {k: v for k, v in svc.items() if v is not None}
        if self.candidate is not None and self.incumbent is not None:
            out["candidate"] = {
                "replicaHours": r(self.candidate.replica_hours),
                "sloMinutes": r(self.candidate.slo_minutes, 2),
            }
            inc = {
                "replicaHours": r(self.incumbent.replica_hours),
                "sloMinutes": r(self.incumbent.slo_minutes, 2),
                "measuredSloMinutes": r(self.incumbent_measured_slo_minutes, 2),
            }
            out["incumbent"] = {k: v for k, v in inc.items() if v is not None}
            out["difference"] = {
                "replicaHours": [r(v) for v in self.d_replica_hours],
                "sloMinutes": [r(v, 2) for v in self.d_slo_minutes],
            }
        return out


def _median(xs: list[float]) -> float:
    return float(torch.tensor(xs, dtype=torch.float64).median()) if xs else math.nan


def _side(lo: float, hi: float) -> str:
    if lo == 0.0 and hi == 0.0:
        return "same"
    if hi < 0:
        return "better"
    if lo > 0:
        return "worse"
    return "unsure"


def _verdict(d_cost: tuple[float, float], d_slo: tuple[float, float]) -> str:
    sides = {_side(*d_cost), _side(*d_slo)}
    if sides == {"same"}:
        return "NO_DIFFERENCE"
    if sides <= {"better", "same"}:
        return "CANDIDATE_BETTER"
    if sides <= {"worse", "same"}:
        return "INCUMBENT_BETTER"
    if sides == {"better", "worse"}:
        return "TRADE_OFF"
    return "UNCERTAIN"


def _interval(values: torch.Tensor, gen: torch.Generator) -> tuple[float, float]:
    """95 % moving-block bootstrap interval of ``values.sum()``."""
    n = values.shape[0]
    block = max(1, round(math.sqrt(n)))
    starts = n - block + 1
    k = math.ceil(n / block)
    idx = torch.randint(0, starts, (_RESAMPLES, k), generator=gen)
    idx = (idx[:, :, None] + torch.arange(block)[None, None, :]).reshape(_RESAMPLES, -1)[:, :n]
    totals = values[idx].sum(dim=1)
    lo, hi = torch.quantile(totals, torch.tensor([0.025, 0.975], dtype=totals.dtype)).tolist()
    return float(lo), float(hi)


def score(
    samples: Sequence[Sample],
    *,
    now: float,
    window_s: float,
    slo_s: float,
    interval_s: float,
    startup_s: float = 30.0,
) -> Score:
    """The shadow score of the samples in ``(now - window_s, now]`` (see the module's text).

    ``interval_s`` is the policy's tick: a sample stands for the time until the next one, at
    most ``2 x interval_s`` (a gap in the samples is not time either arm is charged for).
    ``startup_s`` is the start-up delay assumed when the window shows none.
    """
    xs = sorted((s for s in samples if now - window_s < s.t <= now), key=lambda s: s.t)
    n = len(xs)
    cap = 2.0 * interval_s
    dt = [min(b.t - a.t, cap) for a, b in itertools.pairwise(xs)]
    if xs:
        dt.append(min(max(now - xs[-1].t, 0.0), cap) or min(interval_s, cap))
    covered = float(sum(dt))

    def short(why: str, **kw) -> Score:
        return Score("INSUFFICIENT_DATA", why, window_s, covered, n, **kw)

    if covered < 0.5 * window_s:
        return short(f"{covered:.0f} s of a {window_s:.0f} s window observed (half needed)")
    # Saturated ticks (every ready pod busy) say only that the load exceeded the capacity:
    # they are used when no other tick is there, and then overstate it.
    busy = [
        s
        for s in xs
        if math.isfinite(s.rate)
        and s.rate > 0
        and math.isfinite(s.busy)
        and s.busy >= features.CAPACITY_EST_MIN_BUSY
    ]
    free = [
        s
        for s in busy
        if math.isfinite(s.ready) and s.busy <= features.CAPACITY_EST_MAX_LOAD * s.ready
    ]
    mu = _median([s.rate / s.busy for s in (free or busy)])
    if not (math.isfinite(mu) and mu > 0):
        return short("no tick with half a pod busy: a pod's capacity cannot be estimated")
    measured = [s for s in xs if math.isfinite(s.p95_s) and s.p95_s > 0]
    calm = [
        s.p95_s / _LN20
        for s in measured
        if math.isfinite(s.rate) and s.ready > 0 and s.rate / (s.ready * mu) < 0.5
    ]
    svc = _median(calm) if calm else min((s.p95_s / _LN20 for s in measured), default=math.nan)
    if not (math.isfinite(svc) and svc > 0):
        return short("no measured latency: the service time cannot be estimated", capacity_rps=mu)

    adds, pending = 0.0, 0.0
    for i, s in enumerate(xs):
        if i and math.isfinite(xs[i - 1].replicas) and math.isfinite(s.replicas):
            adds += max(0.0, s.replicas - xs[i - 1].replicas)
        if math.isfinite(s.ready) and math.isfinite(s.replicas):
            pending += max(0.0, s.replicas - s.ready) * dt[i]
    observed = adds >= 1.0
    delay = pending / adds if observed else startup_s

    t = torch.tensor([s.t for s in xs], dtype=torch.float64)
    w = torch.tensor(dt, dtype=torch.float64)
    rate = torch.tensor([max(s.rate, 0.0) if math.isfinite(s.rate) else 0.0 for s in xs])
    inc = torch.tensor([s.replicas for s in xs], dtype=torch.float64)
    inc_ready = torch.tensor([s.ready for s in xs], dtype=torch.float64)
    cand = torch.tensor([s.candidate for s in xs], dtype=torch.float64)
    cand = torch.where(torch.isfinite(cand), cand, inc)
    # A pod the candidate adds is ready after the delay: its ready count is the least count it
    # set in the last ``delay`` seconds (scale-downs take effect at once).
    recent = (t[None, :] <= t[:, None]) & (t[None, :] >= t[:, None] - delay)
    cand_ready = torch.where(recent, cand[None, :], math.inf).min(dim=1).values

    both_ready = torch.cat([inc_ready, cand_ready]).to(torch.float64)
    p95 = service.p95_no_backlog(
        rate.repeat(2).to(torch.float64),
        both_ready,
        torch.full_like(both_ready, mu),
        torch.full_like(both_ready, svc),
    )
    miss = (p95 > slo_s).to(torch.float64)
    miss_inc, miss_cand = miss[:n], miss[n:]
    hours, minutes = w / 3600.0, w / 60.0
    arm_inc = Arm(float((inc * hours).sum()), float((miss_inc * minutes).sum()))
    arm_cand = Arm(float((cand * hours).sum()), float((miss_cand * minutes).sum()))
    m_covered = sum(dt[i] for i, s in enumerate(xs) if math.isfinite(s.p95_s))
    measured_min = (
        sum(dt[i] / 60.0 for i, s in enumerate(xs) if math.isfinite(s.p95_s) and s.p95_s > slo_s)
        if m_covered >= 0.8 * covered
        else math.nan
    )
    error = abs(measured_min - arm_inc.slo_minutes) if math.isfinite(measured_min) else 0.0

    if bool((cand == inc).all()):  # the candidate chose what was there: nothing to tell apart
        d_cost, d_slo = (0.0, 0.0), (0.0, 0.0)
    else:
        gen = torch.Generator().manual_seed(0)
        d_cost = _interval((cand - inc) * hours, gen)
        lo, hi = _interval((miss_cand - miss_inc) * minutes, gen)
        d_slo = (lo - error, hi + error)
    verdict = _verdict(d_cost, d_slo)
    message = (
        f"candidate {arm_cand.replica_hours:.2f} replica-h, {arm_cand.slo_minutes:.1f} SLO min; "
        f"incumbent {arm_inc.replica_hours:.2f} replica-h, {arm_inc.slo_minutes:.1f} SLO min "
        f"estimated"
        + (f" ({measured_min:.1f} measured)" if math.isfinite(measured_min) else "")
        + f" over {covered / 60:.0f} min"
    )
    return Score(
        verdict,
        message,
        window_s,
        covered,
        n,
        capacity_rps=mu,
        service_time_s=svc,
        startup_s=delay,
        startup_observed=observed,
        candidate=arm_cand,
        incumbent=arm_inc,
        incumbent_measured_slo_minutes=measured_min,
        model_error_minutes=error if math.isfinite(measured_min) else math.nan,
        d_replica_hours=d_cost,
        d_slo_minutes=d_slo,
    )
