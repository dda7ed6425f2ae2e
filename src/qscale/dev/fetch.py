"""Pinned downloads for ``make demo`` on a machine without the control plane or Prometheus.

Two artifacts are pinned here, each by URL and sha256: this project's archive of the local
control plane (``k8s-local.tar.xz``: kwokctl/kwok, etcd, the kube components, metrics-server
and its manifests; built by ``shared/k8s/build.sh``) and an upstream Prometheus release. A
download is streamed to a temporary file in the cache, its sha256 checked before anything is
unpacked or made executable, then renamed into place; a verified cached copy is used again
without the network. A file that fails the check is deleted and :class:`ChecksumMismatch` names
it with both hashes: a caller must stop there, never fall back quietly.

* ``$QSCALE_CACHE_DIR`` (default ``~/.cache/qscale``): ``downloads/`` holds the archives,
  ``prometheus/`` the unpacked Prometheus (``prometheus``, ``promtool``);
* the control plane unpacks where ``shared/k8s/install.sh`` puts it (``$QSCALE_K8S_HOME``, else
  ``$XDG_CACHE_HOME/qscale-k8s`` or ``~/.cache/qscale-k8s``), in the same shape: ``bin/``,
  ``kwok-config/`` with ``kwokctl-local.yaml``, and a ``.sha256`` marker, so either one reuses
  what the other unpacked;
* ``$QSCALE_FETCH_BASE_URL`` (or ``base_url=``) makes a mirror serve every artifact under its
  file name; only https URLs are fetched (plain http on loopback only, for tests), and a
  redirect to anything else is refused;
* ``$QSCALE_NO_FETCH=1`` forbids every download (the test suite sets it).

Only :mod:`qscale.dev.cluster` and :mod:`qscale.dev.prom` use this, and they download only when
asked to (``fetch=True``: ``qscale demo`` without ``--no-fetch``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import httpx

__all__ = [
    "BASE_URL_ENV",
    "K8S_LOCAL",
    "NO_FETCH_ENV",
    "PROMETHEUS",
    "Artifact",
    "ChecksumMismatch",
    "FetchError",
    "FetchUnavailable",
    "cache_dir",
    "cached_k8s_bin",
    "cached_prometheus",
    "fetch",
    "fetch_k8s_bin",
    "fetch_prometheus",
    "k8s_home",
]

BASE_URL_ENV = "QSCALE_FETCH_BASE_URL"
"""A mirror serving every artifact under its file name (overrides the pinned URLs' hosts)."""
NO_FETCH_ENV = "QSCALE_NO_FETCH"
"""``1``: never download (cached, verified copies are still used)."""

_MIB = 1 << 20
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
_MAX_REDIRECTS = 5


@dataclass(frozen=True)
class Artifact:
    """One pinned download."""

    url: str
    """Where it is published (https); a mirror serves it under the same file name."""
    sha256: str
    """The archive's sha256: nothing that does not match is kept, unpacked or run."""
    max_bytes: int
    """Downloads larger than this are cut off and refused."""
    members: tuple[str, ...] = ()
    """File names to take out of the archive, flattened into one directory (empty: all of it,
    as laid out)."""

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


K8S_LOCAL = Artifact(
    # This project's published copy of shared/k8s/k8s-local.tar.xz (built by shared/k8s/build.sh:
    # etcd v3.7.3, kube-* v1.37.2, kwok/kwokctl v0.8.0, metrics-server v0.9.0, helm v4.3.1); the
    # sha256 is the one in shared/k8s/SHA256SUMS.
    url="https://github.com/qscale-io/qscale/releases/download/k8s-local-v1.37.2/k8s-local.tar.xz",
    sha256="a28be8a7cd224b61f92b1e30130fe2e8126ceef0fe113f2e7a80981be93a891e",
    max_bytes=256 * _MIB,
)
PROMETHEUS = Artifact(
    # Upstream's release (the 2.53 LTS line; the flags and config qscale.dev.prom uses are the
    # same as in Debian's 2.42). The sha256 is as pinned in github.com/boxcutter/oci,
    # prometheus/prometheus/2.x/docker-bake.hcl (PROMETHEUS_SHA256_AMD64, commit
    # 74e34c4e283bd88f9a6b2fb24b92356a7c5a47c1); another project's install script pins the same
    # value and says it checked it against upstream's sha256sums.txt. Not re-checked here
    # against the tarball itself (this was written offline): a wrong pin stops the demo.
    url="https://github.com/prometheus/prometheus/releases/download/v2.53.4/"
    "prometheus-2.53.4.linux-amd64.tar.gz",
    sha256="b8b497c4610d1b93208252b60c8f20f6b2e78596ae8df43397a2e805aa53d475",
    max_bytes=256 * _MIB,
    members=("prometheus", "promtool"),
)


class FetchUnavailable(RuntimeError):
    """The download could not be had (no network, server down, an HTTP error, or downloads are
    off): the caller may go on without it."""


class FetchError(RuntimeError):
    """A download refused (a URL that is not https, a redirect off https, too large, or its
    sha256 wrong): the caller must stop and say so."""


class ChecksumMismatch(FetchError):
    """A downloaded file is not the pinned one; it has been deleted."""

    def __init__(self, name: str, expected: str, actual: str) -> None:
        super().__init__(
            f"{name}: sha256 mismatch: expected {expected}, got {actual}; the download was "
            "deleted and nothing of it was unpacked or run (a corrupted or tampered copy, or a "
            "mirror serving another version)"
        )
        self.name, self.expected, self.actual = name, expected, actual


def _env(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if environ is None else environ


def cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$QSCALE_CACHE_DIR`` or ``~/.cache/qscale`` (the root ``qscale.simulator.frontier``
    caches its grids under)."""
    root = _env(environ).get("QSCALE_CACHE_DIR")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "qscale"


def k8s_home(environ: Mapping[str, str] | None = None) -> Path:
    """Where the control plane is unpacked: ``shared/k8s/install.sh``'s default DEST."""
    env = _env(environ)
    if env.get("QSCALE_K8S_HOME"):
        return Path(env["QSCALE_K8S_HOME"]).expanduser()
    xdg = env.get("XDG_CACHE_HOME") or f"{env.get('HOME') or '/tmp'}/.cache"
    return Path(xdg) / "qscale-k8s"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_MIB):
            h.update(chunk)
    return h.hexdigest()


def _check_url(url: httpx.URL, came_from: httpx.URL | None = None) -> None:
    """https anywhere; plain http only on loopback, and never after https (a downgrade)."""
    if url.scheme == "https" and url.host:
        return
    if (
        url.scheme == "http"
        and url.host in _LOOPBACK
        and (came_from is None or came_from.scheme == "http")
    ):
        return
    what = f"a redirect from {came_from} to {url}" if came_from else f"{url}"
    raise FetchError(f"refusing {what}: only https URLs are fetched (plain http on loopback only)")


def _source(artifact: Artifact, env: Mapping[str, str], base_url: str | None) -> httpx.URL:
    base = base_url or env.get(BASE_URL_ENV)
    url = httpx.URL(f"{base.rstrip('/')}/{artifact.filename}" if base else artifact.url)
    _check_url(url)
    return url


def _stream_to(
    url: httpx.URL, out: BinaryIO, artifact: Artifact, timeout_s: float, say: Callable[[str], None]
) -> str:
    """GET ``url`` into ``out`` following only allowed redirects; returns the data's sha256."""
    digest, size = hashlib.sha256(), 0
    timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0))
    trust_env = url.host not in _LOOPBACK  # proxies from the environment, but never for loopback
    with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=trust_env) as client:
        for _ in range(_MAX_REDIRECTS + 1):
            with client.stream("GET", url) as r:
                if r.is_redirect:
                    nxt = url.join(r.headers.get("location", ""))
                    _check_url(nxt, came_from=url)
                    url = nxt
                    continue
                if r.status_code != 200:
                    raise FetchUnavailable(f"{url}: HTTP {r.status_code}")
                declared = int(r.headers.get("content-length") or 0)
                if declared > artifact.max_bytes:
                    raise FetchError(f"{url}: {declared} bytes, over the {artifact.max_bytes} cap")
                mib = f" ({declared / _MIB:.0f} MiB)" if declared else ""
                say(f"downloading {artifact.filename}{mib} from {url} (pinned sha256 checked)")
                for chunk in r.iter_bytes(_MIB):
                    size += len(chunk)
                    if size > artifact.max_bytes:
                        raise FetchError(f"{url}: over the {artifact.max_bytes}-byte cap")
                    digest.update(chunk)
                    out.write(chunk)
                return digest.hexdigest()
    raise FetchError(f"{url}: more than {_MAX_REDIRECTS} redirects")


def fetch(
    artifact: Artifact,
    environ: Mapping[str, str] | None = None,
    *,
    base_url: str | None = None,
    say: Callable[[str], None] | None = None,
    timeout_s: float = 30.0,
) -> Path:
    """The verified archive in ``cache_dir()/downloads``: a cached copy whose sha256 matches as
    is (no network), else downloaded from ``base_url`` (else ``$QSCALE_FETCH_BASE_URL``, else its
    pinned URL). Raises :class:`FetchUnavailable` (go on without it) or :class:`FetchError`
    (stop: :class:`ChecksumMismatch` for a wrong file, which is deleted)."""
    env = _env(environ)
    downloads = cache_dir(env) / "downloads"
    path = downloads / artifact.filename
    if path.is_file():
        if _sha256(path) == artifact.sha256:
            return path
        path.unlink()  # a stale or damaged copy: download it again
    if env.get(NO_FETCH_ENV) == "1":
        raise FetchUnavailable(f"downloads are off ({NO_FETCH_ENV}=1)")
    url = _source(artifact, env, base_url)
    downloads.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{artifact.filename}.", suffix=".part", dir=downloads)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            got = _stream_to(url, out, artifact, timeout_s, say or (lambda _m: None))
        if got != artifact.sha256:
            raise ChecksumMismatch(f"{artifact.filename} from {url}", artifact.sha256, got)
        os.replace(tmp, path)
    except httpx.HTTPError as e:
        raise FetchUnavailable(f"{url}: {type(e).__name__}: {e}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _unpack(archive: Path, dest: Path, artifact: Artifact) -> None:
    """Unpack a verified ``archive`` into ``dest`` whole or not at all (into a temporary
    directory beside it, then renamed), marked with the archive's sha256 in ``dest/.sha256``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{dest.name}.", dir=dest.parent))
    try:
        with tarfile.open(archive) as tar:
            chosen = None
            if artifact.members:
                chosen = [
                    m.replace(name=Path(m.name).name)
                    for m in tar.getmembers()
                    if m.isfile() and Path(m.name).name in artifact.members
                ]
                missing = set(artifact.members) - {m.name for m in chosen}
                if missing:
                    raise FetchError(f"{archive.name} lacks {', '.join(sorted(missing))}")
            tar.extractall(tmp, members=chosen, filter="data")
        (tmp / ".sha256").write_text(artifact.sha256 + "\n")
        tmp.chmod(0o755)
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
    except tarfile.TarError as e:
        raise FetchError(f"{archive}: cannot be unpacked: {e}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _marked(dest: Path, artifact: Artifact) -> bool:
    try:
        return (dest / ".sha256").read_text().strip() == artifact.sha256
    except OSError:
        return False


def _kwokctl_local(dest: Path) -> None:
    """``kwok-config/kwokctl-local.yaml`` as ``shared/k8s/install.sh`` writes it (absolute paths,
    metrics-server at its fastest resolution)."""
    (dest / "kwok-config" / "kwokctl-local.yaml").write_text(
        "apiVersion: config.kwok.x-k8s.io/v1alpha1\n"
        "kind: KwokctlConfiguration\n"
        "options:\n"
        f'  metricsServerManifests: ["{dest}/kwok-config/metrics-server"]\n'
        "componentsPatches:\n"
        "- name: metrics-server   # 10 s is its minimum resolution; the request timeout must stay"
        " under 0.9x it\n"
        "  extraArgs:\n"
        "  - {key: metric-resolution, value: 10s}\n"
        "  - {key: kubelet-request-timeout, value: 5s}\n"
    )


def cached_k8s_bin(environ: Mapping[str, str] | None = None) -> Path | None:
    """``k8s_home()/bin`` when the pinned archive is unpacked there already (no network)."""
    dest = k8s_home(environ)
    return dest / "bin" if _marked(dest, K8S_LOCAL) and (dest / "bin").is_dir() else None


def fetch_k8s_bin(
    environ: Mapping[str, str] | None = None,
    *,
    base_url: str | None = None,
    say: Callable[[str], None] | None = None,
) -> Path:
    """The control plane's bin directory: cached, or downloaded (see :func:`fetch`), verified
    and unpacked into ``k8s_home()``."""
    cached = cached_k8s_bin(environ)
    if cached is not None:
        return cached
    archive = fetch(K8S_LOCAL, environ, base_url=base_url, say=say)
    dest = k8s_home(environ)
    if say:
        say(f"unpacking {archive.name} into {dest}")
    _unpack(archive, dest, K8S_LOCAL)
    _kwokctl_local(dest)
    return dest / "bin"


def _prometheus_dir(environ: Mapping[str, str] | None) -> Path:
    return cache_dir(environ) / "prometheus"


def cached_prometheus(environ: Mapping[str, str] | None = None) -> Path | None:
    """The pinned Prometheus binary when it is unpacked in the cache already (no network)."""
    d = _prometheus_dir(environ)
    return d / "prometheus" if _marked(d, PROMETHEUS) and (d / "prometheus").is_file() else None


def fetch_prometheus(
    environ: Mapping[str, str] | None = None,
    *,
    base_url: str | None = None,
    say: Callable[[str], None] | None = None,
) -> Path:
    """The pinned Prometheus binary: cached, or downloaded (see :func:`fetch`), verified and
    unpacked (``prometheus`` and ``promtool``) into ``cache_dir()/prometheus``."""
    cached = cached_prometheus(environ)
    if cached is not None:
        return cached
    archive = fetch(PROMETHEUS, environ, base_url=base_url, say=say)
    d = _prometheus_dir(environ)
    _unpack(archive, d, PROMETHEUS)
    return d / "prometheus"
