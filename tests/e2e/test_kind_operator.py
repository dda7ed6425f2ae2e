"""The operator on a kind cluster (real kubelets and containers), skipped without ``kind`` and a
Docker daemon. The local control plane's suite (tests/integration) is the one CI requires; this
shows the same CRD, RBAC and operator work unchanged on a cluster with real nodes."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from kindutil import docker_running

from qscale.dev.cluster import wait_for
from qscale.dev.operator import OperatorProcess, install, scripted_policy, token_kubeconfig

pytestmark = pytest.mark.skipif(
    not (shutil.which("kind") and shutil.which("kubectl") and docker_running()),
    reason="needs kind, kubectl and a Docker daemon",
)


class KindCluster:
    """What :mod:`qscale.dev.operator` needs of a cluster, for kind."""

    def __init__(self, name: str, kubeconfig: Path) -> None:
        self.name, self.kubeconfig = name, kubeconfig

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, **_
    ) -> subprocess.CompletedProcess:
        p = subprocess.run(
            ["kubectl", "--kubeconfig", str(self.kubeconfig), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and p.returncode != 0:
            raise subprocess.CalledProcessError(p.returncode, p.args, p.stdout, p.stderr)
        return p

    def apply(self, manifest: str, *args: str, **kw) -> subprocess.CompletedProcess:
        return self.kubectl("apply", "-f", "-", *args, input=manifest, **kw)

    def create_token(self, namespace: str, sa: str, duration_s: int = 3600) -> str:
        return self.kubectl(
            "create", "token", sa, "-n", namespace, f"--duration={duration_s}s"
        ).stdout.strip()


@pytest.fixture
def kind_cluster(tmp_path):
    name = f"qscale-{uuid.uuid4().hex[:6]}"
    kc = tmp_path / "kubeconfig"
    subprocess.run(
        ["kind", "create", "cluster", "--name", name, "--kubeconfig", str(kc), "--wait", "180s"],
        check=True,
        capture_output=True,
        timeout=600,
    )
    try:
        yield KindCluster(name, kc)
    finally:
        subprocess.run(
            ["kind", "delete", "cluster", "--name", name], capture_output=True, timeout=300
        )


def test_operator_serves_a_policy_on_kind(kind_cluster, tmp_path):
    c = kind_cluster
    install(c, "qscale-system", ["apps"])
    c.kubectl(
        "create",
        "deployment",
        "web",
        "-n",
        "apps",
        "--image=registry.k8s.io/pause:3.10",
        "--replicas=2",
    )
    c.apply(
        json.dumps(
            {
                "apiVersion": "qscale.io/v1alpha1",
                "kind": "AutoscalePolicy",
                "metadata": {"name": "web", "namespace": "apps"},
                "spec": {
                    "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                    "minReplicas": 3,
                    "maxReplicas": 5,
                    "interval": "2s",
                    "slo": {"latencyP95": "200ms"},
                },
            }
        )
    )
    kubeconfig = token_kubeconfig(c, "qscale-system", tmp_path / "operator.kubeconfig")
    op = OperatorProcess(
        kubeconfig,
        env={
            "QSCALE_NAMESPACES": "apps",
            "QSCALE_PROMETHEUS_URL": "http://127.0.0.1:9",  # nothing there
            "QSCALE_DEFAULT_MODEL": str(scripted_policy(tmp_path / "model")),
            "QSCALE_LEASE_NAMESPACE": "qscale-system",
            "QSCALE_TICK_S": "1",
        },
        workdir=tmp_path / "op",
    )
    op.workdir.mkdir()
    with op:
        op.start()

        def status():
            return (
                json.loads(c.kubectl("get", "asp", "web", "-n", "apps", "-o", "json").stdout).get(
                    "status"
                )
                or {}
            )

        s = wait_for(
            lambda: status() if status().get("replicas") == 3 else None,
            60,
            what="the bound applied",
        )
        # no metrics: a hold, except that the count moves into [min, max]
        metrics = next(x for x in s["conditions"] if x["type"] == "MetricsAvailable")
        assert metrics["status"] == "False"
        assert (
            json.loads(c.kubectl("get", "deploy", "web", "-n", "apps", "-o", "json").stdout)[
                "spec"
            ]["replicas"]
            == 3
        )
