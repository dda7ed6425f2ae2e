"""The batched HPA baseline against hand-worked cases and a literal port of the Go controller.

Single-step cases follow kubernetes' ``replicaCalcTestCase`` tables (replica_calculator_test.go)
and the examples of https://kubernetes.io/docs/tasks/run-application/horizontal-pod-autoscale/;
multi-step scenarios check the stabilization windows and the rate-limit periods over time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qscale.hpa import (
    HPAConfig,
    HPAReason,
    HPAState,
    hpa_step,
    resource_replicas,
)

R = HPAReason
NAN = math.nan

# A fresh HPA remembers its current size for the scale-down window; cases about the replica
# calculator itself switch that window off so the metric's proposal shows through.
NO_WINDOW = HPAConfig(target_utilization=0.5, scale_down_stabilization_s=0.0)


@dataclass(frozen=True)
class StepCase:
    """One reconcile of a fresh HPA at t = 0."""

    name: str
    current: int
    ready: int
    utilization: float
    expected: int
    reason: HPAReason
    unready: int = 0
    config: HPAConfig = field(default=NO_WINDOW)


def cfg(**changes: object) -> HPAConfig:
    return replace(NO_WINDOW, **changes)


STEP_CASES = [
    # --- docs, "Algorithm details" -----------------------------------------------------------
    StepCase("docs: 200m vs 100m doubles", 4, 4, 0.2, 8, R.DesiredWithinRange,
             config=cfg(target_utilization=0.1)),
    StepCase("docs: 50m vs 100m halves", 4, 4, 0.05, 2, R.DesiredWithinRange,
             config=cfg(target_utilization=0.1)),
    StepCase("docs formula: ceil(3 * 80/50) = ceil(4.8) = 5", 3, 3, 0.8, 5, R.DesiredWithinRange),
    StepCase("ratio 1.08 within tolerance", 4, 4, 0.54, 4, R.DesiredWithinRange),
    StepCase("ratio 1.1 is still within (inclusive)", 4, 4, 0.55, 4, R.DesiredWithinRange),
    StepCase("ratio 0.9 is still within (inclusive)", 4, 4, 0.45, 4, R.DesiredWithinRange),
    StepCase("ratio 1.12 scales: ceil(4.48)", 4, 4, 0.56, 5, R.DesiredWithinRange),
    StepCase("scale-up tolerance 0 reacts to 1.02", 10, 10, 0.51, 11, R.DesiredWithinRange,
             config=cfg(scale_up_tolerance=0.0)),
    # --- replica_calculator_test.go ----------------------------------------------------------
    StepCase("k8s ScaleUp: 300/500/700m of 1 CPU, target 30%", 3, 3, 0.5, 5,
             R.DesiredWithinRange, config=cfg(target_utilization=0.3)),
    StepCase("k8s ScaleDown: 1400m of 5 CPU, target 50%", 5, 5, 0.28, 3, R.DesiredWithinRange),
    StepCase("k8s Tolerance: 102% vs 100%", 3, 3, 1.02, 3, R.DesiredWithinRange,
             config=cfg(target_utilization=1.0)),
    StepCase("k8s ScaleUpUnreadyLessScale", 3, 2, 0.6, 4, R.DesiredWithinRange, unready=1,
             config=cfg(target_utilization=0.3)),
    StepCase("k8s ScaleUpUnreadyNoScale: 0% unready flips direction", 3, 1, 0.4, 3,
             R.DesiredWithinRange, unready=2, config=cfg(target_utilization=0.3)),
    StepCase("unready ignored on scale-down: ceil(10/30 * 2)", 3, 2, 0.1, 1,
             R.DesiredWithinRange, unready=1, config=cfg(target_utilization=0.3)),
    StepCase("unready: ceil(66/50 * 3) = 4 < 10 would move against the ratio", 10, 2, 1.0, 10,
             R.DesiredWithinRange, unready=1),
    # --- arithmetic --------------------------------------------------------------------------
    StepCase("utilization is whole percent: 77.9% -> 77% -> 1.1, within", 10, 10, 0.779, 10,
             R.DesiredWithinRange, config=cfg(target_utilization=0.7)),
    StepCase("70% of 70% is exactly 1.0, not 11 of 10", 10, 10, 0.7, 10, R.DesiredWithinRange,
             config=cfg(target_utilization=0.7, tolerance=0.0)),
    # --- reconcileAutoscaler branches --------------------------------------------------------
    StepCase("no ready pods: controller errors, keeps count", 3, 0, NAN, 3, R.NoMetrics,
             unready=3),
    StepCase("no ready pods with a stale utilization", 3, 0, 0.9, 3, R.NoMetrics, unready=3),
    StepCase("current 0, min 1: autoscaling disabled", 0, 0, NAN, 0, R.AutoscalingDisabled),
    StepCase("current 0, min 0: not disabled, but no metric", 0, 0, NAN, 0, R.NoMetrics,
             config=cfg(min_replicas=0)),
    StepCase("current above max jumps to max", 12, 12, 2.0, 10, R.AboveMax,
             config=cfg(max_replicas=10)),
    StepCase("current below min jumps to min, metric unused", 1, 1, 0.0, 3, R.BelowMin,
             config=cfg(min_replicas=3)),
    # --- behaviors ---------------------------------------------------------------------------
    StepCase("scale-up limit: 1 -> 5 by +4 pods (ratio 10)", 1, 1, 5.0, 5, R.ScaleUpLimit),
    StepCase("scale-up limit: 10 -> 20 by +100% (ratio 3)", 10, 10, 1.5, 20, R.ScaleUpLimit),
    StepCase("scale-up select Min: min(10 + 4, 20)", 10, 10, 1.5, 14, R.ScaleUpLimit,
             config=cfg(scale_up_select="Min")),
    StepCase("scale-up Percent rounds up: ceil(3 * 1.1)", 3, 3, 1.5, 4, R.ScaleUpLimit,
             config=cfg(scale_up_policies=(("Percent", 10, 60.0),))),
    StepCase("scale-up Disabled", 4, 4, 1.5, 4, R.ScaleUpLimit,
             config=cfg(scale_up_select="Disabled")),
    StepCase("max binds before the rate: TooManyReplicas", 8, 8, 1.0, 10, R.TooManyReplicas,
             config=cfg(max_replicas=10)),
    StepCase("min binds: TooFewReplicas", 4, 4, 0.0, 2, R.TooFewReplicas,
             config=cfg(min_replicas=2)),
    StepCase("scale-down Pods policy: 10 - 3", 10, 10, 0.05, 7, R.ScaleDownLimit,
             config=cfg(scale_down_policies=(("Pods", 3, 60.0),))),
    StepCase("scale-down Percent truncates what stays: int(80 * 0.9)", 80, 80, 0.05, 72,
             R.ScaleDownLimit, config=cfg(scale_down_policies=(("Percent", 10, 60.0),))),
    StepCase("docs: Pods 4 and Percent 10 per minute, Max picks 10% at 80", 80, 80, 0.05, 72,
             R.ScaleDownLimit,
             config=cfg(scale_down_policies=(("Pods", 4, 60.0), ("Percent", 10, 60.0)))),
    StepCase("scale-down Disabled", 4, 4, 0.1, 4, R.ScaleDownLimit,
             config=cfg(scale_down_select="Disabled")),
    StepCase("fresh HPA: initial size holds a scale-down for 300 s", 4, 4, 0.1, 4,
             R.ScaleDownStabilized, config=HPAConfig(target_utilization=0.5)),
    StepCase("scale-up window: initial size holds a scale-up", 2, 2, 1.0, 2, R.ScaleUpStabilized,
             config=cfg(scale_up_stabilization_s=60.0)),
]  # fmt: skip


def _t(values: list[float], dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype)


@pytest.mark.parametrize("case", STEP_CASES, ids=lambda c: c.name)
def test_single_step(case: StepCase) -> None:
    state = HPAState.init(1, "cpu", case.config)
    desired, reason, _ = hpa_step(
        state,
        0.0,
        _t([case.current]),
        _t([case.ready]),
        _t([case.unready]),
        _t([case.utilization]),
        case.config,
    )
    assert desired.tolist() == [case.expected]
    assert HPAReason(int(reason[0])) is case.reason


@pytest.mark.parametrize(
    ("current", "ready", "unready", "util", "target", "expected"),
    [
        (3, 3, 0, 0.5, 0.3, 5),  # k8s ScaleUp
        (3, 2, 1, 0.6, 0.3, 4),  # k8s ScaleUpUnreadyLessScale
        (3, 1, 2, 0.4, 0.3, 3),  # k8s ScaleUpUnreadyNoScale
        (5, 5, 0, 0.28, 0.5, 3),  # k8s ScaleDown
        (4, 0, 4, 0.9, 0.5, 4),  # no ready pod: no proposal
        # Go's own float64 artifact, reproduced on purpose: 7/3 * 27 = 63.00000000000001.
        (27, 27, 0, 0.07, 0.03, 64),
    ],
)
def test_resource_replicas(
    current: int, ready: int, unready: int, util: float, target: float, expected: int
) -> None:
    config = HPAConfig(target_utilization=target)
    out = resource_replicas(_t([current]), _t([ready]), _t([unready]), _t([util]), config)
    assert out.tolist() == [expected]


def test_float32_inputs_are_read_as_the_percent_they_mean() -> None:
    # float32(0.29) * 100 = 28.9999992: truncating that to 28 % would scale 100 pods to 97.
    config = cfg(target_utilization=0.29, tolerance=0.0, max_replicas=200)
    f32 = torch.float32
    desired, reason, _ = hpa_step(
        HPAState.init(1, "cpu", config),
        0.0,
        _t([100], f32),
        _t([100], f32),
        _t([0], f32),
        _t([0.29], f32),
        config,
    )
    assert desired.dtype == f32
    assert desired.tolist() == [100.0]
    assert int(reason[0]) == R.DesiredWithinRange


# --- multi-step scenarios ----------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """Pods follow the HPA at once: each step's current = ready = the previous output."""

    name: str
    config: HPAConfig
    start: int
    utilization: list[float]
    expected: list[int]
    reasons: list[HPAReason] | None = None


def _run_scenario(sc: Scenario) -> tuple[list[int], list[HPAReason]]:
    state = HPAState.init(1, "cpu", sc.config)
    current = sc.start
    outs, reasons = [], []
    for i, util in enumerate(sc.utilization):
        now = i * sc.config.sync_period_s
        desired, reason, state = hpa_step(
            state, now, _t([current]), _t([current]), _t([0]), _t([util]), sc.config
        )
        current = int(desired[0])
        outs.append(current)
        reasons.append(HPAReason(int(reason[0])))
    return outs, reasons


SCENARIOS = [
    Scenario(
        "scale-down window keeps the highest proposal of the last 300 s, then lets go",
        HPAConfig(target_utilization=0.5),
        start=4,
        # t=0: 8 pods wanted; then 0.1 utilization proposes 2 for every later step.
        utilization=[1.0] + [0.1] * 20,
        # The proposal of t=0 is inside (t-300, t] up to t=285; at t=300 it is not.
        expected=[8] + [8] * 19 + [2],
        reasons=[R.DesiredWithinRange] + [R.ScaleDownStabilized] * 19 + [R.DesiredWithinRange],
    ),
    Scenario(
        "docs: 10% per 60 s from 80 - one step, hold while the event is in the period",
        cfg(scale_down_policies=(("Percent", 10, 60.0),)),
        start=80,
        utilization=[0.05] * 9,
        expected=[72, 72, 72, 72, 64, 64, 64, 64, 57],
        reasons=[R.ScaleDownLimit] * 9,
    ),
    Scenario(
        "default scale-up: max(+4, +100%) per 15 s, 3 toward 40",
        cfg(max_replicas=40),
        start=3,
        utilization=[5.0] * 5,
        expected=[7, 14, 28, 40, 40],
        reasons=[R.ScaleUpLimit] * 3 + [R.TooManyReplicas] * 2,  # at max, 400 wanted: still clipped
    ),
    Scenario(
        "syncing every 10 s: the last scale-up is still inside the 15 s period",
        cfg(sync_period_s=10.0, max_replicas=40),
        start=3,
        utilization=[5.0] * 5,
        expected=[7, 7, 14, 14, 28],
        reasons=[R.ScaleUpLimit] * 5,
    ),
    Scenario(
        "an event past its own direction's longest period is overwritten, as in Go",
        cfg(
            scale_up_policies=(("Pods", 1, 15.0),),
            scale_down_policies=(("Pods", 1, 70.0),),
        ),
        start=4,
        utilization=[1.0, 1.0, 0.5, 0.5, 1.0, 0.05],
        # Scale-ups at t=0, 15, 60. At t=60 both older ones are past the 15 s scale-up period,
        # so the later one (t=15) is overwritten. At t=75 the scale-down period (5, 75] should
        # see +2 (t=15, t=60) and floor at 7-2-1 = 4; the controller sees only +1 and gives 5.
        expected=[5, 6, 6, 6, 7, 5],
        reasons=[R.ScaleUpLimit, R.ScaleUpLimit, R.DesiredWithinRange, R.DesiredWithinRange,
                 R.ScaleUpLimit, R.ScaleDownLimit],
    ),
    Scenario(
        "scale-up window: rise only once every proposal in the last 30 s agrees",
        cfg(scale_up_stabilization_s=30.0),
        start=4,
        utilization=[1.0, 1.0, 1.0, 0.5, 1.0, 1.0, 1.0],
        # The window is (t-30, t]. t=0,15: the initial 4 (recorded at t=0) caps the rise to 8.
        # t=45 proposes "keep 8" (within tolerance), which caps t=60's wish for 16; at t=75 it
        # has left the window. t=90 wants 32 but t=75's proposal was 16.
        expected=[4, 4, 8, 8, 8, 16, 16],
        reasons=[R.ScaleUpStabilized, R.ScaleUpStabilized, R.DesiredWithinRange,
                 R.DesiredWithinRange, R.ScaleUpStabilized, R.DesiredWithinRange,
                 R.ScaleUpStabilized],
    ),
]  # fmt: skip


@pytest.mark.parametrize("sc", SCENARIOS, ids=lambda s: s.name)
def test_scenario(sc: Scenario) -> None:
    outs, reasons = _run_scenario(sc)
    assert outs == sc.expected
    if sc.reasons is not None:
        assert reasons == sc.reasons


# --- batching, overrides, purity, devices ------------------------------------------------------

MIXED = HPAConfig(target_utilization=0.5, scale_up_stabilization_s=15.0)
# Per env (min, max): env 3 starts disabled, env 4 at 0 with min 0, env 5 loses its ready pods.
MIXED_BOUNDS = [(1, 100), (2, 8), (1, 20), (1, 10), (0, 50), (3, 30), (1, 100), (5, 6)]
MIXED_START = [4, 10, 1, 0, 0, 3, 7, 20]


def _mixed_inputs(step: int, env: int, current: float) -> tuple[float, float, float]:
    """(ready, unready, utilization) of one env at one step."""
    wave = 0.2 + 1.6 * ((step * (env + 3)) % 7) / 6.0  # 0.2 .. 1.8
    ready = 0.0 if env == 5 and step % 4 == 0 else current
    unready = float(step % 3 == 0 and env in (2, 6))
    return ready, unready, (wave if ready > 0 else NAN)


def _run_mixed(envs: list[int], steps: int = 40):
    lo = _t([MIXED_BOUNDS[e][0] for e in envs])
    hi = _t([MIXED_BOUNDS[e][1] for e in envs])
    state = HPAState.init(len(envs), "cpu", MIXED)
    current = [float(MIXED_START[e]) for e in envs]
    history = []
    for step in range(steps):
        if step == 17:  # someone scales by hand
            current = [c + 3 for c in current]
        ready, unready, util = zip(
            *(_mixed_inputs(step, e, c) for e, c in zip(envs, current, strict=True)), strict=True
        )
        desired, reason, state = hpa_step(
            state,
            15.0 * step,
            _t(current),
            _t(list(ready)),
            _t(list(unready)),
            _t(list(util)),
            MIXED,
            lo,
            hi,
        )
        history.append((desired, reason, state))
        current = desired.tolist()
    return history


def test_batch_matches_each_env_alone() -> None:
    envs = list(range(len(MIXED_BOUNDS)))
    batched = _run_mixed(envs)
    reasons_seen = {int(r) for _, reason, _ in batched for r in reason}
    assert len(reasons_seen) >= 6  # the batch really mixes branches
    for env in envs:
        alone = _run_mixed([env])
        for (d_b, r_b, s_b), (d_a, r_a, s_a) in zip(batched, alone, strict=True):
            assert d_b[env] == d_a[0]
            assert r_b[env] == r_a[0]
            for name in ("rec_time", "rec_value", "up_time", "up_change"):
                assert torch.equal(getattr(s_b, name)[env], getattr(s_a, name)[0])


def test_per_env_min_max_override() -> None:
    config = NO_WINDOW
    n = 4
    current = _t([5] * n)
    util = _t([1.0] * n)  # ratio 2: the metric wants 10
    lo = _t([1, 1, 6, 1])
    hi = _t([100, 7, 100, 4])
    desired, reason, _ = hpa_step(
        HPAState.init(n, "cpu", config), 0.0, current, current, _t([0] * n), util, config, lo, hi
    )
    assert desired.tolist() == [10, 7, 6, 4]
    assert [HPAReason(int(r)) for r in reason] == [
        R.DesiredWithinRange,
        R.TooManyReplicas,
        R.BelowMin,
        R.AboveMax,
    ]
    # A scalar override applies to every env.
    desired, _, _ = hpa_step(
        HPAState.init(n, "cpu", config), 0.0, current, current, _t([0] * n), util, config, None, 8
    )
    assert desired.tolist() == [8] * n


def test_pure_and_state_bookkeeping() -> None:
    config = HPAConfig(target_utilization=0.5)
    state = HPAState.init(2, "cpu", config)
    inputs = (_t([4, 8]), _t([4, 8]), _t([0, 0]), _t([1.0, 0.1]))
    before = [x.clone() for x in inputs] + [state.rec_time.clone(), state.up_time.clone()]
    desired, _, new = hpa_step(state, 0.0, *inputs, config)
    after = [*inputs, state.rec_time, state.up_time]
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert desired.tolist() == [8, 8]
    # Initial recommendation + the proposal; one scale-up event of +4 for env 0 only.
    assert new.rec_value[:, :2].tolist() == [[4, 8], [8, 2]]
    assert new.up_change[:, 0].tolist() == [4, 0]
    assert new.up_time[1, 0].item() == -math.inf
    cleared = new.reset(torch.tensor([True, False]))
    assert (cleared.rec_time[0] == -math.inf).all()
    assert torch.equal(cleared.rec_time[1], new.rec_time[1])


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="whole percent"):
        HPAConfig(target_utilization=0.705)
    with pytest.raises(ValueError, match="kind"):
        HPAConfig(scale_up_policies=(("Replicas", 4, 15.0),))
    with pytest.raises(ValueError, match="select"):
        HPAConfig(scale_down_select="Maximum")
    with pytest.raises(ValueError, match="max_replicas"):
        HPAConfig(min_replicas=5, max_replicas=3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    config = HPAConfig(target_utilization=0.6)
    gen = torch.Generator().manual_seed(0)
    n = 512
    states = {d: HPAState.init(n, d, config) for d in ("cpu", "cuda")}
    current = torch.randint(1, 50, (n,), generator=gen).double()
    for step in range(30):
        util = torch.rand(n, generator=gen).double() * 2
        unready = torch.randint(0, 3, (n,), generator=gen).double()
        outs = {}
        for dev, st_ in states.items():
            c = current.to(dev)
            outs[dev] = hpa_step(st_, 15.0 * step, c, c, unready.to(dev), util.to(dev), config)
            states[dev] = outs[dev][2]
        assert torch.equal(outs["cpu"][0], outs["cuda"][0].cpu())
        assert torch.equal(outs["cpu"][1], outs["cuda"][1].cpu())
        current = outs["cpu"][0]


# --- a literal port of the Go controller, for differential testing -----------------------------


class GoHPA:
    """reconcileAutoscaler for one HPA with the controller's Python-list bookkeeping.

    Utilization comes in as Go's integers: ready pods' summed usage in milli-CPU with 1000m
    requests, so percents are exact integer divisions here.
    """

    def __init__(self, config: HPAConfig) -> None:
        self.c = config
        self.recs: list[list[float]] | None = None  # [value, time]
        self.up: list[list[float]] = []  # [change, time, outdated]
        self.down: list[list[float]] = []

    def _within(self, ratio: float) -> bool:
        return (1.0 - self.c.down_tolerance) <= ratio <= (1.0 + self.c.up_tolerance)

    def replicas(self, cur: int, ready: int, unready: int, usage_milli: int) -> int:
        target = self.c.target_percent
        ratio = float(usage_milli * 100 // (ready * 1000)) / float(target)
        if not (unready > 0 and ratio > 1.0):
            return cur if self._within(ratio) else math.ceil(ratio * float(ready))
        counted = ready + unready
        new_ratio = float(usage_milli * 100 // (counted * 1000)) / float(target)
        if self._within(new_ratio) or (ratio > 1.0 and new_ratio < 1.0):
            return cur
        new = math.ceil(new_ratio * float(counted))
        if (new_ratio < 1.0 and new > cur) or (new_ratio > 1.0 and new < cur):
            return cur
        return new

    @staticmethod
    def _changes(events: list[list[float]], period: float, now: float) -> float:
        return sum(e[0] for e in events if e[1] > now - period)

    def _limit(self, cur: int, now: float, up: bool) -> float:
        policies = self.c.scale_up_policies if up else self.c.scale_down_policies
        select = self.c.scale_up_select if up else self.c.scale_down_select
        if select == "Disabled":
            return cur
        most_change = select == "Max"
        pick_max = most_change if up else not most_change
        result = float(-(2**31)) if pick_max else float(2**31 - 1)
        for kind, value, period in policies:
            start = (
                cur - self._changes(self.up, period, now) + self._changes(self.down, period, now)
            )
            if kind == "Pods":
                proposed = start + value if up else start - value
            elif up:
                proposed = math.ceil(float(start) * (1 + float(value) / 100))
            else:
                proposed = int(float(start) * (1 - float(value) / 100))
            result = max(result, proposed) if pick_max else min(result, proposed)
        return result

    def _store(self, now: float, cur: int, desired: int) -> None:
        up = desired > cur
        events = self.up if up else self.down
        policies = self.c.scale_up_policies if up else self.c.scale_down_policies
        longest = max(p[2] for p in policies)
        for e in events:
            if e[1] < now - longest:
                e[2] = True
        last = max((i for i, e in enumerate(events) if e[2]), default=None)
        new = [abs(desired - cur), now, False]
        if last is None:
            events.append(new)
        else:
            events[last] = new

    def reconcile(self, now, cur, ready, unready, usage_milli, lo, hi) -> tuple[int, HPAReason]:
        if self.recs is None:
            self.recs = [[cur, now]]
        if cur == 0 and lo != 0:
            return cur, R.AutoscalingDisabled
        if cur > hi:
            desired, reason = hi, R.AboveMax
        elif cur < lo:
            desired, reason = lo, R.BelowMin
        elif ready == 0:
            return cur, R.NoMetrics
        else:
            raw = self.replicas(cur, ready, unready, usage_milli)
            # stabilizeRecommendationWithBehaviors
            up_cut = now - self.c.scale_up_stabilization_s
            down_cut = now - self.c.scale_down_stabilization_s
            up_rec, down_rec, old = raw, raw, None
            for i, (value, t) in enumerate(self.recs):
                if t > up_cut:
                    up_rec = min(value, up_rec)
                if t > down_cut:
                    down_rec = max(value, down_rec)
                if t < up_cut and t < down_cut:
                    old = i
            stab = max(cur, up_rec)
            stab = min(stab, down_rec)
            if old is None:
                self.recs.append([raw, now])
            else:
                self.recs[old] = [raw, now]
            # convertDesiredReplicasWithBehaviorRate
            desired, reason = stab, None
            if stab > cur:
                limit = max(self._limit(cur, now, up=True), cur)
                allowed, why = (limit, R.ScaleUpLimit) if hi > limit else (hi, R.TooManyReplicas)
                if stab > allowed:
                    desired, reason = allowed, why
            elif stab < cur:
                limit = min(self._limit(cur, now, up=False), cur)
                allowed, why = (limit, R.ScaleDownLimit) if lo < limit else (lo, R.TooFewReplicas)
                if stab < allowed:
                    desired, reason = allowed, why
            if reason is None:
                if stab != raw:
                    reason = R.ScaleUpStabilized if raw >= cur else R.ScaleDownStabilized
                else:
                    reason = R.DesiredWithinRange
        if desired != cur:
            self._store(now, cur, desired)
        return int(desired), reason


_policy = st.tuples(
    st.sampled_from(["Pods", "Percent"]),
    st.integers(1, 150),
    st.sampled_from([10.0, 15.0, 30.0, 60.0, 120.0]),
)
_configs = st.builds(
    HPAConfig,
    target_utilization=st.sampled_from([0.3, 0.5, 0.7, 0.8, 1.0]),
    tolerance=st.sampled_from([0.0, 0.05, 0.1]),
    sync_period_s=st.sampled_from([10.0, 15.0]),
    scale_down_stabilization_s=st.sampled_from([0.0, 30.0, 60.0, 300.0]),
    scale_up_stabilization_s=st.sampled_from([0.0, 15.0, 60.0]),
    scale_up_policies=st.lists(_policy, min_size=1, max_size=3).map(tuple),
    scale_up_select=st.sampled_from(["Max", "Min", "Disabled"]),
    scale_down_policies=st.lists(
        _policy.filter(lambda p: p[0] == "Pods" or p[1] <= 100), min_size=1, max_size=3
    ).map(tuple),
    scale_down_select=st.sampled_from(["Max", "Min", "Disabled"]),
)


@st.composite
def _episodes(draw: st.DrawFn, within_bounds: bool):
    config = draw(_configs)
    n_envs = draw(st.integers(1, 4))
    bounds = []
    for _ in range(n_envs):
        lo = draw(st.integers(0, 4))
        bounds.append((lo, draw(st.integers(max(lo, 1), 40))))
    steps = []
    for _ in range(draw(st.integers(1, 25))):
        gap = draw(st.sampled_from([1, 1, 1, 2, 5, 21]))
        per_env = []
        for lo, hi in bounds:
            manual = draw(
                st.none() | st.integers(lo if within_bounds else 0, hi if within_bounds else 45)
            )
            ready_frac = draw(st.sampled_from([1.0, 1.0, 0.5, 0.0]))
            unready = draw(st.sampled_from([0, 0, 1, 3]))
            load = draw(st.integers(0, 3000))  # per-ready-pod milli-CPU of a 1000m request
            per_env.append((manual, ready_frac, unready, load))
        steps.append((gap, per_env))
    start = [
        draw(st.integers(lo, hi) if within_bounds else st.integers(0, 45)) for lo, hi in bounds
    ]
    return config, bounds, start, steps


def _play(config, bounds, start, steps, reference: bool):
    n = len(bounds)
    lo = _t([b[0] for b in bounds])
    hi = _t([b[1] for b in bounds])
    state = HPAState.init(n, "cpu", config)
    refs = [GoHPA(config) for _ in range(n)]
    current = list(start)
    now = 0.0
    for gap, per_env in steps:
        now += gap * config.sync_period_s
        ready, unready, util, usage = [], [], [], []
        for i, (manual, ready_frac, n_unready, load) in enumerate(per_env):
            if manual is not None:
                current[i] = manual
            r = math.floor(current[i] * ready_frac)
            ready.append(r)
            unready.append(n_unready)
            usage.append(load * r)
            util.append(load * r / (r * 1000) if r else NAN)
        desired, reason, state = hpa_step(
            state, now, _t(current), _t(ready), _t(unready), _t(util), config, lo, hi
        )
        for i in range(n):
            in_bounds = bounds[i][0] <= current[i] <= bounds[i][1]
            d = desired[i].item()
            assert d == math.floor(d)
            if in_bounds:
                assert bounds[i][0] <= d <= bounds[i][1]
            if reference:
                want = refs[i].reconcile(
                    now, current[i], ready[i], unready[i], usage[i], *bounds[i]
                )
                assert (int(d), HPAReason(int(reason[i]))) == want
        current = [int(x) for x in desired.tolist()]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_episodes(within_bounds=True))
def test_property_output_within_min_max(episode) -> None:
    _play(*episode, reference=False)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_episodes(within_bounds=False))
def test_matches_literal_go_port(episode) -> None:
    _play(*episode, reference=True)
