"""Property tests at scale: the shield and the fallback never leave the bounds, never step past
their limits, and respect the cooldowns, whatever they are given (NaN, inf, huge, negative).

Each hypothesis example draws the limits and a seed, and the seed draws a batch of 1,000
targets run for several decisions: 100 examples are 100,000 cases per property (the shield and
the HPA rule are batched, so this costs seconds, not minutes).
"""

from __future__ import annotations

import math

import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from qscale.guardrails import Reason, ShieldConfig, ShieldState, shield
from qscale.operator.fallback import FallbackInput, hpa_decide

BATCH = 1_000
STEPS = 5
WILD = torch.tensor([math.nan, math.inf, -math.inf, 1e18, -1e18, -1.0, 0.0, 0.5, 1e6, 3.7])


def _wild(gen: torch.Generator, n: int, lo: float, hi: float, p_wild: float = 0.2):
    """Mostly plausible values in [lo, hi], the rest drawn from the pathological ones."""
    x = lo + torch.rand(n, generator=gen, dtype=torch.float64) * (hi - lo)
    wild = WILD.to(torch.float64)[torch.randint(0, len(WILD), (n,), generator=gen)]
    return torch.where(torch.rand(n, generator=gen) < p_wild, wild, torch.round(x))


@settings(max_examples=100, deadline=None)
@example(  # 800 pods x 0.875 %: 7 pods, not 8 (the percentage taken as 0.00875 first)
    seed=0,
    up_pods=1,
    up_pct=0.875,
    down_pods=1,
    down_pct=0.0,
    up_cool=0.0,
    down_cool=0.0,
    window=0.0,
)
@given(
    seed=st.integers(0, 2**31 - 1),
    up_pods=st.integers(1, 50),
    up_pct=st.floats(0, 1000),
    down_pods=st.integers(1, 50),
    down_pct=st.floats(0, 100),
    up_cool=st.floats(0, 600),
    down_cool=st.floats(0, 600),
    window=st.floats(0, 1800),
)
def test_shield_bounds_steps_and_cooldowns(
    seed, up_pods, up_pct, down_pods, down_pct, up_cool, down_cool, window
):
    cfg = ShieldConfig(
        max_step_up_pods=up_pods, max_step_up_percent=up_pct, max_step_down_pods=down_pods,
        max_step_down_percent=down_pct, up_cooldown_s=up_cool, down_cooldown_s=down_cool,
        down_stabilization_s=window,
    )  # fmt: skip
    gen = torch.Generator().manual_seed(seed)
    lo = torch.randint(0, 1000, (BATCH,), generator=gen).double()
    hi = lo + torch.randint(0, 10**6, (BATCH,), generator=gen).double()
    cur = _wild(gen, BATCH, 0, 2e6)
    state = ShieldState.init(BATCH)
    now = 1.7e9
    last_up = torch.full((BATCH,), -math.inf, dtype=torch.float64)
    last_down = last_up.clone()
    for _ in range(STEPS):
        now += float(torch.rand(1, generator=gen)) * 300
        desired = _wild(gen, BATCH, 0, 3e6, p_wild=0.3)
        res = shield(cur, desired, state, now, cfg, lo, hi)
        out = res.replicas.double()
        known = torch.isfinite(cur) & (cur >= 0)
        # Unknown current count: no decision, nothing to write.
        assert torch.isnan(out[~known]).all()
        assert (res.reason[~known] == int(Reason.REPLICAS_UNKNOWN)).all()
        o, c = out[known], torch.round(cur[known])  # a fractional count is whole pods
        assert ((o >= lo[known]) & (o <= hi[known]) & (o == torch.round(o))).all()
        inside = (c >= lo[known]) & (c <= hi[known])
        up_room = torch.maximum(torch.full_like(c, up_pods), torch.ceil(c * up_pct / 100))
        down_room = torch.maximum(torch.full_like(c, down_pods), torch.floor(c * down_pct / 100))
        assert ((o - c <= up_room) | ~inside).all()
        assert ((c - o <= down_room) | ~inside).all()
        lu, ld = last_up[known], last_down[known]
        assert (~inside | (o <= c) | (now - lu >= up_cool)).all()
        assert (~inside | (o >= c) | (now - torch.maximum(lu, ld) >= down_cool)).all()
        # A non-finite proposal never moves a count that is within its bounds.
        bad = ~torch.isfinite(desired[known])
        assert (o[bad & inside] == c[bad & inside]).all()
        whole = torch.round(cur)  # what the shield counts as the current pods
        last_up = torch.where(known & (out > whole), now, last_up)
        last_down = torch.where(known & (out < whole), now, last_down)
        state = res.state
        cur = torch.where(known, out, _wild(gen, BATCH, 0, 2e6))


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), target=st.integers(5, 100).map(lambda p: p / 100))
@example(seed=1_848_650_184, target=0.05)  # holds a target at 0 replicas
def test_fallback_stays_within_bounds_and_the_hpa_rate_limit(seed, target):
    gen = torch.Generator().manual_seed(seed)
    lo = torch.randint(1, 100, (BATCH,), generator=gen)
    hi = lo + torch.randint(0, 10**5, (BATCH,), generator=gen)
    cur = torch.randint(0, 2 * 10**5, (BATCH,), generator=gen)
    ready = (cur * torch.rand(BATCH, generator=gen)).long()
    cpu = _wild(gen, BATCH, 0, 40, p_wild=0.3) / 10
    items = [
        FallbackInput(
            replicas=int(cur[i]), ready=int(ready[i]), cpu_utilization=float(cpu[i]),
            min_replicas=int(lo[i]), max_replicas=int(hi[i]), target=target, interval_s=15.0,
        )
        for i in range(BATCH)
    ]  # fmt: skip
    out = hpa_decide(items, 1.7e9)
    for it, (to, why, _) in zip(items, out, strict=True):
        if it.replicas == 0:  # scaled to zero by someone: the HPA disables itself, and so do we
            assert to == 0 and why == "AutoscalingDisabled"
            continue
        assert it.min_replicas <= to <= it.max_replicas
        if it.min_replicas <= it.replicas <= it.max_replicas and it.replicas > 0:
            assert to <= max(2 * it.replicas, 4)  # the HPA's scale-up limit
        if not math.isfinite(it.cpu_utilization) and it.min_replicas <= it.replicas:
            assert to == min(it.replicas, it.max_replicas)  # no metric: hold, within bounds
