"""A small async Kubernetes API client (httpx) for the few calls the operator makes itself.

kopf watches the AutoscalePolicies; everything else the tick needs -- the Deployment cache, the
scale subresource, status patches, Events, the Lease, model ConfigMaps -- goes through this
client, with the same credentials kopf logs in with (:func:`connection`, and
:func:`kopf_connection_info` for ``@kopf.on.login``).

In a cluster, the credential is the pod's ServiceAccount: the service host and port, the
mounted CA and token, read here as client-go reads them, and nothing of the ``kubernetes``
package is needed -- the operator then keeps that package out of its memory altogether
(:func:`keep_client_package_out`: kopf would import it for its optional type checks, 18 MB).
Out of a cluster (``--kubeconfig`` / ``$KUBECONFIG`` / ``~/.kube/config``) credentials are
resolved by the ``kubernetes`` package's own loader (``kubernetes.config.kube_config``) with
everything it supports -- tokens and token files, client certificates, basic auth, exec
credential plugins (EKS, GKE, AKS and the like: the plugin is run and its ExecCredential read)
and the OIDC and GCP auth providers. Only the loader is used: the requests themselves are
httpx, and none of the generated API or model classes of ``kubernetes.client`` is imported
(it loads them lazily), which keeps 25 MB out of the operator's memory (BENCHMARKS.md,
"Login"). Refreshed OIDC tokens are kept in memory, never written back to the kubeconfig; a
cluster's ``proxy-url`` and ``tls-server-name`` are not supported.

A credential that expires (an exec plugin's ``expirationTimestamp``, an OIDC id-token's ``exp``)
is fetched anew shortly before it does; one the API server refuses with 401 is fetched anew and
the request retried once; the in-cluster token file is re-read every minute (it rotates).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import datetime as dt
import json
import logging
import os
import ssl
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

__all__ = [
    "ApiError",
    "Auth",
    "Connection",
    "Credentials",
    "Kube",
    "connection",
    "keep_client_package_out",
    "kopf_connection_info",
    "load_connection",
]

log = logging.getLogger("qscale.operator.kube")

_TOKEN_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/token"
_CA_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

REFRESH_BEFORE = dt.timedelta(seconds=60)
"""A credential with an expiry is fetched anew this long before it (at most half its life)."""
TOKEN_FILE_MAX_AGE_S = 60.0
"""The in-cluster token file is re-read this often (projected tokens rotate; client-go: 1 min)."""
RETRY_FAILED_FETCH_S = 5.0
"""After a failed fetch (an exec plugin that exits non-zero), callers get that error this long
before the plugin is run again."""


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
class Auth:
    """One resolved credential: what goes in the Authorization header, and until when."""

    header: str | None = None
    """``Bearer <token>`` or ``Basic <base64>``; None: no header (client certificates only)."""
    expiry: dt.datetime | None = None
    """When the credential expires (timezone-aware); None: until the server refuses it."""
    cert_path: str | None = None
    """A client certificate that came with the credential (an exec plugin's), and its key."""
    key_path: str | None = None

    @property
    def token(self) -> str | None:
        if self.header and self.header[:7].lower() == "bearer ":
            return self.header[7:]
        return None

    @property
    def basic(self) -> tuple[str, str] | None:
        """``(username, password)`` of a basic-auth header."""
        if not (self.header and self.header[:6].lower() == "basic "):
            return None
        try:
            user, _, password = base64.b64decode(self.header[6:]).decode().partition(":")
        except (ValueError, binascii.Error):
            return None
        return user, password


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Credentials:
    """The current :class:`Auth`, fetched anew when it is about to expire or was refused.

    ``fetch`` reads the mounted ServiceAccount token, or runs the kubeconfig loader (which may
    run an exec plugin: a subprocess), so it is called with a lock held, in a thread when
    called from async code, and only when needed: :meth:`get` refreshes an expiring
    credential, :meth:`refresh` one the server refused (unless another caller already
    replaced it).
    """

    def __init__(
        self,
        fetch: Callable[[], Auth] | None = None,
        *,
        initial: Auth | None = None,
        max_age_s: float | None = None,
        now: Callable[[], dt.datetime] = _utcnow,
    ) -> None:
        self._fetch = fetch
        self._max_age_s = max_age_s
        self._now = now
        self._lock = threading.Lock()
        self._failed: tuple[float, ApiError] | None = None
        self.fetches = 0
        """How many times ``fetch`` ran (for tests and logs)."""
        if initial is None:
            initial = self._run_fetch() if fetch is not None else Auth()
        self._auth = initial
        self._fetched_at = self._now()

    @classmethod
    def static(cls, token: str | None = None) -> Credentials:
        return cls(initial=Auth(header=f"Bearer {token}" if token else None))

    def current(self) -> Auth:
        return self._auth

    def refresh_at(self) -> dt.datetime | None:
        """When the current credential is due to be fetched anew (None: no expiry)."""
        a = self._auth
        if a.expiry is None or self._fetch is None:
            return None
        life = a.expiry - self._fetched_at
        return a.expiry - max(dt.timedelta(0), min(REFRESH_BEFORE, life / 2))

    def due(self) -> bool:
        """Whether the current credential should be fetched anew before it is used."""
        if self._fetch is None:
            return False
        now, at = self._now(), self.refresh_at()
        if at is not None and now >= at:
            return True
        age = (now - self._fetched_at).total_seconds()
        return self._max_age_s is not None and age >= self._max_age_s

    def get(self) -> Auth:
        """The credential to use now (fetched anew first when it is due)."""
        if not self.due():
            return self._auth
        with self._lock:
            if self.due():
                self._replace()
            return self._auth

    def refresh(self, seen: Auth | None = None) -> Auth:
        """Fetch anew (the server refused ``seen``), unless another caller already did."""
        if self._fetch is None:
            return self._auth
        with self._lock:
            if seen is None or self._auth is seen:
                self._replace()
            return self._auth

    async def aget(self) -> Auth:
        return self._auth if not self.due() else await asyncio.to_thread(self.get)

    async def arefresh(self, seen: Auth | None = None) -> Auth:
        return await asyncio.to_thread(self.refresh, seen)

    def _replace(self) -> None:
        self._auth = self._run_fetch()
        self._fetched_at = self._now()

    def _run_fetch(self) -> Auth:
        assert self._fetch is not None
        if self._failed is not None and time.monotonic() - self._failed[0] < RETRY_FAILED_FETCH_S:
            raise self._failed[1]
        try:
            auth = self._fetch()
        except ApiError as e:
            self._failed = (time.monotonic(), e)
            raise
        except Exception as e:
            err = ApiError(0, f"Kubernetes credentials: {type(e).__name__}: {e}")
            self._failed = (time.monotonic(), err)
            raise err from None
        self._failed = None
        self.fetches += 1
        return auth


@dataclass(frozen=True)
class Connection:
    """Where and how to reach the API server."""

    server: str
    credentials: Credentials = field(default_factory=Credentials)
    ca_path: str | None = None
    ca_data: bytes | None = None
    insecure: bool = False
    cert_path: str | None = None
    key_path: str | None = None
    default_namespace: str | None = None
    source: str = ""
    """Where it came from, for messages: ``in-cluster``, or the kubeconfig's path."""


def _header(value: str | None) -> str | None:
    """The loaders' ``api_key['BearerToken']`` (``bearer x``, ``Bearer x``, ``Basic y``)."""
    if not value:
        return None
    scheme, _, rest = value.strip().partition(" ")
    rest = rest.strip()
    if not rest:
        return None
    return f"Bearer {rest}" if scheme.lower() == "bearer" else f"{scheme} {rest}"


def _jwt_expiry(token: str | None) -> dt.datetime | None:
    """The ``exp`` claim of a JWT (an OIDC id-token), if it has one."""
    parts = (token or "").split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        return dt.datetime.fromtimestamp(float(claims["exp"]), dt.UTC)
    except (ValueError, KeyError, TypeError, binascii.Error, OverflowError):
        return None


def _aware(t: dt.datetime | None) -> dt.datetime | None:
    if t is None:
        return None
    return t if t.tzinfo is not None else t.replace(tzinfo=dt.UTC)


def in_cluster(environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return bool(env.get("KUBERNETES_SERVICE_HOST")) and os.path.exists(_TOKEN_FILE)


def load_connection(
    kubeconfig: str | None = None,
    context: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Connection:
    """A :class:`Connection` from the in-cluster ServiceAccount, else the kubeconfig.

    ``kubeconfig`` (a path, or several joined with ``:``) defaults to ``$KUBECONFIG``, then
    ``~/.kube/config``; an explicit one wins over the in-cluster ServiceAccount. Fetches the
    first credential (running an exec plugin if the kubeconfig names one); raises
    :class:`ApiError` (status 0) when there are no credentials or they cannot be had.
    """
    env = os.environ if environ is None else environ
    if kubeconfig is None and in_cluster(env):
        return _in_cluster(env)
    paths = kubeconfig or env.get("KUBECONFIG") or "~/.kube/config"
    return _from_kubeconfig(paths, context)


def _in_cluster(env: Mapping[str, str]) -> Connection:
    """The in-cluster ServiceAccount, read as client-go's ``rest.InClusterConfig`` does (and
    the ``kubernetes`` package's ``InClusterConfigLoader``, whose checks and messages these
    are): ``https://`` + the service host and port, the mounted CA file, the mounted token,
    re-read every :data:`TOKEN_FILE_MAX_AGE_S`. Read here without that package, so an
    operator in a cluster can keep it out of its memory (:func:`keep_client_package_out`)."""
    host = env.get("KUBERNETES_SERVICE_HOST")
    port = env.get("KUBERNETES_SERVICE_PORT")
    if host is None or port is None:
        raise ApiError(0, "in-cluster: service host/port is not set")
    if not host or not port:
        raise ApiError(0, "in-cluster: service host/port is set but empty")

    def fetch() -> Auth:
        try:
            with open(_TOKEN_FILE) as f:
                token = f.read()
        except OSError as e:
            raise ApiError(0, f"in-cluster: service token file {_TOKEN_FILE}: {e}") from None
        if not token.strip():
            raise ApiError(0, f"in-cluster: service token file {_TOKEN_FILE} exists but empty")
        return Auth(header=_header(f"bearer {token}"))

    creds = Credentials(fetch, max_age_s=TOKEN_FILE_MAX_AGE_S)
    try:
        with open(_CA_FILE) as f:
            ca = f.read()
    except OSError as e:
        raise ApiError(0, f"in-cluster: service certificate file {_CA_FILE}: {e}") from None
    if not ca:
        raise ApiError(0, f"in-cluster: service certificate file {_CA_FILE} exists but empty")
    namespace = None
    with contextlib.suppress(OSError), open(_NAMESPACE_FILE) as f:
        namespace = f.read().strip() or None
    bracket = ":" in host or "%" in host  # net.JoinHostPort
    return Connection(
        server=f"https://[{host}]:{port}" if bracket else f"https://{host}:{port}",
        credentials=creds,
        ca_path=_CA_FILE,
        default_namespace=namespace,
        source="in-cluster",
    )


def keep_client_package_out() -> bool:
    """In a cluster, make the ``kubernetes`` package unimportable in this process; call it
    before kopf is imported. Returns whether it did.

    The in-cluster login needs nothing of it (:func:`_in_cluster`); kopf imports it only when
    it is installed, for ``isinstance`` checks of the client's model objects, which the
    operator never hands it -- and that import alone is about 18 MB of the operator's memory
    (BENCHMARKS.md, "Login"). Out of a cluster the kubeconfig loaders need the package, so it
    is left alone; so it is when something has already imported it."""
    if not in_cluster() or "kubernetes" in sys.modules:
        return False
    sys.modules["kubernetes"] = None  # type: ignore[assignment]  # import: ImportError
    return True


def _guard(fetch: Callable[[Any], Auth], cfg: Any) -> Auth:
    try:
        return fetch(cfg)
    except ApiError:
        raise
    except Exception as e:
        raise ApiError(0, f"Kubernetes credentials: {type(e).__name__}: {e}") from None


def _from_kubeconfig(paths: str, context: str | None) -> Connection:
    from kubernetes.client.configuration import Configuration
    from kubernetes.config.kube_config import KubeConfigLoader, KubeConfigMerger

    try:
        merged = KubeConfigMerger(paths).config
    except Exception as e:
        raise ApiError(0, f"kubeconfig {paths}: {type(e).__name__}: {e}") from None
    if merged is None:
        raise ApiError(0, f"no Kubernetes credentials: not in a cluster and no kubeconfig {paths}")

    def fetch(cfg: Any = None) -> Auth:
        cfg = cfg if cfg is not None else Configuration()
        # A new loader each time (no token left over from the last run), on the same merged
        # config, which keeps what an auth provider refreshed (OIDC tokens) in memory; nothing
        # is written back to the kubeconfig.
        loader = KubeConfigLoader(config_dict=merged, active_context=context, config_base_path=None)
        loader.load_and_set(cfg)
        user = getattr(loader, "_user", None) or {}
        header = _header(cfg.api_key.get("BearerToken"))
        expiry = _aware(getattr(loader, "expiry", None))
        if expiry is None and "auth-provider" in user:
            expiry = _jwt_expiry(header[7:] if header and header.startswith("Bearer ") else None)
        # An exec plugin gives a token or a client certificate; when it fails, kubernetes'
        # loader logs why and carries on without either.
        exec_cert = "exec" in user and header is None and bool(cfg.cert_file and cfg.key_file)
        if "exec" in user and header is None and not exec_cert:
            raise ApiError(0, f"kubeconfig {paths}: the exec credential plugin gave no credential")
        return Auth(
            header=header,
            expiry=expiry,
            cert_path=cfg.cert_file if exec_cert else None,
            key_path=cfg.key_file if exec_cert else None,
        )

    first = Configuration()
    initial = _guard(fetch, first)
    if not first.host:
        raise ApiError(0, f"kubeconfig {paths}: the cluster has no server")
    namespace = None
    with contextlib.suppress(Exception):
        loader = KubeConfigLoader(config_dict=merged, active_context=context, config_base_path=None)
        namespace = loader.current_context["context"].get("namespace")
    return Connection(
        server=first.host.rstrip("/"),
        credentials=Credentials(fetch, initial=initial),
        ca_path=first.ssl_ca_cert,
        insecure=not first.verify_ssl,
        cert_path=None if initial.cert_path else first.cert_file,
        key_path=None if initial.cert_path else first.key_file,
        default_namespace=namespace,
        source=paths,
    )


_SHARED: dict[tuple[str | None, bool], Connection] = {}
_SHARED_LOCK = threading.Lock()


def connection() -> Connection:
    """The process's :class:`Connection` (one per ``$KUBECONFIG``), shared by the operator's
    client and kopf's login, so a credential one of them refreshed serves the other."""
    key = (os.environ.get("KUBECONFIG"), in_cluster())
    with _SHARED_LOCK:
        conn = _SHARED.get(key)
        if conn is None:
            conn = _SHARED[key] = load_connection()
    return conn


def kopf_connection_info(conn: Connection, refresh: bool = True) -> Any:
    """A ``kopf.ConnectionInfo`` for ``@kopf.on.login``.

    ``refresh``: fetch the credential anew first. kopf calls its login handlers at start-up,
    when the credential's ``expiration`` has passed, and after the server refused it (401); it
    never accepts again a credential it saw refused, so the handler must not hand it back.
    """
    import kopf

    creds = conn.credentials
    auth = creds.refresh(creds.current()) if refresh else creds.get()
    basic = auth.basic
    return kopf.ConnectionInfo(
        server=conn.server,
        ca_path=conn.ca_path,
        ca_data=conn.ca_data,
        insecure=conn.insecure or None,
        token=auth.token,
        username=basic[0] if basic else None,
        password=basic[1] if basic else None,
        certificate_path=auth.cert_path or conn.cert_path,
        private_key_path=auth.key_path or conn.key_path,
        default_namespace=conn.default_namespace,
        expiration=creds.refresh_at(),
    )


def _ssl_context(conn: Connection, cert: tuple[str | None, str | None]) -> ssl.SSLContext | bool:
    if conn.insecure:
        return False
    ctx = (
        ssl.create_default_context(cafile=conn.ca_path)
        if conn.ca_path
        else ssl.create_default_context()
    )
    if conn.ca_data:
        ctx.load_verify_locations(cadata=conn.ca_data.decode())
    if cert[0] and cert[1]:
        ctx.load_cert_chain(cert[0], cert[1])
    return ctx


class Kube:
    """The API calls the operator makes, on one pooled HTTP/1.1 client."""

    def __init__(
        self, conn: Connection, timeout_s: float = 10.0, max_connections: int = 32
    ) -> None:
        self.conn = conn
        self._creds = conn.credentials
        first = self._creds.current()
        self._cert = (first.cert_path or conn.cert_path, first.key_path or conn.key_path)
        self._verify = _ssl_context(conn, self._cert)
        self._client = httpx.AsyncClient(
            base_url=conn.server,
            verify=self._verify,
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0)),
            # Keep connections across ticks (15 s apart): a TLS handshake per write is expensive.
            limits=httpx.Limits(
                max_connections=max_connections,
                max_keepalive_connections=max_connections,
                keepalive_expiry=300.0,
            ),
            trust_env=False,
        )
        self._watch_timeout = timeout_s

    def _headers(self, auth: Auth, extra: dict[str, str] | None = None) -> dict[str, str]:
        h = {"Accept": "application/json", "User-Agent": "qscale-operator"}
        if auth.header:
            h["Authorization"] = auth.header
        if extra:
            h.update(extra)
        return h

    def _use(self, auth: Auth) -> Auth:
        """Load a client certificate that came with a new credential (new connections use it)."""
        cert = (auth.cert_path, auth.key_path)
        if cert[0] and cert[1] and cert != self._cert and isinstance(self._verify, ssl.SSLContext):
            self._verify.load_cert_chain(cert[0], cert[1])
            self._cert = cert
        return auth

    async def _auth(self) -> Auth:
        return self._use(await self._creds.aget())

    async def _refused(self, auth: Auth) -> Auth | None:
        """The server said 401 to ``auth``: a new credential to retry with, or None."""
        try:
            new = await self._creds.arefresh(auth)
        except ApiError as e:
            log.warning("credential refused and no new one could be had: %s", e)
            return None
        return self._use(new) if new != auth else None

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
        auth = await self._auth()
        for attempt in (0, 1):
            try:
                r = await self._client.request(
                    method,
                    path,
                    content=data,
                    params=params,
                    headers=self._headers(
                        auth, {"Content-Type": content_type} if data is not None else None
                    ),
                )
            except httpx.HTTPError as e:
                raise ApiError(0, f"{method} {path}: {type(e).__name__}: {e}") from None
            if r.status_code == 401 and attempt == 0:
                new = await self._refused(auth)
                if new is not None:
                    auth = new
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
        auth = await self._auth()
        try:
            async with self._client.stream(
                "GET", path, params=params, headers=self._headers(auth), timeout=timeout
            ) as r:
                if r.status_code >= 400:
                    text = (await r.aread()).decode(errors="replace")
                    if r.status_code == 401:
                        await self._refused(auth)  # the caller's next watch uses the new one
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


async def cancel_all(tasks) -> None:
    """Cancel ``tasks`` and wait until each has ended (whatever it ended with)."""
    for t in tasks:
        t.cancel()
    for t in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await t


async def sleep_or(event: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds`` unless ``event`` is set first; True when it was set."""
    try:
        await asyncio.wait_for(event.wait(), timeout=seconds)
        return True
    except TimeoutError:
        return False
