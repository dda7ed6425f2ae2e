"""The Kubernetes HorizontalPodAutoscaler (``autoscaling/v2``) on a CPU-utilization target, batched.

A pure-torch re-implementation of the decision the kube-controller-manager's HPA controller
(``pkg/controller/podautoscaler``) takes in one reconcile of one HPA, for ``B`` independent HPAs
at once, plus :func:`group_pods`, the controller's per-pod sorting in plain Python. It is the
baseline the learned policy is compared against and the rule the operator falls back on, so it
lives outside :mod:`qscale.simulator` (it imports neither the simulator nor a Kubernetes client)
and follows the Go code rather than the documentation's simplified formula::

    reconcileAutoscaler                       (horizontal.go)
    ├── recordInitialRecommendation           first sight: remember the current size
    ├── current == 0 and min != 0             -> scaling disabled, nothing happens
    ├── current > max / current < min         -> jump to max / min, no metrics needed
    └── otherwise
        ├── GetResourceReplicas               (replica_calculator.go) the metric's proposal
        │   └── groupPods                     ready / unready / missing / ignored pods
        ├── spec.behavior == nil: normalizeDesiredReplicas            (HPAConfig.behavior False)
        │   ├── stabilizeRecommendation       highest proposal of the downscale window
        │   └── convertDesiredReplicasWithRules   min, then max(2 x current, 4) and max
        └── spec.behavior set: normalizeDesiredReplicasWithBehaviors  (HPAConfig.behavior True)
            ├── stabilizeRecommendationWithBehaviors   windows over past proposals
            └── convertDesiredReplicasWithBehaviorRate scale-up/-down rate limits, min/max
    storeScaleEvent                           remember the change (behavior path only)

**Which HPA is the default.** An HPA without ``spec.behavior`` - what ``kubectl autoscale`` and
most manifests create - takes ``normalizeDesiredReplicas``: a scale-up is capped at
``max(2 x current, 4)`` per sync with no memory of earlier scale-ups, and the highest proposal
of the last ``--horizontal-pod-autoscaler-downscale-stabilization`` (5 min) holds the count up,
in both directions. That is :class:`HPAConfig`'s default (``behavior=False``). An HPA with a
``behavior`` field, even an empty one (the API server then fills in +4 pods or +100 % per
15 s up, -100 % per 15 s down), takes the policy path: :meth:`HPAConfig.with_default_behavior`.
The two differ within seconds of a step: from 2 pods, three syncs take the legacy path at
most to 2 -> 4 -> 8 -> 16, the behavior path to 2 -> 6 -> 12 -> 24.

The controller keeps per-HPA lists in memory (``recommendations``, ``scaleUpEvents``,
``scaleDownEvents``); :class:`HPAState` holds them as fixed-size ``[B, slots]`` tensors with
``-inf`` timestamps marking unused slots, and reproduces the Go slot-reuse rule (overwrite the
last entry that has aged out, else append), so the same entries are remembered and forgotten.
In both paths a proposal counts while it is younger than its window (see
:func:`_stabilize_legacy` for why that is also the legacy path's ``!Before(cutoff)`` in practice).

Pods. :func:`hpa_step` takes counts per env, as ``groupPods`` leaves them:

* ``ready_pods``: pods whose sample is counted; ``utilization`` is their summed usage over
  their summed requests, a fraction (``0.85`` = 85 %; above 1 when pods use more than their
  request).
* ``unready_pods``: pods set aside - ``Pending``, or by the CPU start-up rules below. On a
  scale-up they are counted at 0 % and the ratio redone over all pods; a ratio that then
  changes direction, or a count that moves against it, keeps the current size.
* ``missing_pods``: running pods with no sample yet (metrics-server needs two scrapes of a new
  pod). On a scale-down they count at ``max(100 %, target)``, on a scale-up at 0 %, and the
  result is ``ceil(new ratio x len(metrics))``, again unless the direction changes.

All pods of a workload have the same CPU request (true of a Deployment's pods, and of the
simulator's), which is what lets counts replace the controller's per-pod sums. The start-up
rules - ``--horizontal-pod-autoscaler-cpu-initialization-period`` (5 min) and
``--horizontal-pod-autoscaler-initial-readiness-delay`` (30 s) - decide from each pod's start
time, Ready condition and sample timestamp whether it is unready; :func:`group_pods` applies
them exactly as ``groupPods`` does, for callers that have the pods (the operator, the
conformance suite), and the simulator mirrors it with counts.

Checked against the real controller: :mod:`qscale.dev.hpa_conformance` (``tests/conformance/``,
``benchmarks/bench_hpa_conformance.py``) plays nine scenarios on a local kube-controller-manager
1.37 - steps up and down, a burst while pods start, flapping within the tolerance, ``behavior``
scale-up policies with ``selectPolicy`` Max and Min, the min/max bounds, pods burning CPU while
they start (Ready inside and after the initialization period) - and drives this module with what
the controller observed at each sync: the replica counts were identical at every one of 298
syncs, and with either start-up parameter at 0 they are not (BENCHMARKS.md has the table and
which paths each scenario covers).

What is not modelled: metric types other than one ``Resource`` CPU ``Utilization`` target (no
``AverageValue``, ``ContainerResource``, Pods/Object/External metrics, or several metrics at
once); pod-level resource requests; metric samples for pods the controller's pod list does not
hold (the controller counts them in ``len(metrics)`` but not in the ratio; metrics-server only
serves pods that exist, so they do not arise there); and the missing-pod fallback assumes
``request x max(100, target) / 100`` is a whole number of milli-CPU, always true for targets up
to 100 %. The controller errors out, and does not scale, when no pod has a counted sample; here
that is an env with no ready pods (or a non-finite utilization): the output is the current
count with :attr:`HPAReason.NoMetrics`. Everything happens at the instant ``now_s``; Go reads
the clock a few microseconds apart within one reconcile, which changes nothing unless a
recommendation is within microseconds of a window's edge.

Arithmetic. The controller computes utilization in integer percent - ``int32(usage*100 /
request)`` in ``GetResourceUtilizationRatio`` - and the target is an ``int32`` percent, so
``usageRatio = float64(utilPct) / float64(targetPct)``. This module does the same in float64:
the caller's fraction is turned into a percent and truncated (with a slack of a few ulps of the
caller's dtype, so that ``float32(0.29)`` counts as 29 %, not 28 %), the target is an exact
integer percent, and every later step (``ceil(ratio * pods)``, the tolerance test, the Percent
policies' ``ceil``/truncation, ``max(2 x current, 4)``) is the same IEEE float64 operation Go
performs, so results are the Go results bit for bit - including Go's own rare float artifacts,
e.g. 7 % against a 3 % target on 27 pods gives ``ceil(63.00000000000001) = 64``. A 70 % load
against a 70 % target is 70/70 = 1.0 exactly, never 11 replicas out of 10.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from enum import IntEnum
from fractions import Fraction

import torch

ScalingPolicy = tuple[str, int, float]
"""``(kind, value, period_s)``: kind ``"Pods"`` or ``"Percent"``, as ``HPAScalingPolicy``."""

DOWNSCALE_STABILIZATION_S = 300.0
"""``--horizontal-pod-autoscaler-downscale-stabilization``'s default."""
CPU_INITIALIZATION_PERIOD_S = 300.0
"""``--horizontal-pod-autoscaler-cpu-initialization-period``'s default."""
INITIAL_READINESS_DELAY_S = 30.0
"""``--horizontal-pod-autoscaler-initial-readiness-delay``'s default."""
SCALE_UP_LIMIT_FACTOR = 2.0
"""``scaleUpLimitFactor``: without ``behavior``, a sync can at most double the count ..."""
SCALE_UP_LIMIT_MINIMUM = 4.0
"""... or go to ``scaleUpLimitMinimum`` pods, whichever is more."""

_KINDS = ("Pods", "Percent")
_SELECTS = ("Max", "Min", "Disabled")
_F64 = torch.float64
_EMPTY = -math.inf
_INT32_MIN = float(-(2**31))
_INT32_MAX = float(2**31 - 1)


class HPAReason(IntEnum):
    """Why the HPA chose its output, named after the controller's condition reasons.

    One code per env: a rate or bound limit that clipped the value wins over a stabilization
    that changed it, which wins over ``DesiredWithinRange``.
    """

    DesiredWithinRange = 0
    """The metric's proposal passed unchanged (this includes "within tolerance")."""
    ScaleUpStabilized = 1
    """The scale-up stabilization window held the count below the proposal (behavior only)."""
    ScaleDownStabilized = 2
    """A stabilization window held the count above the proposal. Without ``behavior`` this is
    the highest recent proposal, which can also lift a scale-up above its own proposal; the
    controller names that ``ScaleDownStabilized`` too."""
    ScaleUpLimit = 3
    """The scale-up rate capped the increase: ``max(2 x current, 4)`` without ``behavior``,
    the scale-up policies (or ``selectPolicy: Disabled``) with it."""
    ScaleDownLimit = 4
    """A scale-down policy (or ``selectPolicy: Disabled``) capped the decrease."""
    TooManyReplicas = 5
    """The proposal was above ``maxReplicas``."""
    TooFewReplicas = 6
    """The proposal was below ``minReplicas``."""
    AboveMax = 7
    """The current count was above ``maxReplicas``: jump to it without a metric."""
    BelowMin = 8
    """The current count was below ``minReplicas``: jump to it without a metric."""
    NoMetrics = 9
    """No ready pod to read a metric from; the controller errors out and keeps the count."""
    AutoscalingDisabled = 10
    """The target was scaled to 0 by hand while ``minReplicas > 0``; the HPA stands aside."""


def _check_policies(name: str, policies: tuple[ScalingPolicy, ...], select: str) -> None:
    if select not in _SELECTS:
        raise ValueError(f"{name}_select must be one of {_SELECTS}, got {select!r}")
    if not policies:
        # validateScalingRules: "must specify at least one Policy".
        raise ValueError(f"{name}_policies needs at least one policy")
    for policy in policies:
        if len(policy) != 3:
            raise ValueError(f"{name} policy {policy!r} is not (kind, value, period_s)")
        kind, value, period = policy
        if kind not in _KINDS:
            raise ValueError(f"{name} policy kind must be one of {_KINDS}, got {kind!r}")
        if value <= 0 or value != int(value):
            raise ValueError(f"{name} policy value must be a positive whole number, got {value}")
        if period <= 0:
            raise ValueError(f"{name} policy period must be > 0 s, got {period}")


_BEHAVIOR_ONLY = (
    "scale_up_tolerance",
    "scale_down_tolerance",
    "scale_up_stabilization_s",
    "scale_up_policies",
    "scale_up_select",
    "scale_down_policies",
    "scale_down_select",
)


@dataclass(frozen=True)
class HPAConfig:
    """One HPA's spec plus the controller flags that matter, shared by every env of a batch.

    The default is an HPA without ``spec.behavior`` (what ``kubectl autoscale`` creates);
    :meth:`with_default_behavior` is one whose ``behavior`` the API server filled in.
    ``target_utilization``, ``min_replicas`` and ``max_replicas`` can be overridden per env in
    :func:`hpa_step`.
    """

    target_utilization: float = 0.7
    """``averageUtilization`` as a fraction; must be a whole percent, as the API's int32 is.
    There is no universal default to copy: the API server fills in 80 % only for an HPA that
    lists no metric at all, and HPAs in practice always set it. 0.7 is this project's choice."""
    tolerance: float = 0.1
    """``--horizontal-pod-autoscaler-tolerance``: no scaling while the ratio is within it."""
    sync_period_s: float = 15.0
    """``--horizontal-pod-autoscaler-sync-period``: call :func:`hpa_step` this often. Only sizes
    the history buffers; calling more often can overflow them (the oldest entry is dropped)."""
    scale_down_stabilization_s: float = DOWNSCALE_STABILIZATION_S
    """Without ``behavior``: ``--horizontal-pod-autoscaler-downscale-stabilization``. With it:
    ``behavior.scaleDown.stabilizationWindowSeconds`` (which defaults to that flag)."""
    min_replicas: int = 1
    """``minReplicas`` (the API's default is 1; 0 needs the ``HPAScaleToZero`` gate)."""
    max_replicas: int = 100
    """``maxReplicas``."""
    behavior: bool = False
    """Whether the HPA has a ``spec.behavior``. ``False`` takes ``normalizeDesiredReplicas``
    and ignores everything below; ``True`` takes the policy path with the fields below."""
    scale_up_tolerance: float | None = None
    """``behavior.scaleUp.tolerance`` (``HPAConfigurableTolerance``); ``None``: ``tolerance``."""
    scale_down_tolerance: float | None = None
    """``behavior.scaleDown.tolerance``; ``None``: ``tolerance``."""
    scale_up_stabilization_s: float = 0.0
    """``behavior.scaleUp.stabilizationWindowSeconds``."""
    scale_up_policies: tuple[ScalingPolicy, ...] = (("Pods", 4, 15.0), ("Percent", 100, 15.0))
    """``behavior.scaleUp.policies``; the default is the API's: +4 pods or +100 % per 15 s."""
    scale_up_select: str = "Max"
    """``behavior.scaleUp.selectPolicy``: ``Max``, ``Min`` or ``Disabled``."""
    scale_down_policies: tuple[ScalingPolicy, ...] = (("Percent", 100, 15.0),)
    """``behavior.scaleDown.policies``; the default is the API's: -100 % per 15 s."""
    scale_down_select: str = "Max"
    """``behavior.scaleDown.selectPolicy``: ``Max``, ``Min`` or ``Disabled``."""

    def __post_init__(self) -> None:
        pct = self.target_utilization * 100.0
        if not math.isfinite(pct) or round(pct) < 1 or abs(pct - round(pct)) > 1e-6 * max(1, pct):
            raise ValueError(
                "target_utilization must be a whole percent >= 1 % (the API's averageUtilization "
                f"is an int32 percent), got {self.target_utilization}"
            )
        for name in ("tolerance", "scale_up_tolerance", "scale_down_tolerance"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if not self.sync_period_s > 0:
            raise ValueError(f"sync_period_s must be > 0, got {self.sync_period_s}")
        for name in ("scale_down_stabilization_s", "scale_up_stabilization_s"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        _check_policies("scale_up", self.scale_up_policies, self.scale_up_select)
        _check_policies("scale_down", self.scale_down_policies, self.scale_down_select)
        if self.min_replicas < 0 or self.max_replicas < max(1, self.min_replicas):
            raise ValueError(
                f"need 0 <= min_replicas <= max_replicas, max_replicas >= 1; got "
                f"{self.min_replicas}, {self.max_replicas}"
            )
        if not self.behavior:
            # A behavior field on an HPA without behavior would be silently ignored: refuse it.
            defaults = {f.name: f.default for f in fields(HPAConfig)}
            changed = [n for n in _BEHAVIOR_ONLY if getattr(self, n) != defaults[n]]
            if changed:
                raise ValueError(
                    f"{', '.join(changed)} only apply to an HPA with behavior: pass behavior=True"
                )

    @classmethod
    def with_default_behavior(cls, **changes: object) -> HPAConfig:
        """An HPA with ``spec.behavior: {}``: the policy path with the API server's defaults
        (+4 pods or +100 % per 15 s up, no scale-up window, -100 % per 15 s down after the
        downscale window), plus ``changes``."""
        return cls(behavior=True, **changes)  # type: ignore[arg-type]

    @property
    def target_percent(self) -> int:
        """The target as the controller holds it: an integer percent."""
        return round(self.target_utilization * 100.0)

    @property
    def up_tolerance(self) -> float:
        """Scale-up tolerance in effect (``Tolerances.scaleUp``)."""
        return self.tolerance if self.scale_up_tolerance is None else self.scale_up_tolerance

    @property
    def down_tolerance(self) -> float:
        """Scale-down tolerance in effect (``Tolerances.scaleDown``)."""
        return self.tolerance if self.scale_down_tolerance is None else self.scale_down_tolerance

    @property
    def recommendation_slots(self) -> int:
        """History length for the stabilization windows.

        At a sync, the entries still inside the longest window are those of the last
        ``ceil(window / sync)`` syncs plus, during the first window, the initial recommendation
        recorded at the first sync next to that sync's own; one more slot takes the new entry.
        """
        window = self.scale_down_stabilization_s
        if self.behavior:
            window = max(window, self.scale_up_stabilization_s)
        return math.ceil(window / self.sync_period_s) + 2

    @property
    def scale_up_event_slots(self) -> int:
        """Scale-up events that can be younger than the longest scale-up period, plus one."""
        if not self.behavior:
            return 1  # storeScaleEvent keeps nothing without behavior
        return math.ceil(_longest_period(self.scale_up_policies) / self.sync_period_s) + 1

    @property
    def scale_down_event_slots(self) -> int:
        """Scale-down events that can be younger than the longest scale-down period, plus one."""
        if not self.behavior:
            return 1
        return math.ceil(_longest_period(self.scale_down_policies) / self.sync_period_s) + 1


def _longest_period(policies: tuple[ScalingPolicy, ...]) -> float:
    """``getLongestPolicyPeriod``."""
    return max((float(p[2]) for p in policies), default=0.0)


@dataclass(frozen=True)
class HPAState:
    """The controller's in-memory history for ``B`` HPAs (``[B, slots]`` float64 tensors).

    Unused slots have time ``-inf`` and value 0. Values are whole numbers stored as float64 so
    that all of :func:`hpa_step` runs in one dtype.
    """

    rec_time: torch.Tensor
    """``recommendations``: when each unstabilized proposal was made, seconds."""
    rec_value: torch.Tensor
    """``recommendations``: the metric's proposal (before stabilization and limits)."""
    up_time: torch.Tensor
    """``scaleUpEvents``: when each scale-up happened."""
    up_change: torch.Tensor
    """``scaleUpEvents``: replicas added (> 0)."""
    down_time: torch.Tensor
    """``scaleDownEvents``: when each scale-down happened."""
    down_change: torch.Tensor
    """``scaleDownEvents``: replicas removed (> 0)."""

    @classmethod
    def init(cls, batch: int, device: torch.device | str | None, config: HPAConfig) -> HPAState:
        """Empty history, as for an HPA the controller has not seen yet."""

        def empty(slots: int) -> tuple[torch.Tensor, torch.Tensor]:
            time = torch.full((batch, slots), _EMPTY, dtype=_F64, device=device)
            return time, torch.zeros((batch, slots), dtype=_F64, device=device)

        rec_time, rec_value = empty(config.recommendation_slots)
        up_time, up_change = empty(config.scale_up_event_slots)
        down_time, down_change = empty(config.scale_down_event_slots)
        return cls(rec_time, rec_value, up_time, up_change, down_time, down_change)

    @property
    def batch_size(self) -> int:
        """Number of HPAs ``B``."""
        return self.rec_time.shape[0]

    @property
    def device(self) -> torch.device:
        """Device the history lives on."""
        return self.rec_time.device

    def reset(self, mask: torch.Tensor) -> HPAState:
        """A new state whose envs where ``mask`` is true are forgotten, as on HPA deletion."""
        keep = ~mask.to(device=self.device, dtype=torch.bool)[:, None]

        def clear(time: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return torch.where(keep, time, _EMPTY), torch.where(keep, value, 0.0)

        return HPAState(
            *clear(self.rec_time, self.rec_value),
            *clear(self.up_time, self.up_change),
            *clear(self.down_time, self.down_change),
        )

    def to(self, device: torch.device | str) -> HPAState:
        """The same history on another device."""
        return HPAState(
            self.rec_time.to(device),
            self.rec_value.to(device),
            self.up_time.to(device),
            self.up_change.to(device),
            self.down_time.to(device),
            self.down_change.to(device),
        )


# --- groupPods ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pod:
    """What ``groupPods`` reads of one pod. Times are seconds on the caller's clock (the same
    one as ``now`` in :func:`group_pods`; the API's times have whole-second resolution)."""

    name: str
    phase: str = "Running"
    """``status.phase``: ``Pending``, ``Running``, ``Succeeded``, ``Failed`` or ``Unknown``."""
    start_time: float | None = None
    """``status.startTime`` (``None``: not set yet)."""
    ready: str | None = None
    """``status`` of the ``Ready`` condition: ``"True"``, ``"False"``, ``"Unknown"``; ``None``
    when the pod has no ``Ready`` condition."""
    ready_transition: float | None = None
    """``lastTransitionTime`` of the ``Ready`` condition."""
    deleting: bool = False
    """``metadata.deletionTimestamp`` is set."""

    @classmethod
    def from_api(cls, obj: Mapping) -> Pod:
        """From a ``v1.Pod`` as the API serves it (a dict decoded from JSON)."""
        status = obj.get("status") or {}
        cond = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
        return cls(
            name=obj["metadata"]["name"],
            phase=status.get("phase") or "Pending",
            start_time=parse_time(status.get("startTime")),
            ready=None if cond is None else cond.get("status"),
            ready_transition=None if cond is None else parse_time(cond.get("lastTransitionTime")),
            deleting=obj["metadata"].get("deletionTimestamp") is not None,
        )


@dataclass(frozen=True)
class PodMetric:
    """One pod's sample in the resource metrics API (``metrics.k8s.io/v1beta1`` PodMetrics)."""

    timestamp: float
    """``timestamp``: the end of the sample's window, seconds."""
    window_s: float
    """``window``: the length of the interval the usage was averaged over."""
    cpu_milli: int = 0
    """The containers' summed CPU usage in milli-CPU, each rounded up as Go's
    ``Quantity.MilliValue`` does."""

    @classmethod
    def from_api(cls, obj: Mapping) -> PodMetric | None:
        """From one item of a ``PodMetricsList``; ``None`` where the controller finds no CPU
        sample (no containers, or a container without ``cpu``: ``getPodMetrics``)."""
        containers = obj.get("containers") or []
        if not containers or any("cpu" not in (c.get("usage") or {}) for c in containers):
            return None
        return cls(
            timestamp=parse_time(obj["timestamp"]),  # type: ignore[arg-type]
            window_s=parse_duration(obj["window"]),
            cpu_milli=sum(parse_milli(c["usage"]["cpu"]) for c in containers),
        )


@dataclass(frozen=True)
class PodGroups:
    """``groupPods``' verdict, by pod name."""

    ready: frozenset[str]
    """Counted: the sample stays in the ratio (``readyPodCount``)."""
    unready: frozenset[str]
    """Set aside: ``Pending``, or unready by the CPU start-up rules (``unreadyPods``)."""
    missing: frozenset[str]
    """Running without a sample (``missingPods``)."""
    ignored: frozenset[str]
    """Being deleted or ``Failed``: left out altogether (``ignoredPods``)."""

    @property
    def counts(self) -> tuple[int, int, int]:
        """``(ready, unready, missing)``, the counts :func:`hpa_step` takes."""
        return len(self.ready), len(self.unready), len(self.missing)


def group_pods(
    pods: Iterable[Pod],
    metrics: Mapping[str, PodMetric],
    now: float,
    cpu_initialization_period_s: float = CPU_INITIALIZATION_PERIOD_S,
    initial_readiness_delay_s: float = INITIAL_READINESS_DELAY_S,
) -> PodGroups:
    """``groupPods`` (replica_calculator.go) for a CPU metric, at time ``now``.

    During the first ``cpu_initialization_period_s`` after its start a pod counts only once it
    is Ready and its sample covers a whole window after the Ready transition (a sample that
    still averages start-up CPU is set aside). After that period only a pod that is not Ready
    and has never been Ready since ``initial_readiness_delay_s`` after its start is set aside.
    A ``Ready`` status of ``Unknown`` counts as ready, as in Go (which tests for ``False``).
    """
    ready: set[str] = set()
    unready: set[str] = set()
    missing: set[str] = set()
    ignored: set[str] = set()
    for pod in pods:
        if pod.deleting or pod.phase == "Failed":
            ignored.add(pod.name)
            continue
        if pod.phase == "Pending":
            unready.add(pod.name)
            continue
        metric = metrics.get(pod.name)
        if metric is None:
            missing.add(pod.name)
            continue
        if pod.ready is None or pod.start_time is None:
            is_unready = True
        elif pod.start_time + cpu_initialization_period_s > now:
            # Within the initialization period: unready, or its sample started before a whole
            # window had passed since the last Ready transition.
            is_unready = pod.ready == "False" or (
                metric.timestamp < _transition(pod) + metric.window_s
            )
        else:
            # Unready and never Ready since shortly after the start.
            is_unready = pod.ready == "False" and (
                pod.start_time + initial_readiness_delay_s > _transition(pod)
            )
        (unready if is_unready else ready).add(pod.name)
    return PodGroups(frozenset(ready), frozenset(unready), frozenset(missing), frozenset(ignored))


GO_ZERO_TIME = -62135596800.0
"""Go's zero ``time.Time`` (0001-01-01T00:00:00Z) in POSIX seconds: an unset time."""


def _transition(pod: Pod) -> float:
    return GO_ZERO_TIME if pod.ready_transition is None else pod.ready_transition


def parse_time(value: str | None) -> float | None:
    """An RFC 3339 timestamp of the API (``2026-12-01T07:16:18Z``) as POSIX seconds."""
    if value is None:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def parse_duration(value: str) -> float:
    """A Go ``time.Duration`` string as the metrics API writes it (``9.995s``, ``1m0s``,
    ``250ms``) in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
    total, number, i = 0.0, "", 0
    while i < len(value):
        ch = value[i]
        if ch.isdigit() or ch == ".":
            number += ch
            i += 1
            continue
        unit = next(u for u in ("ms", "us", "µs", "ns", "h", "m", "s") if value.startswith(u, i))
        total += float(number) * units[unit]
        number, i = "", i + len(unit)
    if number:
        raise ValueError(f"duration {value!r} has no unit")
    return total


_SUFFIXES = {
    "n": Fraction(1, 10**9), "u": Fraction(1, 10**6), "m": Fraction(1, 1000), "": Fraction(1),
    "k": Fraction(10**3), "M": Fraction(10**6), "G": Fraction(10**9), "T": Fraction(10**12),
    "Ki": Fraction(2**10), "Mi": Fraction(2**20), "Gi": Fraction(2**30), "Ti": Fraction(2**40),
}  # fmt: skip


def parse_milli(quantity: str) -> int:
    """A resource quantity (``49998146n``, ``250m``, ``1``) in milli-units, rounded up as
    Go's ``Quantity.MilliValue`` does (``50002065n`` is 51m, not 50m)."""
    number = quantity.rstrip("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
    suffix = quantity[len(number) :]
    if suffix not in _SUFFIXES:
        raise ValueError(f"unknown quantity suffix in {quantity!r}")
    return math.ceil(Fraction(number) * _SUFFIXES[suffix] * 1000)


# --- history buffers -------------------------------------------------------------------------


def _slot_to_write(time: torch.Tensor, reusable: torch.Tensor) -> torch.Tensor:
    """Where the Go code puts a new entry: over the *last* aged-out entry, else appended.

    Appending is the first unused slot. A full buffer without an aged-out entry (only possible
    when steps come faster than ``sync_period_s``) loses its oldest entry.
    """
    slots = time.shape[1]
    index = torch.arange(slots, device=time.device)
    used = time != _EMPTY
    last_reusable = torch.where(reusable & used, index, -1).amax(dim=1)
    first_free = torch.where(used, slots, index).amin(dim=1)
    oldest = torch.where(used, time, math.inf).argmin(dim=1)
    append = torch.where(first_free < slots, first_free, oldest)
    return torch.where(last_reusable >= 0, last_reusable, append)


def _write(
    time: torch.Tensor,
    value: torch.Tensor,
    reusable: torch.Tensor,
    now: torch.Tensor,
    new_value: torch.Tensor,
    where: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """New buffers with ``(now, new_value)`` stored in the envs selected by ``where``."""
    slot = _slot_to_write(time, reusable)
    index = torch.arange(time.shape[1], device=time.device)
    hit = (index[None, :] == slot[:, None]) & where[:, None]
    return torch.where(hit, now[:, None], time), torch.where(hit, new_value[:, None], value)


def _change_in_period(
    time: torch.Tensor, change: torch.Tensor, now: torch.Tensor, period_s: float
) -> torch.Tensor:
    """``getReplicasChangePerPeriod``: sum of events strictly after ``now - period``."""
    inside = time > (now - period_s)[:, None]
    return torch.where(inside, change, 0.0).sum(dim=1)


def _store_scale_event(
    state: HPAState,
    config: HPAConfig,
    now: torch.Tensor,
    current: torch.Tensor,
    desired: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``storeScaleEvent`` + ``markScaleEventsOutdated`` for the envs that rescaled.

    An event is outdated (reusable) once it is older than the longest policy period of its own
    direction, even if the other direction's longer period would still have counted it - the
    controller loses it the same way.
    """
    up = desired > current
    down = desired < current
    up_cutoff = now - _longest_period(config.scale_up_policies)
    down_cutoff = now - _longest_period(config.scale_down_policies)
    up_time, up_change = _write(
        state.up_time,
        state.up_change,
        state.up_time < up_cutoff[:, None],
        now,
        desired - current,
        up,
    )
    down_time, down_change = _write(
        state.down_time,
        state.down_change,
        state.down_time < down_cutoff[:, None],
        now,
        current - desired,
        down,
    )
    return up_time, up_change, down_time, down_change


# --- replica calculator ----------------------------------------------------------------------


def _truncate_percent(percent: torch.Tensor, source_dtype: torch.dtype) -> torch.Tensor:
    """``int32(...)`` of a non-negative percent, forgiving the caller's rounding error.

    The controller truncates an exact integer quotient; our percent comes from a float the
    caller computed, so a value a few ulps (of the caller's dtype) below an integer is that
    integer, e.g. ``float32(0.29) * 100 = 28.9999992`` is 29 %.
    """
    eps = torch.finfo(source_dtype if source_dtype.is_floating_point else _F64).eps
    return torch.floor(percent + percent.abs() * (8.0 * eps) + 1e-9)


def _resource_replicas(
    current: torch.Tensor,
    ready: torch.Tensor,
    unready: torch.Tensor,
    missing: torch.Tensor,
    utilization: torch.Tensor,
    target: torch.Tensor,
    source_dtype: torch.dtype,
    config: HPAConfig,
) -> torch.Tensor:
    """``ReplicaCalculator.GetResourceReplicas`` in float64, from counts (equal requests).

    ``target`` is the integer percent per env. Pod sums become counts: a pod's request cancels
    out of every ratio, so the re-averaged percent is ``(u% x ready + fill% x missing) / n``
    over the ``n`` pods that end up in ``metrics``.
    """
    low = 1.0 - config.down_tolerance  # Tolerances.isWithin
    high = 1.0 + config.up_tolerance
    raw_percent = utilization * 100.0

    # GetResourceUtilizationRatio over the ready pods.
    ratio = _truncate_percent(raw_percent, source_dtype) / target
    within = (low <= ratio) & (ratio <= high)
    plain = torch.where(within, current, torch.ceil(ratio * ready))

    scale_up_with_unready = (unready > 0) & (ratio > 1.0)
    has_missing = missing > 0
    down = ratio < 1.0
    up = ratio > 1.0

    # Missing pods at max(100 %, target) on a scale-down, 0 on a scale-up; at a ratio of
    # exactly 1 neither branch fills them in, so they stay out of len(metrics).
    missing_in = torch.where(down | up, missing, 0.0)
    fill = torch.where(down, missing * torch.clamp_min(target, 100.0), 0.0)
    # Unready pods at 0 on a scale-up with unready pods.
    unready_in = torch.where(scale_up_with_unready, unready, 0.0)
    counted = ready + missing_in + unready_in
    new_percent = _truncate_percent(
        (raw_percent * ready + fill) / counted.clamp_min(1.0), source_dtype
    )
    new_ratio = new_percent / target
    flips = (down & (new_ratio > 1.0)) | (up & (new_ratio < 1.0))
    keep = (low <= new_ratio) & (new_ratio <= high) | flips
    new_replicas = torch.ceil(new_ratio * counted)
    against = ((new_ratio < 1.0) & (new_replicas > current)) | (
        (new_ratio > 1.0) & (new_replicas < current)
    )
    rebalanced = torch.where(keep | against, current, new_replicas)

    return torch.where(scale_up_with_unready | has_missing, rebalanced, plain)


# --- without behavior: normalizeDesiredReplicas -----------------------------------------------


def _stabilize_legacy(
    rec_time: torch.Tensor,
    rec_value: torch.Tensor,
    now: torch.Tensor,
    proposal: torch.Tensor,
    record: torch.Tensor,
    config: HPAConfig,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``stabilizeRecommendation``: the highest proposal of the downscale window.

    Unlike the behavior path this is not pulled toward the current count: a scale-up too is
    lifted to the highest recent proposal, so a step seen once keeps pulling the count up,
    doubling per sync, until it is reached.

    The window's edge: Go keeps an entry unless it is ``Before(now - window)``, but it reads
    the clock anew at every step, so the initial recommendation (recorded at the start of the
    first sync) is already older than a zero window's cutoff, and since each sync comes some
    milliseconds later than the period (the HPA is requeued when its reconcile ends), an entry
    one window's worth of periods old has always aged out too. With one instant per reconcile,
    that is an entry counting only while it is strictly younger than the window.
    """
    cutoff = (now - config.scale_down_stabilization_s)[:, None]
    inside = rec_time > cutoff
    stabilized = torch.maximum(proposal, torch.where(inside, rec_value, -math.inf).amax(dim=1))
    rec_time, rec_value = _write(rec_time, rec_value, rec_time < cutoff, now, proposal, record)
    return stabilized, rec_time, rec_value


def _convert_with_rules(
    current: torch.Tensor,
    desired: torch.Tensor,
    min_replicas: torch.Tensor,
    max_replicas: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``convertDesiredReplicasWithRules``: min first, then ``max(2 x current, 4)`` or max."""
    scale_up_limit = torch.clamp_min(SCALE_UP_LIMIT_FACTOR * current, SCALE_UP_LIMIT_MINIMUM)
    rate_caps = max_replicas > scale_up_limit
    max_allowed = torch.where(rate_caps, scale_up_limit, max_replicas)
    up_reason = torch.where(rate_caps, HPAReason.ScaleUpLimit, HPAReason.TooManyReplicas)
    too_few = desired < min_replicas
    too_many = ~too_few & (desired > max_allowed)
    limited = torch.where(too_few, min_replicas, torch.where(too_many, max_allowed, desired))
    reason = torch.where(
        too_few,
        HPAReason.TooFewReplicas,
        torch.where(too_many, up_reason, HPAReason.DesiredWithinRange),
    )
    return limited, reason


# --- behaviors -------------------------------------------------------------------------------


def _stabilize(
    rec_time: torch.Tensor,
    rec_value: torch.Tensor,
    now: torch.Tensor,
    current: torch.Tensor,
    proposal: torch.Tensor,
    record: torch.Tensor,
    config: HPAConfig,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``stabilizeRecommendationWithBehaviors``.

    The scale-up window bounds the result from below by the *lowest* proposal in it, the
    scale-down window from above by the *highest*, and the current count is pulled into that
    band - so a count only moves once every proposal in the window agrees. The raw proposal
    (not the stabilized one) is then remembered, as the controller does.
    """
    up_cutoff = (now - config.scale_up_stabilization_s)[:, None]
    down_cutoff = (now - config.scale_down_stabilization_s)[:, None]
    in_up = rec_time > up_cutoff
    in_down = rec_time > down_cutoff
    up_bound = torch.minimum(proposal, torch.where(in_up, rec_value, math.inf).amin(dim=1))
    down_bound = torch.maximum(proposal, torch.where(in_down, rec_value, -math.inf).amax(dim=1))
    stabilized = torch.where(current < up_bound, up_bound, current)
    stabilized = torch.where(stabilized > down_bound, down_bound, stabilized)

    aged_out = (rec_time < up_cutoff) & (rec_time < down_cutoff)
    rec_time, rec_value = _write(rec_time, rec_value, aged_out, now, proposal, record)
    return stabilized, rec_time, rec_value


def _period_start(state: HPAState, now: torch.Tensor, current: torch.Tensor, period_s: float):
    added = _change_in_period(state.up_time, state.up_change, now, period_s)
    deleted = _change_in_period(state.down_time, state.down_change, now, period_s)
    return current - added + deleted


def _scale_up_limit(
    state: HPAState, config: HPAConfig, now: torch.Tensor, current: torch.Tensor
) -> torch.Tensor:
    """``calculateScaleUpLimitWithScalingRules``: most replicas the policies allow now.

    Each policy measures from the count at the start of its period (current minus what was
    added plus what was removed within it); ``Max`` takes the most permissive policy.
    """
    if config.scale_up_select == "Disabled":
        return current
    take_max = config.scale_up_select == "Max"
    result = torch.full_like(current, _INT32_MIN if take_max else _INT32_MAX)
    for kind, value, period_s in config.scale_up_policies:
        start = _period_start(state, now, current, float(period_s))
        if kind == "Pods":
            proposed = start + float(value)
        else:
            # Rounded up so that a small Percent still adds a pod (Go's comment).
            proposed = torch.ceil(start * (1.0 + float(value) / 100.0))
        result = torch.maximum(result, proposed) if take_max else torch.minimum(result, proposed)
    return result


def _scale_down_limit(
    state: HPAState, config: HPAConfig, now: torch.Tensor, current: torch.Tensor
) -> torch.Tensor:
    """``calculateScaleDownLimitWithBehaviors``: fewest replicas the policies allow now.

    ``Max`` (most change) takes the lowest floor. Percent truncates the count that stays
    (Go's ``int32(float64)`` conversion), e.g. 10 % of 72 leaves 64.
    """
    if config.scale_down_select == "Disabled":
        return current
    take_max_change = config.scale_down_select == "Max"
    result = torch.full_like(current, _INT32_MAX if take_max_change else _INT32_MIN)
    for kind, value, period_s in config.scale_down_policies:
        start = _period_start(state, now, current, float(period_s))
        if kind == "Pods":
            proposed = start - float(value)
        else:
            proposed = torch.trunc(start * (1.0 - float(value) / 100.0))
        if take_max_change:
            result = torch.minimum(result, proposed)
        else:
            result = torch.maximum(result, proposed)
    return result


def _rate_limit(
    state: HPAState,
    config: HPAConfig,
    now: torch.Tensor,
    current: torch.Tensor,
    desired: torch.Tensor,
    min_replicas: torch.Tensor,
    max_replicas: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``convertDesiredReplicasWithBehaviorRate``: apply the policies, then min/max.

    Returns the limited count and the reason code of the clip (``DesiredWithinRange`` if none).
    A rate limit that has already been used up never pushes the count the other way: the
    scale-up cap is at least the current count and the scale-down floor at most it.
    """
    up_limit = torch.maximum(_scale_up_limit(state, config, now, current), current)
    rate_caps = max_replicas > up_limit
    max_allowed = torch.where(rate_caps, up_limit, max_replicas)
    up_reason = torch.where(rate_caps, HPAReason.ScaleUpLimit, HPAReason.TooManyReplicas)

    down_limit = torch.minimum(_scale_down_limit(state, config, now, current), current)
    rate_floors = min_replicas < down_limit
    min_allowed = torch.where(rate_floors, down_limit, min_replicas)
    down_reason = torch.where(rate_floors, HPAReason.ScaleDownLimit, HPAReason.TooFewReplicas)

    clip_up = (desired > current) & (desired > max_allowed)
    clip_down = (desired < current) & (desired < min_allowed)
    limited = torch.where(clip_up, max_allowed, torch.where(clip_down, min_allowed, desired))
    reason = torch.where(
        clip_up,
        up_reason,
        torch.where(clip_down, down_reason, HPAReason.DesiredWithinRange),
    )
    return limited, reason


# --- public API ------------------------------------------------------------------------------


def _per_env(x: torch.Tensor | float, batch: int, device: torch.device, name: str) -> torch.Tensor:
    t = torch.as_tensor(x, dtype=_F64, device=device)
    if t.dim() == 0:
        return t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"{name} must be a scalar or have shape ({batch},), got {tuple(t.shape)}")
    return t


def _output_dtype(current: torch.Tensor, utilization: torch.Tensor) -> torch.dtype:
    if current.is_floating_point():
        return current.dtype
    if utilization.is_floating_point():
        return utilization.dtype
    return torch.get_default_dtype()


def _target_percent(
    target_utilization: torch.Tensor | float | None,
    config: HPAConfig,
    batch: int,
    device: torch.device,
) -> torch.Tensor:
    """Per-env integer target percent: the override rounded to a whole percent (>= 1), else
    the config's."""
    if target_utilization is None:
        return torch.full((batch,), float(config.target_percent), dtype=_F64, device=device)
    pct = _per_env(target_utilization, batch, device, "target_utilization") * 100.0
    return torch.round(pct).clamp_min(1.0)


def resource_replicas(
    current_replicas: torch.Tensor,
    ready_pods: torch.Tensor,
    unready_pods: torch.Tensor,
    utilization: torch.Tensor,
    config: HPAConfig,
    *,
    missing_pods: torch.Tensor | None = None,
    target_utilization: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """The metric's own proposal, ``GetResourceReplicas``, before any stabilization or bound.

    ``utilization`` is the ready pods' mean CPU usage over request (a fraction, may exceed 1);
    ``target_utilization`` an optional per-env ``[B]`` (or scalar) override of
    ``config.target_utilization``, as a fraction, rounded to a whole percent.
    Envs without ready pods get ``current_replicas`` (the controller errors out there).
    Returns whole numbers in the floating dtype of the inputs.
    """
    batch = current_replicas.shape[0]
    device = current_replicas.device
    current = _per_env(current_replicas, batch, device, "current_replicas")
    ready = _per_env(ready_pods, batch, device, "ready_pods")
    unready = _per_env(unready_pods, batch, device, "unready_pods")
    missing = _per_env(0.0 if missing_pods is None else missing_pods, batch, device, "missing")
    util = _per_env(utilization, batch, device, "utilization")
    target = _target_percent(target_utilization, config, batch, device)
    has_metric = (ready > 0) & torch.isfinite(util)
    safe_util = torch.where(has_metric, util, 0.0)
    proposal = _resource_replicas(
        current, ready, unready, missing, safe_util, target, utilization.dtype, config
    )
    out = torch.where(has_metric, proposal, current)
    return out.to(_output_dtype(current_replicas, utilization))


def hpa_step(
    state: HPAState,
    now_s: torch.Tensor | float,
    current_replicas: torch.Tensor,
    ready_pods: torch.Tensor,
    unready_pods: torch.Tensor,
    utilization: torch.Tensor,
    config: HPAConfig,
    min_replicas: torch.Tensor | int | None = None,
    max_replicas: torch.Tensor | int | None = None,
    *,
    missing_pods: torch.Tensor | None = None,
    target_utilization: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, HPAState]:
    """One reconcile (``reconcileAutoscaler``) of ``B`` independent HPAs.

    Args:
        state: the controller's history for these HPAs (from :meth:`HPAState.init` or the
            previous call); not modified.
        now_s: the reconcile time in seconds, a scalar or ``[B]``; must not go backwards.
            Call once every ``config.sync_period_s``.
        current_replicas: ``[B]`` the scale target's ``spec.replicas``.
        ready_pods: ``[B]`` pods whose CPU sample is counted (:attr:`PodGroups.ready`).
        unready_pods: ``[B]`` pods set aside as unready: ``Pending`` or still starting by the
            CPU start-up rules (:attr:`PodGroups.unready`); 0 % on a scale-up.
        utilization: ``[B]`` the ready pods' summed CPU usage over summed request, a fraction.
        config: the HPA spec and controller flags.
        min_replicas, max_replicas: optional per-env (``[B]``) or scalar overrides of
            ``config.min_replicas`` / ``config.max_replicas``.
        missing_pods: optional ``[B]`` running pods without a sample yet
            (:attr:`PodGroups.missing`): ``max(100 %, target)`` on a scale-down, 0 % on a
            scale-up. Default: none.
        target_utilization: optional ``[B]`` (or scalar) override of
            ``config.target_utilization``, a fraction that may exceed 1 (as ``averageUtilization``
            may exceed 100); rounded to a whole percent, at least 1 %.

    Returns:
        ``(desired_replicas, reason, new_state)``: ``[B]`` whole numbers in the floating dtype
        of ``current_replicas`` (else of ``utilization``), ``[B]`` int64 :class:`HPAReason`
        codes, and the updated history. Everything is computed in float64 on the inputs'
        device with elementwise ops over the batch.
    """
    batch = current_replicas.shape[0]
    device = current_replicas.device
    if current_replicas.dim() != 1:
        raise ValueError(f"current_replicas must be [B], got {tuple(current_replicas.shape)}")
    if state.batch_size != batch:
        raise ValueError(f"state holds {state.batch_size} HPAs, inputs have {batch}")
    if state.device != device:
        raise ValueError(f"state is on {state.device}, inputs on {device}")

    now = _per_env(now_s, batch, device, "now_s")
    current = _per_env(current_replicas, batch, device, "current_replicas")
    ready = _per_env(ready_pods, batch, device, "ready_pods")
    unready = _per_env(unready_pods, batch, device, "unready_pods")
    missing = _per_env(0.0 if missing_pods is None else missing_pods, batch, device, "missing")
    util = _per_env(utilization, batch, device, "utilization")
    target = _target_percent(target_utilization, config, batch, device)
    lo = _per_env(
        config.min_replicas if min_replicas is None else min_replicas, batch, device, "min"
    )
    hi = _per_env(
        config.max_replicas if max_replicas is None else max_replicas, batch, device, "max"
    )

    # recordInitialRecommendation: an HPA seen for the first time remembers its current size,
    # which is why a fresh HPA cannot scale down before one stabilization window has passed.
    first_slot = torch.arange(state.rec_time.shape[1], device=device) == 0
    fresh = (state.rec_time == _EMPTY).all(dim=1)
    seed = fresh[:, None] & first_slot[None, :]
    rec_time = torch.where(seed, now[:, None], state.rec_time)
    rec_value = torch.where(seed, current[:, None], state.rec_value)

    # reconcileAutoscaler's branches.
    disabled = (current == 0) & (lo != 0)
    above = ~disabled & (current > hi)
    below = ~disabled & ~above & (current < lo)
    in_range = ~(disabled | above | below)
    has_metric = (ready > 0) & torch.isfinite(util)
    computed = in_range & has_metric
    no_metrics = in_range & ~has_metric

    safe_util = torch.where(has_metric, util, 0.0)
    proposal = _resource_replicas(
        current, ready, unready, missing, safe_util, target, utilization.dtype, config
    )
    proposal = torch.where(computed, proposal, current)

    if config.behavior:
        # normalizeDesiredReplicasWithBehaviors; the limits read the events before this step's.
        stabilized, rec_time, rec_value = _stabilize(
            rec_time, rec_value, now, current, proposal, computed, config
        )
        limited, limit_reason = _rate_limit(state, config, now, current, stabilized, lo, hi)
        stabilize_reason = torch.where(
            proposal >= current, HPAReason.ScaleUpStabilized, HPAReason.ScaleDownStabilized
        )
    else:
        # normalizeDesiredReplicas.
        stabilized, rec_time, rec_value = _stabilize_legacy(
            rec_time, rec_value, now, proposal, computed, config
        )
        limited, limit_reason = _convert_with_rules(current, stabilized, lo, hi)
        stabilize_reason = torch.full_like(limit_reason, HPAReason.ScaleDownStabilized)
    metric_reason = torch.where(
        limited != stabilized,
        limit_reason,
        torch.where(stabilized != proposal, stabilize_reason, HPAReason.DesiredWithinRange),
    )

    desired = torch.where(
        above, hi, torch.where(below, lo, torch.where(computed, limited, current))
    )
    reason = torch.where(
        disabled,
        HPAReason.AutoscalingDisabled,
        torch.where(
            above,
            HPAReason.AboveMax,
            torch.where(
                below,
                HPAReason.BelowMin,
                torch.where(no_metrics, HPAReason.NoMetrics, metric_reason),
            ),
        ),
    ).to(torch.int64)

    if config.behavior:
        # storeScaleEvent, for every rescale including the jumps into [min, max].
        up_time, up_change, down_time, down_change = _store_scale_event(
            state, config, now, current, desired
        )
    else:
        # storeScaleEvent returns at once for an HPA without behavior.
        up_time, up_change = state.up_time, state.up_change
        down_time, down_change = state.down_time, state.down_change
    new_state = HPAState(rec_time, rec_value, up_time, up_change, down_time, down_change)
    return desired.to(_output_dtype(current_replicas, utilization)), reason, new_state
