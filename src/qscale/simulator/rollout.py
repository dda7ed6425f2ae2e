"""Running a controller over fixed trace windows and scoring it.

Every controller (baselines now, the DQN policy later) implements :class:`Controller` and is
scored by :func:`rollout` with the same bookkeeping, so the numbers in an evaluation table are
comparable by construction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from tqdm import tqdm

from qscale.simulator import env as sim


class Controller(Protocol):
    """A batched autoscaling controller.

    ``uses_shield``: ``act`` returns action indices (:mod:`qscale.actions`) that go through the
    shield; otherwise it returns replica counts and brings its own rules (the baselines).
    """

    name: str
    uses_shield: bool

    def reset(self, state: sim.EnvState, params: sim.EnvParams) -> None: ...

    def act(
        self, state: sim.EnvState, obs: torch.Tensor, params: sim.EnvParams
    ) -> torch.Tensor: ...


@dataclass
class Metrics:
    """Per-env totals of one rollout (tensors ``[B]``) and optional timelines ``[T, B]``."""

    cost_replica_hours: torch.Tensor
    slo_violation_minutes: torch.Tensor
    p95_median_s: torch.Tensor
    p95_max_s: torch.Tensor
    scaling_actions: torch.Tensor
    dropped_requests: torch.Tensor
    steps: torch.Tensor
    episode_return: torch.Tensor
    """Undiscounted sum of the simulator's reward (what training maximizes)."""
    timeline: dict[str, torch.Tensor] | None = None


TIMELINE_KEYS = ("rate", "replicas", "ready", "p95_s")


def rollout(
    controller: Controller,
    params: sim.EnvParams,
    state: sim.EnvState,
    obs: torch.Tensor,
    record: bool = False,
    progress: bool = False,
) -> Metrics:
    """Run ``controller`` until every env's episode ends (envs are started with
    :func:`qscale.simulator.env.reset_fixed`); envs that finish early stop counting."""
    dt = params.config.dt
    n_steps = int(state.ep_len.max().item())
    ep_len = state.ep_len.clone()
    b, dev = params.n_envs, params.device
    cost = torch.zeros(b, dtype=torch.float64, device=dev)
    viol = torch.zeros(b, dtype=torch.float64, device=dev)
    churn = torch.zeros(b, dtype=torch.float64, device=dev)
    dropped = torch.zeros(b, dtype=torch.float64, device=dev)
    ret = torch.zeros(b, dtype=torch.float64, device=dev)
    p95_max = torch.zeros(b, device=dev)
    p95_all = torch.full((n_steps, b), float("nan"), device=dev)
    timeline = {k: torch.zeros(n_steps, b, device=dev) for k in TIMELINE_KEYS} if record else None
    controller.reset(state, params)
    step_fn = sim.step if controller.uses_shield else sim.step_replicas
    for t in tqdm(range(n_steps), disable=not progress, desc=controller.name, leave=False):
        live = t < ep_len
        out = controller.act(state, obs, params)
        state, obs, reward, _, _, info = step_fn(state, out, params)
        ret += torch.where(live, reward, 0.0).double()
        cost += torch.where(live, info["cost_pod_s"], 0.0).double()
        viol += torch.where(live & info["violation"], dt, 0.0).double()
        churn += (live & info["changed"]).double()
        dropped += torch.where(live, info["dropped"], 0.0).double()
        p95 = torch.where(live, info["p95_s"], float("nan"))
        p95_all[t] = p95
        p95_max = torch.maximum(p95_max, torch.nan_to_num(p95, nan=0.0))
        if timeline is not None:
            for k in TIMELINE_KEYS:
                timeline[k][t] = info[k]
    return Metrics(
        cost_replica_hours=cost / 3600.0,
        slo_violation_minutes=viol / 60.0,
        p95_median_s=torch.nanquantile(p95_all.double(), 0.5, dim=0).float(),
        p95_max_s=p95_max,
        scaling_actions=churn,
        dropped_requests=dropped,
        steps=ep_len,
        episode_return=ret,
        timeline=timeline,
    )
