"""The workload emulator (``qscale emulate``): plays the services behind fake pods.

kwok's pods run nothing, so this process stands in for the application, cAdvisor and
kube-state-metrics of each emulated Deployment: it watches the pods (which are Ready, what they
request), steps the simulator's service model with the load of a trace or schedule
(:mod:`qscale.emulator.workload`), and exports the metrics the default queries read on one
loopback endpoint for Prometheus to scrape. Optionally (``annotate_cpu``) it writes each pod's
CPU use to ``kwok.x-k8s.io/usage-cpu``, so that metrics-server, ``kubectl top`` and a real HPA
see the same load -- off by default: at 1,000 Deployments those pod patches alone would take
most of the API server's write capacity.

Separate from the operator (it never imports :mod:`qscale.operator`); it uses the
``kubernetes`` client.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from qscale.emulator.workload import Load, Pod, Workload, WorkloadSet

__all__ = ["Emulator", "Load", "Workload"]

log = logging.getLogger("qscale.emulator")
USAGE_CPU_ANNOTATION = "kwok.x-k8s.io/usage-cpu"


def _cores(q: str | None) -> float:
    if not q:
        return 0.0
    q = str(q)
    try:
        if q.endswith("m"):
            return float(q[:-1]) / 1000.0
        return float(q)
    except ValueError:
        return 0.0


def _deployment_of(pod_name: str) -> str:
    """``<deployment>-<pod-template-hash>-<5 chars>`` -> ``<deployment>`` (as the queries do)."""
    parts = pod_name.rsplit("-", 2)
    return parts[0] if len(parts) == 3 else ""


def pod_from(obj) -> Pod | None:
    meta, spec, status = obj.metadata, obj.spec, obj.status
    if meta.deletion_timestamp is not None or (status and status.phase in ("Succeeded", "Failed")):
        return None
    req = lim = 0.0
    container = "app"
    for c in spec.containers or []:
        container = c.name
        res = c.resources
        r = _cores((res.requests or {}).get("cpu")) if res else 0.0
        limit = _cores((res.limits or {}).get("cpu")) if res else 0.0
        req += r or limit
        lim += limit or r
    ready = (
        any(c.type == "Ready" and c.status == "True" for c in (status.conditions or []))
        if status
        else False
    )
    return Pod(meta.name, meta.namespace, _deployment_of(meta.name), ready, req, lim, container)


class Emulator:
    """Runs the workloads in background threads; use as a context manager or call :meth:`stop`."""

    def __init__(
        self,
        kubeconfig: str | Path,
        workloads: Sequence[Workload],
        *,
        compress: float = 1.0,
        step_s: float = 1.0,
        port: int = 0,
        address: str = "127.0.0.1",
        annotate_cpu: bool = False,
        annotate_every_s: float = 10.0,
    ) -> None:
        from kubernetes import client, config

        self.ws = WorkloadSet(workloads, compress=compress)
        self.step_s = step_s
        self.address = address
        self.port = port
        self.annotate_cpu = annotate_cpu
        self.annotate_every_s = annotate_every_s
        cfg = client.Configuration()
        config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
        cfg.connection_pool_maxsize = 8
        self._api = client.CoreV1Api(client.ApiClient(cfg))
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._server = None
        self._watches: list = []
        self._annotated: dict[tuple[str, str], float] = {}
        self._resync = threading.Event()
        self.steps = 0

    # --- control --------------------------------------------------------------------------

    def set_load(self, namespace: str, deployment: str, load: Load | float | str) -> None:
        if isinstance(load, int | float):
            load = Load.constant(float(load))
        elif isinstance(load, str):
            load = Load.parse(load)
        self.ws.set_load(namespace, deployment, load)

    def add(self, workload: Workload) -> None:
        """Emulate one more Deployment (its namespace is watched from now on)."""
        new_ns = workload.namespace not in {w.namespace for w in self.ws.workloads.values()}
        with self.ws.lock:
            self.ws.workloads[(workload.namespace, workload.deployment)] = workload
        if new_ns and self._server is not None:
            self._spawn(self._watch, workload.namespace, name=f"pods {workload.namespace}")
        elif self._server is not None:
            self._resync.set()

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}/metrics"

    def start(self) -> Emulator:
        from qscale.emulator.exporter import serve

        if self.port == 0:
            import socket

            with socket.socket() as s:
                s.bind((self.address, 0))
                self.port = s.getsockname()[1]
        self._server = serve(self.ws, self.address, self.port)
        namespaces = sorted({w.namespace for w in self.ws.workloads.values()})
        for ns in namespaces:
            self._spawn(self._watch, ns, name=f"pods {ns}")
        self._spawn(self._run, name="steps")
        if self.annotate_cpu:
            self._spawn(self._annotate, name="annotate")
        return self

    def _spawn(self, fn, *args, name: str) -> None:
        t = threading.Thread(target=fn, args=args, name=f"emulator {name}", daemon=True)
        t.start()
        self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        for w in self._watches:
            with contextlib.suppress(Exception):
                w.stop()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for t in self._threads:
            t.join(timeout=5)
        with contextlib.suppress(Exception):
            self._api.api_client.close()

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- threads --------------------------------------------------------------------------

    def _run(self) -> None:
        last = time.time()
        while not self._stop.wait(max(0.0, self.step_s - (time.time() - last))):
            now = time.time()
            try:
                self.ws.step(now, now - last)
                self.steps += 1
            except Exception:
                log.exception("emulator step failed")
            last = now

    def _watch(self, namespace: str) -> None:
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        while not self._stop.is_set():
            try:
                self._resync.clear()
                listing = self._api.list_namespaced_pod(namespace, _request_timeout=30)
                seen = set()
                for obj in listing.items:
                    p = pod_from(obj)
                    if p is not None:
                        self.ws.upsert_pod(p)
                        seen.add(p.name)
                for p in [
                    p for p in self.ws.snapshot() if p.namespace == namespace and p.name not in seen
                ]:
                    self.ws.remove_pod(namespace, p.name)
                rv = listing.metadata.resource_version
                w = watch.Watch()
                self._watches.append(w)
                for ev in w.stream(
                    self._api.list_namespaced_pod,
                    namespace,
                    resource_version=rv,
                    timeout_seconds=60,
                    _request_timeout=90,
                ):
                    if self._stop.is_set() or self._resync.is_set():
                        break
                    obj = ev["object"]
                    p = pod_from(obj)
                    if ev["type"] == "DELETED" or p is None:
                        self.ws.remove_pod(namespace, obj.metadata.name)
                    else:
                        self.ws.upsert_pod(p)
                self._watches.remove(w)
            except (ApiException, OSError, ValueError, Exception) as e:  # the API server restarts
                if self._stop.is_set():
                    return
                log.debug("pod watch %s: %s", namespace, e)
                self._stop.wait(1.0)

    def _annotate(self) -> None:
        # A kubelet reports CPU as a rate over its window, not the last instant: annotate each
        # pod's mean use since the previous round (its CPU counter's increase), so that
        # metrics-server and the HPA see what cAdvisor's rate() shows the operator.
        seen: dict[tuple[str, str], tuple[float, float]] = {}
        while not self._stop.wait(self.annotate_every_s):
            now = time.time()
            pods = self.ws.snapshot()
            prev, seen = seen, {(p.namespace, p.name): (p.cpu_seconds, now) for p in pods}
            for p in pods:
                if not p.ready:
                    continue
                key = (p.namespace, p.name)
                before = prev.get(key)
                if before is not None and now > before[1]:
                    cores = max(0.0, p.cpu_seconds - before[0]) / (now - before[1])
                else:
                    cores = p.cpu_now
                milli = round(cores * 1000)
                old = self._annotated.get(key)
                if old is not None and abs(old - milli) <= max(5, 0.05 * old):
                    continue
                try:
                    self._api.patch_namespaced_pod(
                        p.name,
                        p.namespace,
                        {"metadata": {"annotations": {USAGE_CPU_ANNOTATION: f"{milli}m"}}},
                    )
                    self._annotated[key] = milli
                except Exception as e:
                    log.debug("annotate %s/%s: %s", p.namespace, p.name, e)
