"""In-memory stand-ins for the API server and Prometheus, for the tick's unit tests (the
integration tests use the real ones)."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any

import torch

from qscale.operator.deployments import DeploymentCache, Target
from qscale.operator.events import EventPoster
from qscale.operator.kube import ApiError
from qscale.operator.metrics import Metrics
from qscale.operator.models import ModelRegistry
from qscale.operator.prom import Observation
from qscale.operator.settings import Settings
from qscale.operator.tick import Engine, IndexedPolicy
from qscale.policy.artifact import export
from qscale.policy.network import QNetwork

T0 = 1_800_000_000.0
"""A tick's epoch time in the tests."""
SPEC = {
    "targetRef": {"kind": "Deployment", "name": "web"},
    "minReplicas": 1,
    "maxReplicas": 10,
    "interval": "15s",
    "slo": {"latencyP95": "200ms"},
}
"""An Enforce policy on Deployment ``web``, 1-10 pods, every 15 s."""


def cond(status: dict, type_: str) -> dict:
    """The condition ``type_`` of a status."""
    return next(c for c in status["conditions"] if c["type"] == type_)


class FakeKube:
    def __init__(self) -> None:
        self.scales: dict[tuple[str, str], dict] = {}
        self.status: dict[tuple[str, str], dict] = {}
        self.configmaps: dict[tuple[str, str], dict] = {}
        self.rollouts: dict[tuple[str, str], dict] = {}
        """ModelRollouts by (namespace, name), as the API would list them."""
        self.events: list[dict] = []
        self.calls: list[tuple[str, str]] = []
        self.down = False
        self.conflict_once: set[tuple[str, str]] = set()
        self.outside: dict[tuple[str, str], int] = {}
        """Somebody else scales these to that count just before our write lands."""

    def add(self, ns: str, name: str, replicas: int, uid: str | None = None) -> None:
        self.scales[(ns, name)] = {
            "spec": {"replicas": replicas},
            "metadata": {"resourceVersion": "1", "uid": uid or f"uid-{name}"},
        }

    def _bump(self, obj: dict) -> None:
        obj["metadata"]["resourceVersion"] = str(int(obj["metadata"]["resourceVersion"]) + 1)

    async def get(self, path: str, **_: Any) -> Any:
        self.calls.append(("GET", path))
        if self.down:
            raise ApiError(0, "down")
        if m := re.match(r"/apis/apps/v1/namespaces/([^/]+)/deployments/([^/]+)/scale$", path):
            return copy.deepcopy(self.scales[(m[1], m[2])])
        if m := re.match(r"/api/v1/namespaces/([^/]+)/configmaps/([^/]+)$", path):
            if (m[1], m[2]) not in self.configmaps:
                raise ApiError(404, "not found")
            return copy.deepcopy(self.configmaps[(m[1], m[2])])
        if m := re.match(r"/apis/qscale.io/v1alpha1/namespaces/([^/]+)/modelrollouts$", path):
            items = [v for (ns, _), v in sorted(self.rollouts.items()) if ns == m[1]]
            return {"items": copy.deepcopy(items)}
        raise ApiError(404, path)

    async def patch_merge(self, path: str, body: Any) -> Any:
        self.calls.append(("PATCH", path))
        if self.down:
            raise ApiError(0, "down")
        if m := re.match(r"/apis/apps/v1/namespaces/([^/]+)/deployments/([^/]+)/scale$", path):
            key = (m[1], m[2])
            obj = self.scales[key]
            if key in self.outside:
                obj["spec"]["replicas"] = self.outside.pop(key)
                self._bump(obj)
            if key in self.conflict_once:
                self.conflict_once.discard(key)
                self._bump(obj)
            rv = (body.get("metadata") or {}).get("resourceVersion")
            if rv is not None and rv != obj["metadata"]["resourceVersion"]:
                raise ApiError(409, "conflict")
            uid = (body.get("metadata") or {}).get("uid")
            if uid is not None and uid != obj["metadata"].get("uid"):
                raise ApiError(409, "Precondition failed: UID in precondition")
            obj["spec"]["replicas"] = body["spec"]["replicas"]
            self._bump(obj)
            return copy.deepcopy(obj)
        if m := re.match(
            r"/apis/qscale.io/v1alpha1/namespaces/([^/]+)/autoscalepolicies/([^/]+)/status$", path
        ):
            st = self.status.setdefault((m[1], m[2]), {})
            _merge(st, body["status"])
            return {"status": st}
        if m := re.match(
            r"/apis/qscale.io/v1alpha1/namespaces/([^/]+)/modelrollouts/([^/]+)/status$", path
        ):
            if (m[1], m[2]) not in self.rollouts:
                raise ApiError(404, path)
            obj = self.rollouts[(m[1], m[2])]
            _merge(obj.setdefault("status", {}), body["status"])
            return copy.deepcopy(obj)
        raise ApiError(404, path)

    async def post(self, path: str, body: Any) -> Any:
        self.calls.append(("POST", path))
        if self.down:
            raise ApiError(0, "down")
        self.events.append(body)
        return body

    def writes(self, kind: str) -> int:
        pat = {"scale": "/scale", "status": "/status"}[kind]
        return sum(1 for m, p in self.calls if m == "PATCH" and p.endswith(pat))


def _merge(dst: dict, patch: dict) -> None:
    for k, v in patch.items():
        if v is None:
            dst.pop(k, None)
        elif isinstance(v, dict) and isinstance(dst.get(k), dict):
            _merge(dst[k], v)
        else:
            dst[k] = copy.deepcopy(v)


class FakeProm:
    def __init__(self) -> None:
        self.obs: dict[tuple[str, str], Observation] = {}
        self.fetches = 0
        self.groups = 0
        self.down = False

    def set(
        self, ns: str, name: str, cpu: float = 0.5, rate: float = 10.0, p95: float = 0.05
    ) -> None:
        self.obs[(ns, name)] = Observation(
            rate_now=rate,
            rate_1m=rate,
            rate_5m=rate,
            rate_15m=rate,
            rate_peak_15m=rate,
            rate_peak_30m=rate,
            p95_s=p95,
            cpu_utilization=cpu,
            cpu_peak_cores=0.0,  # never above the CPU now: busy_peak_30m reads the busy pods now
            has_rate=True,
            has_latency=True,
            has_cpu=True,
            has_cpu_peak=True,
        )

    async def fetch(self, groups, now):
        self.fetches += 1
        out = {}
        for g in groups:
            self.groups += 1
            out[g] = {}
            for ns, d in g.targets:
                o = self.obs.get((ns, d))
                if self.down or o is None:
                    o = Observation(errors=["request_rate: ConnectError"] if self.down else [])
                out[g][(ns, d)] = copy.copy(o)
        return out

    async def close(self):
        pass


class QueueEvents(EventPoster):
    def __init__(self) -> None:
        self.posted = []

    def post(self, e) -> None:
        self.posted.append(e)

    def hold(self) -> None:
        pass

    def release(self) -> None:
        pass

    def reasons(self) -> list[str]:
        return [e.reason for e in self.posted]


def busy_model(path, action: int = 6):
    """A network that always prefers one action (default: busy_at_65, the HPA-like rule)."""
    net = QNetwork()
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        net.advantage.bias[action] = 1.0
    return export(net, path)


@dataclass
class World:
    engine: Engine
    kube: FakeKube
    prom: FakeProm
    events: QueueEvents
    cache: DeploymentCache
    policies: list[IndexedPolicy] = field(default_factory=list)

    def deployment(
        self,
        ns: str,
        name: str,
        replicas: int,
        ready: int | None = None,
        limit_ratio: float = 1.0,
        uid: str | None = None,
    ):
        uid = uid or f"uid-{name}"
        self.kube.add(ns, name, replicas, uid)
        self.cache._items[(ns, name)] = Target(
            ns,
            name,
            uid,
            "1",
            replicas,
            replicas if ready is None else ready,
            limit_ratio,
            limit_ratio,  # 1 core requested per pod
        )
        self.cache._synced[ns] = True

    def delete_deployment(self, ns: str, name: str) -> None:
        self.kube.scales.pop((ns, name), None)
        self.cache._items.pop((ns, name), None)

    def sync_from_kube(self):
        for (ns, name), obj in self.kube.scales.items():
            t = self.cache._items[(ns, name)]
            r = obj["spec"]["replicas"]
            self.cache._items[(ns, name)] = Target(
                ns,
                name,
                t.uid,
                obj["metadata"]["resourceVersion"],
                r,
                r,
                t.cpu_limit_ratio,
                t.cpu_limit_cores,
            )

    def policy(
        self,
        ns: str,
        name: str,
        spec: dict,
        status: dict | None = None,
        uid: str | None = None,
        labels: dict | None = None,
    ):
        meta = {"namespace": ns, "name": name, "uid": uid or f"p-{name}", "generation": 1}
        body = {
            "metadata": {**meta, "labels": labels or {}},
            "spec": spec,
            "status": status or self.kube.status.get((ns, name), {}),
        }
        p = IndexedPolicy.from_body(body)
        self.policies = [x for x in self.policies if x.uid != p.uid] + [p]
        return p

    async def tick(self, now: float, settle: bool = True):
        """One tick; ``settle``: and its statuses written (the status writer's workers are not
        started here: :meth:`StatusWriter.run_pending` writes them in this task)."""
        rep = await self.engine.run_once(self.policies, now)
        if settle:
            await self.engine.statuses.run_pending()
            await self.engine.rollouts.drain()
        return rep


def world(model_dir, prom=None, **settings) -> World:
    """An Engine over the fakes; ``prom``: another Prometheus client (a real PromClient)."""
    kube, prom, events = FakeKube(), prom or FakeProm(), QueueEvents()
    s = Settings(**{"namespaces": ("a",), "prometheus_url": "http://prom.invalid", **settings})
    cache = DeploymentCache(kube, s.namespaces)  # type: ignore[arg-type]
    eng = Engine(s, kube, cache, prom, ModelRegistry(model_dir), Metrics(), events)  # type: ignore[arg-type]
    return World(eng, kube, prom, events, cache)
