"""The fallback: the Kubernetes HPA rule on the policy's CPU query, batched.

After ``spec.fallback.afterFailedTicks`` consecutive ticks without a model decision (metrics
missing or stale, the model refused), the HPA's algorithm (:func:`hpa_step`, exactly as the
controller computes it for an HPA without a ``behavior`` field) decides instead, at
``spec.fallback.targetUtilization``, within the policy's bounds. Its CPU comes from the
policy's CPU query: the query reads all pods' usage over all pods' requests, and the HPA wants
the ready pods' usage over their requests, so ``utilization * replicas / ready`` is handed on
(starting pods use next to no CPU), with the starting pods as unready ones.

Without a CPU value (Prometheus down) the HPA rule holds, as the HPA does without metrics, and
the bounds still apply (a count outside ``[min, max]`` moves to the bound).

The HPA's history (recommendations, scale events) is kept in memory per policy, as the
controller keeps it; it is not persisted (the controller does not persist it either).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from qscale import batching

__all__ = ["FallbackInput", "hpa", "hpa_decide"]


def hpa() -> Any:
    """The module with ``HPAConfig``, ``HPAState``, ``hpa_step`` (:mod:`qscale.hpa`, which
    imports neither the simulator nor kopf), imported on first use."""
    from qscale import hpa as module

    return module


@dataclass
class FallbackInput:
    replicas: int
    ready: int
    cpu_utilization: float
    """All pods' CPU usage over all pods' requests (NaN: no metric)."""
    min_replicas: int
    max_replicas: int
    target: float
    interval_s: float
    state: Any = None
    """The policy's HPAState (batch of one), ``None`` the first time."""


def hpa_decide(items: Sequence[FallbackInput], now_s: float) -> list[tuple[int, str, Any]]:
    """``(replicas, HPA reason name, new state)`` per item; one ``hpa_step`` per distinct
    (target, interval)."""
    m = hpa()
    out: list[tuple[int, str, Any] | None] = [None] * len(items)
    groups: dict[tuple[float, float], list[int]] = {}
    for i, it in enumerate(items):
        groups.setdefault((round(it.target, 4), it.interval_s), []).append(i)
    for (target, interval), idx in groups.items():
        cfg = m.HPAConfig(target_utilization=target, sync_period_s=interval)
        states = [items[i].state or m.HPAState.init(1, "cpu", cfg) for i in idx]
        state = batching.cat(states)
        cur = torch.tensor([float(items[i].replicas) for i in idx], dtype=torch.float64)
        ready = torch.tensor([float(items[i].ready) for i in idx], dtype=torch.float64)
        util = []
        for i in idx:
            it = items[i]
            u = it.cpu_utilization
            util.append(
                u * it.replicas / it.ready if it.ready > 0 and math.isfinite(u) else math.nan
            )
        util_t = torch.tensor(util, dtype=torch.float64)
        lo = torch.tensor([float(items[i].min_replicas) for i in idx], dtype=torch.float64)
        hi = torch.tensor([float(items[i].max_replicas) for i in idx], dtype=torch.float64)
        desired, reason, new = m.hpa_step(
            state, now_s, cur, ready, torch.clamp(cur - ready, min=0.0), util_t, cfg, lo, hi
        )
        for j, (i, one) in enumerate(zip(idx, batching.split(new), strict=True)):
            out[i] = (int(desired[j]), m.HPAReason(int(reason[j])).name, one)
    return [o for o in out if o is not None]
