"""A KEDA-style request-rate rule: replicas = ceil(request rate / per-pod threshold).

KEDA scales through an HPA it creates on an external metric with an ``AverageValue`` target,
so the rule is the HPA's external-metric path: desired = ceil(rate / threshold), nothing while
rate / (threshold x current) is within the 10 % tolerance, scale-up capped at max(2 x current,
4) per sync (an HPA without ``behavior``), scale-downs stabilized over ``cooldown_s`` (the
highest count asked for within it bounds them). KEDA users give the per-pod threshold for a
Prometheus request rate (found by load-testing one pod); we give the rule the true pod capacity
times ``target_fraction``, i.e. a well-informed user. It reads the request rate exactly as the
DQN does (the same query: a 1 m rate, after the scrape lag, of the env's served-requests or
ingress counter). Both settings may be per env (a grid in one batch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from qscale.simulator import env as sim

TOLERANCE = 0.1


@dataclass
class KedaController:
    target_fraction: torch.Tensor | float = 0.7
    """Threshold per pod as a fraction of its capacity."""
    cooldown_s: torch.Tensor | float = 300.0
    """Scale-down stabilization window."""
    name: str = "keda"
    uses_shield: bool = False
    needs_obs: bool = False

    def reset(self, state: sim.EnvState, params: sim.EnvParams) -> None:
        dev = params.device
        self._frac = torch.as_tensor(self.target_fraction, device=dev).float().expand(params.n_envs)
        cool = torch.as_tensor(self.cooldown_s, device=dev).float().expand(params.n_envs)
        self._slots = max(1, math.ceil(float(cool.max()) / params.config.dt) + 1)
        age = torch.arange(self._slots, device=dev).flip(0).float() * params.config.dt
        self._in_window = age[None, :] <= cool[:, None]  # slot -1 is now
        self._asks = torch.zeros(params.n_envs, self._slots, device=dev)

    def act(
        self, state: sim.EnvState, obs: torch.Tensor | None, params: sim.EnvParams
    ) -> torch.Tensor:
        cur = state.replicas
        rate = sim.signals(state, params).inputs.rate_now
        threshold = params.capacity * self._frac
        ratio = rate / torch.clamp(threshold * cur, min=1e-9)
        ask = torch.where(
            (ratio - 1.0).abs() <= TOLERANCE, cur, torch.ceil(rate / threshold - 1e-6)
        )
        fresh = state.t == 0
        self._asks = torch.where(
            fresh[:, None], cur[:, None], torch.cat([self._asks[:, 1:], ask[:, None]], dim=1)
        )
        highest = torch.where(self._in_window, self._asks, -math.inf).amax(dim=1)
        desired = torch.where(ask < cur, torch.minimum(cur, highest), ask)
        return torch.minimum(desired, torch.maximum(2.0 * cur, torch.full_like(cur, 4.0)))
