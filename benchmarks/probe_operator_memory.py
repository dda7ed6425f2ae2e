"""Where the operator's memory goes: ``qscale operator`` on the bench stack under tracemalloc.

The stack of ``benchstack.py`` at ``--policies`` (the soak's loads, no faults), the operator
started with ``tracemalloc_site`` on its ``PYTHONPATH``: a snapshot every ``--every`` seconds
into ``--out``; RSS printed every 30 s. Then ``--compare A B`` prints what grew between two
snapshots, by line (``--key traceback`` for the call stacks). Tracing slows the operator
(about 2-3x at 300 policies), so its figures are for *where*, not *how much*.

Usage: ``python benchmarks/probe_operator_memory.py --policies 300 --minutes 15 --out DIR``;
``python benchmarks/probe_operator_memory.py --compare DIR/snap-P-001.tm DIR/snap-P-003.tm``.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from pathlib import Path

from bench_soak import load_schedule
from benchstack import policy_body, start_stack

SITE = Path(__file__).resolve().parent / "tracemalloc_site"


def compare(a: str, b: str, key: str, top: int) -> None:
    stats = tracemalloc.Snapshot.load(b).compare_to(tracemalloc.Snapshot.load(a), key)
    print(f"grew {sum(s.size_diff for s in stats) / 2**20:.2f} MB")
    for s in stats[:top]:
        lines = s.traceback.format()
        print(f"{s.size_diff / 1024:9.1f} KiB {s.count_diff:7d} blocks  {lines[-1].strip()}")
        if key == "traceback":
            print("\n".join("      " + ln for ln in lines[-16:]))


def probe(n: int, minutes: float, out: Path, every: float) -> None:
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    work.mkdir(exist_ok=True)
    st = start_stack(
        n,
        work,
        lambda nm: policy_body(nm, 15.0, 1, 10),
        lambda nm: load_schedule(nm, minutes * 60 + 900, 0),
        pods_per_deployment=10,
    )
    try:
        time.sleep(20)
        env = {"PYTHONPATH": str(SITE), "QSCALE_TM_DIR": str(out), "QSCALE_TM_EVERY": str(every)}
        st.start_operator(env)
        st.wait_metric("qscale_startup_written_seconds", lambda v: v > 0, 600)
        t0 = time.time()
        while time.time() < t0 + minutes * 60:
            time.sleep(30)
            assert st.op is not None and st.op.pid is not None
            status = Path(f"/proc/{st.op.pid}/status").read_text().splitlines()
            rss = next(int(x.split()[1]) for x in status if x.startswith("VmRSS"))
            print(f"{time.time() - t0:6.0f} s  RSS {rss / 1024:.1f} MB", flush=True)
    finally:
        st.close(keep=out / "logs")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policies", type=int, default=300)
    ap.add_argument("--minutes", type=float, default=15.0)
    ap.add_argument("--every", type=float, default=150.0, help="seconds between snapshots")
    ap.add_argument("--out", type=Path, default=Path("out/probe_operator_memory"))
    ap.add_argument("--compare", nargs=2, metavar=("A", "B"))
    ap.add_argument("--key", default="lineno", choices=["lineno", "traceback", "filename"])
    ap.add_argument("--top", type=int, default=15)
    a = ap.parse_args()
    if a.compare:
        compare(*a.compare, a.key, a.top)
    else:
        probe(a.policies, a.minutes, a.out, a.every)


if __name__ == "__main__":
    main()
