"""What a tick's status phase costs at 1,000 policies, in-process: the real Engine over the unit
tests' fakes (the shipped model, statuses, conditions, drift windows, telemetry, the status
writer's diff), as ``bench_engine_memory.py`` runs it, timing per tick the whole tick, the
statuses built after the scale writes (``Engine._conclude``) and the writer's diff of each
status against the stored one (``StatusWriter.run_pending``). No Prometheus, API server or
kopf: the event loop's own work only. Medians of ticks 4-13 (the first ticks fill the windows).

Usage: ``OMP_NUM_THREADS=1 python benchmarks/bench_status_phase.py [--policies 1000]``. To
set two versions side by side, run it from each checkout with ``PYTHONPATH=<checkout>/src``.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "unit"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def _timed(cls: type, name: str, acc: list[float]) -> None:
    orig = getattr(cls, name)

    def f(self, *a, **k):
        t = time.perf_counter()
        try:
            return orig(self, *a, **k)
        finally:
            acc.append(time.perf_counter() - t)

    async def af(self, *a, **k):
        t = time.perf_counter()
        try:
            return await orig(self, *a, **k)
        finally:
            acc.append(time.perf_counter() - t)

    setattr(cls, name, af if asyncio.iscoroutinefunction(orig) else f)


async def run(policies: int, ticks: int) -> dict[str, float]:
    from opfakes import world

    from bench_engine_memory import SPEC
    from qscale.operator import statuswriter, tick
    from qscale.policy.default import default_model_path

    w = world(default_model_path())
    rng = random.Random(0)
    names = [f"web-{i}" for i in range(policies)]

    def index(i: int, name: str) -> None:
        w.policy("a", name, {**SPEC, "targetRef": {**SPEC["targetRef"], "name": name}}, uid=f"u{i}")

    for i, name in enumerate(names):
        w.deployment("a", name, rng.randint(2, 10))
        index(i, name)
    conclude: list[float] = []
    pending: list[float] = []
    whole: list[float] = []
    _timed(tick.Engine, "_conclude", conclude)
    _timed(statuswriter.StatusWriter, "run_pending", pending)
    for k in range(ticks):
        for i, name in enumerate(names):
            cpu, rate, p95 = rng.uniform(0.2, 1.1), rng.uniform(5, 500), rng.uniform(0.05, 0.6)
            w.prom.set("a", name, cpu=cpu, rate=rate, p95=p95)
            index(i, name)  # as the watch does after each status write
        t = time.perf_counter()
        await w.tick(1_800_000_000.0 + 15.0 * k)
        whole.append(time.perf_counter() - t)
        w.sync_from_kube()
        w.kube.calls.clear()
        w.kube.events.clear()
        w.events.posted.clear()

    def med(xs: list[float]) -> float:
        return round(1000 * statistics.median(xs[4:]), 1)

    return {"tick_ms": med(whole), "statuses_ms": med(conclude), "writer_diff_ms": med(pending)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policies", type=int, default=1000)
    ap.add_argument("--ticks", type=int, default=14)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    res = asyncio.run(run(args.policies, max(args.ticks, 5)))
    print(
        f"per tick at {args.policies} policies (median of ticks 4-{args.ticks - 1}): "
        f"tick {res['tick_ms']} ms, statuses {res['statuses_ms']} ms, "
        f"writer diff {res['writer_diff_ms']} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
