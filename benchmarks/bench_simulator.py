"""Simulator throughput: batched env-steps/s at several batch sizes vs the gymnasium wrapper.

All figures come from one run on one machine, so the ratios are what to compare; absolute
numbers mean something only for the GPU rows. Usage:

    python benchmarks/bench_simulator.py [--threads 2] [--json out.json]

``--sizes 4096 --no-gym`` times only the 4,096-env rows (eager and compiled): the figure the
simulator is held to (issue 14: >= 2M env-steps/s eager, >= 5M compiled on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time

import torch

from qscale import actions
from qscale.simulator import env as sim
from qscale.simulator.gym_env import QScaleEnv
from qscale.simulator.splits import packaged_trace, shared_trace_files
from qscale.simulator.tracebank import TraceBank


def bench_batched(
    bank: TraceBank, n_envs: int, device: str, steps: int, repeats: int = 3, step_fn=sim.step
):
    params = sim.make_params(bank.to(device), n_envs, seed=0, device=device)
    state, _ = sim.reset(params)
    gen = torch.Generator().manual_seed(0)
    acts = torch.randint(0, actions.N_ACTIONS, (64, n_envs), generator=gen).to(device)
    for i in range(20):
        state, *_ = step_fn(state, acts[i % 64], params)
    rates = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for i in range(steps):
            state, *_ = step_fn(state, acts[i % 64], params)
        if device == "cuda":
            torch.cuda.synchronize()
        rates.append(steps * n_envs / (time.perf_counter() - t0))
    return statistics.median(rates)


def bench_gym(bank: TraceBank, steps: int, repeats: int = 3) -> float:
    env = QScaleEnv(bank=bank)
    env.reset(seed=0)
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in range(steps):
            _, _, term, trunc, _ = env.step(i % actions.N_ACTIONS)
            if term or trunc:
                env.reset()
        rates.append(steps / (time.perf_counter() - t0))
    return statistics.median(rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="write results here")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    ap.add_argument("--no-gym", action="store_true", help="skip the gymnasium wrapper row")
    ap.add_argument(
        "--sizes", type=int, nargs="+", help="batch sizes to time (default: 1 64 1024 4096 ...)"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    paths = shared_trace_files() or [packaged_trace()]
    bank = TraceBank.from_files(paths, split="train")
    rows = []
    gym_rate = math.nan if args.no_gym else bench_gym(bank, steps=2000)
    rows.append({"what": "gymnasium wrapper (1 env)", "device": "cpu", "steps_per_s": gym_rate})
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        default = (1, 64, 1024, 4096, *((16384, 65536) if device == "cuda" else ()))
        for n in args.sizes or default:
            steps = 2000 if n <= 64 else 400
            rate = bench_batched(bank, n, device, steps)
            rows.append({"what": f"batched, {n} envs", "device": device, "steps_per_s": rate})
        if not args.no_compile:
            compiled = sim.compiled_step()
            for n in [n for n in args.sizes or (1024, 4096) if n >= 1024]:
                rate = bench_batched(bank, n, device, 400, step_fn=compiled)
                rows.append({"what": f"compiled, {n} envs", "device": device, "steps_per_s": rate})
    info = {
        "torch": torch.__version__,
        "threads": args.threads,
        "cpu": platform.processor() or platform.machine(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
    print(f"simulator throughput ({info})")
    print(f"| {'what':<28} | {'device':<6} | {'env-steps/s':>14} | {'x gym wrapper':>13} |")
    print(f"|{'-' * 30}|{'-' * 8}|{'-' * 16}|{'-' * 15}|")
    for r in rows:
        ratio = r["steps_per_s"] / gym_rate
        r["ratio_vs_gym"] = ratio
        print(
            f"| {r['what']:<28} | {r['device']:<6} | {r['steps_per_s']:>14,.0f} | {ratio:>13,.1f} |"
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"info": info, "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
