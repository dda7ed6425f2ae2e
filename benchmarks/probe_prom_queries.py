"""What the tick's Prometheus phase costs Prometheus alone: the operator's five queries at
``--policies`` Deployments, timed one by one and all five at once, on the bench stack with no
operator running (so nothing else is writing: no scale churn, no status patches).

The stack of ``benchstack.py`` (10 fake pods per Deployment, the soak's loads); after
``--warmup`` seconds of scrapes, ``--reps`` rounds of: each query alone (its HTTP time and
Prometheus' own ``stats=all`` timings), then all five concurrently as the tick sends them.
Compare with the ``prometheus`` lap of the operator's tick lines under load (the soak,
``probe_operator_memory.py``): the difference is what the loaded machine adds.

Usage: ``python benchmarks/probe_prom_queries.py --policies 1000 [--json out.json]``.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from bench_soak import load_schedule
from benchstack import NS, policy_body, start_stack
from qscale import features
from qscale.operator.prom import LOOKBACK_S


def queries(names: list[str]) -> dict[str, str]:
    """The tick's five queries for these Deployments (the default templates)."""
    qs = {k: features.fill_template(v, [NS], names) for k, v in features.PROMQL.items()}
    qs["sample_time"] = f"timestamp({qs['request_rate']})"
    return qs


def run(client: httpx.Client, url: str, name: str, query: str) -> dict:
    now = math.floor(time.time())
    if name == "request_rate":  # the range query, as prom.py sends it
        path, form = "/api/v1/query_range", {"start": f"{now - LOOKBACK_S}", "end": f"{now}"}
        form["step"] = f"{features.RATE_PEAK_STEP_S:g}"
    else:
        path, form = "/api/v1/query", {"time": f"{now}"}
    t0 = time.perf_counter()
    r = client.post(url + path, data={"query": query, "stats": "all", **form})
    took = time.perf_counter() - t0
    data = r.json().get("data") or {}
    timings = (data.get("stats") or {}).get("timings") or {}
    return {
        "http_s": took,
        "eval_s": timings.get("execTotalTime", math.nan),
        "prepare_s": timings.get("queryPreparationTime", math.nan),
        "series": len(data.get("result") or []),
        "bytes": len(r.content),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policies", type=int, default=1000)
    ap.add_argument("--warmup", type=float, default=150.0)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="qscale-promq-"))
    st = start_stack(
        a.policies,
        work,
        lambda nm: policy_body(nm, 15.0, 1, 10),
        lambda nm: load_schedule(nm, a.warmup + 600, 0),
        pods_per_deployment=10,
    )
    rows: dict[str, list[dict]] = {}
    try:
        time.sleep(a.warmup)
        qs = queries(sorted(st.names))
        with httpx.Client(timeout=60.0, trust_env=False) as client:
            for _ in range(a.reps):
                for name, q in qs.items():
                    rows.setdefault(name, []).append(run(client, st.prom.url, name, q))
                with cf.ThreadPoolExecutor(len(qs)) as ex:
                    t0 = time.perf_counter()
                    list(ex.map(lambda kv: run(client, st.prom.url, *kv), qs.items()))
                    rows.setdefault("all five at once", []).append(
                        {"http_s": time.perf_counter() - t0}
                    )
                time.sleep(5)
    finally:
        st.close()
    print(
        f"| {a.policies} Deployments, median of {a.reps} | HTTP (s) | Prometheus' eval (s) "
        "| of it series selection (s) | series | reply (kB) |"
    )
    print("|---|---|---|---|---|---|")
    for name, rs in rows.items():
        med = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        cells = [f"{med['http_s']:.3f}"] + [
            f"{med[k]:.3f}" if k in med else "" for k in ("eval_s", "prepare_s")
        ]
        cells += (
            [f"{med['series']:.0f}", f"{med['bytes'] / 1e3:.0f}"] if "series" in med else ["", ""]
        )
        print(f"| {name} | " + " | ".join(cells) + " |")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
