"""Where the operator's memory goes: ``qscale operator`` on the bench stack under tracemalloc.

The stack of ``benchstack.py`` at ``--policies`` (the soak's loads, no faults), the operator
started with ``tracemalloc_site`` on its ``PYTHONPATH``: a snapshot every ``--every`` seconds
into ``--out``; RSS printed every 30 s. Then ``--compare A B`` prints what grew between two
snapshots, by line (``--key traceback`` for the call stacks). Tracing slows the operator
(about 2-3x at 300 policies), so its figures are for *where*, not *how much*. ``--every 0``
runs the operator untraced: RSS, the status backlog and the writes (scale / status / Event)
every 30 s, and at the end the ticks that wrote, to their last scale and last status write
(the operator's log), for how much.

Usage: ``python benchmarks/probe_operator_memory.py --policies 300 --minutes 15 --out DIR``;
``python benchmarks/probe_operator_memory.py --compare DIR/snap-P-001.tm DIR/snap-P-003.tm``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import tracemalloc
from pathlib import Path

from bench_soak import load_schedule
from benchstack import log_text, policy_body, start_stack, tick_lines

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
        st.start_operator(env if every > 0 else None)
        st.wait_metric("qscale_startup_written_seconds", lambda v: v > 0, 600)
        t0 = time.time()
        rows = []
        while time.time() < t0 + minutes * 60:
            time.sleep(30)
            assert st.op is not None and st.op.pid is not None
            row = {"t_s": round(time.time() - t0), "rss_mb": round(st.op.rss_mb(), 1)}
            row["backlog"] = st.metric("qscale_status_backlog")
            for kind in ("scale", "status", "event"):
                row[kind] = st.metric("qscale_api_writes_total", {"kind": kind})
            row["ticks"] = st.metric("qscale_ticks_total")
            rows.append(row)
            print(json.dumps(row), flush=True)
        ticks = [t for t in tick_lines(log_text(st.op)) if t["at"] >= t0]
        summary = {"ticks_that_wrote": len(ticks)}
        for k in ("to_last_scale_ms", "to_last_status_ms", "tick_ms"):
            v = [t[k] for t in ticks if t[k] is not None]
            if v:
                summary[k] = {"median": statistics.median(v), "max": max(v), "n": len(v)}
        summary["rss_first_last_mb"] = (rows[0]["rss_mb"], rows[-1]["rss_mb"]) if rows else None
        print(json.dumps(summary), flush=True)
        (out / "summary.json").write_text(json.dumps({"samples": rows, **summary}, indent=1))
    finally:
        st.close(keep=out / "logs")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policies", type=int, default=300)
    ap.add_argument("--minutes", type=float, default=15.0)
    ap.add_argument(
        "--every", type=float, default=150.0, help="seconds between snapshots (0: untraced)"
    )
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
