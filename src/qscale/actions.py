"""The discrete action set: relative scaling steps, applied before the shield.

Relative steps keep the action set scale-free (a "+1 pod" matters for a 2-pod service, a "x1.5"
for a 60-pod one) and small, which is what a DQN handles well. The shield in
:mod:`qscale.guardrails` then bounds whatever the step proposes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Action:
    """desired = current * multiplier + delta, rounded away from current (see :func:`apply`)."""

    name: str
    multiplier: float
    delta: float


ACTIONS: tuple[Action, ...] = (
    Action("hold", 1.0, 0.0),
    Action("minus_1", 1.0, -1.0),
    Action("plus_1", 1.0, 1.0),
    Action("times_0.75", 0.75, 0.0),
    Action("times_1.5", 1.5, 0.0),
    Action("times_2", 2.0, 0.0),
)
ACTION_NAMES: tuple[str, ...] = tuple(a.name for a in ACTIONS)
N_ACTIONS = len(ACTIONS)
HOLD = 0

_MULT = torch.tensor([a.multiplier for a in ACTIONS], dtype=torch.float32)
_DELTA = torch.tensor([a.delta for a in ACTIONS], dtype=torch.float32)


def apply(replicas: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """Desired replicas for each env: ``replicas`` ``[B]`` float, ``action`` ``[B]`` int64.

    A multiplicative step always moves by at least one pod (x0.75 of 2 pods is 1, x1.5 of 1 pod
    is 2), so no action silently means "hold". Out-of-range indices raise, as indexing does.
    """
    mult = _MULT.to(replicas.device)[action]
    delta = _DELTA.to(replicas.device)[action]
    raw = replicas * mult + delta
    down = torch.minimum(torch.floor(raw + 1e-4), replicas - 1.0)
    up = torch.maximum(torch.ceil(raw - 1e-4), replicas + 1.0)
    return torch.where(mult < 1.0, down, torch.where(mult > 1.0, up, raw))
