"""Short real training runs on the packaged trace: it learns, it is reproducible, it resumes.

Everything is real (simulator, replay, TorchScript artifact); only the sizes are small so the
whole file runs in well under a minute on two CPU cores.
"""

from __future__ import annotations

import csv
import math
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from qscale import actions
from qscale.policy.artifact import load_policy, read_manifest
from qscale.policy.controller import DQNController
from qscale.policy.train import (
    CSV_COLUMNS,
    TrainConfig,
    sim_config,
    train,
    validation_windows,
)
from qscale.simulator import env as sim
from qscale.simulator.evaluate import Windows, evaluate
from qscale.simulator.rollout import rollout
from qscale.simulator.splits import packaged_trace
from qscale.simulator.tracebank import TraceBank


def one_hot(action: torch.Tensor) -> torch.Tensor:
    """Q-values whose greedy action is ``action``."""
    return torch.nn.functional.one_hot(action, actions.N_ACTIONS).float()


class HoldController:
    name = "hold"
    uses_shield = True

    def reset(self, state: sim.EnvState, params: sim.EnvParams) -> None:
        pass

    def act(self, state: sim.EnvState, obs: torch.Tensor, params: sim.EnvParams) -> torch.Tensor:
        return one_hot(torch.zeros(params.n_envs, dtype=torch.int64, device=obs.device))


class RandomController:
    name = "random"
    uses_shield = True

    def reset(self, state: sim.EnvState, params: sim.EnvParams) -> None:
        self.gen = torch.Generator().manual_seed(0)

    def act(self, state: sim.EnvState, obs: torch.Tensor, params: sim.EnvParams) -> torch.Tensor:
        return one_hot(torch.randint(0, 6, (params.n_envs,), generator=self.gen))


def _small(tmp_path: Path, name: str, **overrides: object) -> TrainConfig:
    """A run small enough for a test: few envs, short windows, tiny buffer."""
    base = TrainConfig(
        seed=7,
        device="cpu",
        num_threads=1,
        traces=[str(packaged_trace())],
        output_dir=str(tmp_path / name),
        n_envs=64,
        total_env_steps=16_384,
        buffer_size=20_000,
        batch_size=128,
        learning_starts=2_048,
        target_update_period=100,
        eval_every=8_192,
        eval_envs=16,
        eval_steps=120,
        log_every=4_096,
        checkpoint_every=8_192,
        progress=False,
        demo_env_steps=4_096,
        demo_pretrain_updates=200,
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(model_dir / "state_dict.pt", weights_only=True)


def test_trained_policy_beats_random_and_hold(tmp_path: Path) -> None:
    cfg = _small(
        tmp_path,
        "learn",
        n_envs=256,
        total_env_steps=300_000,
        buffer_size=200_000,
        batch_size=512,
        learning_starts=10_000,
        target_update_period=1_000,
        eval_every=0,
        eval_envs=32,
        eval_steps=480,
        log_every=50_000,
        checkpoint_every=0,
        prioritized=True,
        demo_action="none",  # the TD learner alone, from random exploration
        eps_start=1.0,
    )
    result = train(cfg)
    assert result.global_step == math.ceil(300_000 / 256) * 256

    # Score all three the same way, on validation windows none of them trained on; the policy
    # is the exported TorchScript artifact, i.e. what would ship.
    bank = TraceBank.from_files(cfg.traces, "val", cfg.dt)
    params = sim.make_params(bank, 64, 99, sim_config(cfg))
    windows = Windows.fixed(*validation_windows(bank, 64, 480), seed=99)
    policy = load_policy(result.best_model)
    assert policy.kind == "torchscript"
    controllers = {
        "dqn": lambda: DQNController(policy.module),
        "hold": HoldController,
        "random": RandomController,
    }
    ev = evaluate(controllers, params, windows, timelines=False)
    scores = {name: ev.means(name) for name in controllers}
    dqn, hold, rand = scores["dqn"], scores["hold"], scores["random"]
    assert dqn["score"] > hold["score"] + 50, scores
    assert dqn["score"] > rand["score"] + 50, scores
    # Not by starving the service: it violates the SLO far less than holding does ...
    assert dqn["slo_violation_minutes"] < 0.5 * hold["slo_violation_minutes"], scores
    # ... and does not buy that with the random policy's over-provisioning.
    assert dqn["cost_replica_hours"] < 0.75 * rand["cost_replica_hours"], scores


def test_same_seed_same_weights(tmp_path: Path) -> None:
    a = train(_small(tmp_path, "a", checkpoint_every=0))
    b = train(_small(tmp_path, "b", checkpoint_every=0))
    wa, wb = _weights(a.final_model), _weights(b.final_model)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a.gradient_updates == b.gradient_updates > 0
    c = train(_small(tmp_path, "c", checkpoint_every=0, seed=8))
    wc = _weights(c.final_model)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


def test_resume_continues_to_the_same_end(tmp_path: Path) -> None:
    full = train(_small(tmp_path, "full", keep_checkpoints=True))
    mid = Path(full.checkpoint).with_name("checkpoint-8192.pt")
    assert mid.is_file()
    resumed = train(_small(tmp_path, "resumed", resume=str(mid)))
    assert resumed.global_step == full.global_step == 16_384
    assert resumed.gradient_updates == full.gradient_updates
    # Network, optimizer, replay, simulator state and RNG all come back: the continuation is
    # the uninterrupted run, bit for bit.
    wf, wr = _weights(full.final_model), _weights(resumed.final_model)
    assert all(torch.equal(wf[k], wr[k]) for k in wf)
    # A finished run resumes to the same step without training further.
    again = train(_small(tmp_path, "again", resume=str(full.checkpoint)))
    assert again.global_step == full.global_step
    assert again.gradient_updates == full.gradient_updates


def test_resume_refuses_a_different_run(tmp_path: Path) -> None:
    run = train(_small(tmp_path, "run", total_env_steps=4_096, checkpoint_every=0))
    with pytest.raises(ValueError, match="n_envs"):
        train(_small(tmp_path, "other", n_envs=32, resume=str(run.checkpoint)))


def test_users_own_trace_csv_and_baseline_hook(tmp_path: Path) -> None:
    trace = tmp_path / "my_service.csv"
    rows = ["t,value"] + [
        f"{60 * i},{5.0 + 4.0 * math.sin(2 * math.pi * i / 720):.4f}" for i in range(1440)
    ]
    trace.write_text("\n".join(rows) + "\n")
    seen: dict[str, int] = {}

    def baseline(params: sim.EnvParams, windows: Windows) -> dict:
        seen["n_envs"] = params.n_envs
        state, obs = sim.reset_fixed(params, *windows.triple())
        m = rollout(HoldController(), params, state, obs)
        return {
            "cost_replica_hours": float(m.cost_replica_hours.mean()),
            "slo_violation_minutes": float(m.slo_violation_minutes.mean()),
            "name": "hold",  # non-numbers are not logged
        }

    cfg = _small(
        tmp_path, "user", traces=[str(trace)], total_env_steps=4_096, n_envs=32, tensorboard=True
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "tensorboard is not installed" where it is not
        result = train(cfg, baseline_eval=baseline)
    assert seen == {"n_envs": cfg.eval_envs}
    assert result.baseline is not None and set(result.baseline) == {
        "cost_replica_hours",
        "slo_violation_minutes",
    }
    with open(result.csv_log) as f:
        reader = csv.DictReader(f)
        rows_read = list(reader)
    assert reader.fieldnames is not None
    assert tuple(reader.fieldnames[: len(CSV_COLUMNS)]) == CSV_COLUMNS
    assert reader.fieldnames[len(CSV_COLUMNS) :] == [
        "baseline_cost_replica_hours",
        "baseline_slo_violation_minutes",
    ]
    assert rows_read[-1]["global_step"] == str(result.global_step)
    assert rows_read[-1]["eval_score"] != ""
    manifest = read_manifest(result.best_model)
    assert manifest["trace_files"][0]["name"] == "my_service"
    assert manifest["training_config"]["traces"] == [str(trace)]
    # The artifact runs through the rollout like any controller.
    bank = TraceBank.from_files([trace], "val")
    params = sim.make_params(bank, 4, 0)
    state, obs = sim.reset_fixed(params, *validation_windows(bank, 4, 100))
    returns = rollout(
        DQNController(load_policy(result.best_model).module), params, state, obs
    ).episode_return
    assert returns.shape == (4,) and bool(torch.isfinite(returns).all())


def test_demonstrations_make_the_rule_the_starting_policy(tmp_path: Path) -> None:
    """DQfD: after pre-training on the demonstrations (and a little TD), the greedy policy plays
    the demonstrated rate rule wherever a capacity is declared and the CPU rule where none is
    (never a rate action there: it cannot be played). At the default priority only: that the
    demonstrations follow each cluster's priority is a unit test's, and the trained model's
    curve is BENCHMARKS' (a run this short does not learn the priority's mapping)."""
    cfg = _small(tmp_path, "demo", total_env_steps=4_096, learning_starts=2_048,
                 demo_env_steps=16_384, demo_pretrain_updates=3_000, eval_every=0,
                 checkpoint_every=0, demo_action_cpu="peak_at_80", slo_priority_min=1.0,
                 slo_priority_max=1.0)  # fmt: skip
    result = train(cfg)
    bank = TraceBank.from_files(cfg.traces, "val", cfg.dt)
    params = sim.make_params(bank, 64, 99, sim_config(cfg))
    state, obs = sim.reset_fixed(params, *validation_windows(bank, 64, 480))
    net = load_policy(result.best_model).module
    rule = actions.ACTION_NAMES.index(cfg.demo_action)
    cpu_rule = actions.ACTION_NAMES.index(cfg.demo_action_cpu)
    declared = params.capacity_declared
    assert 0 < int(declared.sum()) < 64
    played = []
    for _ in range(40):
        state, obs, _, _, _, info = sim.step_greedy(state, net(obs).detach(), params)
        played.append(info["action"])
    acts = torch.stack(played)
    assert (acts[:, declared] == rule).float().mean() > 0.95
    assert (acts[:, ~declared] == cpu_rule).float().mean() > 0.95
    rate = ~actions.available(torch.zeros(1, dtype=torch.bool))[0]
    assert not rate[acts[:, ~declared]].any()
