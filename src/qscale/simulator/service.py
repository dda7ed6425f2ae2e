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

_LN20 = math.log(20.0)
_RHO_MAX = 0.999


@dataclass(frozen=True)
class StepFlow:
    served: torch.Tensor
    backlog: torch.Tensor
    dropped: torch.Tensor
    utilization: torch.Tensor
    p95_s: torch.Tensor


def flow(
    arrivals: torch.Tensor,
    backlog: torch.Tensor,
    ready: torch.Tensor,
    capacity: torch.Tensor,
    service_time_s: torch.Tensor,
    dt: float,
    timeout_s: float,
) -> StepFlow:
    """One step of the service for a batch; ``arrivals`` and ``backlog`` are request counts."""
    cap_rate = ready * capacity
    cap = cap_rate * dt
    work = backlog + arrivals
    served = torch.minimum(work, cap)
    left = work - served
    new_backlog = torch.minimum(left, cap_rate * timeout_s)
    dropped = left - new_backlog

    has_cap = cap > 0
    safe_cap = torch.where(has_cap, cap, 1.0)
    util = torch.where(has_cap, served / safe_cap, 0.0)

    rho = torch.clamp(util, max=_RHO_MAX)
    servers = torch.clamp(ready * capacity * service_time_s, min=1e-6)
    p_wait = torch.pow(rho, torch.sqrt(2.0 * (servers + 1.0)) - 1.0)
    tail = torch.clamp(torch.log(torch.clamp(p_wait, min=1e-30) * 20.0), min=0.0)
    wait = service_time_s * tail / (servers * (1.0 - rho))
    drain = new_backlog / torch.where(has_cap, cap_rate, 1.0)
    p95 = service_time_s * _LN20 + wait + drain
    starved = (~has_cap) & (work > 0)
    p95 = torch.where(starved, torch.full_like(p95, timeout_s), torch.clamp(p95, max=timeout_s))
    return StepFlow(served, new_backlog, dropped, util, p95)


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
