"""Kubernetes Events about AutoscalePolicies, posted in the background (never in the tick's way)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from qscale.operator.kube import ApiError, Kube, cancel_all
from qscale.operator.status import iso

__all__ = ["Event", "EventPoster"]

log = logging.getLogger("qscale.operator")
COMPONENT = "qscale-operator"


@dataclass(frozen=True)
class Event:
    namespace: str
    name: str
    uid: str
    type: str
    """``Normal`` or ``Warning``."""
    reason: str
    message: str
    time: float
    kind: str = "AutoscalePolicy"
    """The kind of the object it is about (``AutoscalePolicy`` or ``ModelRollout``)."""


def body(e: Event, instance: str) -> dict[str, Any]:
    t = iso(e.time)
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{e.name}.", "namespace": e.namespace},
        "involvedObject": {
            "apiVersion": "qscale.io/v1alpha1",
            "kind": e.kind,
            "name": e.name,
            "namespace": e.namespace,
            "uid": e.uid,
        },
        "type": e.type,
        "reason": e.reason,
        "message": e.message[:1024],
        "source": {"component": COMPONENT},
        "reportingComponent": "qscale.io/operator",
        "reportingInstance": instance[:128],
        "firstTimestamp": t,
        "lastTimestamp": t,
        "count": 1,
    }


class EventPoster:
    """A bounded queue drained by a few tasks; when the API is down, events are dropped (the
    status says the same thing and is retried)."""

    def __init__(
        self, kube: Kube, instance: str, on_write=None, workers: int = 4, maxsize: int = 10000
    ) -> None:
        self.kube = kube
        self.instance = instance
        self.queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=maxsize)
        self._on_write = on_write
        self._n = workers
        self._tasks: list[asyncio.Task] = []
        self._open = asyncio.Event()
        self._open.set()

    def hold(self) -> None:
        """Post nothing until :meth:`release`: a tick's scale and status writes go first."""
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    def post(self, e: Event) -> None:
        log.info("%s/%s %s %s: %s", e.namespace, e.name, e.type, e.reason, e.message)
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait(e)

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._work(), name=f"events {i}") for i in range(self._n)
        ]

    async def drain(self, timeout_s: float = 5.0) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.queue.join(), timeout_s)

    async def stop(self) -> None:
        await cancel_all(self._tasks)

    async def _work(self) -> None:
        while True:
            e = await self.queue.get()
            await self._open.wait()
            try:
                await self.kube.post(
                    f"/api/v1/namespaces/{e.namespace}/events", body(e, self.instance)
                )
                if self._on_write:
                    self._on_write("event", "ok")
            except ApiError as err:
                if self._on_write:
                    self._on_write("event", "error")
                log.debug("event %s/%s %s not posted: %s", e.namespace, e.name, e.reason, err)
            finally:
                self.queue.task_done()
