"""Time to quality: our trainer vs Stable-Baselines3's DQN on our simulator.

The bar is a controller users already have: the **tuned HPA's validation return** (the HPA
setting :data:`qscale.simulator.frontier.TUNED_RULE` picks on the training split, scored on the
trainer's fixed validation windows, greedy mean episode return); ``--bar best-rule`` raises it
to the **reward-best rule's** (issue #15 §3): the highest mean episode return of any setting of
the frontier's HPA and request-rate grid (:func:`qscale.simulator.frontier.rule_grid`, the
rate rules given the true per-pod capacity) on the same windows, the tuned HPA included. Time
to quality = training wall time until a snapshot of the greedy policy first scores >= the bar;
snapshots are scored with the training clock stopped, so scoring is not counted as training.

Contestants, all on the same 2 torch threads:

* ours: ``TrainConfig`` defaults on the batched simulator (at most ``--ours-budget`` seconds);
* SB3 ``DQN("MlpPolicy", env)`` with all its defaults on the gymnasium wrapper;
* SB3 tuned: learning_starts 1,000, train_freq 1, gradient_steps 1, target_update_interval
  1,000, exploration over 20 % of the budget down to 0.02, buffer 200k, batch 256, lr 3e-4,
  a 128x128 MLP (our network's width), gamma 0.99 (ours).

Each SB3 run stops at the bar or at 10x our time to the bar on that seed (10x our budget if we
never reached it). Goals: ours reaches the bar on >= 9/10 seeds within 2 minutes, and in
<= 1/10 of SB3's best time (or SB3 never reaches it within the cap). Issue #15 §3's goal,
ours alone (no SB3 needed): >= 9/10 seeds reach the reward-best rule within 10 minutes:

    python benchmarks/bench_sb3.py --seeds 10 [--sb3-seeds 3] [--ours-budget 120]
    python benchmarks/bench_sb3.py --seeds 10 --sb3-seeds 0 --ours-budget 600 --bar best-rule

(SB3 is a benchmark-only dependency, ``make bench-sb3`` installs it.)
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from qscale.policy.controller import DQNController
from qscale.policy.train import TrainConfig, make_baseline, train, validation_set
from qscale.simulator import frontier
from qscale.simulator.evaluate import evaluate
from qscale.simulator.gym_env import QScaleEnv
from qscale.simulator.splits import packaged_trace, shared_trace_files

THREADS = 2


def make_scorer(paths: list[str], n_windows: int):
    """The trainer's own validation clusters and windows (:func:`validation_set`: SLO priority
    1, however training draws it), ``n_windows`` of them."""
    params, windows = validation_set(TrainConfig(traces=paths, eval_envs=n_windows))

    def score(module) -> float:
        ctrl = module if hasattr(module, "act") else DQNController(module)
        return evaluate({"c": lambda: ctrl}, params, windows, timelines=False).means("c")["score"]

    return score, params, windows


def hpa_bar(paths: list[str], n_windows: int, params, windows) -> float:
    """The tuned HPA's validation return: the trainer's own baseline hook, same windows."""
    cfg = TrainConfig(traces=paths, eval_envs=n_windows)
    hook = make_baseline(cfg)
    return float(hook(params, windows)["hpa_tuned_score"])


def best_rule_bar(params, windows) -> tuple[float, str]:
    """The reward-best setting of the HPA and request-rate grid on the same windows: its mean
    episode return and its label."""
    res = frontier.run_rules(frontier.rule_grid(predictive=False), params, windows.triple())
    best = max(res, key=lambda r: float(res[r]["episode_return"].mean()))
    return float(res[best]["episode_return"].mean()), best.label


def run_ours(paths, seed: int, budget_s: float, snap_every: int, score, bar: float):
    """Train with periodic checkpoints; score each (clock stopped); stop at the bar."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(
            seed=seed,
            traces=paths,
            num_threads=THREADS,
            total_env_steps=snap_every * 400,
            eval_every=0,
            checkpoint_every=snap_every,
            keep_checkpoints=True,
            checkpoint_replay=False,
            log_every=snap_every,
            output_dir=tmp,
            progress=False,
            baseline="none",
            max_wall_s=budget_s,
        )
        curve = []

        def on_checkpoint(step: int, wall_s: float, network) -> bool:
            s = score(network)
            curve.append((wall_s, step, s))
            return s >= bar

        train(cfg, on_checkpoint=on_checkpoint)
    return curve


def run_sb3(paths, seed: int, tuned: bool, cap_s: float, snap_every: int, score, bar: float):
    from stable_baselines3 import DQN
    from stable_baselines3.common.callbacks import BaseCallback

    env = QScaleEnv(traces=paths, split="train")
    kwargs: dict = {}
    if tuned:
        kwargs = dict(
            learning_starts=1_000,
            train_freq=1,
            gradient_steps=1,
            target_update_interval=1_000,
            exploration_fraction=0.2,
            exploration_final_eps=0.02,
            buffer_size=200_000,
            batch_size=256,
            learning_rate=3e-4,
            gamma=0.99,
            policy_kwargs={"net_arch": [128, 128]},
        )
    model = DQN("MlpPolicy", env, seed=seed, verbose=0, device="cpu", **kwargs)
    curve: list[tuple[float, int, float]] = []

    class Snap(BaseCallback):
        def _on_training_start(self) -> None:
            self.t0 = time.perf_counter()
            self.paused = 0.0

        def _on_step(self) -> bool:
            if self.num_timesteps % snap_every:
                return True
            t = time.perf_counter()
            train_s = t - self.t0 - self.paused
            net = self.model.q_net
            s = score(lambda x: net(x))
            curve.append((train_s, self.num_timesteps, s))
            self.paused += time.perf_counter() - t
            return s < bar and train_s < cap_s

    model.learn(total_timesteps=10**9, callback=Snap())
    return curve


def _round(t: float | None) -> float | None:
    return None if t is None else round(t, 1)


def first_time(curve, bar: float) -> float | None:
    return next((t for t, _, s in curve if s >= bar), None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--sb3-seeds", type=int, default=3, help="seeds for each SB3 configuration")
    ap.add_argument("--ours-budget", type=float, default=120.0, help="seconds of our training")
    ap.add_argument("--ours-snap-every", type=int, default=100_000)
    ap.add_argument("--sb3-snap-every", type=int, default=10_000)
    ap.add_argument("--val-windows", type=int, default=64)
    ap.add_argument("--json", help="write the per-seed results here")
    ap.add_argument(
        "--bar", choices=("hpa-tuned", "best-rule"), default="hpa-tuned",
        help="the tuned HPA's validation return, or the reward-best rule setting's",
    )  # fmt: skip
    args = ap.parse_args()
    torch.set_num_threads(THREADS)
    paths = [str(p) for p in (shared_trace_files() or [packaged_trace()])]
    score, params, windows = make_scorer(paths, args.val_windows)
    bar = hpa_bar(paths, args.val_windows, params, windows)
    print(f"the tuned HPA's validation return {bar:.1f}", flush=True)
    if args.bar == "best-rule":
        bar, label = best_rule_bar(params, windows)
        print(f"the reward-best rule's ({label}) {bar:.1f}", flush=True)
    print(f"bar: {bar:.1f}", flush=True)
    results = []
    for seed in range(args.seeds):
        ours = run_ours(paths, seed, args.ours_budget, args.ours_snap_every, score, bar)
        t_ours = first_time(ours, bar)
        row = {"seed": seed, "bar": bar, "ours_time_s": t_ours, "ours_curve": ours}
        cap = 10.0 * (t_ours if t_ours is not None else args.ours_budget)
        if seed < args.sb3_seeds:
            for tuned in (False, True):
                key = "sb3_tuned" if tuned else "sb3_default"
                c = run_sb3(paths, seed, tuned, cap, args.sb3_snap_every, score, bar)
                row[f"{key}_time_s"] = first_time(c, bar)
                row[f"{key}_best"] = max((s for *_, s in c), default=None)
                row[f"{key}_trained_s"] = c[-1][0] if c else 0.0
                row[f"{key}_curve"] = c
        results.append(row)
        sb3_txt = ""
        if seed < args.sb3_seeds:
            sb3_txt = "; ".join(
                f"{k}: {_round(row[f'{k}_time_s'])} s "
                f"(best {row[f'{k}_best']:.1f} in {row[f'{k}_trained_s']:.0f} s)"
                for k in ("sb3_default", "sb3_tuned")
            )
        print(
            f"seed {seed}: ours reaches the bar at {_round(t_ours)} s "
            f"(best {max(s for *_, s in ours):.1f}); {sb3_txt}",
            flush=True,
        )
    budget = args.ours_budget
    reached = [r for r in results if r["ours_time_s"] is not None and r["ours_time_s"] <= budget]
    print(f"ours reaches the bar within {budget:.0f} s on {len(reached)}/{len(results)} seeds")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
