"""Training throughput: env steps/s and gradient updates/s of `qscale train` (default config,
a short run past learning_starts), on CPU with 1 and 2 threads, and on CUDA when present.

    python benchmarks/bench_training.py [--steps 1000000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from qscale.policy.train import TrainConfig, train


def measure(device: str, threads: int, steps: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(
            device=device,
            num_threads=threads,
            total_env_steps=steps,
            learning_starts=100_000,
            eval_every=0,
            checkpoint_every=0,
            checkpoint_replay=False,
            output_dir=tmp,
            progress=False,
        )
        r = train(cfg)
    return {
        "device": device,
        "threads": threads,
        "env_steps_per_s": r.env_steps_per_s,
        "updates_per_s": r.updates_per_s,
        "updates": r.gradient_updates,
        "wall_s": r.wall_s,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1_000_000)
    ap.add_argument("--json")
    args = ap.parse_args()
    rows = [measure("cpu", 1, args.steps), measure("cpu", 2, args.steps)]
    if torch.cuda.is_available():
        rows.append(measure("cuda", 1, args.steps))
    print(f"training throughput ({args.steps:,} env steps, incl. the final evaluation)")
    print("| device | threads | env steps/s | gradient updates/s |")
    print("|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['device']} | {r['threads']} | {r['env_steps_per_s']:,.0f} "
            f"| {r['updates_per_s']:,.0f} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
