"""Decision latency of the Q-network: TorchScript vs eager, batch 1 on 1 thread and a batch
of 10,000 states. Uses the shipped default model when it exists, else a fresh network of the
default size (latency does not depend on the weights). Usage:

    python benchmarks/bench_policy.py [--calls 10000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from qscale import features
from qscale.policy.artifact import export, load_policy
from qscale.policy.network import QNetwork


def default_model_dir() -> Path | None:
    try:
        from qscale.policy.default import default_model_path
    except ImportError:
        return None
    p = default_model_path()
    return p if p.is_dir() else None


def latencies_us(fn, x: torch.Tensor, calls: int) -> list[float]:
    out = []
    with torch.inference_mode():
        for _ in range(200):
            fn(x).argmax(dim=1)
        for _ in range(calls):
            t0 = time.perf_counter_ns()
            fn(x).argmax(dim=1)
            out.append((time.perf_counter_ns() - t0) / 1000.0)
    return out


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=10_000)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    src = default_model_dir()
    with tempfile.TemporaryDirectory() as tmp:
        if src is None:
            src = Path(tmp) / "model"
            export(QNetwork(), src)
        ts = load_policy(src, prefer="torchscript")
        eager = load_policy(src, prefer="eager")
        gen = torch.Generator().manual_seed(0)
        one = torch.rand(1, features.N_FEATURES, generator=gen)
        big = torch.rand(10_000, features.N_FEATURES, generator=gen)
        rows = {}
        for name, pol in (("torchscript", ts), ("eager", eager)):
            lat = latencies_us(pol.module, one, args.calls)
            bl = latencies_us(pol.module, big, 30)
            rows[name] = {
                "batch1_median_us": statistics.median(lat),
                "batch1_p99_us": pct(lat, 0.99),
                "batch10k_median_ms": statistics.median(bl) / 1000.0,
            }
    ratio = rows["torchscript"]["batch1_p99_us"] / rows["eager"]["batch1_p99_us"]
    print(f"decision latency, 1 thread, {args.calls} calls, model: {src}")
    print("| module | batch 1 median (µs) | batch 1 p99 (µs) | batch 10k median (ms) |")
    print("|---|---|---|---|")
    for name, r in rows.items():
        print(
            f"| {name} | {r['batch1_median_us']:.1f} | {r['batch1_p99_us']:.1f} "
            f"| {r['batch10k_median_ms']:.2f} |"
        )
    print(f"TorchScript p99 / eager p99 = {ratio:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "p99_ratio": ratio}, indent=2))


if __name__ == "__main__":
    main()
