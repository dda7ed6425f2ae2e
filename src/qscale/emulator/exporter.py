"""The emulated pods' metrics in Prometheus' text exposition format, on one loopback endpoint.

Written as plain text rather than through prometheus-client's metric families: at 1,000
Deployments (2,000 pods, ~40,000 samples) those took longer than a 2 s scrape's timeout on a
busy 2-core machine, a failed scrape marks every series stale, and the default CPU query (a
division by an instant gauge) then reads "no series" -- for every Deployment at once.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from qscale import service
from qscale.emulator.workload import WorkloadSet

__all__ = ["CONTENT_TYPE", "exposition", "serve"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LE = [f"{b:g}" for b in service.DEFAULT_BUCKETS] + ["+Inf"]
_HEADER = {
    "http_requests_total": ("counter", "Requests served"),
    "http_request_duration_seconds": ("histogram", "Request latency"),
    "container_cpu_usage_seconds_total": ("counter", "CPU seconds used (cAdvisor)"),
    "kube_pod_container_resource_requests": ("gauge", "Resource requests (kube-state-metrics)"),
}


def exposition(ws: WorkloadSet) -> bytes:
    pods = ws.snapshot()
    req, hist, cpu, requests = [], [], [], []
    for p in pods:
        lab = f'namespace="{p.namespace}",pod="{p.name}"'
        req.append(f"http_requests_total{{{lab}}} {p.requests_total!r}")
        for le, v in zip(_LE, p.buckets, strict=True):
            hist.append(f'http_request_duration_seconds_bucket{{{lab},le="{le}"}} {v!r}')
        hist.append(f"http_request_duration_seconds_sum{{{lab}}} {p.latency_sum!r}")
        hist.append(f"http_request_duration_seconds_count{{{lab}}} {p.buckets[-1]!r}")
        clab = f'{lab},container="{p.container}"'
        cpu.append(f"container_cpu_usage_seconds_total{{{clab}}} {p.cpu_seconds!r}")
        rlab = f'{clab},resource="cpu",unit="core"'
        requests.append(f"kube_pod_container_resource_requests{{{rlab}}} {p.cpu_request!r}")
    out = []
    for name, lines in zip(_HEADER, (req, hist, cpu, requests), strict=True):
        kind, help_ = _HEADER[name]
        out += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}", *lines]
    out.append("")
    return "\n".join(out).encode()


def serve(ws: WorkloadSet, address: str, port: int) -> ThreadingHTTPServer:
    """Serve ``/metrics`` in a daemon thread; ``shutdown()`` the returned server to stop."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] not in ("/metrics", "/"):
                self.send_error(404)
                return
            body = exposition(ws)
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer((address, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="emulator exporter", daemon=True).start()
    return server
