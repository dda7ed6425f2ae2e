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

Races. The controller's informer and the recorder's watch get each pod event milliseconds
apart, and the poller sees a new metrics snapshot up to 0.5 s late, so at some syncs the
controller may have observed something else than the recording's best guess: a pod change
within :data:`RACE_MARGIN_S` of the sync (not one the sync's own rescale caused: those come
after its decision), or another snapshot that holds the sample timestamp it logged
(metrics-server changes its answer without changing the first pod's timestamp when another node
is scraped or a pod goes away). The recording keeps each such other observation; the replay
runs the port on them too, and a sync is in the race window only where they change its answer.
A disagreement there is excused only when the port, on one of them, says what the controller
said.

Sync period, downscale window, start-up rules: :data:`CONTROLLER_FLAGS` shortens the sync
period to 5 s, the downscale stabilization to 60 s and the CPU initialization period to 60 s
(the initial readiness delay stays at its 30 s default, set explicitly) to keep the suite to a
few minutes; metrics-server runs at its 10 s minimum resolution. The port is configured from the
same flags, read from the recording.

Start-up CPU. Two scenarios start their pods as a kubelet does (Running, ``Ready`` ``False``,
then ``True``; kwok's ``pod-start`` stages) and have them burn CPU while they start, which is
what ``groupPods``' start-up rules exist for: ``warm-up`` has pods turn Ready within the
initialization period and burn on for a moment after (the sample overlapping the Ready
transition must be set aside), ``slow-start`` has pods still starting after that period (the
initial readiness delay must set them aside). :func:`startup_discrimination` replays a
recording with each rule's parameter at 0: the port must then disagree with the controller.
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
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import torch

from qscale import hpa as _hpa
from qscale.dev.cluster import (
    USAGE_CPU_ANNOTATION,
    ClusterOptions,
    LocalCluster,
    deployment_manifest,
    namespace_manifest,
)
from qscale.hpa import (
    HPAConfig,
    HPAReason,
    HPAState,
    Pod,
    PodGroups,
    PodMetric,
    group_pods,
    hpa_step,
    resource_replicas,
)

SYNC_PERIOD_S = 5.0
"""``--horizontal-pod-autoscaler-sync-period`` of the conformance cluster."""
DOWNSCALE_STABILIZATION_S = 60.0
"""``--horizontal-pod-autoscaler-downscale-stabilization`` of the conformance cluster."""
CPU_INITIALIZATION_PERIOD_S = 60.0
"""``--horizontal-pod-autoscaler-cpu-initialization-period`` of the conformance cluster (default
5 min): long enough for ``warm-up``'s pods (Ready 30 s after their start, their sample a whole
window past that 10-20 s later) to turn Ready inside it, short enough for ``slow-start``'s
(Ready after 90 s) to be still starting after it for 30 s."""
INITIAL_READINESS_DELAY_S = 30.0
"""``--horizontal-pod-autoscaler-initial-readiness-delay`` of the conformance cluster (its
default, set explicitly so the recording carries it)."""
CONTROLLER_FLAGS = {
    "v": "2",
    "vmodule": "horizontal=4",  # the HPA controller's per-sync lines, nothing else at -v=4
    "horizontal-pod-autoscaler-downscale-stabilization": f"{DOWNSCALE_STABILIZATION_S:g}s",
    "horizontal-pod-autoscaler-cpu-initialization-period": f"{CPU_INITIALIZATION_PERIOD_S:g}s",
    "horizontal-pod-autoscaler-initial-readiness-delay": f"{INITIAL_READINESS_DELAY_S:g}s",
}
"""Extra kube-controller-manager flags (the sync period is set through
:class:`~qscale.dev.cluster.ClusterOptions`)."""
RUNNING_DELAY_ANNOTATION = "pod-running.stage.kwok.x-k8s.io/delay"
"""Pod annotation: the pod starts as a kubelet starts it - Running with ``Ready`` ``False``
this long after scheduling, Ready after its ``pod-ready`` delay (``qscale/data/kwok``)."""
LABEL = "qscale.io/conformance"
REQUEST_MILLI = 100
"""Every scenario's pods request 100m CPU."""
METRICS_POLL_S = 0.5
RACE_MARGIN_S = 0.05
RESCALE_LAG_S = 0.5
"""How much later than its sync's log line the controller may have stamped a rescale in its
event history (``storeScaleEvent`` runs after the scale update returns): a sync whose scale-up
or scale-down policy period ends within this of an earlier rescale is judged both ways."""
"""A sync this close to a pod change may have seen it or not: the controller's informer and the
recorder's watch receive the same event milliseconds apart. Not counted: changes to the pods the
sync's own rescale created or deleted (they follow its decision), and new metrics snapshots
(the sample timestamp the controller logged says which one it read; a sync is ambiguous there
only when two snapshots hold that timestamp with different samples for its pods)."""


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
    running_after_s: float | None = None
    """``None``: a pod stays ``Pending``, without a ``Ready`` condition, until it turns Running
    and Ready at once (``ready_delay_s`` after scheduling). A number: it turns Running with
    ``Ready`` ``False`` this long after scheduling and Ready ``ready_delay_s`` after that, as
    a kubelet starts a container (its metrics are served meanwhile)."""
    startup_cpu_milli: int = 0
    """CPU a pod burns from its start until ``startup_tail_s`` after it turned Ready (on top
    of its share of the demand once Ready): a JVM's start-up. Set in the pod template, so kwok's
    Ready timer, which an annotation change restarts, is never touched while a pod starts."""
    startup_tail_s: float = 0.0

    @property
    def namespace(self) -> str:
        return f"hpa-{self.name}"

    @property
    def start_usage(self) -> str:
        """The usage annotation a new pod has (the template's)."""
        return f"{self.startup_cpu_milli}m"

    def pod_annotations(self) -> dict[str, str]:
        out = {USAGE_CPU_ANNOTATION: self.start_usage}
        if self.running_after_s is not None:
            out[RUNNING_DELAY_ANNOTATION] = f"{self.running_after_s:g}s"
        return out

    def burning(self, pod: Pod, now: float) -> bool:
        """Whether a Ready pod still burns its start-up CPU at ``now``."""
        return (
            self.startup_cpu_milli > 0
            and pod.ready_transition is not None
            and now < pod.ready_transition + self.startup_tail_s
        )

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
    Scenario(
        "warm-up",
        "pods Running but not Ready for 30 s, burning 150m, and 10 s more once Ready: 4 -> 7 "
        "-> 12 at 80 %; the sample overlapping the Ready transition is set aside",
        start_replicas=4, min_replicas=2, max_replicas=20, target_pct=50,
        demand=((0, 200), (10, 320), (70, 560)), duration_s=140, ready_delay_s=30,
        running_after_s=0, startup_cpu_milli=150, startup_tail_s=10,
    ),
    Scenario(
        "slow-start",
        "pods Running but not Ready for 90 s, burning 150m: still starting after the 60 s "
        "initialization period, set aside by the readiness delay; once Ready, counted at once",
        start_replicas=4, min_replicas=2, max_replicas=20, target_pct=50,
        demand=((0, 200), (10, 320)), duration_s=150, ready_delay_s=90,
        running_after_s=0, startup_cpu_milli=150,
    ),
)  # fmt: skip
"""The suite: a step up, a step down through the window, a burst during start-up, flapping
within the tolerance, behavior policies (Max and Min), the min/max bounds, and start-up CPU
inside and past the initialization period."""


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


def startup_rules(flags: Mapping[str, str] = CONTROLLER_FLAGS) -> tuple[float, float]:
    """``(cpu_initialization_period_s, initial_readiness_delay_s)`` the controller ran with:
    its flags, else the Go defaults."""
    period = flags.get("horizontal-pod-autoscaler-cpu-initialization-period")
    delay = flags.get("horizontal-pod-autoscaler-initial-readiness-delay")
    return (
        _hpa.CPU_INITIALIZATION_PERIOD_S if period is None else _duration(period),
        _hpa.INITIAL_READINESS_DELAY_S if delay is None else _duration(delay),
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
    """Spreads each scenario's demand over its Ready pods, adds the start-up CPU of pods that
    turned Ready moments ago, and scales by hand when told to. A pod that is not Ready keeps the
    template's usage (its start-up CPU, or none) and is never patched: kwok restarts a pod's
    Ready timer when the pod changes."""

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
            now = time.time()
            values = {
                p.name: f"{share + (i < extra) + sc.startup_cpu_milli * sc.burning(p, now)}m"
                for i, p in enumerate(ready)
            }
            for p in pods:
                value = values.get(p.name, sc.start_usage)
                if self._applied.get((ns, p.name), sc.start_usage) != value:
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


@dataclass(frozen=True)
class _PodChange:
    at: float
    name: str
    born: float
    """When the pod first appeared."""
    doomed: float
    """When it began being deleted (``inf``: not yet)."""

    def own(self, t: float, up: bool, down: bool) -> bool:
        """Whether a sync at ``t`` that scaled ``up`` or ``down`` caused this change: a pod its
        rescale created or deleted, which it cannot have seen before deciding."""
        return self.at > t and (
            (up and self.born > t) or (down and self.doomed > t and self.at >= self.doomed)
        )


def _pod_changes(events: list[tuple[float, str, Pod | None]]) -> list[_PodChange]:
    """Each change of a pod that ``groupPods`` reads (not the driver's annotations)."""
    last: dict[str, Pod | None] = {}
    born: dict[str, float] = {}
    doomed: dict[str, float] = {}
    for at, name, pod in events:
        born.setdefault(name, at)
        if pod is None or pod.deleting:
            doomed.setdefault(name, at)
    out = []
    for at, name, pod in events:
        if name not in last or last[name] != pod:
            out.append(_PodChange(at, name, born[name], doomed.get(name, math.inf)))
        last[name] = pod
    return out


CHANGES_KEPT_S = 1.0
"""A sync's recording lists the changes this close to it."""


def _changes_near(
    t: float, pod_changes: list[_PodChange], span_starts: list[float], up: bool, down: bool
) -> list[list]:
    """``[dt, what]`` for every change within :data:`CHANGES_KEPT_S` of a sync at ``t``
    (``dt`` > 0: the recorder saw it after the sync). ``what``: ``own`` - a pod this sync's
    own rescale created (``up``) or deleted (``down``), which the controller cannot have seen
    before deciding it; ``pod`` - any other pod change; ``metrics`` - the poller first saw a new
    metrics snapshot (which the logged sample timestamp pins down anyway)."""
    out: list[list] = []
    for c in pod_changes:
        dt = c.at - t
        if abs(dt) <= CHANGES_KEPT_S:
            out.append([round(dt, 4), "own" if c.own(t, up, down) else "pod"])
    out += [[round(f - t, 4), "metrics"] for f in span_starts if abs(f - t) <= CHANGES_KEPT_S]
    return sorted(out)


def _pod_views(
    events: list[tuple[float, str, Pod | None]],
    pod_changes: list[_PodChange],
    t: float,
    up: bool,
    down: bool,
) -> list[list[Pod]]:
    """The pod lists a sync at ``t`` may have read other than :func:`_pods_at`'s: the state
    before each pod change within :data:`RACE_MARGIN_S` of it (not its own: see
    :meth:`_PodChange.own`) and after the last one."""
    near = [c.at for c in pod_changes if abs(c.at - t) < RACE_MARGIN_S and not c.own(t, up, down)]
    if not near:
        return []
    owns = {(c.at, c.name) for c in pod_changes if c.own(t, up, down)}
    kept = [e for e in events if (e[0], e[1]) not in owns]
    main = _pods_at(events, t)
    out: list[list[Pod]] = []
    for cut in [near[0] - 1e-6, *near]:
        view = _pods_at(kept, cut)
        if view != main and view not in out:
            out.append(view)
    return out


METRICS_READ_S = 0.25
"""The controller reads the metrics API at most this long before it logs its proposal (it
lists the pods and computes in between)."""


def _metric_views(
    spans: list[_Span], t: float, stamp: float | None, chosen: Mapping[str, PodMetric]
) -> list[dict[str, PodMetric]]:
    """Other snapshots a sync at ``t`` that logged sample timestamp ``stamp`` may have read:
    each one holding ``stamp`` that may still have been served within :data:`METRICS_READ_S`
    before ``t`` (the poller sees a change up to :data:`METRICS_POLL_S` late). metrics-server
    changes its answer without a new timestamp for the first pod - the one the controller
    logs - when another node is scraped or a pod goes away."""
    if stamp is None:
        return []
    out: list[dict[str, PodMetric]] = []
    for k, span in enumerate(spans):
        begun = k == 0 or spans[k - 1].last < t
        lasting = k + 1 == len(spans) or spans[k + 1].first > t - METRICS_READ_S
        holds = any(m.timestamp == stamp for m in span.items.values())
        if holds and begun and lasting and span.items != chosen and span.items not in out:
            out.append(span.items)
    return out


def _alternatives(
    pod_views: list[list[Pod]],
    metric_views: list[dict[str, PodMetric]],
    pods: list[Pod],
    metrics: Mapping[str, PodMetric],
) -> list[dict]:
    """Every other observation the sync may have made, as the recording stores it."""
    combos = [(p, metrics) for p in pod_views] + [(pods, m) for m in metric_views]
    combos += [(p, m) for p in pod_views for m in metric_views]
    return [{"pods": [asdict(x) for x in p], "metrics": _samples(m)} for p, m in combos]


def _samples(metrics: Mapping[str, PodMetric]) -> dict[str, list]:
    return {k: [m.timestamp, m.window_s, m.cpu_milli] for k, m in metrics.items()}


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
    pod_changes = _pod_changes(pod_events)
    span_starts = [s.first for s in spans]
    out = []
    for i, s in enumerate(syncs):
        pods = _pods_at(pod_events, s.t)
        metrics, matched = _metrics_at(spans, s.t, s.metric_timestamp)
        current = s.current
        if current is None:  # a failed reconcile logs no size: the Deployment's at that time
            current = next((r for at, r in reversed(replicas) if at <= s.t), sc.start_replicas)
        desired = s.desired if s.desired is not None else current
        up, down = desired > current, desired < current
        changes = _changes_near(s.t, pod_changes, span_starts, up, down)
        alternatives = _alternatives(
            _pod_views(pod_events, pod_changes, s.t, up, down),
            _metric_views(spans, s.t, s.metric_timestamp, metrics),
            pods,
            metrics,
        )
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
                "desired": desired,
                "proposal": s.proposal,
                "metric_timestamp": s.metric_timestamp,
                "metrics_matched": matched,
                "changes": changes,
                "status_utilization": metric_status.get("current", {}).get("averageUtilization"),
                "pods": [asdict(p) for p in pods],
                "metrics": _samples(metrics),
                "alternatives": alternatives,
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
    """Time from the sync to the nearest pod change the controller may or may not have seen
    (not one its own rescale caused); ``None``: none within :data:`CHANGES_KEPT_S`."""
    metrics_matched: bool
    alternatives: tuple[tuple[int, int | None], ...] = ()
    """The port's (replicas, proposal) on each other observation the controller may have
    made (:func:`_pod_views`, :func:`_metric_views`)."""
    margin_any_s: float | None = None
    """Time to the nearest change of any kind - the harness's first, coarser rule, kept to
    measure what the finer one saved."""
    unready_overlap: int = 0
    """Pods Ready, inside the initialization period, set aside because their sample began
    before a whole window had passed since the Ready transition."""
    unready_late: int = 0
    """Pods past the initialization period, not Ready, set aside by the readiness delay."""

    @property
    def agrees(self) -> bool:
        return self.port == self.controller

    @property
    def ambiguous(self) -> bool:
        """Whether the controller may have observed something else than the port was given."""
        return bool(self.alternatives)

    @property
    def raced(self) -> bool:
        """Whether the sync is in the race window: what the controller may have observed
        instead changes the port's answer, so a disagreement here may be the race's."""
        return any(a != (self.port, self.port_proposal) for a in self.alternatives)

    @property
    def excused(self) -> bool:
        """A disagreement the race explains: on one of the other observations the port gives
        the controller's replicas and proposal."""
        return (self.controller, self.controller_proposal) in self.alternatives

    @property
    def raced_any(self) -> bool:
        """The harness's first rule: any change, the sync's own rescale and new metrics
        snapshots included, within :data:`RACE_MARGIN_S` of it."""
        return self.margin_any_s is not None and self.margin_any_s < RACE_MARGIN_S


def _margins(s: Mapping[str, Any]) -> tuple[float | None, float | None]:
    """(independent pod changes, any change): the nearest, in seconds."""
    if "changes" not in s:  # a recording from before the changes were kept
        return s["margin_s"], s["margin_s"]
    pod = [abs(dt) for dt, what in s["changes"] if what == "pod"]
    every = [abs(dt) for dt, _ in s["changes"]]
    return min(pod, default=None), min(every, default=None)


def _startup_unready(
    pods: list[Pod], metrics: Mapping[str, PodMetric], unready: Iterable[str], now: float,
    period_s: float,
) -> tuple[int, int]:  # fmt: skip
    """How many of the ``unready`` pods the start-up rules set aside, by rule: (a Ready pod's
    sample overlaps its start-up, a pod still not Ready after the initialization period)."""
    by_name = {p.name: p for p in pods}
    overlap = late = 0
    for name in unready:
        p = by_name[name]
        if p.phase != "Running" or name not in metrics or p.start_time is None:
            continue
        if p.start_time + period_s > now:
            overlap += p.ready == "True"
        else:
            late += 1
    return overlap, late


@dataclass(frozen=True)
class _Observation:
    """What ``groupPods`` and the ratio make of one sync's pods and samples."""

    pods: list[Pod]
    metrics: dict[str, PodMetric]
    groups: PodGroups
    usage: int

    @classmethod
    def of(
        cls, pods: list[dict], metrics: Mapping[str, list], now: float, period: float,
        delay: float,
    ) -> _Observation:  # fmt: skip
        ps = [Pod(**p) for p in pods]
        ms = {k: PodMetric(*v) for k, v in metrics.items()}
        groups = group_pods(ps, ms, now, period, delay)
        return cls(ps, ms, groups, sum(ms[n].cpu_milli for n in groups.ready))


def _one(x: float) -> torch.Tensor:
    return torch.tensor([float(x)], dtype=torch.float64)


def _decide(
    state: HPAState, now: float, current: int, obs: _Observation, config: HPAConfig,
    request: int,
) -> tuple[int, int, HPAReason, HPAState]:  # fmt: skip
    """The port's (replicas, metric proposal, reason, next state) on one observation."""
    ready, unready, missing = obs.groups.counts
    util = obs.usage / (ready * request) if ready else math.nan
    args = (_one(current), _one(ready), _one(unready), _one(util))
    desired, reason, state = hpa_step(state, now, *args, config, missing_pods=_one(missing))
    proposal = resource_replicas(*args, config, missing_pods=_one(missing))
    return int(desired[0]), int(proposal[0]), HPAReason(int(reason[0])), state


def _events_later(state: HPAState) -> HPAState:
    """The history with every scale event stamped :data:`RESCALE_LAG_S` later."""
    return replace(
        state, up_time=state.up_time + RESCALE_LAG_S, down_time=state.down_time + RESCALE_LAG_S
    )


def replay(
    record: Mapping[str, Any],
    cpu_initialization_period_s: float | None = None,
    initial_readiness_delay_s: float | None = None,
) -> list[SyncResult]:
    """Drive the port with one scenario's recorded observations, sync by sync, and on each
    other observation the controller may have made (from the same state; the recorded one
    carries the state on). The start-up rules' parameters are the controller's flags unless
    given."""
    flags = record.get("flags", CONTROLLER_FLAGS)
    period, delay = startup_rules(flags)
    if cpu_initialization_period_s is not None:
        period = cpu_initialization_period_s
    if initial_readiness_delay_s is not None:
        delay = initial_readiness_delay_s
    config = hpa_config(record["hpa"], flags)
    request = record.get("request_milli", REQUEST_MILLI)
    syncs = record["syncs"]
    state = HPAState.init(1, "cpu", config)
    t0 = syncs[0]["t"] if syncs else 0.0
    out = []
    for s in syncs:
        metric_path = s["kind"] == "metric"
        alternatives = []
        for alt in s.get("alternatives", ()):
            other = _Observation.of(alt["pods"], alt["metrics"], s["t"], period, delay)
            d, p, _, _ = _decide(state, s["t"] - t0, s["current"], other, config, request)
            alternatives.append((d, p if metric_path else None))
        obs = _Observation.of(s["pods"], s["metrics"], s["t"], period, delay)
        lagged = _decide(_events_later(state), s["t"] - t0, s["current"], obs, config, request)
        desired, proposal, reason, state = _decide(
            state, s["t"] - t0, s["current"], obs, config, request
        )
        if lagged[:2] != (desired, proposal):  # a period boundary within the stamp's lag
            alternatives.append((lagged[0], lagged[1] if metric_path else None))
        ready, unready, missing = obs.groups.counts
        overlap, late = _startup_unready(obs.pods, obs.metrics, obs.groups.unready, s["t"], period)
        margin, margin_any = _margins(s)
        out.append(
            SyncResult(
                t=s["t"],
                kind=s["kind"],
                current=s["current"],
                controller=s["desired"],
                port=desired,
                controller_proposal=s["proposal"],
                port_proposal=proposal if metric_path else None,
                ready=ready,
                unready=unready,
                missing=missing,
                utilization_pct=(obs.usage * 100) // (ready * request) if ready else None,
                status_utilization=s["status_utilization"],
                reason=reason.name,
                margin_s=margin,
                metrics_matched=s["metrics_matched"],
                alternatives=tuple(alternatives),
                margin_any_s=margin_any,
                unready_overlap=overlap,
                unready_late=late,
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
    """Disagreeing syncs the race explains (:attr:`SyncResult.excused`)."""
    in_window: int = 0
    """Syncs in the race window, agreeing or not (:attr:`SyncResult.raced`)."""
    ambiguous: int = 0
    """Syncs whose observation was ambiguous, whether it mattered or not."""
    in_window_any: int = 0
    """Syncs in the window by the harness's first rule (:attr:`SyncResult.raced_any`)."""
    replicas: list[int] = field(default_factory=list)
    """The controller's replica count after each change."""
    paths: list[str] = field(default_factory=list)
    """The port's reasons and pod groups seen (what the scenario exercised)."""

    @property
    def share(self) -> float:
        return self.agree / self.syncs if self.syncs else math.nan


OVERLAP_PATH = "Ready pods set aside (sample overlaps start-up)"
LATE_PATH = "not-Ready pods set aside past the initialization period"


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
    if any(r.unready_overlap for r in results):
        paths.append(OVERLAP_PATH)
    if any(r.unready_late for r in results):
        paths.append(LATE_PATH)
    metric = [r for r in results if r.kind == "metric"]
    return Agreement(
        scenario=name,
        syncs=len(results),
        agree=sum(r.agrees for r in results),
        proposals=len(metric),
        proposals_agree=sum(r.port_proposal == r.controller_proposal for r in metric),
        raced=sum(r.excused and not r.agrees for r in results),
        in_window=sum(r.raced for r in results),
        ambiguous=sum(r.ambiguous for r in results),
        in_window_any=sum(r.raced_any for r in results),
        replicas=replicas,
        paths=paths,
    )


def markdown_table(rows: Iterable[Agreement]) -> str:
    lines = [
        "| scenario | syncs | identical replicas | identical proposals | race window: syncs "
        "observed ambiguously / where that changes the port's answer / disagreeing "
        "| controller's sizes | paths exercised |",
        "|---|---|---|---|---|---|---|",
    ]
    for a in rows:
        lines.append(
            f"| {a.scenario} | {a.syncs} | {a.agree}/{a.syncs} ({100 * a.share:.1f} %) "
            f"| {a.proposals_agree}/{a.proposals} | {a.ambiguous} / {a.in_window} / {a.raced} "
            f"| {' -> '.join(map(str, a.replicas))} | {', '.join(a.paths)} |"
        )
    return "\n".join(lines)


@dataclass(frozen=True)
class Discrimination:
    """What one scenario's recording says about a start-up rule's parameter: syncs where the
    port, run with the parameter at 0, disagrees with the controller and the race does not
    explain it (the real value agreeing everywhere is :func:`agreement`'s business)."""

    scenario: str
    parameter: str
    replicas: int
    """Syncs with another replica count."""
    proposals: int
    """Syncs with another metric proposal."""


STARTUP_PARAMETERS = ("cpu_initialization_period_s", "initial_readiness_delay_s")


def startup_discrimination(record: Mapping[str, Any]) -> list[Discrimination]:
    """Replay ``record`` with each start-up parameter at 0 in turn (the other at the
    controller's value): a yardstick that checks the rule must see the port disagree."""
    out = []
    for parameter in STARTUP_PARAMETERS:
        res = [r for r in replay(record, **{parameter: 0.0}) if not r.excused]
        out.append(
            Discrimination(
                scenario=record["name"],
                parameter=parameter,
                replicas=sum(not r.agrees for r in res),
                proposals=sum(r.port_proposal != r.controller_proposal for r in res),
            )
        )
    return out


# --- running the suite -------------------------------------------------------------------------


def _settled(sc: Scenario, pods: list[Pod], metrics: Mapping[str, PodMetric]) -> bool:
    """Whether ``sc``'s initial pods are all counted by ``groupPods`` (with the cluster's
    start-up rules) and, where they burnt start-up CPU, sampled after it stopped."""
    groups = group_pods(pods, metrics, time.time(), *startup_rules())
    if not len(pods) == sc.start_replicas == len(groups.ready):
        return False
    if sc.startup_cpu_milli == 0:
        return True
    # kwok reports the usage annotation at the scrape; the driver's patch lands within ~1 s
    # of the (whole-second) Ready transition plus the tail.
    return all(
        p.ready_transition is not None
        and metrics[p.name].timestamp >= p.ready_transition + sc.startup_tail_s + 2.0
        for p in pods
    )


def _wait_initial_pods(
    driver: Driver, rec: Recorder, scenarios: list[Scenario], timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        driver.tick(None)
        if all(
            _settled(sc, rec.live_pods(sc.namespace), rec.latest_metrics(sc.namespace))
            for sc in scenarios
        ):
            return
        if time.monotonic() > deadline:
            raise TimeoutError("initial pods never all counted by groupPods' rules")
        time.sleep(0.25)


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
                    annotations=sc.pod_annotations(),
                )
            )
        driver = Driver(api, rec, scenarios)
        log("waiting for every initial pod to be counted (Ready, with a sample past its start)")
        _wait_initial_pods(driver, rec, scenarios, warmup_timeout_s)
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
