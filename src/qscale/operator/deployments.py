"""A watch-fed cache of the Deployments the policies target (an informer, in miniature).

The tick needs every target's ``spec.replicas``, ``status.readyReplicas``, CPU limit/request
ratio and resourceVersion at once; a GET per policy per tick would cost 1,000 calls, so one
list + watch per namespace keeps slim records instead (never whole objects). While a watch is
broken (API server down, a 410) the namespace reads as not synced and its targets as unknown,
so nothing is decided or written on a cache that may be stale; it relists on reconnect: at once
after a 410 Gone, else after a backoff (0.5 s doubling to 10 s, jittered, so the watches of
many namespaces broken by one API server restart do not relist in step).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from qscale.operator.kube import ApiError, Kube, cancel_all

__all__ = ["DeploymentCache", "Target", "cpu_quantity", "target_from"]

log = logging.getLogger("qscale.operator")


@dataclass(frozen=True)
class Target:
    namespace: str
    name: str
    uid: str
    resource_version: str
    replicas: int
    """``spec.replicas``."""
    ready: int
    """``status.readyReplicas``."""
    cpu_limit_ratio: float
    """Pod template's CPU limit / CPU request (1 without limits)."""
    cpu_limit_cores: float = math.nan
    """Pod template's CPU limit in cores (its request where a container has no limit; NaN:
    neither): what ``busy_peak_30m`` counts pods' worth of."""
    generation: int = 0


def cpu_quantity(q: Any) -> float:
    """Cores in a CPU quantity (``"250m"``, ``"0.5"``, ``2``); NaN when unparsable."""
    if isinstance(q, int | float) and not isinstance(q, bool):
        return float(q)
    if not isinstance(q, str) or not q:
        return math.nan
    try:
        if q.endswith("m"):
            return float(q[:-1]) / 1000.0
        if q.endswith("n"):
            return float(q[:-1]) / 1e9
        if q.endswith("u"):
            return float(q[:-1]) / 1e6
        return float(q)
    except ValueError:
        return math.nan


def _cpu_per_pod(pod_spec: Mapping[str, Any]) -> tuple[float, float]:
    """``(limit / request, limit cores)`` of a pod template's containers: ``(1, NaN)`` when
    none states a CPU request or limit."""
    req_sum = lim_sum = 0.0
    for c in pod_spec.get("containers") or []:
        res = c.get("resources") or {}
        req = cpu_quantity((res.get("requests") or {}).get("cpu"))
        lim = cpu_quantity((res.get("limits") or {}).get("cpu"))
        if not math.isfinite(req):
            req = lim  # Kubernetes defaults a missing request to the limit
        if not math.isfinite(req):
            continue
        req_sum += req
        lim_sum += lim if math.isfinite(lim) else req
    return (lim_sum / req_sum, lim_sum) if req_sum > 0 else (1.0, math.nan)


def target_from(obj: Mapping[str, Any]) -> Target:
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    pod_spec = (spec.get("template") or {}).get("spec") or {}
    replicas = spec.get("replicas")
    ratio, limit_cores = _cpu_per_pod(pod_spec)
    return Target(
        namespace=meta.get("namespace", ""),
        name=meta.get("name", ""),
        uid=meta.get("uid", ""),
        resource_version=meta.get("resourceVersion", ""),
        replicas=int(replicas) if replicas is not None else 1,
        ready=int(status.get("readyReplicas") or 0),
        cpu_limit_ratio=ratio,
        cpu_limit_cores=limit_cores,
        generation=int(meta.get("generation") or 0),
    )


def _rv(s: str) -> int | None:
    try:
        return int(s)
    except (TypeError, ValueError):
        return None


class DeploymentCache:
    """List + watch of Deployments in ``namespaces`` (empty: the whole cluster)."""

    def __init__(self, kube: Kube, namespaces: tuple[str, ...], page: int = 200) -> None:
        self.kube = kube
        self.page = page
        """Deployments per listing request (``limit``/``continue``): a listing of whole objects
        is read a page at a time, so its peak is a page's, not the namespace's."""
        self.namespaces = namespaces or ("",)
        self._items: dict[tuple[str, str], Target] = {}
        self._synced: dict[str, bool] = dict.fromkeys(self.namespaces, False)
        self._tasks: list[asyncio.Task] = []
        self.ready = asyncio.Event()

    def _path(self, ns: str) -> str:
        return f"/apis/apps/v1/namespaces/{ns}/deployments" if ns else "/apis/apps/v1/deployments"

    def synced(self, namespace: str) -> bool:
        key = namespace if namespace in self._synced else ""
        return self._synced.get(key, False)

    def get(self, namespace: str, name: str) -> Target | None:
        return self._items.get((namespace, name))

    def note(self, target: Target) -> None:
        """Record what a write returned, unless the cache already holds something newer."""
        key = (target.namespace, target.name)
        old = self._items.get(key)
        if old is not None:
            a, b = _rv(old.resource_version), _rv(target.resource_version)
            if a is not None and b is not None and a > b:
                return
        self._items[key] = target

    def start(self) -> None:
        for ns in self.namespaces:
            self._tasks.append(asyncio.create_task(self._run(ns), name=f"deployments {ns or '*'}"))

    async def stop(self) -> None:
        await cancel_all(self._tasks)
        self._tasks.clear()

    async def _relist(self, ns: str, path: str) -> str:
        """Replace the namespace's records by a fresh listing; its resourceVersion. The
        listing (whole Deployments: about 15 kB of Python objects each) is read a page at a time
        and dropped as it is read, never held by :meth:`_run`'s frame for as long as the watch
        that follows lasts. The pages are one snapshot (the API server's ``continue`` token
        carries its resourceVersion); a token that expired is a 410, and :meth:`_run` relists."""
        keep = {}
        params: dict[str, Any] = {"limit": self.page}
        while True:
            page = await self.kube.get(path, **params)
            for obj in page.get("items") or []:
                t = target_from(obj)
                keep[(t.namespace, t.name)] = t
            meta = page.get("metadata") or {}
            if not meta.get("continue"):
                break
            params = {"limit": self.page, "continue": meta["continue"]}
        for key in [k for k in self._items if (not ns or k[0] == ns) and k not in keep]:
            del self._items[key]
        self._items.update(keep)
        return meta.get("resourceVersion", "")

    async def _run(self, ns: str) -> None:
        delay = 0.5
        path = self._path(ns)
        while True:
            try:
                rv = await self._relist(ns, path)
                self._synced[ns] = True
                if all(self._synced.values()):
                    self.ready.set()
                delay = 0.5
                while True:
                    async for event in self.kube.watch(path, rv):
                        obj = event.get("object") or {}
                        rv = (obj.get("metadata") or {}).get("resourceVersion", rv)
                        kind = event.get("type")
                        if kind == "BOOKMARK":
                            continue
                        t = target_from(obj)
                        if kind == "DELETED":
                            self._items.pop((t.namespace, t.name), None)
                        else:
                            self._items[(t.namespace, t.name)] = t
                    # the server closed a healthy watch (timeoutSeconds): resume from rv
            except asyncio.CancelledError:
                raise
            except (ApiError, ValueError) as e:
                self._synced[ns] = False
                if not (isinstance(e, ApiError) and e.status == 410):
                    wait = random.uniform(delay / 2, delay)
                    log.warning(
                        "deployment watch (%s) broke: %s; relisting in %.1fs", ns or "*", e, wait
                    )
                    await asyncio.sleep(wait)
                    delay = min(delay * 2, 10.0)
