"""Running a controller over fixed trace windows and scoring it.

Every controller (the baselines and the DQN policy) implements :class:`Controller` and is
scored by :func:`rollout` with the same bookkeeping, so the numbers in an evaluation table are
comparable by construction.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Protocol

import torch
from tqdm import tqdm

from qscale.simulator import env as sim


class Controller(Protocol):
    """A batched autoscaling controller.

    ``uses_shield``: ``act`` returns Q-values ``[B, N_ACTIONS]`` over :mod:`qscale.actions`,
    whose greedy action :func:`qscale.decision.decide` takes and shields; otherwise it returns
    replica counts and brings its own rules (the baselines). ``needs_obs`` (optional, default
    True): whether ``act`` reads the observation vector; baselines that read their own signals
    say False and run faster.
    """

    name: str
    uses_shield: bool

    def reset(self, state: sim.EnvState, params: sim.EnvParams) -> None: ...

    def act(
        self, state: sim.EnvState, obs: torch.Tensor | None, params: sim.EnvParams
    ) -> torch.Tensor: ...


@dataclass
class Metrics:
    """Per-env totals of one rollout (tensors ``[B]``) and optional timelines ``[T, B]``."""

    cost_replica_hours: torch.Tensor
    slo_violation_minutes: torch.Tensor
    scaling_actions: torch.Tensor
    dropped_requests: torch.Tensor
    arrivals: torch.Tensor
    """Requests that arrived (the denominator of the dropped share)."""
    latency_counts: torch.Tensor
    """``[B, K + 1]`` requests per latency bucket over the run (the app's histogram; last:
    +Inf, dropped requests included): gives the run's p99 as Grafana would show it."""
    steps: torch.Tensor
    episode_return: torch.Tensor
    """Undiscounted sum of the simulator's reward (what training maximizes) at the default
    trade-off: an env whose policy sets another SLO priority is scored as if it were 1, so
    that every controller's return weighs cost and SLO alike."""
    timeline: dict[str, torch.Tensor] | None = None


TIMELINE_KEYS = ("rate", "replicas", "ready", "p95_s", "cost_pod_s", "violation")


def progress_enabled(requested: bool) -> bool:
    """Progress bars only where someone watches: on a terminal, never into a log file."""
    return requested and sys.stderr.isatty()


def rollout(
    controller: Controller,
    params: sim.EnvParams,
    state: sim.EnvState,
    obs: torch.Tensor | None,
    record: bool = False,
    progress: bool = False,
) -> Metrics:
    """Run ``controller`` until every env's episode ends (envs are started with
    :func:`qscale.simulator.env.reset_fixed`); envs that finish early stop counting."""
    dt = params.config.dt
    n_steps = int(state.ep_len.max().item())
    ep_len = state.ep_len.clone()
    b, dev = params.n_envs, params.device
    f64 = torch.float64
    cost = torch.zeros(b, dtype=f64, device=dev)
    viol = torch.zeros(b, dtype=f64, device=dev)
    churn = torch.zeros(b, dtype=f64, device=dev)
    dropped = torch.zeros(b, dtype=f64, device=dev)
    arrived = torch.zeros(b, dtype=f64, device=dev)
    ret = torch.zeros(b, dtype=f64, device=dev)
    lat = torch.zeros(b, params.bank.buckets.shape[0] + 1, dtype=f64, device=dev)
    timeline = {k: torch.zeros(n_steps, b, device=dev) for k in TIMELINE_KEYS} if record else None
    # the reward at priority 1: what the env's own priority added to its SLO term, taken back
    reprice = params.config.reward.slo * (params.slo_priority - 1.0)
    controller.reset(state, params)
    needs_obs = getattr(controller, "needs_obs", True)
    for t in tqdm(
        range(n_steps), disable=not progress_enabled(progress), desc=controller.name, leave=False
    ):
        live = t < ep_len
        out = controller.act(state, obs, params)
        if controller.uses_shield:
            state, obs, reward, _, _, info = sim.step_greedy(state, out, params)
        else:
            state, obs, reward, _, _, info = sim.step_replicas(state, out, params, needs_obs)
        ret += torch.where(live, reward + reprice * info["violation"], 0.0).double()
        cost += torch.where(live, info["cost_pod_s"], 0.0).double()
        viol += torch.where(live & info["violation"], dt, 0.0).double()
        churn += (live & info["changed"]).double()
        dropped += torch.where(live, info["dropped"], 0.0).double()
        arrived += torch.where(live, info["arrivals"], 0.0).double()
        lat += torch.where(live[:, None], info["latency_counts"], 0.0).double()
        if timeline is not None:
            for k in TIMELINE_KEYS:
                timeline[k][t] = info[k].float()
    return Metrics(
        cost_replica_hours=cost / 3600.0,
        slo_violation_minutes=viol / 60.0,
        scaling_actions=churn,
        dropped_requests=dropped,
        arrivals=arrived,
        latency_counts=lat,
        steps=ep_len,
        episode_return=ret,
        timeline=timeline,
    )
