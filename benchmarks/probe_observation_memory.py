"""What the Observations of one tick keep: the real PromClient over a fake Prometheus reply.

The tick keeps each policy's :class:`qscale.operator.prom.Observation` until the next one,
with the request rate's and the CPU's points behind the capacity estimate (up to 31 each).
This parses the five default queries' replies for ``--policies`` Deployments (every series
with 31 points, as a running service has) through the operator's own client, and measures
with tracemalloc what the returned Observations hold once the replies are gone.

Usage: ``python benchmarks/probe_observation_memory.py [--policies 1000]``; run it on two
trees by ``PYTHONPATH`` to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import tracemalloc
from urllib.parse import parse_qs

import httpx

from qscale import features
from qscale.operator.prom import PromClient, QueryGroup
from qscale.operator.spec import TEMPLATES


def handler(names: list[str]):
    def reply(request: httpx.Request) -> httpx.Response:
        form = {k: v[0] for k, v in parse_qs(request.content.decode()).items()}

        def metric(d: str) -> dict:
            return {"namespace": "a", "deployment": d}

        if request.url.path.endswith("query_range"):
            end = float(form["end"])
            res = [
                {
                    "metric": metric(d),
                    "values": [[end - 1800 + 60 * k, f"{10 + k}"] for k in range(31)],
                }
                for d in names
            ]
        elif form["query"].endswith("[30m:1m]"):
            t = float(form["time"]) // 60 * 60
            res = [
                {"metric": metric(d), "values": [[t - 60 * k, f"{1 + k / 10}"] for k in range(31)]}
                for d in names
            ]
        elif form["query"].startswith("timestamp("):
            res = [{"metric": metric(d), "value": [1, form["time"]]} for d in names]
        else:
            res = [{"metric": metric(d), "value": [1, "0.2"]} for d in names]
        return httpx.Response(200, json={"status": "success", "data": {"result": res}})

    return reply


async def fetch(n: int):
    names = [f"web{i}" for i in range(n)]
    client = PromClient(transport=httpx.MockTransport(handler(names)))
    qs = [features.PROMQL[k] for k in TEMPLATES]
    group = QueryGroup("http://prom", *qs, tuple(("a", d) for d in names))
    try:
        return await client.fetch([group], 1_800_000_000.5)
    finally:
        await client.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policies", type=int, default=1000)
    args = ap.parse_args()
    asyncio.run(fetch(10))  # imports and first-use caches outside the measurement
    gc.collect()
    tracemalloc.start()
    out = asyncio.run(fetch(args.policies))
    gc.collect()
    held, _ = tracemalloc.get_traced_memory()
    obs = next(iter(out.values()))
    first = next(iter(obs.values()))
    print(
        f"{args.policies} policies: the Observations hold {held / 1e6:.2f} MB "
        f"({held / args.policies / 1e3:.2f} kB a policy; rate points {len(first.rate_points)}, "
        f"CPU points {len(first.cpu_points)})"
    )


if __name__ == "__main__":
    main()
