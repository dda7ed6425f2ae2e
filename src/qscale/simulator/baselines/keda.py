"""A KEDA-style rule: replicas = ceil(request rate / per-pod threshold), with a cooldown.

KEDA users give a per-pod threshold for a Prometheus request rate (found by load-testing one
pod); we give the rule the true pod capacity times ``target_fraction``, i.e. a well-informed
user. It reads the request rate exactly as the DQN does (the same query: a 1 m rate, after the
scrape lag, of the env's served-requests or ingress counter). Scale-ups apply at once; a scale-down waits until the rule has asked for fewer pods than
are running for ``cooldown_s`` without interruption, then goes straight to the rule's value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from qscale.simulator import env as sim


@dataclass
class KedaController:
    target_fraction: float = 0.7
    """Threshold per pod as a fraction of its capacity."""
    cooldown_s: float = 300.0
    """Seconds of uninterrupted lower demand before scaling down."""
    name: str = "keda"
    uses_shield: bool = False

    def reset(self, state: sim.EnvState, params: sim.EnvParams) -> None:
        self._last_high_s = torch.full((params.n_envs,), -math.inf, device=params.device)

    def act(self, state: sim.EnvState, obs: torch.Tensor, params: sim.EnvParams) -> torch.Tensor:
        now = state.t.to(torch.float32) * params.config.dt
        cur = state.replicas
        rate = sim.signals(state, params).inputs.rate_now  # the same rate query the DQN reads
        threshold = params.capacity * self.target_fraction
        desired = torch.ceil(rate / threshold - 1e-6)
        self._last_high_s = torch.where(desired >= cur, now, self._last_high_s)
        cooled = now - self._last_high_s >= self.cooldown_s
        return torch.where(desired >= cur, desired, torch.where(cooled, desired, cur))
