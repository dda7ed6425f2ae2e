"""What one AutoscalePolicy watch event costs the operator: ``IndexedPolicy.from_body``.

Most watch events at 1,000 policies are the operator's own status writes (18/s in the soak):
the spec is unchanged, so its parse is reused while the object's generation stays; and most
policies share the default PromQL templates, whose check is remembered. A real
status to copy comes from the Engine over the unit tests' fakes (the shipped model, 8 ticks of
rising load on one policy). Times are the best of 3 rounds of ``--n`` calls, one thread.

Usage: ``OMP_NUM_THREADS=1 python benchmarks/bench_policy_events.py [--n 3000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import sys
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "unit"))

from opfakes import SPEC, T0, world  # noqa: E402

from qscale.operator.promql import check_template  # noqa: E402
from qscale.operator.rows import IndexedPolicy  # noqa: E402
from qscale.operator.spec import parse_spec  # noqa: E402
from qscale.operator.status import json_copy  # noqa: E402
from qscale.policy.default import default_model_path  # noqa: E402


async def a_status() -> dict:
    w = world(default_model_path())
    w.deployment("a", "web", 3)
    w.policy("a", "p", SPEC)
    for k in range(8):
        w.prom.set("a", "web", cpu=0.5 + 0.05 * k, rate=100 + 10 * k)
        await w.tick(T0 + 15 * k)
    return w.kube.status[("a", "p")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=3000)
    n = ap.parse_args().n
    import torch

    torch.set_num_threads(1)
    status = asyncio.run(a_status())
    meta = {"namespace": "a", "name": "p", "uid": "u1", "generation": 1}
    body = {"metadata": meta, "spec": SPEC, "status": status}
    prev = IndexedPolicy.from_body(body)

    def cold() -> None:
        check_template.cache_clear()
        parse_spec(SPEC)

    cases = [
        ("parse_spec, templates checked", cold),
        ("parse_spec, templates remembered", lambda: parse_spec(SPEC)),
        ("from_body, spec parsed", lambda: IndexedPolicy.from_body(body)),
        ("from_body, generation unchanged", lambda: IndexedPolicy.from_body(body, prev)),
        ("copy.deepcopy(status)", lambda: copy.deepcopy(status)),
        ("json_copy(status)", lambda: json_copy(status)),
    ]
    for name, f in cases:
        best = min(timeit.timeit(f, number=n) for _ in range(3)) / n
        print(f"{name:34} {best * 1e6:8.1f} us")


if __name__ == "__main__":
    main()
