"""The services behind emulated Deployments, stepped with the simulator's own service model.

Each :class:`Workload` is one Deployment's service: a load (:class:`Load`: a trace file played
with time compressed, or a schedule), a per-pod capacity and service time. Every step of ``dt``
real seconds, :func:`qscale.service.serve` serves the arrivals with the pods that are
Ready *in the cluster* (from the pod watch), and the step's latency distribution
(:func:`~qscale.service.step_cdf`) becomes histogram counts: exactly what the simulator
shows a policy, now exported for real.

Per pod, what a real app, cAdvisor and kube-state-metrics would export (the names and labels
the default queries of :data:`qscale.features.PROMQL` read):

* ``http_requests_total{namespace, pod}``: served requests, split evenly over the Ready pods;
* ``http_request_duration_seconds_bucket{namespace, pod, le}`` (+ ``_sum``, ``_count``) with
  :data:`~qscale.service.DEFAULT_BUCKETS`;
* ``container_cpu_usage_seconds_total{namespace, pod, container}``: a Ready pod at full load
  uses its CPU limit (its request without a limit), so the CPU query reads the service model's
  utilization times limit/request, as in the simulator; a starting pod uses none;
* ``kube_pod_container_resource_requests{namespace, pod, container, resource="cpu"}`` for every
  pod, starting ones included.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from qscale import service

__all__ = ["Load", "Pod", "Workload", "WorkloadSet"]

_BOUNDS = torch.tensor(service.DEFAULT_BUCKETS, dtype=torch.float64)


class Load:
    """Requests/s as a function of emulated seconds since the start."""

    def __init__(self, fn: Callable[[float], float], describe: str) -> None:
        self._fn = fn
        self.describe = describe

    def __call__(self, t: float) -> float:
        return max(0.0, float(self._fn(t)))

    @staticmethod
    def constant(rps: float) -> Load:
        return Load(lambda _t: rps, f"{rps:g} req/s")

    @staticmethod
    def schedule(points: Sequence[tuple[float, float]], ramp: bool = False) -> Load:
        """Piecewise constant (or linear with ``ramp``) through ``(t, rps)`` points."""
        ts = np.array([p[0] for p in points], dtype=np.float64)
        vs = np.array([p[1] for p in points], dtype=np.float64)

        def fn(t: float) -> float:
            if ramp:
                return float(np.interp(t, ts, vs))
            i = int(np.searchsorted(ts, t, side="right")) - 1
            return float(vs[max(i, 0)])

        return Load(fn, f"schedule {list(points)}")

    @staticmethod
    def trace(path: str | Path, scale: float = 1.0, loop: bool = True) -> Load:
        """A ``t,value`` trace file (as :func:`qscale.simulator.traces.load_trace` reads it),
        times ``scale``; emulated time runs ``compress`` times faster than real time."""
        from qscale.simulator.traces import load_trace

        tr = load_trace(path)
        t = tr.t - tr.t[0]
        end = float(t[-1] + tr.interval)

        def fn(x: float) -> float:
            if loop:
                x = x % end
            return float(np.interp(x, t, tr.value)) * scale

        return Load(fn, f"trace {tr.name} x{scale:g}")

    @staticmethod
    def parse(spec: str) -> Load:
        """``"50"``, ``"0:20,60:200,120:20"`` (piecewise), ``"ramp:0:20,60:200"``,
        ``"trace:FILE[:SCALE]"``."""
        if spec.startswith("trace:"):
            parts = spec[6:].rsplit(":", 1)
            if len(parts) == 2:
                try:
                    return Load.trace(parts[0], float(parts[1]))
                except ValueError:
                    pass
            return Load.trace(spec[6:])
        ramp = spec.startswith("ramp:")
        body = spec[5:] if ramp else spec
        if ":" not in body:
            return Load.constant(float(body))
        pts = [tuple(float(x) for x in item.split(":")) for item in body.split(",")]
        return Load.schedule([(a, b) for a, b in pts], ramp=ramp)


@dataclass
class Workload:
    """The service behind one Deployment."""

    namespace: str
    deployment: str
    load: Load
    capacity_rps: float = 50.0
    """Requests/s one Ready pod serves at its CPU limit."""
    service_time_s: float = 0.05
    timeout_s: float = 30.0
    # state
    backlog: float = 0.0
    started: float | None = None


@dataclass
class Pod:
    name: str
    namespace: str
    deployment: str
    ready: bool
    cpu_request: float
    """Cores requested (all containers)."""
    cpu_limit: float
    """Cores the pod may use (its request without a limit)."""
    container: str = "app"
    requests_total: float = 0.0
    buckets: list[float] = field(default_factory=lambda: [0.0] * (len(service.DEFAULT_BUCKETS) + 1))
    latency_sum: float = 0.0
    cpu_seconds: float = 0.0
    cpu_now: float = 0.0
    """Cores in use over the last step (for the usage-cpu annotation)."""


class WorkloadSet:
    """Every workload and pod, stepped together (one batched service-model call per step)."""

    def __init__(self, workloads: Sequence[Workload], compress: float = 1.0) -> None:
        self.workloads = {(w.namespace, w.deployment): w for w in workloads}
        self.compress = compress
        self.pods: dict[tuple[str, str], Pod] = {}
        self.lock = threading.Lock()
        self.t0: float | None = None

    def set_load(self, namespace: str, deployment: str, load: Load) -> None:
        with self.lock:
            self.workloads[(namespace, deployment)].load = load

    def emulated(self, now: float) -> float:
        return (now - (self.t0 if self.t0 is not None else now)) * self.compress

    def upsert_pod(self, pod: Pod) -> None:
        with self.lock:
            old = self.pods.get((pod.namespace, pod.name))
            if old is not None:
                old.ready, old.cpu_request, old.cpu_limit, old.container = (
                    pod.ready,
                    pod.cpu_request,
                    pod.cpu_limit,
                    pod.container,
                )
            elif (pod.namespace, pod.deployment) in self.workloads:
                self.pods[(pod.namespace, pod.name)] = pod

    def remove_pod(self, namespace: str, name: str) -> None:
        with self.lock:
            self.pods.pop((namespace, name), None)

    def step(self, now: float, dt: float) -> None:
        """Serve ``dt`` seconds of load ending at ``now`` (real epoch seconds)."""
        with self.lock:
            if self.t0 is None:
                self.t0 = now
            t = self.emulated(now)
            ws = list(self.workloads.values())
            by_dep: dict[tuple[str, str], list[Pod]] = {}
            for p in self.pods.values():
                by_dep.setdefault((p.namespace, p.deployment), []).append(p)
            if not ws:
                return
            f64 = torch.float64
            arrivals = torch.tensor([w.load(t) * dt for w in ws], dtype=f64)
            ready_pods = [
                [p for p in by_dep.get((w.namespace, w.deployment), []) if p.ready] for w in ws
            ]
            ready = torch.tensor([float(len(r)) for r in ready_pods], dtype=f64)
            capacity = torch.tensor([w.capacity_rps for w in ws], dtype=f64)
            stime = torch.tensor([w.service_time_s for w in ws], dtype=f64)
            backlog = torch.tensor([w.backlog for w in ws], dtype=f64)
            timeout = max(w.timeout_s for w in ws)
            fl, lat = service.serve(arrivals, backlog, ready, capacity, stime, dt, timeout)
            cdf = service.step_cdf(lat, _BOUNDS, timeout)
            mean = service.step_mean(lat)
            served = fl.served.tolist()
            util = fl.utilization.tolist()
            cdf_l = cdf.tolist()
            mean_l = mean.tolist()
            new_backlog = fl.backlog.tolist()
            for i, w in enumerate(ws):
                w.backlog = new_backlog[i]
                rp = ready_pods[i]
                for p in by_dep.get((w.namespace, w.deployment), []):
                    if not p.ready:
                        p.cpu_now = 0.0
                if not rp:
                    continue
                share = served[i] / len(rp)
                mean_latency = mean_l[i] if math.isfinite(mean_l[i]) else 0.0
                for p in rp:
                    p.requests_total += share
                    for k, c in enumerate(cdf_l[i]):
                        p.buckets[k] += share * c
                    p.buckets[-1] += share
                    p.latency_sum += share * mean_latency
                    p.cpu_now = util[i] * p.cpu_limit
                    p.cpu_seconds += p.cpu_now * dt

    def snapshot(self) -> list[Pod]:
        with self.lock:
            return [
                Pod(
                    p.name,
                    p.namespace,
                    p.deployment,
                    p.ready,
                    p.cpu_request,
                    p.cpu_limit,
                    p.container,
                    p.requests_total,
                    list(p.buckets),
                    p.latency_sum,
                    p.cpu_seconds,
                    p.cpu_now,
                )
                for p in self.pods.values()
            ]
