"""The image on a kind cluster (real kubelets, real containers): build it, ``helm install`` the
chart with it, a sample app, load, and the replicas follow.

Skipped unless ``kind``, ``docker`` (with a running daemon) and ``helm``/``kubectl`` (PATH or the
local control plane's bin dir) are there. CI machines have no Docker daemon; run it where Docker
is: ``pytest tests/e2e/test_kind.py`` (about 10 minutes, most of it the image build).

What runs in the cluster: the chart's operator (the image, ``pullPolicy: Never`` after
``kind load``), Prometheus (``prom/prometheus``) scraping it and the emulator, the emulator
(``qscale emulate`` from the same image, with a ServiceAccount token allowed to watch and annotate
pods) playing the service behind the sample app's pods (``registry.k8s.io/pause``: real
containers that do nothing), and an Enforce-mode AutoscalePolicy on the app.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from kindutil import docker_running

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "qscale:e2e"
PROM_IMAGE = "prom/prometheus:v2.55.1"


def _tool(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    try:
        from qscale.dev.cluster import find_k8s_bin

        p = find_k8s_bin() / name
        return str(p) if p.is_file() else None
    except Exception:
        return None


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not shutil.which("kind"), reason="kind is not installed"),
    pytest.mark.skipif(not docker_running(), reason="no running Docker daemon"),
]


def run(*cmd: str, input: str | None = None, timeout: float = 600, check: bool = True):
    p = subprocess.run(list(cmd), input=input, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd[:4])} ...: {p.stderr.strip()[-2000:]}")
    return p


EMULATOR_RBAC = """
apiVersion: v1
kind: ServiceAccount
metadata: {name: emulator, namespace: apps}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: emulator, namespace: apps}
rules:
- {apiGroups: [""], resources: [pods], verbs: [get, list, watch, patch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: emulator, namespace: apps}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: emulator}
subjects: [{kind: ServiceAccount, name: emulator, namespace: apps}]
"""

APP = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: apps}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: app
        image: registry.k8s.io/pause:3.10
        resources: {requests: {cpu: 10m}}
"""


def emulator_and_prometheus(load_rps: float) -> str:
    return f"""
apiVersion: apps/v1
kind: Deployment
metadata: {{name: emulator, namespace: apps}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: emulator}}}}
  template:
    metadata: {{labels: {{app: emulator}}}}
    spec:
      containers:
      - name: emulator
        image: {IMAGE}
        imagePullPolicy: Never
        command: [qscale, emulate, --kubeconfig, /etc/emulator/kubeconfig, -n, apps, -d, web,
                  --load, "{load_rps:g}", --capacity, "50", --address, 0.0.0.0, --port, "9100"]
        ports: [{{name: metrics, containerPort: 9100}}]
        volumeMounts: [{{name: kubeconfig, mountPath: /etc/emulator}}]
      volumes: [{{name: kubeconfig, secret: {{secretName: emulator-kubeconfig}}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: emulator, namespace: apps}}
spec:
  selector: {{app: emulator}}
  ports: [{{name: metrics, port: 9100}}]
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: prometheus, namespace: apps}}
data:
  prometheus.yml: |
    global: {{scrape_interval: 5s, evaluation_interval: 5s}}
    scrape_configs:
    - job_name: emulator
      honor_labels: true
      static_configs: [{{targets: ["emulator.apps.svc:9100"]}}]
    - job_name: operator
      static_configs: [{{targets: ["qscale-metrics.qscale-system.svc:8080"]}}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: prometheus, namespace: apps}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: prometheus}}}}
  template:
    metadata: {{labels: {{app: prometheus}}}}
    spec:
      containers:
      - name: prometheus
        image: {PROM_IMAGE}
        args: [--config.file=/etc/prometheus/prometheus.yml, --storage.tsdb.path=/prometheus]
        ports: [{{containerPort: 9090}}]
        volumeMounts: [{{name: config, mountPath: /etc/prometheus}}]
      volumes: [{{name: config, configMap: {{name: prometheus}}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: prometheus, namespace: apps}}
spec:
  selector: {{app: prometheus}}
  ports: [{{port: 9090}}]
"""


POLICY = """
apiVersion: qscale.io/v1alpha1
kind: AutoscalePolicy
metadata: {name: web, namespace: apps}
spec:
  targetRef: {apiVersion: apps/v1, kind: Deployment, name: web}
  minReplicas: 2
  maxReplicas: 8
  mode: Enforce
  slo: {latencyP95: 300ms}
"""


@pytest.fixture(scope="module")
def kind_cluster(tmp_path_factory):
    helm, kubectl = _tool("helm"), _tool("kubectl")
    if not helm or not kubectl:
        pytest.skip("helm or kubectl not found")
    name = f"qscale-e2e-{uuid.uuid4().hex[:6]}"
    kc = tmp_path_factory.mktemp("kind") / "kubeconfig"
    run("docker", "build", "-t", IMAGE, str(ROOT), timeout=1800)
    run("kind", "create", "cluster", "--name", name, "--kubeconfig", str(kc), "--wait", "180s")
    try:
        run("kind", "load", "docker-image", IMAGE, "--name", name, timeout=600)
        yield {"name": name, "kubeconfig": kc, "helm": helm, "kubectl": kubectl}
    finally:
        run("kind", "delete", "cluster", "--name", name, check=False, timeout=300)


def test_image_installed_with_helm_follows_the_load(kind_cluster):
    kc, helm, kubectl = (
        str(kind_cluster["kubeconfig"]),
        kind_cluster["helm"],
        kind_cluster["kubectl"],
    )
    k = lambda *a, **kw: run(kubectl, "--kubeconfig", kc, *a, **kw)  # noqa: E731
    k("create", "namespace", "apps")
    run(
        helm,
        "install",
        "qscale",
        str(ROOT / "charts" / "qscale"),
        "--kubeconfig",
        kc,
        "-n",
        "qscale-system",
        "--create-namespace",
        "--set",
        "image.repository=qscale",
        "--set",
        "image.tag=e2e",
        "--set",
        "image.pullPolicy=Never",
        "--set",
        "watchNamespaces={apps}",
        "--set",
        "operator.prometheusUrl=http://prometheus.apps.svc:9090",
        "--wait",
        "--timeout",
        "300s",
        timeout=400,
    )
    # The operator really runs in the image: it turns Ready (/readyz) under the chart's hardening.
    k("-n", "qscale-system", "rollout", "status", "deploy/qscale", "--timeout=180s")

    # The emulator's credentials: a ServiceAccount token that may watch and annotate pods.
    k("apply", "-f", "-", input=EMULATOR_RBAC)
    token = k("create", "token", "emulator", "-n", "apps", "--duration=2h").stdout.strip()
    ca = json.loads(k("config", "view", "--raw", "--minify", "-o", "json").stdout)["clusters"][0][
        "cluster"
    ]["certificate-authority-data"]
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "in",
                "cluster": {
                    "server": "https://kubernetes.default.svc",
                    "certificate-authority-data": ca,
                },
            }
        ],
        "users": [{"name": "emulator", "user": {"token": token}}],
        "contexts": [{"name": "in", "context": {"cluster": "in", "user": "emulator"}}],
        "current-context": "in",
    }
    k(
        "create",
        "secret",
        "generic",
        "emulator-kubeconfig",
        "-n",
        "apps",
        f"--from-literal=kubeconfig={json.dumps(kubeconfig)}",
    )
    k("apply", "-f", "-", input=APP)
    k("apply", "-f", "-", input=emulator_and_prometheus(load_rps=250))
    for d in ("web", "emulator", "prometheus"):
        k("-n", "apps", "rollout", "status", f"deploy/{d}", "--timeout=300s", timeout=330)
    k("apply", "-f", "-", input=POLICY)

    deadline = time.monotonic() + 300
    replicas = 2
    while time.monotonic() < deadline:
        replicas = int(
            json.loads(k("get", "deploy", "web", "-n", "apps", "-o", "json").stdout)["spec"][
                "replicas"
            ]
        )
        if replicas >= 5:  # 250 req/s on pods of 50
            break
        time.sleep(5)
    status = k("get", "asp", "web", "-n", "apps", "-o", "json").stdout
    assert replicas >= 5, status
    assert json.loads(status)["status"]["lastAction"]["applied"] is True
