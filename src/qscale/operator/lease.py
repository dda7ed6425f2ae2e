"""Leader election on a ``coordination.k8s.io/v1`` Lease: of several replicas, one acts.

The usual client-go algorithm, small: the holder renews every ``duration / 3``; a Lease not
renewed for ``duration`` may be taken over (an update carrying the resourceVersion read, so two
candidates cannot both win). A leader that cannot renew for ``duration`` steps down by itself
*before* another replica may take over (its deadline is measured from its last successful
renewal, the others' from when they saw it), so two replicas never act at once. Every replica
keeps its caches warm; only the leader ticks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from qscale.operator.kube import ApiError, Kube

__all__ = ["LeaderElector"]

log = logging.getLogger("qscale.operator")


def _micro(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(s: str | None) -> float | None:
    if not s:
        return None
    try:
        return datetime.strptime(s.replace("Z", "+0000"), "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()
    except ValueError:
        try:
            return datetime.strptime(s.replace("Z", "+0000"), "%Y-%m-%dT%H:%M:%S%z").timestamp()
        except ValueError:
            return None


class LeaderElector:
    def __init__(
        self,
        kube: Kube,
        namespace: str,
        name: str,
        identity: str,
        duration_s: float = 15.0,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self.kube = kube
        self.path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
        self.name = name
        self.identity = identity
        self.duration_s = duration_s
        self.leader = False
        self._renewed = 0.0
        self._observed: tuple[str, float] | None = None
        """``(renewTime string, monotonic time we first saw it)`` of another holder."""
        self._on_change = on_change

    def _set(self, leader: bool) -> None:
        if leader != self.leader:
            self.leader = leader
            log.info(
                "%s %s the lease %s",
                self.identity,
                "holds" if leader else "does not hold",
                self.name,
            )
            if self._on_change:
                self._on_change(leader)

    def _spec(self, transitions: int, acquire: float | None = None) -> dict:
        now = time.time()
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, round(self.duration_s)),
            "acquireTime": _micro(acquire or now),
            "renewTime": _micro(now),
            "leaseTransitions": transitions,
        }

    async def try_once(self) -> bool:
        """One round of the election; returns whether this replica leads now."""
        mono = time.monotonic()
        try:
            lease = await self.kube.get(f"{self.path}/{self.name}")
        except ApiError as e:
            if e.status == 404:
                try:
                    await self.kube.post(
                        self.path,
                        {
                            "apiVersion": "coordination.k8s.io/v1",
                            "kind": "Lease",
                            "metadata": {"name": self.name},
                            "spec": self._spec(0),
                        },
                    )
                    self._renewed = mono
                    self._set(True)
                except ApiError as e2:
                    log.debug("lease create: %s", e2)
                    self._set(False)
                return self.leader
            log.debug("lease get: %s", e)
            self._expire(mono)
            return self.leader
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        renew = spec.get("renewTime") or ""
        duration = float(spec.get("leaseDurationSeconds") or self.duration_s)
        transitions = int(spec.get("leaseTransitions") or 0)
        if holder == self.identity:
            acquire = _parse(spec.get("acquireTime"))
            new_spec = self._spec(transitions, acquire)
        else:
            if self._observed is None or self._observed[0] != f"{holder}/{renew}":
                self._observed = (f"{holder}/{renew}", mono)
            if holder and mono - self._observed[1] < duration:
                self._set(False)
                return False
            new_spec = self._spec(transitions + 1)
        lease["spec"] = new_spec
        try:
            await self.kube.put(f"{self.path}/{self.name}", lease)
            self._renewed = mono
            self._set(True)
        except ApiError as e:
            log.debug("lease update: %s", e)
            if e.status == 409:
                self._set(False)
            else:
                self._expire(mono)
        return self.leader

    def _expire(self, mono: float) -> None:
        # Cannot talk to the API server: keep leading only while our last renewal is fresh,
        # with a margin, so that we stop before anyone else may start.
        if self.leader and mono - self._renewed > self.duration_s * 0.8:
            self._set(False)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.try_once()
            period = self.duration_s / 3 if self.leader else self.duration_s / 5
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=period)

    async def release(self) -> None:
        """Give the Lease up on a clean shutdown so another replica takes over at once."""
        if not self.leader:
            return
        try:
            lease = await self.kube.get(f"{self.path}/{self.name}")
            if (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                lease["spec"]["holderIdentity"] = ""
                lease["spec"]["renewTime"] = _micro(time.time() - self.duration_s * 2)
                await self.kube.put(f"{self.path}/{self.name}", lease)
        except ApiError as e:
            log.debug("lease release: %s", e)
        self._set(False)
