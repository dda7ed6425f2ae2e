"""The safety shield: the one place that bounds what any policy may do to a Deployment.

Pure and batched (tensors of shape ``[B]``), with the clock passed in, so the simulator applies
exactly the function the operator applies: the agent learns under the constraints it is served
with. Times are float64 seconds (epoch seconds in the operator: float32 would be accurate to
128 s only). Stages, in order (each records a reason code when it changes the proposal):

0. an unknown current count (NaN, negative) -> no decision at all: the result is NaN with
   ``REPLICAS_UNKNOWN`` and the state is untouched -- a writer must do nothing then;
   a current count that differs from the last one the shield applied means somebody else scaled
   (``kubectl scale``, a rollout): that counts as a scale event for the cooldowns;
1. invalid proposal (NaN/inf) -> hold the current count;
2. scale-down stabilization: a scale-down goes only as low as the highest proposal seen within
   ``down_stabilization_s`` (as the HPA's ``stabilizeRecommendation``), which filters flapping.
   Proposals are kept by *time*, in :data:`BUCKETS` buckets of ``window / (BUCKETS - 1)``
   seconds holding the highest proposal each, so the window is covered whatever the decision
   interval (a proposal counts for at most one bucket width longer than the window: the
   conservative side). A fresh state is seeded with the current count, as the HPA seeds its
   first recommendation: a just-started shield never scales down before one window passed;
3. cooldowns: no scale-up within ``up_cooldown_s`` of the last scale-up; no scale-down within
   ``down_cooldown_s`` of the last scale event of either direction (never undo a fresh scale-up);
4. step limits: at most ``max(pods, percent x current)`` pods added or removed per decision;
5. bounds: the result is always clamped to ``[min, max]``; a current count outside the bounds
   jumps to the nearest bound regardless of the step limit, as the HPA does.

Stages 1 and 5 alone are :func:`bound`, for counts chosen by rules of their own (the baselines,
the operator without a model): the one place a replica count is clamped.

The state is serializable (:meth:`ShieldState.to_records` / :meth:`ShieldState.from_records`)
so that the operator keeps it in each AutoscalePolicy's status and a restart keeps cooldowns.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import torch

_F64 = torch.float64

BUCKETS = 16
"""Time buckets of the stabilization memory."""


class Reason(IntEnum):
    """Why a decision's output differs from the proposal (``OK`` when it does not)."""

    OK = 0
    INVALID_INPUT = 1
    STABILIZED = 2
    COOLDOWN_UP = 3
    COOLDOWN_DOWN = 4
    STEP_LIMIT_UP = 5
    STEP_LIMIT_DOWN = 6
    AT_MIN = 7
    AT_MAX = 8
    METRICS_MISSING = 9
    """A signal the decision needs is absent (query failed, no series): hold."""
    METRICS_STALE = 10
    """The newest sample is older than the staleness limit: hold."""
    REPLICAS_UNKNOWN = 11
    """No trustworthy current replica count: no decision, nothing may be written."""
    MODEL_OUTPUT_INVALID = 12
    """The network answered NaN/inf Q-values: its action is not taken; hold."""


@dataclass(frozen=True)
class ShieldConfig:
    """How a policy may move between its bounds: step limits, cooldowns, stabilization.

    The bounds themselves (``minReplicas``/``maxReplicas``) are not here: they differ per
    target, so they reach :func:`shield` as ``[B]`` tensors, by that one route only. A config is
    a policy's *behaviour*, shared by many targets (one :func:`shield` call serves them all).
    """

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

    def __post_init__(self) -> None:
        for name in ("max_step_up_pods", "max_step_down_pods"):
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

    @property
    def bucket_s(self) -> float:
        """Width of one stabilization bucket (0 when there is no window)."""
        return self.down_stabilization_s / (BUCKETS - 1)


@dataclass(frozen=True)
class ShieldState:
    """What the shield remembers between decisions, per env (float64 times, ``-inf``: never)."""

    last_up_s: torch.Tensor
    """Time of the last scale-up."""
    last_down_s: torch.Tensor
    """Time of the last scale-down."""
    last_applied: torch.Tensor
    """The count the shield last decided (NaN: none yet); another count seen later means
    somebody else scaled."""
    bucket_start_s: torch.Tensor
    """``[B, BUCKETS]`` start time of each stabilization bucket (``-inf``: empty)."""
    bucket_max: torch.Tensor
    """``[B, BUCKETS]`` highest proposal made within each bucket."""

    @staticmethod
    def init(batch: int, device: torch.device | str = "cpu") -> ShieldState:
        neg_inf = torch.full((batch,), -math.inf, dtype=_F64, device=device)
        return ShieldState(
            last_up_s=neg_inf,
            last_down_s=neg_inf.clone(),
            last_applied=torch.full((batch,), math.nan, dtype=_F64, device=device),
            bucket_start_s=torch.full((batch, BUCKETS), -math.inf, dtype=_F64, device=device),
            bucket_max=torch.zeros((batch, BUCKETS), dtype=_F64, device=device),
        )

    @property
    def batch_size(self) -> int:
        return self.last_up_s.shape[0]

    def reset_where(self, mask: torch.Tensor) -> ShieldState:
        """Forget the history of the envs in ``mask`` (a new episode, a new Deployment)."""
        fresh = ShieldState.init(self.batch_size, self.last_up_s.device)
        return self.where(mask, fresh)

    def where(self, mask: torch.Tensor, other: ShieldState) -> ShieldState:
        """``other`` where ``mask``, else this state."""
        m = mask.to(torch.bool)
        return ShieldState(
            last_up_s=torch.where(m, other.last_up_s, self.last_up_s),
            last_down_s=torch.where(m, other.last_down_s, self.last_down_s),
            last_applied=torch.where(m, other.last_applied, self.last_applied),
            bucket_start_s=torch.where(m[:, None], other.bucket_start_s, self.bucket_start_s),
            bucket_max=torch.where(m[:, None], other.bucket_max, self.bucket_max),
        )

    def to_records(
        self, now_s: float, config: ShieldConfig, max_replicas: torch.Tensor
    ) -> list[dict[str, Any]]:
        """What each env's memory must keep across a restart, as one JSON-able dict per env:
        the scale times and the last applied count (they change only with scale events), plus
        the stabilization proposals that can still hold a scale-down *above* the last applied
        count (capped at ``max_replicas``, within the window).

        Proposals at or below the applied count are left out: :meth:`from_records` seeds the
        memory with the current count, as the HPA does after a controller restart, which holds
        any scale-down for one window -- never less conservative than what was left out. So the
        record stays constant while nothing happens (the operator keeps it in each policy's
        status, and a constant record costs no writes).
        """
        ups = self.last_up_s.tolist()
        downs = self.last_down_s.tolist()
        applied = self.last_applied.tolist()
        w = config.bucket_s
        keep = None
        if w > 0:
            capped = torch.minimum(self.bucket_max, max_replicas.to(_F64)[:, None])
            fresh = (self.bucket_start_s + w) > (now_s - config.down_stabilization_s)
            above = capped > torch.nan_to_num(self.last_applied, nan=math.inf)[:, None]
            keep = torch.isfinite(self.bucket_start_s) & fresh & above
            rows_with = keep.any(dim=1).tolist()
        out = []
        for i in range(len(ups)):
            rec: dict[str, Any] = {}
            for key, v in (
                ("lastScaleUp", ups[i]),
                ("lastScaleDown", downs[i]),
                ("lastApplied", applied[i]),
            ):
                if math.isfinite(v):
                    rec[key] = int(v) if key == "lastApplied" else v
            if keep is not None and rows_with[i]:
                idx = keep[i].nonzero().flatten().tolist()
                rec["proposals"] = sorted(
                    [float(self.bucket_start_s[i, k]), int(capped[i, k])] for k in idx
                )
            out.append(rec)
        return out

    @staticmethod
    def from_records(
        records: Sequence[dict[str, Any] | None],
        config: ShieldConfig,
        current: Sequence[float] | None = None,
        now_s: float | None = None,
        device: torch.device | str = "cpu",
    ) -> ShieldState:
        """Rebuild from :meth:`to_records` output; ``None`` or ``{}`` is a fresh state. Values
        that do not parse are dropped (a garbled status must never crash the operator).

        With ``current`` and ``now_s`` the memory is also seeded with each env's current count
        at ``now_s`` (what :meth:`to_records` relies on): no scale-down happens within one
        stabilization window of a restart, as with the HPA."""
        n = len(records)
        st = ShieldState.init(n, device)
        up, down, applied = st.last_up_s.clone(), st.last_down_s.clone(), st.last_applied.clone()
        starts, maxes = st.bucket_start_s.clone(), st.bucket_max.clone()
        w = config.bucket_s
        seeds = [math.nan] * n if current is None or now_s is None else list(current)
        for i, (r, seed) in enumerate(zip(records, seeds, strict=True)):
            rec = r if isinstance(r, dict) else {}
            up[i] = _parse(rec.get("lastScaleUp"), -math.inf)
            down[i] = _parse(rec.get("lastScaleDown"), -math.inf)
            applied[i] = _parse(rec.get("lastApplied"), math.nan)
            if w <= 0:
                continue
            props = rec.get("proposals") or []
            props = list(props)[: BUCKETS - 1] if isinstance(props, list) else []
            if math.isfinite(seed):
                props.append([_bucket_start(float(now_s), w), seed])
            for p in props:
                try:
                    s, m = float(p[0]), float(p[1])
                except (TypeError, ValueError, IndexError):
                    continue
                if not (math.isfinite(s) and math.isfinite(m)):
                    continue
                k = math.floor(s / w + 1e-9) % BUCKETS
                if starts[i, k] == s:
                    maxes[i, k] = max(float(maxes[i, k]), m)
                elif s > starts[i, k]:
                    starts[i, k], maxes[i, k] = s, m
        return ShieldState(up, down, applied, starts, maxes)


def _bucket_start(now_s: float, width_s: float) -> float:
    """Start of the stabilization bucket that holds ``now_s`` (the one rule for bucketing)."""
    return math.floor(now_s / width_s + 1e-9) * width_s


def _num(x: torch.Tensor) -> float | None:
    v = float(x)
    return v if math.isfinite(v) else None


def _parse(v: Any, default: float) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return default
    return f if math.isfinite(f) else default


@dataclass(frozen=True)
class ShieldResult:
    replicas: torch.Tensor
    """Replica count to apply, ``[B]`` float of whole numbers within ``[min, max]``; NaN where
    the current count is unknown (write nothing)."""
    reason: torch.Tensor
    """``[B]`` int64 :class:`Reason` of the last stage that changed the proposal."""
    state: ShieldState


def _mark(reason: torch.Tensor, changed: torch.Tensor, code: Reason) -> torch.Tensor:
    return torch.where(changed, int(code), reason)


def _remember(
    state: ShieldState,
    value: torch.Tensor,
    now: torch.Tensor,
    ok: torch.Tensor,
    config: ShieldConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Put ``value`` into the bucket of ``now`` (envs where ``ok``)."""
    w = config.bucket_s
    if w <= 0:
        return state.bucket_start_s, state.bucket_max
    start = torch.floor(now / w + 1e-9) * w
    k = (torch.floor(now / w + 1e-9).to(torch.int64) % BUCKETS)[:, None]
    cur_start = state.bucket_start_s.gather(1, k).squeeze(1)
    cur_max = state.bucket_max.gather(1, k).squeeze(1)
    same = cur_start == start
    new_max = torch.where(same, torch.maximum(cur_max, value), value)
    new_start = torch.where(ok, start, cur_start)
    new_max = torch.where(ok, new_max, cur_max)
    return (
        state.bucket_start_s.scatter(1, k, new_start[:, None]),
        state.bucket_max.scatter(1, k, new_max[:, None]),
    )


def shield(
    current: torch.Tensor,
    desired: torch.Tensor,
    state: ShieldState,
    now_s: torch.Tensor | float,
    config: ShieldConfig,
    min_replicas: torch.Tensor | float,
    max_replicas: torch.Tensor | float,
    commit: torch.Tensor | bool = True,
) -> ShieldResult:
    """Bound ``desired`` given ``current`` replicas; returns the count to apply and why.

    ``min_replicas``/``max_replicas`` are per env (``[B]``) or one number for all. ``commit``
    False (per env or for all) computes the result without recording it as a scale event
    (Shadow mode: the decision is reported, not applied); proposals and scales made by others
    are still remembered.
    """
    dev = current.device
    out_dtype = current.dtype if current.is_floating_point() else torch.float32
    cur_in = current.to(_F64)
    lo, hi = _bounds(cur_in, min_replicas, max_replicas)
    now = torch.as_tensor(now_s, dtype=_F64, device=dev).expand_as(cur_in)
    commit_t = torch.as_tensor(commit, dtype=torch.bool, device=dev).expand_as(cur_in)
    reason = torch.zeros(cur_in.shape, dtype=torch.int64, device=dev)

    # 0. Unknown current count: no decision. A count we did not set: somebody else scaled.
    known = torch.isfinite(cur_in) & (cur_in >= 0)
    cur = torch.where(known, torch.round(torch.nan_to_num(cur_in)), 0.0)  # whole pods
    outside = known & torch.isfinite(state.last_applied) & (cur != state.last_applied)
    last_up = torch.where(outside & (cur > state.last_applied), now, state.last_up_s)
    last_down = torch.where(outside & (cur < state.last_applied), now, state.last_down_s)
    # Seed a fresh memory with the current count (the HPA's initial recommendation).
    fresh = known & (state.bucket_start_s == -math.inf).all(dim=1) & torch.isnan(state.last_applied)
    seeded_start, seeded_max = _remember(state, cur, now, fresh, config)
    st = ShieldState(last_up, last_down, state.last_applied, seeded_start, seeded_max)

    # 1. Invalid proposal: hold.
    d, reason = _valid(desired, cur, reason)

    # 2. Scale-down stabilization over the proposals within the window (this one included).
    bucket_s, bucket_max = _remember(st, d, now, known, config)
    in_window = (bucket_s + config.bucket_s) > (now[:, None] - config.down_stabilization_s)
    highest = torch.where(in_window & torch.isfinite(bucket_s), bucket_max, -math.inf).amax(dim=1)
    highest = torch.maximum(highest, d)
    stabilized = torch.where(d < cur, torch.minimum(cur, highest), d)
    reason = _mark(reason, stabilized != d, Reason.STABILIZED)
    d = stabilized

    # 3. Cooldowns.
    up_blocked = (d > cur) & (now - last_up < config.up_cooldown_s)
    last_any = torch.maximum(last_up, last_down)
    down_blocked = (d < cur) & (now - last_any < config.down_cooldown_s)
    reason = _mark(reason, up_blocked, Reason.COOLDOWN_UP)
    reason = _mark(reason, down_blocked, Reason.COOLDOWN_DOWN)
    d = torch.where(up_blocked | down_blocked, cur, d)

    # 4. Step limits (count x percent, then / 100, as the HPA computes them: 800 x 0.875 % is
    # 7 pods; 800 x 0.00875 rounds to 7.000000000000001, which ceil() made 8).
    up_room = torch.maximum(
        torch.full_like(cur, float(config.max_step_up_pods)),
        torch.ceil(cur * config.max_step_up_percent / 100.0),
    )
    down_room = torch.maximum(
        torch.full_like(cur, float(config.max_step_down_pods)),
        torch.floor(cur * config.max_step_down_percent / 100.0),
    )
    limited = torch.minimum(torch.maximum(d, cur - down_room), cur + up_room)
    reason = _mark(reason, limited > d, Reason.STEP_LIMIT_DOWN)
    reason = _mark(reason, limited < d, Reason.STEP_LIMIT_UP)
    d = limited

    # 5. Bounds, always last.
    final, reason = _clamp(d, lo, hi, reason)

    record = known & commit_t
    new_state = ShieldState(
        last_up_s=torch.where(record & (final > cur), now, last_up),
        last_down_s=torch.where(record & (final < cur), now, last_down),
        last_applied=torch.where(record, final, torch.where(known, cur, state.last_applied)),
        bucket_start_s=bucket_s,
        bucket_max=bucket_max,
    )
    new_state = new_state.where(~known, state)
    final = torch.where(known, final, math.nan)
    reason = torch.where(known, reason, int(Reason.REPLICAS_UNKNOWN))
    return ShieldResult(replicas=final.to(out_dtype), reason=reason, state=new_state)


def _bounds(
    like: torch.Tensor, lo: torch.Tensor | float, hi: torch.Tensor | float
) -> tuple[torch.Tensor, torch.Tensor]:
    def t(v: torch.Tensor | float) -> torch.Tensor:
        return torch.as_tensor(v, dtype=_F64, device=like.device).expand_as(like)

    return t(lo), t(hi)


def _valid(
    desired: torch.Tensor, cur: torch.Tensor, reason: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage 1: a non-finite proposal holds the current count; others are rounded."""
    des = desired.to(_F64)
    ok = torch.isfinite(des)
    reason = _mark(reason, ~ok, Reason.INVALID_INPUT)
    return torch.where(ok, torch.round(torch.nan_to_num(des, nan=0.0)), cur), reason


def _clamp(
    d: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, reason: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage 5: into ``[lo, hi]``, whatever the earlier stages allowed (the one clamp)."""
    final = torch.minimum(torch.maximum(d, lo), hi)
    reason = _mark(reason, final > d, Reason.AT_MIN)
    reason = _mark(reason, final < d, Reason.AT_MAX)
    return final, reason


def bound(
    current: torch.Tensor,
    desired: torch.Tensor,
    min_replicas: torch.Tensor | float,
    max_replicas: torch.Tensor | float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Only the shield's first and last stages, for a count chosen by rules of their own (the
    baselines in the simulator, the operator holding without a model): a non-finite proposal
    holds the current count (``INVALID_INPUT``), a fractional one is rounded, and the result
    is clamped to the bounds (``AT_MIN``/``AT_MAX``). Returns ``(replicas, reason)`` in
    ``current``'s dtype and int64."""
    cur = torch.round(current.to(_F64))
    lo, hi = _bounds(cur, min_replicas, max_replicas)
    reason = torch.zeros(cur.shape, dtype=torch.int64, device=cur.device)
    d, reason = _valid(desired, cur, reason)
    final, reason = _clamp(d, lo, hi, reason)
    out_dtype = current.dtype if current.is_floating_point() else torch.float32
    return final.to(out_dtype), reason


def record_scale(
    state: ShieldState, current: torch.Tensor, applied: torch.Tensor, now_s: torch.Tensor | float
) -> ShieldState:
    """Note a scale event made without the shield (the baselines' own rules, a fallback)."""
    cur = current.to(_F64)
    app = applied.to(_F64)
    now = torch.as_tensor(now_s, dtype=_F64, device=cur.device)
    return ShieldState(
        last_up_s=torch.where(app > cur, now, state.last_up_s),
        last_down_s=torch.where(app < cur, now, state.last_down_s),
        last_applied=torch.where(torch.isfinite(app), app, state.last_applied),
        bucket_start_s=state.bucket_start_s,
        bucket_max=state.bucket_max,
    )
