"""The discrete action set, applied before the shield.

Thirty-five actions (:data:`ACTIONS`) in eight kinds, all scale-free:

* **relative steps** (``kind`` ``"step"``: hold, -1, +1, x1.5, x2): move from the current count;
* **proportional targets** (``"target"``: ``busy_at_50/65/80``): size the Deployment so that
  the work it is doing now (:func:`qscale.features.busy_pods`, pods' worth of CPU limit in use)
  would run its pods at 50, 65 or 80 % of their CPU limit -- the HPA's formula, with the
  operating point chosen per decision;
* **peak targets** (``"peak"``: ``peak_at_65/80``): the same for the work the Deployment would
  do at the highest request rate of the last 15 minutes (busy pods x peak rate / rate now) --
  what an HPA with a long scale-down window holds, as one action;
* **CPU hold** (``"cpu_peak30"``: ``cpu_peak30_at_30/40/.../90``): size for the highest busy
  pods of the last 30 minutes (:func:`qscale.features.peak30_busy_pods`) at 30-90 % of the CPU
  limit -- the HPA's rule with its 30-minute scale-down stabilization, the reward-best HPA
  setting at every SLO priority (80 % at the default, lower targets as the priority rises);
* **rate targets** (``"rate"``: ``rate_at_70``; ``"rate_peak"``: ``rate_peak_at_60/70/80``):
  the KEDA rule -- ceil(request rate / (declared requests/s per pod x target)) -- at the rate
  now or at the highest rate of the last 15 minutes (a 15-minute scale-down hold);
  ``"rate_peak30"``: ``rate_peak30_at_30/40/.../90``, the same at the highest rate of the last
  30 minutes (KEDA's rule with a 30-minute cooldown, the reward-best rule setting at every SLO
  priority: 80 % at the default, 90 % at half, 10 points lower per doubling above it, 30 % at
  32). They need the per-pod capacity the policy declares
  (:attr:`qscale.features.FeatureInputs.capacity_rps`) and are unavailable without it
  (:func:`available`): the argmax and exploration skip them;
* **forecast floor** (``"rate_holt30"``: ``rate_holt30_at_30/40/.../90``): the same rule at the
  highest of the request rate's forecast :data:`qscale.features.FORECAST_REACH_S` ahead
  (:func:`qscale.features.rate_forecast`), the 30-minute peak and the rate now
  (:func:`qscale.features.forecast_rate`): the 30-minute rule that also scales up for the rise
  the last half hour's trend says is coming. It needs the declared capacity too.

So each rule of the evaluation's frontier family with a 15- or 30-minute hold is one action, and
training starts from the reward-best of them at each env's SLO priority (DQfD demonstrations,
:mod:`qscale.policy.train`): the policy departs from the rule only where its Q-values say it
pays.

The shield in :mod:`qscale.guardrails` then bounds whatever the action proposes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

DECISION_INTERVAL_S = 15.0
"""Seconds between two decisions of one policy, the one default everywhere: the simulator's
step (``SimConfig.dt``), the trace grid, training and evaluation, and the operator's
``spec.interval`` when a policy names none. The CRD's ``spec.interval`` default (``15s`` in
``deploy/crds``, copied into the chart) cannot import it; a unit test holds them equal. (The
HPA controller's default sync period is also 15 s; that one is the HPA's own, in
:mod:`qscale.hpa`.)"""


@dataclass(frozen=True)
class Action:
    """``kind`` ``"step"``: desired = current * multiplier + delta, rounded away from current;
    ``kind`` ``"target"``: desired = ceil(busy pods / target); ``"peak"``: ceil(busy pods at
    the recent peak rate / target); ``"cpu_peak30"``: ceil(highest busy pods of 30 minutes /
    target); ``"rate"``/``"rate_peak"``/``"rate_peak30"``: ceil(pods the request rate now / at
    the peak of 15 / 30 minutes needs at the declared capacity / target); ``"rate_holt30"``:
    the same at the highest of the forecast, the 30-minute peak and the rate now."""

    name: str
    kind: str
    multiplier: float = 1.0
    delta: float = 0.0
    target: float = 0.0


ACTIONS: tuple[Action, ...] = (
    Action("hold", "step"),
    Action("minus_1", "step", delta=-1.0),
    Action("plus_1", "step", delta=1.0),
    Action("times_1.5", "step", multiplier=1.5),
    Action("times_2", "step", multiplier=2.0),
    Action("busy_at_50", "target", target=0.5),
    Action("busy_at_65", "target", target=0.65),
    Action("busy_at_80", "target", target=0.8),
    Action("peak_at_65", "peak", target=0.65),
    Action("peak_at_80", "peak", target=0.8),
    Action("cpu_peak30_at_30", "cpu_peak30", target=0.3),
    Action("cpu_peak30_at_40", "cpu_peak30", target=0.4),
    Action("cpu_peak30_at_50", "cpu_peak30", target=0.5),
    Action("cpu_peak30_at_60", "cpu_peak30", target=0.6),
    Action("cpu_peak30_at_70", "cpu_peak30", target=0.7),
    Action("cpu_peak30_at_80", "cpu_peak30", target=0.8),
    Action("cpu_peak30_at_90", "cpu_peak30", target=0.9),
    Action("rate_at_70", "rate", target=0.7),
    Action("rate_peak_at_60", "rate_peak", target=0.6),
    Action("rate_peak_at_70", "rate_peak", target=0.7),
    Action("rate_peak_at_80", "rate_peak", target=0.8),
    Action("rate_peak30_at_30", "rate_peak30", target=0.3),
    Action("rate_peak30_at_40", "rate_peak30", target=0.4),
    Action("rate_peak30_at_50", "rate_peak30", target=0.5),
    Action("rate_peak30_at_60", "rate_peak30", target=0.6),
    Action("rate_peak30_at_70", "rate_peak30", target=0.7),
    Action("rate_peak30_at_80", "rate_peak30", target=0.8),
    Action("rate_peak30_at_90", "rate_peak30", target=0.9),
    *(Action(f"rate_holt30_at_{t}", "rate_holt30", target=t / 100) for t in range(30, 100, 10)),
)
ACTION_NAMES: tuple[str, ...] = tuple(a.name for a in ACTIONS)
N_ACTIONS = len(ACTIONS)
HOLD = 0

_MULT = torch.tensor([a.multiplier for a in ACTIONS], dtype=torch.float32)
_DELTA = torch.tensor([a.delta for a in ACTIONS], dtype=torch.float32)
_TARGET = torch.tensor([a.target if a.kind != "step" else 1.0 for a in ACTIONS])
_IS_STEP = torch.tensor([a.kind == "step" for a in ACTIONS])
_IS_TARGET = torch.tensor([a.kind == "target" for a in ACTIONS])
_IS_PEAK = torch.tensor([a.kind == "peak" for a in ACTIONS])
_IS_RATE = torch.tensor([a.kind == "rate" for a in ACTIONS])
_IS_CPU_PEAK30 = torch.tensor([a.kind == "cpu_peak30" for a in ACTIONS])
_IS_RATE_PEAK = torch.tensor([a.kind == "rate_peak" for a in ACTIONS])
_IS_RATE_PEAK30 = torch.tensor([a.kind == "rate_peak30" for a in ACTIONS])
_IS_RATE_HOLT30 = torch.tensor([a.kind == "rate_holt30" for a in ACTIONS])
RATE_KINDS: tuple[str, ...] = ("rate", "rate_peak", "rate_peak30", "rate_holt30")
"""The kinds that size from a declared per-pod capacity."""
_NEEDS_CAPACITY = torch.tensor([a.kind in RATE_KINDS for a in ACTIONS])


def available(capacity_declared: torch.Tensor) -> torch.Tensor:
    """``[B, N_ACTIONS]`` bool: the actions each target may take (``capacity_declared`` ``[B]``
    bool; the rate actions need a declared per-pod capacity)."""
    needs = _NEEDS_CAPACITY.to(capacity_declared.device)
    return ~needs[None, :] | capacity_declared[:, None]


def apply(
    replicas: torch.Tensor,
    action: torch.Tensor,
    busy: torch.Tensor | None = None,
    peak_busy: torch.Tensor | None = None,
    rate_pods: torch.Tensor | None = None,
    peak_rate_pods: torch.Tensor | None = None,
    peak30_busy: torch.Tensor | None = None,
    peak30_rate_pods: torch.Tensor | None = None,
    forecast_rate_pods: torch.Tensor | None = None,
) -> torch.Tensor:
    """Desired replicas: ``replicas`` ``[B]`` float, ``action`` ``[B]`` int64, ``busy`` ``[B]``
    pods' worth of CPU in use, ``peak_busy`` the same at the recent peak rate and
    ``peak30_busy`` the highest of 30 minutes (the target, peak and CPU-hold actions),
    ``rate_pods``/``peak_rate_pods``/``peak30_rate_pods`` the pods the request rate now / at
    the peak of 15 / 30 minutes needs at the declared capacity (the rate actions),
    ``forecast_rate_pods`` the pods :func:`qscale.features.forecast_rate` needs there (the
    forecast floor). An input
    not given, or NaN, gives a NaN proposal, which the shield holds.

    A multiplicative step always moves by at least one pod (x1.5 of 1 pod is 2), so no step
    action silently means "hold". Out-of-range indices raise, as indexing does.
    """
    dev = replicas.device
    mult = _MULT.to(dev)[action].to(replicas.dtype)
    delta = _DELTA.to(dev)[action].to(replicas.dtype)
    raw = replicas * mult + delta
    up = torch.maximum(torch.ceil(raw - 1e-4), replicas + 1.0)
    step = torch.where(mult > 1.0, up, raw)
    # the pods' worth of work each sizing kind scales (NaN where not given: the shield holds)
    nan = torch.full_like(replicas, float("nan"))
    work = nan
    for is_kind, pods in (
        (_IS_TARGET, busy),
        (_IS_PEAK, peak_busy),
        (_IS_CPU_PEAK30, peak30_busy),
        (_IS_RATE, rate_pods),
        (_IS_RATE_PEAK, peak_rate_pods),
        (_IS_RATE_PEAK30, peak30_rate_pods),
        (_IS_RATE_HOLT30, forecast_rate_pods),
    ):
        work = torch.where(is_kind.to(dev)[action], nan if pods is None else pods, work)
    target = _TARGET.to(dev)[action].to(replicas.dtype)
    sized = torch.ceil(work.to(replicas.dtype) / target - 1e-4)
    return torch.where(_IS_STEP.to(dev)[action], step, sized)
