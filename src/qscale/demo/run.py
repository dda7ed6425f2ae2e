"""``qscale demo``: qscale against the real HorizontalPodAutoscaler on a local control plane.

One process sets up everything and tears everything down (also on Ctrl-C or SIGTERM):

1. a local control plane (:mod:`qscale.dev.cluster`: real kube-apiserver, kube-controller-manager
   with its HPA controller, scheduler, metrics-server; kwok plays the kubelets) with the
   delayed-ready pod stage, so a new pod turns Ready only after its start-up delay;
2. the CRD and the operator's least-privilege RBAC of ``deploy/`` (:mod:`qscale.dev.operator`);
3. two identical Deployments, ``web-qscale`` and ``web-hpa``: same pod template, same
   ``pod-ready.stage.kwok.x-k8s.io/delay``, same CPU request, same initial replicas;
4. the workload emulator (:mod:`qscale.emulator`, in this process) playing the same trace
   stretch to both: it serves each Deployment's arrivals with its Ready pods through the
   simulator's service model, exports the app/cAdvisor/kube-state-metrics series, and writes
   each pod's CPU use to ``kwok.x-k8s.io/usage-cpu`` so that metrics-server (and so the HPA)
   sees the same load;
5. a real Prometheus on loopback scraping the emulator and the operator;
6. ``qscale operator`` (a subprocess, the package's default model, a ServiceAccount token);
7. once every pod's CPU is in the metrics API and the series are in Prometheus (warm-up, the
   load held at the stretch's first value): an ``autoscaling/v2`` HorizontalPodAutoscaler on
   ``web-hpa`` and an Enforce-mode AutoscalePolicy on ``web-qscale``, created together, and the
   trace starts.

Every ``sample_s`` it reads both sides from the API (replicas, ready, desired, reason), the
operator's decision counter (the action and reason of its latest decision), and each side's
p95 latency from Prometheus (``histogram_quantile(0.95, ...[15s])`` over the emulator's latency
histogram: bucket-resolution truth of the service model, 15 s window). A line is printed every
``print_s``. The summary integrates these samples: cost in pod-minutes (every pod, starting
ones included: ``status.replicas``), SLO-violation minutes (p95 over the SLO), scale actions
(``metadata.generation`` changes: every write of the replica count), all on the wall clock.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TextIO

import httpx

from qscale.actions import DECISION_INTERVAL_S
from qscale.demo.stretch import Stretch

__all__ = ["DemoConfig", "DemoError", "DemoResult", "run_demo"]

NS = "qscale-demo"
OP_NS = "qscale-system"
QSCALE, HPA = "web-qscale", "web-hpa"
SIDES = (QSCALE, HPA)
P95_WINDOW = "15s"
P95_QUERY = (
    "histogram_quantile(0.95, sum by (deployment, le) (label_replace(rate("
    f'http_request_duration_seconds_bucket{{namespace="{NS}"}}[{P95_WINDOW}]), '
    '"deployment", "$1", "pod", "(.+)-[a-z0-9]+-[a-z0-9]{5}")))'
)


class DemoError(RuntimeError):
    """The demo could not go on; the message is one line for the user."""


@dataclass(frozen=True)
class DemoConfig:
    """What the demo plays and how both sides are set up (every field a ``qscale demo`` flag)."""

    out: Path = Path("out/demo")
    """Where the summary (JSON), the timeline (CSV) and the PNG go."""
    trace: Path | None = None
    """``t,value`` trace; default: the shipped NASA excerpt (Jul 12-14 1995)."""
    start_h: float = 33.0 + 40 / 60
    """Start of the stretch, hours after the trace's t=0 (Jul 13 1995 09:40 EDT, nine minutes
    before the STS-70 launch)."""
    hours: float = 0.2
    """Length of the stretch in trace hours (09:40-09:52: the load halves and falls to a
    quarter for four minutes, then comes back at the launch minute, 09:49, the excerpt's peak)."""
    play_s: float = 720.0
    """Real seconds the stretch is played in: by default its own length (the trace's pace, the
    world the model was trained in); shorter compresses the trace, never the controllers."""
    scale: float = 60.0
    """Requests/s per trace request/s (the trace peaks at 6.75 req/s)."""
    capacity_rps: float = 50.0
    """Requests/s one Ready pod serves at 100 % of its CPU request."""
    service_time_s: float = 0.05
    """Mean service time of one request (unloaded p95: 3x this)."""
    slo_ms: float = 300.0
    """p95 latency objective of both sides (2x the unloaded p95)."""
    slo_priority: float = 0.5
    """qscale's ``spec.slo.priority``, the trade-off between SLO and cost its model plays: set as
    near the HPA's as the model goes: on the evaluation's validation windows 0.5 is the model's
    cheapest point (0.25 plays the same one), where the default HPA still has 2.3x its SLO
    minutes (BENCHMARKS, "a trade-off each service sets")."""
    startup_delay_s: float = 20.0
    """Pod start-up delay, played by the control plane, the same on both sides."""
    initial_replicas: int | None = None
    """Pods each side starts with; default: what the HPA holds at the stretch's first load
    (the warm-up's)."""
    min_replicas: int = 1
    max_replicas: int = 24
    hpa_target: int = 70
    """The HPA's CPU target, % of the request (the evaluation's default HPA uses 70 %)."""
    hpa_stabilization_s: int = 120
    """The HPA's scale-down stabilization window; 120 s = the shield's of the default model
    (Kubernetes' default, 300 s, is the HPA without behavior)."""
    sample_s: float = 2.0
    print_s: float = 10.0
    warmup_timeout_s: float = 180.0
    live: bool = True


@dataclass
class DemoResult:
    summary: dict[str, Any]
    timeline: list[dict[str, Any]]
    files: dict[str, Path]
    workdir: Path
    """The temporary directory everything ran under (gone once the demo returns)."""
    timings: dict[str, float] = field(default_factory=dict)


# --- manifests -------------------------------------------------------------------------------


def policy_manifest(cfg: DemoConfig) -> str:
    return json.dumps(
        {
            "apiVersion": "qscale.io/v1alpha1",
            "kind": "AutoscalePolicy",
            "metadata": {"name": QSCALE, "namespace": NS},
            "spec": {
                "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": QSCALE},
                "minReplicas": cfg.min_replicas,
                "maxReplicas": cfg.max_replicas,
                "mode": "Enforce",
                "interval": "15s",
                "slo": {"latencyP95": f"{cfg.slo_ms:g}ms", "priority": cfg.slo_priority},
                # what one emulated pod serves: the user's load test of one pod
                "capacity": {"requestsPerSecondPerPod": cfg.capacity_rps},
            },
        }
    )


def hpa_manifest(cfg: DemoConfig) -> str:
    return json.dumps(
        {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": HPA, "namespace": NS},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": HPA},
                "minReplicas": cfg.min_replicas,
                "maxReplicas": cfg.max_replicas,
                "metrics": [
                    {
                        "type": "Resource",
                        "resource": {
                            "name": "cpu",
                            "target": {"type": "Utilization", "averageUtilization": cfg.hpa_target},
                        },
                    }
                ],
                "behavior": {"scaleDown": {"stabilizationWindowSeconds": cfg.hpa_stabilization_s}},
            },
        }
    )


def hpa_holds(cfg: DemoConfig, rps: float) -> int:
    """The replicas an HPA at ``cfg.hpa_target`` settles on for a steady ``rps``."""
    need = math.ceil(rps / (cfg.capacity_rps * cfg.hpa_target / 100.0) - 1e-9)
    return min(max(need, cfg.min_replicas, 1), cfg.max_replicas)


# --- the run ---------------------------------------------------------------------------------


_INTERRUPTED = threading.Event()
"""Set by the signal handlers of :func:`_signals_as_interrupt`."""


@contextlib.contextmanager
def _signals_as_interrupt() -> Iterator[None]:
    """SIGTERM (and SIGHUP) unwind like Ctrl-C, so that every ``finally`` cleans up. Each of
    them, Ctrl-C included, is also remembered: a library that swallows the KeyboardInterrupt
    inside a call (an HTTP client's retry loop) must not turn it into a minute of waiting."""

    def raise_interrupt(signum, _frame):
        _INTERRUPTED.set()
        raise KeyboardInterrupt(f"signal {signum}")

    _INTERRUPTED.clear()
    old = {}
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        with contextlib.suppress(ValueError, OSError):  # not the main thread
            old[s] = signal.signal(s, raise_interrupt)
    try:
        yield
    finally:
        for s, h in old.items():
            with contextlib.suppress(ValueError, OSError):
                signal.signal(s, h)


@contextlib.contextmanager
def _uninterrupted_cleanup() -> Iterator[None]:
    """While cleaning up, a second Ctrl-C must not leave processes behind: ignore it."""
    old = None
    with contextlib.suppress(ValueError, OSError):
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        if old is not None:
            with contextlib.suppress(ValueError, OSError):
                signal.signal(signal.SIGINT, old)


class _Clients:
    """The admin's API clients (the demo's own reads; the operator has its own token)."""

    def __init__(self, kubeconfig: Path) -> None:
        from kubernetes import client, config

        c = client.Configuration()
        config.load_kube_config(config_file=str(kubeconfig), client_configuration=c)
        self.api = client.ApiClient(c)
        self.apps = client.AppsV1Api(self.api)
        self.hpa = client.AutoscalingV2Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.api.close()


def _decisions(text: str) -> dict[tuple[str, str], float]:
    """``qscale_decisions_total{action, reason}`` from the operator's /metrics."""
    out: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        if not line.startswith("qscale_decisions_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line[: line.rindex("}")]))
        key = (labels.get("action", ""), labels.get("reason", ""))
        out[key] = out.get(key, 0.0) + float(line.split()[-1])  # summed over models
    return out


def _hpa_reason(conditions: list[Any] | None) -> str:
    by = {c.type: c for c in conditions or []}
    active = by.get("ScalingActive")
    if active is not None and active.status != "True":
        return active.reason or ""
    limited = by.get("ScalingLimited")
    if limited is not None and limited.status == "True":
        return limited.reason or ""
    able = by.get("AbleToScale")
    return (able.reason or "") if able is not None else ""


class _Sampler:
    """One row per ``sample_s``: both sides from the API, Prometheus and the operator."""

    def __init__(self, clients: _Clients, prom_url: str, operator_metrics: str) -> None:
        self.k = clients
        self.prom_url = prom_url
        self.op_url = operator_metrics
        self.http = httpx.Client(timeout=3.0)
        self.last_counts: dict[tuple[str, str], float] | None = None
        self.q_action, self.q_reason = "-", "-"

    def close(self) -> None:
        self.http.close()

    def p95(self) -> dict[str, float]:
        try:
            r = self.http.get(f"{self.prom_url}/api/v1/query", params={"query": P95_QUERY})
            res = r.json()["data"]["result"]
        except (httpx.HTTPError, KeyError, ValueError):
            return {}
        out = {}
        for s in res:
            v = float(s["value"][1])
            out[s["metric"].get("deployment", "")] = v
        return out

    def decision(self) -> tuple[str, str]:
        with contextlib.suppress(httpx.HTTPError):
            counts = _decisions(self.http.get(self.op_url).text)
            if self.last_counts is not None:
                new = [k for k, v in counts.items() if v > self.last_counts.get(k, 0.0)]
                if new:
                    self.q_action, self.q_reason = new[-1]
            self.last_counts = counts
        return self.q_action, self.q_reason

    def row(self, t: float) -> dict[str, Any]:
        deps = {
            d.metadata.name: d
            for d in self.k.apps.list_namespaced_deployment(NS, _request_timeout=5).items
        }
        row: dict[str, Any] = {"t": t}
        for side in SIDES:
            d = deps.get(side)
            row[f"{side}.replicas"] = int(d.spec.replicas or 0) if d else 0
            row[f"{side}.pods"] = int((d.status.replicas or 0) if d and d.status else 0)
            row[f"{side}.ready"] = int((d.status.ready_replicas or 0) if d and d.status else 0)
            row[f"{side}.generation"] = int(d.metadata.generation or 0) if d else 0
        try:
            h = self.k.hpa.read_namespaced_horizontal_pod_autoscaler(HPA, NS, _request_timeout=5)
            st = h.status
            row[f"{HPA}.desired"] = int(st.desired_replicas or 0) if st else 0
            cpu = None
            for m in (st.current_metrics or []) if st else []:
                if m.resource is not None and m.resource.current is not None:
                    cpu = m.resource.current.average_utilization
            row[f"{HPA}.cpu"] = cpu
            row[f"{HPA}.reason"] = _hpa_reason(st.conditions if st else None)
        except Exception:
            row[f"{HPA}.desired"], row[f"{HPA}.cpu"], row[f"{HPA}.reason"] = None, None, "-"
        try:
            asp = self.k.custom.get_namespaced_custom_object(
                "qscale.io", "v1alpha1", NS, "autoscalepolicies", QSCALE, _request_timeout=5
            )
            st = asp.get("status") or {}
            row[f"{QSCALE}.desired"] = st.get("desiredReplicas")
            row[f"{QSCALE}.status_reason"] = st.get("reason", "-")
            row[f"{QSCALE}.fallback"] = bool((st.get("fallback") or {}).get("active"))
        except Exception:
            row[f"{QSCALE}.desired"], row[f"{QSCALE}.status_reason"] = None, "-"
            row[f"{QSCALE}.fallback"] = False
        row[f"{QSCALE}.action"], row[f"{QSCALE}.reason"] = self.decision()
        p = self.p95()
        for side in SIDES:
            v = p.get(side)
            row[f"{side}.p95_s"] = v if v is not None and math.isfinite(v) else None
        return row


def _ms(v: float | None) -> str:
    if v is None:
        return "     -"
    return "  >10s" if v >= 9.99 else f"{v * 1000:4.0f}ms"


def live_header() -> str:
    return (
        " time trace  load | qscale pods ready want action     reason           p95  "
        "| HPA pods ready want  cpu reason                p95"
    )


def live_line(row: dict[str, Any], stretch: Stretch, slo_s: float) -> str:
    def mark(v: float | None) -> str:
        return "!" if v is not None and v > slo_s else " "

    t = row["t"]
    q, h = QSCALE, HPA
    cpu = row.get(f"{h}.cpu")
    return (
        f"{int(t // 60)}:{int(t % 60):02d}  {stretch.clock(t)} {row['load_rps']:5.0f} | "
        f"{row[f'{q}.pods']:11d} {row[f'{q}.ready']:5d} {row.get(f'{q}.desired') or 0:4d} "
        f"{row[f'{q}.action']:<10.10} {row[f'{q}.reason']:<15.15} {_ms(row[f'{q}.p95_s'])}"
        f"{mark(row[f'{q}.p95_s'])}| "
        f"{row[f'{h}.pods']:8d} {row[f'{h}.ready']:5d} {row.get(f'{h}.desired') or 0:4d} "
        f"{'   -' if cpu is None else f'{cpu:3d}%'} {row[f'{h}.reason']:<20.20} "
        f"{_ms(row[f'{h}.p95_s'])}{mark(row[f'{h}.p95_s'])}"
    )


def _wait(what: str, timeout_s: float, fn: Callable[[], Any], every_s: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        if _INTERRUPTED.is_set():
            raise KeyboardInterrupt("interrupted")
        with contextlib.suppress(Exception):
            v = fn()
            if v:
                return v
        if time.monotonic() > deadline:
            raise DemoError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(every_s)


def _pod_cpu_everywhere(clients: _Clients, want: int) -> bool:
    """Every pod of both Deployments has a CPU reading in the metrics API."""
    m = clients.custom.list_namespaced_custom_object(
        "metrics.k8s.io", "v1beta1", NS, "pods", _request_timeout=5
    )
    by: dict[str, int] = {}
    for item in m.get("items") or []:
        name = item["metadata"]["name"]
        side = name.rsplit("-", 2)[0]
        if any(c.get("usage", {}).get("cpu", "0") not in ("0", "0n") for c in item["containers"]):
            by[side] = by.get(side, 0) + 1
    return all(by.get(s, 0) >= want for s in SIDES)


def _windows_whole(prom: Any, rps: float) -> bool:
    """The operator's own rate and CPU queries read the warm-up's load on both sides: their
    ``[1m]`` windows hold only traffic served by Ready pods. Before that the play would start
    on metrics still climbing from the pods' start (a third of the load 20 s in), a service
    the model never met in training, whose services have run at their first load a while."""
    from qscale.features import PROMQL, fill_template

    rate = fill_template(PROMQL["request_rate"], [NS], list(SIDES))
    cpu = fill_template(PROMQL["cpu_utilization"], [NS], list(SIDES))
    got = {s["metric"].get("deployment"): float(s["value"][1]) for s in prom.query(rate)}
    used = {s["metric"].get("deployment"): float(s["value"][1]) for s in prom.query(cpu)}
    steady = [got.get(side, 0.0) >= 0.97 * rps and used.get(side, 0.0) > 0.0 for side in SIDES]
    return all(steady)


def run_demo(cfg: DemoConfig, stream: TextIO = sys.stdout) -> DemoResult:
    """Run the whole demo; returns once everything it started is gone (also when it fails)."""
    from qscale.dev import cluster as devcluster
    from qscale.dev import operator as devoperator
    from qscale.dev.prom import find_prometheus
    from qscale.operator.spec import SpecError, parse_spec
    from qscale.simulator.splits import packaged_trace

    def say(msg: str) -> None:
        print(msg, file=stream, flush=True)

    t_start = time.monotonic()
    try:  # what the operator would refuse with a condition, refused before anything starts
        parse_spec(json.loads(policy_manifest(cfg))["spec"])
    except SpecError as e:
        raise DemoError(f"the demo's AutoscalePolicy: {e}") from None
    stretch = Stretch.load(
        cfg.trace or packaged_trace(), cfg.start_h, cfg.hours, cfg.play_s, cfg.scale
    )
    bin_dir = devcluster.find_k8s_bin()
    prom_bin = find_prometheus()
    if not (devoperator.DEPLOY / "crds").is_dir():
        raise DemoError(
            f"{devoperator.DEPLOY} not found: run the demo from a qscale checkout (make demo)"
        )
    if cfg.initial_replicas is None:
        cfg = dataclasses.replace(cfg, initial_replicas=hpa_holds(cfg, stretch.rps(0.0)))
    cfg.out.mkdir(parents=True, exist_ok=True)
    say(f"trace: {stretch.describe()}")
    say(
        f"both sides: {cfg.initial_replicas} pods to start, {cfg.min_replicas}-"
        f"{cfg.max_replicas} replicas, start-up delay {cfg.startup_delay_s:g} s (played by the "
        f"control plane), {cfg.capacity_rps:g} req/s per pod at 100 % CPU, "
        f"SLO p95 {cfg.slo_ms:g} ms (qscale's priority {cfg.slo_priority:g})"
    )
    say(
        f"  {QSCALE}: AutoscalePolicy, Enforce, the default model, decides every 15 s "
        "(shield: the model's trained limits)"
    )
    say(
        f"  {HPA}: autoscaling/v2 HorizontalPodAutoscaler, CPU {cfg.hpa_target} % of the "
        f"request, scale-down stabilization {cfg.hpa_stabilization_s} s; kube-controller-manager "
        "syncs it every 15 s on metrics-server (10 s resolution)"
    )
    root = Path(tempfile.mkdtemp(prefix="qscale-demo-"))
    say(f"work directory (removed at the end): {root}")
    stack = contextlib.ExitStack()
    stack.callback(shutil.rmtree, root, True)
    try:
        with _signals_as_interrupt():
            run = _Run(cfg, stack, root, stretch, say)
            run.start(bin_dir, prom_bin)
            rows = run.play()
    except KeyboardInterrupt:
        say("interrupted: stopping everything the demo started ...")
        raise
    finally:
        with _uninterrupted_cleanup():
            stack.close()
    from qscale.demo.report import summarize, write_outputs

    timings = dict(run.timings)
    timings["total_s"] = time.monotonic() - t_start
    summary = summarize(rows, cfg.slo_ms / 1000.0)
    summary["config"] = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}
    summary["trace"] = stretch.describe()
    summary["p95_source"] = (
        f"Prometheus histogram_quantile(0.95, ...[{P95_WINDOW}]) over the emulator's latency "
        f"histogram, sampled every {cfg.sample_s:g} s"
    )
    summary["timings_s"] = {k: round(v, 1) for k, v in timings.items()}
    if run.play_t0 is not None:
        summary["play_started_at"] = run.play_t0
        summary["twin"] = _twin(cfg, stretch, run.play_t0, summary)
    files = write_outputs(rows, summary, stretch, cfg.out)
    (cfg.out / "operator.log").write_text(run.op_log)
    files["operator_log"] = cfg.out / "operator.log"
    return DemoResult(summary, rows, files, root, timings)


def _twin(cfg: DemoConfig, stretch: Stretch, play_t0: float, summary: dict) -> dict[str, Any]:
    """The same stretch in the simulator (:mod:`qscale.demo.twin`) against the operator's
    decision log; the timeline goes to ``twin.json``, the figures into the summary."""
    from qscale.demo.twin import TWIN_DOC, compare, live_counts, read_decision_log, simulate
    from qscale.operator.spec import parse_spec, shield_config
    from qscale.policy.artifact import load_policy
    from qscale.policy.default import default_model_path

    assert cfg.initial_replicas is not None
    policy = load_policy(default_model_path())
    # the shield the operator serves the demo's policy with, by the operator's own route
    spec = parse_spec(json.loads(policy_manifest(cfg))["spec"])
    shield = shield_config(spec, policy.manifest.get("serving"))
    sim = partial(
        simulate,
        stretch,
        policy.module,
        capacity_rps=cfg.capacity_rps,
        service_time_s=cfg.service_time_s,
        slo_s=cfg.slo_ms / 1000.0,
        slo_priority=spec.slo_priority,
        startup_delay_s=cfg.startup_delay_s,
        min_replicas=cfg.min_replicas,
        max_replicas=cfg.max_replicas,
        initial_replicas=cfg.initial_replicas,
        shield=shield,
    )
    twin = sim()
    records = read_decision_log(cfg.out / "decisions.jsonl", QSCALE)
    followed = sim(follow=live_counts(twin, records, play_t0)) if records else None
    live_slo = summary["sides"]["qscale"]["slo_violation_minutes"]
    cmp = compare(twin, records, play_t0, live_slo, followed)
    cmp["what"] = TWIN_DOC
    (cfg.out / "twin.json").write_text(json.dumps(cmp, indent=1))
    return {k: v for k, v in cmp.items() if k != "timeline"}


class _Run:
    """The stack of one demo; everything started is registered on ``stack`` for cleanup."""

    def __init__(
        self,
        cfg: DemoConfig,
        stack: contextlib.ExitStack,
        root: Path,
        stretch: Stretch,
        say: Callable[[str], None],
    ) -> None:
        self.cfg, self.stack, self.root, self.stretch, self.say = cfg, stack, root, stretch, say
        self.t0 = time.monotonic()
        self.timings: dict[str, float] = {}
        self.play_t0: float | None = None
        self.op_log = ""

    def offered(self, t_em: float) -> float:
        """The emulator's load (both sides): held at the stretch's start until it plays."""
        ws_t0 = self.em.ws.t0
        if self.play_t0 is None or ws_t0 is None:
            return self.stretch.rps(0.0)
        return self.stretch.rps(ws_t0 + t_em - self.play_t0)

    def start(self, bin_dir: Path, prom_bin: Path) -> None:
        from qscale.dev import cluster as devcluster
        from qscale.dev import operator as devoperator
        from qscale.dev.prom import LocalPrometheus, free_port
        from qscale.emulator import Emulator, Load, Workload

        cfg, stack, root, say = self.cfg, self.stack, self.root, self.say
        say(
            "starting the local control plane (real kube-apiserver, kube-controller-manager, "
            "kube-scheduler, metrics-server; kwok plays the kubelets) ..."
        )
        (root / "k8s").mkdir()
        cluster = devcluster.start_cluster(
            devcluster.ClusterOptions(metrics_server=True, delayed_ready=True, nodes=2),
            bin_dir=bin_dir,
            workdir=root / "k8s",
        )
        stack.callback(cluster.delete)
        self.cluster = cluster
        self.timings["cluster_s"] = time.monotonic() - self.t0
        devoperator.install(cluster, OP_NS, [NS])
        for side in SIDES:
            cluster.apply(
                devcluster.deployment_manifest(
                    side,
                    NS,
                    replicas=cfg.initial_replicas,
                    cpu_request="100m",
                    ready_delay_s=cfg.startup_delay_s,
                )
            )
        self.clients = _Clients(cluster.kubeconfig)
        stack.callback(self.clients.close)
        load = Load(self.offered, self.stretch.describe())
        self.em = Emulator(
            cluster.kubeconfig,
            [Workload(NS, side, load, cfg.capacity_rps, cfg.service_time_s) for side in SIDES],
            step_s=1.0,
            port=free_port(),
            annotate_cpu=True,
        )
        self.em.start()
        stack.callback(self.em.stop)
        op_dir = root / "operator"
        op_dir.mkdir()
        op = devoperator.OperatorProcess(
            devoperator.token_kubeconfig(cluster, OP_NS, root / "operator.kubeconfig"),
            workdir=op_dir,
        )
        (root / "prometheus").mkdir()
        prom = LocalPrometheus(
            {
                "emulator": [f"127.0.0.1:{self.em.port}"],
                "qscale-operator": [f"127.0.0.1:{op.metrics_port}"],
            },
            scrape_interval_s=1.0,
            binary=prom_bin,
            workdir=root / "prometheus",
        )
        prom.start()
        stack.callback(prom.stop)
        self.prom = prom
        op.env = {
            "QSCALE_NAMESPACES": NS,
            "QSCALE_LEASE_NAMESPACE": OP_NS,
            "QSCALE_PROMETHEUS_URL": prom.url,
            "QSCALE_TICK_S": "1",
            "QSCALE_TORCH_THREADS": "1",
            "QSCALE_DECISION_LOG": str(op_dir / "decisions.jsonl"),
        }
        say(f"prometheus on {prom.url}; starting qscale operator (default model) ...")
        op.start(wait_ready_s=120)
        stack.callback(self._stop_operator)
        self.op = op
        say(
            f"warming up: {cfg.initial_replicas} pods per side, Ready after "
            f"{cfg.startup_delay_s:g} s; waiting for every pod's CPU in the metrics API ..."
        )
        t_w = time.monotonic()
        _wait(
            "every pod's CPU in the metrics API (metrics-server)",
            cfg.warmup_timeout_s,
            lambda: _pod_cpu_everywhere(self.clients, cfg.initial_replicas),
            2.0,
        )
        rate = f'sum by (pod) (rate(http_requests_total{{namespace="{NS}"}}[1m])) > 0'
        _wait("the request rates in Prometheus", 60, lambda: len(prom.query(rate)) >= 2)
        want = self.stretch.rps(0.0)
        _wait(
            "whole 1 m windows of the warm-up's load in Prometheus",
            cfg.warmup_timeout_s,
            lambda: _windows_whole(prom, want),
            2.0,
        )
        self.timings["warmup_s"] = time.monotonic() - t_w

    def _stop_operator(self) -> None:
        self.op_log = self.op.log_tail(20000)
        self.op.stop()
        log = self.op.workdir / "decisions.jsonl"
        if log.is_file():  # the operator's decisions, for the twin (the work dir goes)
            shutil.copyfile(log, self.cfg.out / "decisions.jsonl")

    def play(self) -> list[dict[str, Any]]:
        cfg, say = self.cfg, self.say
        # start on the operator's decision grid (decisions fall on multiples of the interval of
        # the epoch clock), so that its decisions come 15 s apart from the first, as the twin's
        grid = DECISION_INTERVAL_S
        time.sleep(grid - time.time() % grid)
        self.cluster.apply(hpa_manifest(cfg))
        self.cluster.apply(policy_manifest(cfg))
        self.play_t0 = time.time()
        t_play = time.monotonic()
        self.timings["setup_s"] = t_play - self.t0
        say(
            f"set up in {t_play - self.t0:.0f} s. HorizontalPodAutoscaler and AutoscalePolicy "
            f"created; playing the trace for {cfg.play_s / 60:.3g} min ('!': p95 over the SLO)"
        )
        sampler = _Sampler(self.clients, self.prom.url, self.op.metrics_url)
        self.stack.callback(sampler.close)
        if cfg.live:
            say(live_header())
        rows: list[dict[str, Any]] = []
        next_print = 0.0
        slo_s = cfg.slo_ms / 1000.0
        while True:
            now = time.time()
            t = now - self.play_t0
            if t > cfg.play_s:
                break
            if _INTERRUPTED.is_set():
                raise KeyboardInterrupt("interrupted")
            try:
                row = sampler.row(t)
            except Exception as e:  # one failed read is a gap in the timeline, not the end
                say(f"  (a read failed at {t:.0f} s: {e.__class__.__name__})")
                time.sleep(cfg.sample_s)
                continue
            row["load_rps"] = self.stretch.rps(t)
            row["trace_clock"] = self.stretch.clock(t)
            rows.append(row)
            if cfg.live and t >= next_print:
                say(live_line(row, self.stretch, slo_s))
                next_print += cfg.print_s
            time.sleep(max(0.0, cfg.sample_s - (time.time() - now)))
        self.timings["play_s"] = time.monotonic() - t_play
        return rows
