"""The decision log: every decision as one JSON line, bounded, rotated, never in the tick's way.

The tick hands its records to :meth:`DecisionLog.write`, which only puts them in a bounded
queue; a thread writes them to ``QSCALE_DECISION_LOG`` (a file on a volume), rotating it at
``QSCALE_DECISION_LOG_MAX_MB`` into ``<path>.1`` .. ``<path>.<QSCALE_DECISION_LOG_FILES>``.
A full queue drops records (``qscale_decision_log_dropped_total``); a disk that is full or a
file that cannot be written drops the batch at hand and counts it
(``qscale_decision_log_errors_total{error}``, ``qscale_decision_log_degraded`` 1 until a write
succeeds again): scaling goes on either way. The file is opened for appending, so the log
survives an operator restart.

One record per policy decided (every mode but Off), written after the tick's writes
(:func:`record`): when, which policy and target, the model (name, sha256, feature spec), the
network's input (``features``, in :data:`qscale.features.FEATURE_NAMES` order) and Q-values
when the model was asked, the action it chose and what the shield made of it (``proposal`` ->
``desired``, ``reason``), who decided (``model``, ``hpa`` or ``hold``), the count before and
whether a write landed, and what the tick observed (``obs``: request rate, p95, CPU, ready
pods, metric age), with what the policy asked for (``slo_s``, ``interval_s``, ``bounds``, the
``shield`` settings in force) so that ``qscale replay-log`` can replay another model on it. The
outcome of a decision is the ``obs`` of the next record of the same policy (``prev_ts`` links
them): what the service did in the interval that followed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import queue
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["DecisionLog", "record"]

_STOP = object()


def _num(x: float | None, digits: int = 6) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), digits)


def record(
    row: Any, replicas_before: int, applied: bool, prev_ts: float | None, now: float
) -> dict[str, Any]:
    """One decision of a :class:`qscale.operator.rows.Row` as the log keeps it."""
    v, p, o, m = row.verdict, row.policy, row.obs, row.model
    by = "hpa" if v.by_fallback else ("model" if v.model_decided else "hold")
    return {
        "ts": round(now, 3),
        "time": datetime.fromtimestamp(now, UTC).isoformat().replace("+00:00", "Z"),
        "namespace": p.namespace,
        "policy": p.name,
        "uid": p.uid,
        "target": row.spec.target,
        "mode": row.spec.mode,
        "model": None if m is None else {"name": m.name, "sha256": m.digest, "spec": m.spec_hash},
        "features": None if row.features is None else [_num(x) for x in row.features],
        "q_values": v.q_values,
        "action": v.action,
        "proposal": v.proposal,
        "desired": v.desired,
        "reason": v.reason,
        "by": by,
        "replicas": replicas_before,
        "applied": applied,
        "kill_switch": None if row.kill is None else row.kill.mode,
        "arm": row.arm,
        "slo_s": row.spec.slo_s,
        "slo_priority": row.spec.slo_priority,
        "interval_s": row.spec.interval_s,
        "bounds": [row.spec.min_replicas, row.spec.max_replicas],
        "shield": None if row.shield_config is None else dataclasses.asdict(row.shield_config),
        "obs": {
            "rate_rps": _num(o.rate_now),
            "p95_s": _num(o.p95_s),
            "cpu_utilization": _num(o.cpu_utilization) if o.has_cpu else None,
            "ready": row.target.ready,
            "age_s": _num(o.age_s, 3),
            "capacity_rps": _num(row.spec.capacity_rps or row.capacity_estimate),
            "capacity_estimated": row.spec.capacity_rps is None,
        },
        "prev_ts": prev_ts,
    }


class DecisionLog:
    """A bounded, rotated JSONL file written by its own thread (see the module docstring)."""

    def __init__(
        self,
        path: str | os.PathLike,
        max_bytes: int,
        files: int,
        metrics: Any = None,
        queue_size: int = 20_000,
    ) -> None:
        if max_bytes < 1024 or files < 1:
            raise ValueError("the decision log needs max_bytes >= 1024 and files >= 1")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.files = files
        self.metrics = metrics
        self.written = 0
        self.dropped = 0
        self.errors = 0
        self._q: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._fh: Any = None
        self._thread = threading.Thread(target=self._run, name="qscale-decision-log", daemon=True)
        self._thread.start()

    @classmethod
    def from_settings(cls, settings: Any, metrics: Any) -> DecisionLog | None:
        """The log ``QSCALE_DECISION_LOG`` asks for (``None``: no log)."""
        if not settings.decision_log:
            return None
        size = int(settings.decision_log_max_mb * 2**20)
        return cls(settings.decision_log, size, settings.decision_log_files, metrics)

    def write_rows(self, rows: Sequence[Any], now: float) -> None:
        """Every row decided this tick (not in mode Off), each linked to its policy's last."""
        out = []
        for r in rows:
            if r.spec.mode == "Off":
                continue
            applied = bool(r.last_action and r.last_action.get("applied"))
            out.append(record(r, r.before, applied, r.runtime.logged_ts, now))
            r.runtime.logged_ts = round(now, 3)
        self.write(out)

    def write(self, records: Sequence[dict[str, Any]]) -> None:
        """Queue ``records``; never blocks (a full queue drops them, and counts them)."""
        for r in records:
            try:
                self._q.put_nowait(r)
            except queue.Full:
                self.dropped += 1
                if self.metrics is not None:
                    self.metrics.log_dropped.inc()

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, then stop."""
        with contextlib.suppress(queue.Full):
            self._q.put(_STOP, timeout=timeout)
        self._thread.join(timeout)

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until everything queued so far is written (or dropped), for tests and close."""
        done = threading.Event()
        with contextlib.suppress(queue.Full):
            self._q.put(done, timeout=timeout)
            done.wait(timeout)

    # --- the writer thread ------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            item = self._q.get()
            batch = [item]
            while len(batch) < 1000:
                try:
                    batch.append(self._q.get_nowait())
                except queue.Empty:
                    break
            lines = [b for b in batch if isinstance(b, dict)]
            if lines:
                self._write(lines)
            for b in batch:
                if isinstance(b, threading.Event):
                    b.set()
            if any(b is _STOP for b in batch):
                self._close_file()
                return

    def _write(self, records: list[dict[str, Any]]) -> None:
        lines = [(json.dumps(r, separators=(",", ":")) + "\n").encode() for r in records]
        try:
            if self._fh is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fh = open(self.path, "ab")  # noqa: SIM115 - kept open between batches
            size = self._fh.tell()
            chunk: list[bytes] = []
            for line in lines:  # rotate between lines, so no file outgrows its bound
                if size > 0 and size + len(line) > self.max_bytes:
                    self._fh.write(b"".join(chunk))
                    chunk, size = [], 0
                    self._rotate()
                chunk.append(line)
                size += len(line)
            self._fh.write(b"".join(chunk))
            self._fh.flush()
        except OSError as e:
            self.errors += 1
            self._close_file()
            if self.metrics is not None:
                self.metrics.log_errors.labels(_errno_name(e)).inc()
                self.metrics.log_degraded.set(1)
            return
        self.written += len(records)
        if self.metrics is not None:
            self.metrics.log_records.inc(len(records))
            self.metrics.log_degraded.set(0)

    def _rotate(self) -> None:
        self._close_file()
        for i in range(self.files - 1, 0, -1):
            src = self.path.with_name(f"{self.path.name}.{i}")
            if src.exists():
                os.replace(src, self.path.with_name(f"{self.path.name}.{i + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self._fh = open(self.path, "ab")  # noqa: SIM115

    def _close_file(self) -> None:
        if self._fh is not None:
            with contextlib.suppress(OSError):
                self._fh.close()
            self._fh = None


def _errno_name(e: OSError) -> str:
    import errno

    return errno.errorcode.get(e.errno or 0, "OSError")
