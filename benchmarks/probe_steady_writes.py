"""The operator's status writes in steady state at N policies, and which status fields moved.

The stack and policies of ``bench_operator.py`` (N Deployments at 50 req/s, policies every 5 s,
the shipped model), the operator started, then its steady state measured as the benchmark does
(:func:`bench_operator.steady`: from ``STEADY_AFTER_S`` after the start, over
``STEADY_INTERVALS`` intervals); every policy's status is listed at the window's start and end,
and the fields that differ are counted (a field that moved on many policies is what the writes
were). ``--after`` and ``--intervals`` move the window (e.g. ``--after 20 --intervals 6``: the
first seconds after start-up, where the first decisions' transitions fall).

Usage: ``python benchmarks/probe_steady_writes.py [--policies 1000]`` (about 8 minutes at 1,000).
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import bench_operator as bo
from benchstack import POLICIES, start_stack


def flat(d: object, pre: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(flat(v, f"{pre}.{k}"))
    elif isinstance(d, list):
        for i, v in enumerate(d):
            key = v.get("type", i) if isinstance(v, dict) else i
            out.update(flat(v, f"{pre}[{key}]"))
    else:
        out[pre] = d
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policies", type=int, default=1000)
    ap.add_argument("--after", type=float, default=bo.STEADY_AFTER_S)
    ap.add_argument("--intervals", type=int, default=bo.STEADY_INTERVALS)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="qscale-steady-"))
    st = start_stack(args.policies, work, bo.policy, lambda _n: bo.BASE_RPS, pods_per_deployment=4)
    try:
        time.sleep(20)  # a few scrapes, as the benchmark waits
        t = st.start_operator()
        print("start-up", bo.wait_started(st, t), flush=True)
        time.sleep(max(0.0, t + args.after - time.time()))
        before = {p["metadata"]["name"]: flat(p.get("status")) for p in st.api.list(POLICIES)}
        print(f"steady state from {args.after:g} s", bo.steady(st, args.intervals), flush=True)
        after = {p["metadata"]["name"]: flat(p.get("status")) for p in st.api.list(POLICIES)}
        moved: collections.Counter[str] = collections.Counter()
        for name, f in after.items():
            old = before.get(name, {})
            moved.update(k for k in set(f) | set(old) if f.get(k) != old.get(k))
        print("status fields that moved (policies):", dict(moved.most_common(12)) or "none")
    finally:
        st.close(keep=work / "logs")


if __name__ == "__main__":
    main()
