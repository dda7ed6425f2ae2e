import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qscale.guardrails import Reason, ShieldConfig, ShieldState, bound, shield

LO, HI = 2.0, 50.0
CFG = ShieldConfig(
    max_step_up_pods=4,
    max_step_up_percent=100.0,
    max_step_down_pods=1,
    max_step_down_percent=50.0,
    up_cooldown_s=30.0,
    down_cooldown_s=60.0,
    down_stabilization_s=120.0,
)


def fresh():
    """A state whose memory is already seeded (so single decisions are not stabilized)."""
    return ShieldState.init(1)


def one(current, desired, state=None, now=1000.0, cfg=CFG):
    state = state or ShieldState.init(1)
    res = shield(
        torch.tensor([float(current)]), torch.tensor([float(desired)]), state, now, cfg, LO, HI
    )
    return float(res.replicas[0]), Reason(int(res.reason[0])), res.state


@pytest.mark.parametrize(
    ("current", "desired", "expected", "reason"),
    [
        (10, 10, 10, Reason.OK),
        (10, 14, 14, Reason.OK),
        (10, 25, 20, Reason.STEP_LIMIT_UP),  # max(4 pods, 100%) = +10
        (2, 9, 6, Reason.STEP_LIMIT_UP),  # max(4 pods, 100% of 2) = +4
        (10, 3, 5, Reason.STEP_LIMIT_DOWN),  # max(1 pod, 50%) = -5
        (30, 80, 50, Reason.AT_MAX),
        (2, 0, 2, Reason.AT_MIN),  # the step limit allows 1, the bound says 2
        (1, 1, 2, Reason.AT_MIN),  # below bounds: jump to min
        (70, 70, 50, Reason.AT_MAX),  # above bounds: jump to max despite the step limit
        (10, math.nan, 10, Reason.INVALID_INPUT),
        (10, math.inf, 10, Reason.INVALID_INPUT),
        (10, -math.inf, 10, Reason.INVALID_INPUT),
    ],
)
def test_single_decisions(current, desired, expected, reason):
    cfg = ShieldConfig(**{**CFG.__dict__, "down_stabilization_s": 0.0})
    got, why, _ = one(current, desired, cfg=cfg)
    assert got == expected
    assert why == reason


def test_unknown_current_means_no_decision_and_no_state_change():
    state = ShieldState.init(1)
    _, _, state = one(10, 10, state, now=0.0)
    got, why, after = one(math.nan, 5, state, now=15.0)
    assert math.isnan(got) and why == Reason.REPLICAS_UNKNOWN
    for f in ("last_up_s", "last_down_s", "last_applied", "bucket_start_s", "bucket_max"):
        torch.testing.assert_close(getattr(after, f), getattr(state, f), equal_nan=True)


def test_a_fresh_shield_is_seeded_with_the_current_count():
    """As the HPA records its initial recommendation: no scale-down in the first window."""
    got, why, s = one(10, 4, ShieldState.init(1), now=0.0)
    assert (got, why) == (10, Reason.STABILIZED)
    got, why, s = one(10, 4, s, now=100.0)
    assert (got, why) == (10, Reason.STABILIZED)
    got, _, _ = one(10, 4, s, now=140.0)
    assert got == 5  # window over; the step limit (50 %) applies


def test_stabilization_keeps_highest_recent_proposal():
    s = ShieldState.init(1)
    _, _, s = one(10, 10, s, now=0.0)
    _, _, s = one(10, 10, s, now=15.0)
    # 100 s later a drop to 6 is bounded by the proposals of 10 in the window.
    got, why, s = one(10, 6, s, now=100.0)
    assert (got, why) == (10, Reason.STABILIZED)
    # Once the 10s have left the 120 s window, the lowest recent proposal (6) wins.
    got, why, s = one(10, 6, s, now=200.0)
    assert (got, why) == (6, Reason.OK)


@pytest.mark.parametrize("interval", [1.0, 5.0, 15.0, 40.0])
def test_stabilization_is_by_time_whatever_the_interval(interval):
    """A proposal 100 s old still bounds a scale-down in a 120 s window (16 call slots at a 5 s
    interval used to cover only 80 s); one 140 s old no longer does."""
    s = ShieldState.init(1)
    _, _, s = one(10, 10, s, now=0.0)
    now = 0.0
    while now + interval <= 100.0:
        now += interval
        got, _, s = one(10, 10, s, now=now)
    got, why, s = one(10, 4, s, now=100.0 + 1.0)
    assert (got, why) == (10, Reason.STABILIZED)
    s2 = ShieldState.init(1)
    _, _, s2 = one(10, 10, s2, now=0.0)
    _, _, s2 = one(10, 4, s2, now=60.0)
    got, _, _ = one(10, 4, s2, now=60.0 + 120.0 + CFG.bucket_s + 1.0)
    assert got == 5


def test_times_are_float64_epoch_seconds():
    """A 60 s cooldown holds at epoch times, where float32 is only accurate to 128 s."""
    now = 1.764e9
    s = ShieldState.init(1)
    _, _, s = one(10, 12, s, now=now)
    assert s.last_up_s.dtype == torch.float64
    got, why, _ = one(12, 14, s, now=now + 20.0)
    assert (got, why) == (12, Reason.COOLDOWN_UP)
    got, _, _ = one(12, 14, s, now=now + 31.0)
    assert got == 14


def test_a_scale_by_someone_else_counts_as_a_scale_event():
    s = ShieldState.init(1)
    got, _, s = one(10, 10, s, now=0.0)
    # kubectl scale to 20 between decisions: the next scale-up waits out the cooldown.
    got, why, s = one(20, 24, s, now=10.0)
    assert (got, why) == (20, Reason.COOLDOWN_UP)
    assert float(s.last_up_s[0]) == 10.0


def test_shadow_decisions_are_not_recorded_as_scale_events():
    s = ShieldState.init(1)
    res = shield(torch.tensor([10.0]), torch.tensor([14.0]), s, 0.0, CFG, LO, HI, commit=False)
    assert float(res.replicas[0]) == 14.0
    assert res.state.last_up_s[0] == -math.inf
    # The Deployment stayed at 10: that is no outside scale either.
    res2 = shield(
        torch.tensor([10.0]), torch.tensor([14.0]), res.state, 5.0, CFG, LO, HI, commit=False
    )
    assert float(res2.replicas[0]) == 14.0


def test_state_survives_a_round_trip_through_records():
    """The record keeps scale times and the proposals that still matter; restored with the
    current count as a seed, the shield decides scale-ups alike and holds a scale-down at
    least as high (the conservative side)."""
    s = ShieldState.init(2)
    cur = torch.tensor([10.0, 4.0])
    for now, des in ((0.0, [12.0, 4.0]), (45.0, [12.0, 9.0]), (80.0, [8.0, 9.0])):
        res = shield(cur, torch.tensor(des), s, now, CFG, LO, HI)
        s, cur = res.state, res.replicas
    hi = torch.full((2,), HI)
    records = s.to_records(80.0, CFG, hi)
    back = ShieldState.from_records(records, CFG, cur.tolist(), 80.0)
    assert back.to_records(80.0, CFG, hi) == records
    assert torch.equal(back.last_up_s, s.last_up_s) and torch.equal(back.last_down_s, s.last_down_s)
    up_a = shield(cur, torch.tensor([30.0, 20.0]), s, 100.0, CFG, LO, HI)
    up_b = shield(cur, torch.tensor([30.0, 20.0]), back, 100.0, CFG, LO, HI)
    assert torch.equal(up_a.replicas, up_b.replicas) and torch.equal(up_a.reason, up_b.reason)
    down_a = shield(cur, torch.tensor([3.0, 3.0]), s, 100.0, CFG, LO, HI)
    down_b = shield(cur, torch.tensor([3.0, 3.0]), back, 100.0, CFG, LO, HI)
    assert (down_b.replicas >= down_a.replicas).all()


@pytest.mark.parametrize(
    "garbage", [None, {}, {"lastScaleUp": "soon", "proposals": [["x", 1], [5]]}, 7]
)
def test_garbled_records_give_a_fresh_state(garbage):
    s = ShieldState.from_records([garbage], CFG)
    assert s.last_up_s[0] == -math.inf and math.isnan(float(s.last_applied[0]))


def test_cooldowns_per_direction():
    s = ShieldState.init(1)
    got, _, s = one(10, 12, s, now=0.0)
    assert got == 12
    got, why, s = one(12, 14, s, now=15.0)
    assert (got, why) == (12, Reason.COOLDOWN_UP)
    got, why, s = one(12, 14, s, now=30.0)
    assert got == 14
    # A scale-down right after a scale-up is held for down_cooldown_s.
    cfg = ShieldConfig(down_stabilization_s=0.0, down_cooldown_s=60.0)
    s = ShieldState.init(1)
    _, _, s = one(10, 12, s, now=0.0, cfg=cfg)
    got, why, s = one(12, 11, s, now=45.0, cfg=cfg)
    assert (got, why) == (12, Reason.COOLDOWN_DOWN)
    got, why, s = one(12, 11, s, now=60.0, cfg=cfg)
    assert (got, why) == (11, Reason.OK)


def test_pure_and_batched():
    state = ShieldState.init(3)
    cur = torch.tensor([10.0, 5.0, 40.0])
    des = torch.tensor([30.0, 1.0, 45.0])
    before = (cur.clone(), des.clone(), state.bucket_max.clone())
    res = shield(cur, des, state, 0.0, CFG, LO, HI)
    assert torch.equal(cur, before[0]) and torch.equal(des, before[1])
    assert torch.equal(state.bucket_max, before[2])
    for i in range(3):
        alone = shield(cur[i : i + 1], des[i : i + 1], ShieldState.init(1), 0.0, CFG, LO, HI)
        assert res.replicas[i] == alone.replicas[0]
        assert res.reason[i] == alone.reason[0]


def test_per_env_bounds():
    res = shield(
        torch.tensor([5.0, 5.0]),
        torch.tensor([9.0, 1.0]),
        ShieldState.init(2),
        0.0,
        ShieldConfig(**{**CFG.__dict__, "down_stabilization_s": 0.0}),
        min_replicas=torch.tensor([1.0, 4.0]),
        max_replicas=torch.tensor([7.0, 60.0]),
    )
    assert res.replicas.tolist() == [7.0, 4.0]


def test_config_rejects_bad_limits():
    with pytest.raises(ValueError, match="down_cooldown_s"):
        ShieldConfig(down_cooldown_s=-1.0)


finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)
anything = st.one_of(finite, st.just(math.nan), st.just(math.inf), st.just(-math.inf))


@settings(max_examples=300, deadline=None)
@given(
    lo=st.integers(0, 20),
    span=st.integers(0, 80),
    current=st.integers(0, 150),
    proposals=st.lists(anything, min_size=1, max_size=12),
    gaps=st.lists(st.floats(0.0, 200.0), min_size=12, max_size=12),
    up_pods=st.integers(1, 10),
    up_pct=st.integers(0, 300).map(float),
    down_pods=st.integers(1, 10),
    down_pct=st.integers(0, 100).map(float),
)
def test_invariants(lo, span, current, proposals, gaps, up_pods, up_pct, down_pods, down_pct):
    """Never outside [min, max]; never past the step limit once inside; bad input holds."""
    cfg = ShieldConfig(
        max_step_up_pods=up_pods,
        max_step_up_percent=up_pct,
        max_step_down_pods=down_pods,
        max_step_down_percent=down_pct,
        up_cooldown_s=20.0,
        down_cooldown_s=40.0,
        down_stabilization_s=90.0,
    )
    state = ShieldState.init(1)
    cur = float(current)
    now = 0.0
    for desired, gap in zip(proposals, gaps, strict=False):
        now += gap
        res = shield(torch.tensor([cur]), torch.tensor([desired]), state, now, cfg, lo, lo + span)
        new = float(res.replicas[0])
        assert lo <= new <= lo + span
        assert new == round(new)
        inside = lo <= cur <= lo + span
        if inside:
            assert new - cur <= max(up_pods, math.ceil(cur * up_pct / 100.0))
            assert cur - new <= max(down_pods, math.floor(cur * down_pct / 100.0))
            if not math.isfinite(desired):
                assert new == cur
                assert Reason(int(res.reason[0])) == Reason.INVALID_INPUT
        state, cur = res.state, new


@settings(max_examples=300, deadline=None)
@given(
    current=st.integers(0, 150), desired=anything, lo=st.integers(0, 20), span=st.integers(0, 80)
)
def test_bound_is_the_shields_first_and_last_stage(current, desired, lo, span):
    """The bounds-only route gives what the full shield gives with no limits to apply."""
    free = ShieldConfig(
        max_step_up_pods=10**6, max_step_down_pods=10**6, down_cooldown_s=0.0,
        down_stabilization_s=0.0,
    )  # fmt: skip
    cur, des = torch.tensor([float(current)]), torch.tensor([desired])
    got, why = bound(cur, des, float(lo), float(lo + span))
    full = shield(cur, des, ShieldState.init(1), 0.0, free, float(lo), float(lo + span))
    assert torch.equal(got, full.replicas) and torch.equal(why, full.reason)
