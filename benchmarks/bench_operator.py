"""Operator benchmarks: ``qscale operator`` as users run it, at 1, 100 and 1,000 policies.

For each size, a fresh stack (``benchstack.py``): a local control plane with one Deployment of
2 fake pods per policy, ``qscale emulate`` playing every service at 50 req/s (each pod serves
50), a real Prometheus scraping it and the operator every 2.5 s, and ``qscale operator`` as a
subprocess -- kopf included, the least-privilege ServiceAccount token. Policies: interval 5 s,
SLO p95 500 ms, minReplicas 1, maxReplicas 3 (a load step moves a Deployment by one step,
2 -> 3, and no further).

With the **shipped model** (its digest printed, and checked against the operator's
``qscale_model_info``), measured from the operator's /metrics, its log and a watch of the
Deployments:

* start-up: process start to the last status write of the first tick that decided every
  policy (``qscale_startup_written_seconds``), and to that tick's decisions
  (``qscale_startup_seconds``);
* steady state (nothing changing): Prometheus queries and API writes per tick, tick wall time,
  over 24 intervals (2 minutes, a drift slot of the default 1-hour window) from 90 s after the
  operator's start: the first decisions' transitions (a scale-down proposal held by the
  stabilization window turns OK, the CPU peak's first whole-minute point) are start-up, not
  steady state;
* a 10 % series: a load step (50 -> 300 req/s) on a tenth of the Deployments at the same phase
  of each of 6 consecutive intervals (Prometheus' scrape divides the interval, so each tenth
  reaches the operator in the same tick); per tick with scale writes (the operator's tick
  line): how many, the time from the tick's start to its last scale write and to its last
  status write -- every tick counted, the first included;
* reaction: >= 10 load steps (50 -> 300 req/s), each on another Deployment where there are
  enough, at phases spread over the interval, to the first change of ``spec.replicas``;
* memory: the operator's RSS (VmRSS) after all that, and the same of a process that only
  imports torch and ``torch.jit.load``\\ s the shipped model: the difference is the operator's;
* decide() for 1,000 targets (features + forward pass + shield).

The shipped model takes a step only once p95 *and* CPU have risen (p95 reads the top bucket,
10 s, 3-4 s after the step; the 1 m CPU rate takes 5-35 s more), so its reaction spreads a
tenth over several ticks. The controlled 10 %-changing tick is therefore also run with the
**hand-set test policy** (:func:`qscale.dev.operator.scripted_policy`: a pod more as soon as
p95 passes the SLO by 20 %), on the same operator subprocess otherwise: the 10 % series, at the
largest size the same with ``QSCALE_SCALE_CONCURRENCY`` 16, 32, 64 and 128 (the operator
restarted for each), and every target stepped at once. The write path does not depend on the
model; which model ran is in every figure's key.

Deployments already stepped are put back when the fresh ones run out: load to 50 req/s, and
once p95 is under the SLO everywhere again (the step's queue drained, the 1 m windows forgot
it: 1-2 minutes), scaled back to 2 by hand.

Usage: ``python benchmarks/bench_operator.py [--sizes 1,100,1000] [--json out.json]``
(about 45 minutes on 2 cores at the default sizes; ``--reaction-samples`` and ``--sweep`` make
a development run shorter). The operator's and the emulator's logs are kept next to the JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchstack import (
    NS,
    SCRAPE_S,
    Stack,
    log_offset,
    log_text,
    machine,
    model_info,
    policy_body,
    shipped_model,
    start_stack,
    tick_lines,
    torch_baseline_rss,
)
from qscale.dev.operator import scripted_policy

INTERVAL_S = 5
BASE_RPS, STEP_RPS = 50, 300
MAX_REPLICAS = 3
GROUPS = 6
"""Consecutive 10 %-changing ticks per series."""


def policy(name: str) -> dict:
    return policy_body(name, INTERVAL_S, 1, MAX_REPLICAS)


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
        rate_peak_30m=u(150, 200),
        busy_peak_30m=u(1, 8),
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


def at_phase(phase_s: float) -> float:
    """Sleep until ``phase_s`` into the next interval (ticks fall on multiples of it)."""
    now = time.time()
    t = math.floor(now / INTERVAL_S) * INTERVAL_S + phase_s
    while t <= now + 0.05:
        t += INTERVAL_S
    time.sleep(t - now)
    return t


class Pool:
    """Deployments at 2 pods and 50 req/s, never stepped since they were last put back."""

    def __init__(self, st: Stack) -> None:
        self.st = st
        self.fresh = list(st.names)
        self.used: list[str] = []
        self.resets = 0
        self.not_back = 0
        """Deployments not at 2 pods after a reset (the model scaled them again)."""

    def take(self, k: int) -> list[str]:
        if len(self.fresh) < k:
            self.reset()
        out, self.fresh = self.fresh[:k], self.fresh[k:]
        self.used += out
        return out

    def reset(self) -> None:
        """Loads back to 50 req/s; once p95 is back under the SLO everywhere (the queue of
        the step drained and the 1 m window forgot it), every stepped Deployment back to 2."""
        if not self.used:
            return
        st = self.st
        st.set_loads(dict.fromkeys(self.used, BASE_RPS))
        deadline = time.time() + 300
        while time.time() < deadline:
            time.sleep(5)
            p95 = worst_p95(st)
            if p95 is not None and p95 < 0.3:
                break
        time.sleep(2 * SCRAPE_S)
        st.api.scale(dict.fromkeys(self.used, 2))
        time.sleep(3 * INTERVAL_S)  # the outside scales noticed, their statuses written
        assert st.watch is not None
        self.not_back += sum(1 for nm in self.used if st.watch.current(nm) != 2)
        self.fresh, self.used = self.fresh + self.used, []
        self.resets += 1


def worst_p95(st: Stack) -> float | None:
    """The highest p95 of any Deployment, as the operator's query reads it."""
    from qscale.features import PROMQL

    q = PROMQL["latency_p95"].replace("$namespace", NS).replace("$deployment", "svc-[0-9]+")
    try:
        vals = [float(r["value"][1]) for r in st.prom.query(f"max({q})")]
    except Exception:
        return None
    return max(vals) if vals and not math.isnan(max(vals)) else None


def wait_started(st: Stack, t_start: float) -> dict:
    written = st.wait_metric("qscale_startup_written_seconds", lambda v: v > 0, 300)
    return {
        "to_first_decision_all_s": st.metric("qscale_startup_seconds"),
        "to_statuses_written_s": written,
        "wall_s": time.time() - t_start,
        "rss_mb": st.op.rss_mb() if st.op else math.nan,
        "policies_indexed": st.metric("qscale_policies"),
    }


STEADY_AFTER_S = 90.0
"""The steady state is measured from this long after the operator's start."""
STEADY_INTERVALS = 24


def steady(st: Stack, intervals: int = STEADY_INTERVALS) -> dict:
    names = ("qscale_ticks_total", "qscale_prometheus_queries_total")
    hist = ("qscale_tick_seconds_sum", "qscale_tick_seconds_count")
    kinds = ("scale", "status", "event")
    m0 = {k: st.metric(k) for k in names + hist}
    w0 = {k: st.metric("qscale_api_writes_total", {"kind": k}) for k in kinds}
    time.sleep(intervals * INTERVAL_S)
    m1 = {k: st.metric(k) for k in m0}
    w1 = {k: st.metric("qscale_api_writes_total", {"kind": k}) for k in kinds}
    ticks = m1["qscale_ticks_total"] - m0["qscale_ticks_total"]
    q = m1["qscale_prometheus_queries_total"] - m0["qscale_prometheus_queries_total"]
    return {
        "ticks": ticks,
        "queries_per_tick": q / ticks,
        "writes_per_tick": {k: (w1[k] - w0[k]) / ticks for k in kinds},
        "tick_s": (m1[hist[0]] - m0[hist[0]]) / (m1[hist[1]] - m0[hist[1]]),
    }


def changing(st: Stack, pool: Pool, size: int, groups: int) -> dict:
    """``groups`` consecutive ticks, each with ``size`` targets changing."""
    assert st.op is not None
    names = [pool.take(size) for _ in range(groups)]
    off = log_offset(st.op)
    t0 = at_phase(0.3)
    for i, g in enumerate(names):
        if i:
            at_phase(0.3)
        st.set_loads(dict.fromkeys(g, STEP_RPS))
    ticks = wait_ticks(st, off, t0, groups * size)
    return summarize_ticks(ticks, size)


def wait_ticks(st: Stack, off: int, t0: float, writes: int, timeout_s: float = 90) -> list[dict]:
    """The operator's ticks with scale writes since ``t0``, once ``writes`` are in (or after
    ``timeout_s``), and one more interval for their statuses."""
    assert st.op is not None
    deadline = time.time() + timeout_s
    while True:
        ticks = [t for t in tick_lines(log_text(st.op, off)) if t["scale_writes"] and t["at"] > t0]
        if sum(t["scale_writes"] for t in ticks) >= writes or time.time() > deadline:
            break
        time.sleep(1)
    time.sleep(INTERVAL_S)
    return [t for t in tick_lines(log_text(st.op, off)) if t["scale_writes"] and t["at"] > t0]


def summarize_ticks(ticks: list[dict], size: int) -> dict:
    out: dict = {"targets_per_group": size, "ticks": ticks}
    for k in ("to_last_scale_ms", "to_last_status_ms"):
        xs = [t[k] for t in ticks if t[k] is not None]
        if xs:
            out[k] = {"median": statistics.median(xs), "max": max(xs), "n": len(xs)}
    out["scale_writes"] = [t["scale_writes"] for t in ticks]
    return out


def reactions(st: Stack, pool: Pool, samples: int) -> list[float | None]:
    """Load steps at phases spread over the interval, each to the first scale write."""
    assert st.watch is not None
    out: list[float | None] = []
    for i in range(samples):
        (name,) = pool.take(1)
        at_phase((i + 0.5) * INTERVAL_S / samples)
        t = time.time()
        st.set_loads({name: STEP_RPS})
        seen = st.watch.wait_change(name, t, 60)
        out.append(None if seen is None else seen - t)
        print(f"    reaction {i + 1}/{samples} ({name}): {out[-1]}", flush=True)
    return out


def run_size(n: int, workdir: Path, args: argparse.Namespace, sweep: list[int]) -> dict:
    model = shipped_model()
    res: dict = {"policies": n, "machine_start": machine(), "model": model}
    st = start_stack(
        n,
        workdir,
        policy,
        lambda _: BASE_RPS,
        pods_per_deployment=MAX_REPLICAS + 1,
        in_pod={"auto": None, "pod": True, "kubeconfig": False}[args.login],
    )
    try:
        res.update(st.timings)
        time.sleep(20)  # a few scrapes, so that the rates exist
        shipped_part(st, res, args)
        if n // 10:
            scripted_part(st, res, args, workdir, sweep)
        res["resets"] = st_pool(st).resets
        res["not_back_after_reset"] = st_pool(st).not_back
    finally:
        res["machine_end"] = machine()
        st.close(keep=Path(args.json).parent / "bench_operator_logs" / f"n{n}")
    return res


_POOLS: dict[int, Pool] = {}


def st_pool(st: Stack) -> Pool:
    return _POOLS.setdefault(id(st), Pool(st))


def shipped_part(st: Stack, res: dict, args: argparse.Namespace) -> None:
    """The operator with the shipped model: start-up, steady state, a 10 % series, reaction,
    memory."""
    n, pool = st.n, st_pool(st)
    t = st.start_operator()
    res["startup"] = wait_started(st, t)
    assert st.op is not None
    res["model_reported"] = model_info(st.op)
    print(f"  n={n}: start-up {res['startup']}", flush=True)
    time.sleep(max(2 * INTERVAL_S, t + STEADY_AFTER_S - time.time()))
    res["steady"] = steady(st)
    res["rss_steady_mb"] = st.op.rss_mb()
    if n // 10:
        res["changing_10pct_shipped"] = changing(st, pool, n // 10, GROUPS)
        print(f"  10 %, shipped model: {_brief(res['changing_10pct_shipped'])}", flush=True)
    res["reaction_s"] = reactions(st, pool, args.reaction_samples)
    res["rss_mb"] = st.op.rss_mb()
    res["login"] = "in-cluster (a pod's ServiceAccount)" if st.in_pod else "kubeconfig"
    res["torch_baseline"] = torch_baseline_rss(Path(res["model"]["path"]), n, st.in_pod)


def scripted_part(
    st: Stack, res: dict, args: argparse.Namespace, workdir: Path, sweep: list[int]
) -> None:
    """The operator with the hand-set test policy (it adds a pod as soon as p95 passes the SLO
    by 20 %, so each tenth moves in one tick): the 10 % series, the concurrency sweep, every
    target at once."""
    n, pool, size = st.n, st_pool(st), st.n // 10
    scripted = scripted_policy(workdir / "scripted-model")
    env = {"QSCALE_DEFAULT_MODEL": str(scripted)}
    res["scripted_model"] = shipped_model_like(scripted)
    for c in [None, *sweep]:
        extra = {**env, **({"QSCALE_SCALE_CONCURRENCY": str(c)} if c else {})}
        t = st.start_operator(extra, name=f"op-scripted-c{c or 'default'}")
        wait_started(st, t)
        time.sleep(2 * INTERVAL_S)
        series = changing(st, pool, size, GROUPS if c is None else args.sweep_groups)
        if c is None:
            res["changing_10pct"] = series
        else:
            res.setdefault("sweep", {})[c] = series
        print(f"  10 %, hand-set model, scale concurrency {c}: {_brief(series)}", flush=True)
    if n >= 100:
        if sweep:  # back to the default
            t = st.start_operator(env, name="op-scripted-all")
            wait_started(st, t)
        pool.reset()
        everyone = pool.take(n)
        assert st.op is not None
        off = log_offset(st.op)
        t0 = at_phase(0.3)
        st.set_loads(dict.fromkeys(everyone, STEP_RPS))
        res["changing_all"] = summarize_ticks(wait_ticks(st, off, t0, n), n)
        print(f"  every target, hand-set model: {_brief(res['changing_all'])}", flush=True)


def shipped_model_like(path: Path) -> dict:
    import hashlib

    raw = (path / "manifest.json").read_bytes()
    return {"path": str(path), "manifest_sha256": hashlib.sha256(raw).hexdigest()}


def _brief(c: dict) -> str:
    s, w = c.get("to_last_scale_ms") or {}, c.get("to_last_status_ms") or {}
    return (
        f"writes {c['scale_writes']}, to last scale write median {s.get('median')} "
        f"max {s.get('max')} ms, to last status write median {w.get('median')} "
        f"max {w.get('max')} ms"
    )


def summarize(results: list[dict], decide: dict) -> str:
    m = results[0]["model"] if results else shipped_model()
    lines = [
        f"model: shipped, manifest sha256 {m['manifest_sha256'][:16]}, model.pt sha256 "
        f"{m['model_sha256'][:16]} ({m['created_at']})",
        f"decide() for {decide['n']} targets (features + forward + shield, 1 thread): "
        f"median {decide['median_ms']:.2f} ms, p95 {decide['p95_ms']:.2f} ms",
    ]
    for r in results:
        s, w, su = r["steady"], r["steady"]["writes_per_tick"], r["startup"]
        base = r["torch_baseline"]["import_torch_and_load_mb"]
        react = [x for x in r["reaction_s"] if x is not None]
        lines.append(
            f"{r['policies']:>5} policies: start-up to statuses written "
            f"{su['to_statuses_written_s']:.1f} s (decided {su['to_first_decision_all_s']:.1f}"
            f" s), RSS {r['rss_mb']:.0f} MB = torch+model {base:.0f} + "
            f"{r['rss_mb'] - base:.0f} MB (of it the operator's imports "
            f"{r['torch_baseline']['with_operator_imports_mb'] - base:.0f} MB), queries/tick "
            f"{s['queries_per_tick']:.1f}, steady "
            f"writes/tick {w['scale']:.2f}/{w['status']:.2f}/{w['event']:.2f}, tick "
            f"{s['tick_s'] * 1e3:.0f} ms, reaction median "
            f"{statistics.median(react) if react else math.nan:.1f} s max "
            f"{max(react) if react else math.nan:.1f} s ({len(react)}/{len(r['reaction_s'])})"
            f", load {r['machine_start']['loadavg'][0]:.1f} -> "
            f"{r['machine_end']['loadavg'][0]:.1f}"
        )
        for key in ("changing_10pct_shipped", "changing_10pct", "changing_all"):
            if key in r:
                lines.append(f"      {key}: {_brief(r[key])}")
        for c, v in (r.get("sweep") or {}).items():
            lines.append(f"      scale concurrency {c}: {_brief(v)}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1,100,1000")
    ap.add_argument("--json", default="out/bench_operator.json")
    ap.add_argument("--reaction-samples", type=int, default=10)
    ap.add_argument(
        "--sweep",
        default="16,32,64,128",
        help="QSCALE_SCALE_CONCURRENCY values tried at the largest size ('' for none)",
    )
    ap.add_argument("--sweep-groups", type=int, default=5, help="10 %%-changing ticks per value")
    ap.add_argument(
        "--login",
        choices=["auto", "pod", "kubeconfig"],
        default="auto",
        help="how the operator logs in (auto: as a pod where the machine allows it)",
    )
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    sweep = [int(x) for x in args.sweep.split(",") if x]
    model = shipped_model()
    print(
        f"shipped model {model['path']}: manifest sha256 {model['manifest_sha256']}, "
        f"model.pt sha256 {model['model_sha256']}",
        flush=True,
    )
    decide = decision_latency(Path(model["path"]))
    results = []
    with tempfile.TemporaryDirectory(prefix="qscale-bench-op-") as tmp:
        for n in sizes:
            d = Path(tmp) / f"n{n}"
            d.mkdir()
            r = run_size(n, d, args, sweep if n == max(sizes) else [])
            results.append(r)
            print(summarize([r], decide), flush=True)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"decide": decide, "sizes": results, "cores": os.cpu_count()}, indent=2)
    )
    print(summarize(results, decide))
    return 0


if __name__ == "__main__":
    sys.exit(main())
