"""The stack the operator's cluster tests share: one operator (a subprocess with a
least-privilege ServiceAccount token), one emulator, one real Prometheus, on the session's
local control plane; and a fault-injecting proxy in front of that Prometheus
(:class:`faultprom.FaultProm`, an address the operator allows), passing through unless a test
breaks it."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from faultprom import FaultProm
from qscale import features
from qscale.dev.cluster import LocalCluster, deployment_manifest, wait_for
from qscale.dev.operator import OperatorProcess, install, scripted_policy, token_kubeconfig
from qscale.dev.prom import LocalPrometheus, free_port
from qscale.emulator import Emulator, Load, Workload

INTERVAL = "2s"
CAPACITY = 50.0
LAGGING_RATE = "qscale_test:requests:rate_lagging"
"""A recording rule evaluated only every 40 s: its samples are up to 40 s old, as with a rule
group or a federation that lags (the stack's operator holds past 30 s)."""
RULES = f"""groups:
- name: lagging
  interval: 40s
  rules:
  - record: {LAGGING_RATE}
    expr: sum by (namespace, deployment) (label_replace(rate(http_requests_total[10s]),
      "deployment", "$1", "pod", "(.+)-[a-z0-9]+-[a-z0-9]{{5}}"))
"""


def policy_manifest(
    name: str, namespace: str, target: str, labels: dict[str, str] | None = None, **spec: Any
) -> str:
    body = {
        "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target},
        "minReplicas": 1,
        "maxReplicas": 10,
        "interval": INTERVAL,
        "slo": {"latencyP95": "200ms"},
        **spec,
    }
    return json.dumps(
        {
            "apiVersion": "qscale.io/v1alpha1",
            "kind": "AutoscalePolicy",
            "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
            "spec": body,
        }
    )


class ReplicaLog:
    """Every change of a Deployment's ``spec.replicas``, with its time (polled every 0.25 s).

    ``bounds[i]`` is when change ``i`` can have happened: after the start of the last poll that
    still read the old count, before the end of the poll that read the new one (polls slow down
    while the API server restarts, so the observed time alone can be seconds late)."""

    def __init__(self, stack: Stack, name: str) -> None:
        self.stack, self.name = stack, name
        self.changes: list[tuple[float, int]] = []
        self.bounds: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        last_ok = time.time()
        while not self._stop.wait(0.25):
            start = time.time()
            with contextlib.suppress(Exception):
                r = self.stack.replicas(self.name)
                end = time.time()
                if not self.changes or self.changes[-1][1] != r:
                    self.changes.append((end, r))
                    self.bounds.append((last_ok, end))
                last_ok = start

    def stop(self) -> list[tuple[float, int]]:
        self._stop.set()
        self._t.join(5)
        return self.changes


@dataclass
class Stack:
    cluster: LocalCluster
    workdir: Path
    ns: str
    op_ns: str
    other_ns: str
    model: Path
    kubeconfig: Path
    emulator: Emulator
    prometheus: LocalPrometheus
    operator: OperatorProcess
    faulty: FaultProm
    """The fault-injecting proxy in front of ``prometheus`` (``spec.metrics.prometheus``)."""
    created: list[tuple[str, str]] = field(default_factory=list)

    # --- objects --------------------------------------------------------------------------

    def deployment(
        self,
        name: str,
        replicas: int = 2,
        load: float | str = 20.0,
        ready_delay_s: float = 2.0,
        cpu_limit: str | None = None,
        cpu_request: str = "100m",
        ready: int | None = None,
    ) -> None:
        """A Deployment and its emulated service; waits for ``ready`` pods (default: all)."""
        self.emulator.add(Workload(self.ns, name, Load.parse(str(load)), capacity_rps=CAPACITY))
        self.cluster.apply(
            deployment_manifest(
                name,
                self.ns,
                replicas=replicas,
                cpu_request=cpu_request,
                cpu_limit=cpu_limit,
                ready_delay_s=ready_delay_s,
            )
        )
        self.created.append(("deployment", name))
        want = replicas if ready is None else ready
        wait_for(lambda: self.ready(name) == want, 60, what=f"{name} ready")

    def policy(
        self, name: str, target: str, labels: dict[str, str] | None = None, **spec: Any
    ) -> None:
        body = policy_manifest(name, self.ns, target, labels, **spec)
        out = self.cluster.apply(body, check=False)
        assert out.returncode == 0, out.stderr
        self.created.append(("autoscalepolicy", name))

    def rollout(self, name: str, **spec: Any):
        """A ModelRollout (its ``kubectl apply``, checked by the caller: the API may refuse)."""
        body = {"apiVersion": "qscale.io/v1alpha1", "kind": "ModelRollout",
                "metadata": {"name": name, "namespace": self.ns}, "spec": spec}  # fmt: skip
        out = self.cluster.apply(json.dumps(body), check=False)
        if out.returncode == 0:
            self.created.append(("modelrollout", name))
        return out

    def publish(self, model: Path, name: str) -> dict:
        """The artifact at ``model`` as a ConfigMap model in the stack's namespace (what
        ``qscale model publish`` writes); its spec reference, pinned."""
        from qscale.operator.models import artifact_configmap

        cm, digest = artifact_configmap(model, name, self.ns)
        # Server-side: a client-side apply copies the object into an annotation (256 KiB max).
        out = self.cluster.apply(json.dumps(cm), "--server-side", check=False)
        assert out.returncode == 0, out.stderr
        self.created.append(("configmap", name))
        return {"configMapRef": {"name": name}, "sha256": digest}

    def cleanup(self) -> None:
        for kind, name in reversed(self.created):
            self.cluster.kubectl("delete", kind, name, "-n", self.ns, "--wait=false", check=False)
        self.created.clear()

    def load(self, name: str, rps: float | str) -> None:
        self.emulator.set_load(self.ns, name, rps)

    # --- reads ----------------------------------------------------------------------------

    def get(self, kind: str, name: str, ns: str | None = None) -> dict:
        out = self.cluster.kubectl("get", kind, name, "-n", ns or self.ns, "-o", "json").stdout
        return json.loads(out)

    def status(self, name: str) -> dict:
        return self.get("asp", name).get("status") or {}

    def condition(self, name: str, type_: str) -> dict:
        return next(
            (c for c in self.status(name).get("conditions") or [] if c["type"] == type_), {}
        )

    def replicas(self, name: str) -> int:
        return int(self.get("deploy", name)["spec"]["replicas"])

    def ready(self, name: str) -> int:
        return int(self.get("deploy", name).get("status", {}).get("readyReplicas") or 0)

    def events(self, name: str, kind: str = "AutoscalePolicy") -> list[dict]:
        out = self.cluster.kubectl(
            "get",
            "events",
            "-n",
            self.ns,
            "-o",
            "json",
            "--field-selector",
            f"involvedObject.kind={kind},involvedObject.name={name}",
        ).stdout
        return sorted(json.loads(out)["items"], key=lambda e: e.get("lastTimestamp") or "")

    def wait_status(self, name: str, pred, timeout_s: float, what: str) -> dict:
        return wait_for(
            lambda: (lambda s: s if pred(s) else None)(self.status(name)), timeout_s, 0.5, what
        )

    def restart_operator(self, crash: bool = False) -> None:
        (self.operator.kill if crash else self.operator.stop)()
        self.operator.start()
        self.wait_leading()

    def wait_leading(self, timeout_s: float = 60.0) -> None:
        """Until the stack's operator holds the Lease (after a crash, the old one's runs out
        first): the tests after a restart start from an operator that ticks."""
        wait_for(
            lambda: self.operator.metric("qscale_leader") == 1,
            timeout_s,
            0.2,
            "the operator leading",
        )


def start_stack(cluster: LocalCluster, workdir: Path) -> Stack:
    sfx = uuid.uuid4().hex[:6]
    ns, op_ns, other_ns = f"qs-w-{sfx}", f"qs-op-{sfx}", f"qs-x-{sfx}"
    install(cluster, op_ns, [ns])
    cluster.apply(f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {other_ns}}}\n")
    model = scripted_policy(workdir / "model")
    kubeconfig = token_kubeconfig(cluster, op_ns, workdir / "operator.kubeconfig")
    emulator = Emulator(cluster.kubeconfig, [], step_s=0.5).start()
    op_port = free_port()
    prom = LocalPrometheus(
        {"emulator": [f"127.0.0.1:{emulator.port}"], "operator": [f"127.0.0.1:{op_port}"]},
        scrape_interval_s=1.0,
        rules=RULES,
    ).start()
    faulty = FaultProm(prom.url).start()
    operator = OperatorProcess(
        kubeconfig,
        env={
            "QSCALE_NAMESPACES": ns,
            "QSCALE_PROMETHEUS_URL": prom.url,
            "QSCALE_PROMETHEUS_ALLOWED_URLS": faulty.url,
            "QSCALE_DEFAULT_MODEL": str(model),
            "QSCALE_LEASE_NAMESPACE": op_ns,
            "QSCALE_LEASE_DURATION_S": "6",
            "QSCALE_TICK_S": "1",
            "QSCALE_STALE_AFTER_S": "30",
            "QSCALE_MODEL_REFRESH_S": "2",
            "QSCALE_POLICY_RESYNC_S": "5",  # exercised all along (RBAC: the log has no 403)
            "QSCALE_LOG_LEVEL": "DEBUG",
        },
        workdir=workdir / "operator",
        metrics_port=op_port,
    )
    operator.workdir.mkdir(parents=True, exist_ok=True)
    stack = Stack(
        cluster, workdir, ns, op_ns, other_ns, model, kubeconfig, emulator, prom, operator, faulty
    )
    try:
        operator.start()
    except BaseException:
        stop_stack(stack)
        raise
    return stack


def stop_stack(stack: Stack) -> None:
    for step in (
        stack.operator.close,
        stack.faulty.close,
        stack.prometheus.close,
        stack.emulator.stop,
    ):
        with contextlib.suppress(Exception):
            step()
    for ns in (stack.ns, stack.op_ns, stack.other_ns):
        stack.cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def constant_policy(path: Path, action: str) -> Path:
    """A real artifact whose network always prefers ``action`` (e.g. ``hold``: a candidate
    that never adds a pod)."""
    import torch

    from qscale import actions
    from qscale.policy.artifact import export
    from qscale.policy.network import QNetwork

    net = QNetwork()
    with torch.no_grad():
        for prm in net.parameters():
            prm.zero_()
        net.advantage.bias[actions.ACTION_NAMES.index(action)] = 1.0
    return export(net, path)


FAST = {
    key: features.PROMQL[name].replace("[1m]", "[10s]").replace("[30m:1m]", "[20s:2s]")
    for key, name in (
        ("requestRate", "request_rate"),
        ("latencyP95", "latency_p95"),
        ("cpuUtilization", "cpu_utilization"),
        ("cpuPeak", "cpu_peak"),
    )
}
"""The default queries with 10-s rate windows and a 20-s CPU peak, so that a fall shows (and the
CPU hold lets go) within seconds."""


SLO = {"latencyP95": "300ms"}


def s_digest(st: Stack) -> str:
    import hashlib

    return hashlib.sha256((st.model / "manifest.json").read_bytes()).hexdigest()


def scale_events(st: Stack, name: str) -> list[dict]:
    return [e for e in st.events(name) if e["message"].startswith("scaled ")]
