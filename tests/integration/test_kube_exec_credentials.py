"""An exec-plugin kubeconfig (as EKS, GKE and AKS hand out) against the real local API server:
the plugin prints an ExecCredential holding a ServiceAccount token from the TokenRequest API;
the operator's client and kopf's login authenticate with it, a wrong token gets 401."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import sys
import textwrap
from pathlib import Path

import pytest

from qscale.dev.cluster import deployment_manifest
from qscale.operator.kube import ApiError, Kube, kopf_connection_info, load_connection

pytestmark = pytest.mark.cluster

SA = "exec-user"

PLUGIN = textwrap.dedent(
    """
    import datetime, json, pathlib, sys

    token_file, count = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    count.write_text(str(int(count.read_text()) + 1 if count.exists() else 1))
    exp = datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=10)
    print(json.dumps({
        "apiVersion": "client.authentication.k8s.io/v1",
        "kind": "ExecCredential",
        "status": {
            "token": token_file.read_text().strip(),
            "expirationTimestamp": exp.strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
    }))
    """
)


def _rbac(ns: str) -> str:
    return "\n---\n".join(
        json.dumps(d)
        for d in (
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": SA, "namespace": ns},
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": SA, "namespace": ns},
                "rules": [
                    {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]},
                    {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["list"]},
                ],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": SA, "namespace": ns},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": SA},
                "subjects": [{"kind": "ServiceAccount", "name": SA, "namespace": ns}],
            },
        )
    )


def _exec_kubeconfig(cluster, workdir: Path, token_file: Path, count: Path) -> Path:
    raw = json.loads(cluster.kubectl("config", "view", "--minify", "--raw", "-o", "json").stdout)
    c = raw["clusters"][0]["cluster"]
    ca = c.get("certificate-authority-data")
    if ca is None and c.get("certificate-authority"):
        ca = base64.b64encode(Path(c["certificate-authority"]).read_bytes()).decode()
    assert ca, "the local cluster's kubeconfig has a CA: TLS is verified here"
    plugin = workdir / "plugin.py"
    plugin.write_text(PLUGIN)
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "local", "cluster": {"server": c["server"], "certificate-authority-data": ca}}
        ],
        "users": [
            {
                "name": SA,
                "user": {
                    "exec": {
                        "apiVersion": "client.authentication.k8s.io/v1",
                        "command": sys.executable,
                        "args": [str(plugin), str(token_file), str(count)],
                        "interactiveMode": "Never",
                    }
                },
            }
        ],
        "contexts": [{"name": "exec", "context": {"cluster": "local", "user": SA}}],
        "current-context": "exec",
    }
    path = workdir / "exec.kubeconfig"
    path.write_text(json.dumps(cfg))
    path.chmod(0o600)
    return path


async def _kopf_get(info, path: str):
    """GET ``path`` with kopf's own API client, logged in with ``info`` (as after login)."""
    import kopf
    from kopf._cogs.clients import api, auth
    from kopf._cogs.structs.credentials import Vault

    vault = Vault()
    await vault.populate({"qscale": info})
    auth.vault_var.set(vault)
    try:
        return await api.get(
            path, settings=kopf.OperatorSettings(), logger=logging.getLogger("test")
        )
    finally:
        await vault.close()


async def _kopf_status(info, path: str) -> int:
    """The HTTP status of GET ``path`` on kopf's session built from ``info``."""
    from kopf._cogs.clients import auth

    context = auth.APIContext(info)
    try:
        async with context.session.get(context.server + path) as r:
            return r.status
    finally:
        await context.close()


def test_exec_plugin_kubeconfig_authenticates_the_client_and_kopf(cluster, namespace, tmp_path):
    cluster.apply(_rbac(namespace))
    cluster.apply(deployment_manifest("web", namespace, replicas=1))
    cluster.kubectl("create", "configmap", "cm", "-n", namespace, "--from-literal=k=v")
    token_file, count = tmp_path / "token", tmp_path / "runs"
    token_file.write_text(cluster.create_token(namespace, SA, duration_s=600))
    kubeconfig = _exec_kubeconfig(cluster, tmp_path, token_file, count)

    conn = load_connection(str(kubeconfig))
    assert conn.ca_path and not conn.insecure and int(count.read_text()) == 1

    async def as_operator():
        kube = Kube(conn)
        try:
            deploys = await kube.get(f"/apis/apps/v1/namespaces/{namespace}/deployments")
            cm = await kube.get(f"/api/v1/namespaces/{namespace}/configmaps/cm")
            with pytest.raises(ApiError) as forbidden:  # authenticated, but RBAC says no
                await kube.get("/api/v1/namespaces/kube-system/configmaps")
            return deploys, cm, forbidden.value.status
        finally:
            await kube.close()

    deploys, cm, status = asyncio.run(as_operator())
    assert [d["metadata"]["name"] for d in deploys["items"]] == ["web"]
    assert cm["data"] == {"k": "v"} and status == 403
    assert int(count.read_text()) == 1  # the credential is reused until it is due

    info = kopf_connection_info(conn)  # what @kopf.on.login hands kopf: a fresh run
    assert int(count.read_text()) == 2 and info.expiration is not None
    got = asyncio.run(_kopf_get(info, f"/api/v1/namespaces/{namespace}/configmaps/cm"))
    assert got["data"] == {"k": "v"}


def test_a_wrong_token_is_refused_then_a_rotated_one_is_fetched(cluster, namespace, tmp_path):
    cluster.apply(_rbac(namespace))
    cluster.kubectl("create", "configmap", "cm", "-n", namespace, "--from-literal=k=v")
    token_file, count = tmp_path / "token", tmp_path / "runs"
    token_file.write_text("not-a-token")
    kubeconfig = _exec_kubeconfig(cluster, tmp_path, token_file, count)
    conn = load_connection(str(kubeconfig))
    path = f"/api/v1/namespaces/{namespace}/configmaps/cm"

    async def get():
        kube = Kube(conn)
        try:
            return await kube.get(path)
        finally:
            await kube.close()

    with pytest.raises(ApiError) as e:
        asyncio.run(get())
    assert e.value.status == 401
    assert int(count.read_text()) == 2  # refetched once on the 401, still refused

    # kopf's own session, logged in with the wrong credential, is refused too (through its
    # API functions kopf would wait for a re-login here: the operator's login handler).
    assert asyncio.run(_kopf_status(kopf_connection_info(conn, refresh=False), path)) == 401

    # The plugin now hands out a good token (as after rotation): the next 401 fetches it.
    token_file.write_text(cluster.create_token(namespace, SA, duration_s=600))
    assert asyncio.run(get())["data"] == {"k": "v"}
    assert int(count.read_text()) == 3
