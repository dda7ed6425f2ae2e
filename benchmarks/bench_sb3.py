"""Time to quality: our trainer vs Stable-Baselines3's DQN (its defaults) on our simulator.

Both learn the same task: SB3 through the gymnasium wrapper (`QScaleEnv`, one env, as SB3
runs), ours on the batched simulator. Both are scored the same way: the greedy policy's mean
episode return on fixed validation windows (the trainer's own validation set). Snapshots are
taken during training and scored afterwards, so scoring time is not counted as training time.

Quality bar: SB3's final validation return R_sb3 is normalized against a uniformly random
policy R_rand (returns are negative, so "95 % of a return" needs a reference point):

    bar = R_rand + 0.95 * (R_sb3 - R_rand)

Time to quality = training wall time until a snapshot first scores >= bar. Goal: ours <= 1/10
of SB3's, on >= 9/10 seeds. Usage (SB3 is a benchmark-only dependency):

    pip install stable-baselines3
    python benchmarks/bench_sb3.py --seeds 10 [--sb3-steps 100000] [--ours-steps 3000000]
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import torch

from qscale import actions
from qscale.policy.controller import DQNController
from qscale.policy.network import QNetwork
from qscale.policy.train import TrainConfig, train, validation_windows
from qscale.simulator import env as sim
from qscale.simulator.gym_env import QScaleEnv
from qscale.simulator.rollout import rollout
from qscale.simulator.splits import packaged_trace, shared_trace_files
from qscale.simulator.tracebank import TraceBank


class RandomController:
    name = "random"
    uses_shield = True

    def __init__(self, seed: int) -> None:
        self.gen = torch.Generator().manual_seed(seed)

    def reset(self, state, params) -> None:
        pass

    def act(self, state, obs, params):
        return torch.randint(0, actions.N_ACTIONS, (params.n_envs,), generator=self.gen)


def make_scorer(paths: list[str], n_windows: int):
    bank = TraceBank.from_files(paths, split="val")
    params = sim.make_params(bank, n_windows, seed=TrainConfig.eval_seed)
    windows = validation_windows(bank, n_windows, 480)

    def score(module) -> float:
        state, obs = sim.reset_fixed(params, *windows)
        ctrl = module if hasattr(module, "act") else DQNController(module)
        return float(rollout(ctrl, params, state, obs).episode_return.mean())

    return score


def run_sb3(paths, seed: int, steps: int, snap_every: int):
    from stable_baselines3 import DQN
    from stable_baselines3.common.callbacks import BaseCallback

    env = QScaleEnv(traces=paths, split="train")
    model = DQN("MlpPolicy", env, seed=seed, verbose=0, device="cpu")
    snaps: list[tuple[float, int, dict]] = []

    class Snap(BaseCallback):
        def _on_training_start(self) -> None:
            self.t0 = time.perf_counter()
            self.paused = 0.0

        def _on_step(self) -> bool:
            if self.num_timesteps % snap_every == 0:
                t = time.perf_counter()
                state = copy.deepcopy(self.model.q_net.state_dict())
                snaps.append((t - self.t0 - self.paused, self.num_timesteps, state))
                self.paused += time.perf_counter() - t
            return True

    model.learn(total_timesteps=steps, callback=Snap())
    net = model.q_net

    def module_for(state):
        net.load_state_dict(state)
        return lambda x: net(x)

    return [(t, n, module_for, s) for t, n, s in snaps]


def run_ours(paths, seed: int, steps: int, snap_every: int, workdir: Path):
    cfg = TrainConfig(
        seed=seed,
        traces=paths,
        total_env_steps=steps,
        learning_starts=min(TrainConfig.learning_starts, steps // 10),
        eval_every=0,
        checkpoint_every=snap_every,
        keep_checkpoints=True,
        checkpoint_replay=False,
        log_every=snap_every,
        output_dir=str(workdir),
        progress=False,
    )
    train(cfg)
    import csv

    rows = list(csv.DictReader((workdir / "train.csv").open()))
    wall = {int(r["global_step"]): float(r["wall_s"]) for r in rows}
    out = []
    for ck in sorted(workdir.glob("checkpoint-*.pt"), key=lambda p: int(p.stem.split("-")[1])):
        step = int(ck.stem.split("-")[1])
        gs = min(wall, key=lambda g: abs(g - step))  # the log row of that checkpoint
        state = torch.load(ck, map_location="cpu", weights_only=False)["q_network"]

        def module_for(s, hidden=cfg.hidden_sizes):
            net = QNetwork(hidden_sizes=hidden)
            net.load_state_dict(s)
            net.eval()
            return net

        out.append((wall[gs], gs, module_for, state))
    return out


def first_time(curve: list[tuple[float, int, float]], bar: float) -> float | None:
    for t, _, score in curve:
        if score >= bar:
            return t
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--sb3-steps", type=int, default=100_000)
    ap.add_argument("--sb3-snap-every", type=int, default=10_000)
    ap.add_argument("--ours-steps", type=int, default=3_000_000)
    ap.add_argument("--ours-snap-every", type=int, default=100_000)
    ap.add_argument("--val-windows", type=int, default=64)
    ap.add_argument("--json", help="write the per-seed results here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    paths = [str(p) for p in (shared_trace_files() or [packaged_trace()])]
    score = make_scorer(paths, args.val_windows)
    r_rand = score(RandomController(0))
    results = []
    for seed in range(args.seeds):
        sb3 = [
            (t, n, score(mk(s)))
            for t, n, mk, s in run_sb3(paths, seed, args.sb3_steps, args.sb3_snap_every)
        ]
        with tempfile.TemporaryDirectory() as tmp:
            ours = [
                (t, n, score(mk(s)))
                for t, n, mk, s in run_ours(
                    paths, seed, args.ours_steps, args.ours_snap_every, Path(tmp)
                )
            ]
        r_sb3 = sb3[-1][2]
        bar = r_rand + 0.95 * (r_sb3 - r_rand)
        t_sb3, t_ours = first_time(sb3, bar), first_time(ours, bar)
        ratio = (t_ours / t_sb3) if (t_ours is not None and t_sb3) else None
        results.append(
            {
                "seed": seed,
                "random_return": r_rand,
                "sb3_final_return": r_sb3,
                "bar": bar,
                "sb3_time_s": t_sb3,
                "ours_time_s": t_ours,
                "ratio": ratio,
                "ours_best_return": max(s for _, _, s in ours),
                "sb3_curve": [(t, n, s) for t, n, s in sb3],
                "ours_curve": [(t, n, s) for t, n, s in ours],
            }
        )
        print(
            f"seed {seed}: random {r_rand:.1f}, SB3 final {r_sb3:.1f}, bar {bar:.1f}; "
            f"SB3 reaches it at {t_sb3 if t_sb3 is None else round(t_sb3, 1)} s, ours at "
            f"{t_ours if t_ours is None else round(t_ours, 1)} s, ratio "
            f"{'n/a' if ratio is None else f'{ratio:.3f}'}; "
            f"ours best {results[-1]['ours_best_return']:.1f}",
            flush=True,
        )
    met = [r for r in results if r["ratio"] is not None and r["ratio"] <= 0.1]
    ratios = sorted(r["ratio"] for r in results if r["ratio"] is not None)
    med = ratios[len(ratios) // 2] if ratios else None
    print(
        f"ours <= 1/10 of SB3's time on {len(met)}/{len(results)} seeds; median ratio "
        f"{'n/a' if med is None else f'{med:.3f}'}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
