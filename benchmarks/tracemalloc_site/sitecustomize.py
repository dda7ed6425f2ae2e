"""Put on ``PYTHONPATH`` of a process (with ``QSCALE_TM_DIR`` set) to trace its allocations:
a thread dumps a tracemalloc snapshot every ``QSCALE_TM_EVERY`` seconds (default 120) to
``$QSCALE_TM_DIR/snap-<pid>-<i>.tm`` and appends RSS and the traced total to ``log-<pid>.jsonl``.
Used by ``probe_operator_memory.py``; compare two snapshots with ``tracemalloc.Snapshot.load``
and ``compare_to`` (that script's ``--compare``)."""

import json
import os
import threading
import time
import tracemalloc

_DIR = os.environ.get("QSCALE_TM_DIR")


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _loop(every: float) -> None:
    t0 = time.time()
    for i in range(10**9):
        time.sleep(every)
        traced, _ = tracemalloc.get_traced_memory()
        tracemalloc.take_snapshot().dump(f"{_DIR}/snap-{os.getpid()}-{i:03d}.tm")
        row = {"i": i, "t": time.time() - t0, "rss_mb": _rss_mb(), "traced_mb": traced / 2**20}
        with open(f"{_DIR}/log-{os.getpid()}.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")


if _DIR:
    tracemalloc.start(int(os.environ.get("QSCALE_TM_FRAMES", "8")))
    every = float(os.environ.get("QSCALE_TM_EVERY", "120"))
    threading.Thread(target=_loop, args=(every,), daemon=True, name="tracemalloc-dump").start()
