"""Train the autoscaling DQN against the batched simulator, CleanRL style.

Read it top to bottom: ``TrainConfig`` holds every knob, a few small pure helpers follow, then
:func:`train` runs straight through -- seeding, simulator, networks, replay, the loop, the
periodic evaluation on the validation split (:func:`qscale.simulator.evaluate.evaluate`, like
every evaluation), checkpoints, and the export of the best model as a
:mod:`qscale.policy.artifact`. ``# ALGO LOGIC:`` marks the algorithm, ``# TRY NOT TO MODIFY:``
the plumbing around it; the plumbing itself (output files, resume and checkpoints, the
baseline, the CSV/TensorBoard log, the export) is the small named functions after the loop.

The algorithm is DQN with a target network, Double-DQN targets, a dueling head, n-step returns,
epsilon-greedy exploration, a Huber loss, gradient clipping and Adam, optionally with
proportional prioritized replay. One iteration steps all ``n_envs`` simulated clusters at once
and then runs ``gradient_steps`` updates, so the loop costs a fixed number of tensor ops per
iteration instead of Python work per env step.

The shield (:mod:`qscale.guardrails`) is applied inside ``env.step``: the agent learns under the
same bounds it is served with, and exploration can never produce a decision serving would not.
"""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import json
import math
import os
import random
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn, optim
from tqdm import tqdm

from qscale import actions, batching, decision, features
from qscale.guardrails import ShieldState
from qscale.policy import artifact
from qscale.policy.baseline import BaselineEval, hpa_baseline
from qscale.policy.cli_args import add_dataclass_args, dataclass_from_args
from qscale.policy.controller import DQNController
from qscale.policy.network import QNetwork
from qscale.policy.replay import NStepWindow, ReplayBuffer, Transitions
from qscale.simulator import env as sim
from qscale.simulator.device import resolve_device
from qscale.simulator.evaluate import Windows, evaluate
from qscale.simulator.splits import SPLIT_NAMES, packaged_trace, shared_trace_files
from qscale.simulator.tracebank import TraceBank

__all__ = [
    "CSV_COLUMNS",
    "BaselineEval",
    "TrainConfig",
    "TrainLogger",
    "TrainResult",
    "build_parser",
    "double_dqn_target",
    "linear_schedule",
    "main",
    "parse_config",
    "sim_config",
    "soft_update",
    "train",
    "validate",
    "validation_set",
    "validation_windows",
]

CSV_COLUMNS: tuple[str, ...] = (
    "global_step",
    "sps",
    "td_loss",
    "q_mean",
    "epsilon",
    "episode_return",
    "eval_cost_replica_hours",
    "eval_slo_violation_minutes",
    "eval_score",
    "gradient_updates",
    "wall_s",
)
"""Columns of the training log, in order; names never change (plots and dashboards rely on
them). Baseline metrics, when a baseline is given, follow as ``baseline_<key>``."""

CHECKPOINT_FORMAT = 1


def _default_traces() -> list[str]:
    """The shared trace families when this machine has them, else the trace in the package."""
    files = shared_trace_files()
    return [str(p) for p in files] if files else [str(packaged_trace())]


@dataclass
class TrainConfig:
    """Every hyperparameter of a training run; saved with each checkpoint and model."""

    # --- experiment -------------------------------------------------------------------------
    seed: int = 1
    """Seeds torch, the simulator's clusters and episode windows: same seed, same run (CPU)."""
    device: str = "auto"
    """Where training runs: auto (CUDA if available), cpu, cuda or cuda:N."""
    num_threads: int = 1
    """CPU threads for torch (0: torch's default, one per core). One by default: each op is
    small, and OpenMP threads that wait for a core busy with other work make updates 10-50x
    slower (measured on a shared 2-core machine)."""
    output_dir: str = "runs/dqn"
    """Directory for config.json, the log, checkpoints and the exported models."""
    checkpoint: str | None = None
    """Checkpoint file written during training (none: <output_dir>/checkpoint.pt)."""
    checkpoint_every: int = 2_000_000
    """Env steps between checkpoints (0: only at the end)."""
    keep_checkpoints: bool = False
    """Also keep each periodic checkpoint as checkpoint-<global_step>.pt next to the latest."""
    checkpoint_replay: bool = True
    """Store the replay buffer in checkpoints, so a resumed run continues exactly."""
    resume: str | None = None
    """Checkpoint to continue from; the run then ends at the same total_env_steps."""
    csv_log: str | None = None
    """Training log (CSV, fixed columns) (none: <output_dir>/train.csv)."""
    log_every: int = 100_000
    """Env steps between log rows and progress-bar updates."""
    tensorboard: bool = False
    """Also log to TensorBoard under <output_dir>/tb (skipped if tensorboard is not installed)."""
    progress: bool = True
    """Show a progress bar with steps/s, episode return and the latest validation numbers."""

    # --- data -------------------------------------------------------------------------------
    traces: list[str] = field(default_factory=_default_traces)
    """Trace CSV files (t,value); default: the shared trace families, else the packaged one."""
    val_traces: list[str] | None = None
    """Trace CSV files validated on (their val_split); default: the training traces."""
    train_split: str = "train"
    """Split of each trace the agent trains on (train, val, test or all)."""
    val_split: str = "val"
    """Split of each trace the periodic evaluation and the best-model choice use."""

    # --- simulator --------------------------------------------------------------------------
    dt: float = actions.DECISION_INTERVAL_S
    """Decision interval in seconds (the operator's sync period)."""
    episode_steps: int = 480
    """Steps per training episode (480 x 15 s = 2 h)."""
    noise: bool = True
    """Poisson noise on the trace's arrival rate."""
    reward_cost: float = sim.RewardWeights.cost
    """Reward weight of the pod cost (pods / peak pods per step)."""
    reward_slo: float = sim.RewardWeights.slo
    """Reward weight of a step whose p95 latency exceeds the SLO."""
    reward_drop: float = sim.RewardWeights.drop
    """Reward weight of the fraction of requests dropped by timeout."""
    reward_churn: float = sim.RewardWeights.churn
    """Reward weight of a step in which the replica count changed."""
    reward_cost_norm: str = sim.RewardWeights.cost_norm
    """What pods are divided by in the cost term: peak (the env's size) or need (pods the
    current arrivals need, at least 1)."""
    slo_priority_min: float = features.SLO_PRIORITY_RANGE[0]
    """Each training cluster's policy sets an SLO priority drawn log-uniformly from
    [slo_priority_min, slo_priority_max]: the reward's SLO weight is multiplied by it and the
    network sees it, so one model learns every trade-off in the range (both 1: only the
    default). Validation scores priority 1."""
    slo_priority_max: float = features.SLO_PRIORITY_RANGE[1]
    """See slo_priority_min."""

    # --- algorithm --------------------------------------------------------------------------
    total_env_steps: int = 20_000_000
    """Env steps to train for (rounded up to whole iterations of n_envs steps)."""
    n_envs: int = 256
    """Simulated clusters stepped together; one iteration = n_envs env steps."""
    buffer_size: int = 1_000_000
    """Replay capacity in n-step transitions."""
    batch_size: int = 512
    """Transitions per gradient update."""
    lr: float = 1e-4
    """Adam learning rate (lower than the usual 3e-4: at 3e-4 the validation score swung by
    +-20 from one evaluation to the next)."""
    adam_eps: float = 1e-5
    """Adam epsilon (larger than torch's default: steadier steps on small TD errors)."""
    gamma: float = 0.99
    """Discount per decision step (0.99 at 15 s looks ~25 min ahead)."""
    n_step: int = 3
    """Rewards summed before bootstrapping; faster credit for slow pod start-ups."""
    reward_scale: float = 0.1
    """Rewards are multiplied by this for learning only, keeping Q-values of order 10."""
    tau: float = 1.0
    """Target network update rate: 1.0 copies, smaller values blend (Polyak)."""
    target_update_period: int = 2000
    """Gradient updates between target-network updates."""
    train_frequency: int = 1
    """Iterations between rounds of gradient updates."""
    gradient_steps: int = 2
    """Gradient updates per round."""
    learning_starts: int = 100_000
    """Env steps collected before the first update."""
    eps_start: float = 0.1
    """Initial exploration rate (probability of a uniformly random action). Low, because the
    greedy policy starts as the demonstrated rule (``demo_action``): explore around it; without
    demonstrations, 1.0 is the usual start."""
    eps_end: float = 0.02
    """Final exploration rate."""
    eps_fraction: float = 0.1
    """Fraction of total_env_steps over which epsilon decays linearly."""
    huber: bool = True
    """Huber (smooth L1) TD loss; off: squared error."""
    max_grad_norm: float = 10.0
    """Gradient norm clip (0: no clipping)."""
    prioritized: bool = False
    """Proportional prioritized replay."""
    per_alpha: float = 0.6
    """Priority exponent of prioritized replay."""
    per_beta_start: float = 0.4
    """Initial importance-weight exponent, annealed linearly to 1 by the end."""
    hidden_sizes: tuple[int, ...] = (128, 128)
    """Widths of the MLP torso's hidden layers."""

    # --- evaluation -------------------------------------------------------------------------
    eval_every: int = 1_000_000
    """Env steps between greedy evaluations on the validation windows (0: only at the end)."""
    eval_envs: int = 256
    """Validation windows (one simulated cluster each), spread evenly over the val traces."""
    eval_steps: int = 480
    """Length of each validation window in steps (shorter traces give shorter windows)."""
    eval_seed: int = 12345
    """Seed of the validation clusters: fixed so that evaluations compare across runs."""
    baseline: str = "hpa-tuned"
    """Reference scored once on the validation windows and logged beside every evaluation:
    hpa-tuned (the HPA grid-searched on the training split, and the default HPA), hpa, none."""
    max_wall_s: float = 0.0
    """Stop after this many seconds of training wall time (0: no limit; the demonstrations, their
    pre-training and the periodic evaluations count); the run then ends as if total_env_steps
    had been reached (final evaluation, checkpoint, export)."""

    # --- one service (qscale tune) ----------------------------------------------------------
    init_model: str | None = None
    """Start from this artifact's weights (fine-tuning) instead of a fresh network; its network
    must have hidden_sizes."""
    capacity_rps: float | None = None
    """Requests/s one pod serves, fixed for every simulated cluster (default: drawn, 20-200)."""
    startup_delay_s: float | None = None
    """Pod start-up delay, drawn within +-25 % of this (default: drawn, 15-240 s)."""
    demo_action: str = "rate_holt30_at_90"
    """Demonstrations (DQfD): the action a rule plays in every state (the default: the KEDA
    rule at 90 % of the declared capacity with a 30-minute hold, sizing for the rate's forecast
    when it is higher -- the forecast floor, the reward-best single action on the evaluation
    profile's validation windows: BENCHMARKS, "the forecast floor in the spec"); its
    transitions stay in their own replay with a large-margin loss. none: no demonstrations."""
    demo_action_cpu: str = "cpu_peak30_at_80"
    """The rule demonstrated where no capacity is declared (the rate rules cannot be played
    there; the default: the HPA's rule at 80 % of the CPU limit with a 30-minute hold, the
    best CPU-only action on the same windows), or none: demonstrations only where a capacity is
    declared (every demonstration cluster then declares its own), so the policy without one
    learns from its own experience alone (BENCHMARKS, "the CPU floor" and "spec v4 with a CPU
    hold")."""
    demo_target_per_doubling: float = 0.1
    """The demonstrated rule follows each cluster's SLO priority: its target utilization falls
    by this much per doubling of the priority (rises per halving), played by the action of the
    same kind with the nearest target (the rules' reward-best 30-minute setting on the
    evaluation profile's validation windows is 90/90/80/70/60 % at priority 0.25/0.5/1/2/4,
    for the KEDA rule and the HPA's alike: BENCHMARKS, "a trade-off each service sets");
    0: the same rule at every priority."""
    demo_env_steps: int = 1_000_000
    """Env steps of demonstrations gathered (on the training split) before training."""
    demo_pretrain_updates: int = 10_000
    """Gradient steps on the demonstrations alone before the first env step."""
    demo_batch_fraction: float = 0.25
    """Share of every minibatch drawn from the demonstrations."""
    demo_margin: float = 0.03
    """Large-margin loss: every other action's Q must sit this far below the rule's in the
    demonstrated states (in the scaled reward's units: one step costs about 0.1)."""
    demo_weight: float = 1.0
    """Weight of the large-margin loss against the TD loss."""
    peak_replicas: float | None = None
    """Pods the trace's reference rate needs, fixed (default: drawn, 1-100)."""

    def _check_demonstrations(self) -> None:
        if self.demo_action not in actions.ACTION_NAMES:
            raise ValueError(
                f"demo_action must be none or one of {', '.join(actions.ACTION_NAMES)}, "
                f"got {self.demo_action!r}"
            )
        cpu_only = [a.name for a in actions.ACTIONS if a.kind not in actions.RATE_KINDS]
        if self.demo_action_cpu not in ("none", *cpu_only):
            raise ValueError(
                f"demo_action_cpu must be none or one of {', '.join(cpu_only)} (an action "
                f"that needs no declared capacity), got {self.demo_action_cpu!r}"
            )
        slope = self.demo_target_per_doubling
        if not (math.isfinite(slope) and slope >= 0):
            raise ValueError(f"demo_target_per_doubling must be >= 0, got {slope}")
        if self.demo_env_steps < self.n_envs:
            raise ValueError(
                f"demo_env_steps ({self.demo_env_steps}) must be >= n_envs ({self.n_envs})"
            )

    def __post_init__(self) -> None:
        self.traces = [os.fspath(p) for p in self.traces]
        if self.val_traces is not None:
            self.val_traces = [os.fspath(p) for p in self.val_traces]
        for name in ("capacity_rps", "startup_delay_s", "peak_replicas"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be > 0, got {value}")
        self.hidden_sizes = tuple(int(h) for h in self.hidden_sizes)
        lo, hi = self.slo_priority_min, self.slo_priority_max
        plo, phi = features.SLO_PRIORITY_RANGE
        if not (plo <= lo <= hi <= phi):
            raise ValueError(
                f"slo_priority_min/max must satisfy {plo:g} <= min <= max <= {phi:g} (the "
                f"feature's range), got {lo:g}/{hi:g}"
            )
        positive = (
            "total_env_steps",
            "n_envs",
            "buffer_size",
            "batch_size",
            "n_step",
            "target_update_period",
            "train_frequency",
            "episode_steps",
            "eval_envs",
            "eval_steps",
            "log_every",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("gradient_steps", "learning_starts", "checkpoint_every", "eval_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.total_env_steps <= self.learning_starts:
            raise ValueError(
                f"total_env_steps ({self.total_env_steps}) must exceed learning_starts "
                f"({self.learning_starts}): no gradient update would run and the model would "
                "ship untrained"
            )
        if self.demo_action != "none":
            self._check_demonstrations()
        if self.buffer_size < self.n_envs:
            raise ValueError(f"buffer_size ({self.buffer_size}) must be >= n_envs ({self.n_envs})")
        checks = (
            ("gamma", 0.0 < self.gamma <= 1.0, "in (0, 1]"),
            ("tau", 0.0 < self.tau <= 1.0, "in (0, 1]"),
            ("lr", self.lr > 0, "> 0"),
            ("demo_batch_fraction", 0.0 < self.demo_batch_fraction < 1.0, "in (0, 1)"),
            ("demo_margin", self.demo_margin >= 0.0, ">= 0"),
            ("demo_weight", self.demo_weight >= 0.0, ">= 0"),
            ("demo_pretrain_updates", self.demo_pretrain_updates >= 0, ">= 0"),
            ("dt", self.dt > 0, "> 0"),
            ("reward_scale", self.reward_scale > 0, "> 0"),
            ("eps_start", 0.0 <= self.eps_start <= 1.0, "in [0, 1]"),
            ("eps_end", 0.0 <= self.eps_end <= 1.0, "in [0, 1]"),
            ("eps_fraction", 0.0 < self.eps_fraction <= 1.0, "in (0, 1]"),
            ("per_alpha", self.per_alpha >= 0, ">= 0"),
            ("per_beta_start", 0.0 <= self.per_beta_start <= 1.0, "in [0, 1]"),
            ("max_grad_norm", self.max_grad_norm >= 0, ">= 0"),
        )
        for name, ok, rule in checks:
            if not ok:
                raise ValueError(f"{name} must be {rule}, got {getattr(self, name)}")
        for name in ("train_split", "val_split"):
            if getattr(self, name) not in SPLIT_NAMES:
                raise ValueError(
                    f"{name} must be one of {', '.join(SPLIT_NAMES)}, got {getattr(self, name)!r}"
                )
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if not self.traces:
            raise ValueError("traces must name at least one CSV file")
        if self.baseline not in ("hpa-tuned", "hpa", "none"):
            raise ValueError(f"baseline must be hpa-tuned, hpa or none, got {self.baseline!r}")
        if not self.hidden_sizes or min(self.hidden_sizes) < 1:
            raise ValueError(f"hidden_sizes must be positive integers, got {self.hidden_sizes}")


@dataclass
class TrainResult:
    """Where a run left its outputs and how it did."""

    best_model: Path
    """Artifact directory of the model with the best validation score."""
    final_model: Path
    """Artifact directory of the network as it was at the end."""
    checkpoint: Path
    csv_log: Path
    global_step: int
    gradient_updates: int
    best_global_step: int
    best_eval: dict[str, float]
    """Validation metrics of the best model (``score`` is its mean greedy episode return)."""
    final_eval: dict[str, float]
    baseline: dict[str, float] | None
    env_steps_per_s: float
    """Env steps per second of wall time over this run's iterations (evaluation included; the
    demonstrations and their pre-training not)."""
    updates_per_s: float
    wall_s: float
    """Training wall time, the demonstrations and their pre-training included (evaluations
    during training included, scoring by ``on_checkpoint`` not)."""


# --- small pure helpers ------------------------------------------------------------------------


def linear_schedule(start: float, end: float, duration: float, t: float) -> float:
    """``start`` moving linearly to ``end`` over ``duration``, then ``end``."""
    if duration <= 0:
        return end
    return start + min(1.0, max(0.0, t / duration)) * (end - start)


def epsilon_greedy(greedy: torch.Tensor, available: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Exploration: each greedy action is replaced by a uniformly random available one with
    probability ``epsilon`` (the trainer's :data:`qscale.decision.Explore`)."""
    explore = torch.rand(greedy.shape[0], device=greedy.device) < epsilon
    random_action = torch.multinomial(available.float(), 1).squeeze(1)
    return torch.where(explore, random_action, greedy)


def double_dqn_target(
    q_network: Callable[[torch.Tensor], torch.Tensor],
    target_network: Callable[[torch.Tensor], torch.Tensor],
    data: Transitions,
) -> torch.Tensor:
    """n-step Double-DQN target: the online network picks the next action, the target network
    values it, which removes most of max-operator overestimation. The next action is chosen
    among those available in the next state, as :func:`qscale.decision.decide` would."""
    allowed = actions.available(features.capacity_declared(data.next_obs))
    next_action = decision.greedy(q_network(data.next_obs), allowed)[:, None]
    next_q = target_network(data.next_obs).gather(1, next_action).squeeze(1)
    return data.ret + data.discount * data.bootstrap * next_q


def soft_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """Move the target network's weights ``tau`` of the way to the online network's (1: copy)."""
    with torch.no_grad():
        for tp, p in zip(target.parameters(), online.parameters(), strict=True):
            tp.lerp_(p, tau)


def config_of(manifest: dict[str, Any], **overrides: Any) -> TrainConfig:
    """The run's :class:`TrainConfig` as an artifact's manifest records it (keys this version
    does not know are left out), with ``overrides``."""
    recorded = manifest.get("training_config") or {}
    known = {k: v for k, v in recorded.items() if k in TrainConfig.__dataclass_fields__}
    return TrainConfig(**{**known, **overrides})


def sim_config(cfg: TrainConfig) -> sim.SimConfig:
    """The simulator settings of a run (everything not exposed here keeps its default)."""
    reward = sim.RewardWeights(
        cost=cfg.reward_cost,
        slo=cfg.reward_slo,
        drop=cfg.reward_drop,
        churn=cfg.reward_churn,
        cost_norm=cfg.reward_cost_norm,
    )
    dom = sim.DomainConfig(slo_priority=(cfg.slo_priority_min, cfg.slo_priority_max))
    fixed = {}
    if cfg.capacity_rps is not None:
        fixed["capacity_rps"] = (cfg.capacity_rps, cfg.capacity_rps)
    if cfg.startup_delay_s is not None:
        fixed["startup_delay_s"] = (0.75 * cfg.startup_delay_s, 1.25 * cfg.startup_delay_s)
    if cfg.peak_replicas is not None:
        fixed["peak_replicas"] = (cfg.peak_replicas, cfg.peak_replicas)
    return sim.SimConfig(
        dt=cfg.dt,
        episode_steps=cfg.episode_steps,
        noise=cfg.noise,
        reward=reward,
        domain=dataclasses.replace(dom, **fixed),
    )


def serving_settings(cfg: TrainConfig) -> dict[str, Any]:
    """What a model trained with ``cfg`` expects in serving (stored in its manifest)."""
    return {"interval_s": cfg.dt, "shield": asdict(sim_config(cfg).shield)}


def validation_windows(
    bank: TraceBank, n_windows: int, length: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(trace_index, start, length)`` of ``n_windows`` fixed windows for ``reset_fixed``.

    Round-robin over the traces, evenly spaced within each, so every trace family weighs the
    same whatever its length, and the windows are the same in every evaluation.
    """
    lengths = bank.lengths.cpu().tolist()
    k = len(lengths)
    idx, start, size = [], [], []
    for i in range(n_windows):
        trace, j = i % k, i // k
        m = (n_windows - trace + k - 1) // k  # windows that land on this trace
        span = min(length, lengths[trace])
        idx.append(trace)
        start.append(int((j + 0.5) / m * (lengths[trace] - span)))
        size.append(span)
    return torch.tensor(idx), torch.tensor(start), torch.tensor(size)


def validation_set(
    cfg: TrainConfig, device: torch.device | str = "cpu"
) -> tuple[sim.EnvParams, Windows]:
    """The validation clusters and windows of a run: fixed (``eval_seed``), so that every
    evaluation -- the policy's and the baseline's -- is scored on the same traffic."""
    bank = TraceBank.from_files(cfg.val_traces or cfg.traces, cfg.val_split, cfg.dt, device)
    base = sim_config(cfg)
    at_default = dataclasses.replace(base.domain, slo_priority=(1.0, 1.0))
    config = dataclasses.replace(base, domain=at_default)
    params = sim.make_params(bank, cfg.eval_envs, cfg.eval_seed, config, device)
    windows = validation_windows(bank, cfg.eval_envs, cfg.eval_steps)
    return params, Windows.fixed(*windows, seed=cfg.eval_seed)


def validate(
    q_network: Callable[[torch.Tensor], torch.Tensor], params: sim.EnvParams, windows: Windows
) -> dict[str, float]:
    """The greedy policy's validation numbers (:meth:`Evaluation.means`): cost and SLO minutes
    (means over windows) and ``score``, the mean episode return -- the quantity training
    optimizes, used to keep the best model because it weighs cost and SLO exactly as the reward
    does, per cluster size."""
    ev = evaluate({"dqn": partial(DQNController, q_network)}, params, windows, timelines=False)
    return ev.means("dqn")


def _state_dict_of(env_state: Any) -> dict[str, Any]:
    """A simulator state as nested dicts of tensors (loadable with ``weights_only=True``)."""
    return {
        f.name: _state_dict_of(v) if dataclasses.is_dataclass(v) else v
        for f in dataclasses.fields(env_state)
        for v in [getattr(env_state, f.name)]
    }


def _env_state_from(d: dict[str, Any], device: torch.device) -> sim.EnvState:
    fields = {k: v.to(device) for k, v in d.items() if k not in ("shield", "seen")}
    shield = ShieldState(**{k: v.to(device) for k, v in d["shield"].items()})
    seen = d.get("seen")
    if seen is not None:
        seen = features.FeatureInputs(**{k: v.to(device) for k, v in seen.items()})
    return sim.EnvState(**fields, shield=shield, seen=seen)


def _clone_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


# A checkpoint only continues the run it came from: these define that run's data and shapes.
_RESUME_MUST_MATCH = (
    "seed",
    "n_envs",
    "n_step",
    "buffer_size",
    "hidden_sizes",
    "prioritized",
    "traces",
    "train_split",
    "dt",
    "episode_steps",
)


def _open_tensorboard(log_dir: Path) -> Any | None:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is an optional extra, not a dependency
        warnings.warn("tensorboard is not installed; logging to CSV only", stacklevel=3)
        return None
    return SummaryWriter(str(log_dir))


# --- the run -----------------------------------------------------------------------------------


OnCheckpoint = Callable[[int, float, nn.Module], bool]
"""``(global_step, training wall seconds, q_network) -> stop?``: called at every checkpoint
interval with the training clock stopped (benchmarks score snapshots with it)."""


def train(
    config: TrainConfig,
    baseline_eval: BaselineEval | None = None,
    on_checkpoint: OnCheckpoint | None = None,
) -> TrainResult:
    """Run DQN training as configured; see the module docstring. ``baseline_eval`` is called
    once with the validation windows and its numbers are logged next to the policy's.

    torch's thread count is process-wide: it is set for the run and restored afterwards.
    """
    threads = torch.get_num_threads()
    if config.num_threads > 0:
        torch.set_num_threads(config.num_threads)
    try:
        return _train(config, baseline_eval, on_checkpoint)
    finally:
        torch.set_num_threads(threads)


def gather_demonstrations(cfg: TrainConfig, bank: TraceBank, device: torch.device) -> ReplayBuffer:
    """``cfg.demo_env_steps`` n-step transitions of the rules played through ``decide()`` and
    the shield, in clusters of their own (seed ``cfg.seed + 1``): ``cfg.demo_action`` where the
    cluster declares its per-pod capacity, ``cfg.demo_action_cpu`` where it does not (drawn as
    in training; with ``demo_action_cpu`` none every one of them declares it). Deterministic in
    the config, so a resumed run gathers them again."""
    params = sim.make_params(bank, cfg.n_envs, cfg.seed + 1, sim_config(cfg), device)
    cpu_rule = cfg.demo_action_cpu
    if cpu_rule == "none":
        declared = torch.ones_like(params.capacity_declared)
        params = dataclasses.replace(params, capacity_declared=declared)
        cpu_rule = cfg.demo_action
    shift = -cfg.demo_target_per_doubling * torch.log2(params.slo_priority)
    rule = torch.where(
        params.capacity_declared,
        demonstrated(cfg.demo_action, shift),
        demonstrated(cpu_rule, shift),
    )
    state, obs = sim.reset(params)
    rb = ReplayBuffer(cfg.demo_env_steps, features.N_FEATURES, device)
    window = NStepWindow(cfg.n_step, cfg.n_envs, features.N_FEATURES, device)
    zeros = torch.zeros(cfg.n_envs, actions.N_ACTIONS, device=device)
    while rb.size < cfg.demo_env_steps:
        state, next_obs, reward, terminated, truncated, info = sim.step_greedy(
            state, zeros, params, explore=lambda g, _: rule
        )
        real_next = next_obs
        if "final_obs" in info:
            real_next = torch.where(truncated[:, None], info["final_obs"], next_obs)
        window.push(obs, info["action"], reward * cfg.reward_scale, real_next,
                    terminated | truncated, terminated)  # fmt: skip
        if window.full:
            rb.add(window.oldest(cfg.gamma))
        obs = next_obs
    return rb


def demonstrated(name: str, shift: torch.Tensor) -> torch.Tensor:
    """``[B]`` action indices: per env the action of ``name``'s kind whose target is nearest to
    ``name``'s target + ``shift`` (a step action, which has no target, is itself)."""
    base = actions.ACTIONS[actions.ACTION_NAMES.index(name)]
    same = [i for i, a in enumerate(actions.ACTIONS) if a.kind == base.kind]
    if base.kind == "step":
        return torch.full_like(shift, actions.ACTION_NAMES.index(name), dtype=torch.long)
    targets = torch.tensor([actions.ACTIONS[i].target for i in same], device=shift.device)
    want = base.target + shift
    nearest = (targets[None, :] - want[:, None]).abs().argmin(dim=1)
    return torch.tensor(same, device=shift.device)[nearest]


def margin_loss(q: torch.Tensor, demo_action: torch.Tensor, margin: float) -> torch.Tensor:
    """DQfD's large-margin loss: ``max_a [Q(s,a) + margin * (a != a_E)] - Q(s, a_E)``."""
    lift = torch.full_like(q, margin).scatter(1, demo_action[:, None], 0.0)
    return ((q + lift).amax(dim=1) - q.gather(1, demo_action[:, None]).squeeze(1)).mean()


def _train(
    cfg: TrainConfig, baseline_eval: BaselineEval | None, on_checkpoint: OnCheckpoint | None
) -> TrainResult:
    # TRY NOT TO MODIFY: seeding, device, output locations
    random.seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    out_dir, ckpt_path, csv_path = _output_paths(cfg)

    # TRY NOT TO MODIFY: simulator -- random clusters and windows on the train split, fixed
    # windows and clusters on the validation split
    train_bank = TraceBank.from_files(cfg.traces, cfg.train_split, cfg.dt, device)
    params = sim.make_params(train_bank, cfg.n_envs, cfg.seed, sim_config(cfg), device)
    state, obs = sim.reset(params)
    val_params, val_windows = validation_set(cfg, device)

    # ALGO LOGIC: networks, optimizer, replay
    q_network = QNetwork(features.N_FEATURES, actions.N_ACTIONS, cfg.hidden_sizes).to(device)
    if cfg.init_model and not cfg.resume:
        _load_init(q_network, cfg.init_model, device)
    target_network = copy.deepcopy(q_network)
    optimizer = optim.Adam(q_network.parameters(), lr=cfg.lr, eps=cfg.adam_eps)
    rb = ReplayBuffer(cfg.buffer_size, features.N_FEATURES, device, cfg.prioritized, cfg.per_alpha)
    window = NStepWindow(cfg.n_step, cfg.n_envs, features.N_FEATURES, device)
    loss_fn = nn.SmoothL1Loss(reduction="none") if cfg.huber else nn.MSELoss(reduction="none")
    learner = _Learner(q_network, target_network, optimizer, rb, window)
    # training wall time counts the demonstrations and the pre-training (not the baseline's score)
    setup_start = time.perf_counter()
    demo_rb = gather_demonstrations(cfg, train_bank, device) if cfg.demo_action != "none" else None
    n_demo = 0 if demo_rb is None else max(1, round(cfg.batch_size * cfg.demo_batch_fraction))

    update = partial(_gradient_step, learner, cfg, loss_fn, demo_rb)

    n_iterations = math.ceil(cfg.total_env_steps / cfg.n_envs)
    eval_iters = _iterations(cfg.eval_every, cfg.n_envs)
    ckpt_iters = _iterations(cfg.checkpoint_every, cfg.n_envs)
    log_iters = _iterations(cfg.log_every, cfg.n_envs)
    start_iteration, n_updates, best = 0, 0, _Best()
    ep_return = torch.zeros(cfg.n_envs, device=device)
    if cfg.resume:  # TRY NOT TO MODIFY: everything a checkpoint holds
        start_iteration, n_updates, state, obs, ep_return = _resume(cfg, device, learner, best)
    elif demo_rb is not None:  # ALGO LOGIC: DQfD pre-training on the demonstrations alone
        for _ in range(cfg.demo_pretrain_updates):
            update(0, 1.0)
            n_updates += 1
            if n_updates % cfg.target_update_period == 0:
                soft_update(target_network, q_network, cfg.tau)

    setup_s = time.perf_counter() - setup_start
    # TRY NOT TO MODIFY: logging
    baseline = _score_baseline(baseline_eval, val_params, val_windows, out_dir)
    logger = TrainLogger(cfg, csv_path, out_dir / "tb", baseline, n_iterations, start_iteration)
    stats = _Stats(device)
    last_eval: dict[str, float] = {}
    start_time = time.perf_counter() - setup_s
    updates_at_start = n_updates
    stop_requested = False

    with logger:
        for iteration in range(start_iteration, n_iterations):
            global_step = iteration * cfg.n_envs
            # ALGO LOGIC: epsilon-greedy actions for every env at once
            epsilon = linear_schedule(
                cfg.eps_start, cfg.eps_end, cfg.eps_fraction * cfg.total_env_steps, global_step
            )
            with torch.no_grad():
                q_values = q_network(obs)

            # TRY NOT TO MODIFY: step the simulator (decide() takes the greedy action, exploration
            # replaces some of it before the shield; the simulator auto-resets finished envs)
            state, next_obs, reward, terminated, truncated, info = sim.step_greedy(
                state, q_values, params, explore=partial(epsilon_greedy, epsilon=epsilon)
            )
            action = info["action"]
            done = terminated | truncated
            # A truncated episode bootstraps from its real last observation, not the reset one.
            real_next_obs = next_obs
            if "final_obs" in info:
                real_next_obs = torch.where(truncated[:, None], info["final_obs"], next_obs)

            # ALGO LOGIC: fold the step into n-step transitions and store the completed ones
            window.push(obs, action, reward * cfg.reward_scale, real_next_obs, done, terminated)
            if window.full:
                rb.add(window.oldest(cfg.gamma))
            obs = next_obs

            # TRY NOT TO MODIFY: episode statistics, kept on the device (no sync per step)
            ep_return = ep_return + reward
            stats.episodes(ep_return, done)
            ep_return = torch.where(done, 0.0, ep_return)
            global_step += cfg.n_envs

            # ALGO LOGIC: training
            ready = rb.size >= cfg.batch_size and global_step > cfg.learning_starts
            if ready and iteration % cfg.train_frequency == 0:
                beta = linear_schedule(cfg.per_beta_start, 1.0, cfg.total_env_steps, global_step)
                for _ in range(cfg.gradient_steps):
                    loss, q_pred = update(cfg.batch_size - n_demo, beta)
                    n_updates += 1
                    if n_updates % cfg.target_update_period == 0:
                        soft_update(target_network, q_network, cfg.tau)
                    stats.update(loss, q_pred)

            # TRY NOT TO MODIFY: evaluation, logging, checkpoints
            logger.step(cfg.n_envs)
            out_of_time = cfg.max_wall_s > 0 and time.perf_counter() - start_time > cfg.max_wall_s
            last = iteration == n_iterations - 1 or out_of_time or stop_requested
            done_iters = iteration + 1
            do_eval = last or (eval_iters > 0 and done_iters % eval_iters == 0)
            if do_eval:
                last_eval = validate(q_network, val_params, val_windows)
                best.offer(last_eval, global_step, q_network)
            if do_eval or done_iters % log_iters == 0:
                wall = time.perf_counter() - start_time
                sps = (global_step - start_iteration * cfg.n_envs) / max(wall - setup_s, 1e-9)
                shown = last_eval if do_eval else {}
                row = _log_row(global_step, sps, wall, epsilon, n_updates, stats, cfg, shown)
                logger.write(row, sps, last_eval)
                stats.reset()
            if last or (ckpt_iters > 0 and done_iters % ckpt_iters == 0):
                env = (state, obs, ep_return)
                _save_checkpoint(ckpt_path, cfg, device, done_iters, n_updates, learner, best, env)
                if on_checkpoint is not None and not last:
                    stop_requested, paused_s = _call_on_checkpoint(
                        on_checkpoint, done_iters * cfg.n_envs, start_time, q_network
                    )
                    start_time += paused_s  # scoring is not training
            if last:
                n_iterations = done_iters
                break

    wall = time.perf_counter() - start_time
    if not last_eval:  # resumed from a finished run: nothing trained, still report numbers
        last_eval = validate(q_network, val_params, val_windows)
    if best.state is None:
        best.state, best.eval, best.step = _clone_state(q_network), last_eval, n_iterations
    # TRY NOT TO MODIFY: export the best and the final network as artifacts
    global_step = n_iterations * cfg.n_envs
    final_dir, best_dir = _export(
        cfg, out_dir, q_network, best, last_eval, baseline, global_step, n_updates
    )
    return TrainResult(
        best_model=best_dir, final_model=final_dir, checkpoint=ckpt_path, csv_log=csv_path,
        global_step=global_step, gradient_updates=n_updates, best_global_step=best.step,
        best_eval=best.eval, final_eval=last_eval, baseline=baseline,
        env_steps_per_s=(n_iterations - start_iteration) * cfg.n_envs / max(wall - setup_s, 1e-9),
        updates_per_s=(n_updates - updates_at_start) / max(wall - setup_s, 1e-9),
        wall_s=wall,
    )  # fmt: skip


# --- the run's plumbing: output files, checkpoints, the baseline, the log, the export -------------


def _output_paths(cfg: TrainConfig) -> tuple[Path, Path, Path]:
    """The output directory, the checkpoint and the CSV log (directories made, config.json
    written)."""
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = Path(cfg.checkpoint) if cfg.checkpoint else out_dir / "checkpoint.pt"
    ckpt_path.parent.mkdir(parents=True, exist_ok=True)
    csv_path = Path(cfg.csv_log) if cfg.csv_log else out_dir / "train.csv"
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    return out_dir, ckpt_path, csv_path


@dataclass
class _Learner:
    """What the algorithm updates (besides the update count), as checkpoints save it."""

    q_network: QNetwork
    target_network: QNetwork
    optimizer: optim.Optimizer
    rb: ReplayBuffer
    window: NStepWindow


def _gradient_step(
    learner: _Learner,
    cfg: TrainConfig,
    loss_fn: nn.Module,
    demo_rb: ReplayBuffer | None,
    n_agent: int,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One update on ``n_agent`` transitions of the agent's replay plus, with demonstrations,
    the rest of a minibatch from theirs: n-step Double-DQN TD loss on all of it, DQfD's
    large-margin loss on the demonstrations. Returns (loss, predicted Q of the actions)."""
    q_network, target_network = learner.q_network, learner.target_network
    parts = [learner.rb.sample(n_agent, beta)] if n_agent else []
    if demo_rb is not None:
        parts.append(demo_rb.sample(cfg.batch_size - n_agent))
    data = batching.cat([b.data for b in parts]) if len(parts) > 1 else parts[0].data
    weights = torch.cat([b.weights for b in parts]) if len(parts) > 1 else parts[0].weights
    with torch.no_grad():
        td_target = double_dqn_target(q_network, target_network, data)
    q_all = q_network(data.obs)
    q_pred = q_all.gather(1, data.action[:, None]).squeeze(1)
    loss = (weights * loss_fn(q_pred, td_target)).mean()
    if demo_rb is not None:
        d = slice(n_agent, None)
        loss = loss + cfg.demo_weight * margin_loss(q_all[d], data.action[d], cfg.demo_margin)
    learner.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.max_grad_norm > 0:
        nn.utils.clip_grad_norm_(q_network.parameters(), cfg.max_grad_norm)
    learner.optimizer.step()
    if n_agent:
        learner.rb.update_priorities(parts[0].index, (td_target - q_pred)[:n_agent])
    return loss, q_pred


@dataclass
class _Best:
    """The best validation score so far, where it was reached and the network that reached it."""

    score: float = -math.inf
    step: int = 0
    eval: dict[str, float] = field(default_factory=dict)
    state: dict[str, torch.Tensor] | None = None

    def offer(self, scores: dict[str, float], global_step: int, network: nn.Module) -> None:
        if scores["score"] > self.score:
            self.score, self.step, self.eval = scores["score"], global_step, scores
            self.state = _clone_state(network)


def _save_checkpoint(
    path: Path,
    cfg: TrainConfig,
    device: torch.device,
    iteration: int,
    n_updates: int,
    learner: _Learner,
    best: _Best,
    env: tuple[sim.EnvState, torch.Tensor, torch.Tensor],
) -> None:
    """Everything :func:`_resume` needs to continue the run bit for bit after ``iteration``
    iterations (``env``: the simulator state, the observation and the running returns)."""
    state, obs, ep_return = env
    payload = {
        "format": CHECKPOINT_FORMAT,
        "spec_hash": features.SPEC_HASH,
        "config": asdict(cfg),
        "iteration": iteration,
        "global_step": iteration * cfg.n_envs,
        "n_updates": n_updates,
        "q_network": learner.q_network.state_dict(),
        "target_network": learner.target_network.state_dict(),
        "optimizer": learner.optimizer.state_dict(),
        "env_state": _state_dict_of(state),
        "obs": obs,
        "ep_return": ep_return,
        "window": learner.window.state_dict(),
        "replay": learner.rb.state_dict() if cfg.checkpoint_replay else None,
        "best_score": best.score,
        "best_step": best.step,
        "best_eval": best.eval,
        "best_state": best.state,
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }
    _atomic_save(payload, path)
    if cfg.keep_checkpoints:
        step = iteration * cfg.n_envs
        _atomic_save(payload, path.with_name(f"{path.stem}-{step}{path.suffix}"))


def _resume(
    cfg: TrainConfig, device: torch.device, learner: _Learner, best: _Best
) -> tuple[int, int, sim.EnvState, torch.Tensor, torch.Tensor]:
    """Load ``cfg.resume`` into ``learner`` and ``best`` and the RNG; returns the iteration and
    update count to continue from, the simulator state, the observation and the returns."""
    try:
        ckpt = torch.load(cfg.resume, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:
        raise ValueError(f"{cfg.resume}: unreadable checkpoint ({e})") from None
    if not isinstance(ckpt, dict) or (ckpt.get("format"), ckpt.get("spec_hash")) != (
        CHECKPOINT_FORMAT,
        features.SPEC_HASH,
    ):
        raise ValueError(f"{cfg.resume}: checkpoint from another format or feature spec")
    saved = ckpt["config"]
    diff = [k for k in _RESUME_MUST_MATCH if _norm(saved.get(k)) != _norm(getattr(cfg, k))]
    if diff:
        raise ValueError(f"{cfg.resume}: cannot resume with a different {', '.join(diff)}")
    learner.q_network.load_state_dict(ckpt["q_network"])
    learner.target_network.load_state_dict(ckpt["target_network"])
    learner.optimizer.load_state_dict(ckpt["optimizer"])
    state = _env_state_from(ckpt["env_state"], device)
    obs, ep_return = ckpt["obs"].to(device), ckpt["ep_return"].to(device)
    learner.window.load_state_dict(ckpt["window"])
    if ckpt["replay"] is not None:
        learner.rb.load_state_dict(ckpt["replay"])
    best.score, best.step = float(ckpt["best_score"]), int(ckpt["best_step"])
    best.eval, best.state = dict(ckpt["best_eval"]), ckpt["best_state"]
    torch.set_rng_state(ckpt["rng_cpu"])
    if device.type == "cuda" and ckpt.get("rng_cuda") is not None:
        torch.cuda.set_rng_state(ckpt["rng_cuda"], device)
    return int(ckpt["iteration"]), int(ckpt["n_updates"]), state, obs, ep_return


def _score_baseline(
    baseline_eval: BaselineEval | None,
    params: sim.EnvParams,
    windows: Windows,
    out_dir: Path,
) -> dict[str, float] | None:
    """The baseline's numbers on the validation set (its numbers only), kept in baseline.json."""
    if baseline_eval is None:
        return None
    raw = baseline_eval(params, windows)
    baseline = {str(k): float(v) for k, v in raw.items() if isinstance(v, int | float)}
    (out_dir / "baseline.json").write_text(json.dumps(baseline, indent=2) + "\n")
    return baseline


class _Stats:
    """TD loss, Q-values and finished episodes' returns summed between two log rows, on the
    device (no sync per step)."""

    def __init__(self, device: torch.device) -> None:
        self.zero = torch.zeros((), device=device)
        self.reset()

    def reset(self) -> None:
        self.loss_sum, self.q_sum, self.n_loss = self.zero, self.zero, 0
        self.ret_sum, self.n_ret = self.zero, self.zero

    def episodes(self, ep_return: torch.Tensor, done: torch.Tensor) -> None:
        self.ret_sum = self.ret_sum + (ep_return * done).sum()
        self.n_ret = self.n_ret + done.sum()

    def update(self, loss: torch.Tensor, q_pred: torch.Tensor) -> None:
        self.loss_sum = self.loss_sum + loss.detach()
        self.q_sum = self.q_sum + q_pred.detach().mean()
        self.n_loss += 1

    def means(self, reward_scale: float) -> dict[str, Any]:
        """The log row's ``td_loss``, ``q_mean`` (in reward units) and ``episode_return``."""
        n = self.n_loss
        return {
            "td_loss": float(self.loss_sum) / n if n else "",
            "q_mean": float(self.q_sum) / n / reward_scale if n else "",
            "episode_return": float(self.ret_sum / self.n_ret) if int(self.n_ret) else "",
        }


def _log_row(
    global_step: int,
    sps: float,
    wall: float,
    epsilon: float,
    n_updates: int,
    stats: _Stats,
    cfg: TrainConfig,
    shown: dict[str, float],
) -> dict[str, Any]:
    """One row of :data:`CSV_COLUMNS` (``""`` where there is no value; ``shown``: the
    evaluation made at this step, if any)."""
    return {
        "global_step": global_step,
        "sps": round(sps, 1),
        **stats.means(cfg.reward_scale),
        "epsilon": round(epsilon, 5),
        "eval_cost_replica_hours": shown.get("cost_replica_hours", ""),
        "eval_slo_violation_minutes": shown.get("slo_violation_minutes", ""),
        "eval_score": shown.get("score", ""),
        "gradient_updates": n_updates,
        "wall_s": round(wall, 2),
    }


def _call_on_checkpoint(
    on_checkpoint: OnCheckpoint, global_step: int, start_time: float, q_network: nn.Module
) -> tuple[bool, float]:
    """Run the hook on the network in eval mode; returns (stop?, seconds it took)."""
    paused = time.perf_counter()
    q_network.eval()
    stop = bool(on_checkpoint(global_step, paused - start_time, q_network))
    q_network.train()
    return stop, time.perf_counter() - paused


_TENSORBOARD_TAGS = (
    ("sps", "charts/SPS"),
    ("td_loss", "losses/td_loss"),
    ("q_mean", "losses/q_values"),
    ("epsilon", "charts/epsilon"),
    ("episode_return", "charts/episodic_return"),
    ("eval_cost_replica_hours", "eval/cost_replica_hours"),
    ("eval_slo_violation_minutes", "eval/slo_violation_minutes"),
    ("eval_score", "eval/score"),
)


class TrainLogger:
    """The run's log: the CSV (:data:`CSV_COLUMNS`, then the baseline's numbers; appended to
    when resuming), TensorBoard (``cfg.tensorboard``) and the progress bar. A context manager:
    leaving it closes all three."""

    def __init__(
        self,
        cfg: TrainConfig,
        csv_path: Path,
        tb_dir: Path,
        baseline: dict[str, float] | None,
        n_iterations: int,
        start_iteration: int,
    ) -> None:
        self.baseline_cells = {f"baseline_{k}": v for k, v in (baseline or {}).items()}
        append = bool(cfg.resume) and csv_path.is_file()
        self.file = open(csv_path, "a" if append else "w", newline="")  # noqa: SIM115 (close())
        self.csv = csv.DictWriter(self.file, fieldnames=[*CSV_COLUMNS, *self.baseline_cells])
        if not append:
            self.csv.writeheader()
        self.tb = _open_tensorboard(tb_dir) if cfg.tensorboard else None
        if self.tb is not None:
            self.tb.add_text("config", "\n".join(f"|{k}|{v}|" for k, v in asdict(cfg).items()))
            for k, v in (baseline or {}).items():
                self.tb.add_scalar(f"baseline/{k}", v, 0)
        self.bar = tqdm(
            total=n_iterations * cfg.n_envs,
            initial=start_iteration * cfg.n_envs,
            unit="step",
            unit_scale=True,
            disable=not (cfg.progress and sys.stderr.isatty()),
            dynamic_ncols=True,
        )

    def step(self, env_steps: int) -> None:
        self.bar.update(env_steps)

    def write(self, row: dict[str, Any], sps: float, last_eval: dict[str, float]) -> None:
        """One log row (``""`` where there is no value); ``last_eval`` stays on the bar."""
        self.csv.writerow({**row, **self.baseline_cells})
        self.file.flush()
        if self.tb is not None:
            for key, tag in _TENSORBOARD_TAGS:
                if row[key] != "":
                    self.tb.add_scalar(tag, row[key], row["global_step"])
        postfix = {"sps": f"{sps:.0f}"}
        if row["episode_return"] != "":
            postfix["ret"] = f"{row['episode_return']:.1f}"
        if last_eval:
            postfix["val_cost"] = f"{last_eval['cost_replica_hours']:.2f}"
            postfix["val_slo_min"] = f"{last_eval['slo_violation_minutes']:.1f}"
        self.bar.set_postfix(postfix, refresh=False)

    def close(self) -> None:
        self.bar.close()
        self.file.close()
        if self.tb is not None:
            self.tb.close()

    def __enter__(self) -> TrainLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _export(
    cfg: TrainConfig,
    out_dir: Path,
    q_network: QNetwork,
    best: _Best,
    final_eval: dict[str, float],
    baseline: dict[str, float] | None,
    global_step: int,
    n_updates: int,
) -> tuple[Path, Path]:
    """The final network and the best one as artifacts (``final``, ``best``), each with the
    run's training summary."""
    summary = {
        "global_step": global_step,
        "gradient_updates": n_updates,
        "best_global_step": best.step,
        "val_windows": cfg.eval_envs,
        "val_split": cfg.val_split,
        "best_val": best.eval,
        "final_val": final_eval,
        "baseline_val": baseline,
    }
    assert best.state is not None
    best_network = copy.deepcopy(q_network)
    best_network.load_state_dict(best.state)
    final_dir, best_dir = (
        artifact.export(
            net,
            out_dir / name,
            train_config=asdict(cfg),
            trace_files=cfg.traces,
            serving=serving_settings(cfg),
            extra={"training_summary": summary},
        )
        for net, name in ((q_network, "final"), (best_network, "best"))
    )
    ref = _add_drift_reference(cfg, q_network, final_dir)
    same = all(torch.equal(a, b) for a, b in zip(q_network.state_dict().values(),
                                                   best.state.values(), strict=True))  # fmt: skip
    if same and ref is not None:  # no evaluation picked another: one reference serves both
        from qscale.policy import driftref

        driftref.write(best_dir, ref)
    elif not same:
        _add_drift_reference(cfg, best_network, best_dir)
    return final_dir, best_dir


def _add_drift_reference(cfg: TrainConfig, network: QNetwork, path: Path) -> Any:
    """The artifact's drift reference (:mod:`qscale.policy.driftref`) from the run's own
    training windows; too little training data for one only warns (the operator then reports
    drift as unknown)."""
    from qscale import drift
    from qscale.policy import driftref

    network.eval()
    try:
        ref, _ = driftref.build(network, cfg.traces, sim_config(cfg), cfg.train_split, cfg.seed)
    except drift.DriftError as e:
        print(f"{path}: no drift reference: {e}", file=sys.stderr)
        return None
    driftref.write(path, ref)
    return ref


def _load_init(q_network: QNetwork, path: str, device: torch.device) -> None:
    """``path``'s weights into ``q_network`` (verified as serving verifies them)."""
    policy = artifact.load_policy(path, prefer="eager")
    try:
        q_network.load_state_dict(policy.module.state_dict())
    except RuntimeError:
        raise ValueError(
            f"init_model {path}: its network {policy.manifest.get('network')} does not match "
            "hidden_sizes"
        ) from None
    q_network.to(device)


def _iterations(env_steps: int, n_envs: int) -> int:
    """Env-step interval -> iterations (at least one; 0 stays 0 = never)."""
    return max(1, env_steps // n_envs) if env_steps > 0 else 0


def _norm(value: Any) -> Any:
    """Compare configs from a checkpoint (lists) and from a dataclass (tuples) alike."""
    return list(value) if isinstance(value, list | tuple) else value


# --- command line ------------------------------------------------------------------------------


def build_parser(defaults: TrainConfig | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qscale train", description="Train the autoscaling DQN in the batched simulator."
    )
    add_dataclass_args(parser, TrainConfig, defaults)
    return parser


def parse_config(argv: Sequence[str] | None = None) -> TrainConfig:
    """Options -> :class:`TrainConfig`. With ``--resume``, the checkpoint's config supplies the
    defaults, so ``qscale train --resume run/checkpoint.pt`` needs nothing else; options given
    on the command line still win (e.g. a larger ``--total-env-steps`` to train longer)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--resume", default=None)
    known, _ = pre.parse_known_args(argv)
    defaults = None
    if known.resume and known.resume.lower() not in ("none", "null"):
        if not Path(known.resume).is_file():
            build_parser().error(f"--resume: no such checkpoint {known.resume!r}")
        try:
            saved = torch.load(known.resume, map_location="cpu", weights_only=True)["config"]
            defaults = TrainConfig(**saved)
        except Exception as e:
            build_parser().error(f"--resume: unreadable checkpoint {known.resume!r} ({e})")
    parser = build_parser(defaults)
    ns = parser.parse_args(argv)
    try:
        return dataclass_from_args(TrainConfig, ns)
    except ValueError as e:
        parser.error(str(e))


def make_baseline(cfg: TrainConfig) -> BaselineEval | None:
    """The ``baseline_eval`` hook ``cfg.baseline`` asks for (tuning happens here, once)."""
    if cfg.baseline == "none":
        return None
    return hpa_baseline(
        cfg.traces,
        cfg.train_split,
        sim_config(cfg),
        validation_windows,
        cfg.eval_envs,
        cfg.eval_steps,
        seed=cfg.eval_seed + 1,
        tuned=cfg.baseline == "hpa-tuned",
    )


def main(argv: list[str] | None = None) -> int:
    """``qscale train`` entry point: returns the exit status, errors are one line on stderr."""
    cfg = parse_config(argv)
    try:
        result = train(cfg, make_baseline(cfg))
    except KeyboardInterrupt:
        print("qscale train: interrupted; continue with --resume <checkpoint>", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, artifact.ArtifactError) as e:
        print(f"qscale train: error: {e}", file=sys.stderr)
        return 2
    best = result.best_eval
    print(
        f"best model: {result.best_model} (step {result.best_global_step}: "
        f"val cost {best.get('cost_replica_hours', float('nan')):.3f} replica-h, "
        f"SLO {best.get('slo_violation_minutes', float('nan')):.2f} min, "
        f"return {best.get('score', float('nan')):.2f}); "
        f"{result.gradient_updates} gradient updates; "
        f"{result.env_steps_per_s:.0f} env steps/s, {result.updates_per_s:.0f} updates/s"
    )
    for label, prefix in (("default HPA", "hpa_"), ("tuned HPA", "hpa_tuned_")):
        b = result.baseline or {}
        if f"{prefix}score" in b:
            print(
                f"  vs {label} on the same validation windows: cost "
                f"{b[f'{prefix}cost_replica_hours']:.3f} replica-h, SLO "
                f"{b[f'{prefix}slo_violation_minutes']:.2f} min, return {b[f'{prefix}score']:.2f}"
                f" ({'better' if best.get('score', -1e18) > b[f'{prefix}score'] else 'worse'})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
