"""The same time yesterday: a floor under the policy's decision from the service's own past.

Daily-cyclic services rise at the same hours every day, and a pod ordered when the rise shows
in the metrics arrives a start-up delay too late. Every production predictive scaler pairs a
reactive rule with a forecast from days of history (AWS predictive scaling: at least 24 h, and
it only ever scales *out*). qscale does the simplest causal version of that: whatever the
network proposes, the count is at least what the request rate of the same time yesterday, over
the next :data:`AHEAD_S`, needs at the floor's utilization target:

    floor = ceil(busy pods x history rate / rate now / target)

``busy pods / rate now`` is the service's own cost of a request in pods (the CPU it burns per
request/s, measured now), so no per-pod capacity has to be declared; the floor is scale-free
like every action. The history rate is the highest point of the policy's own request-rate
query, read as a range query over ``(now - lookback, now - lookback + AHEAD_S]`` with points
:data:`POINT_S` apart (:func:`range_window`): only the past, by construction. Where there is
no such past (a new service, a trace shorter than the lookback, retention shorter than a day)
or no traffic now, there is no floor and the network's decision stands. The shield bounds the
floored count like any other (``maxReplicas``, step limits, cooldowns).

The simulator reads the same quantity from the trace's own past (``TraceBank.history``), so a
policy meets the floor in evaluation exactly as it will in the cluster.
"""

from __future__ import annotations

import math

import torch

LOOKBACK_S = 86400.0
"""How far back the floor looks by default: the same time yesterday."""
AHEAD_S = 300.0
"""How far past that time it looks: a start-up delay and a scrape or two, with room."""
POINT_S = 60.0
"""Points of the history range query are this far apart (the queries' 1 m rate window)."""
DEFAULT_TARGET = 0.8
"""The utilization the floor sizes for when a policy turns it on without naming one."""


def range_window(now_s: float, lookback_s: float = LOOKBACK_S) -> tuple[float, float]:
    """``(start, end)`` of the history range query, unix seconds: its points cover
    ``(now - lookback, now - lookback + AHEAD_S]``. Refuses a lookback that would reach the
    present (a floor must never see the future of the window it sizes)."""
    if not lookback_s > AHEAD_S:
        raise ValueError(f"the history lookback must exceed {AHEAD_S:g} s, got {lookback_s:g}")
    base = now_s - lookback_s
    return base + POINT_S, base + AHEAD_S


def floor_pods(
    busy: torch.Tensor,
    rate_now: torch.Tensor,
    history_rate: torch.Tensor,
    target: torch.Tensor | float,
) -> torch.Tensor:
    """The floor ``[B]`` (whole pods), NaN where there is none: no history, no traffic now,
    an unknown busy count, or the floor off (target NaN or <= 0)."""
    target = torch.as_tensor(target, dtype=busy.dtype, device=busy.device)
    ok = (
        torch.isfinite(busy)
        & torch.isfinite(history_rate)
        & (history_rate >= 0)
        & (rate_now > 0)
        & torch.isfinite(rate_now)
        & (target > 0)
    )
    per_request = busy / torch.where(ok, rate_now, 1.0)
    pods = torch.ceil(per_request * history_rate / torch.where(ok, target, 1.0) - 1e-4)
    return torch.where(ok, pods, math.nan)
