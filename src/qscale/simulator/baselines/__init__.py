"""The controllers qscale must beat, all running inside the same simulator.

* ``hpa``: the Kubernetes HPA v2 exactly as the controller computes it (:mod:`qscale.hpa`) for
  the HPA most users run -- no ``behavior`` field, as ``kubectl autoscale`` makes it -- at a
  70 % CPU target;
* ``keda``: a request-rate rule, desired = ceil(rate / per-pod threshold), with a cooldown
  (:mod:`~qscale.simulator.baselines.keda`);
* ``predictive``: a Holt forecast of the request rate, a start-up delay ahead, fed to the same
  rule (:mod:`~qscale.simulator.baselines.predictive`);
* ``oracle``: perfect foresight of arrivals and start-up delay; a reference, not a rival.

Every rule reads what a cluster would show it (:func:`qscale.simulator.env.hpa_view`,
:func:`qscale.simulator.env.signals`). CPU targets are fractions of the pods' CPU *limit*: the
HPA's ``averageUtilization`` (relative to the request) is set to target x limit/request per
env, the target a user who knows the pods' limit/request ratio would write. The grids these
rules are tuned over, their Pareto frontier and the tuned-HPA rule live in
:mod:`qscale.simulator.frontier`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from qscale.hpa import HPAConfig, HPAState, hpa_step
from qscale.simulator import env as sim
from qscale.simulator.baselines.keda import KedaController
from qscale.simulator.baselines.oracle import OracleController
from qscale.simulator.baselines.predictive import PredictiveController


@dataclass
class HPAController:
    """Feeds the controller's own view of the pods and their CPU to :func:`hpa_step` each step.

    ``target`` (a fraction of the CPU limit, scalar or per env) is turned into the per-env
    ``averageUtilization`` (whole percent of the request) the HPA is configured with; ``None``
    takes ``config.target_utilization`` as a fraction of the limit too.
    """

    config: HPAConfig = field(default_factory=HPAConfig)
    name: str = "hpa"
    uses_shield: bool = False
    needs_obs: bool = False
    target: torch.Tensor | float | None = None

    def reset(self, state: sim.EnvState, params: sim.EnvParams) -> None:
        self._state = HPAState.init(params.n_envs, params.device, self.config)
        f = self.config.target_utilization if self.target is None else self.target
        f = torch.as_tensor(f, dtype=torch.float64, device=params.device)
        percent = torch.round(f * params.cpu_limit_ratio.double() * 100.0).clamp(min=1.0)
        self._target = (percent / 100.0).expand(params.n_envs)

    def act(
        self, state: sim.EnvState, obs: torch.Tensor | None, params: sim.EnvParams
    ) -> torch.Tensor:
        self._state = self._state.reset(state.t == 0)  # envs that just (auto-)reset
        view = sim.hpa_view(state, params)
        desired, _, self._state = hpa_step(
            self._state,
            state.t.to(torch.float64) * params.config.dt,
            view.current,
            view.ready,
            view.unready,
            view.utilization,
            self.config,
            min_replicas=params.min_replicas,
            max_replicas=params.max_replicas,
            missing_pods=view.missing,
            target_utilization=self._target,
        )
        return desired


__all__ = [
    "HPAConfig",
    "HPAController",
    "KedaController",
    "OracleController",
    "PredictiveController",
]
