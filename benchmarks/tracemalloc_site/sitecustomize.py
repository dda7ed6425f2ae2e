"""Put on ``PYTHONPATH`` of a process (with ``QSCALE_TM_DIR`` set) to look at its memory from
inside:

* ``QSCALE_TM_EVERY`` set: trace its allocations; a thread dumps a tracemalloc snapshot every
  that many seconds to ``$QSCALE_TM_DIR/snap-<pid>-<i>.tm`` and appends RSS and the traced
  total to ``log-<pid>.jsonl``;
* ``QSCALE_TM_PEAKS`` set (with ``QSCALE_TM_EVERY``): after ``QSCALE_TM_WARMUP`` seconds
  (120), a thread reads the traced total every 50 ms and dumps a snapshot each time it passes
  its highest so far by 1 MB (``peak-<pid>-<i>.tm``) or falls below its lowest
  (``low-<pid>-<i>.tm``), that many of each at most, and logs the total every second to
  ``traced-<pid>.jsonl``: what a tick holds at its high-water mark beyond what stays;
* ``QSCALE_TRIM_EVERY`` set: a thread calls glibc's ``malloc_trim(0)`` every that many seconds
  and appends RSS (and its anonymous part) before and after to ``trim-<pid>.jsonl``;
* ``QSCALE_MEM_EVERY`` set: a thread appends, every that many seconds, RSS, glibc's
  ``mallinfo2()`` (bytes in use, free inside the heap, in mmapped blocks) and Python's object
  arenas (``sys._debugmallocstats``) to ``mem-<pid>.jsonl``: which allocator holds the
  growth.

Used by ``probe_operator_memory.py``; compare two snapshots with ``tracemalloc.Snapshot.load``
and ``compare_to`` (that script's ``--compare``)."""

import ctypes
import json
import os
import threading
import time
import tracemalloc

_DIR = os.environ.get("QSCALE_TM_DIR")


def _status() -> dict:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key = line.split(":")[0]
            if key in ("VmRSS", "RssAnon", "RssFile"):
                out[key] = int(line.split()[1]) / 1024
    return out


def _rss_mb() -> float:
    return _status().get("VmRSS", float("nan"))


def _append(kind: str, row: dict) -> None:
    with open(f"{_DIR}/{kind}-{os.getpid()}.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")


def _loop(every: float) -> None:
    t0 = time.time()
    for i in range(10**9):
        time.sleep(every)
        traced, _ = tracemalloc.get_traced_memory()
        tracemalloc.take_snapshot().dump(f"{_DIR}/snap-{os.getpid()}-{i:03d}.tm")
        row = {"i": i, "t": time.time() - t0, "rss_mb": _rss_mb(), "traced_mb": traced / 2**20}
        _append("log", row)


def _peak_loop(limit: int, warmup: float) -> None:
    t0 = time.time()
    time.sleep(warmup)
    hi = lo = tracemalloc.get_traced_memory()[0]
    n_hi = n_lo = 0
    last_log = 0.0
    while n_hi < limit or n_lo < limit:
        time.sleep(0.05)
        cur = tracemalloc.get_traced_memory()[0]
        now = time.time() - t0
        if now - last_log >= 1.0:
            _append("traced", {"t": round(now, 2), "traced_mb": round(cur / 2**20, 2)})
            last_log = now
        kind = None
        if cur > hi + 2**20 and n_hi < limit:
            kind, n_hi, hi = "peak", n_hi + 1, cur
        elif cur < lo and n_lo < limit:
            kind, n_lo, lo = "low", n_lo + 1, cur
        if kind is not None:
            i = n_hi if kind == "peak" else n_lo
            tracemalloc.take_snapshot().dump(f"{_DIR}/{kind}-{os.getpid()}-{i:03d}.tm")
            row = {"kind": kind, "i": i, "t": round(now, 2), "traced_mb": cur / 2**20}
            _append("log", row)
        hi, lo = max(hi, cur), min(lo, cur)


def _trim_loop(every: float) -> None:
    libc = ctypes.CDLL("libc.so.6")
    t0 = time.time()
    while True:
        time.sleep(every)
        before = _status()
        released = libc.malloc_trim(0)
        row = {"t": round(time.time() - t0, 1), "released": released, "before": before}
        row["after"] = _status()
        _append("trim", row)


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _pymalloc() -> dict:
    """Python's object allocator, parsed from ``sys._debugmallocstats`` (it writes to the C
    stderr, which is pointed at a file for the call)."""
    import sys
    import tempfile

    with tempfile.TemporaryFile() as tmp:
        saved = os.dup(2)
        try:
            os.dup2(tmp.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        text = tmp.read().decode(errors="replace")
    out = {}
    for line in text.splitlines():
        for key, name in (
            ("# arenas allocated current", "arenas"),
            ("# bytes in allocated blocks", "allocated_mb"),
            ("# bytes in available blocks", "available_mb"),
            ("# bytes lost to pool headers", "pool_headers_mb"),
            ("# bytes lost to quantization", "quantization_mb"),
        ):
            if line.startswith(key):
                v = int(line.split("=")[1].replace(",", "").strip())
                out[name] = v if name == "arenas" else round(v / 2**20, 2)
    return out


def _mem_loop(every: float) -> None:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _Mallinfo2
    t0 = time.time()
    while True:
        time.sleep(every)
        mi = libc.mallinfo2()
        row = {"t": round(time.time() - t0, 1), **_status()}
        row["malloc_heap_mb"] = round(mi.arena / 2**20, 2)
        row["malloc_in_use_mb"] = round(mi.uordblks / 2**20, 2)
        row["malloc_free_mb"] = round(mi.fordblks / 2**20, 2)
        row["malloc_mmapped_mb"] = round(mi.hblkhd / 2**20, 2)
        row["malloc_mmapped_blocks"] = mi.hblks
        row["pymalloc"] = _pymalloc()
        _append("mem", row)


if _DIR and os.environ.get("QSCALE_TM_EVERY"):
    tracemalloc.start(int(os.environ.get("QSCALE_TM_FRAMES", "8")))
    every = float(os.environ["QSCALE_TM_EVERY"])
    threading.Thread(target=_loop, args=(every,), daemon=True, name="tracemalloc-dump").start()
    if os.environ.get("QSCALE_TM_PEAKS"):
        args = (int(os.environ["QSCALE_TM_PEAKS"]), float(os.environ.get("QSCALE_TM_WARMUP", 120)))
        threading.Thread(target=_peak_loop, args=args, daemon=True, name="tm-peaks").start()
if _DIR and os.environ.get("QSCALE_TRIM_EVERY"):
    every = float(os.environ["QSCALE_TRIM_EVERY"])
    threading.Thread(target=_trim_loop, args=(every,), daemon=True, name="malloc-trim").start()
if _DIR and os.environ.get("QSCALE_MEM_EVERY"):
    every = float(os.environ["QSCALE_MEM_EVERY"])
    threading.Thread(target=_mem_loop, args=(every,), daemon=True, name="mem-stats").start()
