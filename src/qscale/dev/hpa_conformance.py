"""Conformance of :mod:`qscale.hpa` with the real HorizontalPodAutoscaler controller.

Each :class:`Scenario` plays on a local control plane (:mod:`qscale.dev.cluster`): a Deployment
of fake pods (kwok) that turn Ready after a start-up delay, a real ``HorizontalPodAutoscaler``
handled by kube-controller-manager, and a driver that spreads the scenario's total CPU demand
over the Ready pods through their ``kwok.x-k8s.io/usage-cpu`` annotations (metrics-server then
reports it). Several scenarios run at once, one namespace each.

What the controller saw and did is recorded as it happens:

* **sync instants, proposals and decisions** from kube-controller-manager's own log, at
  ``-v=4`` for ``horizontal.go`` only: ``Proposing desired replicas`` (the metric's proposal
  and the timestamp of the metrics it read), ``Decided not to scale`` / ``Successfully
  rescaled`` (current and new size), and failed reconciles;
* **pods** (phase, start time, Ready condition and its transition time, deletion) from a watch
  of the API server, i.e. what the controller's informer receives;
* **the resource metrics API** (each pod's sample: usage, timestamp, window) polled every
  0.5 s; the snapshot a sync used is the one holding the timestamp the controller logged;
* **the HPA's status** (current utilization, desired replicas) and the Deployment's
  ``spec.replicas`` from watches, and the ``SuccessfulRescale`` events.

:func:`replay` then drives the port with those observations - :func:`qscale.hpa.group_pods` on
the pods and samples at each sync instant, :func:`qscale.hpa.hpa_step` with the controller's
current replica count, at the controller's own sync times - and compares its output with the
controller's at every sync. A recording is plain JSON (:func:`run_conformance` returns it), so
the comparison can be replayed offline.

Sync period, downscale window: :data:`CONTROLLER_FLAGS` shortens the sync period to 5 s and
the downscale stabilization to 60 s to keep the suite to a few minutes; metrics-server runs at
its 10 s minimum resolution. The port is configured with the same values.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import math
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import torch

from qscale.dev.cluster import (
    USAGE_CPU_ANNOTATION,
    ClusterOptions,
    LocalCluster,
    deployment_manifest,
    namespace_manifest,
)
from qscale.hpa import (
    CPU_INITIALIZATION_PERIOD_S,
    INITIAL_READINESS_DELAY_S,
    HPAConfig,
    HPAReason,
    HPAState,
    Pod,
    PodMetric,
    group_pods,
    hpa_step,
    resource_replicas,
)

SYNC_PERIOD_S = 5.0
"""``--horizontal-pod-autoscaler-sync-period`` of the conformance cluster."""
DOWNSCALE_STABILIZATION_S = 60.0
"""``--horizontal-pod-autoscaler-downscale-stabilization`` of the conformance cluster."""
CONTROLLER_FLAGS = {
    "v": "2",
    "vmodule": "horizontal=4",  # the HPA controller's per-sync lines, nothing else at -v=4
    "horizontal-pod-autoscaler-downscale-stabilization": f"{DOWNSCALE_STABILIZATION_S:g}s",
}
"""Extra kube-controller-manager flags; the CPU start-up flags keep their defaults."""
LABEL = "qscale.io/conformance"
REQUEST_MILLI = 100
"""Every scenario's pods request 100m CPU."""
METRICS_POLL_S = 0.5
RACE_MARGIN_S = 0.05
"""A sync this close to a pod change or a metrics update may have seen it or not: the
controller's informer and the recorder's watch receive the same event milliseconds apart."""


def cluster_options(nodes: int = 2) -> ClusterOptions:
    """The control plane the suite needs: metrics-server, delayed-ready pods, short syncs."""
    return ClusterOptions(
        metrics_server=True,
        delayed_ready=True,
        hpa_sync_period_s=SYNC_PERIOD_S,
        controller_manager_args=CONTROLLER_FLAGS,
        nodes=nodes,
    )


# --- scenarios ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """One Deployment + HPA and the load played on it; times in seconds from HPA creation."""

    name: str
    description: str
    start_replicas: int
    min_replicas: int
    max_replicas: int
    target_pct: int
    demand: tuple[tuple[float, int], ...]
    """``(from t, total milli-CPU)`` steps, spread over the Ready pods; the first applies from
    the Deployment's creation on."""
    duration_s: float
    ready_delay_s: float = 20.0
    """Pod start-up: Ready this long after scheduling (kwok's delayed-ready stage)."""
    behavior: Mapping[str, Any] | None = None
    """The HPA's ``spec.behavior`` as the API takes it; ``None``: no ``behavior`` field."""
    manual: tuple[tuple[float, int], ...] = ()
    """``(t, replicas)``: someone scales the Deployment by hand."""

    @property
    def namespace(self) -> str:
        return f"hpa-{self.name}"

    def demand_at(self, t: float | None) -> int:
        """Total demand at ``t`` (``None``: before the HPA exists)."""
        value = self.demand[0][1]
        for start, milli in self.demand:
            if t is not None and t >= start:
                value = milli
        return value


def _up_policies(select: str) -> dict[str, Any]:
    return {
        "scaleUp": {
            "stabilizationWindowSeconds": 0,
            "selectPolicy": select,
            "policies": [
                {"type": "Pods", "value": 2, "periodSeconds": 10},
                {"type": "Percent", "value": 50, "periodSeconds": 10},
            ],
        }
    }


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "step-up",
        "2 pods at 50 %, demand 100m -> 800m: the legacy cap doubles per sync",
        start_replicas=2, min_replicas=2, max_replicas=20, target_pct=50,
        demand=((0, 100), (10, 800)), duration_s=100,
    ),
    Scenario(
        "step-down",
        "8 pods at target, demand drops to 100m: held by the 60 s window, then down; a bump",
        start_replicas=8, min_replicas=2, max_replicas=20, target_pct=50,
        demand=((0, 400), (10, 100), (95, 170), (120, 100)), duration_s=165, ready_delay_s=10,
    ),
    Scenario(
        "burst-while-starting",
        "45 s start-up: bursts while new pods are Pending, then Ready without samples",
        start_replicas=2, min_replicas=2, max_replicas=20, target_pct=50,
        demand=((0, 100), (10, 600), (35, 800)), duration_s=130, ready_delay_s=45,
    ),
    Scenario(
        "flapping",
        "4 pods, demand flapping 190m/210m (47.5 %/52.5 %): inside the tolerance",
        start_replicas=4, min_replicas=2, max_replicas=20, target_pct=50,
        demand=tuple((float(t), 190 if (t // 10) % 2 else 210) for t in range(0, 120, 10)),
        duration_s=120, ready_delay_s=10,
    ),
    Scenario(
        "behavior-max",
        "behavior scale-up: Pods 2 or Percent 50 per 10 s, selectPolicy Max",
        start_replicas=2, min_replicas=2, max_replicas=20, target_pct=50,
        demand=((0, 100), (10, 1000)), duration_s=110, ready_delay_s=10,
        behavior=_up_policies("Max"),
    ),
    Scenario(
        "behavior-min",
        "behavior scale-up: Pods 2 or Percent 50 per 10 s, selectPolicy Min",
        start_replicas=2, min_replicas=2, max_replicas=20, target_pct=50,
        demand=((0, 100), (10, 1000)), duration_s=110, ready_delay_s=10,
        behavior=_up_policies("Min"),
    ),
    Scenario(
        "bounds",
        "min 3, max 6: load far above and below, and scaled by hand to 9 and to 1",
        start_replicas=3, min_replicas=3, max_replicas=6, target_pct=50,
        demand=((0, 150), (10, 1200), (45, 30)), duration_s=150, ready_delay_s=10,
        manual=((30, 9), (125, 1)),
    ),
)  # fmt: skip
"""The suite: a step up, a step down through the window, a burst during start-up, flapping
within the tolerance, behavior policies (Max and Min), and the min/max bounds."""


def hpa_manifest(sc: Scenario) -> str:
    spec: dict[str, Any] = {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
        "minReplicas": sc.min_replicas,
        "maxReplicas": sc.max_replicas,
        "metrics": [
            {
                "type": "Resource",
                "resource": {
                    "name": "cpu",
                    "target": {"type": "Utilization", "averageUtilization": sc.target_pct},
                },
            }
        ],
    }
    if sc.behavior is not None:
        spec["behavior"] = dict(sc.behavior)
    doc = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "web", "namespace": sc.namespace, "labels": {LABEL: "1"}},
        "spec": spec,
    }
    return json.dumps(doc)


def hpa_config(hpa: Mapping[str, Any], flags: Mapping[str, str] = CONTROLLER_FLAGS) -> HPAConfig:
    """The port's config for an HPA object as the API server stored it (defaults filled in)."""
    spec = hpa["spec"]
    (metric,) = spec["metrics"]
    target = metric["resource"]["target"]["averageUtilization"] / 100
    window = _duration(flags.get("horizontal-pod-autoscaler-downscale-stabilization", "300s"))
    common = {
        "target_utilization": target,
        "tolerance": float(flags.get("horizontal-pod-autoscaler-tolerance", 0.1)),
        "sync_period_s": SYNC_PERIOD_S * 0.8,  # buffers: real syncs are a little longer
        "min_replicas": spec.get("minReplicas", 1),
        "max_replicas": spec["maxReplicas"],
        "scale_down_stabilization_s": window,
    }
    behavior = spec.get("behavior")
    if behavior is None:
        return HPAConfig(**common)

    def rules(d: Mapping[str, Any]) -> tuple[tuple[str, int, float], ...]:
        return tuple((p["type"], p["value"], float(p["periodSeconds"])) for p in d["policies"])

    up, down = behavior["scaleUp"], behavior["scaleDown"]
    down_window = down.get("stabilizationWindowSeconds")
    return HPAConfig(
        **{**common, "scale_down_stabilization_s": window if down_window is None else down_window},
        behavior=True,
        scale_up_stabilization_s=float(up.get("stabilizationWindowSeconds") or 0),
        scale_up_policies=rules(up),
        scale_up_select=up.get("selectPolicy", "Max"),
        scale_down_policies=rules(down),
        scale_down_select=down.get("selectPolicy", "Max"),
        scale_up_tolerance=_quantity(up.get("tolerance")),
        scale_down_tolerance=_quantity(down.get("tolerance")),
    )


def _duration(text: str) -> float:
    from qscale.hpa import parse_duration

    return parse_duration(text)


def _quantity(value: str | None) -> float | None:
    return None if value is None else float(value)


# --- the API, watched and polled ---------------------------------------------------------------


class Api:
    """A small client for the local API server (admin client certificate from the kubeconfig)."""

    def __init__(self, server: str, ca: str, cert: str, key: str) -> None:
        ctx = ssl.create_default_context(cafile=ca)
        ctx.load_cert_chain(cert, key)
        self.server, self._ctx = server, ctx
        self.client = self.new_client()

    @classmethod
    def from_cluster(cls, cluster: LocalCluster) -> Api:
        cfg = json.loads(
            cluster.kubectl("config", "view", "--minify", "--raw", "-o", "json").stdout
        )
        c, u = cfg["clusters"][0]["cluster"], cfg["users"][0]["user"]
        return cls(
            c["server"], c["certificate-authority"], u["client-certificate"], u["client-key"]
        )

    def new_client(self) -> httpx.Client:
        return httpx.Client(base_url=self.server, verify=self._ctx, timeout=10.0)

    def get(self, path: str, **params: str) -> dict:
        r = self.client.get(path, params=params)
        r.raise_for_status()
        return r.json()

    def patch(self, path: str, body: Mapping[str, Any]) -> None:
        r = self.client.patch(
            path, content=json.dumps(body), headers={"Content-Type": "application/merge-patch+json"}
        )
        if r.status_code != 404:  # a pod deleted meanwhile
            r.raise_for_status()


@dataclass
class _Span:
    first: float
    last: float
    items: dict[str, PodMetric]


class Recorder:
    """Watches pods, HPAs and Deployments and polls the metrics API, with arrival times."""

    def __init__(self, api: Api, selector: str = f"{LABEL}=1") -> None:
        self.api, self.selector = api, selector
        self.lock = threading.Lock()
        self.pod_events: dict[str, list[tuple[float, str, Pod | None]]] = {}
        self.pods: dict[str, dict[str, Pod]] = {}  # live state by namespace
        self.hpa_events: dict[str, list[tuple[float, dict]]] = {}
        self.replicas_events: dict[str, list[tuple[float, int]]] = {}
        self.metric_spans: dict[str, list[_Span]] = {}
        self._stop = threading.Event()
        self._clients: list[httpx.Client] = []
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        watches = [
            ("/api/v1/pods", self._on_pod),
            ("/apis/autoscaling/v2/horizontalpodautoscalers", self._on_hpa),
            ("/apis/apps/v1/deployments", self._on_deployment),
        ]
        for path, handler in watches:
            self._spawn(self._watch, path, handler)
        self._spawn(self._poll_metrics)

    def _spawn(self, target: Callable, *args: Any) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)
        t.start()
        self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        for c in self._clients:
            with contextlib.suppress(Exception):
                c.close()
        for t in self._threads:
            t.join(timeout=10)

    def _watch(self, path: str, handler: Callable[[float, dict], None]) -> None:
        # Short server-side timeouts, resumed from the last resourceVersion: the loop sees the
        # stop flag within seconds and a resumed watch replays nothing.
        version = None
        client = self.api.new_client()
        self._clients.append(client)
        while not self._stop.is_set():
            params = {"watch": "1", "labelSelector": self.selector, "timeoutSeconds": "2"}
            if version is not None:
                params["resourceVersion"] = version
            try:
                with client.stream(
                    "GET", path, params=params, timeout=httpx.Timeout(10.0, read=30.0)
                ) as r:
                    if r.status_code == 410:  # too old: start over
                        version = None
                        continue
                    for line in r.iter_lines():
                        if not line:
                            continue
                        ev = json.loads(line)
                        if ev.get("type") == "ERROR":
                            version = None
                            break
                        version = ev["object"]["metadata"].get("resourceVersion", version)
                        handler(time.time(), ev)
            except (httpx.HTTPError, RuntimeError, ValueError, KeyError):
                if self._stop.is_set():
                    return
                time.sleep(0.2)

    def _on_pod(self, t: float, ev: dict) -> None:
        obj = ev.get("object", {})
        if ev.get("type") not in ("ADDED", "MODIFIED", "DELETED") or obj.get("kind") != "Pod":
            return
        ns, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        pod = None if ev["type"] == "DELETED" else Pod.from_api(obj)
        with self.lock:
            live = self.pods.setdefault(ns, {})
            if pod is None:
                live.pop(name, None)
            else:
                live[name] = pod
            self.pod_events.setdefault(ns, []).append((t, name, pod))  # type: ignore[arg-type]

    def _on_hpa(self, t: float, ev: dict) -> None:
        obj = ev.get("object", {})
        if obj.get("kind") == "HorizontalPodAutoscaler":
            ns = obj["metadata"]["namespace"]
            with self.lock:
                self.hpa_events.setdefault(ns, []).append((t, obj.get("status") or {}))

    def _on_deployment(self, t: float, ev: dict) -> None:
        obj = ev.get("object", {})
        if obj.get("kind") == "Deployment":
            ns = obj["metadata"]["namespace"]
            with self.lock:
                self.replicas_events.setdefault(ns, []).append((t, obj["spec"]["replicas"]))

    def _poll_metrics(self) -> None:
        client = self.api.new_client()
        self._clients.append(client)
        path = "/apis/metrics.k8s.io/v1beta1/pods"
        while not self._stop.wait(METRICS_POLL_S):
            sent = time.time()
            try:
                r = client.get(path, params={"labelSelector": self.selector})
                r.raise_for_status()
                items = r.json()["items"]
            except (httpx.HTTPError, ValueError, KeyError):
                continue
            t = (sent + time.time()) / 2
            by_ns: dict[str, dict[str, PodMetric]] = {}
            for it in items:
                m = PodMetric.from_api(it)
                if m is not None:
                    by_ns.setdefault(it["metadata"]["namespace"], {})[it["metadata"]["name"]] = m
            with self.lock:
                for ns in set(by_ns) | set(self.metric_spans):
                    now = by_ns.get(ns, {})
                    spans = self.metric_spans.setdefault(ns, [])
                    if spans and spans[-1].items == now:
                        spans[-1].last = t
                    else:
                        spans.append(_Span(t, t, now))

    def latest_metrics(self, ns: str) -> dict[str, PodMetric]:
        with self.lock:
            spans = self.metric_spans.get(ns) or []
            return dict(spans[-1].items) if spans else {}

    def live_pods(self, ns: str) -> list[Pod]:
        with self.lock:
            return list(self.pods.get(ns, {}).values())


# --- the driver --------------------------------------------------------------------------------


class Driver:
    """Spreads each scenario's demand over its Ready pods and scales by hand when told to."""

    def __init__(self, api: Api, recorder: Recorder, scenarios: Iterable[Scenario]) -> None:
        self.api, self.rec, self.scenarios = api, recorder, list(scenarios)
        self._applied: dict[tuple[str, str], str] = {}
        self._manual_done: set[tuple[str, float]] = set()

    def tick(self, t: float | None) -> None:
        for sc in self.scenarios:
            ns = sc.namespace
            for at, replicas in sc.manual:
                if t is not None and t >= at and (ns, at) not in self._manual_done:
                    self._manual_done.add((ns, at))
                    self.api.patch(
                        f"/apis/apps/v1/namespaces/{ns}/deployments/web/scale",
                        {"spec": {"replicas": replicas}},
                    )
            pods = sorted(
                (p for p in self.rec.live_pods(ns) if not p.deleting),
                key=lambda p: p.name,
            )
            ready = [p for p in pods if p.phase == "Running" and p.ready == "True"]
            total = sc.demand_at(t)
            share, extra = divmod(total, len(ready)) if ready else (0, 0)
            values = {p.name: f"{share + (i < extra)}m" for i, p in enumerate(ready)}
            for p in pods:
                value = values.get(p.name, "0m")
                if self._applied.get((ns, p.name)) != value:
                    self.api.patch(
                        f"/api/v1/namespaces/{ns}/pods/{p.name}",
                        {"metadata": {"annotations": {USAGE_CPU_ANNOTATION: value}}},
                    )
                    self._applied[(ns, p.name)] = value


# --- the controller's log ----------------------------------------------------------------------

_KLOG = re.compile(r"^([IWEF])(\d\d)(\d\d) (\d\d):(\d\d):(\d\d)\.(\d{6})\s+\d+ (\S+)\] (.*)$")
_KV = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')
_FAILED = re.compile(
    r"failed to compute desired number of replicas .*? for Deployment/([^/]+)/(\S+?):"
)


@dataclass
class LogSync:
    """One reconcile of one HPA as kube-controller-manager logged it."""

    t: float
    """When the controller logged its proposal (or the outcome): the sync instant."""
    kind: str
    """``metric`` (the metric path ran), ``bound`` (current outside [min, max]), ``error``."""
    proposal: int | None = None
    metric_timestamp: float | None = None
    current: int | None = None
    desired: int | None = None


def _klog_time(groups: tuple[str, ...], year: int) -> float:
    mon, day, hh, mm, ss, us = (int(g) for g in groups)
    return datetime(year, mon, day, hh, mm, ss, us).timestamp()  # klog writes local time


def _go_time(text: str) -> float:
    """Go's ``time.Time.String()``: ``2026-12-01 07:17:16 +0000 UTC`` (fractions optional)."""
    date, clock, offset = text.split()[:3]
    return datetime.fromisoformat(f"{date}T{clock}{offset[:3]}:{offset[3:]}").timestamp()


def parse_controller_log(lines: Iterable[str], year: int) -> dict[str, list[LogSync]]:
    """Per HPA (``namespace/name``), its syncs in order, from kube-controller-manager's log."""
    out: dict[str, list[LogSync]] = {}
    open_: dict[str, LogSync] = {}
    for line in lines:
        m = _KLOG.match(line)
        if not m or not m.group(8).startswith("horizontal.go"):
            continue
        t = _klog_time(m.groups()[1:7], year)
        msg = m.group(9)
        kv = {k: v.strip('"') for k, v in _KV.findall(msg)}
        if msg.startswith('"Proposing desired replicas"'):
            key = kv["scaleTarget"].split("/", 1)[1]
            s = LogSync(t, "metric", int(kv["desiredReplicas"]), _go_time(kv["timestamp"]))
            out.setdefault(key, []).append(s)
            open_[key] = s
        elif msg.startswith('"Decided not to scale"'):
            key = kv["scaleTarget"].split("/", 1)[1]
            s = open_.pop(key, None)
            if s is not None:
                s.current = s.desired = int(kv["desiredReplicas"])
        elif msg.startswith('"Successfully rescaled"'):
            key = kv["HPA"]
            s = open_.pop(key, None)
            if s is None:  # no proposal: the jump into [min, max]
                s = LogSync(t, "bound")
                out.setdefault(key, []).append(s)
            s.current, s.desired = int(kv["currentReplicas"]), int(kv["desiredReplicas"])
        elif (f := _FAILED.search(msg)) is not None:
            key = f"{f.group(1)}/{f.group(2)}"
            open_.pop(key, None)
            out.setdefault(key, []).append(LogSync(t, "error"))
    return out


# --- assembling and replaying ------------------------------------------------------------------


def _pods_at(events: list[tuple[float, str, Pod | None]], t: float) -> list[Pod]:
    state: dict[str, Pod] = {}
    for at, name, pod in events:
        if at > t:
            break
        if pod is None:
            state.pop(name, None)
        else:
            state[name] = pod
    return sorted(state.values(), key=lambda p: p.name)


def _pod_changes(events: list[tuple[float, str, Pod | None]]) -> list[float]:
    """When a pod changed in a way ``groupPods`` reads (not the driver's annotations)."""
    last: dict[str, Pod | None] = {}
    out = []
    for at, name, pod in events:
        if name not in last or last[name] != pod:
            out.append(at)
        last[name] = pod
    return out


def _metrics_at(
    spans: list[_Span], t: float, stamp: float | None
) -> tuple[dict[str, PodMetric], bool]:
    """The samples a sync at ``t`` read: the snapshot around ``t`` holding the logged
    timestamp (``stamp``; ``None``: the one covering ``t``). Returns (samples, matched)."""
    if not spans:
        return {}, stamp is None
    i = max((k for k, s in enumerate(spans) if s.first <= t), default=0)
    if stamp is None:
        return spans[i].items, True
    for k in (i, i + 1, i - 1, i + 2, i - 2):
        if 0 <= k < len(spans) and any(m.timestamp == stamp for m in spans[k].items.values()):
            return spans[k].items, True
    return spans[i].items, False


def assemble(rec: Recorder, log: dict[str, list[LogSync]], sc: Scenario) -> list[dict]:
    """Each sync of ``sc``'s HPA with what the controller observed at that instant."""
    ns = sc.namespace
    with rec.lock:
        pod_events = list(rec.pod_events.get(ns, []))
        spans = list(rec.metric_spans.get(ns, []))
        statuses = list(rec.hpa_events.get(ns, []))
        replicas = list(rec.replicas_events.get(ns, []))
    syncs = log.get(f"{ns}/web", [])
    changes = _pod_changes(pod_events) + [s.first for s in spans]
    out = []
    for i, s in enumerate(syncs):
        pods = _pods_at(pod_events, s.t)
        metrics, matched = _metrics_at(spans, s.t, s.metric_timestamp)
        current = s.current
        if current is None:  # a failed reconcile logs no size: the Deployment's at that time
            current = next((r for at, r in reversed(replicas) if at <= s.t), sc.start_replicas)
        # The status this sync wrote: the last one seen before the next sync.
        until = syncs[i + 1].t if i + 1 < len(syncs) else s.t + SYNC_PERIOD_S
        status = next((st for at, st in reversed(statuses) if s.t <= at < until), None)
        if status is None:  # unchanged, so not written: the one before holds
            status = next((st for at, st in reversed(statuses) if at < s.t), {})
        metric_status = (status.get("currentMetrics") or [{}])[0].get("resource", {})
        out.append(
            {
                "t": s.t,
                "kind": s.kind,
                "current": current,
                "desired": s.desired if s.desired is not None else current,
                "proposal": s.proposal,
                "metric_timestamp": s.metric_timestamp,
                "metrics_matched": matched,
                "margin_s": min((abs(c - s.t) for c in changes), default=None),
                "status_utilization": metric_status.get("current", {}).get("averageUtilization"),
                "pods": [asdict(p) for p in pods],
                "metrics": {k: [m.timestamp, m.window_s, m.cpu_milli] for k, m in metrics.items()},
            }
        )
    return out


@dataclass(frozen=True)
class SyncResult:
    t: float
    kind: str
    current: int
    controller: int
    port: int
    controller_proposal: int | None
    port_proposal: int | None
    ready: int
    unready: int
    missing: int
    utilization_pct: int | None
    status_utilization: int | None
    reason: str
    margin_s: float | None
    """Time from the sync to the nearest pod change or metrics update the recorder saw."""
    metrics_matched: bool

    @property
    def agrees(self) -> bool:
        return self.port == self.controller

    @property
    def raced(self) -> bool:
        """Whether the observations were ambiguous at this sync (see :data:`RACE_MARGIN_S`)."""
        return self.margin_s is not None and self.margin_s < RACE_MARGIN_S


def replay(
    record: Mapping[str, Any],
    cpu_initialization_period_s: float = CPU_INITIALIZATION_PERIOD_S,
    initial_readiness_delay_s: float = INITIAL_READINESS_DELAY_S,
) -> list[SyncResult]:
    """Drive the port with one scenario's recorded observations, sync by sync."""
    config = hpa_config(record["hpa"], record.get("flags", CONTROLLER_FLAGS))
    request = record.get("request_milli", REQUEST_MILLI)
    syncs = record["syncs"]
    state = HPAState.init(1, "cpu", config)
    t0 = syncs[0]["t"] if syncs else 0.0
    out = []

    def one(x: float) -> torch.Tensor:
        return torch.tensor([float(x)], dtype=torch.float64)

    for s in syncs:
        pods = [Pod(**p) for p in s["pods"]]
        metrics = {k: PodMetric(*v) for k, v in s["metrics"].items()}
        groups = group_pods(
            pods, metrics, s["t"], cpu_initialization_period_s, initial_readiness_delay_s
        )
        ready, unready, missing = groups.counts
        usage = sum(metrics[n].cpu_milli for n in groups.ready)
        util = usage / (ready * request) if ready else math.nan
        args = (one(s["current"]), one(ready), one(unready), one(util))
        desired, reason, state = hpa_step(
            state, s["t"] - t0, *args, config, missing_pods=one(missing)
        )
        proposal = resource_replicas(*args, config, missing_pods=one(missing))
        out.append(
            SyncResult(
                t=s["t"],
                kind=s["kind"],
                current=s["current"],
                controller=s["desired"],
                port=int(desired[0]),
                controller_proposal=s["proposal"],
                port_proposal=int(proposal[0]) if s["kind"] == "metric" else None,
                ready=ready,
                unready=unready,
                missing=missing,
                utilization_pct=(usage * 100) // (ready * request) if ready else None,
                status_utilization=s["status_utilization"],
                reason=HPAReason(int(reason[0])).name,
                margin_s=s["margin_s"],
                metrics_matched=s["metrics_matched"],
            )
        )
    return out


@dataclass(frozen=True)
class Agreement:
    scenario: str
    syncs: int
    agree: int
    proposals_agree: int
    proposals: int
    raced: int
    """Disagreeing syncs whose observations were ambiguous (a race the harness cannot see)."""
    replicas: list[int] = field(default_factory=list)
    """The controller's replica count after each change."""
    paths: list[str] = field(default_factory=list)
    """The port's reasons and pod groups seen (what the scenario exercised)."""

    @property
    def share(self) -> float:
        return self.agree / self.syncs if self.syncs else math.nan


def agreement(name: str, results: list[SyncResult]) -> Agreement:
    replicas: list[int] = []
    for r in results:
        if not replicas or replicas[-1] != r.controller:
            replicas.append(r.controller)
    if results and results[0].current != replicas[0]:
        replicas.insert(0, results[0].current)
    paths = sorted({r.reason for r in results})
    if any(r.unready for r in results):
        paths.append("unready pods")
    if any(r.missing for r in results):
        paths.append("missing pods")
    metric = [r for r in results if r.kind == "metric"]
    return Agreement(
        scenario=name,
        syncs=len(results),
        agree=sum(r.agrees for r in results),
        proposals=len(metric),
        proposals_agree=sum(r.port_proposal == r.controller_proposal for r in metric),
        raced=sum(r.raced and not r.agrees for r in results),
        replicas=replicas,
        paths=paths,
    )


def markdown_table(rows: Iterable[Agreement]) -> str:
    lines = [
        "| scenario | syncs | identical replicas | identical proposals | disagreeing within "
        f"{RACE_MARGIN_S * 1000:g} ms of a pod/metrics change | controller's sizes "
        "| paths exercised |",
        "|---|---|---|---|---|---|---|",
    ]
    for a in rows:
        lines.append(
            f"| {a.scenario} | {a.syncs} | {a.agree}/{a.syncs} ({100 * a.share:.1f} %) "
            f"| {a.proposals_agree}/{a.proposals} | {a.raced} "
            f"| {' -> '.join(map(str, a.replicas))} | {', '.join(a.paths)} |"
        )
    return "\n".join(lines)


# --- running the suite -------------------------------------------------------------------------


def run_conformance(
    cluster: LocalCluster,
    scenarios: Iterable[Scenario] = SCENARIOS,
    log: Callable[[str], None] = lambda _m: None,
    warmup_timeout_s: float = 180.0,
) -> dict[str, Any]:
    """Play ``scenarios`` on ``cluster`` (started with :func:`cluster_options`), concurrently,
    and return the recording: per scenario the stored HPA and every sync's observations."""
    scenarios = list(scenarios)
    api = Api.from_cluster(cluster)
    rec = Recorder(api)
    rec.start()
    try:
        for sc in scenarios:
            cluster.apply(namespace_manifest(sc.namespace))
            cluster.apply(
                deployment_manifest(
                    "web",
                    sc.namespace,
                    replicas=sc.start_replicas,
                    cpu_request=f"{REQUEST_MILLI}m",
                    ready_delay_s=sc.ready_delay_s,
                    labels={LABEL: "1"},
                    annotations={USAGE_CPU_ANNOTATION: "0m"},
                )
            )
        driver = Driver(api, rec, scenarios)
        log("waiting for every initial pod to be counted (Ready, with a sample past its start)")
        deadline = time.monotonic() + warmup_timeout_s
        while True:
            driver.tick(None)
            counted = []
            for sc in scenarios:
                pods = rec.live_pods(sc.namespace)
                groups = group_pods(pods, rec.latest_metrics(sc.namespace), time.time())
                counted.append(len(pods) == sc.start_replicas == len(groups.ready))
            if all(counted):
                break
            if time.monotonic() > deadline:
                raise TimeoutError("initial pods never all counted by groupPods' rules")
            time.sleep(0.25)
        t0 = time.time()
        for sc in scenarios:
            cluster.apply(hpa_manifest(sc))
        log(f"HPAs created; playing {len(scenarios)} scenarios for up to "
            f"{max(s.duration_s for s in scenarios):g} s")  # fmt: skip
        end = t0 + max(s.duration_s for s in scenarios)
        while time.time() < end:
            driver.tick(time.time() - t0)
            time.sleep(0.25)
        time.sleep(1.0)  # the last status writes
        hpas = "/apis/autoscaling/v2/namespaces/{}/horizontalpodautoscalers/web"
        stored = {sc.name: api.get(hpas.format(sc.namespace)) for sc in scenarios}
        events = api.get("/api/v1/events", fieldSelector="reason=SuccessfulRescale")["items"]
    finally:
        rec.stop()
    text = (cluster.logs_dir / "kube-controller-manager.log").read_text(errors="replace")
    syncs = parse_controller_log(text.splitlines(), datetime.fromtimestamp(t0).year)
    out: dict[str, Any] = {"flags": dict(CONTROLLER_FLAGS), "t0": t0, "scenarios": []}
    for sc in scenarios:
        rescales = sum(
            e.get("count", 1) for e in events if e["involvedObject"]["namespace"] == sc.namespace
        )
        hpa = stored[sc.name]
        out["scenarios"].append(
            {
                "name": sc.name,
                "description": sc.description,
                "hpa": {"spec": hpa["spec"]},
                "flags": dict(CONTROLLER_FLAGS),
                "request_milli": REQUEST_MILLI,
                "rescale_events": rescales,
                "syncs": assemble(rec, syncs, sc),
            }
        )
    return out


def save(recording: Mapping[str, Any], path: Path) -> None:
    data = json.dumps(recording, separators=(",", ":")).encode()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def load(path: Path) -> dict[str, Any]:
    data = path.read_bytes()
    return json.loads(gzip.decompress(data) if path.suffix == ".gz" else data)
