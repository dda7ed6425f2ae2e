"""The safety shield: the one place that bounds what any policy may do to a Deployment.

Pure and batched (tensors of shape ``[B]``), with the clock passed in, so the simulator applies
exactly the function the operator will apply: the agent learns under the constraints it will
be served with. Stages, in order (each records a reason code when it changes the proposal):

1. invalid proposal (NaN/inf) -> hold the current count;
2. scale-down stabilization: a scale-down goes only as low as the highest proposal seen within
   ``down_stabilization_s`` (as the HPA's ``stabilizeRecommendation``), which filters flapping;
3. cooldowns: no scale-up within ``up_cooldown_s`` of the last scale-up; no scale-down within
   ``down_cooldown_s`` of the last scale event of either direction (never undo a fresh scale-up);
4. step limits: at most ``max(pods, percent x current)`` pods added or removed per decision;
5. bounds: the result is always clamped to ``[min, max]``; a current count outside the bounds
   jumps to the nearest bound regardless of the step limit, as the HPA does.

A non-finite *current* count (no trustworthy status) yields ``max`` replicas: with nothing known
the shield picks the state that cannot cause an outage, and says so in the reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import IntEnum

import torch


class Reason(IntEnum):
    """Why the shield's output differs from the proposal (``OK`` when it does not)."""

    OK = 0
    INVALID_INPUT = 1
    STABILIZED = 2
    COOLDOWN_UP = 3
    COOLDOWN_DOWN = 4
    STEP_LIMIT_UP = 5
    STEP_LIMIT_DOWN = 6
    AT_MIN = 7
    AT_MAX = 8


@dataclass(frozen=True)
class ShieldConfig:
    """Limits that hold for every decision. ``min``/``max`` may be overridden per env."""

    min_replicas: int = 1
    """Never fewer pods than this."""
    max_replicas: int = 100
    """Never more pods than this."""
    max_step_up_pods: int = 4
    """A scale-up may always add this many pods ..."""
    max_step_up_percent: float = 100.0
    """... or this percentage of the current count, whichever is more (the HPA's defaults)."""
    max_step_down_pods: int = 1
    """A scale-down may always remove this many pods ..."""
    max_step_down_percent: float = 50.0
    """... or this percentage of the current count, whichever is more."""
    up_cooldown_s: float = 0.0
    """Minimum seconds between two scale-ups (0: react to every burst, as the HPA does)."""
    down_cooldown_s: float = 60.0
    """Minimum seconds between any scale event and a following scale-down."""
    down_stabilization_s: float = 120.0
    """Window over which the highest proposal bounds a scale-down."""
    history: int = 16
    """Proposal slots kept for stabilization; must cover the window at the decision interval."""

    def __post_init__(self) -> None:
        if self.min_replicas < 0 or self.max_replicas < self.min_replicas:
            raise ValueError(
                f"shield needs 0 <= min_replicas <= max_replicas, got "
                f"min={self.min_replicas} max={self.max_replicas}"
            )
        for name in ("max_step_up_pods", "max_step_down_pods", "history"):
            if getattr(self, name) < 1:
                raise ValueError(f"shield {name} must be >= 1, got {getattr(self, name)}")
        for name in (
            "max_step_up_percent",
            "max_step_down_percent",
            "up_cooldown_s",
            "down_cooldown_s",
            "down_stabilization_s",
        ):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"shield {name} must be a finite number >= 0, got {value}")

    @staticmethod
    def history_for(window_s: float, interval_s: float) -> int:
        """Slots needed to cover ``window_s`` at one proposal every ``interval_s``."""
        return max(1, math.ceil(window_s / interval_s) + 1)


@dataclass(frozen=True)
class ShieldState:
    """What the shield remembers between decisions, per env."""

    last_up_s: torch.Tensor
    """Time of the last scale-up (``-inf``: never)."""
    last_down_s: torch.Tensor
    """Time of the last scale-down (``-inf``: never)."""
    proposal_time_s: torch.Tensor
    """``[B, history]`` times of recent proposals, oldest first (``-inf``: empty slot)."""
    proposal: torch.Tensor
    """``[B, history]`` the proposals themselves."""

    @staticmethod
    def init(batch: int, config: ShieldConfig, device: torch.device | str = "cpu") -> ShieldState:
        neg_inf = torch.full((batch,), -math.inf, device=device)
        return ShieldState(
            last_up_s=neg_inf,
            last_down_s=neg_inf.clone(),
            proposal_time_s=torch.full((batch, config.history), -math.inf, device=device),
            proposal=torch.zeros((batch, config.history), device=device),
        )

    def reset_where(self, mask: torch.Tensor) -> ShieldState:
        """Forget the history of the envs in ``mask`` (a new episode, a new Deployment)."""
        m = mask[:, None]
        return ShieldState(
            last_up_s=torch.where(mask, -math.inf, self.last_up_s),
            last_down_s=torch.where(mask, -math.inf, self.last_down_s),
            proposal_time_s=torch.where(m, -math.inf, self.proposal_time_s),
            proposal=torch.where(m, 0.0, self.proposal),
        )


@dataclass(frozen=True)
class ShieldResult:
    replicas: torch.Tensor
    """Replica count to apply, ``[B]`` float of whole numbers, always within ``[min, max]``."""
    reason: torch.Tensor
    """``[B]`` int64 :class:`Reason` of the last stage that changed the proposal."""
    state: ShieldState


def _mark(reason: torch.Tensor, changed: torch.Tensor, code: Reason) -> torch.Tensor:
    return torch.where(changed, int(code), reason)


def shield(
    current: torch.Tensor,
    desired: torch.Tensor,
    state: ShieldState,
    now_s: torch.Tensor | float,
    config: ShieldConfig,
    min_replicas: torch.Tensor | None = None,
    max_replicas: torch.Tensor | None = None,
) -> ShieldResult:
    """Bound ``desired`` given ``current`` replicas; returns the count to apply and why."""
    lo = (
        torch.full_like(current, float(config.min_replicas))
        if min_replicas is None
        else min_replicas.to(current.dtype)
    )
    hi = (
        torch.full_like(current, float(config.max_replicas))
        if max_replicas is None
        else max_replicas.to(current.dtype)
    )
    now = torch.as_tensor(now_s, dtype=current.dtype, device=current.device).expand_as(current)
    reason = torch.zeros(current.shape, dtype=torch.int64, device=current.device)

    # 1. Invalid inputs: hold; an unknown current count goes to max (see module docstring).
    cur_ok = torch.isfinite(current)
    cur = torch.where(cur_ok, current, hi)
    ok = torch.isfinite(desired) & cur_ok
    reason = _mark(reason, ~ok, Reason.INVALID_INPUT)
    d = torch.where(ok, torch.round(torch.nan_to_num(desired, nan=0.0)), cur)

    # 2. Scale-down stabilization over the proposal history (this proposal included).
    times = torch.cat([state.proposal_time_s[:, 1:], now[:, None]], dim=1)
    props = torch.cat([state.proposal[:, 1:], d[:, None]], dim=1)
    in_window = (now[:, None] - times) < config.down_stabilization_s
    in_window[:, -1] = True
    highest = torch.where(in_window, props, -math.inf).amax(dim=1)
    stabilized = torch.where(d < cur, torch.minimum(cur, highest), d)
    reason = _mark(reason, stabilized != d, Reason.STABILIZED)
    d = stabilized

    # 3. Cooldowns.
    up_blocked = (d > cur) & (now - state.last_up_s < config.up_cooldown_s)
    last_any = torch.maximum(state.last_up_s, state.last_down_s)
    down_blocked = (d < cur) & (now - last_any < config.down_cooldown_s)
    reason = _mark(reason, up_blocked, Reason.COOLDOWN_UP)
    reason = _mark(reason, down_blocked, Reason.COOLDOWN_DOWN)
    d = torch.where(up_blocked | down_blocked, cur, d)

    # 4. Step limits.
    up_room = torch.maximum(
        torch.full_like(cur, float(config.max_step_up_pods)),
        torch.ceil(cur * (config.max_step_up_percent / 100.0)),
    )
    down_room = torch.maximum(
        torch.full_like(cur, float(config.max_step_down_pods)),
        torch.floor(cur * (config.max_step_down_percent / 100.0)),
    )
    limited = torch.minimum(torch.maximum(d, cur - down_room), cur + up_room)
    reason = _mark(reason, limited > d, Reason.STEP_LIMIT_DOWN)
    reason = _mark(reason, limited < d, Reason.STEP_LIMIT_UP)
    d = limited

    # 5. Bounds, always last.
    final = torch.minimum(torch.maximum(d, lo), hi)
    reason = _mark(reason, final > d, Reason.AT_MIN)
    reason = _mark(reason, final < d, Reason.AT_MAX)

    new_state = replace(
        record_scale(state, cur, final, now),
        proposal_time_s=times,
        proposal=props,
    )
    return ShieldResult(replicas=final, reason=reason, state=new_state)


def record_scale(
    state: ShieldState, current: torch.Tensor, applied: torch.Tensor, now_s: torch.Tensor | float
) -> ShieldState:
    """Note a scale event (also for controllers that bypass the shield, e.g. the baselines)."""
    now = torch.as_tensor(now_s, dtype=current.dtype, device=current.device)
    return replace(
        state,
        last_up_s=torch.where(applied > current, now, state.last_up_s),
        last_down_s=torch.where(applied < current, now, state.last_down_s),
    )
