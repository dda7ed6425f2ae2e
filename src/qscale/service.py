"""The service model: how ready pods turn arrivals into served requests, a queue and latency.

Each pod serves up to ``capacity`` requests/s. A pod of capacity ``mu`` whose requests take a
mean ``service_time`` ``s`` runs ``k = mu * s`` requests concurrently, so ``n`` ready pods form
an M/M/c queue with ``c = n * k`` servers of rate ``1/s``. Per decision step of ``dt`` seconds:

* **Flow (fluid, exact conservation)**: work = backlog + arrivals; served = min(work,
  ready capacity x dt); what is left is the backlog carried into the next step. Requests that
  would wait longer than ``timeout_s`` are dropped (the backlog is capped at ``timeout_s`` x
  capacity), so ``served + backlog' + dropped = backlog + arrivals`` holds exactly.
* **Utilization** (what CPU metrics report): served / (ready capacity x dt), in [0, 1].
* **p95 latency** = p95 of the service time + p95 of the M/M/c waiting time + the time to drain
  the carried-over backlog:

      p95 = s ln 20 + s max(0, ln(P_wait / 0.05)) / (c (1 - rho)) + backlog' / (n mu)

* **A queue carried in and drained inside the step** (the step after an overload): for its
  first ``tau = backlog / (capacity - arrival rate)`` seconds the pods run flat out, and only
  then at ``arrival rate / capacity``. The step's latency is the mixture of the two phases,
  weighted by the requests each serves (:class:`StepLatency`), as the same model stepped at a
  finer ``dt`` gives it; one utilization for the whole step would drain the queue for free.

  The service-time term is the p95 of an exponential service time. The waiting term is exact
  for M/M/c given the probability of waiting ``P_wait`` (the waiting time is 0 with probability
  1 - P_wait, else exponential with rate c(1 - rho)/s); we approximate Erlang C by Sakasegawa's
  ``P_wait ~ rho^(sqrt(2(c+1)) - 1)`` (exact at c = 1), which costs a handful of tensor ops
  instead of an O(c) sum and keeps the right shape: many servers run hot with little queueing,
  few servers start queueing early. The backlog term is the fluid approximation of overload,
  where a queue no longer settles. No request waits longer than the timeout, so p95 is capped
  there (and equals it when demand waits with no ready pods).

Why this matters for the policy: latency is flat until utilization nears 1 and explodes past
it, and the knee sits lower for small deployments, so the right target utilization depends on
scale; a fixed-threshold HPA cannot express that, a learned policy can.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from qscale import batching

_LN20 = math.log(20.0)
_RHO_MAX = 0.999


@dataclass(frozen=True)
class StepFlow:
    served: torch.Tensor
    backlog: torch.Tensor
    dropped: torch.Tensor
    utilization: torch.Tensor
    p95_s: torch.Tensor


def _flow_core(
    arrivals: torch.Tensor,
    backlog: torch.Tensor,
    ready: torch.Tensor,
    capacity: torch.Tensor,
    dt: float,
    timeout_s: float,
) -> tuple[torch.Tensor, ...]:
    """``(cap_rate, work, served, backlog', dropped, has_cap, utilization)`` of one step."""
    cap_rate = ready * capacity
    cap = cap_rate * dt
    work = backlog + arrivals
    served = torch.minimum(work, cap)
    left = work - served
    new_backlog = torch.minimum(left, cap_rate * timeout_s)
    dropped = left - new_backlog
    has_cap = cap > 0
    util = torch.where(has_cap, served / torch.where(has_cap, cap, 1.0), 0.0)
    return cap_rate, work, served, new_backlog, dropped, has_cap, util


def serve(
    arrivals: torch.Tensor,
    backlog: torch.Tensor,
    ready: torch.Tensor,
    capacity: torch.Tensor,
    service_time_s: torch.Tensor,
    dt: float,
    timeout_s: float,
) -> tuple[StepFlow, StepLatency]:
    """One step of the service for a batch (``arrivals`` and ``backlog`` are request counts):
    the counts, the step's latency distribution (:class:`StepLatency`) and its exact p95
    (:func:`step_p95`, in ``p95_s``). The simulator and the emulator both step it."""
    cap_rate, work, served, new_backlog, dropped, has_cap, util = _flow_core(
        arrivals, backlog, ready, capacity, dt, timeout_s
    )
    rho = torch.clamp(util, max=_RHO_MAX)
    # A queue carried in that the step drains (it ends below capacity): flat out for
    # tau = backlog / (C - lambda) s, serving C tau of its requests, then at lambda / C.
    lam = arrivals / dt
    drains = has_cap & (backlog > 0) & (work < cap_rate * dt)
    spare = torch.where(drains, cap_rate - lam, 1.0)
    share = cap_rate * backlog / (spare * torch.where(drains, work, 1.0))
    share = torch.where(drains, torch.clamp(share, 0.0, 1.0), 0.0)
    after = torch.clamp(lam / torch.where(drains, cap_rate, 1.0), max=_RHO_MAX)
    steady = _model(
        torch.where(drains, after, rho), cap_rate, has_cap, service_time_s, new_backlog, work
    )
    # behind the queue as it drains: on average half of what came in
    flat_out = _model(
        torch.full_like(rho, _RHO_MAX), cap_rate, has_cap, service_time_s, 0.5 * backlog, work
    )
    lat = StepLatency(steady, flat_out, share)
    return StepFlow(served, new_backlog, dropped, util, step_p95(lat, timeout_s)), lat


def p95_no_backlog(
    rate: torch.Tensor,
    ready: torch.Tensor,
    capacity: torch.Tensor,
    service_time_s: torch.Tensor,
) -> torch.Tensor:
    """p95 when ``ready`` pods meet a steady ``rate`` with no queue carried in (for the oracle).

    Rates at or above capacity read as +inf: that many pods cannot hold the SLO.
    """
    cap_rate = ready * capacity
    over = rate >= cap_rate
    rho = torch.where(over, 0.0, rate / torch.where(cap_rate > 0, cap_rate, 1.0))
    servers = torch.clamp(cap_rate * service_time_s, min=1e-6)
    p_wait = torch.pow(rho, torch.sqrt(2.0 * (servers + 1.0)) - 1.0)
    tail = torch.clamp(torch.log(torch.clamp(p_wait, min=1e-30) * 20.0), min=0.0)
    p95 = service_time_s * _LN20 + service_time_s * tail / (servers * (1.0 - rho))
    return torch.where(over & (rate > 0), math.inf, p95)


# --- the latency distribution behind the p95 -------------------------------------------------
#
# A request's latency is L = D + S + W: D = the drain time of the carried-over backlog (every
# request of the step waits behind it), S ~ Exp(mean s) its own service time, and W = 0 with
# probability 1 - P_wait, else Exp(rate b) with b = c (1 - rho) / s (M/M/c waiting time). The
# survival function of S + W is that of a mixture of an exponential and a hypoexponential:
#
#     G(y) = (1 - P_wait) e^{-a y} + P_wait (b e^{-a y} - a e^{-b y}) / (b - a),   a = 1/s.
#
# `latency_p95` solves G(y) = 0.05 by Newton's method on ln G (nearly linear in y, so 3 steps
# from the closed-form approximation above reach float32 precision), and `latency_cdf` gives
# the fraction of requests at or under given bounds: the histogram an app would export. The
# simulator scores the exact p95 and shows a policy only the histogram, as Prometheus would.

DEFAULT_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip
"""Upper bounds (s) of the latency histogram: prometheus-client's defaults, what most apps use
(the ``+Inf`` bucket is implicit)."""

_NEWTON_STEPS = 3
_MIX_NEWTON_STEPS = 4
_EXP_FLOOR = -87.0


@dataclass(frozen=True)
class LatencyModel:
    """Parameters of the latency distribution of one step, per env (``[B]`` tensors)."""

    service_time_s: torch.Tensor
    p_wait: torch.Tensor
    wait_rate: torch.Tensor
    """``b = c (1 - rho) / s``: rate of the waiting time of a request that waits."""
    drain_s: torch.Tensor
    starved: torch.Tensor
    """Demand with no ready pod: every request times out."""


@dataclass(frozen=True)
class StepLatency:
    """The latency distribution of one step: a share ``drain_share`` (``[B]``) of its requests
    is served while a queue carried in from the step before drains, with the pods flat out
    (``flat_out``); the rest (``steady``) at the step's own utilization after it. Without a
    queue carried in (or in a step that ends with one) the share is 0 and the step is
    ``steady`` alone."""

    steady: LatencyModel
    flat_out: LatencyModel
    drain_share: torch.Tensor


def latency_model(
    served: torch.Tensor,
    backlog: torch.Tensor,
    ready: torch.Tensor,
    capacity: torch.Tensor,
    service_time_s: torch.Tensor,
    dt: float,
) -> LatencyModel:
    """The distribution behind a step whose ready pods served ``served`` requests in ``dt``."""
    cap_rate = ready * capacity
    has_cap = cap_rate > 0
    rho = torch.clamp(
        torch.where(has_cap, served / torch.where(has_cap, cap_rate * dt, 1.0), 0.0), max=_RHO_MAX
    )
    return _model(rho, cap_rate, has_cap, service_time_s, backlog, served + backlog)


def _model(
    rho: torch.Tensor,
    cap_rate: torch.Tensor,
    has_cap: torch.Tensor,
    service_time_s: torch.Tensor,
    backlog: torch.Tensor,
    work: torch.Tensor,
) -> LatencyModel:
    servers = torch.clamp(cap_rate * service_time_s, min=1e-6)
    p_wait = torch.pow(rho, torch.sqrt(2.0 * (servers + 1.0)) - 1.0)
    wait_rate = servers * (1.0 - rho) / service_time_s
    drain = backlog / torch.where(has_cap, cap_rate, 1.0)
    return LatencyModel(service_time_s, p_wait, wait_rate, drain, (~has_cap) & (work > 0))


@dataclass(frozen=True)
class _Terms:
    """What :func:`_survival` needs that does not depend on ``y`` (computed once per model)."""

    a: torch.Tensor
    neg_a: torch.Tensor
    neg_b: torch.Tensor
    b: torch.Tensor
    pw: torch.Tensor
    not_pw: torch.Tensor
    """``1 - P_wait``."""
    not_pw_a: torch.Tensor
    aa: torch.Tensor
    ab: torch.Tensor
    close: torch.Tensor
    safe: torch.Tensor


def _terms(m: LatencyModel) -> _Terms:
    a = 1.0 / m.service_time_s
    b = m.wait_rate
    diff = b - a
    close = diff.abs() < 1e-4 * a
    not_pw = 1.0 - m.p_wait
    return _Terms(
        a=a,
        neg_a=-a,
        neg_b=-b,
        b=b,
        pw=m.p_wait,
        not_pw=not_pw,
        not_pw_a=not_pw * a,
        aa=a * a,
        ab=a * b,
        close=close,
        safe=torch.where(close, torch.ones_like(diff), diff),
    )


def _survival(
    y: torch.Tensor, k: _Terms, density: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(G(y), g(y))``: survival and density of S + W at ``y >= 0`` (broadcasts over bounds);
    G is clamped to [0, 1], g (when ``density``) is not clamped (callers clamp its ratio)."""
    # Exponents floored at -87: e^-87 (1.6e-38) is still a normal float, and the CPU's exp is
    # over ten times slower on arguments whose result underflows. What it changes is below
    # 1e-33 in G and g, which no result can see: the CDF is 1 - G and the p95's Newton steps
    # run where G is near 0.05.
    ea = torch.exp(torch.clamp(k.neg_a * y, min=_EXP_FLOOR))
    eb = torch.exp(torch.clamp(k.neg_b * y, min=_EXP_FLOOR))
    hypo_g = torch.where(k.close, ea * (1.0 + k.a * y), (k.b * ea - k.a * eb) / k.safe)
    g = torch.clamp(k.not_pw * ea + k.pw * hypo_g, min=0.0, max=1.0)
    if not density:
        return g, None
    hypo_f = torch.where(k.close, k.aa * y * ea, k.ab * (ea - eb) / k.safe)
    return g, k.not_pw_a * ea + k.pw * hypo_f


def _wait_p95(m: LatencyModel) -> tuple[torch.Tensor, _Terms]:
    """p95 of S + W (the drain time left out) by Newton's method on ln G, and its terms."""
    s = m.service_time_s
    y = (
        s * _LN20
        + torch.clamp(torch.log(torch.clamp(m.p_wait, min=1e-30) * 20.0), min=0.0) / m.wait_rate
    )
    target = math.log(0.05)
    k = _terms(m)
    for _ in range(_NEWTON_STEPS):
        g, f = _survival(y, k)
        assert f is not None
        # G in [1e-30, 1]; a negative density reads as the smallest hazard either way.
        g = torch.clamp(g, min=1e-30)
        hazard = torch.clamp(f / g, min=1e-9)
        y = torch.clamp(y + (torch.log(g) - target) / hazard, min=0.0)
    return y, k


def _capped(m: LatencyModel, p95: torch.Tensor, timeout_s: float) -> torch.Tensor:
    return torch.where(m.starved, torch.full_like(p95, timeout_s), torch.clamp(p95, max=timeout_s))


def latency_p95(m: LatencyModel, timeout_s: float) -> torch.Tensor:
    """Exact p95 of the step's latency distribution (capped at the timeout)."""
    y, _ = _wait_p95(m)
    return _capped(m, m.drain_s + y, timeout_s)


def _drained_rows(lat: StepLatency) -> torch.Tensor | None:
    """The rows whose step drains a queue (``None``: every row). Eager, only those are solved
    as a mixture (a queue drains in few steps: after an overload); compiled, every row is, so
    that no shape depends on the values and the step stays one graph."""
    if torch.compiler.is_compiling():
        return None
    return (lat.drain_share > 0).nonzero().squeeze(1)


def _mixture_wait_p95(lat: StepLatency, y_steady: torch.Tensor, ks: _Terms) -> torch.Tensor:
    kf = _terms(lat.flat_out)
    behind = lat.flat_out.drain_s
    share = lat.drain_share
    alone = behind + torch.log(torch.clamp(share * kf.pw, min=1e-30) * 20.0) / kf.b
    lo = torch.maximum(y_steady, alone)
    y = lo
    target = math.log(0.05)
    rest = 1.0 - share
    for _ in range(_MIX_NEWTON_STEPS):
        yf = y - behind
        gf, ff = _survival(torch.clamp(yf, min=0.0), kf)
        assert ff is not None
        ff = torch.where(yf > 0, ff, 0.0)
        gs, fs = _survival(y, ks)
        assert fs is not None
        g = torch.clamp(share * gf + rest * gs, min=1e-30)
        hazard = torch.clamp((share * ff + rest * fs) / g, min=1e-9)
        y = torch.maximum(y + (torch.log(g) - target) / hazard, lo)
    return torch.where(share > 0, y, y_steady)


def step_p95(lat: StepLatency, timeout_s: float) -> torch.Tensor:
    """Exact p95 of a step's mixture (:class:`StepLatency`), capped at the timeout.

    The mixture's p95 is at or above each lower bound Newton starts from: the steady phase's
    p95 (the flat-out phase's latency, behind the draining queue, is the larger in
    distribution) and the point where the flat-out requests' waits alone, ``share P_wait
    e^(-b (y - drain))``, leave 5 %. From there Newton's method on ln G of the mixture, never
    below the start. (Where the step drains a queue it ends with none: ``steady`` has no drain
    time of its own.)"""
    y, ks = _wait_p95(lat.steady)
    ix = _drained_rows(lat)
    if ix is None:
        y = _mixture_wait_p95(lat, y, ks)
    elif ix.numel():
        sub = batching.select(lat, ix)
        y = y.index_put((ix,), _mixture_wait_p95(sub, y[ix], batching.select(ks, ix)))
    return _capped(lat.steady, lat.steady.drain_s + y, timeout_s)


def step_cdf(lat: StepLatency, bounds: torch.Tensor, timeout_s: float) -> torch.Tensor:
    """``[B, K]`` fraction of a step's served requests at or under each bound: the histogram of
    the mixture (:func:`latency_cdf` of each phase, weighted by the requests it serves)."""

    def mix(part: StepLatency, steady: torch.Tensor) -> torch.Tensor:
        share = part.drain_share[:, None]
        flat_out = latency_cdf(part.flat_out, bounds, timeout_s)
        return torch.where(share > 0, share * flat_out + (1.0 - share) * steady, steady)

    steady = latency_cdf(lat.steady, bounds, timeout_s)
    ix = _drained_rows(lat)
    if ix is None:
        return mix(lat, steady)
    if not ix.numel():
        return steady
    return steady.index_put((ix,), mix(batching.select(lat, ix), steady[ix]))


def step_mean(lat: StepLatency) -> torch.Tensor:
    """Mean latency of a step's mixture (what an app's ``_sum`` counter adds up)."""

    def mean(m: LatencyModel) -> torch.Tensor:
        return m.drain_s + m.service_time_s + m.p_wait / torch.clamp(m.wait_rate, min=1e-9)

    share = lat.drain_share
    return share * mean(lat.flat_out) + (1.0 - share) * mean(lat.steady)


def latency_cdf(m: LatencyModel, bounds: torch.Tensor, timeout_s: float) -> torch.Tensor:
    """``[B, K]`` fraction of served requests with latency <= each bound (``bounds`` ``[K]``).

    Requests beyond the timeout never complete inside a bound (they time out), so the CDF is 0
    at bounds under the drain time and reaches at most P(L <= timeout) below ``+Inf``; with
    demand and no ready pod (starved) it is 0 everywhere.
    """
    x = bounds[None, :] - m.drain_s[:, None]
    y = torch.clamp(x, min=0.0)
    mm = LatencyModel(
        *(t[:, None] for t in (m.service_time_s, m.p_wait, m.wait_rate, m.drain_s, m.starved))
    )
    g, _ = _survival(y, _terms(mm), density=False)
    return torch.where((x > 0) & ~mm.starved, 1.0 - g, 0.0)


def histogram_quantile(q: float, cumulative: torch.Tensor, bounds: torch.Tensor) -> torch.Tensor:
    """Prometheus' ``histogram_quantile`` over ``[B, K+1]`` cumulative counts (last: ``+Inf``)
    with finite upper ``bounds`` ``[K]``: linear within the bucket the rank falls in, the highest
    finite bound when it falls in ``+Inf``, NaN when there are no observations."""
    total = cumulative[:, -1]
    rank = q * total
    finite = cumulative[:, :-1]
    hit = finite >= rank[:, None]
    any_hit = hit.any(dim=1)
    b = torch.where(any_hit, hit.to(torch.int64).argmax(dim=1), 0)
    upper = bounds[b]
    lower = torch.where(b > 0, bounds[torch.clamp(b - 1, min=0)], torch.zeros_like(upper))
    below = torch.where(b > 0, finite.gather(1, torch.clamp(b - 1, min=0)[:, None]).squeeze(1), 0.0)
    count = finite.gather(1, b[:, None]).squeeze(1) - below
    frac = torch.where(count > 0, (rank - below) / torch.where(count > 0, count, 1.0), 1.0)
    value = lower + (upper - lower) * torch.clamp(frac, 0.0, 1.0)
    value = torch.where(any_hit, value, bounds[-1].expand_as(value))
    return torch.where(total > 0, value, torch.full_like(value, math.nan))
