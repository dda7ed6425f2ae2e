"""The Helm chart and the plain manifests, with the real tools: helm lint/template, values.schema
rejections, drift against ``deploy/`` (CRD, RBAC, operator.yaml), the dashboard's and the alerts'
PromQL through promtool, ServiceMonitor/PrometheusRule against the prometheus-operator models, a
server-side dry run of every other rendered manifest, and ``helm install`` into a local control
plane, after which the operator (run from the package as the chart's pod: its ServiceAccount's
token and CA mounted, the in-cluster login) scales a Deployment; then ``kubectl apply -k deploy/``.

Run with ``make chart``. Everything needs the control plane's binaries (helm is among them).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml
from opstack import FAST

from qscale.dev.cluster import deployment_manifest, namespace_manifest, wait_for

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "qscale"
DEPLOY = ROOT / "deploy"
EVERYTHING = CHART / "ci" / "everything-values.yaml"
MONITORING = "monitoring.coreos.com/v1"


def helm(k8s_bin: Path, *args: str, check: bool = True, timeout: float = 120):
    p = subprocess.run(
        [str(k8s_bin / "helm"), *args], capture_output=True, text=True, timeout=timeout
    )
    if check and p.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed: {p.stderr.strip()}")
    return p


def render(k8s_bin: Path, *args: str, ns: str = "qscale-system") -> list[dict]:
    out = helm(k8s_bin, "template", "qscale", str(CHART), "-n", ns, *args).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def deploy_docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]


# --- lint and render ------------------------------------------------------------------------


@pytest.mark.parametrize("values", [None, EVERYTHING], ids=["defaults", "everything"])
def test_helm_lint(k8s_bin, values):
    args = ["lint", "--strict", str(CHART)] + (["-f", str(values)] if values else [])
    out = helm(k8s_bin, *args).stdout
    assert "0 chart(s) failed" in out


def test_default_render_is_the_operator_and_nothing_optional(k8s_bin):
    docs = render(k8s_bin)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(
        [
            "ServiceAccount",
            "CustomResourceDefinition",  # AutoscalePolicy
            "CustomResourceDefinition",  # ModelRollout
            "ClusterRole",
            "ClusterRoleBinding",  # no watchNamespaces: cluster-wide
            "Role",
            "RoleBinding",
            "Service",
            "Deployment",
        ]
    )
    crd = by_kind(docs, "CustomResourceDefinition")[0]
    assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    for d in docs:
        labels = d["metadata"]["labels"]
        assert labels["app.kubernetes.io/part-of"] == "qscale"
        assert len(d["metadata"]["name"]) <= 63


def test_everything_render_has_every_optional_part(k8s_bin):
    docs = render(k8s_bin, "-f", str(EVERYTHING))
    kinds = [d["kind"] for d in docs]
    for k in ("ServiceMonitor", "PrometheusRule"):
        assert kinds.count(k) == 1
    cms = {d["metadata"]["name"]: d for d in by_kind(docs, "ConfigMap")}
    assert set(cms) == {"qscale-dashboard", "qscale-kube-state-metrics"}
    assert cms["qscale-dashboard"]["metadata"]["labels"]["grafana_dashboard"] == "1"
    json.loads(cms["qscale-dashboard"]["data"]["qscale-dashboard.json"])
    bindings = {
        (d["metadata"]["namespace"], d["metadata"]["name"]) for d in by_kind(docs, "RoleBinding")
    }
    assert bindings == {
        ("team-a", "qscale"),
        ("team-b", "qscale"),
        ("qscale-system", "qscale-lease"),
    }
    assert not by_kind(docs, "ClusterRoleBinding")
    dep = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]
    assert [c["name"] for c in dep["initContainers"]] == ["verify-model"]
    env = {e["name"]: e.get("value") for e in dep["containers"][0]["env"]}
    assert env["QSCALE_NAMESPACES"] == "team-a,team-b"
    assert env["QSCALE_DEFAULT_MODEL"] == "/var/lib/qscale/model"
    assert env["QSCALE_TORCH_THREADS"] == "2"  # limits.cpu 2
    assert env["QSCALE_DECISION_LOG"] == "/var/lib/qscale-log/decisions.jsonl"
    (vol,) = [v for v in dep["volumes"] if v["name"] == "decision-log"]
    assert vol["emptyDir"]["sizeLimit"] == "64Mi"  # (3 + 1) files of 16 MiB
    rules = [
        r["alert"] for g in by_kind(docs, "PrometheusRule")[0]["spec"]["groups"] for r in g["rules"]
    ]
    assert rules == [
        "QScaleFallbackActive",
        "QScaleKillSwitchEngaged",
        "QScaleCanaryRolledBack",
        "QScaleModelDrift",
        "QScaleShieldInterventionsHigh",
        "QScaleInferenceLatencyHigh",
        "QScaleOperatorDown",
        "QScaleModelRefused",
    ]
    runbooks = Path(__file__).resolve().parents[2] / "docs" / "runbooks"
    assert all((runbooks / f"{a}.md").is_file() for a in rules)  # one page per alert


def test_operator_pod_is_hardened_with_probes_and_resources(k8s_bin):
    dep = by_kind(render(k8s_bin), "Deployment")[0]["spec"]["template"]["spec"]
    assert dep["securityContext"]["runAsNonRoot"] is True
    assert dep["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    c = dep["containers"][0]
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert c["resources"]["limits"]["cpu"] and c["resources"]["requests"]["memory"]
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
    assert not c.get("command")  # the image's ENTRYPOINT: qscale operator


@pytest.mark.parametrize(
    ("sets", "threads"),
    [
        ([], "1"),  # limits.cpu "1"
        (["--set", "resources.limits.cpu=2500m"], "2"),
        (["--set", "resources.limits.cpu=500m"], "1"),
        (["--set-string", "resources.limits.cpu=4"], "4"),
        (["--set", "resources.limits=null"], "1"),
        (["--set", "operator.torchThreads=3"], "3"),
    ],
)
def test_torch_threads_follow_the_cpu_limit(k8s_bin, sets, threads):
    dep = by_kind(render(k8s_bin, *sets), "Deployment")[0]
    env = {
        e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["QSCALE_TORCH_THREADS"] == threads == env["OMP_NUM_THREADS"]
    assert env["PYTHONMALLOC"] == "malloc"  # as the image sets it (test_dockerfile)


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["--set", "replicaCount=-1"], "replicaCount"),
        (["--set", "image.pullPolicy=Sometimes"], "pullPolicy"),
        (["--set", "watchNamespaces={Bad_NS}"], "watchNamespaces"),
        (["--set", "defaultModel.configMap=m", "--set", "defaultModel.sha256=abc"], "sha256"),
        (["--set", "operator.logLevel=LOUD"], "logLevel"),
        (["--set", "operator.tickSeconds=0"], "tickSeconds"),
        (["--set", "operator.prometheusUrl=prometheus:9090"], "prometheusUrl"),
        (["--set", "crds.instal=true"], "instal"),  # a typo: additionalProperties false
        (["--set", "metrics.serviceMonitor.interval=often"], "interval"),
        (["--set", "metrics.prometheusRule.shieldInterventionRatio=2"], "shieldInterventionRatio"),
        (["--set", "resources.limits.cpu=lots"], "cpu"),
        (["--set", "service.port=70000"], "port"),
    ],
)
def test_schema_rejects_bad_values(k8s_bin, sets, message):
    p = helm(k8s_bin, "template", "qscale", str(CHART), *sets, check=False)
    assert p.returncode != 0, f"accepted {sets}"
    assert message in p.stderr, p.stderr


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["--set", "defaultModel.configMap=my-model"], "defaultModel.sha256 is required"),
        (["--set", "defaultModel.sha256=" + "a" * 64], "defaultModel.configMap is not"),
        (["--set", "serviceAccount.create=false"], "serviceAccount.name is required"),
    ],
)
def test_template_checks_what_the_schema_cannot(k8s_bin, sets, message):
    p = helm(k8s_bin, "template", "qscale", str(CHART), *sets, check=False)
    assert p.returncode != 0 and message in p.stderr, p.stderr


# --- no drift from deploy/ ------------------------------------------------------------------


@pytest.mark.parametrize("script", ["chart_crds.py", "dashboard.py", "manifests.py"])
def test_generated_files_have_not_drifted(k8s_bin, script):
    p = subprocess.run(
        [sys.executable, str(ROOT / "hack" / script), "--check"],
        capture_output=True,
        text=True,
        env={"HELM": str(k8s_bin / "helm"), "PATH": "/usr/bin:/bin"},
    )
    assert p.returncode == 0, p.stdout + p.stderr


def test_rendered_crd_is_deploys(k8s_bin):
    chart = {d["metadata"]["name"]: d for d in by_kind(render(k8s_bin), "CustomResourceDefinition")}
    assert sorted(chart) == ["autoscalepolicies.qscale.io", "modelrollouts.qscale.io"]
    for plural in ("autoscalepolicies", "modelrollouts"):
        src = deploy_docs(f"crds/qscale.io_{plural}.yaml")[0]
        assert chart[src["metadata"]["name"]]["spec"] == src["spec"]
    assert not by_kind(render(k8s_bin, "--set", "crds.install=false"), "CustomResourceDefinition")
    kept = by_kind(render(k8s_bin, "--set", "crds.keep=false"), "CustomResourceDefinition")[0]
    assert "annotations" not in kept["metadata"]


def test_rendered_rbac_is_deploys(k8s_bin):
    docs = render(k8s_bin, "--set", "watchNamespaces={default}")
    src = deploy_docs("rbac.yaml")
    assert by_kind(docs, "ClusterRole")[0]["rules"] == by_kind(src, "ClusterRole")[0]["rules"]
    assert by_kind(docs, "Role")[0]["rules"] == by_kind(src, "Role")[0]["rules"]

    # The same shape of bindings: the ClusterRole per watched namespace, the Lease Role at home.
    def shape(docs):
        return sorted(
            (d["metadata"]["namespace"], d["roleRef"]["kind"], d["subjects"][0]["kind"])
            for d in by_kind(docs, "RoleBinding")
        )

    home = lambda docs: [  # noqa: E731
        (ns.replace("qscale-system", "HOME"), k, s) for ns, k, s in shape(docs)
    ]
    assert home(docs) == home(src)
    verbs = {v for r in by_kind(docs, "ClusterRole")[0]["rules"] for v in r["verbs"]}
    assert verbs <= {"get", "list", "watch", "patch", "create"}  # no delete, update, escalate
    resources = {x for r in by_kind(docs, "ClusterRole")[0]["rules"] for x in r["resources"]}
    assert "secrets" not in resources and "pods" not in resources and "deployments" in resources


# --- monitoring objects and PromQL ----------------------------------------------------------


def _promtool():
    import shutil

    p = shutil.which("promtool")
    if p is None:
        pytest.skip("no promtool (Debian's prometheus package installs it)")
    return p


def test_alert_rules_pass_promtool(k8s_bin, tmp_path):
    rule = by_kind(render(k8s_bin, "-f", str(EVERYTHING)), "PrometheusRule")[0]
    f = tmp_path / "rules.yaml"
    f.write_text(yaml.safe_dump(rule["spec"]))
    p = subprocess.run([_promtool(), "check", "rules", str(f)], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "SUCCESS: 8 rules found" in p.stdout


def test_dashboard_queries_pass_promtool(tmp_path):
    dash = json.loads((CHART / "files" / "qscale-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    titles = {p["title"] for p in dash["panels"]}
    for want in (
        "Load vs replicas vs desired",
        "p95 latency vs SLO",
        "Q-values of the latest decision",
        "Decisions by action",
        "Decisions by reason",
        "Fallbacks",
        "Inference latency p50 / p95 / p99",
    ):
        assert want in titles
    rules = [
        {
            "record": f"qscale:dashboard_{i}",
            "expr": e.replace("$namespace", "ns")
            .replace("$deployment", "web")
            .replace("$mode", "Enforce")
            .replace("$slo_ms", "250"),
        }
        for i, e in enumerate(exprs)
    ]
    f = tmp_path / "dash.yaml"
    f.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    p = subprocess.run([_promtool(), "check", "rules", str(f)], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    # The panels read the series the operator exports under these names.
    suffix = r"(?:_total|_bucket|_sum|_count)?"
    metrics = set(re.findall(rf"\b(qscale_[a-z_]+?){suffix}\b", " ".join(exprs)))
    exported = (ROOT / "src/qscale/operator/metrics.py").read_text()
    for m in metrics - {
        "qscale_autoscalepolicy_desired_replicas",
        "qscale_autoscalepolicy_q_value",
        "qscale_autoscalepolicy_fallback_active",
        "qscale_autoscalepolicy_info",
    }:
        assert f'"{m.removesuffix("_total").removesuffix("_bucket")}"' in exported, m


def test_servicemonitor_and_prometheusrule_match_the_prometheus_operator_schema(k8s_bin):
    models = pytest.importorskip("cloudcoil.models.prometheus_operator.v1")
    docs = render(k8s_bin, "-f", str(EVERYTHING))
    sm = models.ServiceMonitor.model_validate(by_kind(docs, "ServiceMonitor")[0])
    assert sm.spec.endpoints[0].port == "metrics"
    svc = by_kind(docs, "Service")[0]
    assert sm.spec.selector.match_labels.items() <= svc["metadata"]["labels"].items()
    assert svc["spec"]["ports"][0]["name"] == "metrics"
    models.PrometheusRule.model_validate(by_kind(docs, "PrometheusRule")[0])
    bad = by_kind(docs, "ServiceMonitor")[0]
    bad["spec"]["endpoints"][0]["interval"] = "often"
    with pytest.raises(ValueError):
        models.ServiceMonitor.model_validate(bad)


# --- against the API server -----------------------------------------------------------------


def _dry_run(cluster, docs: list[dict]) -> None:
    core = [d for d in docs if d["apiVersion"] != MONITORING]
    text = "\n---\n".join(yaml.safe_dump(d) for d in core)
    out = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=text, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("(server dry run)") == len(core), out.stdout


@pytest.mark.parametrize("values", [None, EVERYTHING], ids=["defaults", "everything"])
def test_every_rendered_manifest_passes_a_server_side_dry_run(k8s_bin, cluster, values):
    sfx = uuid.uuid4().hex[:6]
    home, a, b = f"qs-chart-{sfx}", f"qs-a-{sfx}", f"qs-b-{sfx}"
    for ns in (home, a, b):
        cluster.apply(namespace_manifest(ns))
    try:
        args = ["-f", str(values), "--set", f"watchNamespaces={{{a},{b}}}"] if values else []
        docs = render(k8s_bin, *args, ns=home)
        # Cluster-scoped names carry the release's; make them unique for a shared cluster.
        for d in docs:
            if d["kind"] in ("ClusterRole", "ClusterRoleBinding"):
                d["metadata"]["name"] += f"-{sfx}"
        _dry_run(cluster, docs)
    finally:
        for ns in (home, a, b):
            cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


# --- helm install on its own control plane --------------------------------------------------


@pytest.fixture(scope="module")
def fresh(k8s_bin):
    """A control plane of its own: the chart installs the CRD (the session's cluster has one
    that kubectl applied, which helm would refuse to adopt)."""
    from qscale.dev.cluster import ClusterOptions, ClusterUnavailable, start_cluster

    try:
        c = start_cluster(ClusterOptions(metrics_server=False, nodes=1), bin_dir=k8s_bin)
    except ClusterUnavailable as e:
        pytest.fail(str(e), pytrace=False)
    try:
        yield c
    finally:
        c.delete()


BAD_POLICIES = [
    ({"minReplicas": 9, "maxReplicas": 5}, "minReplicas must be <= maxReplicas"),
    ({"mode": "Sometimes"}, "Unsupported value"),
    ({"interval": "1ms"}, "interval must be between 1s and 10m"),
    ({"model": {"sha256": "a" * 64}}, "needs both configMapRef and its sha256"),
    (
        {"targetRef": {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "x"}},
        "apps/v1 Deployment",
    ),
    ({"slo": {"latencyP95": "fast"}}, "latencyP95"),
]


def _policy(name: str, ns: str, **spec) -> str:
    body = {
        "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
        "minReplicas": 2,
        "maxReplicas": 6,
        "interval": "2s",
        "slo": {"latencyP95": "300ms"},
        **spec,
    }
    return json.dumps(
        {
            "apiVersion": "qscale.io/v1alpha1",
            "kind": "AutoscalePolicy",
            "metadata": {"name": name, "namespace": ns},
            "spec": body,
        }
    )


def test_helm_install_then_the_operator_with_the_charts_token_scales(
    k8s_bin, fresh, tmp_path, prometheus_bin
):
    from qscale.dev.operator import (
        OperatorProcess,
        can_mount_service_account,
        service_account_files,
        service_env,
        token_kubeconfig,
    )
    from qscale.dev.prom import LocalPrometheus
    from qscale.emulator import Emulator, Load, Workload

    c = fresh
    env_ns = "apps"
    c.apply(namespace_manifest(env_ns))
    helm(
        k8s_bin,
        "install",
        "qscale",
        str(CHART),
        "-n",
        "qscale-system",
        "--create-namespace",
        "--kubeconfig",
        str(c.kubeconfig),
        "--set",
        "fullnameOverride=qscale-operator",
        "--set",
        f"watchNamespaces={{{env_ns}}}",
        "--wait",
        "--timeout",
        "120s",
        timeout=180,
    )
    notes = helm(
        k8s_bin, "get", "notes", "qscale", "-n", "qscale-system", "--kubeconfig", str(c.kubeconfig)
    ).stdout
    assert "kubectl get asp -A" in notes and "apps" in notes
    c.kubectl(
        "wait",
        "--for=condition=established",
        "--timeout=60s",
        "crd/autoscalepolicies.qscale.io",
        "crd/modelrollouts.qscale.io",
    )

    # The chart's CRD takes the examples and refuses bad policies, on the real API server.
    for f in sorted((DEPLOY / "examples").glob("*.yaml")):
        c.kubectl("apply", "-n", env_ns, "-f", str(f))
    for spec, message in BAD_POLICIES:
        out = c.apply(_policy("bad", env_ns, **spec), check=False)
        assert out.returncode != 0 and message in out.stderr, (spec, out.stderr)
    for f in sorted((DEPLOY / "examples").glob("*.yaml")):
        c.kubectl("delete", "-n", env_ns, "-f", str(f), "--wait=false")

    # The chart's ServiceAccount (a real token; not the admin's certificate): least privilege.
    sa_kubeconfig = token_kubeconfig(c, "qscale-system", tmp_path / "op.kubeconfig")

    def may(*args: str) -> bool:
        p = subprocess.run(
            [str(k8s_bin / "kubectl"), "--kubeconfig", str(sa_kubeconfig), *args],
            capture_output=True,
            text=True,
            timeout=30,
        )
        return p.returncode == 0 and p.stdout.strip() != "no"

    assert may("get", "deploy", "-n", env_ns)
    assert not may("get", "secrets", "-n", env_ns)
    assert not may("get", "deploy", "-n", "default")  # not a watched namespace
    assert not may("auth", "can-i", "delete", "deployments", "-n", env_ns)
    assert not may("auth", "can-i", "patch", "deployments", "-n", env_ns)
    assert may("auth", "can-i", "patch", "deployments", "--subresource=scale", "-n", env_ns)
    assert may(
        "auth",
        "can-i",
        "patch",
        "autoscalepolicies.qscale.io",
        "--subresource=status",
        "-n",
        env_ns,
    )
    assert may("auth", "can-i", "create", "events", "-n", env_ns)
    assert may("auth", "can-i", "list", "modelrollouts.qscale.io", "-n", env_ns)
    assert not may("auth", "can-i", "patch", "modelrollouts.qscale.io", "-n", env_ns)
    assert may("auth", "can-i", "update", "leases", "-n", "qscale-system")
    assert not may("auth", "can-i", "update", "leases", "-n", env_ns)
    assert not may("auth", "can-i", "list", "namespaces")

    # The operator from the package, as the chart's pod runs it (the ServiceAccount's token and
    # CA mounted, the service host and port in its environment, no kubeconfig: the in-cluster
    # login, with the kubernetes package kept out), scales a Deployment under load. Where no
    # mount namespace can be had, with the same token in a kubeconfig.
    em = Emulator(c.kubeconfig, [Workload(env_ns, "web", Load.constant(180.0), 50.0)], step_s=0.5)
    em.start()
    in_pod = can_mount_service_account()
    pod_env = {}
    if in_pod:
        pod_env = service_env(c)
        sa = service_account_files(c, "qscale-system", tmp_path / "serviceaccount")
        op = OperatorProcess(None, service_account=sa, workdir=tmp_path / "op")
    else:
        op = OperatorProcess(sa_kubeconfig, workdir=tmp_path / "op")
    op.workdir.mkdir()
    prom = LocalPrometheus(
        {"emulator": [f"127.0.0.1:{em.port}"], "operator": [f"127.0.0.1:{op.metrics_port}"]},
        scrape_interval_s=1.0,
        binary=prometheus_bin,
        workdir=tmp_path / "prom",
    )
    prom.workdir.mkdir()
    try:
        prom.start()
        op.env = {
            "QSCALE_NAMESPACES": env_ns,
            "QSCALE_PROMETHEUS_URL": prom.url,
            "QSCALE_LEASE_NAMESPACE": "qscale-system",
            "QSCALE_LEASE_NAME": "qscale-operator",
            "QSCALE_TICK_S": "1",
            **pod_env,
        }
        c.apply(deployment_manifest("web", env_ns, replicas=2, ready_delay_s=1))
        op.start(wait_ready_s=120)
        c.apply(_policy("web", env_ns, metrics=FAST))
        wait_for(
            lambda: (
                int(
                    json.loads(
                        c.kubectl("get", "deploy", "web", "-n", env_ns, "-o", "json").stdout
                    )["spec"]["replicas"]
                )
                > 2
            ),
            120,
            1.0,
            "the operator to scale web up (180 req/s on 2 pods of 50)",
        )
        status = json.loads(c.kubectl("get", "asp", "web", "-n", env_ns, "-o", "json").stdout)[
            "status"
        ]
        assert status["lastAction"]["applied"] is True and status["lastAction"]["to"] > 2
        lease = json.loads(
            c.kubectl("get", "lease", "qscale-operator", "-n", "qscale-system", "-o", "json").stdout
        )
        assert lease["spec"]["holderIdentity"]
        assert ("kubernetes client package is not loaded" in op.log_tail(10**6)) == in_pod
    except BaseException:
        print(op.log_tail(6000))
        raise
    finally:
        op.close()
        prom.close()
        em.stop()

    # Uninstall: the operator's objects go, the CRD and the policies stay (crds.keep).
    helm(
        k8s_bin,
        "uninstall",
        "qscale",
        "-n",
        "qscale-system",
        "--kubeconfig",
        str(c.kubeconfig),
        "--wait",
    )
    assert c.kubectl("get", "crd", "autoscalepolicies.qscale.io", check=False).returncode == 0
    assert c.kubectl("get", "asp", "web", "-n", env_ns, check=False).returncode == 0
    assert (
        c.kubectl("get", "sa", "qscale-operator", "-n", "qscale-system", check=False).returncode
        != 0
    )


def test_kubectl_apply_k_deploy(fresh):
    """The plain manifests: a real apply (the namespace must exist before a dry run can pass)."""
    out = fresh.kubectl("apply", "-k", str(DEPLOY), check=False, timeout=120)
    assert out.returncode == 0, out.stderr
    fresh.kubectl(
        "rollout", "status", "deploy/qscale-operator", "-n", "qscale-system", "--timeout=90s"
    )
    for kind, name, ns in [
        ("serviceaccount", "qscale-operator", "qscale-system"),
        ("rolebinding", "qscale-operator", "default"),
        ("rolebinding", "qscale-operator-lease", "qscale-system"),
        ("service", "qscale-operator-metrics", "qscale-system"),
        ("clusterrole", "qscale-operator", None),
    ]:
        args = ["get", kind, name] + (["-n", ns] if ns else [])
        assert fresh.kubectl(*args, check=False).returncode == 0, (kind, name)
    dep = json.loads(
        fresh.kubectl(
            "get", "deploy", "qscale-operator", "-n", "qscale-system", "-o", "json"
        ).stdout
    )
    spec = dep["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == "qscale-operator"
    env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
    assert env["QSCALE_NAMESPACES"] == "default"
    assert env["PYTHONMALLOC"] == "malloc"
