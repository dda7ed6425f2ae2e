"""Soak: ``qscale operator`` at 1,000 policies for an hour of ticks, with faults sprinkled in.

The stack of ``benchstack.py`` (a fresh local control plane, one Deployment of fake pods per
policy starting at 2, ``qscale emulate``, a real Prometheus every 2.5 s, ``qscale operator`` as a
subprocess with kopf and the shipped model). Policies: minReplicas 1, maxReplicas 10, SLO p95
500 ms, interval ``--interval`` (15 s: the shipped model's training interval); 1 % of them (at
least one) use the shipped model published as a ConfigMap, pinned by its sha256. Every
Deployment plays its own load (seeded): 30-120 req/s on average, +-30-70 % over periods of
4-20 minutes, and now and then a 2.5x burst of 2-4 minutes; each pod serves 50 req/s, so the
shipped model takes real steps up and down all along.

Faults, at fractions of the run, one after the other (each recorded with its time):

* 10 % and 90 %: 5 Deployments scaled by hand, to a count within their bounds;
* 20 %: Prometheus stopped for 60 s, then started again on the same data;
* 35 %: the operator SIGKILLed (a crash: the Lease is not given up), started again 5 s later;
* 50 %: kube-apiserver restarted (SIGTERM, the same command line; the other components stay);
* 60 %: the model ConfigMap tampered with (model.pt changed; the pin no longer matches the
  manifest's hashes), put back after max(90 s, 10 % of the run);
* 80 %: the operator SIGKILLed 0.3 s into a tick (mid-tick), started again at once.

Sampled every 10 s: the operator's RSS (VmRSS; per process, a restart starts a new series), and
from its /metrics (counters summed across restarts): ticks, policies due (decisions owed),
decisions made, scale / status / Event writes, the status backlog, the tick's wall time. A
window of 10 s holds at most one tick at intervals >= 10 s, so each sample's tick time is that
tick's own; ticks that wrote something are also in the operator's log (to its last scale write
and its last status write).

Checked at the end, from a watch of every Deployment's ``spec.replicas`` (every value the API
server showed, with the time the benchmark saw it) and the operator's log:

* **bound violations**: values outside the policy's [minReplicas, maxReplicas] (the hand
  scales stay within them, so every such value counts); must be 0;
* **double-applied steps**: a *step* is one scale the operator reports as landed (its
  ``scaled <target> a -> b`` Event, logged when it is posted, so also while the API is down).
  Each observed change ``p -> q`` of a Deployment is matched to the operator step to ``q``
  closest in time (within 30 s) not yet matched, else to a hand scale to ``q``. A step is
  double-applied when the API shows it applied twice (a second change ``a -> b`` whose only
  explanation is a step already matched) or applied on top of a count it was not decided for
  (its change did not start from ``a``). Must be 0. Reported apart: a change that landed as
  the operator was SIGKILLed, before it could report it (the next operator took the new count
  as a scale by someone else: its ``OUTSIDE_SCALE`` notice, not a second application); changes
  right after a gap in the watch (an intermediate value may be unseen); changes nobody
  explains.

Usage: ``python benchmarks/bench_soak.py [--minutes 60] [--policies 1000] [--interval 15]``
(``make bench-soak``); ``--minutes 5 --policies 100`` validates it in about 8 minutes.
Writes ``--json`` and a Markdown table (``--md``).
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import math
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchstack import (
    NS,
    Stack,
    log_text,
    machine,
    model_info,
    policy_body,
    scaled_lines,
    shipped_model,
    start_stack,
    tick_lines,
    torch_baseline_rss,
)
from qscale.dev.operator import can_mount_service_account

MIN_R, MAX_R = 1, 10
SAMPLE_S = 10.0
CM_NAME = "soak-model"
COUNTERS = {
    "ticks": ("qscale_ticks_total", None),
    "due": ("qscale_policies_due_total", None),
    "decisions": ("qscale_decisions_total", None),
    "scale_writes": ("qscale_api_writes_total", {"kind": "scale"}),
    "status_writes": ("qscale_api_writes_total", {"kind": "status"}),
    "event_writes": ("qscale_api_writes_total", {"kind": "event"}),
    "tick_sum": ("qscale_tick_seconds_sum", None),
    "tick_count": ("qscale_tick_seconds_count", None),
}


def load_schedule(name: str, seconds: float, seed: int) -> str:
    """A ramp through a point every 30 s: a sine around a mean, with bursts now and then."""
    rng = random.Random(f"{seed}/{name}")
    mean = rng.uniform(30, 120)
    amp = rng.uniform(0.3, 0.7)
    period = rng.uniform(240, 1200)
    phase = rng.uniform(0, 2 * math.pi)
    bursts = []
    t = rng.uniform(60, 900)
    while t < seconds:
        bursts.append((t, t + rng.uniform(120, 240)))
        t += rng.uniform(600, 1800)
    pts = []
    for i in range(int(seconds // 30) + 2):
        t = 30.0 * i
        v = mean * (1 + amp * math.sin(2 * math.pi * t / period + phase))
        if any(a <= t < b for a, b in bursts):
            v *= 2.5
        pts.append(f"{t:g}:{v:.1f}")
    return "ramp:" + ",".join(pts)


class Counters:
    """The operator's counters summed across its restarts (a counter that went down: reset)."""

    def __init__(self) -> None:
        self.last: dict[str, float] = {}
        self.total: dict[str, float] = dict.fromkeys(COUNTERS, 0.0)
        self.pid: int | None = None

    def update(self, st: Stack) -> dict[str, float]:
        pid = st.op.pid if st.op is not None else None
        if pid is not None and pid != self.pid:  # a new process: its counters start at 0
            self.pid, self.last = pid, {}
        delta = {}
        for k, (name, labels) in COUNTERS.items():
            v = st.metric(name, labels)
            if math.isnan(v):
                delta[k] = 0.0
                continue
            prev = self.last.get(k, 0.0)
            d = v - prev if v >= prev else v
            self.last[k] = v
            self.total[k] += d
            delta[k] = d
        return delta


class Faults(threading.Thread):
    """Plays the faults at their times; records what was done, when."""

    def __init__(self, st: Stack, t0: float, seconds: float, cm: dict, interval: float) -> None:
        super().__init__(daemon=True)
        self.st, self.t0, self.seconds, self.cm = st, t0, seconds, cm
        self.interval = interval
        self.done: list[dict] = []
        self.hand: list[tuple[float, str, int]] = []
        self.kills: list[float] = []
        self.rng = random.Random(7)
        tamper = max(90.0, 0.1 * seconds)
        self.plan = sorted(
            [
                (0.10 * seconds, "scale by hand", self.by_hand),
                (0.20 * seconds, "Prometheus stopped for 60 s", self.prometheus),
                (0.35 * seconds, "operator SIGKILL, restarted 5 s later", self.kill_operator),
                (0.50 * seconds, "kube-apiserver restarted", self.apiserver),
                (0.60 * seconds, "model ConfigMap tampered", self.tamper),
                (0.60 * seconds + tamper, "model ConfigMap restored", self.restore),
                (0.80 * seconds, "operator SIGKILL mid-tick, restarted", self.kill_mid_tick),
                (0.90 * seconds, "scale by hand", self.by_hand),
            ]
        )
        self.stop_flag = False

    def run(self) -> None:
        for at, what, fn in self.plan:
            while time.time() < self.t0 + at:
                if self.stop_flag:
                    return
                time.sleep(0.2)
            start = time.time()
            try:
                detail = fn()
                ok = True
            except Exception as e:  # a fault that failed is reported, the soak goes on
                detail, ok = f"{type(e).__name__}: {e}", False
            self.done.append(
                {
                    "at_s": start - self.t0,
                    "what": what,
                    "took_s": time.time() - start,
                    "ok": ok,
                    "detail": detail,
                }
            )
            print(f"  [{start - self.t0:6.0f} s] {what}: {detail}", flush=True)

    def by_hand(self) -> str:
        names = self.rng.sample(self.st.names, min(5, len(self.st.names)))
        counts = {}
        for nm in names:
            cur = self.st.watch.current(nm) if self.st.watch else None
            cur = cur or 2
            counts[nm] = cur + 3 if cur + 3 <= MAX_R else max(MIN_R, cur - 3)
        t = time.time()
        self.st.api.scale(counts)
        self.hand += [(t, nm, n) for nm, n in counts.items()]
        return ", ".join(f"{k} -> {v}" for k, v in counts.items())

    def prometheus(self) -> str:
        self.st.prom.stop()
        time.sleep(60)
        self.st.prom.start()
        return "stopped, started again"

    def kill_operator(self) -> str:
        self.kills.append(time.time())
        self.st.stop_operator(kill=True)
        time.sleep(5)
        self.st.start_operator()
        return f"pid {self.st.op.pid if self.st.op else None}"

    def kill_mid_tick(self) -> str:
        now, k = time.time(), self.interval
        time.sleep((math.floor(now / k) + 1) * k + 0.3 - now)
        self.kills.append(time.time())
        self.st.stop_operator(kill=True)
        self.st.start_operator()
        return f"pid {self.st.op.pid if self.st.op else None}"

    def apiserver(self) -> str:
        t = time.time()
        self.st.cluster.restart_component("kube-apiserver")
        return f"API serving again after {time.time() - t:.1f} s"

    def tamper(self) -> str:
        path = f"/api/v1/namespaces/{NS}/configmaps/{CM_NAME}"
        raw = bytearray(base64.b64decode(self.cm["binaryData"]["model.pt"]))
        raw[len(raw) // 2] ^= 0xFF
        bad = base64.b64encode(bytes(raw)).decode()
        self.st.api.run(self.st.api.kube.patch_merge(path, {"binaryData": {"model.pt": bad}}))
        return "one byte of model.pt flipped"

    def restore(self) -> str:
        path = f"/api/v1/namespaces/{NS}/configmaps/{CM_NAME}"
        good = self.cm["binaryData"]["model.pt"]
        self.st.api.run(self.st.api.kube.patch_merge(path, {"binaryData": {"model.pt": good}}))
        return "model.pt as published"


def sample(st: Stack, counters: Counters, t0: float) -> dict:
    d = counters.update(st)
    rss = None
    if st.op is not None and st.op.pid is not None:
        try:
            rss = st.op.rss_mb()
        except OSError:
            rss = None
    tick_s = d["tick_sum"] / d["tick_count"] if d["tick_count"] else None
    return {
        "t_s": time.time() - t0,
        "pid": st.op.pid if st.op else None,
        "rss_mb": rss,
        "ticks": d["ticks"],
        "due": d["due"],
        "decisions": d["decisions"],
        "scale_writes": d["scale_writes"],
        "status_writes": d["status_writes"],
        "tick_mean_s": tick_s,
        "ticks_in_window": d["tick_count"],
        "status_backlog": st.metric("qscale_status_backlog"),
    }


def check_steps(
    st: Stack,
    steps: list[dict],
    hand: list[tuple[float, str, int]],
    outside: list[dict],
    kills: list[float],
) -> dict:
    """Bound violations and double-applied steps (see the module docstring). ``outside``: the
    operator's OUTSIDE_SCALE notices, ``kills``: when it was SIGKILLed."""
    assert st.watch is not None
    gaps = st.watch.gaps
    out = {"bound_violations": 0, "double_applied": 0, "on_top": 0, "unexplained": 0}
    out["landed_at_crash"] = 0
    out.update({"after_watch_gap": 0, "observed_changes": 0, "steps_unseen": 0, "by_hand": 0})
    by_target: dict[str, list[dict]] = {}
    for s in steps:
        by_target.setdefault(s["target"], []).append({**s, "used": False})
    hands: dict[str, list[tuple[float, int]]] = {}
    for t, nm, n in hand:
        hands.setdefault(nm, []).append((t, n))
    examples = []
    for nm, hist in st.watch.history.items():
        out["bound_violations"] += sum(1 for _, n in hist if not MIN_R <= n <= MAX_R)
        cand = by_target.get(nm, [])
        for (_, p), (t, q) in itertools.pairwise(hist):
            out["observed_changes"] += 1
            free = [s for s in cand if not s["used"] and s["to"] == q and abs(s["at"] - t) <= 30]
            if free:
                s = min(free, key=lambda s: abs(s["at"] - t))
                s["used"] = True
                if s["from"] != p:
                    if any(a <= t <= b + 5 for a, b in gaps):
                        out["after_watch_gap"] += 1
                    else:
                        out["on_top"] += 1
                        examples.append({"target": nm, "observed": [p, q], "step": s})
                continue
            if any(abs(ht - t) <= 30 and hn == q for ht, hn in hands.get(nm, [])):
                out["by_hand"] += 1
                continue
            again = [s for s in cand if s["used"] and (s["from"], s["to"]) == (p, q)]
            if any(abs(s["at"] - t) <= 30 for s in again):
                out["double_applied"] += 1
                examples.append({"target": nm, "observed": [p, q], "again": True})
            elif any(a <= t <= b + 5 for a, b in gaps):
                out["after_watch_gap"] += 1
            elif any(-1 <= k - t <= 2 for k in kills) and any(
                o["target"] == nm and (o["from"], o["to"]) == (p, q) and 0 <= o["at"] - t <= 120
                for o in outside
            ):
                # a step that landed as the operator was killed, before it could report it;
                # the next operator took the new count as a scale by someone else
                out["landed_at_crash"] += 1
            else:
                out["unexplained"] += 1
                examples.append({"target": nm, "observed": [p, q], "at": t})
    out["steps"] = len(steps)
    out["steps_unseen"] = sum(1 for ss in by_target.values() for s in ss if not s["used"])
    out["double_applied_total"] = out["double_applied"] + out["on_top"]
    out["examples"] = examples[:20]
    out["watch_gaps"] = gaps
    return out


def rss_summary(samples: list[dict], warmup_s: float = 120.0) -> dict:
    """RSS per operator process: after its warm-up, its range and its slope (MB per hour)."""
    by_pid: dict[int, list[tuple[float, float]]] = {}
    for s in samples:
        if s["pid"] is not None and s["rss_mb"] is not None:
            by_pid.setdefault(s["pid"], []).append((s["t_s"], s["rss_mb"]))
    out = []
    for pid, xs in by_pid.items():
        warm = [x for x in xs if x[0] >= xs[0][0] + warmup_s] or xs
        ts, vs = [x[0] for x in warm], [x[1] for x in warm]
        slope = 0.0
        if len(ts) >= 3 and ts[-1] > ts[0]:
            mt, mv = statistics.fmean(ts), statistics.fmean(vs)
            den = sum((t - mt) ** 2 for t in ts)
            slope = sum((t - mt) * (v - mv) for t, v in zip(ts, vs, strict=True)) / den * 3600
        out.append(
            {
                "pid": pid,
                "from_s": xs[0][0],
                "to_s": xs[-1][0],
                "first_after_warmup_mb": vs[0],
                "min_mb": min(vs),
                "max_mb": max(vs),
                "last_mb": vs[-1],
                "slope_mb_per_h": slope,
            }
        )
    return {"processes": out}


def run(args: argparse.Namespace, workdir: Path) -> dict:
    seconds = args.minutes * 60.0
    n, k = args.policies, max(1, args.policies // 100)
    model = shipped_model()
    from qscale.operator.models import artifact_configmap

    cm, digest = artifact_configmap(Path(model["path"]), CM_NAME, NS)
    with_cm = set(f"svc-{i:04d}" for i in range(0, n, max(1, n // k)))

    def policy(name: str) -> dict:
        extra = {}
        if name in with_cm:
            extra["model"] = {"configMapRef": {"name": CM_NAME}, "sha256": digest}
        return policy_body(name, args.interval, MIN_R, MAX_R, **extra)

    res: dict = {"args": vars(args), "model": model, "machine_start": machine()}
    # measured first, so that a failure here never costs the hour
    res["torch_baseline"] = torch_baseline_rss(Path(model["path"]), n, can_mount_service_account())
    margin = seconds + 900
    st = start_stack(
        n,
        workdir,
        policy,
        lambda nm: load_schedule(nm, margin, args.seed),
        pods_per_deployment=MAX_R,
    )
    faults = None
    try:
        st.api.create_all(f"/api/v1/namespaces/{NS}/configmaps", [cm])
        res["policies_with_configmap_model"] = len(with_cm)
        res.update(st.timings)
        res["login"] = "in-cluster (a pod's ServiceAccount)" if st.in_pod else "kubeconfig"
        time.sleep(20)
        st.start_operator()
        st.wait_metric("qscale_startup_written_seconds", lambda v: v > 0, 300)
        assert st.op is not None
        res["model_reported"] = model_info(st.op)
        counters = Counters()
        counters.update(st)
        t0 = time.time()
        faults = Faults(st, t0, seconds, cm, args.interval)
        faults.start()
        samples = []
        next_t = t0 + SAMPLE_S
        while time.time() < t0 + seconds:
            time.sleep(max(0.0, next_t - time.time()))
            next_t += SAMPLE_S
            samples.append(sample(st, counters, t0))
            if len(samples) % 30 == 0:
                s = samples[-1]
                print(
                    f"  [{s['t_s']:6.0f} s] RSS {s['rss_mb']} MB, decisions "
                    f"{counters.total['decisions']:.0f} / due {counters.total['due']:.0f}",
                    flush=True,
                )
        faults.stop_flag = True
        faults.join(120)
        elapsed = time.time() - t0
        assert st.op is not None
        text = log_text(st.op)
        ticks = [t for t in tick_lines(text) if t["at"] >= t0]
        # every step since the operator started: the watch of spec.replicas runs from the
        # stack's start, so the start-up's convergence is checked too (taken from t0, each
        # start-up step was a change nobody explained: 1,694 of them at 1,000 policies)
        steps = scaled_lines(text)
        outside = scaled_lines(text, outside=True)
        res.update(
            {
                "seconds": elapsed,
                "samples": samples,
                "faults": faults.done,
                "totals": counters.total,
                "owed_wall_clock": n * math.floor(elapsed / args.interval),
                "tick_lines": ticks,
                "rss": rss_summary(samples),
                "checks": check_steps(st, steps, faults.hand, outside, faults.kills),
            }
        )
    finally:
        if faults is not None:
            faults.stop_flag = True
        res["machine_end"] = machine()
        st.close(keep=Path(args.json).parent / "bench_soak_logs")
    return res


def worst(res: dict) -> dict:
    ticks = res["tick_lines"]
    win = [s["tick_mean_s"] for s in res["samples"] if s["tick_mean_s"] is not None]
    w: dict = {"tick_ms_from_samples": max(win) * 1e3 if win else None}
    for k in ("tick_ms", "to_last_scale_ms", "to_last_status_ms"):
        xs = [t[k] for t in ticks if t[k] is not None]
        w[k] = max(xs) if xs else None
        w[k + "_median"] = statistics.median(xs) if xs else None
    return w


def markdown(res: dict) -> str:
    a, tot, c = res["args"], res["totals"], res["checks"]
    w = worst(res)
    procs = res["rss"]["processes"]
    base = res["torch_baseline"]["import_torch_and_load_mb"]
    longest = max(procs, key=lambda p: p["to_s"] - p["from_s"]) if procs else None
    rows = [
        ("run", f"{res['seconds'] / 60:.1f} min, {a['policies']} policies, interval "
         f"{a['interval']:g} s, shipped model {res['model']['manifest_sha256'][:12]}"),
        ("decisions owed (wall clock: policies x intervals)", f"{res['owed_wall_clock']:,}"),
        ("decisions owed (policies due, operator's count)", f"{tot['due']:,.0f}"),
        ("decisions made", f"{tot['decisions']:,.0f}"),
        ("ticks", f"{tot['ticks']:,.0f}"),
        ("writes: scale / status / Events", f"{tot['scale_writes']:,.0f} / "
         f"{tot['status_writes']:,.0f} / {tot['event_writes']:,.0f}"),
        ("steps landed (operator's log) / observed changes of spec.replicas",
         f"{c['steps']:,} / {c['observed_changes']:,} ({c['by_hand']} by hand)"),
        ("worst tick: wall time / to last scale write / to last status write",
         f"{_ms(w['tick_ms'] if w['tick_ms'] is not None else w['tick_ms_from_samples'])} / "
         f"{_ms(w['to_last_scale_ms'])} / {_ms(w['to_last_status_ms'])}"),
        ("median tick with writes: to last scale write / to last status write",
         f"{_ms(w['to_last_scale_ms_median'])} / {_ms(w['to_last_status_ms_median'])}"),
        ("operator RSS per process (after 2 min): first -> last, max, slope",
         "; ".join(f"{p['first_after_warmup_mb']:.0f} -> {p['last_mb']:.0f} MB, max "
                   f"{p['max_mb']:.0f}, {p['slope_mb_per_h']:+.1f} MB/h" for p in procs)),
        ("RSS beyond import torch + the model (longest-lived process, last)",
         f"{longest['last_mb'] - base:.0f} MB (torch + model: {base:.0f} MB)"
         if longest else "-"),
        ("**bound violations** (must be 0)", f"**{c['bound_violations']}**"),
        ("**double-applied steps** (must be 0)", f"**{c['double_applied_total']}**"),
        ("steps that landed as the operator was SIGKILLed, unreported (the next operator saw "
         "an outside scale)", f"{c['landed_at_crash']}"),
        ("changes nobody explains / right after a watch gap / steps not seen",
         f"{c['unexplained']} / {c['after_watch_gap']} / {c['steps_unseen']}"),
    ]  # fmt: skip
    lines = ["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]
    lines += ["", "Faults:", ""]
    lines += [
        f"* {f['at_s']:.0f} s: {f['what']} ({f['detail']}; {f['took_s']:.1f} s)"
        + ("" if f["ok"] else " **FAILED**")
        for f in res["faults"]
    ]
    m0, m1 = res["machine_start"], res["machine_end"]
    lines += [
        "",
        f"Load average {m0['loadavg'][0]:.1f} at the start, {m1['loadavg'][0]:.1f} at the end "
        f"({m0['cores']} cores).",
    ]
    return "\n".join(lines)


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f} ms"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--policies", type=int, default=1000)
    ap.add_argument("--interval", type=float, default=15.0, help="the policies' interval, s")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", default="out/bench_soak.json")
    ap.add_argument("--md", default="out/bench_soak.md")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="qscale-soak-") as tmp:
        res = run(args, Path(tmp))
    md = markdown(res)
    for path, text in ((args.json, json.dumps(res, indent=2)), (args.md, md + "\n")):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
    print(md)
    c = res["checks"]
    return 1 if c["bound_violations"] or c["double_applied_total"] else 0


if __name__ == "__main__":
    sys.exit(main())
