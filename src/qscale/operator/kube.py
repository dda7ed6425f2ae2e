"""A small async Kubernetes API client (httpx) for the few calls the operator makes itself.

kopf watches the AutoscalePolicies; everything else the tick needs -- the Deployment cache, the
scale subresource, status patches, Events, the Lease, model ConfigMaps -- goes through this
client, with the same credentials kopf logs in with (:func:`connection_info`: the in-cluster
ServiceAccount, else the kubeconfig of ``$KUBECONFIG`` / ``~/.kube/config``, using kopf's own
minimal login functions: tokens, client certificates and basic auth; no exec plugins).
Not importing the ``kubernetes`` client keeps ~35 MB out of the operator's memory.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import ssl
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

__all__ = ["ApiError", "Connection", "Kube", "connection_info"]

_TOKEN_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/token"


class ApiError(Exception):
    """A Kubernetes API error with its HTTP status (0: the server could not be reached)."""

    def __init__(self, status: int, message: str, body: Any = None) -> None:
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status
        self.body = body

    @property
    def reason(self) -> str:
        return (self.body or {}).get("reason", "") if isinstance(self.body, dict) else ""


@dataclass(frozen=True)
class Connection:
    """Where and how to reach the API server."""

    server: str
    token: str | None = None
    token_file: str | None = None
    ca_path: str | None = None
    ca_data: bytes | None = None
    insecure: bool = False
    cert_path: str | None = None
    key_path: str | None = None
    username: str | None = None
    password: str | None = None
    default_namespace: str | None = None


def _b64(data: str | bytes | None) -> bytes | None:
    if data is None:
        return None
    raw = data.encode() if isinstance(data, str) else data
    try:
        return base64.b64decode(raw, validate=True)
    except ValueError:
        return raw  # already PEM


def connection_info(settings: Any = None) -> tuple[Connection, Any]:
    """``(Connection, kopf.ConnectionInfo)`` from the in-cluster ServiceAccount or the kubeconfig.

    Inline certificate data is written to private temp files (removed at exit by
    :meth:`Kube.close`' owner via :func:`cleanup_files`), since ``ssl`` loads chains from files.
    """
    import kopf

    kopf_settings = settings or kopf.OperatorSettings()
    info = None
    if os.path.exists(_TOKEN_FILE) and os.environ.get("KUBERNETES_SERVICE_HOST"):
        info = kopf.login_with_service_account(settings=kopf_settings)
        if info is not None:
            host = os.environ["KUBERNETES_SERVICE_HOST"]
            port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
            host = f"[{host}]" if ":" in host else host
            info = _replace(info, server=f"https://{host}:{port}")
    if info is None:
        info = kopf.login_with_kubeconfig(settings=kopf_settings)
    if info is None:
        raise ApiError(0, "no Kubernetes credentials: not in a cluster and no kubeconfig")
    cert, key = info.certificate_path, info.private_key_path
    if info.certificate_data:
        cert = _private_file(_b64(info.certificate_data) or b"")
    if info.private_key_data:
        key = _private_file(_b64(info.private_key_data) or b"")
    conn = Connection(
        server=info.server.rstrip("/"),
        token=info.token,
        token_file=_TOKEN_FILE if os.path.exists(_TOKEN_FILE) and info.token else None,
        ca_path=os.fspath(info.ca_path) if info.ca_path else None,
        ca_data=_b64(info.ca_data),
        insecure=bool(info.insecure),
        cert_path=os.fspath(cert) if cert else None,
        key_path=os.fspath(key) if key else None,
        username=info.username,
        password=info.password,
        default_namespace=info.default_namespace,
    )
    return conn, info


def _replace(info: Any, **kw: Any) -> Any:
    import dataclasses

    return dataclasses.replace(info, **kw)


_TEMP_FILES: list[str] = []


def _private_file(data: bytes) -> str:
    fd, path = tempfile.mkstemp(prefix="qscale-kube-", suffix=".pem")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    _TEMP_FILES.append(path)
    return path


def cleanup_files() -> None:
    while _TEMP_FILES:
        with contextlib.suppress(OSError):
            os.unlink(_TEMP_FILES.pop())


def _ssl_context(conn: Connection) -> ssl.SSLContext | bool:
    if conn.insecure:
        return False
    ctx = (
        ssl.create_default_context(cafile=conn.ca_path)
        if conn.ca_path
        else ssl.create_default_context()
    )
    if conn.ca_data:
        ctx.load_verify_locations(cadata=conn.ca_data.decode())
    if conn.cert_path and conn.key_path:
        ctx.load_cert_chain(conn.cert_path, conn.key_path)
    return ctx


class Kube:
    """The API calls the operator makes, on one pooled HTTP/1.1 client."""

    def __init__(
        self, conn: Connection, timeout_s: float = 10.0, max_connections: int = 32
    ) -> None:
        self.conn = conn
        self._token = conn.token
        auth = (
            httpx.BasicAuth(conn.username, conn.password)
            if conn.username and conn.password
            else None
        )
        self._client = httpx.AsyncClient(
            base_url=conn.server,
            verify=_ssl_context(conn),
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0)),
            # Keep connections across ticks (15 s apart): a TLS handshake per write is expensive.
            limits=httpx.Limits(
                max_connections=max_connections,
                max_keepalive_connections=max_connections,
                keepalive_expiry=300.0,
            ),
            auth=auth,
            trust_env=False,
        )
        self._watch_timeout = timeout_s

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        h = {"Accept": "application/json", "User-Agent": "qscale-operator"}
        if self._token:
            h["Authorization"] = f"Bearer {self._token}"
        if extra:
            h.update(extra)
        return h

    def _reload_token(self) -> bool:
        """Re-read a projected ServiceAccount token (they rotate); True when it changed."""
        if not self.conn.token_file:
            return False
        try:
            token = Path(self.conn.token_file).read_text().strip()
        except OSError:
            return False
        changed = token != self._token
        self._token = token
        return changed

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        content_type: str = "application/json",
        params: dict[str, Any] | None = None,
    ) -> Any:
        """One API call; returns the decoded JSON body, raises :class:`ApiError`."""
        data = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        for attempt in (0, 1):
            try:
                r = await self._client.request(
                    method,
                    path,
                    content=data,
                    params=params,
                    headers=self._headers(
                        {"Content-Type": content_type} if data is not None else None
                    ),
                )
            except httpx.HTTPError as e:
                raise ApiError(0, f"{method} {path}: {type(e).__name__}: {e}") from None
            if r.status_code == 401 and attempt == 0 and self._reload_token():
                continue
            break
        if r.status_code >= 400:
            try:
                payload = r.json()
                message = payload.get("message", r.text)
            except ValueError:
                payload, message = None, r.text
            raise ApiError(r.status_code, f"{method} {path}: {message}", payload)
        return r.json() if r.content else None

    async def get(self, path: str, **params: Any) -> Any:
        return await self.request("GET", path, params=params or None)

    async def patch_merge(self, path: str, body: Any) -> Any:
        return await self.request(
            "PATCH", path, body=body, content_type="application/merge-patch+json"
        )

    async def post(self, path: str, body: Any) -> Any:
        return await self.request("POST", path, body=body)

    async def put(self, path: str, body: Any) -> Any:
        return await self.request("PUT", path, body=body)

    async def watch(
        self,
        path: str,
        resource_version: str,
        timeout_s: int = 300,
        on_open: Callable[[], None] | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """Watch events from ``resource_version`` (raises :class:`ApiError` 410 when too old)."""
        params = {
            "watch": "1",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout_s),
        }
        timeout = httpx.Timeout(self._watch_timeout, read=timeout_s + 30.0)
        try:
            async with self._client.stream(
                "GET", path, params=params, headers=self._headers(), timeout=timeout
            ) as r:
                if r.status_code >= 400:
                    text = (await r.aread()).decode(errors="replace")
                    if r.status_code == 401:
                        self._reload_token()
                    raise ApiError(r.status_code, f"watch {path}: {text[:200]}")
                if on_open is not None:
                    on_open()
                async for line in r.aiter_lines():
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    if event.get("type") == "ERROR":
                        status = event.get("object") or {}
                        raise ApiError(
                            int(status.get("code") or 500), f"watch {path}: {status.get('message')}"
                        )
                    yield event
        except httpx.HTTPError as e:
            raise ApiError(0, f"watch {path}: {type(e).__name__}: {e}") from None

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._client.aclose()


async def sleep_or(event: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds`` unless ``event`` is set first; True when it was set."""
    try:
        await asyncio.wait_for(event.wait(), timeout=seconds)
        return True
    except TimeoutError:
        return False
