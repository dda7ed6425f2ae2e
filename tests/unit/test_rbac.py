"""The operator's RBAC is the least it needs: what it reads, it only reads; it writes only the
status of AutoscalePolicies and ModelRollouts and the scale of Deployments; model ConfigMaps
only by name. (The chart renders the same rules: tests/integration/test_chart.py compares them;
the cluster tests run the operator under exactly these rules.)"""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]

EXPECTED = {
    ("qscale.io", "autoscalepolicies"): {"get", "list", "watch"},
    ("qscale.io", "autoscalepolicies/status"): {"get", "patch"},
    ("qscale.io", "modelrollouts"): {"list"},
    ("qscale.io", "modelrollouts/status"): {"patch"},
    ("apps", "deployments"): {"get", "list", "watch"},
    ("apps", "deployments/scale"): {"get", "patch"},
    ("", "events"): {"create"},
    ("", "configmaps"): {"get"},
}


def _rules(kind: str, name: str) -> dict[tuple[str, str], set[str]]:
    docs = [d for d in yaml.safe_load_all((ROOT / "deploy" / "rbac.yaml").read_text()) if d]
    (role,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    out: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for res in rule["resources"]:
                out.setdefault((group, res), set()).update(rule["verbs"])
    return out


def test_cluster_role_is_least_privilege():
    assert _rules("ClusterRole", "qscale-operator") == EXPECTED


def test_at_home_only_the_lease_and_the_kill_switch_configmap_by_name():
    docs = [d for d in yaml.safe_load_all((ROOT / "deploy" / "rbac.yaml").read_text()) if d]
    (role,) = [d for d in docs if d["kind"] == "Role" and d["metadata"]["name"].endswith("lease")]
    by = {(r["apiGroups"][0], r["resources"][0]): r for r in role["rules"]}
    assert set(by) == {("coordination.k8s.io", "leases"), ("", "configmaps")}
    assert by[("", "configmaps")]["verbs"] == ["get"]
    assert by[("", "configmaps")]["resourceNames"] == ["qscale-kill-switch"]


def test_no_write_to_policies_themselves_and_no_configmap_listing():
    rules = _rules("ClusterRole", "qscale-operator")
    assert "patch" not in rules[("qscale.io", "autoscalepolicies")]
    assert "patch" not in rules[("qscale.io", "modelrollouts")]
    assert rules[("", "configmaps")] == {"get"}
