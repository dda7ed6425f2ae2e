"""Operator benchmarks on the local control plane with real Prometheus (BENCHMARKS.md).

For each size (1, 100, 1,000 policies; one Deployment of 2 fake pods each), on a fresh kwokctl
cluster: the emulator (``qscale emulate``, a subprocess) plays every service at 50 req/s (the
policies hold: 2 pods at 50 % CPU), Prometheus scrapes it and the operator every 2 s, and
``qscale operator`` runs as a subprocess with the least-privilege ServiceAccount token.

Measured from the operator's own metrics (/metrics) and the API:

* start-up: process start to the first tick that decided every policy (policies exist first);
* RSS with the model loaded, after the first ticks;
* steady state (the default shield: 60 s down cooldown, 120 s stabilization): Prometheus
  queries, scale writes and status writes per tick, tick wall time;
* reaction: a load step on one Deployment (50 -> 300 req/s) to the first scale write;
* at the largest size, kopf's defaults (no worker limit, 5 s idle timeout) against ours;
* the tick with 10 % and 100 % of the targets changing: the operator's own ``Engine`` run in
  this process against the same API server and Prometheus, with a scripted Q-function that
  picks which targets move (+1/-1 pod) -- the operator's code path, with changes on demand;
* decide() for 1,000 targets (features + forward pass + shield) with the TorchScript model.

Usage: ``python benchmarks/bench_operator.py [--sizes 1,100,1000] [--json out.json]``
(about 10 minutes on 2 cores at the default sizes). Every process and temp dir is cleaned up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from qscale.dev.cluster import ClusterOptions, LocalCluster, deployment_manifest, start_cluster
from qscale.dev.operator import OperatorProcess, install, scripted_policy, token_kubeconfig
from qscale.dev.prom import LocalPrometheus, free_port

NS, OP_NS = "bench", "qscale-system"
INTERVAL_S = 5
SCRAPE_S = 2.0
BASE_RPS, STEP_RPS = 50, 300


def policy(name: str) -> dict:
    return {
        "apiVersion": "qscale.io/v1alpha1",
        "kind": "AutoscalePolicy",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": 1,
            "maxReplicas": 10,
            "interval": f"{INTERVAL_S}s",
            "slo": {"latencyP95": "500ms"},
        },
    }


async def _kube(kubeconfig: Path):
    os.environ["KUBECONFIG"] = str(kubeconfig)
    from qscale.operator.kube import Kube, load_connection

    return Kube(load_connection(), timeout_s=30, max_connections=32)


async def create_all(
    kubeconfig: Path, path: str, bodies: list[dict], concurrency: int = 16
) -> None:
    kube = await _kube(kubeconfig)
    sem = asyncio.Semaphore(concurrency)

    async def one(b: dict) -> None:
        async with sem:
            await kube.post(path, b)

    try:
        await asyncio.gather(*(one(b) for b in bodies))
    finally:
        await kube.close()


def wait_ready(cluster: LocalCluster, n: int, timeout_s: float = 300) -> float:
    t0 = time.time()
    while time.time() - t0 < timeout_s:
        out = cluster.kubectl(
            "get", "deploy", "-n", NS, "-o", "jsonpath={.items[*].status.readyReplicas}"
        ).stdout
        if sum(1 for x in out.split() if x == "2") >= n:
            return time.time() - t0
        time.sleep(2)
    raise TimeoutError(f"{n} Deployments not ready after {timeout_s} s")


def metric(op: OperatorProcess, name: str, labels: dict | None = None) -> float:
    try:
        return op.metric(name, labels)
    except Exception:
        return math.nan


def wait_metric(op: OperatorProcess, name: str, pred, timeout_s: float, poll: float = 0.5) -> float:
    t0 = time.time()
    while time.time() - t0 < timeout_s:
        v = metric(op, name)
        if pred(v):
            return v
        time.sleep(poll)
    return math.nan


def decision_latency(model_dir: Path, n: int = 1000, reps: int = 200) -> dict:
    """decide() for n targets: features + forward pass + shield, one thread."""
    from qscale import decision, features
    from qscale.guardrails import ShieldConfig, ShieldState
    from qscale.policy.artifact import load_policy

    torch.set_num_threads(1)
    module = load_policy(model_dir).module
    g = torch.Generator().manual_seed(0)

    def u(lo, hi):
        return lo + (hi - lo) * torch.rand(n, generator=g)

    reps_t = torch.randint(1, 50, (n,), generator=g).float()
    x = features.FeatureInputs(
        cpu_utilization=u(0, 1.2),
        cpu_limit_ratio=torch.ones(n),
        p95_s=u(0.05, 1),
        slo_s=torch.full((n,), 0.3),
        rate_now=u(10, 100),
        rate_1m=u(10, 100),
        rate_5m=u(10, 100),
        rate_15m=u(10, 100),
        rate_peak_15m=u(100, 150),
        replicas=reps_t,
        ready_replicas=reps_t,
        min_replicas=torch.ones(n),
        since_scale_up_s=torch.zeros(n),
        since_scale_down_s=torch.zeros(n),
    )
    sig = decision.Signals(
        x, torch.full((n,), 100.0), torch.ones(n, dtype=torch.bool), torch.zeros(n)
    )
    state = ShieldState.init(n)
    cfg = ShieldConfig()
    now = time.time()
    for _ in range(20):
        d = decision.decide(sig, state, now, cfg, model=module)
    times = []
    for i in range(reps):
        t0 = time.perf_counter()
        d = decision.decide(sig, d.shield_state, now + i, cfg, model=module)
        times.append(time.perf_counter() - t0)
    times.sort()
    return {
        "n": n,
        "median_ms": 1e3 * statistics.median(times),
        "p95_ms": 1e3 * times[int(0.95 * len(times))],
    }


def emulator_process(
    kubeconfig: Path, names: list[str], workdir: Path
) -> tuple[subprocess.Popen, int, Path]:
    cfg = workdir / "workloads.json"
    cfg.write_text(
        json.dumps([{"namespace": NS, "deployment": n, "load": BASE_RPS} for n in names])
    )
    control = workdir / "control.json"
    control.write_text("{}")
    port = free_port()
    log = (workdir / "emulator.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "qscale.entry",
            "emulate",
            "--kubeconfig",
            str(kubeconfig),
            "-n",
            NS,
            "--config",
            str(cfg),
            "--control",
            str(control),
            "--port",
            str(port),
            "--step",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return proc, port, control


async def engine_ticks(kubeconfig: Path, prom_url: str, fraction: float, ticks: int) -> list[dict]:
    """The operator's Engine in this process, with a scripted Q-function moving ``fraction`` of
    the targets by one pod each tick (up from 2, down from 3)."""
    from qscale import actions, features
    from qscale.operator.deployments import DeploymentCache
    from qscale.operator.events import EventPoster
    from qscale.operator.metrics import Metrics
    from qscale.operator.models import Model, ModelRegistry
    from qscale.operator.prom import PromClient
    from qscale.operator.settings import Settings
    from qscale.operator.tick import Engine, IndexedPolicy

    torch.set_num_threads(1)
    kube = await _kube(kubeconfig)
    s = Settings(namespaces=(NS,), prometheus_url=prom_url, write_concurrency=16)
    cache = DeploymentCache(kube, s.namespaces)
    cache.start()
    await asyncio.wait_for(cache.ready.wait(), 60)
    state = {"tick": 0}
    plus, minus, hold = (actions.ACTION_NAMES.index(a) for a in ("plus_1", "minus_1", "hold"))
    log_r = features.FEATURE_NAMES.index("log_replicas")

    def scripted(obs: torch.Tensor) -> torch.Tensor:
        b = obs.shape[0]
        reps = torch.round(torch.exp(obs[:, log_r] * math.log1p(features.REPLICAS_SCALE)) - 1)
        k = state["tick"]
        every = max(1, round(1 / fraction))
        moving = (torch.arange(b) % every) == (k % every)
        a = torch.where(reps <= 2, plus, minus)
        a = torch.where(moving, a, hold)
        q = torch.zeros(b, actions.N_ACTIONS)
        q[torch.arange(b), a] = 1.0
        return q

    models = ModelRegistry(Path("/nonexistent"))
    models._default = Model("scripted", "scripted", features.SPEC_HASH, scripted, {})
    events = EventPoster(kube, "bench")
    events.start()
    eng = Engine(s, kube, cache, PromClient(timeout_s=10), models, Metrics(), events)
    listing = await kube.get(f"/apis/qscale.io/v1alpha1/namespaces/{NS}/autoscalepolicies")
    for item in listing["items"]:  # moves on demand: no cooldown, no stabilization
        item["spec"]["behavior"] = {"scaleDown": {"cooldown": "0s", "stabilizationWindow": "0s"}}
    policies = [IndexedPolicy.from_body(i) for i in listing["items"]]
    out = []
    try:
        for k in range(ticks + 1):
            now = time.time()
            await asyncio.sleep(INTERVAL_S - now % INTERVAL_S + 0.05)
            state["tick"] = k
            rep = await eng.run_once(policies)
            if k == 0:
                continue  # the first tick restores every policy and rewrites the statuses
            out.append(
                {
                    "seconds": rep.seconds,
                    "decided": rep.decided,
                    "queries": rep.queries,
                    "scale_writes": rep.scale_writes,
                    "status_writes": rep.status_writes,
                    "decide_ms": rep.decide_s * 1e3,
                    "changed": len(rep.changed),
                    "conflicts": rep.conflicts,
                    "phases_ms": {k: round(v * 1e3, 1) for k, v in rep.phases.items()},
                }
            )
            await events.drain(INTERVAL_S)
    finally:
        await events.stop()
        await cache.stop()
        await eng.prom.close()
        await kube.close()
    return out


def run_size(n: int, kopf_variants: bool, workdir: Path, engine_only: bool = False) -> dict:
    res: dict = {"policies": n, "loadavg_start": os.getloadavg()}
    nodes = max(2, math.ceil(2 * n / 100) + 1)
    t0 = time.time()
    cluster = start_cluster(
        ClusterOptions(nodes=nodes, disable_qps_limits=True, delayed_ready=False)
    )
    emu = None
    prom = None
    op = None
    try:
        res["cluster_up_s"] = time.time() - t0
        install(cluster, OP_NS, [NS])
        names = [f"svc-{i:04d}" for i in range(n)]
        deps = [
            json.loads(deployment_manifest(nm, NS, replicas=2, cpu_request="100m")) for nm in names
        ]
        t0 = time.time()
        asyncio.run(
            create_all(cluster.kubeconfig, f"/apis/apps/v1/namespaces/{NS}/deployments", deps)
        )
        res["deployments_ready_s"] = time.time() - t0 + wait_ready(cluster, n)
        emu, emu_port, control = emulator_process(cluster.kubeconfig, names, workdir)
        op_port = free_port()
        prom = LocalPrometheus(
            {"emulator": [f"127.0.0.1:{emu_port}"], "operator": [f"127.0.0.1:{op_port}"]},
            scrape_interval_s=SCRAPE_S,
        ).start()
        asyncio.run(
            create_all(
                cluster.kubeconfig,
                f"/apis/qscale.io/v1alpha1/namespaces/{NS}/autoscalepolicies",
                [policy(nm) for nm in names],
            )
        )
        time.sleep(20)  # a few scrapes, so that the rates exist
        model = scripted_policy(workdir / "model")
        kubeconfig = token_kubeconfig(cluster, OP_NS, workdir / "operator.kubeconfig")
        if engine_only:
            res["engine_10pct"] = asyncio.run(engine_ticks(kubeconfig, prom.url, 0.10, 4))
            res["engine_100pct"] = asyncio.run(engine_ticks(kubeconfig, prom.url, 1.0, 3))
            return res
        env = {
            "QSCALE_NAMESPACES": NS,
            "QSCALE_PROMETHEUS_URL": prom.url,
            "QSCALE_DEFAULT_MODEL": str(model),
            "QSCALE_LEASE_NAMESPACE": OP_NS,
            "QSCALE_TICK_S": "1",
        }

        def start_operator(extra: dict, name: str) -> OperatorProcess:
            p = OperatorProcess(
                kubeconfig, env={**env, **extra}, workdir=workdir / name, metrics_port=op_port
            )
            p.workdir.mkdir(exist_ok=True)
            return p.start(wait_ready_s=120)

        variants = [("ours (worker_limit 64, idle 0.1 s)", {})]
        if kopf_variants:
            variants += [
                ("worker_limit 16, idle 0.1 s", {"QSCALE_KOPF_WORKER_LIMIT": "16"}),
                (
                    "kopf defaults (no worker limit, idle 5 s)",
                    {"QSCALE_KOPF_WORKER_LIMIT": "0", "QSCALE_KOPF_IDLE_TIMEOUT_S": "5"},
                ),
                (
                    "worker_limit 16, idle 5 s",
                    {"QSCALE_KOPF_WORKER_LIMIT": "16", "QSCALE_KOPF_IDLE_TIMEOUT_S": "5"},
                ),
            ]
        res["kopf"] = {}
        ours = variants[0][0]
        for i, (label, extra) in enumerate(variants[1:] + variants[:1]):  # ours last: it stays
            op = start_operator(extra, f"operator{i}")
            took = wait_metric(op, "qscale_startup_seconds", lambda v: v > 0, 150)
            peak = op.rss_mb()
            time.sleep(2 * INTERVAL_S)
            res["kopf"][label] = {
                "first_decision_all_s": took,
                "rss_mb": op.rss_mb(),
                "rss_at_first_decision_mb": peak,
                "indexed": metric(op, "qscale_policies"),
            }
            if label != ours:
                op.close()
                op = None
        res["startup_to_first_decision_all_s"] = res["kopf"][ours]["first_decision_all_s"]
        # steady state: nothing changes
        time.sleep(3 * INTERVAL_S)
        m0 = {
            k: metric(op, k)
            for k in (
                "qscale_ticks_total",
                "qscale_prometheus_queries_total",
                "qscale_tick_seconds_sum",
                "qscale_tick_seconds_count",
            )
        }
        w0 = {
            k: metric(op, "qscale_api_writes_total", {"kind": k})
            for k in ("scale", "status", "event")
        }
        time.sleep(6 * INTERVAL_S)
        m1 = {k: metric(op, k) for k in m0}
        w1 = {k: metric(op, "qscale_api_writes_total", {"kind": k}) for k in w0}
        ticks = m1["qscale_ticks_total"] - m0["qscale_ticks_total"]
        res["steady"] = {
            "ticks": ticks,
            "queries_per_tick": (
                m1["qscale_prometheus_queries_total"] - m0["qscale_prometheus_queries_total"]
            )
            / ticks,
            "writes_per_tick": {k: (w1[k] - w0[k]) / ticks for k in w0},
            "tick_s": (m1["qscale_tick_seconds_sum"] - m0["qscale_tick_seconds_sum"])
            / (m1["qscale_tick_seconds_count"] - m0["qscale_tick_seconds_count"]),
        }
        res["rss_mb"] = op.rss_mb()
        kopf_marks = cluster.kubectl("get", "asp", "-n", NS, "-o", "json").stdout
        res["objects_with_kopf_annotations_or_finalizers"] = sum(
            1
            for i in json.loads(kopf_marks)["items"]
            if any("kopf" in a for a in (i["metadata"].get("annotations") or {}))
            or i["metadata"].get("finalizers")
        )
        # reaction: a load step to the first scale write, on a few Deployments in turn
        reactions = []
        for nm in names[: min(3, n)]:
            time.sleep(INTERVAL_S * 0.37)  # land anywhere in the interval
            before = int(
                cluster.kubectl(
                    "get", "deploy", nm, "-n", NS, "-o", "jsonpath={.spec.replicas}"
                ).stdout
            )
            control.write_text(json.dumps({f"{NS}/{nm}": STEP_RPS}))
            t_step = time.time()
            while time.time() - t_step < 60:
                r = int(
                    cluster.kubectl(
                        "get", "deploy", nm, "-n", NS, "-o", "jsonpath={.spec.replicas}"
                    ).stdout
                )
                if r != before:
                    reactions.append(time.time() - t_step)
                    break
                time.sleep(0.2)
            control.write_text(json.dumps({f"{NS}/{nm}": BASE_RPS}))
        res["reaction_s"] = reactions
        op.close()
        op = None
        if n >= 100:
            res["engine_10pct"] = asyncio.run(engine_ticks(kubeconfig, prom.url, 0.10, 5))
            res["engine_100pct"] = asyncio.run(engine_ticks(kubeconfig, prom.url, 1.0, 3))
    finally:
        res["loadavg_end"] = os.getloadavg()
        if op is not None:
            op.close()
        if emu is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(emu.pid, 15)
            emu.wait(timeout=20)
        if prom is not None:
            prom.close()
        cluster.delete()
    return res


def summarize(results: list[dict], decide: dict) -> str:
    lines = [
        f"decide() for {decide['n']} targets (features + forward + shield, 1 thread): "
        f"median {decide['median_ms']:.2f} ms, p95 {decide['p95_ms']:.2f} ms"
    ]
    for r in results:
        s = r["steady"]
        w = s["writes_per_tick"]
        reaction = ", ".join(f"{x:.1f}" for x in r["reaction_s"])
        lines.append(
            f"{r['policies']:>5} policies: start-up to all decided "
            f"{r['startup_to_first_decision_all_s']:.1f} s, RSS {r['rss_mb']:.0f} MB, "
            f"queries/tick {s['queries_per_tick']:.1f}, steady writes/tick scale "
            f"{w['scale']:.2f} status {w['status']:.2f}, tick {s['tick_s'] * 1e3:.0f} ms, "
            f"reaction {reaction} s (load average {r['loadavg_start'][0]:.1f} -> "
            f"{r['loadavg_end'][0]:.1f})"
        )
        for key in ("engine_10pct", "engine_100pct"):
            if key in r:
                e = r[key]

                def med(k, e=e):
                    return statistics.median(x[k] for x in e)

                worst = max(x["seconds"] for x in e)
                lines.append(
                    f"      {key}: tick {med('seconds') * 1e3:.0f} ms median "
                    f"(max {worst * 1e3:.0f}), changed {med('changed'):.0f}, "
                    f"scale writes {med('scale_writes'):.0f}, status writes "
                    f"{med('status_writes'):.0f}, decide {med('decide_ms'):.1f} ms"
                )
        for label, k in (r.get("kopf") or {}).items():
            lines.append(
                f"      kopf {label}: all decided after {k['first_decision_all_s']:.1f} s, "
                f"RSS {k['rss_mb']:.0f} MB, indexed {k['indexed']:.0f}"
            )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1,100,1000")
    ap.add_argument("--json", default="out/bench_operator.json")
    ap.add_argument("--no-kopf-variants", action="store_true")
    ap.add_argument("--engine-only", action="store_true", help="only the in-process tick (quick)")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    results = []
    with tempfile.TemporaryDirectory(prefix="qscale-bench-op-") as tmp:
        work = Path(tmp)
        model = scripted_policy(work / "model")
        decide = decision_latency(model)
        for n in sizes:
            d = work / f"n{n}"
            d.mkdir()
            r = run_size(
                n, kopf_variants=(n == max(sizes) and not args.no_kopf_variants), workdir=d
            )
            results.append(r)
            print(summarize([r], decide).splitlines()[-1], flush=True)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"decide": decide, "sizes": results, "cores": os.cpu_count()}, indent=2)
    )
    print(summarize(results, decide))
    return 0


if __name__ == "__main__":
    sys.exit(main())
