"""A local Kubernetes control plane for tests, benchmarks and ``make demo``.

kwokctl's binary runtime starts real etcd, kube-apiserver, kube-controller-manager (with the
HorizontalPodAutoscaler controller), kube-scheduler and, optionally, metrics-server on
loopback; kwok plays the fake nodes' kubelets. No containers. Everything above the kubelet is
real: OpenAPI schema and CEL validation, RBAC, the scale subresource, watches, TokenRequest.

Binaries are found, in order, in ``$QSCALE_K8S_BIN``, next to ``kwokctl`` on ``PATH``, by
running ``shared/k8s/install.sh`` of a checkout next to this one (it unpacks a pinned archive
once), where that archive was unpacked before, or, only when asked (``fetch=True``: ``qscale
demo``), by downloading the same archive, pinned by sha256 (:mod:`qscale.dev.fetch`).
:class:`ClusterUnavailable` says in one line how to get them when none can be had.

**Loopback only.** Every component listens on 127.0.0.1 (kwokctl's default is every interface),
fake nodes have that address and pods 127.64.x.y (kwok's defaults, 192.0.2.x, are not this
machine's and metrics-server would dial them); metrics-server reaches the nodes' kwok on
127.0.0.1, and nothing else ever connects to a node, pod or Service IP.

The kwok stages and metrics configs the cluster needs ship in ``qscale/data/kwok``:
``pod-delayed-ready.yaml`` makes a pod turn Ready only after its annotation
``pod-ready.stage.kwok.x-k8s.io/delay`` (container start-up, played by the control plane) -
``Pending`` with no ``Ready`` condition until then, or, with the annotation
``pod-running.stage.kwok.x-k8s.io/delay``, Running with ``Ready`` ``False`` from that delay on,
as a kubelet starts a pod (kwok restarts a delay when the pod changes meanwhile);
``metrics-resource.yaml`` and ``usage-from-annotation.yaml`` serve each pod's CPU from its
``kwok.x-k8s.io/usage-cpu`` annotation to metrics-server, so the real HPA acts on it.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import TextIO

from qscale.dev import fetch as _fetch

__all__ = [
    "BIN_ENV",
    "READY_DELAY_ANNOTATION",
    "USAGE_CPU_ANNOTATION",
    "ClusterOptions",
    "ClusterUnavailable",
    "LocalCluster",
    "find_k8s_bin",
    "start_cluster",
]

LOOPBACK = "127.0.0.1"
"""Where every component of the cluster listens, and the fake nodes' address: kwok serves all
nodes on one port (a path per node, which metrics-server reads from the node's annotation), so
they can share it."""

BIN_ENV = "QSCALE_K8S_BIN"
"""Directory holding kwokctl, kwok, etcd, kube-apiserver, ... (overrides PATH and install.sh)."""
READY_DELAY_ANNOTATION = "pod-ready.stage.kwok.x-k8s.io/delay"
"""Pod annotation (e.g. ``"30s"``): the pod turns Ready that long after it is scheduled."""
USAGE_CPU_ANNOTATION = "kwok.x-k8s.io/usage-cpu"
"""Pod annotation (e.g. ``"250m"``): the CPU use metrics-server reports for the pod."""

_BINARIES = (
    "kwokctl",
    "kwok",
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
)
_HOW_TO_GET = (
    f"set {BIN_ENV} to a directory with kwokctl, kwok, etcd, kube-apiserver, "
    "kube-controller-manager, kube-scheduler and kubectl, put them on PATH, run "
    "shared/k8s/install.sh, or let `qscale demo` download them (online, without --no-fetch)"
)


class ClusterUnavailable(RuntimeError):
    """No local control plane can be had here; the message says how to get one."""


def kwok_config_dir() -> Path:
    """The kwok stages and metrics configs shipped in the package."""
    return Path(str(files("qscale") / "data" / "kwok"))


def _has_all(d: Path) -> bool:
    return all((d / b).is_file() and os.access(d / b, os.X_OK) for b in _BINARIES)


def _install_scripts() -> Iterator[Path]:
    """``shared/k8s/install.sh`` of a checkout next to this source tree or the CWD."""
    seen: set[Path] = set()
    roots = [*Path(__file__).resolve().parents]
    with contextlib.suppress(OSError):
        cwd = Path.cwd().resolve()
        roots += [cwd, *cwd.parents]
    for root in roots:
        if root in seen:
            continue
        seen.add(root)
        script = root / "shared" / "k8s" / "install.sh"
        if script.is_file():
            yield script


def find_k8s_bin(
    environ: Mapping[str, str] | None = None,
    *,
    fetch: bool = False,
    say: Callable[[str], None] | None = None,
) -> Path:
    """The directory of the control plane's binaries (see the module docstring for the order).

    With ``fetch``, a download that cannot be had is :class:`ClusterUnavailable`, but one that
    fails its check raises :class:`qscale.dev.fetch.FetchError`: that must stop the caller.
    """
    env = os.environ if environ is None else environ
    explicit = env.get(BIN_ENV)
    if explicit:
        d = Path(explicit).expanduser()
        if not _has_all(d):
            missing = [b for b in _BINARIES if not (d / b).is_file()]
            raise ClusterUnavailable(f"{BIN_ENV}={d} lacks {', '.join(missing)}")
        return d.resolve()
    on_path = shutil.which("kwokctl", path=env.get("PATH"))
    if on_path and _has_all(Path(on_path).resolve().parent):
        return Path(on_path).resolve().parent
    for script in _install_scripts():
        try:
            out = subprocess.run(
                ["bash", str(script)], capture_output=True, text=True, timeout=300, check=True
            )
        except (OSError, subprocess.SubprocessError) as e:
            raise ClusterUnavailable(f"{script} failed: {e}") from None
        lines = out.stdout.strip().splitlines()
        d = Path(lines[-1]) if lines else Path()
        if _has_all(d):
            return d.resolve()
        raise ClusterUnavailable(f"{script} printed {d}, which lacks the binaries")
    cached = _fetch.cached_k8s_bin(env)
    if cached is not None and _has_all(cached):
        return cached.resolve()
    if fetch:
        try:
            d = _fetch.fetch_k8s_bin(env, say=say)
        except _fetch.FetchUnavailable as e:
            raise ClusterUnavailable(f"could not download the pinned control plane: {e}") from None
        if _has_all(d):
            return d.resolve()
        raise ClusterUnavailable(f"the downloaded control plane in {d} lacks the binaries")
    raise ClusterUnavailable(f"no local Kubernetes control plane binaries: {_HOW_TO_GET}")


@dataclass(frozen=True)
class ClusterOptions:
    """What a local cluster runs with."""

    metrics_server: bool = False
    """Run metrics-server (10 s resolution, its minimum) serving pod CPU from annotations."""
    delayed_ready: bool = True
    """Pods turn Ready only after their ``pod-ready.stage.kwok.x-k8s.io/delay`` annotation."""
    hpa_sync_period_s: float | None = None
    """``--horizontal-pod-autoscaler-sync-period`` (the controller's default is 15 s)."""
    controller_manager_args: Mapping[str, str] = field(default_factory=dict)
    """Extra kube-controller-manager flags, e.g. ``{"v": "4"}``."""
    nodes: int = 2
    """Fake nodes (each takes up to ``pods_per_node`` pods)."""
    pods_per_node: int = 110
    """Pod capacity of each fake node."""
    disable_qps_limits: bool = False
    """Lift the components' client-side QPS limits (for runs with thousands of objects)."""
    wait_s: float = 120.0
    """How long to wait for the control plane to come up."""


def _free_name() -> str:
    return "qs" + uuid.uuid4().hex[:8]


@dataclass
class LocalCluster:
    """A running kwokctl cluster; use as a context manager or call :meth:`delete`."""

    name: str
    workdir: Path
    bin_dir: Path
    options: ClusterOptions
    _owns_workdir: bool = True

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    @property
    def env(self) -> dict[str, str]:
        """Environment for kwokctl and kubectl calls (every call needs the same KWOK_WORKDIR)."""
        env = dict(os.environ)
        env["KWOK_WORKDIR"] = str(self.workdir)
        env["PATH"] = f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}"
        env["KUBECONFIG"] = str(self.kubeconfig)
        return env

    @property
    def logs_dir(self) -> Path:
        return self.workdir / "clusters" / self.name / "logs"

    def server(self) -> str:
        """The API server's URL (https on 127.0.0.1)."""
        cfg = self.kubectl("config", "view", "--minify", "-o", "json").stdout
        return json.loads(cfg)["clusters"][0]["cluster"]["server"]

    def kwokctl(self, *args: str, timeout: float = 180.0) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(self.bin_dir / "kwokctl"), "--name", self.name, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        )

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = 60.0,
        token: str | None = None,
    ) -> subprocess.CompletedProcess:
        """``kubectl --kubeconfig <cluster> ...`` (as admin, or with a bearer ``token``)."""
        cmd = [str(self.bin_dir / "kubectl"), "--kubeconfig", str(self.kubeconfig)]
        if token is not None:
            cmd += ["--token", token]
        proc = subprocess.run(
            [*cmd, *args],
            env=self.env,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise subprocess.CalledProcessError(
                proc.returncode, proc.args, output=proc.stdout, stderr=proc.stderr
            )
        return proc

    def apply(self, manifest: str, *args: str, **kw) -> subprocess.CompletedProcess:
        return self.kubectl("apply", "-f", "-", *args, input=manifest, **kw)

    def create_token(self, namespace: str, service_account: str, duration_s: int = 3600) -> str:
        """A ServiceAccount token from the real TokenRequest API."""
        return self.kubectl(
            "create", "token", service_account, "-n", namespace, f"--duration={duration_s}s"
        ).stdout.strip()

    def scale_nodes(self, count: int) -> None:
        """Have ``count`` fake nodes, all at :data:`LOOPBACK`, their pods at 127.64.x.y."""
        self.kwokctl(
            "scale",
            "node",
            "--replicas",
            str(count),
            "--param",
            f'.nodeIPs=["{LOOPBACK}"]',
            "--param",
            '.podCIDRs=["127.64.0.0/16"]',
            "--param",
            f'.allocatable.pods="{self.options.pods_per_node}"',
            "--param",
            '.allocatable.cpu="64"',
            "--param",
            '.allocatable.memory="256Gi"',
        )
        # kwok hands the nodes 127.0.0.1, .2, ... from that pool; it serves them all on one
        # port of 127.0.0.1, so each node's address is set to it (kwok keeps a node's address)
        nodes = json.loads(self.kubectl("get", "nodes", "-o", "json").stdout)["items"]
        for node in nodes:
            addresses = node.get("status", {}).get("addresses", [])
            if [a["address"] for a in addresses if a["type"] == "InternalIP"] != [LOOPBACK]:
                keep = [a for a in addresses if a["type"] != "InternalIP"]
                body = {
                    "status": {"addresses": [{"type": "InternalIP", "address": LOOPBACK}, *keep]}
                }
                self.kubectl(
                    "patch",
                    "node",
                    node["metadata"]["name"],
                    "--subresource=status",
                    "--type=merge",
                    "-p",
                    json.dumps(body),
                )
        self.kubectl("wait", "--for=condition=Ready", "node", "--all", "--timeout=60s")

    def metrics_available(self, wait_s: float = 20.0) -> bool:
        """Whether the metrics API (metrics-server) is registered and Available."""
        deadline = time.monotonic() + wait_s
        while True:
            out = self.kubectl(
                "get",
                "apiservice",
                "v1beta1.metrics.k8s.io",
                "-o",
                'jsonpath={.status.conditions[?(@.type=="Available")].status}',
                check=False,
            )
            if out.returncode == 0 and out.stdout.strip() == "True":
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(1.0)

    def restart(self) -> None:
        """Stop and start every component (etcd keeps the state): an API server restart."""
        with _ports_lock():
            self.kwokctl("stop", "cluster")
            self.kwokctl("start", "cluster", "--wait", f"{int(self.options.wait_s)}s")
            self._wait_api()

    def _components(self) -> dict[str, tuple[int, list[str], dict[str, str], str]]:
        """``name -> (pid, command line, environment, cwd)`` of every running component."""
        out = {}
        for pid_file in (self.workdir / "clusters" / self.name / "pids").glob("*.pid"):
            with contextlib.suppress(OSError, ValueError):
                pid = int(pid_file.read_text().strip())
                proc = Path(f"/proc/{pid}")
                cmd = [a for a in (proc / "cmdline").read_bytes().decode().split("\0") if a]
                env = dict(
                    kv.split("=", 1)
                    for kv in (proc / "environ").read_bytes().decode().split("\0")
                    if "=" in kv
                )
                out[pid_file.stem] = (pid, cmd, env, os.readlink(proc / "cwd"))
        return out

    def _launch(self, name: str, cmd: list[str], env: dict[str, str], cwd: str) -> None:
        log = (self.logs_dir / f"{name}.log").open("ab")
        new = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=env,
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        (self.workdir / "clusters" / self.name / "pids" / f"{name}.pid").write_text(str(new.pid))

    def restart_component(self, component: str = "kube-apiserver", grace_s: float = 3.0) -> None:
        """Restart one component (SIGTERM, SIGKILL after ``grace_s``) with the same command
        line, leaving the others running: a kube-apiserver crash or upgrade. A component that
        exits meanwhile (kube-controller-manager exits when it loses its leader lease) is
        started again, as a kubelet restarts static pods. Pid files are kept up to date, so
        :meth:`delete` still stops everything. (:meth:`restart` of every component, by
        contrast, leaves kwok at 4 nodes never starting new pods again.)"""
        import signal

        before = self._components()
        pid, cmd, env, cwd = before[component]
        with _ports_lock():
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            while Path(f"/proc/{pid}").exists():
                time.sleep(0.05)
            self._launch(component, cmd, env, cwd)
            if component == "kube-apiserver":
                self._wait_api()
            time.sleep(1.0)
            alive = self._components()
            for name, (_, c, e, d) in before.items():
                if name not in alive:
                    self._launch(name, c, e, d)

    def _wait_api(self, wait_s: float = 60.0) -> None:
        deadline = time.monotonic() + wait_s
        while self.kubectl("get", "--raw", "/readyz", check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise ClusterUnavailable(f"cluster {self.name}: API server not ready")
            time.sleep(0.5)

    def listening(self) -> dict[str, list[str]]:
        """``component -> ["address:port", ...]`` of every TCP socket a running component
        listens on (from ``/proc``); all of them should be loopback addresses."""
        by_inode = listening_sockets()
        out: dict[str, list[str]] = {}
        for name, (pid, *_) in self._components().items():
            fd_dir = Path(f"/proc/{pid}/fd")
            with contextlib.suppress(OSError):
                for fd in fd_dir.iterdir():
                    with contextlib.suppress(OSError):
                        link = os.readlink(fd)
                        if link.startswith("socket:[") and link[8:-1] in by_inode:
                            out.setdefault(name, []).append(by_inode[link[8:-1]])
        return out

    def dialled_off_host(self) -> list[str]:
        """Addresses off this machine that a component's log says it dialled (should be none)."""
        bad = []
        for log in self.logs_dir.glob("*.log") if self.logs_dir.is_dir() else ():
            for line in log.read_text(errors="replace").splitlines():
                i = line.find("dial tcp ")
                if i < 0:
                    continue
                addr = line[i + 9 :].split()[0].strip("[],:")
                if not addr.startswith(("127.", "0.0.0.0", "::1", "localhost")):
                    bad.append(f"{log.name}: {addr}")
        return bad

    def delete(self) -> None:
        """Tear the cluster down and remove its directory (safe to call twice)."""
        with contextlib.suppress(Exception):
            self.kwokctl("delete", "cluster", timeout=120)
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.delete()


@contextlib.contextmanager
def _ports_lock() -> Iterator[None]:
    """Held while a cluster takes its ports or has one down: kwokctl picks ports that nothing
    listens on at that moment, so two clusters created at once (tests on two xdist workers),
    or one created while another restarts a component, could be handed the same port."""
    with _PORTS_HELD:  # re-entrant in this process: a start that restarts holds it once
        if _PORTS_FILE:
            yield
            return
        with (Path(tempfile.gettempdir()) / "qscale-kwokctl-ports.lock").open("a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            _PORTS_FILE.append(f)
            try:
                yield
            finally:
                _PORTS_FILE.clear()
                fcntl.flock(f, fcntl.LOCK_UN)


_PORTS_HELD = threading.RLock()
_PORTS_FILE: list[TextIO] = []


def _proc_net_address(hex_addr: str) -> str:
    """``0100007F:1F90`` (``/proc/net/tcp``) -> ``127.0.0.1:8080``; IPv6 likewise, bracketed."""
    host, port = hex_addr.split(":")
    raw = bytes.fromhex(host)
    # the kernel prints each 32-bit word in host (little-endian) order
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    ip = ipaddress.ip_address(words)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    text = f"[{ip}]" if isinstance(ip, ipaddress.IPv6Address) else str(ip)
    return f"{text}:{int(port, 16)}"


def listening_sockets(tables: Mapping[str, str] | None = None) -> dict[str, str]:
    """``socket inode -> "address:port"`` of every listening TCP socket on this machine (the
    text of ``/proc/net/tcp`` and ``tcp6``, or ``tables`` given as ``{name: text}``)."""
    if tables is None:
        tables = {}
        for name in ("tcp", "tcp6"):
            with contextlib.suppress(OSError):
                tables[name] = Path(f"/proc/net/{name}").read_text()
    out = {}
    for text in tables.values():
        for line in text.splitlines()[1:]:
            f = line.split()
            if len(f) > 9 and f[3] == "0A":  # TCP_LISTEN
                out[f[9]] = _proc_net_address(f[1])
    return out


def is_loopback(address: str) -> bool:
    """Whether ``"address:port"`` (as :func:`listening_sockets` gives it) is on loopback."""
    host = address.rsplit(":", 1)[0].strip("[]")
    return ipaddress.ip_address(host).is_loopback


def _kwokctl_config(bin_dir: Path, opts: ClusterOptions) -> str:
    """A KwokctlConfiguration: metrics-server manifests and every component's extra flags."""
    patches: list[dict] = []
    manifests = bin_dir.parent / "kwok-config" / "metrics-server"
    lines = ["apiVersion: config.kwok.x-k8s.io/v1alpha1", "kind: KwokctlConfiguration"]
    # every component listens on 127.0.0.1 (kwokctl's default is 0.0.0.0: etcd without auth
    # on every interface); the fake nodes are 127.0.0.1 too (see scale_nodes)
    lines += ["options:", f"  bindAddress: {LOOPBACK}"]
    if opts.metrics_server and manifests.is_dir():
        lines.append(f'  metricsServerManifests: ["{manifests}"]')
    if opts.metrics_server:
        # 10 s is metrics-server's minimum resolution; its kubelet timeout must stay under 0.9x.
        patches.append(
            {
                "name": "metrics-server",
                "args": {"metric-resolution": "10s", "kubelet-request-timeout": "5s"},
            }
        )
    kcm = dict(opts.controller_manager_args)
    if opts.hpa_sync_period_s is not None:
        kcm["horizontal-pod-autoscaler-sync-period"] = f"{opts.hpa_sync_period_s:g}s"
    if kcm:
        patches.append({"name": "kube-controller-manager", "args": kcm})
    if patches:
        lines.append("componentsPatches:")
        for p in patches:
            lines.append(f"- name: {p['name']}")
            lines.append("  extraArgs:")
            for k, v in p["args"].items():
                lines.append(f'  - {{key: {k}, value: "{v}"}}')
    return "\n".join(lines) + "\n"


def start_cluster(
    options: ClusterOptions | None = None,
    name: str | None = None,
    bin_dir: Path | None = None,
    workdir: Path | None = None,
) -> LocalCluster:
    """Start a cluster and its fake nodes; returns once the API serves and nodes are Ready.

    Raises :class:`ClusterUnavailable` when the binaries cannot be found or the control plane
    does not come up (the components' logs are kept in the work directory then).
    """
    opts = options or ClusterOptions()
    b = bin_dir or find_k8s_bin()
    own = workdir is None
    wd = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="qscale-k8s-"))
    cluster = LocalCluster(name=name or _free_name(), workdir=wd, bin_dir=b, options=opts)
    cluster._owns_workdir = own
    cfg_dir = kwok_config_dir()
    configs = [wd / "kwokctl-qscale.yaml"]
    configs[0].write_text(_kwokctl_config(b, opts))
    if opts.delayed_ready:
        configs.append(cfg_dir / "pod-delayed-ready.yaml")
    components: list[str] = []
    if opts.metrics_server:
        configs += [cfg_dir / "metrics-resource.yaml", cfg_dir / "usage-from-annotation.yaml"]
        components = [
            "--enable",
            "metrics-server",
            "--metrics-server-binary",
            str(b / "metrics-server"),
        ]
    version = _kube_version(b)
    cmd = [
        str(b / "kwokctl"),
        "create",
        "cluster",
        "--name",
        cluster.name,
        "--runtime",
        "binary",
        "--kubeconfig",
        str(cluster.kubeconfig),
        "--kube-apiserver-binary",
        str(b / "kube-apiserver"),
        "--kube-controller-manager-binary",
        str(b / "kube-controller-manager"),
        "--kube-scheduler-binary",
        str(b / "kube-scheduler"),
        "--kwok-controller-binary",
        str(b / "kwok"),
        "--etcd-binary",
        str(b / "etcd"),
        *components,
        "--kube-authorization",
        "--kube-admission",
        "--secure-port",
        "--wait",
        f"{int(opts.wait_s)}s",
        "--timeout",
        f"{int(opts.wait_s * 2)}s",
    ]
    if opts.disable_qps_limits:
        cmd.append("--disable-qps-limits")
    for c in configs:
        cmd += ["-c", str(c)]
    env = cluster.env
    env["KWOK_KUBE_VERSION"] = version
    try:
        with _ports_lock():  # until every component listens on the ports it was given
            proc = subprocess.run(
                cmd, env=env, capture_output=True, text=True, timeout=opts.wait_s * 2 + 30
            )
            if proc.returncode != 0:
                tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
                raise ClusterUnavailable(f"kwokctl create cluster failed: {tail}")
            cluster._wait_api()
            if opts.metrics_server and not cluster.metrics_available():
                # metrics-server exits when it starts before kube-apiserver listens (1 start
                # in 5) and kwokctl does not restart it: restart the components once.
                cluster.restart()
                if not cluster.metrics_available(wait_s=60.0):
                    raise ClusterUnavailable("metrics-server did not become available")
        cluster.scale_nodes(opts.nodes)
    except BaseException:
        if own:
            logs = cluster.logs_dir
            if logs.is_dir():
                keep = Path(tempfile.mkdtemp(prefix="qscale-k8s-logs-"))
                shutil.copytree(logs, keep / "logs", dirs_exist_ok=True)
        cluster.delete()
        raise
    return cluster


def _kube_version(bin_dir: Path) -> str:
    out = subprocess.run(
        [str(bin_dir / "kube-apiserver"), "--version"], capture_output=True, text=True, check=True
    ).stdout
    return out.split()[-1].strip()


def namespace_manifest(name: str, labels: Mapping[str, str] | None = None) -> str:
    lab = "".join(f"\n    {k}: {json.dumps(v)}" for k, v in (labels or {}).items())
    return f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  labels:{lab or ' {}'}\n"


def deployment_manifest(
    name: str,
    namespace: str,
    replicas: int = 1,
    cpu_request: str = "100m",
    cpu_limit: str | None = None,
    ready_delay_s: float | None = None,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
) -> str:
    """A Deployment of fake pods (kwok runs them), optionally with a start-up delay."""
    pod_ann = dict(annotations or {})
    if ready_delay_s is not None:
        pod_ann[READY_DELAY_ANNOTATION] = f"{ready_delay_s:g}s"
    lab = {"app": name, **(labels or {})}
    doc = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": lab},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": lab, "annotations": pod_ann},
                "spec": {
                    "containers": [
                        {
                            "name": "app",
                            "image": "example.invalid/app:1",
                            "resources": {"requests": {"cpu": cpu_request}},
                        }
                    ]
                },
            },
        },
    }
    if cpu_limit:
        doc["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"] = {"cpu": cpu_limit}
    return json.dumps(doc)


def wait_for(
    predicate, timeout_s: float, interval_s: float = 0.5, what: str = "condition"
) -> object:
    """Poll ``predicate()`` until it returns something truthy; raise ``TimeoutError`` after."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(interval_s)
