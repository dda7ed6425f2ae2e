"""The perfect-foresight oracle: a cost lower bound, not a deployable controller.

It reads the arrivals the simulator will produce (the scaled trace and the very noise draws,
which are a pure function of the trace position) and knows each env's start-up delay ``d``.
For each of the next ``d + 1`` steps it computes the fewest pods whose p95 latency at that
step's rate, with no queue, stays within the SLO, and asks for the largest of those: pods asked
for now are ready exactly when the last of them is needed, and none is kept longer than the
window ahead needs. It ignores the shield's step and cooldown limits (only [min, max] holds).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qscale.service import p95_no_backlog
from qscale.simulator import env as sim


def fewest_pods(
    rate: torch.Tensor,
    capacity: torch.Tensor,
    service_time_s: torch.Tensor,
    slo_s: torch.Tensor,
    max_replicas: torch.Tensor,
) -> torch.Tensor:
    """Smallest pod count in [0, max] meeting the SLO at ``rate`` (binary search; p95 falls as
    pods are added). ``max`` when even that is not enough."""
    lo = torch.zeros_like(rate)
    hi = max_replicas.expand_as(rate).clone()
    for _ in range(int(torch.log2(max_replicas.max() + 1).ceil().item()) + 1):
        mid = torch.floor((lo + hi) / 2)
        ok = p95_no_backlog(rate, mid, capacity, service_time_s) <= slo_s
        hi = torch.where(ok, mid, hi)
        lo = torch.where(ok, lo, mid + 1)
    return torch.minimum(hi, max_replicas.expand_as(rate))


@dataclass
class OracleController:
    name: str = "oracle"
    uses_shield: bool = False
    needs_obs: bool = False

    def reset(self, state: sim.EnvState, params: sim.EnvParams) -> None:
        self._ahead = torch.arange(params.config.max_delay_steps + 1, device=params.device)

    def act(self, state: sim.EnvState, obs: torch.Tensor, params: sim.EnvParams) -> torch.Tensor:
        bank = params.bank
        pos = torch.clamp(state.pos[:, None] + self._ahead[None, :], max=bank.rates.shape[0] - 1)
        rate = sim.arrival_rate(params, pos, state.scale[:, None])
        need = fewest_pods(
            rate,
            params.capacity[:, None],
            params.service_time_s[:, None],
            params.slo_s[:, None],
            params.max_replicas[:, None],
        )
        within = self._ahead[None, :] <= params.delay_steps[:, None]
        return torch.where(within, need, 0.0).amax(dim=1)
