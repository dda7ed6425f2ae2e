"""The stack the operator benchmarks share (``bench_operator.py``, ``bench_soak.py``).

A fresh local control plane (kwokctl binary runtime) with ``n`` Deployments of fake pods in one
namespace, each with its AutoscalePolicy; ``qscale emulate`` (a subprocess) playing every
service, its loads switched through a control file; a real Prometheus scraping the emulator and
the operator; and ``qscale operator`` as users run it: a subprocess, kopf included, the shipped
model unless told otherwise, logged in as the chart's pod logs in: the least-privilege
ServiceAccount of ``deploy/rbac.yaml`` mounted where a pod has it (its token and CA; the
in-cluster login, which keeps the ``kubernetes`` package out of the operator), or that
ServiceAccount's token in a kubeconfig where no private mount namespace can be had
(:attr:`Stack.in_pod` says which).

The benchmark's own view of the cluster goes through an admin client on a background event
loop (:class:`Api`) and a list+watch of the Deployments that records every ``spec.replicas``
the API server showed (:class:`ReplicaWatch`). Every process and temp dir is cleaned up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from qscale.dev.cluster import ClusterOptions, LocalCluster, deployment_manifest, start_cluster
from qscale.dev.operator import (
    OperatorProcess,
    can_mount_service_account,
    install,
    service_account_files,
    service_env,
    token_kubeconfig,
)
from qscale.dev.prom import LocalPrometheus, free_port

NS, OP_NS = "bench", "qscale-system"
SCRAPE_S = 2.5
"""Divides the 5 s interval: every tick sees the scrapes at the same phase, so a load step
reaches the model after the same number of ticks whenever it is made at the same phase."""
DEPLOYMENTS = f"/apis/apps/v1/namespaces/{NS}/deployments"
POLICIES = f"/apis/qscale.io/v1alpha1/namespaces/{NS}/autoscalepolicies"


def shipped_model() -> dict[str, Any]:
    """The model shipped in the package: its directory, the sha256 of its manifest (what the
    operator reports as the model's digest) and of its TorchScript file."""
    import hashlib

    from qscale.policy.default import default_model_path

    path = default_model_path()
    raw = (path / "manifest.json").read_bytes()
    manifest = json.loads(raw)
    return {
        "path": str(path),
        "manifest_sha256": hashlib.sha256(raw).hexdigest(),
        "model_sha256": manifest["model_sha256"],
        "created_at": manifest.get("created_at", ""),
        "spec_hash": manifest["spec_hash"],
    }


def model_info(op: OperatorProcess) -> list[dict[str, str]]:
    """The models the operator reports on /metrics (``qscale_model_info``)."""
    import httpx

    text = httpx.get(op.metrics_url, timeout=5.0).text
    return [
        dict(re.findall(r'(\w+)="([^"]*)"', line))
        for line in text.splitlines()
        if line.startswith("qscale_model_info{")
    ]


def policy_body(name: str, interval_s: float, lo: int, hi: int, **spec: Any) -> dict:
    return {
        "apiVersion": "qscale.io/v1alpha1",
        "kind": "AutoscalePolicy",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": lo,
            "maxReplicas": hi,
            "interval": f"{interval_s:g}s",
            "slo": {"latencyP95": "500ms"},
            **spec,
        },
    }


class Api:
    """The admin's API client (qscale's own httpx client) on a background event loop."""

    def __init__(self, kubeconfig: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        os.environ["KUBECONFIG"] = str(kubeconfig)

        async def make():
            from qscale.operator.kube import Kube, load_connection

            return Kube(load_connection(), timeout_s=30, max_connections=48)

        self.kube = self.run(make())

    def run(self, coro: Coroutine, timeout_s: float | None = None) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def spawn(self, coro: Coroutine) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def create_all(self, path: str, bodies: Sequence[dict], concurrency: int = 16) -> None:
        async def go():
            sem = asyncio.Semaphore(concurrency)

            async def one(b: dict) -> None:
                async with sem:
                    await self.kube.post(path, b)

            await asyncio.gather(*(one(b) for b in bodies))

        self.run(go())

    def scale(self, counts: Mapping[str, int], concurrency: int = 16) -> None:
        """Scale Deployments by hand (the scale subresource, unconditionally)."""

        async def go():
            sem = asyncio.Semaphore(concurrency)

            async def one(name: str, n: int) -> None:
                async with sem:
                    await self.kube.patch_merge(
                        f"{DEPLOYMENTS}/{name}/scale", {"spec": {"replicas": n}}
                    )

            await asyncio.gather(*(one(k, v) for k, v in counts.items()))

        self.run(go())

    def list(self, path: str) -> list[dict]:
        return self.run(self.kube.get(path))["items"]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.run(self.kube.close(), 10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


class ReplicaWatch:
    """Every ``spec.replicas`` of every Deployment in the namespace, as the API server showed
    it, with the time the benchmark saw it (list + watch; relists after a break, and records
    the gaps during which a change could have gone unseen)."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.history: dict[str, list[tuple[float, int]]] = {}
        self.gaps: list[tuple[float, float]] = []
        self._stop = False
        self._task = api.spawn(self._run())

    def current(self, name: str) -> int | None:
        h = self.history.get(name)
        return h[-1][1] if h else None

    def _see(self, obj: dict, t: float) -> None:
        name = obj["metadata"]["name"]
        n = int((obj.get("spec") or {}).get("replicas", 0))
        h = self.history.setdefault(name, [])
        if not h or h[-1][1] != n:
            h.append((t, n))

    async def _run(self) -> None:
        from qscale.operator.kube import ApiError

        broken_at: float | None = None
        while not self._stop:
            try:
                listing = await self.api.kube.get(DEPLOYMENTS)
                t = time.time()
                if broken_at is not None:
                    self.gaps.append((broken_at, t))
                    broken_at = None
                for d in listing["items"]:
                    self._see(d, t)
                rv = listing["metadata"]["resourceVersion"]
                while not self._stop:
                    async for ev in self.api.kube.watch(DEPLOYMENTS, rv, timeout_s=60):
                        obj = ev.get("object") or {}
                        rv = (obj.get("metadata") or {}).get("resourceVersion", rv)
                        if ev.get("type") in ("ADDED", "MODIFIED"):
                            self._see(obj, time.time())
            except (ApiError, OSError, ValueError, KeyError):
                if broken_at is None:
                    broken_at = time.time()
                await asyncio.sleep(0.5)

    def wait_change(self, name: str, since: float, timeout_s: float) -> float | None:
        """When ``name`` first showed a new count after ``since`` (None: not in time)."""
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            for t, _ in self.history.get(name, []):
                if t >= since:
                    return t
            time.sleep(0.05)
        return None

    def stop(self) -> None:
        self._stop = True
        self._task.cancel()


def emulator_process(
    kubeconfig: Path, workloads: list[dict], workdir: Path
) -> tuple[subprocess.Popen, int, Path]:
    cfg = workdir / "workloads.json"
    cfg.write_text(json.dumps(workloads))
    control = workdir / "control.json"
    control.write_text("{}")
    port = free_port()
    log = (workdir / "emulator.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "qscale.entry",
            "emulate",
            "--kubeconfig",
            str(kubeconfig),
            "-n",
            NS,
            "--config",
            str(cfg),
            "--control",
            str(control),
            "--port",
            str(port),
            "--step",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return proc, port, control


@dataclass
class Stack:
    n: int
    workdir: Path
    cluster: LocalCluster
    api: Api
    names: list[str]
    kubeconfig: Path
    """The operator's (a ServiceAccount token)."""
    emulator: subprocess.Popen
    control: Path
    prom: LocalPrometheus
    op_port: int
    env: dict[str, str]
    service_account: Path | None = None
    """Mounted for the operator as in a pod (None: it logs in with :attr:`kubeconfig`)."""
    watch: ReplicaWatch | None = None
    op: OperatorProcess | None = None
    loads: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def set_loads(self, changes: Mapping[str, Any]) -> None:
        """Switch loads (req/s, or a :class:`qscale.emulator.Load` spec) of some Deployments."""
        self.loads.update(changes)
        tmp = self.control.with_suffix(".tmp")
        tmp.write_text(json.dumps({f"{NS}/{k}": v for k, v in self.loads.items()}))
        tmp.replace(self.control)

    @property
    def in_pod(self) -> bool:
        """Whether the operator logs in as in a pod (the in-cluster ServiceAccount)."""
        return self.service_account is not None

    def start_operator(self, extra: Mapping[str, str] | None = None, name: str = "op") -> float:
        """Start ``qscale operator``; returns the wall time it was started at."""
        self.stop_operator()
        p = OperatorProcess(
            None if self.service_account else self.kubeconfig,
            service_account=self.service_account,
            env={**self.env, **(extra or {})},
            workdir=self.workdir / name,
            metrics_port=self.op_port,
        )
        p.workdir.mkdir(exist_ok=True)
        t = time.time()
        self.op = p.start(wait_ready_s=0)
        return t

    def stop_operator(self, kill: bool = False) -> None:
        if self.op is not None:
            if kill:
                self.op.kill()
            else:
                self.op.stop()

    def metric(self, name: str, labels: Mapping[str, str] | None = None) -> float:
        try:
            assert self.op is not None
            return self.op.metric(name, labels)
        except Exception:
            return math.nan

    def wait_metric(
        self, name: str, pred: Callable[[float], bool], timeout_s: float, poll: float = 0.25
    ) -> float:
        t0 = time.time()
        while time.time() - t0 < timeout_s:
            v = self.metric(name)
            if pred(v):
                return v
            time.sleep(poll)
        return math.nan

    def close(self, keep: Path | None = None) -> None:
        """Stop everything; ``keep``: copy the operator's and the emulator's logs there."""
        if self.watch is not None:
            self.watch.stop()
        if self.op is not None:
            self.op.stop()
        if keep is not None:
            import shutil

            keep.mkdir(parents=True, exist_ok=True)
            for log in [*self.workdir.glob("*/operator.log"), self.workdir / "emulator.log"]:
                with contextlib.suppress(OSError):
                    shutil.copy(log, keep / f"{log.parent.name}-{log.name}")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.emulator.pid, 15)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.emulator.wait(timeout=20)
        self.prom.close()
        self.api.close()
        self.cluster.delete()


def start_stack(
    n: int,
    workdir: Path,
    policy: Callable[[str], dict],
    loads: Callable[[str], Any],
    pods_per_deployment: int = 4,
    replicas: int = 2,
    env: Mapping[str, str] | None = None,
    in_pod: bool | None = None,
) -> Stack:
    """Cluster, Deployments (``replicas`` pods each, all Ready), emulator, Prometheus, policies;
    the operator is not started. ``pods_per_deployment``: room on the fake nodes for each.
    ``in_pod``: the operator logs in as a pod (None: where the machine allows it; False: with
    the ServiceAccount's token in a kubeconfig)."""
    per_node = 250
    nodes = max(2, math.ceil(pods_per_deployment * n / per_node) + 1)
    t0 = time.time()
    cluster = start_cluster(
        ClusterOptions(
            nodes=nodes, pods_per_node=per_node, disable_qps_limits=True, delayed_ready=False
        )
    )
    timings = {"cluster_up_s": time.time() - t0}
    api = emulator = prom = None
    try:
        install(cluster, OP_NS, [NS])
        api = Api(cluster.kubeconfig)
        names = [f"svc-{i:04d}" for i in range(n)]
        deps = [json.loads(deployment_manifest(nm, NS, replicas=replicas)) for nm in names]
        t0 = time.time()
        api.create_all(DEPLOYMENTS, deps)
        while True:
            ready = sum(
                1
                for d in api.list(DEPLOYMENTS)
                if (d.get("status") or {}).get("readyReplicas") == replicas
            )
            if ready >= n:
                break
            if time.time() - t0 > 600:
                raise TimeoutError(f"{ready} of {n} Deployments ready after 600 s")
            time.sleep(2)
        timings["deployments_ready_s"] = time.time() - t0
        workloads = [{"namespace": NS, "deployment": nm, "load": loads(nm)} for nm in names]
        emulator, emu_port, control = emulator_process(cluster.kubeconfig, workloads, workdir)
        op_port = free_port()
        prom = LocalPrometheus(
            {"emulator": [f"127.0.0.1:{emu_port}"], "operator": [f"127.0.0.1:{op_port}"]},
            scrape_interval_s=SCRAPE_S,
        ).start()
        api.create_all(POLICIES, [policy(nm) for nm in names])
        kubeconfig = token_kubeconfig(cluster, OP_NS, workdir / "operator.kubeconfig", 6 * 3600)
        sa, pod_env = None, {}
        if in_pod is None:
            in_pod = can_mount_service_account()
        if in_pod:
            sa = service_account_files(cluster, OP_NS, workdir / "serviceaccount", 6 * 3600)
            pod_env = service_env(cluster)
        stack = Stack(
            n,
            workdir,
            cluster,
            api,
            names,
            kubeconfig,
            emulator,
            control,
            prom,
            op_port,
            {
                "QSCALE_NAMESPACES": NS,
                "QSCALE_PROMETHEUS_URL": prom.url,
                "QSCALE_LEASE_NAMESPACE": OP_NS,
                "QSCALE_TICK_S": "1",
                **pod_env,
                **(env or {}),
            },
            service_account=sa,
            timings=timings,
        )
        stack.watch = ReplicaWatch(api)
        return stack
    except BaseException:
        if emulator is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(emulator.pid, 15)
        if prom is not None:
            prom.close()
        if api is not None:
            api.close()
        cluster.delete()
        raise


# --- the operator's log ---------------------------------------------------------------------

_TICK = re.compile(
    r"^(?P<at>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO qscale.operator: tick: (?P<due>\d+) due, "
    r"(?P<decided>\d+) decided, (?P<queries>\d+) queries, (?P<scaled>\d+) scaled "
    r"\(last (?P<scale_ms>[\d-]+)(?: ms)?\), (?P<status>\d+) status writes "
    r"\(last (?P<status_ms>[\d-]+)(?: ms)?\), (?P<tick_ms>\d+) ms[^(]*(?:\((?P<phases>[^)]*)\))?"
)
_SCALED = re.compile(
    r"^(?P<at>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO qscale.operator: "
    r"(?P<ns>[^/ ]+)/(?P<policy>\S+) Normal \S+: scaled (?P<target>\S+) (?P<a>\d+) -> (?P<b>\d+)"
)


_OUTSIDE = re.compile(
    r"^(?P<at>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO qscale.operator: "
    r"(?P<ns>[^/ ]+)/(?P<policy>\S+) Normal OUTSIDE_SCALE: (?P<target>\S+) was scaled "
    r"(?P<a>\d+) -> (?P<b>\d+) by someone else"
)


def _at(s: str) -> float:
    return datetime.strptime(s, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def log_offset(op: OperatorProcess) -> int:
    try:
        return op.log_path.stat().st_size
    except OSError:
        return 0


def log_text(op: OperatorProcess, offset: int = 0) -> str:
    with open(op.log_path, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def tick_lines(text: str) -> list[dict]:
    """The operator's tick lines (ticks that wrote something), oldest first."""
    out = []
    for line in text.splitlines():
        m = _TICK.match(line)
        if m:

            def ms(k: str, m: re.Match = m) -> float | None:
                return None if m[k] == "-" else float(m[k])

            out.append(
                {
                    "at": _at(m["at"]),
                    "due": int(m["due"]),
                    "decided": int(m["decided"]),
                    "queries": int(m["queries"]),
                    "scale_writes": int(m["scaled"]),
                    "status_writes": int(m["status"]),
                    "to_last_scale_ms": ms("scale_ms"),
                    "to_last_status_ms": ms("status_ms"),
                    "tick_ms": float(m["tick_ms"]),
                    "phases_ms": {
                        k.rsplit(" ", 1)[0]: float(k.rsplit(" ", 1)[1])
                        for k in (m["phases"] or "").removesuffix(" ms").split(", ")
                        if " " in k
                    },
                }
            )
    return out


def scaled_lines(text: str, outside: bool = False) -> list[dict]:
    """Every scale the operator reports as landed (its Event, logged before it is posted);
    ``outside``: every scale it noticed as made by someone else."""
    pattern = _OUTSIDE if outside else _SCALED
    return [
        {"at": _at(m["at"]), "target": m["target"], "from": int(m["a"]), "to": int(m["b"])}
        for m in map(pattern.match, text.splitlines())
        if m
    ]


# --- memory ---------------------------------------------------------------------------------

_BASELINE = """
import sys, time, torch
if sys.argv[4] == "pod":  # as the operator in a pod does (qscale.operator.kube)
    sys.modules["kubernetes"] = None
torch.set_num_threads(1)
m = torch.jit.load(sys.argv[1])
rows, width = int(sys.argv[2]), int(sys.argv[3])
def rss():
    with open("/proc/self/status") as f:
        return int(f.read().split("VmRSS:")[1].split()[0]) / 1024
loaded = rss()
with torch.no_grad():
    m(torch.zeros(rows, width))
forward = rss()
import qscale.operator.handlers  # kopf (kubernetes out of a pod), aiohttp, httpx, prometheus-client
print(loaded, forward, rss())
"""


def torch_baseline_rss(model_dir: Path, rows: int, in_pod: bool = False) -> dict[str, float]:
    """RSS (MB, VmRSS as for the operator) of a process that only imports torch and loads the
    model with ``torch.jit.load``; then after one forward pass over ``rows`` rows, and after
    importing the operator's modules too (no policy, no connection: its import floor; ``in_pod``:
    without the ``kubernetes`` package, as the operator in a pod)."""
    from qscale.features import N_FEATURES

    width = N_FEATURES  # the observation of this build's feature spec
    out = subprocess.run(
        [
            *(sys.executable, "-c", _BASELINE, str(model_dir / "model.pt")),
            *(str(rows), str(width), "pod" if in_pod else "kubeconfig"),
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    ).stdout.split()
    return {
        "import_torch_and_load_mb": float(out[0]),
        "after_forward_mb": float(out[1]),
        "with_operator_imports_mb": float(out[2]),
    }


def machine() -> dict[str, Any]:
    """The machine's load and what else runs on it (the busiest processes not ours)."""
    ps = subprocess.run(
        ["ps", "-eo", "pid,pcpu,rss,args", "--sort=-pcpu"], capture_output=True, text=True
    ).stdout.splitlines()[1:9]
    return {
        "loadavg": os.getloadavg(),
        "cores": os.cpu_count(),
        "top": [" ".join([*p.split()[:3], " ".join(p.split()[3:])[:80]]) for p in ps],
    }
