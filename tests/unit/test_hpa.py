"""The batched HPA against hand-worked cases, kubernetes' own test fixtures and a literal port.

Single-step cases follow kubernetes' ``replicaCalcTestCase`` tables (replica_calculator_test.go),
``TestGroupPods``, ``TestConvertDesiredReplicasWithRules`` and ``TestNormalizeDesiredReplicas``
(horizontal_test.go), and the examples of
https://kubernetes.io/docs/tasks/run-application/horizontal-pod-autoscale/; multi-step
scenarios check the stabilization windows and the rate limits over time, for an HPA without
``behavior`` (the default) and with the API's default ``behavior``. A plain-Python port of the
Go code, fed random episodes, checks everything else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qscale.hpa import (
    GO_ZERO_TIME,
    HPAConfig,
    HPAReason,
    HPAState,
    Pod,
    PodMetric,
    _convert_with_rules,
    _stabilize_legacy,
    group_pods,
    hpa_step,
    parse_duration,
    parse_milli,
    resource_replicas,
)

R = HPAReason
NAN = math.nan

# A fresh HPA remembers its current size for the scale-down window; cases about the replica
# calculator itself switch that window off so the metric's proposal shows through.
NO_WINDOW = HPAConfig(target_utilization=0.5, scale_down_stabilization_s=0.0)
BEHAVIOR = HPAConfig.with_default_behavior(target_utilization=0.5, scale_down_stabilization_s=0.0)


def cfg(**changes: object) -> HPAConfig:
    """Without ``behavior`` (the default HPA)."""
    return replace(NO_WINDOW, **changes)


def bcfg(**changes: object) -> HPAConfig:
    """With the API's default ``behavior``."""
    return replace(BEHAVIOR, **changes)


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
    missing: int = 0
    config: HPAConfig = field(default=NO_WINDOW)


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
    StepCase("behavior: scale-up tolerance 0 reacts to 1.02", 10, 10, 0.51, 11,
             R.DesiredWithinRange, config=bcfg(scale_up_tolerance=0.0)),
    StepCase("target above 100 %: 180 % against 150 % on 5 pods", 5, 5, 1.8, 6,
             R.DesiredWithinRange, config=cfg(target_utilization=1.5)),
    # --- replica_calculator_test.go, unready pods --------------------------------------------
    StepCase("k8s scale up: 300/500/700m of 1 CPU, target 30%", 3, 3, 0.5, 5,
             R.DesiredWithinRange, config=cfg(target_utilization=0.3)),
    StepCase("k8s scale down: 1400m of 5 CPU, target 50%", 5, 5, 0.28, 3, R.DesiredWithinRange),
    StepCase("k8s tolerance: 102% vs 100%", 3, 3, 1.02, 3, R.DesiredWithinRange,
             config=cfg(target_utilization=1.0)),
    StepCase("k8s scale up: unready pod scales less", 3, 2, 0.6, 4, R.DesiredWithinRange,
             unready=1, config=cfg(target_utilization=0.3)),
    StepCase("k8s no scale: unready pods at 0% flip the direction", 3, 1, 0.4, 3,
             R.DesiredWithinRange, unready=2, config=cfg(target_utilization=0.3)),
    StepCase("k8s scale down: exclude unready pods, ceil(0.6 * 3)", 5, 3, 0.3, 2,
             R.DesiredWithinRange, unready=2),
    StepCase("k8s scale down: exclude unscheduled pods", 5, 1, 0.1, 1, R.DesiredWithinRange,
             unready=4),
    StepCase("unready: ceil(66/50 * 3) = 4 < 10 would move against the ratio", 10, 2, 1.0, 10,
             R.DesiredWithinRange, unready=1),
    # --- replica_calculator_test.go, missing pods (1 CPU requests, ready pods' mean) -----------
    StepCase("k8s missing metrics: 2 missing at 100% on a scale-down", 4, 2, 0.2475, 3,
             R.DesiredWithinRange, missing=2, config=cfg(target_utilization=1.0)),
    StepCase("k8s missing, no change at ratio 1: missing pods left out", 2, 1, 1.0, 2,
             R.DesiredWithinRange, missing=1, config=cfg(target_utilization=1.0)),
    StepCase("k8s missing, no change >: 0% missing brings 190% within tolerance", 2, 1, 1.9, 2,
             R.DesiredWithinRange, missing=1, config=cfg(target_utilization=1.0)),
    StepCase("k8s missing, no change <: (60 + 100) / 2 = 80% on 2 pods is 2", 2, 1, 0.6, 2,
             R.DesiredWithinRange, missing=1, config=cfg(target_utilization=1.0)),
    StepCase("k8s missing + unready change: 100% missing flips 45% to 72%", 3, 1, 0.45, 3,
             R.DesiredWithinRange, unready=1, missing=1),
    StepCase("k8s missing + unready scale up: both at 0, 66% on 3 pods", 3, 1, 2.0, 4,
             R.DesiredWithinRange, unready=1, missing=1),
    StepCase("k8s missing + unready scale down: unready left out, 40% on 3 pods", 4, 2, 0.1, 3,
             R.DesiredWithinRange, unready=1, missing=1),
    StepCase("k8s rolling update with max surge: ceil(0.8 * 3) = 3 > 2 goes against", 2, 2, 0.1,
             2, R.DesiredWithinRange, missing=1),
    StepCase("missing on a scale-down at max(100, 300)% for a 300% target", 4, 2, 0.05, 2,
             R.DesiredWithinRange, unready=1, missing=1, config=cfg(target_utilization=3.0)),
    StepCase("missing on a scale-up at 0%: proposal 6, capped at max(2 x 2, 4)", 2, 1, 3.0, 4,
             R.ScaleUpLimit, missing=3),
    StepCase("every pod missing: no metrics", 3, 0, NAN, 3, R.NoMetrics, missing=3),
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
    # --- without behavior: convertDesiredReplicasWithRules ------------------------------------
    StepCase("legacy: 1 -> 4, the cap's minimum (ratio 10)", 1, 1, 5.0, 4, R.ScaleUpLimit),
    StepCase("legacy: 10 -> 20, doubling (ratio 3)", 10, 10, 1.5, 20, R.ScaleUpLimit),
    StepCase("legacy: 3 -> 6 however high the load", 3, 3, 200.0, 6, R.ScaleUpLimit,
             config=cfg(max_replicas=2000)),
    StepCase("legacy: max below the cap binds: TooManyReplicas", 8, 8, 1.0, 10,
             R.TooManyReplicas, config=cfg(max_replicas=10)),
    StepCase("legacy: max equal to the cap is TooManyReplicas", 5, 5, 2.0, 10,
             R.TooManyReplicas, config=cfg(max_replicas=10)),
    StepCase("legacy: min binds: TooFewReplicas", 4, 4, 0.0, 2, R.TooFewReplicas,
             config=cfg(min_replicas=2)),
    StepCase("legacy: fresh HPA, the initial size holds a scale-down for 300 s", 4, 4, 0.1, 4,
             R.ScaleDownStabilized, config=HPAConfig(target_utilization=0.5)),
    # --- with behavior -----------------------------------------------------------------------
    StepCase("behavior: 1 -> 5 by +4 pods (ratio 10)", 1, 1, 5.0, 5, R.ScaleUpLimit,
             config=bcfg()),
    StepCase("behavior: 10 -> 20 by +100% (ratio 3)", 10, 10, 1.5, 20, R.ScaleUpLimit,
             config=bcfg()),
    StepCase("behavior: 2 -> 6, where the legacy cap is 4", 2, 2, 5.0, 6, R.ScaleUpLimit,
             config=bcfg()),
    StepCase("behavior: select Min: min(10 + 4, 20)", 10, 10, 1.5, 14, R.ScaleUpLimit,
             config=bcfg(scale_up_select="Min")),
    StepCase("behavior: Percent rounds up: ceil(3 * 1.1)", 3, 3, 1.5, 4, R.ScaleUpLimit,
             config=bcfg(scale_up_policies=(("Percent", 10, 60.0),))),
    StepCase("behavior: scale-up Disabled", 4, 4, 1.5, 4, R.ScaleUpLimit,
             config=bcfg(scale_up_select="Disabled")),
    StepCase("behavior: max binds before the rate: TooManyReplicas", 8, 8, 1.0, 10,
             R.TooManyReplicas, config=bcfg(max_replicas=10)),
    StepCase("behavior: min binds: TooFewReplicas", 4, 4, 0.0, 2, R.TooFewReplicas,
             config=bcfg(min_replicas=2)),
    StepCase("behavior: scale-down Pods policy: 10 - 3", 10, 10, 0.05, 7, R.ScaleDownLimit,
             config=bcfg(scale_down_policies=(("Pods", 3, 60.0),))),
    StepCase("behavior: Percent truncates what stays: int(80 * 0.9)", 80, 80, 0.05, 72,
             R.ScaleDownLimit, config=bcfg(scale_down_policies=(("Percent", 10, 60.0),))),
    StepCase("docs: Pods 4 and Percent 10 per minute, Max picks 10% at 80", 80, 80, 0.05, 72,
             R.ScaleDownLimit,
             config=bcfg(scale_down_policies=(("Pods", 4, 60.0), ("Percent", 10, 60.0)))),
    StepCase("behavior: scale-down Disabled", 4, 4, 0.1, 4, R.ScaleDownLimit,
             config=bcfg(scale_down_select="Disabled")),
    StepCase("behavior: fresh HPA, the initial size holds a scale-down", 4, 4, 0.1, 4,
             R.ScaleDownStabilized, config=HPAConfig.with_default_behavior(target_utilization=0.5)),
    StepCase("behavior: scale-up window, the initial size holds a scale-up", 2, 2, 1.0, 2,
             R.ScaleUpStabilized, config=bcfg(scale_up_stabilization_s=60.0)),
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
        missing_pods=_t([case.missing]),
    )
    assert desired.tolist() == [case.expected]
    assert HPAReason(int(reason[0])) is case.reason


@pytest.mark.parametrize(
    ("current", "ready", "unready", "missing", "util", "target", "expected"),
    [
        (3, 3, 0, 0, 0.5, 0.3, 5),  # k8s scale up
        (3, 2, 1, 0, 0.6, 0.3, 4),  # k8s unready pod scales less
        (3, 1, 2, 0, 0.4, 0.3, 3),  # k8s unready pods flip the direction
        (5, 5, 0, 0, 0.28, 0.5, 3),  # k8s scale down
        (4, 0, 4, 0, 0.9, 0.5, 4),  # no ready pod: no proposal
        (2, 1, 0, 3, 3.0, 0.5, 6),  # missing at 0 on a scale-up: before the legacy cap
        (4, 2, 0, 2, 0.2475, 1.0, 3),  # k8s missing metrics
        # Go's own float64 artifact, reproduced on purpose: 7/3 * 27 = 63.00000000000001.
        (27, 27, 0, 0, 0.07, 0.03, 64),
    ],
)
def test_resource_replicas(
    current: int,
    ready: int,
    unready: int,
    missing: int,
    util: float,
    target: float,
    expected: int,
) -> None:
    config = HPAConfig(target_utilization=target)
    args = (_t([current]), _t([ready]), _t([unready]), _t([util]))
    out = resource_replicas(*args, config, missing_pods=_t([missing]))
    assert out.tolist() == [expected]
    # The same through the per-env override, from a config with another target.
    other = HPAConfig(target_utilization=0.99 if target != 0.99 else 0.5)
    out = resource_replicas(*args, other, missing_pods=_t([missing]), target_utilization=target)
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


# --- kubernetes' fixtures through group_pods ---------------------------------------------------

NOW = 1_800_000_000.0
HOT, COOL, ZERO = NOW, NOW - 180.0, GO_ZERO_TIME  # hotCPUCreationTime, coolCPUCreationTime


@dataclass(frozen=True)
class GoFixture:
    """A ``replicaCalcTestCase``: 2 containers per pod, each requesting 1 CPU and using
    ``levels[i]`` milli-CPU; pods past ``len(levels)`` have no sample. Unset times are Go's zero
    time, samples are stamped with it and have a 1 min window, as in ``runTest``."""

    name: str
    current: int
    target_pct: int
    levels: tuple[int, ...]
    expected: int
    readiness: tuple[str, ...] | None = None
    start: tuple[float, ...] | None = None
    phase: tuple[str, ...] | None = None
    deleting: tuple[bool, ...] | None = None


T, F = "True", "False"
GO_FIXTURES = [
    # TestReplicaCalcResourceScale
    GoFixture("scale up", 3, 30, (300, 500, 700), 5),
    GoFixture("scale up: unready pod scales less", 3, 30, (300, 500, 700), 4,
              readiness=(F, T, T)),
    GoFixture("scale up: hot-CPU pod scales less", 3, 30, (300, 500, 700), 4,
              start=(HOT, COOL, COOL)),
    GoFixture("no scale: unready pods ignored", 3, 30, (400, 500, 700), 3, readiness=(T, F, F)),
    GoFixture("no scale: hot-CPU pods ignored", 3, 30, (400, 500, 700), 3, readiness=(T, F, F),
              start=(COOL, HOT, HOT)),
    GoFixture("scale up: failed pods ignored", 2, 30, (500, 700), 4, readiness=(T, T, F, F),
              phase=("Running", "Running", "Failed", "Failed")),
    GoFixture("scale up: pods being deleted are ignored", 2, 30, (500, 700), 4,
              readiness=(T, T, F, F), deleting=(False, False, True, True)),
    GoFixture("scale down", 5, 50, (100, 300, 500, 250, 250), 3),
    GoFixture("scale down: exclude unready pods", 5, 50, (100, 300, 500, 250, 250), 2,
              readiness=(T, T, T, F, F)),
    GoFixture("scale down: exclude unscheduled pods", 5, 50, (100,), 1,
              readiness=(T, F, F, F, F), phase=("Running",) + ("Pending",) * 4),
    GoFixture("scale down: ignore hot-CPU pods", 5, 50, (100, 300, 500, 250, 250), 2,
              start=(COOL, COOL, COOL, HOT, HOT)),
    GoFixture("scale down: failed pods ignored", 5, 50, (100, 300, 500, 250, 250), 3,
              readiness=(T,) * 5 + (F, F), phase=("Running",) * 5 + ("Failed",) * 2),
    GoFixture("scale down: still-running pods being deleted are ignored", 5, 50,
              (100, 300, 500, 250, 250), 3, readiness=(T,) * 5 + (F, F),
              phase=("Running",) * 7, deleting=(False,) * 5 + (True, True)),
    # TestReplicaCalcSuperfluousMetrics: samples of pods not in the list stay out of the ratio.
    GoFixture("superfluous metrics", 4, 100, (4000, 9500, 3000, 7000, 3200, 2000), 24),
    # TestReplicaCalcMissingMetrics*
    GoFixture("missing metrics", 4, 100, (400, 95), 3),
    GoFixture("missing metrics, no change eq", 2, 100, (1000,), 2),
    GoFixture("missing metrics, no change gt", 2, 100, (1900,), 2),
    GoFixture("missing metrics, no change lt", 2, 100, (600,), 2),
    GoFixture("missing metrics, unready change", 3, 50, (100, 450), 3, readiness=(F, T, T)),
    GoFixture("missing metrics, hot CPU no change", 3, 50, (100, 450), 3,
              start=(HOT, COOL, COOL)),
    GoFixture("missing metrics, unready scale up", 3, 50, (100, 2000), 4, readiness=(F, T, T)),
    GoFixture("missing metrics, hot CPU scale up", 3, 50, (100, 2000), 4, readiness=(F, T, T),
              start=(HOT, COOL, COOL)),
    GoFixture("missing metrics, unready scale down", 4, 50, (100, 100, 100), 3,
              readiness=(F, T, T, T)),
    # TestReplicaCalcDuringRollingUpdateWithMaxSurge
    GoFixture("rolling update with max surge", 2, 50, (100, 100), 2, phase=("Running",) * 3),
]  # fmt: skip


def _fixture_pods(fx: GoFixture) -> tuple[list[Pod], dict[str, PodMetric]]:
    n = max(fx.current, len(fx.phase or ()))
    pods = [
        Pod(
            name=f"test-pod-{i}",
            phase=fx.phase[i] if fx.phase else "Running",
            start_time=fx.start[i] if fx.start else ZERO,
            ready=fx.readiness[i] if fx.readiness and i < len(fx.readiness) else "True",
            ready_transition=ZERO,
            deleting=bool(fx.deleting and fx.deleting[i]),
        )
        for i in range(n)
    ]
    metrics = {
        f"test-pod-{i}": PodMetric(timestamp=ZERO, window_s=60.0, cpu_milli=2 * level)
        for i, level in enumerate(fx.levels)
    }
    return pods, metrics


@pytest.mark.parametrize("fx", GO_FIXTURES, ids=lambda f: f.name)
def test_kubernetes_replica_calculator_fixtures(fx: GoFixture) -> None:
    pods, metrics = _fixture_pods(fx)
    # defaultTestingCPUInitializationPeriod and defaultTestingDelayOfInitialReadinessStatus.
    groups = group_pods(pods, metrics, NOW, cpu_initialization_period_s=120.0,
                        initial_readiness_delay_s=10.0)  # fmt: skip
    ready, unready, missing = groups.counts
    usage = sum(metrics[name].cpu_milli for name in groups.ready)
    config = HPAConfig(target_utilization=fx.target_pct / 100)
    out = resource_replicas(
        _t([fx.current]),
        _t([ready]),
        _t([unready]),
        _t([usage / (ready * 2000) if ready else NAN]),
        config,
        missing_pods=_t([missing]),
    )
    assert out.tolist() == [fx.expected]


def _pod(name: str, **kw: object) -> Pod:
    return Pod(name, **kw)  # type: ignore[arg-type]


GROUP_CASES = [
    # TestGroupPods (cpuInitializationPeriod 2 min, delayOfInitialReadinessStatus 10 s).
    ("void", [], {}, set(), set(), set(), set()),
    ("unready a pod without ready condition", [_pod("lucretius", phase="Succeeded",
     start_time=NOW)], {"lucretius": PodMetric(ZERO, 0.0)}, set(), {"lucretius"}, set(), set()),
    ("count in a ready pod with fresh metrics during initialization period",
     [_pod("bentham", phase="Succeeded", start_time=NOW - 60, ready=T,
           ready_transition=NOW - 30)],
     {"bentham": PodMetric(NOW, 30.0)}, {"bentham"}, set(), set(), set()),
    ("unready a ready pod without fresh metrics during initialization period",
     [_pod("bentham", phase="Succeeded", start_time=NOW - 60, ready=T,
           ready_transition=NOW - 30)],
     {"bentham": PodMetric(NOW, 60.0)}, set(), {"bentham"}, set(), set()),
    ("unready an unready pod during initialization period",
     [_pod("lucretius", phase="Succeeded", start_time=NOW - 600, ready=F,
           ready_transition=NOW - 594)],
     {"lucretius": PodMetric(ZERO, 0.0)}, set(), {"lucretius"}, set(), set()),
    ("count in a ready pod without fresh metrics after initialization period",
     [_pod("bentham", phase="Succeeded", start_time=NOW - 180, ready=T,
           ready_transition=NOW - 180)],
     {"bentham": PodMetric(NOW - 120, 60.0)}, {"bentham"}, set(), set(), set()),
    ("count in an unready pod that was ready after initialization period",
     [_pod("lucretius", phase="Succeeded", start_time=NOW - 600, ready=F,
           ready_transition=NOW - 540)],
     {"lucretius": PodMetric(ZERO, 0.0)}, {"lucretius"}, set(), set(), set()),
    ("unready pod that has never been ready after initialization period",
     [_pod("lucretius", phase="Succeeded", start_time=NOW - 600, ready=F,
           ready_transition=NOW - 590)],
     {"lucretius": PodMetric(ZERO, 0.0)}, {"lucretius"}, set(), set(), set()),
    ("a missing pod", [_pod("epicurus", phase="Succeeded", start_time=NOW - 180)], {},
     set(), set(), {"epicurus"}, set()),
    ("several pods",
     [_pod("lucretius", phase="Succeeded", start_time=NOW),
      _pod("niccolo", phase="Succeeded", start_time=NOW - 180, ready=T,
           ready_transition=NOW - 180),
      _pod("epicurus", phase="Succeeded", start_time=NOW - 180)],
     {"lucretius": PodMetric(ZERO, 0.0), "niccolo": PodMetric(ZERO, 0.0)},
     {"niccolo"}, {"lucretius"}, {"epicurus"}, set()),
    ("pending pods are unreadied", [_pod("unscheduled", phase="Pending")], {}, set(),
     {"unscheduled"}, set(), set()),
    ("ignore pods with deletion timestamps", [_pod("deleted", phase="Pending", deleting=True)],
     {"deleted": PodMetric(ZERO, 0.0)}, set(), set(), set(), {"deleted"}),
    ("ignore pods in a failed state", [_pod("failed", phase="Failed")],
     {"failed": PodMetric(ZERO, 0.0)}, set(), set(), set(), {"failed"}),
    # Beyond TestGroupPods: the edges of each rule.
    ("Ready Unknown counts as ready (Go tests for False)",
     [_pod("u", start_time=NOW - 600, ready="Unknown", ready_transition=NOW - 600)],
     {"u": PodMetric(NOW, 60.0)}, {"u"}, set(), set(), set()),
    ("a sample exactly one window after the transition counts",
     [_pod("w", start_time=NOW - 20, ready=T, ready_transition=NOW - 20)],
     {"w": PodMetric(NOW - 10, 10.0)}, {"w"}, set(), set(), set()),
    ("a sample a millisecond short of that does not",
     [_pod("w", start_time=NOW - 20, ready=T, ready_transition=NOW - 20)],
     {"w": PodMetric(NOW - 10, 10.001)}, set(), {"w"}, set(), set()),
    ("at exactly start + initialization period the pod is past it",
     [_pod("p", start_time=NOW - 120, ready=T, ready_transition=NOW - 1)],
     {"p": PodMetric(NOW, 60.0)}, {"p"}, set(), set(), set()),
    ("never ready since exactly start + delay: counted",
     [_pod("n", start_time=NOW - 600, ready=F, ready_transition=NOW - 590)],
     {"n": PodMetric(NOW, 60.0)}, {"n"}, set(), set(), set()),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "pods", "metrics", "ready", "unready", "missing", "ignored"),
    GROUP_CASES,
    ids=[c[0] for c in GROUP_CASES],
)
def test_group_pods(name, pods, metrics, ready, unready, missing, ignored) -> None:
    groups = group_pods(pods, metrics, NOW, cpu_initialization_period_s=120.0,
                        initial_readiness_delay_s=10.0)  # fmt: skip
    assert (groups.ready, groups.unready, groups.missing, groups.ignored) == (
        ready,
        unready,
        missing,
        ignored,
    )


def test_group_pods_defaults_are_the_controller_flags() -> None:
    # 4 min after its start a pod is still initializing under the 5 min default...
    pod = Pod("p", start_time=NOW - 240, ready=T, ready_transition=NOW - 5)
    sample = {"p": PodMetric(NOW, 10.0)}
    assert group_pods([pod], sample, NOW).unready == {"p"}
    # ... and an unready pod Ready-transitioned 20 s after its start "has never been ready"
    # under the 30 s default.
    pod = Pod("q", start_time=NOW - 900, ready=F, ready_transition=NOW - 880)
    assert group_pods([pod], {"q": PodMetric(NOW, 10.0)}, NOW).unready == {"q"}


def test_api_objects_as_the_controller_reads_them() -> None:
    pod = Pod.from_api(
        {
            "metadata": {"name": "web-1", "creationTimestamp": "2026-12-01T07:16:03Z"},
            "status": {
                "phase": "Running",
                "startTime": "2026-12-01T07:16:18Z",
                "conditions": [
                    {"type": "PodScheduled", "status": "True"},
                    {
                        "type": "Ready",
                        "status": "True",
                        "lastTransitionTime": "2026-12-01T07:16:18Z",
                    },
                ],
            },
        }
    )
    assert pod == Pod("web-1", "Running", 1796109378.0, "True", 1796109378.0, False)
    assert Pod.from_api({"metadata": {"name": "p", "deletionTimestamp": "x"}}).deleting
    metric = PodMetric.from_api(
        {
            "timestamp": "2026-12-01T07:16:46Z",
            "window": "10.003s",
            "containers": [{"name": "a", "usage": {"cpu": "50002065n"}},
                           {"name": "b", "usage": {"cpu": "49998146n"}}],
        }
    )  # fmt: skip
    # MilliValue rounds each container up: 51m + 50m.
    assert metric == PodMetric(1796109406.0, 10.003, 101)
    assert PodMetric.from_api({"timestamp": "", "window": "1s", "containers": []}) is None
    no_cpu = {"timestamp": "", "window": "1s", "containers": [{"usage": {"memory": "1Mi"}}]}
    assert PodMetric.from_api(no_cpu) is None


@pytest.mark.parametrize(
    ("quantity", "milli"),
    [("49998146n", 50), ("50000000n", 50), ("50000001n", 51), ("250m", 250), ("1", 1000),
     ("1.5", 1500), ("2k", 2000000), ("1500u", 2), ("0", 0)],
)  # fmt: skip
def test_parse_milli_rounds_up_as_go(quantity: str, milli: int) -> None:
    assert parse_milli(quantity) == milli


@pytest.mark.parametrize(
    ("text", "seconds"), [("9.995s", 9.995), ("1m0s", 60.0), ("250ms", 0.25), ("1h0m2s", 3602.0)]
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds, abs=1e-12)


# --- without behavior: horizontal_test.go --------------------------------------------------------


@pytest.mark.parametrize(
    ("current", "desired", "lo", "hi", "expected", "reason"),
    [
        # TestConvertDesiredReplicasWithRules
        (5, 7, 3, 8, 7, R.DesiredWithinRange),
        (3, 1, 2, 8, 2, R.TooFewReplicas),
        (1, 0, 0, 10, 0, R.DesiredWithinRange),
        (20, 1000, 1, 10, 10, R.TooManyReplicas),
        (3, 1000, 1, 2000, 6, R.ScaleUpLimit),
        # the cap's minimum and its edge with maxReplicas
        (0, 9, 0, 10, 4, R.ScaleUpLimit),
        (4, 9, 1, 8, 8, R.TooManyReplicas),
        (4, 9, 1, 9, 8, R.ScaleUpLimit),
    ],
)
def test_convert_desired_replicas_with_rules(current, desired, lo, hi, expected, reason) -> None:
    out, why = _convert_with_rules(_t([current]), _t([desired]), _t([lo]), _t([hi]))
    assert out.tolist() == [expected]
    assert HPAReason(int(why[0])) is reason


@pytest.mark.parametrize(
    ("recommendations", "proposal", "expected", "log_length"),
    [
        # TestNormalizeDesiredReplicas (stabilizeRecommendation, 5 min window)
        ([], 5, 5, 1),
        ([(4, -120.0), (5, -60.0)], 3, 5, 3),
        ([(1, -120.0), (2, -60.0)], 3, 3, 3),
        ([(10, -600.0), (9, -540.0)], 3, 3, 2),
        ([(10, -600.0), (4, -60.0), (5, -120.0), (9, -540.0)], 3, 5, 4),
        # an entry exactly one window old has aged out (see _stabilize_legacy)
        ([(9, -300.0)], 3, 3, 2),
        ([(9, -299.999)], 3, 9, 2),
    ],
)
def test_stabilize_recommendation(recommendations, proposal, expected, log_length) -> None:
    config = HPAConfig()
    slots = config.recommendation_slots
    times = [t for _, t in recommendations] + [-math.inf] * (slots - len(recommendations))
    values = [v for v, _ in recommendations] + [0] * (slots - len(recommendations))
    out, rec_time, rec_value = _stabilize_legacy(
        _t([times]), _t([values]), _t([0.0]), _t([proposal]), torch.tensor([True]), config
    )
    assert out.tolist() == [expected]
    assert int((rec_time > -math.inf).sum()) == log_length
    assert proposal in rec_value[0, rec_time[0] == 0.0].tolist()


# --- multi-step scenarios ----------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """Pods follow the HPA at once (each step's current = ready = the previous output) unless
    ``unready`` says how many of them are still starting."""

    name: str
    config: HPAConfig
    start: int
    utilization: list[float]
    expected: list[int]
    reasons: list[HPAReason] | None = None
    unready: list[int] | None = None


def _run_scenario(sc: Scenario) -> tuple[list[int], list[HPAReason]]:
    state = HPAState.init(1, "cpu", sc.config)
    current = sc.start
    outs, reasons = [], []
    for i, util in enumerate(sc.utilization):
        now = i * sc.config.sync_period_s
        unready = sc.unready[i] if sc.unready else 0
        desired, reason, state = hpa_step(
            state,
            now,
            _t([current]),
            _t([current - unready]),
            _t([unready]),
            _t([util]),
            sc.config,
        )
        current = int(desired[0])
        outs.append(current)
        reasons.append(HPAReason(int(reason[0])))
    return outs, reasons


SCENARIOS = [
    Scenario(
        "legacy: the scale-down window keeps the highest proposal of the last 300 s",
        HPAConfig(target_utilization=0.5),
        start=4,
        # t=0: 8 pods wanted; then 0.1 utilization proposes 2 for every later step.
        utilization=[1.0] + [0.1] * 20,
        # The proposal of t=0 is inside the window up to t=285; at t=300 it is not.
        expected=[8] + [8] * 19 + [2],
        reasons=[R.DesiredWithinRange] + [R.ScaleDownStabilized] * 19 + [R.DesiredWithinRange],
    ),
    Scenario(
        "behavior: the same window with the API's default policies",
        HPAConfig.with_default_behavior(target_utilization=0.5),
        start=4,
        utilization=[1.0] + [0.1] * 20,
        expected=[8] + [8] * 19 + [2],
        reasons=[R.DesiredWithinRange] + [R.ScaleDownStabilized] * 19 + [R.DesiredWithinRange],
    ),
    Scenario(
        "legacy: a step, 800m over 100m pods at 50 %, doubles per sync: 2 -> 4 -> 8 -> 16",
        HPAConfig(target_utilization=0.5, max_replicas=40),
        start=2,
        utilization=[4.0, 2.0, 1.0, 0.5, 0.5],
        expected=[4, 8, 16, 16, 16],
        reasons=[R.ScaleUpLimit] * 2 + [R.DesiredWithinRange] * 3,
    ),
    Scenario(
        "behavior: the same step goes 2 -> 6 -> 12 -> 16",
        HPAConfig.with_default_behavior(target_utilization=0.5, max_replicas=40),
        start=2,
        utilization=[4.0, 800 / 600, 800 / 1200, 0.5, 0.5],
        expected=[6, 12, 16, 16, 16],
        reasons=[R.ScaleUpLimit] * 2 + [R.DesiredWithinRange] * 3,
    ),
    Scenario(
        "legacy: a proposal seen once pulls the count up all window long, doubling per sync",
        cfg(scale_down_stabilization_s=60.0, max_replicas=40),
        start=2,
        # t=0 proposes 16 (capped at 4); the load then drops (ratios 1.5, then 0.74) and
        # proposes 6, but the window's 16 keeps lifting the count: 8, then 16. At t=60 the 16
        # has aged out, and the highest proposal left (t=45: ceil(0.74 x 16) = 12) holds.
        utilization=[4.0, 0.75, 0.375, 0.375, 0.375, 0.2],
        expected=[4, 8, 16, 16, 12, 12],
        reasons=[R.ScaleUpLimit, R.ScaleUpLimit, R.ScaleDownStabilized, R.ScaleDownStabilized,
                 R.DesiredWithinRange, R.ScaleDownStabilized],
    ),
    Scenario(
        "legacy: pods still starting scale up less, the window still lifts to 16",
        cfg(scale_down_stabilization_s=60.0, max_replicas=40),
        start=2,
        # 800m over the ready pods: t=15 has 2 of 4 starting (200 % over all 4: 16),
        # t=30 6 of 8 (100 % over 8: 16).
        utilization=[4.0, 4.0, 4.0, 0.5],
        unready=[0, 2, 6, 0],
        expected=[4, 8, 16, 16],
        reasons=[R.ScaleUpLimit, R.ScaleUpLimit, R.DesiredWithinRange, R.DesiredWithinRange],
    ),
    Scenario(
        "docs: 10% per 60 s from 80 - one step, hold while the event is in the period",
        bcfg(scale_down_policies=(("Percent", 10, 60.0),)),
        start=80,
        utilization=[0.05] * 9,
        expected=[72, 72, 72, 72, 64, 64, 64, 64, 57],
        reasons=[R.ScaleDownLimit] * 9,
    ),
    Scenario(
        "behavior: max(+4, +100%) per 15 s, 3 toward 40",
        bcfg(max_replicas=40),
        start=3,
        utilization=[5.0] * 5,
        expected=[7, 14, 28, 40, 40],
        reasons=[R.ScaleUpLimit] * 3 + [R.TooManyReplicas] * 2,  # at max, 400 wanted: still clipped
    ),
    Scenario(
        "legacy: no event history, so syncing every 10 s doubles every 10 s",
        cfg(sync_period_s=10.0, max_replicas=40),
        start=3,
        utilization=[5.0] * 5,
        expected=[6, 12, 24, 40, 40],
        reasons=[R.ScaleUpLimit] * 3 + [R.TooManyReplicas] * 2,
    ),
    Scenario(
        "behavior: syncing every 10 s, the last scale-up is still inside the 15 s period",
        bcfg(sync_period_s=10.0, max_replicas=40),
        start=3,
        utilization=[5.0] * 5,
        expected=[7, 7, 14, 14, 28],
        reasons=[R.ScaleUpLimit] * 5,
    ),
    Scenario(
        "behavior: an event past its direction's longest period is overwritten, as in Go",
        bcfg(
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
        "behavior: scale-up window, rise only once every proposal in the last 30 s agrees",
        bcfg(scale_up_stabilization_s=30.0),
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

MIXED_CONFIGS = {
    "legacy": HPAConfig(target_utilization=0.5, scale_down_stabilization_s=60.0),
    "behavior": HPAConfig.with_default_behavior(
        target_utilization=0.5, scale_up_stabilization_s=15.0
    ),
}
# Per env (min, max): env 3 starts disabled, env 4 at 0 with min 0, env 5 loses its ready pods.
MIXED_BOUNDS = [(1, 100), (2, 8), (1, 20), (1, 10), (0, 50), (3, 30), (1, 100), (5, 6)]
MIXED_START = [4, 10, 1, 0, 0, 3, 7, 20]
MIXED_TARGETS = [0.5, 0.5, 0.8, 0.5, 0.3, 1.2, 0.5, 0.7]


def _mixed_inputs(step: int, env: int, current: float) -> tuple[float, float, float, float]:
    """(ready, unready, missing, utilization) of one env at one step."""
    wave = 0.2 + 1.6 * ((step * (env + 3)) % 7) / 6.0  # 0.2 .. 1.8
    ready = 0.0 if env == 5 and step % 4 == 0 else current
    unready = float(step % 3 == 0 and env in (2, 6))
    missing = float(step % 5 == 1 and env in (0, 6, 7))
    return ready, unready, missing, (wave if ready > 0 else NAN)


def _run_mixed(config: HPAConfig, envs: list[int], steps: int = 40):
    lo = _t([MIXED_BOUNDS[e][0] for e in envs])
    hi = _t([MIXED_BOUNDS[e][1] for e in envs])
    targets = _t([MIXED_TARGETS[e] for e in envs])
    state = HPAState.init(len(envs), "cpu", config)
    current = [float(MIXED_START[e]) for e in envs]
    history = []
    for step in range(steps):
        if step == 17:  # someone scales by hand
            current = [c + 3 for c in current]
        ready, unready, missing, util = zip(
            *(_mixed_inputs(step, e, c) for e, c in zip(envs, current, strict=True)), strict=True
        )
        desired, reason, state = hpa_step(
            state,
            15.0 * step,
            _t(current),
            _t(list(ready)),
            _t(list(unready)),
            _t(list(util)),
            config,
            lo,
            hi,
            missing_pods=_t(list(missing)),
            target_utilization=targets,
        )
        history.append((desired, reason, state))
        current = desired.tolist()
    return history


@pytest.mark.parametrize("kind", list(MIXED_CONFIGS))
def test_batch_matches_each_env_alone(kind: str) -> None:
    config = MIXED_CONFIGS[kind]
    envs = list(range(len(MIXED_BOUNDS)))
    batched = _run_mixed(config, envs)
    reasons_seen = {int(r) for _, reason, _ in batched for r in reason}
    assert len(reasons_seen) >= 6  # the batch really mixes branches
    for env in envs:
        alone = _run_mixed(config, [env])
        for (d_b, r_b, s_b), (d_a, r_a, s_a) in zip(batched, alone, strict=True):
            assert d_b[env] == d_a[0]
            assert r_b[env] == r_a[0]
            for name in ("rec_time", "rec_value", "up_time", "up_change"):
                assert torch.equal(getattr(s_b, name)[env], getattr(s_a, name)[0])


@pytest.mark.parametrize("kind", list(MIXED_CONFIGS))
def test_per_env_target_is_that_config(kind: str) -> None:
    # One batch over several targets gives what each target's own config gives, exactly.
    config = MIXED_CONFIGS[kind]
    targets = [0.3, 0.45, 0.5, 0.7, 0.99, 1.5]
    n = len(targets)
    gen = torch.Generator().manual_seed(1)
    state = HPAState.init(n, "cpu", config)
    alone = [HPAState.init(1, "cpu", replace(config, target_utilization=t)) for t in targets]
    current = torch.full((n,), 5.0, dtype=torch.float64)
    for step in range(30):
        util = torch.rand(n, generator=gen, dtype=torch.float64) * 2
        missing = torch.randint(0, 2, (n,), generator=gen).double()
        args = (current, current, torch.zeros(n, dtype=torch.float64), util)
        desired, _, state = hpa_step(
            state, 15.0 * step, *args, config, missing_pods=missing, target_utilization=_t(targets)
        )
        for i, t in enumerate(targets):
            own = replace(config, target_utilization=t)
            d_i, _, alone[i] = hpa_step(
                alone[i], 15.0 * step, *(a[i : i + 1] for a in args), own,
                missing_pods=missing[i : i + 1],
            )  # fmt: skip
            assert d_i.item() == desired[i].item()
        current = desired


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
    config = HPAConfig.with_default_behavior(target_utilization=0.5)
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
    # Without behavior the controller stores no scale events at all.
    legacy = HPAConfig(target_utilization=0.5)
    desired, _, new = hpa_step(HPAState.init(2, "cpu", legacy), 0.0, *inputs, legacy)
    assert desired.tolist() == [8, 8]
    assert new.rec_value[:, :2].tolist() == [[4, 8], [8, 2]]
    assert (new.up_time == -math.inf).all() and (new.down_time == -math.inf).all()


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="whole percent"):
        HPAConfig(target_utilization=0.705)
    with pytest.raises(ValueError, match="kind"):
        HPAConfig(behavior=True, scale_up_policies=(("Replicas", 4, 15.0),))
    with pytest.raises(ValueError, match="select"):
        HPAConfig(behavior=True, scale_down_select="Maximum")
    with pytest.raises(ValueError, match="max_replicas"):
        HPAConfig(min_replicas=5, max_replicas=3)
    # A behavior field on an HPA without behavior would be ignored: refused instead.
    with pytest.raises(ValueError, match=r"scale_up_policies only apply .* behavior=True"):
        HPAConfig(scale_up_policies=(("Pods", 1, 15.0),))
    with pytest.raises(ValueError, match="scale_up_tolerance"):
        HPAConfig(scale_up_tolerance=0.0)
    assert HPAConfig().behavior is False
    assert HPAConfig.with_default_behavior().behavior is True
    assert HPAConfig.with_default_behavior().scale_up_policies == (
        ("Pods", 4, 15.0),
        ("Percent", 100, 15.0),
    )


def test_neutral_module() -> None:
    # The fallback rule must be importable without the simulator (issue #9).
    import subprocess
    import sys

    code = "import qscale.hpa, sys; sys.exit(any(m.startswith('qscale.sim') for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("behavior", [False, True])
def test_cuda_matches_cpu(behavior: bool) -> None:
    config = HPAConfig(target_utilization=0.6, behavior=behavior)
    gen = torch.Generator().manual_seed(0)
    n = 512
    states = {d: HPAState.init(n, d, config) for d in ("cpu", "cuda")}
    current = torch.randint(1, 50, (n,), generator=gen).double()
    targets = torch.randint(10, 150, (n,), generator=gen).double() / 100
    for step in range(30):
        util = torch.rand(n, generator=gen).double() * 2
        unready = torch.randint(0, 3, (n,), generator=gen).double()
        missing = torch.randint(0, 3, (n,), generator=gen).double()
        outs = {}
        for dev, st_ in states.items():
            c = current.to(dev)
            outs[dev] = hpa_step(
                st_, 15.0 * step, c, c, unready.to(dev), util.to(dev), config,
                missing_pods=missing.to(dev), target_utilization=targets.to(dev),
            )  # fmt: skip
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

    def __init__(self, config: HPAConfig, target_pct: int | None = None) -> None:
        self.c = config
        self.target = config.target_percent if target_pct is None else target_pct
        self.recs: list[list[float]] | None = None  # [value, time]
        self.up: list[list[float]] = []  # [change, time, outdated]
        self.down: list[list[float]] = []

    def _within(self, ratio: float) -> bool:
        return (1.0 - self.c.down_tolerance) <= ratio <= (1.0 + self.c.up_tolerance)

    def replicas(self, cur: int, ready: int, unready: int, missing: int, usage: int) -> int:
        """GetResourceReplicas; ``usage`` is the ready pods' summed milli-CPU."""
        target = self.target
        ratio = float(usage * 100 // (ready * 1000)) / float(target)
        scale_up_with_unready = unready > 0 and ratio > 1.0
        if not scale_up_with_unready and missing == 0:
            return cur if self._within(ratio) else math.ceil(ratio * float(ready))
        total, n = usage, ready
        if missing > 0 and ratio < 1.0:
            total += missing * (1000 * max(100, target) // 100)  # requests * fallback / 100
            n += missing
        elif missing > 0 and ratio > 1.0:
            n += missing
        if scale_up_with_unready:
            n += unready
        new_ratio = float(total * 100 // (n * 1000)) / float(target)
        if self._within(new_ratio) or (ratio < 1.0 < new_ratio) or (ratio > 1.0 > new_ratio):
            return cur
        new = math.ceil(new_ratio * float(n))
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
        if not self.c.behavior:
            return  # storeScaleEvent: "we should not store any event as they will not be used"
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

    def _record(self, old: int | None, raw: int, now: float) -> None:
        assert self.recs is not None
        if old is None:
            self.recs.append([raw, now])
        else:
            self.recs[old] = [raw, now]

    def _normalize_legacy(self, now, cur, raw, lo, hi) -> tuple[int, HPAReason]:
        # stabilizeRecommendation: the highest proposal of the window (an entry exactly one
        # window old has aged out, as it always has in the real controller).
        assert self.recs is not None
        cutoff = now - self.c.scale_down_stabilization_s
        stab, old = raw, None
        for i, (value, t) in enumerate(self.recs):
            if t < cutoff:
                old = i
            elif t > cutoff and value > stab:
                stab = value
        self._record(old, raw, now)
        # convertDesiredReplicasWithRules
        limit = int(max(2.0 * float(cur), 4.0))
        allowed, why = (limit, R.ScaleUpLimit) if hi > limit else (hi, R.TooManyReplicas)
        if stab < lo:
            return lo, R.TooFewReplicas
        if stab > allowed:
            return allowed, why
        return stab, (R.ScaleDownStabilized if stab != raw else R.DesiredWithinRange)

    def _normalize_behavior(self, now, cur, raw, lo, hi) -> tuple[int, HPAReason]:
        # stabilizeRecommendationWithBehaviors
        assert self.recs is not None
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
        self._record(old, raw, now)
        # convertDesiredReplicasWithBehaviorRate
        if stab > cur:
            limit = max(self._limit(cur, now, up=True), cur)
            allowed, why = (limit, R.ScaleUpLimit) if hi > limit else (hi, R.TooManyReplicas)
            if stab > allowed:
                return allowed, why
        elif stab < cur:
            limit = min(self._limit(cur, now, up=False), cur)
            allowed, why = (limit, R.ScaleDownLimit) if lo < limit else (lo, R.TooFewReplicas)
            if stab < allowed:
                return allowed, why
        if stab != raw:
            return stab, (R.ScaleUpStabilized if raw >= cur else R.ScaleDownStabilized)
        return stab, R.DesiredWithinRange

    def reconcile(self, now, cur, ready, unready, missing, usage, lo, hi) -> tuple[int, HPAReason]:
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
            raw = self.replicas(cur, ready, unready, missing, usage)
            normalize = self._normalize_behavior if self.c.behavior else self._normalize_legacy
            desired, reason = normalize(now, cur, raw, lo, hi)
        if desired != cur:
            self._store(now, cur, desired)
        return int(desired), reason


_policy = st.tuples(
    st.sampled_from(["Pods", "Percent"]),
    st.integers(1, 150),
    st.sampled_from([10.0, 15.0, 30.0, 60.0, 120.0]),
)
_behavior_configs = st.builds(
    HPAConfig,
    behavior=st.just(True),
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
_legacy_configs = st.builds(
    HPAConfig,
    target_utilization=st.sampled_from([0.3, 0.5, 0.7, 0.8, 1.0]),
    tolerance=st.sampled_from([0.0, 0.05, 0.1]),
    sync_period_s=st.sampled_from([5.0, 15.0]),
    scale_down_stabilization_s=st.sampled_from([0.0, 30.0, 60.0, 300.0]),
)
_configs = _legacy_configs | _behavior_configs


@st.composite
def _episodes(draw: st.DrawFn, within_bounds: bool):
    config = draw(_configs)
    n_envs = draw(st.integers(1, 4))
    bounds, targets = [], []
    for _ in range(n_envs):
        lo = draw(st.integers(0, 4))
        bounds.append((lo, draw(st.integers(max(lo, 1), 40))))
        targets.append(draw(st.none() | st.integers(1, 300)))
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
            missing = draw(st.sampled_from([0, 0, 0, 1, 2]))
            load = draw(st.integers(0, 3000))  # per-ready-pod milli-CPU of a 1000m request
            per_env.append((manual, ready_frac, unready, missing, load))
        steps.append((gap, per_env))
    start = [
        draw(st.integers(lo, hi) if within_bounds else st.integers(0, 45)) for lo, hi in bounds
    ]
    return config, bounds, targets, start, steps


def _play(config, bounds, targets, start, steps, reference: bool):
    n = len(bounds)
    lo = _t([b[0] for b in bounds])
    hi = _t([b[1] for b in bounds])
    per_env_target = _t([(config.target_percent if t is None else t) / 100 for t in targets])
    state = HPAState.init(n, "cpu", config)
    refs = [GoHPA(config, t) for t in targets]
    current = list(start)
    now = 0.0
    for gap, per_env in steps:
        now += gap * config.sync_period_s
        ready, unready, missing, util, usage = [], [], [], [], []
        for i, (manual, ready_frac, n_unready, n_missing, load) in enumerate(per_env):
            if manual is not None:
                current[i] = manual
            r = math.floor(current[i] * ready_frac)
            ready.append(r)
            unready.append(n_unready)
            missing.append(n_missing)
            usage.append(load * r)
            util.append(load * r / (r * 1000) if r else NAN)
        desired, reason, state = hpa_step(
            state, now, _t(current), _t(ready), _t(unready), _t(util), config, lo, hi,
            missing_pods=_t(missing), target_utilization=per_env_target,
        )  # fmt: skip
        for i in range(n):
            in_bounds = bounds[i][0] <= current[i] <= bounds[i][1]
            d = desired[i].item()
            assert d == math.floor(d)
            if in_bounds:
                assert bounds[i][0] <= d <= bounds[i][1]
            if reference:
                want = refs[i].reconcile(
                    now, current[i], ready[i], unready[i], missing[i], usage[i], *bounds[i]
                )
                assert (int(d), HPAReason(int(reason[i]))) == want
        current = [int(x) for x in desired.tolist()]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_episodes(within_bounds=True))
def test_property_output_within_min_max(episode) -> None:
    _play(*episode, reference=False)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_episodes(within_bounds=False))
def test_matches_literal_go_port(episode) -> None:
    _play(*episode, reference=True)
