"""Memory of the operator's login path: kopf's minimal login (before) against the kubernetes
package's config loaders (now, exec plugins included), and the whole kubernetes client for
comparison. Each variant runs in a fresh interpreter (3 runs, median RSS after the step).

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/bench_login_memory.py
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

PLUGIN = textwrap.dedent(
    """
    import json
    print(json.dumps({"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential",
                      "status": {"token": "t", "expirationTimestamp": "2099-01-01T00:00:00Z"}}))
    """
)

VARIANTS = {
    "python + httpx (floor)": "import httpx",
    "before: kopf + kopf.login_with_kubeconfig (token)": (
        "import httpx, kopf\nkopf.login_with_kubeconfig(settings=kopf.OperatorSettings())"
    ),
    "now: kopf + kube.load_connection (token)": (
        "import httpx, kopf\nfrom qscale.operator.kube import load_connection\nload_connection()"
    ),
    "now: kopf + kube.load_connection (exec plugin)": (
        "import httpx, kopf\nfrom qscale.operator.kube import load_connection\n"
        "load_connection(EXEC)"
    ),
    "now, in a cluster (the ServiceAccount; `keep_client_package_out`): kopf + "
    "kube.load_connection": (
        "import os\nfrom qscale.operator import kube\n"
        "kube._TOKEN_FILE, kube._CA_FILE = SADIR + '/sa-token', SADIR + '/sa-ca.crt'\n"
        "os.environ.update(KUBERNETES_SERVICE_HOST='127.0.0.1', KUBERNETES_SERVICE_PORT='6443')\n"
        "assert kube.keep_client_package_out()\n"
        "import httpx, kopf\nkube.load_connection()"
    ),
    "now, no kopf (`qscale model publish`): kube.load_connection (token)": (
        "import httpx\nfrom qscale.operator.kube import load_connection\nload_connection()"
    ),
    "reference: kopf with the kubernetes package hidden from it (its optional import)": (
        "import sys\nsys.modules['kubernetes'] = None\nimport httpx, kopf"
    ),
    "reference: kopf + kubernetes client APIs (CoreV1Api, AppsV1Api, V1Deployment class)": (
        "import httpx, kopf\nimport kubernetes.config\nfrom kubernetes import client\n"
        "kubernetes.config.load_kube_config()\n"
        "client.CoreV1Api(); client.AppsV1Api(); client.V1Deployment"
    ),
}

MEASURE = (
    "\nimport re, sys\n"
    "rss = int(re.search(r'VmRSS:\\s+(\\d+)', open('/proc/self/status').read()).group(1))\n"
    "k8s = sum(m.startswith('kubernetes') for m in sys.modules)\n"
    "print(rss / 1024, len(sys.modules), k8s)\n"
)


def _config(tmp: Path) -> tuple[Path, Path]:
    cluster = {"server": "https://127.0.0.1:6443", "insecure-skip-tls-verify": True}

    def write(name: str, user: dict) -> Path:
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "c", "cluster": cluster}],
            "users": [{"name": "u", "user": user}],
            "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
            "current-context": "x",
        }
        (tmp / name).write_text(json.dumps(cfg))
        return tmp / name

    (tmp / "plugin.py").write_text(PLUGIN)
    exec_user = {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": sys.executable,
            "args": [str(tmp / "plugin.py")],
        }
    }
    return write("token", {"token": "t"}), write("exec", exec_user)


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        token, exec_cfg = _config(Path(d))
        (Path(d) / "sa-token").write_text("sa-token")
        (Path(d) / "sa-ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
        env = {"KUBECONFIG": str(token), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
        import os

        if os.environ.get("PYTHONPATH"):
            env["PYTHONPATH"] = os.environ["PYTHONPATH"]
        print("| login path | RSS (MB, median of 3) | modules | of them kubernetes.* |")
        print("|---|---|---|---|")
        for name, code in VARIANTS.items():
            code = code.replace("EXEC", repr(str(exec_cfg))).replace("SADIR", repr(d)) + MEASURE
            runs = []
            for _ in range(3):
                out = subprocess.run(
                    [sys.executable, "-c", code], env=env, capture_output=True, text=True
                )
                if out.returncode:
                    raise SystemExit(f"{name}: {out.stderr[-500:]}")
                runs.append([float(x) for x in out.stdout.split()[-3:]])
            rss = statistics.median(r[0] for r in runs)
            print(f"| {name} | {rss:.1f} | {int(runs[0][1])} | {int(runs[0][2])} |")


if __name__ == "__main__":
    main()
