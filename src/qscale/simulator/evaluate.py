"""Side-by-side evaluation of controllers on the same traffic: table, JSON/CSV and plots.

Every controller meets exactly the same arrivals: one env per (trace, seed), started at the
same window with :func:`qscale.simulator.env.reset_fixed`; a seed changes the arrival noise and
draws the service's start-up delay from the profile's range. Numbers are mean +/- std over
seeds, per trace and summed over traces.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from qscale.simulator import env as sim
from qscale.simulator.rollout import Controller, Metrics, rollout
from qscale.simulator.tracebank import TraceBank

METRICS = (
    ("cost_replica_hours", "cost (replica-h)"),
    ("slo_violation_minutes", "SLO viol. (min)"),
    ("p95_median_s", "p95 median (s)"),
    ("p95_max_s", "p95 max (s)"),
    ("scaling_actions", "scaling actions"),
)


@dataclass(frozen=True)
class EvalProfile:
    """The service every controller is evaluated on (one fixed, documented workload size)."""

    peak_replicas: float = 20.0
    """Pods the traffic's 99th-percentile rate needs at 100% CPU."""
    capacity_rps: float = 50.0
    """Requests/s per pod at 100% CPU."""
    service_time_s: float = 0.1
    """Mean request service time (unloaded p95 = 0.30 s)."""
    startup_delay_s: tuple[float, float] = (30.0, 90.0)
    """Pod start-up delay, drawn per seed from this range."""
    slo_factor: float = 2.0
    """SLO = this x the unloaded p95 (0.60 s with the defaults)."""
    max_replicas_factor: float = 2.5
    """max replicas = ceil(peak x factor): a safety cap (no feature reads it)."""
    noise: bool = True
    """Poisson arrival noise."""
    dt: float = 15.0
    """Decision interval in seconds."""
    cpu_limit_ratio: tuple[float, float] = (1.0, 1.0)
    """CPU limit / request of the pods, drawn per seed (1: request = limit, Guaranteed QoS)."""
    metrics: sim.DomainConfig = field(default_factory=sim.DomainConfig)
    """Where the metric pipeline's ranges (CPU window, lag and noise, scrape lag, ingress vs
    served counter) come from; drawn per seed."""

    def sim_config(self, base: sim.SimConfig | None = None) -> sim.SimConfig:
        base = base or sim.SimConfig()
        dom = sim.DomainConfig(
            capacity_rps=(self.capacity_rps, self.capacity_rps),
            service_time_s=(self.service_time_s, self.service_time_s),
            startup_delay_s=self.startup_delay_s,
            slo_factor=(self.slo_factor, self.slo_factor),
            peak_replicas=(self.peak_replicas, self.peak_replicas),
            amplitude_jitter=0.0,
            max_replicas_factor=(self.max_replicas_factor, self.max_replicas_factor),
            min_replicas=base.domain.min_replicas,
            cpu_limit_ratio=self.cpu_limit_ratio,
            cpu_window_s=self.metrics.cpu_window_s,
            cpu_lag_s=self.metrics.cpu_lag_s,
            cpu_noise=self.metrics.cpu_noise,
            scrape_lag_s=self.metrics.scrape_lag_s,
            ingress_probability=self.metrics.ingress_probability,
        )
        return replace(base, dt=self.dt, noise=self.noise, domain=dom)


concat_params = sim.concat_params


@dataclass(frozen=True)
class Windows:
    """Which part of the bank each env runs: env ``i`` = (trace ``trace[i]``, seed ``seed[i]``)."""

    trace: torch.Tensor
    start: torch.Tensor
    length: torch.Tensor
    seed: torch.Tensor


def build(
    bank: TraceBank,
    profile: EvalProfile,
    seeds: Sequence[int],
    horizon_steps: int | None = None,
    base: sim.SimConfig | None = None,
) -> tuple[sim.EnvParams, Windows]:
    """Params and windows for one env per (seed, trace); windows start at each trace's start."""
    cfg = profile.sim_config(base)
    k = bank.n_traces
    params = concat_params([sim.make_params(bank, k, seed=s, config=cfg) for s in seeds])
    lengths = bank.lengths.cpu()
    if horizon_steps is not None:
        lengths = torch.clamp(lengths, max=horizon_steps)
    win = Windows(
        trace=torch.arange(k).repeat(len(seeds)),
        start=torch.zeros(k * len(seeds), dtype=torch.int64),
        length=lengths.repeat(len(seeds)),
        seed=torch.tensor(seeds).repeat_interleave(k),
    )
    return params, win


def run(
    controller: Controller,
    params: sim.EnvParams,
    win: Windows,
    record: bool = False,
    progress: bool = False,
) -> Metrics:
    state, obs = sim.reset_fixed(params, win.trace, win.start, win.length)
    return rollout(controller, params, state, obs, record=record, progress=progress)


@dataclass
class EvalResult:
    """Everything an evaluation produced; ``rows`` hold one dict per (controller, trace, seed)."""

    rows: list[dict] = field(default_factory=list)
    timelines: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    controllers: dict[str, str] = field(default_factory=dict)

    def summary(self) -> list[dict]:
        """Mean and std over seeds, per (controller, trace) and per controller over all traces
        (per-seed sums over traces)."""
        out = []
        groups: dict[tuple[str, str], list[dict]] = {}
        for r in self.rows:
            groups.setdefault((r["controller"], r["trace"]), []).append(r)
        per_seed: dict[tuple[str, int], list[dict]] = {}
        for r in self.rows:
            per_seed.setdefault((r["controller"], r["seed"]), []).append(r)
        for (ctrl, _), rs in per_seed.items():
            medians = sorted(r["p95_median_s"] for r in rs)
            groups.setdefault((ctrl, "ALL"), []).append(
                {
                    "cost_replica_hours": sum(r["cost_replica_hours"] for r in rs),
                    "slo_violation_minutes": sum(r["slo_violation_minutes"] for r in rs),
                    "p95_median_s": medians[len(medians) // 2],
                    "p95_max_s": max(r["p95_max_s"] for r in rs),
                    "scaling_actions": sum(r["scaling_actions"] for r in rs),
                }
            )
        for (ctrl, trace), rs in groups.items():
            entry: dict = {"controller": ctrl, "trace": trace, "seeds": len(rs)}
            for m, _ in METRICS:
                xs = [float(r[m]) for r in rs]
                mean = sum(xs) / len(xs)
                std = math.sqrt(sum((x - mean) ** 2 for x in xs) / max(1, len(xs) - 1))
                entry[m] = {"mean": mean, "std": std}
            out.append(entry)
        return out


def evaluate(
    controllers: dict[str, Callable[[], Controller]],
    bank: TraceBank,
    profile: EvalProfile,
    seeds: Sequence[int],
    horizon_steps: int | None = None,
    progress: bool = True,
    base: sim.SimConfig | None = None,
    notes: dict[str, str] | None = None,
) -> EvalResult:
    """Run each controller over every (trace, seed) and collect rows and seed-0 timelines."""
    params, win = build(bank, profile, seeds, horizon_steps, base)
    res = EvalResult(controllers=dict(notes or {}))
    for name, make in controllers.items():
        ctrl = make()
        m = run(ctrl, params, win, record=True, progress=progress)
        res.controllers.setdefault(name, describe(ctrl))
        for i in range(params.n_envs):
            row = {
                "controller": name,
                "trace": bank.names[int(win.trace[i])],
                "seed": int(win.seed[i]),
                "steps": int(m.steps[i]),
                "startup_delay_s": float(params.delay_steps[i]) * profile.dt,
            }
            for key, _ in METRICS:
                row[key] = float(getattr(m, key)[i])
            res.rows.append(row)
        assert m.timeline is not None
        first_seed = (win.seed == win.seed[0]).nonzero().squeeze(1)
        res.timelines[name] = {k: v[:, first_seed].cpu() for k, v in m.timeline.items()}
    res.timelines["_meta"] = {
        "length": win.length[: bank.n_traces],
        "slo_s": params.slo_s[: bank.n_traces].cpu(),
    }
    return res


def describe(ctrl: Controller) -> str:
    """A one-line description of a controller's settings for tables and JSON."""
    try:
        d = asdict(ctrl)  # type: ignore[call-overload]
    except TypeError:
        return ctrl.name
    d.pop("name", None)
    d.pop("uses_shield", None)
    return ", ".join(f"{k}={v}" for k, v in d.items() if not k.startswith("_"))


def format_table(summary: list[dict], traces: Sequence[str] | None = None) -> str:
    """A plain-text table: one block per trace (and ALL), one row per controller."""
    order = list(dict.fromkeys(s["trace"] for s in summary))
    if traces is not None:
        order = [t for t in order if t in traces or t == "ALL"]
    if "ALL" in order:
        order = [t for t in order if t != "ALL"] + ["ALL"]
    head = f"{'trace':<22} {'controller':<12}" + "".join(f" {h:>20}" for _, h in METRICS)
    lines = [head, "-" * len(head)]
    for trace in order:
        for s in (s for s in summary if s["trace"] == trace):
            cells = "".join(f" {s[m]['mean']:>11.3f} ± {s[m]['std']:<6.2f}" for m, _ in METRICS)
            lines.append(f"{trace[:22]:<22} {s['controller'][:12]:<12}{cells}")
        lines.append("")
    return "\n".join(lines)


def write_outputs(
    res: EvalResult, summary: list[dict], out_dir: Path, bank: TraceBank, meta: dict
) -> dict[str, Path]:
    """JSON (rows + summary + settings), CSV (rows) and one PNG per trace."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "evaluation.json", "csv": out_dir / "evaluation.csv"}
    with paths["json"].open("w") as fh:
        json.dump(
            {"meta": meta, "controllers": res.controllers, "summary": summary, "rows": res.rows},
            fh,
            indent=2,
        )
    with paths["csv"].open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(res.rows[0].keys()))
        w.writeheader()
        w.writerows(res.rows)
    for i, name in enumerate(bank.names):
        paths[f"plot:{name}"] = plot_trace(res, i, name, out_dir / f"{name}.png", bank.dt)
    return paths


def plot_trace(res: EvalResult, i: int, name: str, path: Path, dt: float) -> Path:
    """Load, replicas and p95/SLO over time for seed 0 of trace ``i``, one line per controller."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = int(res.timelines["_meta"]["length"][i])
    slo = float(res.timelines["_meta"]["slo_s"][i])
    hours = torch.arange(n) * dt / 3600.0
    fig, axes = plt.subplots(3, 1, figsize=(12, 8), sharex=True)
    first = next(k for k in res.timelines if k != "_meta")
    axes[0].plot(hours, res.timelines[first]["rate"][:n, i], lw=0.6, color="black")
    axes[0].set_ylabel("load (req/s)")
    for ctrl, tl in res.timelines.items():
        if ctrl == "_meta":
            continue
        axes[1].plot(hours, tl["replicas"][:n, i], lw=0.8, label=ctrl)
        axes[2].plot(hours, tl["p95_s"][:n, i] / slo, lw=0.6, label=ctrl)
    axes[1].set_ylabel("replicas")
    axes[1].legend(loc="upper right", fontsize=8, ncol=3)
    axes[2].axhline(1.0, color="red", ls="--", lw=0.8)
    axes[2].set_yscale("log")
    axes[2].set_ylabel("p95 / SLO")
    axes[2].set_xlabel("hours")
    fig.suptitle(f"{name} (seed 0)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
