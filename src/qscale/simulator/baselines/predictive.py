"""A predictive peer: forecast the request rate a start-up delay ahead, size for the forecast.

What predictive autoscalers (predictive HPA projects, cloud "predictive scaling") do, in its
plainest form: Holt's linear exponential smoothing (level and trend) of the request rate the
cluster shows (the same 1 m rate query the DQN reads, after its scrape lag), extrapolated
``h`` steps ahead, where ``h`` covers the pods' start-up delay and the metric's own age; the
Deployment is sized for the larger of the rate now and the forecast, at ``target_fraction`` of
a pod's capacity (a well-informed user, as for the KEDA rule). Scale-downs are stabilized: the
highest size asked for within ``stabilization_s`` bounds them, as the HPA's window does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from qscale.simulator import env as sim


@dataclass
class PredictiveController:
    target_fraction: torch.Tensor | float = 0.7
    """Pods are sized so the forecast runs them at this fraction of their capacity."""
    alpha: float = 0.5
    """Smoothing of the level."""
    beta: float = 0.2
    """Smoothing of the trend."""
    stabilization_s: float = 300.0
    """Scale-down stabilization window."""
    name: str = "predictive"
    uses_shield: bool = False
    needs_obs: bool = False

    def reset(self, state: sim.EnvState, params: sim.EnvParams) -> None:
        dev = params.device
        self._level = sim.signals(state, params).inputs.rate_now.clone()
        self._trend = torch.zeros_like(self._level)
        n = max(1, math.ceil(self.stabilization_s / params.config.dt))
        self._asks = torch.zeros(params.n_envs, n, device=dev)
        self._frac = torch.as_tensor(self.target_fraction, device=dev).float().expand(params.n_envs)
        cfg = params.config
        self._ahead = (params.delay_steps + params.scrape_lag + cfg.rate_window // 2).float()

    def act(
        self, state: sim.EnvState, obs: torch.Tensor | None, params: sim.EnvParams
    ) -> torch.Tensor:
        rate = sim.signals(state, params).inputs.rate_now
        fresh = state.t == 0
        prev = self._level
        level = self.alpha * rate + (1.0 - self.alpha) * (prev + self._trend)
        trend = self.beta * (level - prev) + (1.0 - self.beta) * self._trend
        self._level = torch.where(fresh, rate, level)
        self._trend = torch.where(fresh, 0.0, trend)
        forecast = torch.clamp(self._level + self._ahead * self._trend, min=0.0)
        need = torch.maximum(rate, forecast) / (params.capacity * self._frac)
        ask = torch.ceil(need - 1e-6)
        self._asks = torch.where(
            fresh[:, None], ask[:, None], torch.cat([self._asks[:, 1:], ask[:, None]], dim=1)
        )
        if self.stabilization_s <= 0:
            return ask
        return torch.maximum(ask, torch.minimum(self._asks.amax(dim=1), state.replicas))
