"""Does the operator's decision path grow? The Engine over the unit tests' fakes, in-process.

The one-hour soak (``bench_soak.py``) saw the operator's RSS grow about 110-127 MB/h at 1,000
policies. This isolates the decision path: the real :class:`qscale.operator.tick.Engine` (the
shipped model, the shield, statuses, conditions, Events, drift windows, telemetry) over the
fake API server and Prometheus of ``tests/unit/opfakes.py``, ``--policies`` policies on their
own Deployments, every target's metrics drawn anew each tick, a tick every 15 s of fake time,
the fakes' own logs cleared after each tick. RSS (VmRSS) every 10 ticks after a
``gc.collect()``. No kopf, no kubernetes or httpx client, no status-writer threads: growth
here is the decision path's; growth only in the soak is theirs (or the allocator's under
their threads).

Usage: ``OMP_NUM_THREADS=1 python benchmarks/bench_engine_memory.py [--policies 1000]
[--ticks 110]`` (about 2 s a tick at 1,000 on 2 cores).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "unit"))

SPEC = {
    "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "x"},
    "minReplicas": 1,
    "maxReplicas": 50,
    "mode": "Enforce",
    "interval": "15s",
    "slo": {"latencyP95": "300ms"},
}


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def run(policies: int, ticks: int) -> list[dict]:
    from opfakes import world

    from qscale.policy.default import default_model_path

    w = world(default_model_path())
    rng = random.Random(0)
    names = [f"web-{i}" for i in range(policies)]
    for i, name in enumerate(names):
        w.deployment("a", name, rng.randint(2, 10))
        w.policy("a", name, {**SPEC, "targetRef": {**SPEC["targetRef"], "name": name}}, uid=f"u{i}")
    t0 = 1_800_000_000.0
    out = []
    for k in range(ticks):
        for i, name in enumerate(names):
            cpu, rate, p95 = rng.uniform(0.2, 1.1), rng.uniform(5, 500), rng.uniform(0.05, 0.6)
            w.prom.set("a", name, cpu=cpu, rate=rate, p95=p95)
            # as the watch does: each policy indexed again with the status it wrote
            w.policy(
                "a", name, {**SPEC, "targetRef": {**SPEC["targetRef"], "name": name}}, uid=f"u{i}"
            )
        t = time.perf_counter()
        await w.tick(t0 + 15.0 * k)
        took = time.perf_counter() - t
        w.sync_from_kube()
        w.kube.calls.clear()
        w.kube.events.clear()
        w.events.posted.clear()
        if k % 10 == 0 or k == ticks - 1:
            gc.collect()
            out.append({"tick": k, "rss_mb": round(rss_mb(), 1), "tick_s": round(took, 3)})
            print(out[-1], flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policies", type=int, default=1000)
    ap.add_argument("--ticks", type=int, default=110)
    ap.add_argument("--json", default="out/bench_engine_memory.json")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    samples = asyncio.run(run(args.policies, args.ticks))
    after = [s["rss_mb"] for s in samples if s["tick"] >= 10]
    res = {
        "policies": args.policies,
        "ticks": args.ticks,
        "samples": samples,
        "rss_from_tick_10_mb": [min(after), max(after)] if after else None,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(res, indent=1))
    print(f"RSS from tick 10 on: {res['rss_from_tick_10_mb']} MB ({args.json})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
