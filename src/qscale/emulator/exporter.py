"""The emulated pods' metrics in Prometheus' exposition format (one collector, one endpoint)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from qscale.emulator.workload import WorkloadSet
from qscale.simulator import service

__all__ = ["registry_for"]

_LE = [f"{b:g}" for b in service.DEFAULT_BUCKETS] + ["+Inf"]


class _Collector(Collector):
    def __init__(self, ws: WorkloadSet) -> None:
        self.ws = ws

    def collect(self):
        pods = self.ws.snapshot()
        req = CounterMetricFamily("http_requests", "Requests served", labels=["namespace", "pod"])
        hist = HistogramMetricFamily(
            "http_request_duration_seconds", "Request latency", labels=["namespace", "pod"]
        )
        cpu = CounterMetricFamily(
            "container_cpu_usage_seconds",
            "CPU seconds used (cAdvisor)",
            labels=["namespace", "pod", "container"],
        )
        requests = GaugeMetricFamily(
            "kube_pod_container_resource_requests",
            "Resource requests (kube-state-metrics)",
            labels=["namespace", "pod", "container", "resource", "unit"],
        )
        for p in pods:
            req.add_metric([p.namespace, p.name], p.requests_total)
            hist.add_metric(
                [p.namespace, p.name],
                buckets=list(zip(_LE, p.buckets, strict=True)),
                sum_value=p.latency_sum,
            )
            cpu.add_metric([p.namespace, p.name, p.container], p.cpu_seconds)
            requests.add_metric([p.namespace, p.name, p.container, "cpu", "core"], p.cpu_request)
        yield req
        yield hist
        yield cpu
        yield requests


def registry_for(ws: WorkloadSet) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Collector(ws))
    return reg
