"""Credentials of the operator's client (qscale.operator.kube): kubeconfigs with an exec
credential plugin (a fake one: a Python script printing an ExecCredential), static tokens,
basic auth and the in-cluster ServiceAccount, resolved by the ``kubernetes`` package's loaders;
expired or refused credentials are fetched anew."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

from qscale.operator import kube as kube_mod
from qscale.operator.kube import ApiError, Kube, kopf_connection_info, load_connection

PLUGIN = textwrap.dedent(
    """
    import datetime, json, pathlib, sys

    state = pathlib.Path(sys.argv[1])
    count = state / "count"
    n = int(count.read_text()) + 1 if count.exists() else 1
    count.write_text(str(n))
    if (state / "fail").exists():
        print("no credential today", file=sys.stderr)
        sys.exit(3)
    life = float((state / "lifetime").read_text()) if (state / "lifetime").exists() else 3600
    exp = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=life)
    status = {"token": f"token-{n}", "expirationTimestamp": exp.strftime("%Y-%m-%dT%H:%M:%SZ")}
    kind = {"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential"}
    print(json.dumps({**kind, "status": status}))
    """
)


def _kubeconfig(path: Path, user: dict, server: str = "https://127.0.0.1:6443") -> Path:
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "c", "cluster": {"server": server, "insecure-skip-tls-verify": True}}
        ],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u", "namespace": "team"}}],
        "current-context": "x",
    }
    path.write_text(json.dumps(cfg))
    return path


@pytest.fixture
def plugin(tmp_path):
    """``(kubeconfig, state_dir)``: a kubeconfig whose user is the fake exec plugin."""
    script = tmp_path / "plugin.py"
    script.write_text(PLUGIN)
    state = tmp_path / "state"
    state.mkdir()
    user = {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": sys.executable,
            "args": [str(script), str(state)],
            "interactiveMode": "Never",
        }
    }
    return _kubeconfig(tmp_path / "kubeconfig", user), state


def _runs(state: Path) -> int:
    return int((state / "count").read_text())


def test_exec_plugin_gives_the_token_and_its_expiry(plugin):
    path, state = plugin
    conn = load_connection(str(path))
    auth = conn.credentials.current()
    assert conn.server == "https://127.0.0.1:6443" and conn.insecure
    assert conn.default_namespace == "team"
    assert auth.header == "Bearer token-1" and auth.token == "token-1"
    left = (auth.expiry - dt.datetime.now(dt.UTC)).total_seconds()
    assert 3500 < left <= 3600
    # Not due: used as is, the plugin is not run again.
    assert conn.credentials.get() is auth and _runs(state) == 1


def test_an_expired_exec_credential_is_fetched_anew(plugin):
    path, state = plugin
    (state / "lifetime").write_text("-10")  # the plugin hands out an already expired token
    conn = load_connection(str(path))
    assert conn.credentials.current().token == "token-1"
    assert conn.credentials.due()
    assert conn.credentials.get().token == "token-2"
    (state / "lifetime").write_text("3600")
    assert conn.credentials.get().token == "token-3"
    assert conn.credentials.get().token == "token-3" and _runs(state) == 3


def test_a_credential_is_fetched_anew_shortly_before_it_expires(plugin):
    path, state = plugin
    conn = load_connection(str(path))
    creds = conn.credentials
    exp = creds.current().expiry
    assert creds.refresh_at() == exp - kube_mod.REFRESH_BEFORE
    creds._now = lambda: exp - dt.timedelta(seconds=30)  # 30 s left: within REFRESH_BEFORE
    assert creds.get().token == "token-2" and _runs(state) == 2


def test_a_failing_plugin_is_an_api_error_and_is_not_rerun_at_once(plugin):
    path, state = plugin
    (state / "fail").touch()
    with pytest.raises(ApiError) as e:
        load_connection(str(path))
    assert e.value.status == 0 and "exec" in str(e.value)
    (state / "fail").unlink()
    conn = load_connection(str(path))
    (state / "fail").touch()
    before = _runs(state)
    for _ in range(3):
        with pytest.raises(ApiError):
            conn.credentials.refresh(conn.credentials.current())
    assert _runs(state) == before + 1  # RETRY_FAILED_FETCH_S between runs
    assert conn.credentials.current().token is not None  # the last good one is kept


def _serve(kube: Kube, accept: set[str], seen: list[str | None]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        header = request.headers.get("authorization")
        seen.append(header)
        if header not in accept:
            return httpx.Response(401, json={"kind": "Status", "message": "Unauthorized"})
        return httpx.Response(200, json={"kind": "ConfigMap", "metadata": {"name": "cm"}})

    kube._client = httpx.AsyncClient(
        base_url=kube.conn.server, transport=httpx.MockTransport(handler)
    )


def test_the_client_refetches_a_refused_credential_and_retries_once(plugin):
    path, state = plugin
    kube = Kube(load_connection(str(path)))
    seen: list[str | None] = []
    _serve(kube, {"Bearer token-2"}, seen)  # the server no longer takes token-1

    async def go():
        try:
            return await kube.get("/api/v1/namespaces/team/configmaps/cm")
        finally:
            await kube.close()

    assert asyncio.run(go())["metadata"]["name"] == "cm"
    assert seen == ["Bearer token-1", "Bearer token-2"] and _runs(state) == 2


def test_the_client_refetches_an_expired_credential_before_sending(plugin):
    path, state = plugin
    (state / "lifetime").write_text("-10")
    kube = Kube(load_connection(str(path)))
    (state / "lifetime").write_text("3600")
    seen: list[str | None] = []
    _serve(kube, {"Bearer token-2"}, seen)

    async def go():
        try:
            return await kube.get("/api/v1/namespaces/team/configmaps/cm")
        finally:
            await kube.close()

    asyncio.run(go())
    assert seen == ["Bearer token-2"]


def test_a_wrong_token_fails_with_401_after_one_retry(tmp_path):
    kube = Kube(load_connection(str(_kubeconfig(tmp_path / "kc", {"token": "wrong"}))))
    seen: list[str | None] = []
    _serve(kube, {"Bearer right"}, seen)

    async def go():
        try:
            await kube.get("/api/v1/namespaces/team/configmaps/cm")
        finally:
            await kube.close()

    with pytest.raises(ApiError) as e:
        asyncio.run(go())
    assert e.value.status == 401
    assert seen == ["Bearer wrong"]  # re-reading gave the same token: no pointless retry


def test_kopf_login_gets_a_fresh_token_with_an_expiration(plugin):
    path, state = plugin
    conn = load_connection(str(path))
    info = kopf_connection_info(conn)  # refresh=True: kopf may have just seen token-1 refused
    assert info.token == "token-2" and info.server == conn.server and info.insecure
    assert info.expiration == conn.credentials.refresh_at()
    assert info.default_namespace == "team"
    again = kopf_connection_info(conn, refresh=False)
    assert again.token == "token-2" and _runs(state) == 2


def test_static_token_and_basic_auth_kubeconfigs(tmp_path):
    conn = load_connection(str(_kubeconfig(tmp_path / "a", {"token": "abc"})))
    assert conn.credentials.current().header == "Bearer abc"
    assert conn.credentials.current().expiry is None and not conn.credentials.due()
    conn = load_connection(str(_kubeconfig(tmp_path / "b", {"username": "u", "password": "p:w"})))
    assert conn.credentials.current().header.startswith("Basic ")
    info = kopf_connection_info(conn)
    assert (info.username, info.password, info.token) == ("u", "p:w", None)


def test_no_kubeconfig_is_an_api_error(tmp_path):
    with pytest.raises(ApiError, match="no Kubernetes credentials"):
        load_connection(str(tmp_path / "missing"), environ={})


def test_in_cluster_service_account_token_is_reread(tmp_path, monkeypatch):
    token, ca, ns = tmp_path / "token", tmp_path / "ca.crt", tmp_path / "namespace"
    token.write_text("sa-1")
    ca.write_text("not parsed here\n")
    ns.write_text("qscale-system")
    monkeypatch.setattr(kube_mod, "_TOKEN_FILE", str(token))
    monkeypatch.setattr(kube_mod, "_CA_FILE", str(ca))
    monkeypatch.setattr(kube_mod, "_NAMESPACE_FILE", str(ns))
    env = {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"}
    conn = load_connection(environ=env)
    assert conn.server == "https://[fd00::1]:443" and conn.ca_path == str(ca)
    assert conn.source == "in-cluster" and conn.default_namespace == "qscale-system"
    creds = conn.credentials
    first = creds.current()
    assert first.header == "Bearer sa-1" and not creds.due()
    token.write_text("sa-2\n")  # the kubelet rotated it
    assert creds.refresh(first).header == "Bearer sa-2"  # after a 401
    token.write_text("sa-3")
    later = creds._fetched_at + dt.timedelta(seconds=kube_mod.TOKEN_FILE_MAX_AGE_S + 1)
    creds._now = lambda: later
    assert creds.get().header == "Bearer sa-3"  # once a minute anyway


def test_the_login_path_imports_no_generated_api_or_model_classes(plugin):
    import subprocess

    path, _ = plugin
    code = (
        "import sys\n"
        "from qscale.operator.kube import load_connection\n"
        f"load_connection({str(path)!r}).credentials.current()\n"
        "apis = [m for m in sys.modules if m.startswith('kubernetes.client.api.')]\n"
        "models = [m for m in sys.modules if m.startswith('kubernetes.client.models.')]\n"
        "print(len(apis), len(models), 'kopf' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    apis, models, kopf = out.stdout.split()
    # kubernetes.client loads its generated classes lazily: none of its 60-odd API classes,
    # only the 3 model modules its own package imports eagerly (ObjectMeta and friends).
    assert int(apis) == 0 and int(models) <= 5 and kopf == "False"


@pytest.fixture
def service_account(tmp_path, monkeypatch):
    """A pod's mounted ServiceAccount: token, CA and namespace files in ``tmp_path``."""
    files = {"token": "sa-1", "ca.crt": "-----BEGIN CERTIFICATE-----\n", "namespace": "team-a"}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(kube_mod, "_TOKEN_FILE", str(tmp_path / "token"))
    monkeypatch.setattr(kube_mod, "_CA_FILE", str(tmp_path / "ca.crt"))
    monkeypatch.setattr(kube_mod, "_NAMESPACE_FILE", str(tmp_path / "namespace"))
    return tmp_path


@pytest.mark.parametrize(
    ("env", "change", "message"),
    [
        ({}, None, "service host/port is not set"),
        ({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, None, "service host/port is not set"),
        ({"KUBERNETES_SERVICE_HOST": "", "KUBERNETES_SERVICE_PORT": "443"}, None, "set but empty"),
        (None, ("token", ""), "service token file .*token exists but empty"),
        (None, ("token", None), "service token file .*token: .*No such file"),
        (None, ("ca.crt", ""), "service certificate file .*ca.crt exists but empty"),
        (None, ("ca.crt", None), "service certificate file .*ca.crt: .*No such file"),
    ],
)
def test_in_cluster_login_refuses_what_client_go_refuses(service_account, env, change, message):
    env = (
        {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}
        if env is None
        else env
    )
    if change is not None:
        name, text = change
        if text is None:
            (service_account / name).unlink()
        else:
            (service_account / name).write_text(text)
    with pytest.raises(ApiError, match=message) as err:
        kube_mod._in_cluster(env)
    assert err.value.status == 0 and str(err.value).startswith("in-cluster: ")


def test_in_cluster_server_and_namespace_as_client_go_joins_them(service_account):
    for host, server in [
        ("10.96.0.1", "https://10.96.0.1:443"),
        ("kubernetes.default.svc", "https://kubernetes.default.svc:443"),
        ("fd00::1", "https://[fd00::1]:443"),
        ("fe80::1%eth0", "https://[fe80::1%eth0]:443"),
    ]:
        conn = kube_mod._in_cluster(
            {"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": "443"}
        )
        assert conn.server == server
    assert conn.default_namespace == "team-a" and conn.ca_path.endswith("ca.crt")
    assert not conn.insecure and conn.cert_path is None
    (service_account / "namespace").unlink()  # optional: no default namespace then
    conn = kube_mod._in_cluster({"KUBERNETES_SERVICE_HOST": "h", "KUBERNETES_SERVICE_PORT": "1"})
    assert conn.default_namespace is None


def test_in_a_cluster_the_operator_keeps_the_kubernetes_package_out(service_account):
    """In a pod, the operator's whole import chain (kopf, its handlers, the tick) runs without
    the ``kubernetes`` package, the login works without it, and kopf sees it as absent; out of
    a cluster it is left importable (the kubeconfig loaders need it)."""
    import subprocess

    code = textwrap.dedent(
        f"""
        import os, sys
        from qscale.operator import kube
        kube._TOKEN_FILE = {str(service_account / "token")!r}
        kube._CA_FILE = {str(service_account / "ca.crt")!r}
        kube._NAMESPACE_FILE = {str(service_account / "namespace")!r}
        outside = kube.keep_client_package_out()
        os.environ.update(KUBERNETES_SERVICE_HOST="10.0.0.1", KUBERNETES_SERVICE_PORT="443")
        inside = kube.keep_client_package_out()
        import kopf
        import qscale.operator.handlers
        from kopf._cogs.helpers import thirdparty
        conn = kube.connection()
        auth = conn.credentials.current()
        info = kube.kopf_connection_info(conn)
        try:
            import kubernetes.config
            importable = True
        except ImportError:
            importable = False
        loaded = [m for m in sys.modules if m.startswith("kubernetes") and sys.modules[m]]
        print(outside, inside, importable, len(loaded), thirdparty.V1ObjectMetaSync,
              conn.source, auth.header, info.token, info.server)
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_SERVICE_")}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [
        "False", "True", "False", "0", "None", "in-cluster", "Bearer", "sa-1", "sa-1",
        "https://10.0.0.1:443",
    ]  # fmt: skip
