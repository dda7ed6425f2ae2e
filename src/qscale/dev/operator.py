"""The operator on a local control plane, as a platform team would install it (tests, benchmarks).

:func:`install` applies the CRD and the least-privilege RBAC of ``deploy/`` (the operator's
namespace and the watched namespaces substituted), :func:`token_kubeconfig` writes a kubeconfig
holding a ServiceAccount token from the real TokenRequest API (never the admin's
credentials), and :class:`OperatorProcess` runs ``qscale operator`` as a subprocess with it,
every address on loopback, restartable (to play an operator restart) and always cleaned up.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from qscale.dev.cluster import LocalCluster, namespace_manifest
from qscale.dev.prom import free_port

__all__ = [
    "DEPLOY",
    "OperatorProcess",
    "can_mount_service_account",
    "install",
    "scripted_policy",
    "service_account_files",
    "service_env",
    "token_kubeconfig",
]

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"
"""``deploy/`` of this source tree (CRD, RBAC, examples)."""
SERVICE_ACCOUNT = "qscale-operator"


def scripted_policy(path: Path) -> Path:
    """Export a hand-set Q-network with a behaviour tests can rely on (until a trained default
    model for the current feature spec ships): ``times_1.5`` while p95 is over the SLO by more
    than ~20 % (``2 * relu(log2(p95 / SLO)) > 0.5``), else ``busy_at_65`` (size for 65 % CPU,
    which also scales down). A real artifact: TorchScript, manifest, hashes, spec hash.
    """
    import torch

    from qscale import actions, features
    from qscale.policy.artifact import export
    from qscale.policy.network import QNetwork

    net = QNetwork()
    p95 = features.FEATURE_NAMES.index("log2_p95_vs_slo")
    with torch.no_grad():
        for prm in net.parameters():
            prm.zero_()
        net.torso[0].weight[0, p95] = 1.0  # h0 = relu(log2(p95 / SLO))
        net.torso[2].weight[0, 0] = 1.0
        net.advantage.weight[actions.ACTION_NAMES.index("times_1.5"), 0] = 2.0
        net.advantage.bias[actions.ACTION_NAMES.index("busy_at_65")] = 0.5
    return export(net, path)


CRDS = ("autoscalepolicies", "modelrollouts")


def crd_yaml() -> str:
    """Every CRD of ``deploy/crds``, as one stream."""
    return "\n---\n".join(
        (DEPLOY / "crds" / f"qscale.io_{plural}.yaml").read_text() for plural in CRDS
    )


def rbac_yaml(operator_ns: str, watched: Sequence[str]) -> str:
    """``deploy/rbac.yaml`` for ``operator_ns``, with the per-namespace RoleBinding repeated for
    every watched namespace."""
    docs = (DEPLOY / "rbac.yaml").read_text().split("\n---\n")
    out = []
    for d in docs:
        d = d.replace("namespace: qscale-system", f"namespace: {operator_ns}")
        if (
            "kind: RoleBinding" in d
            and "name: qscale-operator\n" in d
            and "namespace: default" in d
        ):
            out += [d.replace("namespace: default", f"namespace: {ns}") for ns in watched]
        else:
            out.append(d)
    return "\n---\n".join(out)


def install(cluster: LocalCluster, operator_ns: str, watched: Sequence[str]) -> None:
    """CRD (waits until established), namespaces and the operator's RBAC."""
    cluster.apply(crd_yaml())
    cluster.kubectl(
        "wait",
        "--for=condition=established",
        "--timeout=60s",
        *(f"crd/{plural}.qscale.io" for plural in CRDS),
    )
    for ns in (operator_ns, *watched):
        cluster.apply(namespace_manifest(ns))
    cluster.apply(rbac_yaml(operator_ns, watched))


def _server_and_ca(cluster: LocalCluster) -> tuple[str, bytes | None]:
    """The API server's URL and its CA certificate (PEM; None: the kubeconfig has none)."""
    import base64

    raw = json.loads(cluster.kubectl("config", "view", "--minify", "--raw", "-o", "json").stdout)
    c = raw["clusters"][0]["cluster"]
    if c.get("certificate-authority-data"):
        return c["server"], base64.b64decode(c["certificate-authority-data"])
    if c.get("certificate-authority"):
        return c["server"], Path(c["certificate-authority"]).read_bytes()
    return c["server"], None


def token_kubeconfig(
    cluster: LocalCluster, namespace: str, path: Path, duration_s: int = 7200
) -> Path:
    """A kubeconfig for ``namespace``'s ``qscale-operator`` ServiceAccount (a real token)."""
    import base64

    token = cluster.create_token(namespace, SERVICE_ACCOUNT, duration_s)
    server, ca = _server_and_ca(cluster)
    cluster_entry: dict = {"server": server}
    if ca:
        cluster_entry["certificate-authority-data"] = base64.b64encode(ca).decode()
    else:
        cluster_entry["insecure-skip-tls-verify"] = True
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": cluster_entry}],
        "users": [{"name": SERVICE_ACCOUNT, "user": {"token": token}}],
        "contexts": [
            {"name": "operator", "context": {"cluster": "local", "user": SERVICE_ACCOUNT}}
        ],
        "current-context": "operator",
    }
    path.write_text(json.dumps(cfg))
    path.chmod(0o600)
    return path


SERVICE_ACCOUNT_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
"""Where a pod has its ServiceAccount's token, CA and namespace (``qscale.operator.kube``)."""


def service_account_files(
    cluster: LocalCluster, namespace: str, path: Path, duration_s: int = 7200
) -> Path:
    """What a pod of ``namespace``'s ``qscale-operator`` ServiceAccount has mounted: ``token``
    (a real one, from the TokenRequest API), ``ca.crt`` (the API server's CA) and
    ``namespace``, in the directory ``path``; for :attr:`OperatorProcess.service_account`."""
    _, ca = _server_and_ca(cluster)
    if ca is None:
        raise RuntimeError("the local cluster's kubeconfig has no CA: a pod would have one")
    path.mkdir(parents=True, exist_ok=True)
    (path / "token").write_text(cluster.create_token(namespace, SERVICE_ACCOUNT, duration_s))
    (path / "ca.crt").write_bytes(ca)
    (path / "namespace").write_text(namespace)
    return path


def service_env(cluster: LocalCluster) -> dict[str, str]:
    """``KUBERNETES_SERVICE_HOST`` and ``_PORT`` as a pod would have them, for the local API
    server (with :func:`service_account_files`)."""
    import urllib.parse

    server = urllib.parse.urlsplit(_server_and_ca(cluster)[0])
    return {
        "KUBERNETES_SERVICE_HOST": server.hostname or "",
        "KUBERNETES_SERVICE_PORT": str(server.port or 443),
    }


def can_mount_service_account() -> bool:
    """Whether this machine lets :class:`OperatorProcess` play a pod's mounted ServiceAccount
    (a private mount namespace: root, or a user namespace allowed)."""
    probe = ["unshare", "--mount", "--propagation", "private", "mount", "-t", "tmpfs", "tmpfs"]
    try:
        out = subprocess.run([*probe, "/var/run"], capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0


@dataclass
class OperatorProcess:
    """``qscale operator`` in a subprocess; ``env`` adds ``QSCALE_*`` settings.

    With ``service_account`` (a directory of :func:`service_account_files`) the operator runs
    as in a pod instead of with a kubeconfig: in a private mount namespace where that
    directory is at :data:`SERVICE_ACCOUNT_MOUNT` (a tmpfs over ``/var/run``, nothing of the
    machine's changed), no ``KUBECONFIG``; ``env`` then carries ``KUBERNETES_SERVICE_HOST`` and
    ``KUBERNETES_SERVICE_PORT``.
    """

    kubeconfig: Path | None
    env: Mapping[str, str] = field(default_factory=dict)
    service_account: Path | None = None
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="qscale-op-")))
    metrics_port: int = field(default_factory=free_port)
    health_port: int = field(default_factory=free_port)
    _proc: subprocess.Popen | None = None
    starts: int = 0

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def log_path(self) -> Path:
        return self.workdir / "operator.log"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self, wait_ready_s: float = 90.0) -> OperatorProcess:
        env = {
            **{
                k: v
                for k, v in os.environ.items()
                if not k.startswith("QSCALE_") and k != "KUBECONFIG"
            },
            **({"KUBECONFIG": str(self.kubeconfig)} if self.kubeconfig else {}),
            "QSCALE_METRICS_ADDRESS": "127.0.0.1",
            "QSCALE_METRICS_PORT": str(self.metrics_port),
            "QSCALE_HEALTH_ADDRESS": "127.0.0.1",
            "QSCALE_HEALTH_PORT": str(self.health_port),
            "PYTHONUNBUFFERED": "1",
            "PYTHONMALLOC": "malloc",  # as the image runs it (see the Dockerfile)
            **self.env,
        }
        log = self.log_path.open("ab")
        log.write(f"\n=== start {self.starts} at {time.time():.3f}\n".encode())
        log.flush()
        argv = [sys.executable, "-m", "qscale.entry", "operator"]
        if self.service_account is not None:
            mount = 'mount -t tmpfs tmpfs /var/run && mkdir -p "$2" && cp "$1"/* "$2"/'
            argv = [
                *("unshare", "--mount", "--propagation", "private", "sh", "-c"),
                f'{mount} && shift 2 && exec "$@"',
                *("sh", str(self.service_account), SERVICE_ACCOUNT_MOUNT, *argv),
            ]
        self._proc = subprocess.Popen(
            argv,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.starts += 1
        if wait_ready_s:
            self.wait_ready(wait_ready_s)
        return self

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if self._proc is None or self._proc.poll() is not None:
                raise RuntimeError(f"operator exited: {self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                r = httpx.get(f"http://127.0.0.1:{self.metrics_port}/readyz", timeout=1.0)
                if r.status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"operator not ready after {timeout_s:g} s: {self.log_tail()}")
            time.sleep(0.2)

    def metric(self, name: str, labels: Mapping[str, str] | None = None) -> float:
        """Sum of a metric's samples (matching ``labels``) on the operator's /metrics."""
        text = httpx.get(self.metrics_url, timeout=5.0).text
        total = 0.0
        for line in text.splitlines():
            if not line.startswith(name) or line.startswith("#"):
                continue
            m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)", line)
            if not m or m.group(1) != name:
                continue
            got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
            if all(got.get(k) == v for k, v in (labels or {}).items()):
                total += float(m.group(3))
        return total

    def rss_mb(self) -> float:
        if self._proc is None:
            return 0.0
        with open(f"/proc/{self._proc.pid}/status") as f:
            return int(f.read().split("VmRSS:")[1].split()[0]) / 1024

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM (kopf's graceful stop, which gives the Lease up), then SIGKILL."""
        p = self._proc
        if p is None:
            return
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        self._proc = None

    def kill(self) -> None:
        """SIGKILL: a crash (the Lease is not given up)."""
        p = self._proc
        if p is not None and p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        self._proc = None

    def close(self) -> None:
        self.stop()
        import shutil

        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> OperatorProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
