"""Status patches, written behind the tick's scale writes and never in their way.

A tick writes every scale it owes first; only then does it hand each policy's new status to
this writer (computed after the scale write, so a status never claims a count that did not
land) and return. A few workers patch the statuses, ``write_concurrency`` at a time, while the
operator goes on: a backlog of statuses (1,000 of them on the first tick) never delays the next
tick's scale writes. The rules:

* **one write per policy at a time**: a policy's next status waits for the one in flight;
* **the newest wins**: a status not yet sent when a later tick hands over a newer one for the
  same policy is replaced by it (the newer one was computed from it, so nothing is lost), and
  counts as written when the newer one is;
* **scale writes first**: from a tick's start to its last scale write
  (:meth:`StatusWriter.hold`), the patches in flight finish and no new one starts until
  :meth:`StatusWriter.release`;
* the merge patch is taken at send time against the status as last written
  (:attr:`Runtime.written`), so a patch that failed is retried, whole, by the policy's next one.

Each tick's statuses form a :class:`TickBatch`; when the last of them is written the batch
reports the time from the tick's start to that write (``on_done``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from qscale.operator.kube import ApiError, Kube, cancel_all
from qscale.operator.rows import IndexedPolicy, Runtime
from qscale.operator.status import json_copy, merge_patch

__all__ = ["StatusJob", "StatusWriter", "TickBatch"]

log = logging.getLogger("qscale.operator")

GROUP, VERSION, PLURAL = "qscale.io", "v1alpha1", "autoscalepolicies"


class TickBatch:
    """The statuses one tick handed over; done when each is written (or needed no write)."""

    def __init__(self, t0: float, on_done: Callable[[TickBatch], None] | None = None) -> None:
        self.t0 = t0
        """``time.perf_counter()`` at the tick's start."""
        self.on_done = on_done
        self.pending = 0
        self.writes = 0
        """Status patches that succeeded for this tick's statuses."""
        self.errors = 0
        self.last_write_s: float | None = None
        """Tick start to its last status patch done (``None``: no patch was needed)."""
        self.done_s: float | None = None
        """Tick start to every status of the tick in the API (``None``: not yet)."""
        self._sealed = False

    def add(self) -> None:
        self.pending += 1

    def seal(self) -> None:
        """Every status of the tick is handed over (done now, if none needed writing)."""
        self._sealed = True
        self._maybe_done()

    def finish(self, wrote: bool, ok: bool, own: bool = True) -> None:
        """One status is done: ``wrote``: by a patch (``ok``: that succeeded); ``own``: the
        patch was this tick's status, not a later tick's that replaced it."""
        now = time.perf_counter() - self.t0
        if wrote:
            self.last_write_s = now
            if own:
                self.writes += int(ok)
                self.errors += int(not ok)
        self.pending -= 1
        self._maybe_done()

    def _maybe_done(self) -> None:
        if self._sealed and self.pending == 0 and self.done_s is None:
            self.done_s = time.perf_counter() - self.t0
            if self.on_done is not None:
                self.on_done(self)


@dataclass
class StatusJob:
    """One policy's status to write, and the ticks waiting on it (the newest first)."""

    policy: IndexedPolicy
    runtime: Runtime
    status: dict[str, Any]
    batches: list[TickBatch] = field(default_factory=list)


class StatusWriter:
    def __init__(
        self,
        kube: Kube,
        concurrency: int = 16,
        on_write: Callable[[str, str], None] | None = None,
    ) -> None:
        self.kube = kube
        self._n = concurrency
        self._on_write = on_write
        self._pending: dict[str, StatusJob] = {}
        """Per policy uid: the newest status not yet sent."""
        self._inflight: set[str] = set()
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._open = asyncio.Event()
        self._open.set()
        self._tasks: list[asyncio.Task] = []
        self._idle = asyncio.Event()
        self._idle.set()

    # --- the tick's side -------------------------------------------------------------------

    def hold(self) -> None:
        """Start no patch until :meth:`release` (the tick writes its scales)."""
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    def submit(self, policy: IndexedPolicy, rt: Runtime, status: dict[str, Any], b: TickBatch):
        """Queue ``status`` for ``policy`` (replacing one of an earlier tick not yet sent)."""
        b.add()
        self._idle.clear()
        old = self._pending.get(policy.uid)
        if old is not None:
            old.policy, old.runtime, old.status = policy, rt, status
            old.batches.insert(0, b)
            return
        self._pending[policy.uid] = StatusJob(policy, rt, status, [b])
        if policy.uid not in self._inflight:
            self._queue.put_nowait(policy.uid)

    def clear(self) -> None:
        """Drop every status not yet sent (leadership lost: the next leader writes its own)."""
        for job in self._pending.values():
            for b in job.batches:
                b.finish(False, False)
        self._pending.clear()
        self._check_idle()

    @property
    def backlog(self) -> int:
        """Policies with a status waiting to be written or being written."""
        return len(self._pending.keys() | self._inflight)

    # --- the workers -----------------------------------------------------------------------

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._work(), name=f"status writer {i}") for i in range(self._n)
        ]

    async def drain(self, timeout_s: float = 5.0) -> bool:
        """Wait until every status handed over is written (or ``timeout_s``); True if so."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
            return True
        except TimeoutError:
            return False

    async def stop(self) -> None:
        await cancel_all(self._tasks)
        self._tasks = []

    async def run_pending(self) -> None:
        """Write everything queued, in this task (tests, and writers that were not started)."""
        while not self._queue.empty():
            await self._one(self._queue.get_nowait())

    async def _work(self) -> None:
        while True:
            uid = await self._queue.get()
            await self._open.wait()
            await self._one(uid)

    async def _one(self, uid: str) -> None:
        if uid in self._inflight:
            return  # the write in flight takes this one up when it is done
        self._inflight.add(uid)
        try:
            while (job := self._pending.pop(uid, None)) is not None:
                await self._write(job)
                if uid in self._pending:
                    await self._open.wait()
        finally:
            self._inflight.discard(uid)
            self._check_idle()

    def _check_idle(self) -> None:
        if not self._pending and not self._inflight:
            self._idle.set()

    async def _write(self, job: StatusJob) -> None:
        p, rt = job.policy, job.runtime
        patch = merge_patch(rt.written, job.status)
        ok = True
        if patch is not None:
            path = f"/apis/{GROUP}/{VERSION}/namespaces/{p.namespace}/{PLURAL}/{p.name}/status"
            try:
                await self.kube.patch_merge(path, {"status": patch})
                rt.written = json_copy(job.status)
            except ApiError as e:
                ok = False
                if e.status != 404:
                    log.warning("status of %s/%s not written: %s", p.namespace, p.name, e)
            except Exception:  # never lose the worker
                ok = False
                log.exception("status of %s/%s not written", p.namespace, p.name)
            if self._on_write:
                self._on_write("status", "ok" if ok else "error")
        for i, b in enumerate(job.batches):
            b.finish(patch is not None, ok, own=i == 0)
