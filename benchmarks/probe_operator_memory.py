"""Where the operator's memory goes: ``qscale operator`` on the bench stack under tracemalloc.

The stack of ``benchstack.py`` at ``--policies`` (the soak's loads, no faults), the operator
started with ``tracemalloc_site`` on its ``PYTHONPATH``: a snapshot every ``--every`` seconds
into ``--out``; RSS printed every 30 s. Then ``--compare A B`` prints what grew between two
snapshots, by line (``--key traceback`` for the call stacks). Tracing slows the operator
(about 2-3x at 300 policies), so its figures are for *where*, not *how much*. ``--every 0``
runs the operator untraced: RSS, the status backlog and the writes (scale / status / Event)
every 30 s, and at the end the ticks that wrote, to their last scale and last status write
(the operator's log), for how much. Untraced, each sample also splits RSS into anonymous
and file-backed pages (``/proc/PID/status``), and ``smaps-first.json``/``smaps-last.json``
group the resident memory by mapping (a library's path, ``[heap]``, anonymous regions by
kind), so that growth can be placed: an allocator's memory or a library's code paged in.
``--mem S`` logs from inside the operator, every S seconds, glibc's ``mallinfo2()`` and
Python's object arenas (``mem-PID.jsonl``): which allocator holds it. ``--trim S`` calls
glibc's ``malloc_trim(0)`` inside the operator every S seconds and logs RSS before and after
each call (``trim-PID.jsonl``): what the allocator holds but does not use.

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


def proc_status(pid: int) -> dict[str, float]:
    """RSS and its anonymous / file-backed parts (MB) from ``/proc/PID/status``."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key = line.split(":")[0]
            if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                out[key] = int(line.split()[1]) / 1024
    return out


def _anon_kind(start: int, size: int) -> str:
    """An anonymous mapping by what it most likely is: glibc's per-thread arenas are heaps
    aligned to their 64 MB reservation; Python's object arenas are 1 MB (3.10+); thread stacks
    8 MB; everything else is a large block the allocator mmapped on its own (torch's tensors,
    numpy's arrays, big buffers)."""
    if start % (64 << 20) == 0:
        return "[anon: thread arena]"
    if size == 1 << 20:
        return "[anon: 1 MB (Python arenas)]"
    if size == 8 << 20:
        return "[anon: 8 MB (thread stacks)]"
    return "[anon: other]"


def smaps(pid: int) -> dict[str, float]:
    """Resident MB by mapping: a file's path, ``[heap]`` (the main arena), ``[stack]``, or an
    anonymous region by :func:`_anon_kind`."""
    groups: dict[str, float] = {}
    name, size = "", 0
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            first = line.split()
            if "-" in first[0] and len(first[0].split("-")) == 2 and ":" not in first[0]:
                lo, hi = (int(x, 16) for x in first[0].split("-"))
                size = hi - lo
                name = first[5] if len(first) > 5 else ""
                if not name:
                    name = _anon_kind(lo, size)
            elif first[0] == "Rss:":
                groups[name] = groups.get(name, 0.0) + int(first[1]) / 1024
    return {k: round(v, 2) for k, v in sorted(groups.items(), key=lambda kv: -kv[1])}


def probe(
    n: int,
    minutes: float,
    out: Path,
    every: float,
    trim: float = 0.0,
    mem: float = 0.0,
    extra: dict[str, str] | None = None,
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for old in [*out.glob("smaps-*.json"), *out.glob("mem-*.jsonl"), *out.glob("trim-*.jsonl")]:
        old.unlink()
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
        env = {"PYTHONPATH": str(SITE), "QSCALE_TM_DIR": str(out)}
        if every > 0:
            env["QSCALE_TM_EVERY"] = str(every)
        if trim > 0:
            env["QSCALE_TRIM_EVERY"] = str(trim)
        if mem > 0:
            env["QSCALE_MEM_EVERY"] = str(mem)
        if not (every > 0 or trim > 0 or mem > 0):
            env = {}
        st.start_operator({**env, **(extra or {})} or None)
        st.wait_metric("qscale_startup_written_seconds", lambda v: v > 0, 600)
        t0 = time.time()
        rows = []
        while time.time() < t0 + minutes * 60:
            time.sleep(30)
            assert st.op is not None and st.op.pid is not None
            row = {"t_s": round(time.time() - t0), "rss_mb": round(st.op.rss_mb(), 1)}
            if every <= 0:
                row.update({k: round(v, 1) for k, v in proc_status(st.op.pid).items()})
                maps = smaps(st.op.pid)
                first = out / "smaps-first.json"
                (out / ("smaps-last.json" if first.exists() else first.name)).write_text(
                    json.dumps(maps, indent=1)
                )
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
        if every <= 0 and (out / "smaps-last.json").exists():
            a = json.loads((out / "smaps-first.json").read_text())
            b = json.loads((out / "smaps-last.json").read_text())
            grew = {k: round(b.get(k, 0.0) - a.get(k, 0.0), 2) for k in set(a) | set(b)}
            summary["smaps_grew_mb"] = dict(sorted(grew.items(), key=lambda kv: -kv[1])[:8])
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
    ap.add_argument(
        "--trim", type=float, default=0.0, help="malloc_trim(0) in the operator every S seconds"
    )
    ap.add_argument(
        "--mem", type=float, default=0.0, help="allocator statistics every S seconds (mem-*.jsonl)"
    )
    ap.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE", help="the operator's env"
    )
    ap.add_argument("--out", type=Path, default=Path("out/probe_operator_memory"))
    ap.add_argument("--compare", nargs=2, metavar=("A", "B"))
    ap.add_argument("--key", default="lineno", choices=["lineno", "traceback", "filename"])
    ap.add_argument("--top", type=int, default=15)
    a = ap.parse_args()
    if a.compare:
        compare(*a.compare, a.key, a.top)
    else:
        extra = dict(kv.split("=", 1) for kv in a.env)
        probe(a.policies, a.minutes, a.out, a.every, a.trim, a.mem, extra)


if __name__ == "__main__":
    main()
