"""Side-by-side evaluation on many windows: tables with confidence intervals, the rule frontier,
JSON/CSV and plots for a decision.

Every controller meets exactly the same arrivals: every series is cut into non-overlapping
windows (24 h by default) and each (window, seed) is one simulated service started with
:func:`qscale.simulator.env.reset_fixed`; a seed changes the arrival noise, the pods' start-up
delay and the metric pipeline (lags, CPU limit/request, served vs ingress counter).

How figures are computed (fixed before any test number was looked at):

* per family (one trace file) and overall, **cost** = replica-hours summed over the family's
  windows, **SLO minutes** = minutes whose p95 exceeded the SLO, likewise; both are means over
  seeds of those per-seed totals. ``±win`` is half the 95 % bootstrap interval across windows
  (windows resampled with replacement, seeds kept with their window), ``±seed`` half the 95 %
  t-interval across the per-seed totals;
* **dropped** = requests dropped by timeout / requests that arrived; **p99** = the 99th
  percentile of the run's latency histogram (the app's buckets, as Grafana would show it);
* the **frontier ratio** (:mod:`qscale.simulator.frontier`) of each controller against the
  lower convex hull of the HPA and request-rate settings run on the same windows and seeds,
  the settings chosen on the validation split (ex post on a split that contains it), and
  beside it the ex-post hull, the HPA-only hull and the hull with the predictive peer. For the
  learned policy: a two-stage bootstrap (windows, then seeds within each window) gives its
  interval and the share of resamples (and of seeds) in which some setting dominates it on SLO
  minutes, cost and dropped requests; "dominated beyond the intervals" names a setting that
  does so in at least 97.5 % of resamples;
* **rule-tuned** is the HPA or rate setting with the best mean episode return on the validation
  split, the rule a team would deploy after tuning it; a row tuned on windows it is evaluated
  on is marked IN SAMPLE.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch

from qscale import batching
from qscale.actions import DECISION_INTERVAL_S
from qscale.service import histogram_quantile
from qscale.simulator import env as sim
from qscale.simulator import frontier as fr
from qscale.simulator.baselines import OracleController
from qscale.simulator.rollout import Controller, Metrics, rollout
from qscale.simulator.splits import shared_trace_files
from qscale.simulator.tracebank import TraceBank


@dataclass(frozen=True)
class EvalProfile:
    """The service every controller is evaluated on (one documented workload size)."""

    peak_replicas: float = 20.0
    """Pods a trace's reference rate (its p99 over the whole series) needs at 100 % CPU."""
    capacity_rps: float = 50.0
    """Requests/s per pod at its CPU limit."""
    service_time_s: float = 0.1
    """Mean request service time (unloaded p95 = 0.30 s)."""
    startup_delay_s: tuple[float, float] = (30.0, 90.0)
    """Pod start-up delay, drawn per (window, seed) from this range."""
    slo_factor: float = 2.0
    """SLO = this x the unloaded p95 (0.60 s with the defaults)."""
    max_replicas_factor: float = 2.5
    """max replicas = ceil(peak x factor): a safety cap (no feature reads it)."""
    noise: bool = True
    """Poisson arrival noise."""
    dt: float = DECISION_INTERVAL_S
    """Decision interval in seconds."""
    cpu_limit_ratio: tuple[float, float] = (1.0, 4.0)
    """CPU limit / request of the pods, drawn per (window, seed)."""
    metrics: sim.DomainConfig = field(default_factory=sim.DomainConfig)
    """Where the metric pipeline's ranges (CPU window, lag and noise, scrape lag, ingress vs
    served counter) come from; drawn per (window, seed)."""
    capacity_declared: bool = True
    """The policy declares the pods' true capacity (the rate rules are handed it too); False:
    it declares none, and the model's rate actions are unavailable."""
    capacity_estimated: bool = False
    """With none declared, the capacity is estimated from the metrics instead
    (:func:`qscale.features.estimate_capacity`)."""
    slo_priority: float = 1.0
    """The SLO priority the model's policy sets (its input; no rule reads it). Returns are
    scored at the default trade-off whatever it is (:attr:`rollout.Metrics.episode_return`)."""

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
            capacity_declared_probability=1.0 if self.capacity_declared else 0.0,
            capacity_estimated=self.capacity_estimated,
            slo_priority=(self.slo_priority, self.slo_priority),
        )
        return replace(base, dt=self.dt, noise=self.noise, domain=dom)


@dataclass(frozen=True)
class Windows:
    """Which part of the bank each env runs: env ``i`` = (window ``unit[i]``, seed ``seed[i]``)."""

    trace: torch.Tensor
    start: torch.Tensor
    length: torch.Tensor
    seed: torch.Tensor
    unit: torch.Tensor
    """Index of the window (the unit of resampling), ``0 .. n_units - 1``."""
    unit_trace: torch.Tensor
    """Trace of each window."""

    @property
    def n_units(self) -> int:
        return int(self.unit_trace.shape[0])

    def triple(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.trace, self.start, self.length

    @classmethod
    def fixed(
        cls, trace: torch.Tensor, start: torch.Tensor, length: torch.Tensor, seed: int
    ) -> Windows:
        """Given windows (one env each, its own unit) of services drawn with one ``seed``."""
        n = int(trace.shape[0])
        return cls(
            trace=trace, start=start, length=length, seed=torch.full((n,), seed),
            unit=torch.arange(n), unit_trace=trace,
        )  # fmt: skip


def eval_windows(
    bank: TraceBank, window_steps: int, horizon_steps: int | None = None
) -> tuple[list[int], list[int], list[int]]:
    """All non-overlapping windows of every trace: ``(trace, start, length)`` lists. A trace
    shorter than one window is one window of its whole length; ``horizon_steps`` keeps only
    each trace's first that many steps."""
    if window_steps < 1:
        raise ValueError("the window must be at least one step")
    tr, st, ln = [], [], []
    for k, n in enumerate(bank.lengths.tolist()):
        if horizon_steps is not None:
            n = min(n, horizon_steps)
        count = max(1, n // window_steps)
        for i in range(count):
            tr.append(k)
            st.append(i * window_steps)
            ln.append(min(window_steps, n))
    return tr, st, ln


def build(
    bank: TraceBank,
    profile: EvalProfile,
    seeds: Sequence[int],
    window_steps: int,
    horizon_steps: int | None = None,
    base: sim.SimConfig | None = None,
) -> tuple[sim.EnvParams, Windows]:
    """Params and windows for one env per (seed, window); each seed draws its own services."""
    cfg = profile.sim_config(base)
    tr, st, ln = eval_windows(bank, window_steps, horizon_steps)
    w = len(tr)
    params = batching.cat([sim.make_params(bank, w, seed=s, config=cfg) for s in seeds])
    s = len(seeds)
    win = Windows(
        trace=torch.tensor(tr).repeat(s),
        start=torch.tensor(st).repeat(s),
        length=torch.tensor(ln).repeat(s),
        seed=torch.tensor(list(seeds)).repeat_interleave(w),
        unit=torch.arange(w).repeat(s),
        unit_trace=torch.tensor(tr),
    )
    return params, win


def run(
    controller: Controller,
    params: sim.EnvParams,
    win: Windows,
    record: bool = False,
    progress: bool = False,
) -> Metrics:
    state, obs = sim.reset_fixed(params, *win.triple())
    return rollout(controller, params, state, obs, record=record, progress=progress)


def subset(params: sim.EnvParams, win: Windows, ids: torch.Tensor) -> tuple[sim.EnvParams, Windows]:
    """The envs ``ids`` only (e.g. one window per trace, for timelines)."""
    p = batching.select(params, ids)
    w = replace(
        win, trace=win.trace[ids], start=win.start[ids], length=win.length[ids], seed=win.seed[ids],
        unit=win.unit[ids],
    )  # fmt: skip
    return p, w


def describe(ctrl: object) -> dict:
    """A controller's settings as plain JSON (not a Python repr)."""
    if not is_dataclass(ctrl):
        return {"name": getattr(ctrl, "name", type(ctrl).__name__)}
    out = {}
    for k, v in asdict(ctrl).items():  # type: ignore[call-overload]
        if k.startswith("_") or k in ("uses_shield", "needs_obs"):
            continue
        out[k] = v.tolist() if isinstance(v, torch.Tensor) else v
    return json.loads(json.dumps(out, default=str))


# --- results ---------------------------------------------------------------------------------

COLUMNS = (
    ("cost", "cost (replica-h)"),
    ("slo", "SLO viol. (min)"),
    ("actions", "actions"),
    ("dropped_pct", "dropped %"),
    ("p99_s", "p99 (s)"),
    ("ratio", "frontier ratio"),
)


@dataclass
class Evaluation:
    families: list[str]
    unit_family: np.ndarray
    seeds: list[int]
    env_unit: np.ndarray
    env_seed: np.ndarray
    per_env: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    """Per controller: per-env metrics (``frontier.STORED_KEYS``)."""
    controllers: dict[str, dict] = field(default_factory=dict)
    rules: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    """Frontier grid: per-env metrics per rule label (empty without a frontier)."""
    predictive_labels: set[str] = field(default_factory=set)
    timelines: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    timeline_meta: dict[str, torch.Tensor] = field(default_factory=dict)
    bootstrap: int = 200
    chosen: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    """Per frontier of :data:`FRONTIERS` that is chosen on validation: per family the settings
    that may be on it (:func:`frontier.pareto_labels` of the validation split)."""

    @property
    def n_units(self) -> int:
        return len(self.unit_family)

    def add(self, name: str, m: Metrics, description: dict) -> None:
        self.per_env[name] = fr._metrics_of(m)
        self.controllers[name] = description

    def means(self, name: str) -> dict[str, float]:
        """Means over envs of ``name``'s cost and SLO minutes, and ``score``, its mean episode
        return (the trainer's validation numbers)."""
        m = self.per_env[name]
        return {
            "cost_replica_hours": float(torch.from_numpy(m["cost_replica_hours"]).mean()),
            "slo_violation_minutes": float(torch.from_numpy(m["slo_violation_minutes"]).mean()),
            "score": float(torch.from_numpy(m["episode_return"]).mean()),
        }

    def units(self, metrics: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return fr.unit_totals(metrics, self.env_unit, self.n_units, len(self.seeds))

    def frontier_rules(
        self, with_predictive: bool = False, kinds: Sequence[str] = ("hpa", "rate")
    ) -> dict[str, dict[str, np.ndarray]]:
        """Per-unit totals of the grid's settings of ``kinds`` (and the predictive peer's)."""
        keep = {*kinds, *(("predictive",) if with_predictive else ())}
        return {label: self.units(v) for label, v in self.rules.items() if label.split()[0] in keep}

    def fronts(self, name: str) -> dict[str, fr.FamilyFrontier]:
        """The frontiers of :data:`FRONTIERS` ``name``, per family and ``ALL``."""
        kinds, predictive, use_chosen = FRONTIERS[name]
        chosen = self.chosen.get(name) if use_chosen else None
        return fr.family_frontiers(
            self.frontier_rules(predictive, kinds), self.unit_family, self.families, chosen
        )

    @property
    def main_frontier(self) -> str:
        """``frontier`` (settings chosen on validation) when there is a choice, else ``ex_post``."""
        return "frontier" if "frontier" in self.chosen else "ex_post"

    def verdicts(self, name: str) -> dict[str, fr.Verdict]:
        """How sure controller ``name``'s place against the main frontier is (bootstrap of
        windows and seeds, and per seed)."""
        kinds, _, _ = FRONTIERS[self.main_frontier]
        rules = {
            k: fr.cells(v, self.env_unit, self.env_seed, self.n_units)
            for k, v in self.rules.items()
            if k.split()[0] in kinds
        }
        policy = fr.cells(self.per_env[name], self.env_unit, self.env_seed, self.n_units)
        return fr.verdicts(
            rules, policy, self.unit_family, self.families, self.chosen.get("frontier"),
            n=self.bootstrap,
        )  # fmt: skip

    def summary(self) -> list[dict]:
        """One row per (family or ALL, controller); see the module docstring for the figures."""
        fronts = {}
        if self.rules:
            fronts = {k: self.fronts(k) for k in FRONTIERS if self._has_frontier(k)}
        judged = {}
        if self.rules and self.bootstrap > 0:
            judged = {n: self.verdicts(n) for n in self.per_env if n in JUDGED}
        rows = []
        for fam in [*self.families, "ALL"]:
            rng = np.random.default_rng(0)
            in_fam = (
                np.ones(self.n_units, bool)
                if fam == "ALL"
                else self.unit_family == self.families.index(fam)
            )
            env_in = in_fam[self.env_unit]
            for name, metrics in self.per_env.items():
                row = self._row(fam, name, metrics, in_fam, env_in, rng)
                for kind, ff in fronts.items():
                    place = ff[fam].place(row["slo"], row["cost"], row["dropped"])
                    if kind == self.main_frontier:
                        row.update({f"frontier_{k}": v for k, v in place.items()})
                        row["ratio"] = place["ratio"]
                    else:
                        row[f"ratio_{kind}"] = place["ratio"]
                if name in judged:
                    row.update(_verdict_fields(judged[name][fam]))
                rows.append(row)
        return rows

    def _has_frontier(self, kind: str) -> bool:
        if kind == "frontier" and kind not in self.chosen:
            return False  # no validation choice: the yardstick is ex_post
        return not FRONTIERS[kind][1] or bool(self.predictive_labels)

    def _row(self, fam, name, metrics, in_fam, env_in, rng) -> dict:
        u = self.units(metrics)
        b = self.bootstrap
        return {
            "family": fam,
            "controller": name,
            "windows": int(in_fam.sum()),
            "seeds": len(self.seeds),
            "cost": float(u["cost_replica_hours"][in_fam].sum()),
            "cost_ci_windows": _boot_half(u["cost_replica_hours"][in_fam], rng, b),
            "cost_ci_seeds": _seed_half(metrics["cost_replica_hours"], env_in, self.env_seed),
            "slo": float(u["slo_violation_minutes"][in_fam].sum()),
            "slo_ci_windows": _boot_half(u["slo_violation_minutes"][in_fam], rng, b),
            "slo_ci_seeds": _seed_half(metrics["slo_violation_minutes"], env_in, self.env_seed),
            "actions": float(u["scaling_actions"][in_fam].sum()),
            "return": float(u["episode_return"][in_fam].sum()),
            "dropped": float(u["dropped_requests"][in_fam].sum()),
            "dropped_pct": 100.0
            * float(metrics["dropped_requests"][env_in].sum())
            / max(float(metrics["arrivals"][env_in].sum()), 1e-9),
            "p99_s": _p99(metrics["latency_counts"][env_in]),
        }

    def frontier_points(self, fam: str) -> dict:
        """Rule points and the main frontier's hull of one family, for plots and JSON."""
        every = fr.family_frontiers(self.frontier_rules(True), self.unit_family, self.families)
        main = self.fronts(self.main_frontier)[fam]
        return {
            "points": [asdict(p) for p in every[fam].points],
            "frontier": [asdict(p) for p in main.front],
            "frontier_kind": self.main_frontier,
        }


FRONTIERS: dict[str, tuple[tuple[str, ...], bool, bool]] = {
    "frontier": (("hpa", "rate"), False, True),
    "ex_post": (("hpa", "rate"), False, False),
    "cpu_only": (("hpa",), False, True),
    "with_predictive": (("hpa", "rate"), True, False),
}
"""The frontiers a row is placed against: (rule kinds, with the predictive peer, settings
chosen on validation when a choice was made). ``frontier`` is the yardstick (``ex_post`` when
no validation choice was made); ``ex_post`` takes every setting on the evaluated windows
themselves; ``cpu_only`` is the HPA alone (no rule handed the pods' true capacity)."""

JUDGED = ("dqn",)
"""Rows whose frontier verdict gets the bootstrap (it costs a few seconds per row)."""


def _verdict_fields(v: fr.Verdict) -> dict:
    return {
        "ratio_ci": list(v.ratio_ci) if v.ratio_ci is not None else None,
        "outside_share": v.outside_share,
        "dominated_share": v.dominated_share,
        "dominated_seeds": list(v.dominated_seeds),
        "dominated_by": v.dominated_by,
    }


def _boot_half(values: np.ndarray, rng: np.random.Generator, n: int) -> float:
    """Half-width of the 95 % bootstrap interval of the sum of ``values`` (resampled units)."""
    if values.size < 2 or n <= 0:
        return float("nan")
    idx = rng.integers(0, values.size, size=(n, values.size))
    sums = values[idx].sum(axis=1)
    lo, hi = np.percentile(sums, [2.5, 97.5])
    return float(hi - lo) / 2.0


_T975 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}


def _seed_half(per_env: np.ndarray, env_in: np.ndarray, env_seed: np.ndarray) -> float:
    """Half-width of the 95 % t-interval of the mean of the per-seed totals."""
    seeds = np.unique(env_seed)
    if seeds.size < 2:
        return float("nan")
    totals = np.array([per_env[env_in & (env_seed == s)].sum() for s in seeds])
    t = _T975.get(seeds.size - 1, 1.96)
    return float(t * totals.std(ddof=1) / math.sqrt(seeds.size))


def _p99(counts: np.ndarray) -> float:
    if counts.size == 0:
        return float("nan")
    total = torch.tensor(counts.sum(axis=0)[None, :])
    from qscale.service import DEFAULT_BUCKETS

    q = histogram_quantile(
        0.99, torch.cumsum(total, dim=1), torch.tensor(DEFAULT_BUCKETS, dtype=total.dtype)
    )
    return float(q[0])


def _frontier_notes(ev: Evaluation, rows: list[dict], grid: Sequence[fr.Rule]) -> list[str]:
    """How the frontier was chosen, and the oracle at the model's SLO minutes."""
    if not grid:
        return []
    out = [
        "frontier: the lower convex hull of the HPA and request-rate settings' points; "
        + (
            "settings chosen on the validation split (each family's validation Pareto front), "
            "their points on these windows"
            if ev.main_frontier == "frontier"
            else "every setting, chosen on these windows themselves (ex post)"
        )
    ]
    by = {(r["family"], r["controller"]): r for r in rows}
    d, o = by.get(("ALL", "dqn")), by.get(("ALL", "oracle"))
    if d is not None and o is not None and d.get("frontier_frontier_cost"):
        out.append(
            f"oracle (perfect foresight) at the model's SLO minutes: "
            f"{o['cost'] / d['frontier_frontier_cost']:.2f}x the frontier's cost there "
            f"(with {o['slo']:.0f} instead of {d['slo']:.0f} SLO minutes)"
        )
    return out


def format_table(rows: list[dict], families: Sequence[str] | None = None) -> str:
    """One block per family (and ALL), one row per controller."""
    fams = list(dict.fromkeys(r["family"] for r in rows))
    if families is not None:
        fams = [f for f in fams if f in families or f == "ALL"]
    fams = [f for f in fams if f != "ALL"] + (["ALL"] if "ALL" in fams else [])
    head = (
        f"{'controller':<12} {'cost (replica-h)':>16} {'±win':>7} {'±seed':>7} {'SLO (min)':>10}"
        f" {'±win':>7} {'±seed':>7} {'actions':>8} {'dropped %':>9} {'p99 (s)':>8} {'frontier':>9}"
    )
    out = []
    for fam in fams:
        rs = [r for r in rows if r["family"] == fam]
        if not rs:
            continue
        out.append(f"{fam}  ({rs[0]['windows']} windows x {rs[0]['seeds']} seeds)")
        out.append(head)
        out.append("-" * len(head))
        for r in rs:
            out.append(
                f"{r['controller'][:12]:<12} {r['cost']:16.1f} {_f(r['cost_ci_windows'])} "
                f"{_f(r['cost_ci_seeds'])} {r['slo']:10.1f} {_f(r['slo_ci_windows'])} "
                f"{_f(r['slo_ci_seeds'])} {r['actions']:8.0f} {r['dropped_pct']:9.3f} "
                f"{_p99_text(r['p99_s'])} {_ratio_cell(r):>9}"
            )
        dqn = next((r for r in rs if r["controller"] == "dqn" and "frontier_position" in r), None)
        if dqn is not None:
            out.append("  " + frontier_verdict(dqn))
        out.append("")
    return "\n".join(out)


def _ratio_cell(r: dict) -> str:
    if "frontier_position" not in r:
        return "-"
    if r["ratio"] is None:
        return {"left": "out-left", "right": "out-right"}.get(r["frontier_position"], "-")
    return f"{r['ratio']:.2f}"


def frontier_verdict(row: dict) -> str:
    """One line on a row's place against the frontier (see :mod:`qscale.simulator.frontier`)."""
    name = row["controller"]
    pos = row["frontier_position"]
    if row["ratio"] is None:
        side = "fewer" if pos == "left" else "more"
        head = (
            f"{name}: outside the frontier ({side} SLO minutes than every setting on it), no ratio"
        )
    else:
        ci = row.get("ratio_ci")
        ci_txt = f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""
        head = (
            f"{name} frontier ratio {row['ratio']:.2f}{ci_txt} "
            f"(hull cost {row['frontier_frontier_cost']:.1f} replica-h at its SLO minutes)"
        )
    parts = [head]
    if row.get("dominated_by"):
        parts.append(f"DOMINATED beyond the intervals by {row['dominated_by']}")
    elif "dominated_share" in row:
        parts.append("not dominated beyond the intervals")
    else:
        parts.append("dominated (point estimate)" if row["frontier_dominated"] else "not dominated")
    if "dominated_share" in row:
        hits, seeds = row["dominated_seeds"]
        parts.append(
            f"some setting dominates in {100 * row['dominated_share']:.0f} % of resamples and "
            f"{hits}/{seeds} seeds"
        )
        if row.get("outside_share"):
            parts.append(f"outside the hull in {100 * row['outside_share']:.0f} % of resamples")
    for key, what in (
        ("ratio_ex_post", "ex post (every setting, chosen on these windows)"),
        ("ratio_cpu_only", "HPA only (no rule given the pods' capacity)"),
        ("ratio_with_predictive", "with the predictive peer"),
    ):
        if key in row:
            v = row[key]
            parts.append(f"{what}: {'outside' if v is None else format(v, '.2f')}")
    return "; ".join(parts)


def _p99_text(x: float) -> str:
    from qscale.service import DEFAULT_BUCKETS

    if math.isfinite(x) and x >= DEFAULT_BUCKETS[-1]:
        return f"{'>' + format(DEFAULT_BUCKETS[-1], 'g'):>8}"  # beyond the largest bucket
    return f"{x:8.2f}"


def _f(x: float) -> str:
    return f"{x:7.1f}" if x is not None and math.isfinite(x) else f"{'-':>7}"


def write_outputs(
    ev: Evaluation, rows: list[dict], out_dir: Path, bank: TraceBank, meta: dict, dt: float
) -> dict[str, Path]:
    """evaluation.json (settings, rows, frontier points), evaluation.csv (one row per env and
    controller), and the plots."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "evaluation.json", "csv": out_dir / "evaluation.csv"}
    fronts = {f: ev.frontier_points(f) for f in [*ev.families, "ALL"]} if ev.rules else {}
    doc = {"meta": meta, "controllers": ev.controllers, "summary": rows, "frontier": fronts}
    paths["json"].write_text(json.dumps(doc, indent=2, default=_jsonable) + "\n")
    with paths["csv"].open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["controller", "family", "window", "seed", *fr.METRIC_KEYS])
        for name, metrics in ev.per_env.items():
            for i in range(len(ev.env_unit)):
                u = int(ev.env_unit[i])
                w.writerow(
                    [name, ev.families[int(ev.unit_family[u])], u, int(ev.env_seed[i])]
                    + [f"{metrics[k][i]:.6g}" for k in fr.METRIC_KEYS]
                )
    from qscale.simulator import plots

    if ev.rules:
        for fam in [*ev.families, "ALL"]:
            paths[f"frontier:{fam}"] = plots.frontier_plot(
                ev, rows, fam, out_dir / f"frontier_{fam}.png"
            )
    for i, name in enumerate(bank.names):
        if ev.timelines:
            paths[f"timeline:{name}"] = plots.timeline_plot(
                ev, i, name, out_dir / f"timeline_{name}.png", dt
            )
    return paths


def _jsonable(x: object) -> object:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray | torch.Tensor):
        return x.tolist()
    if isinstance(x, set):
        return sorted(x)
    return str(x)


def evaluate(
    controllers: Mapping[str, Callable[[], Controller] | fr.Rule],
    params: sim.EnvParams,
    windows: Windows,
    *,
    rules: Sequence[fr.Rule] = (),
    cache_parts: dict | None = None,
    timelines: bool = True,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    bootstrap: int = 200,
) -> Evaluation:
    """Run every controller (and the rule grid) over every (window, seed): the one evaluation.

    ``params`` and ``windows`` are the services and the (window, seed) pairs -- :func:`build`
    makes them from a profile, seeds and a window length; the trainer's validation set is
    :meth:`Windows.fixed`. A controller is a factory, or a grid :class:`~frontier.Rule` whose
    numbers its row shows (so a baseline in the grid is not run twice). ``rules`` is the rule
    frontier; ``cache_parts`` keys its cache (``None``: no cache). Timelines are recorded for
    the first window of each trace at the first seed.
    """
    seeds = list(dict.fromkeys(windows.seed.tolist()))
    ev = Evaluation(
        families=list(params.bank.names),
        unit_family=windows.unit_trace.numpy(),
        seeds=seeds,
        env_unit=windows.unit.numpy(),
        env_seed=windows.seed.numpy(),
        bootstrap=bootstrap,
    )
    rule_rows = {n: c for n, c in controllers.items() if isinstance(c, fr.Rule)}
    grid = list(dict.fromkeys([*rules, *rule_rows.values()]))
    res: dict[fr.Rule, dict[str, np.ndarray]] = {}
    if grid:
        res, hit = fr.cached_rules(
            grid, params, windows.triple(), cache_parts or {}, log, cache_parts is not None
        )
        if log is not None:
            log(f"rule grid: {len(grid)} settings ({'from the cache' if hit else 'run now'})")
        # Every rule setting run counts on the frontier, the rows' own settings included.
        ev.rules = {r.label: res[r] for r in grid}
        ev.predictive_labels = {r.label for r in grid if r.kind == "predictive"}
    if timelines:
        first = [
            int(torch.nonzero((windows.trace == k) & (windows.seed == seeds[0]))[0])
            for k in range(params.bank.n_traces)
        ]
        tl_params, tl_win = subset(params, windows, torch.tensor(first))
    for name, entry in controllers.items():
        make = partial(_rule_controller, entry, name) if isinstance(entry, fr.Rule) else entry
        ctrl = make()
        if isinstance(entry, fr.Rule):
            ev.per_env[name] = res[entry]
            ev.controllers[name] = {"rule": entry.label, **describe(ctrl)}
        else:
            m = run(ctrl, params, windows, progress=progress)
            ev.add(name, m, describe(ctrl))
        if timelines:
            tl = run(make(), tl_params, tl_win, record=True)
            assert tl.timeline is not None
            ev.timelines[name] = {k: v.cpu() for k, v in tl.timeline.items()}
    if timelines:
        ev.timeline_meta = {
            "length": tl_win.length,
            "slo_s": tl_params.slo_s,
            "capacity": tl_params.capacity,
            "max_replicas": tl_params.max_replicas,
            "min_replicas": tl_params.min_replicas,
        }
    return ev


def _rule_controller(rule: fr.Rule, name: str) -> Controller:
    ctrl = fr.make_controller(rule)
    ctrl.name = name
    return ctrl


# --- `qscale evaluate` (and the release's evaluation): the named controllers on trace files ---

BASELINES = ("hpa", "hpa-tuned", "rule-tuned", "keda", "predictive", "oracle")
"""The baseline rows: the default rules of :data:`frontier.DEFAULT_RULES`, the tuned HPA of
:data:`frontier.TUNED_RULE`, the deployable tuned rule of :data:`frontier.REWARD_BEST_RULE`
and the oracle; ``dqn`` is the policy's row."""

IN_SAMPLE_SPLITS = ("val", "all")
"""Evaluated splits that contain the validation split: there the frontier is taken ex post and
the ``rule-tuned`` row is marked as tuned on windows it is evaluated on."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fingerprint(path: Path) -> list[str]:
    return [path.stem, sha256_file(path)]


def rules_profile(profile: EvalProfile) -> dict:
    """The profile as the rule grid's cache key holds it: without ``capacity_declared``,
    ``capacity_estimated`` and ``slo_priority``, which no rule reads (the rate rules are given
    the true per-pod capacity, the HPA reads CPU, and returns are scored at the default
    trade-off), so an evaluation without a declared capacity or at another priority reuses the
    grid of one with it."""
    mine = ("capacity_declared", "capacity_estimated", "slo_priority")
    out = {k: v for k, v in asdict(profile).items() if k not in mine}
    out["metrics"] = {k: v for k, v in out["metrics"].items() if k not in mine}
    return out


def _spread(win: Windows, per_trace: int) -> torch.Tensor:
    """Up to ``per_trace`` windows of each trace, evenly spaced, all seeds."""
    keep = []
    for k in torch.unique(win.unit_trace).tolist():
        units = torch.nonzero(win.unit_trace == k).squeeze(1)
        pick = units[torch.linspace(0, len(units) - 1, min(per_trace, len(units))).round().long()]
        keep += [torch.nonzero(win.unit == u).squeeze(1) for u in pick.tolist()]
    return torch.cat(keep)


def tune_hpa(
    paths: Sequence[Path],
    profile: EvalProfile,
    device: torch.device | str = "cpu",
    use_cache: bool = True,
    log: Callable[[str], None] | None = None,
) -> tuple[fr.Rule, dict]:
    """The tuned HPA of :data:`qscale.simulator.frontier.TUNED_RULE`: the HPA grid on the
    training split (the shared catalog's when it is there, else ``paths``'), cached. Returns the
    rule and a record of how it was chosen."""
    shared = shared_trace_files()
    tune_paths = shared or list(paths)
    bank = TraceBank.from_files(tune_paths, split="train", dt=profile.dt, device=device)
    day = int(24 * 3600 / profile.dt)
    window = min(day, int(bank.lengths.min()))
    params, win = build(bank, profile, [1000, 1001], window)
    keep = _spread(win, per_trace=4)
    params, win = subset(params, win, keep)
    parts = {
        "purpose": "tuning",
        "traces": [_fingerprint(p) for p in tune_paths],
        "profile": rules_profile(profile),
        "window": window,
    }
    res, hit = fr.cached_rules(fr.hpa_grid(), params, win.triple(), parts, log, use_cache)
    best = fr.pick_tuned(res)
    info = {
        "rule": fr.TUNED_RULE,
        "chosen": best.label,
        "tuned_on": f"{'shared traces' if shared else 'the evaluated traces'}, split=train, "
        f"{len(bank.names)} traces, {int(keep.numel() // 2)} windows x 2 seeds",
        "from_cache": hit,
    }
    return best, info


def choose_on_validation(
    traces: Sequence[Path],
    profile: EvalProfile,
    seeds: Sequence[int],
    window: int,
    horizon: int | None,
    device: torch.device | str = "cpu",
    use_cache: bool = True,
    log: Callable[[str], None] | None = None,
) -> tuple[dict[str, dict[str, list[str]]], fr.Rule, dict]:
    """The rule grid on the validation split of ``traces`` (same profile, seeds and windows as
    the evaluation; cached): per frontier of :data:`FRONTIERS` the settings each family's
    frontier may use (its validation Pareto front; a family with no validation data, e.g. a
    held-out series, may use every setting chosen for any family), the deployable tuned rule
    of :data:`frontier.REWARD_BEST_RULE`, and a record of the choice."""
    from qscale.simulator.splits import HELDOUT_SERIES

    paths = [p for p in traces if Path(p).stem not in HELDOUT_SERIES]
    if not paths:
        raise ValueError("no trace has a validation split to choose the frontier on")
    bank = TraceBank.from_files(paths, split="val", dt=profile.dt, device=device)
    params, win = build(bank, profile, seeds, window, horizon)
    grid = [r for r in fr.rule_grid(predictive=False)]
    parts = {
        "purpose": "validation choice",
        "traces": [_fingerprint(Path(p)) for p in paths],
        "profile": rules_profile(profile),
        "seeds": len(seeds),
        "window": window,
        "horizon": horizon,
    }
    res, hit = fr.cached_rules(grid, params, win.triple(), parts, log, use_cache)
    units = {
        r.label: fr.unit_totals(v, win.unit.numpy(), win.n_units, len(seeds))
        for r, v in res.items()
    }
    fams = list(bank.names)
    chosen: dict[str, dict[str, list[str]]] = {}
    for name in ("frontier", "cpu_only"):
        kinds = FRONTIERS[name][0]
        sub = {k: v for k, v in units.items() if k.split()[0] in kinds}
        picked = fr.pareto_labels(fr.family_frontiers(sub, win.unit_trace.numpy(), fams))
        union = sorted({lab for labels in picked.values() for lab in labels})
        for t in traces:  # a family the validation split lacks
            picked.setdefault(Path(t).stem, union)
        chosen[name] = picked
    best = fr.pick_reward_best(res)
    info = {
        "rule": fr.REWARD_BEST_RULE,
        "chosen": best.label,
        "frontier_settings": {f: len(v) for f, v in chosen["frontier"].items()},
        "validation": f"{len(paths)} traces, {win.n_units} windows x {len(seeds)} seeds",
        "from_cache": hit,
    }
    return chosen, best, info


@dataclass(frozen=True)
class EvalPlan:
    """What ``qscale evaluate`` compares, on what: everything but the model and the machine."""

    traces: tuple[Path, ...]
    split: str
    seeds: tuple[int, ...]
    controllers: tuple[str, ...]
    """Row names: ``dqn`` (the model) and any of :data:`BASELINES`."""
    window_hours: float = 24.0
    horizon_hours: float | None = None
    """Only the first this-many hours of each trace (``None``: all of it)."""
    profile: EvalProfile = field(default_factory=EvalProfile)
    frontier: bool = True
    """Run the rule frontier."""
    bootstrap: int = 200
    cache: bool = True
    """Cache the rule grids (tuning and frontier)."""

    def steps(self, hours: float | None) -> int | None:
        return None if hours is None else int(hours * 3600 / self.profile.dt)


@dataclass
class Report:
    """An evaluation with its table and settings, as ``qscale evaluate`` prints and writes it."""

    evaluation: Evaluation
    rows: list[dict]
    """:meth:`Evaluation.summary`."""
    text: str
    """The table and its notes."""
    meta: dict
    bank: TraceBank
    dt: float

    @property
    def doc(self) -> dict:
        """The record a model's manifest keeps of its evaluation."""
        return {"meta": self.meta, "summary": self.rows, "table": self.text}

    def write(self, out_dir: Path) -> dict[str, Path]:
        """evaluation.json, evaluation.csv and the plots (see :func:`write_outputs`)."""
        return write_outputs(self.evaluation, self.rows, out_dir, self.bank, self.meta, self.dt)


def compare(
    plan: EvalPlan,
    bank: TraceBank,
    device: torch.device,
    dqn: Callable[[], Controller] | None = None,
    model: dict | None = None,
    *,
    command: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    started: float | None = None,
) -> Report:
    """:func:`evaluate` of the plan's named controllers on ``bank`` (the plan's traces and
    split, loaded on ``device``) with the rule frontier: ``qscale evaluate``'s table, frontier
    and plots and the release's evaluation all come from here. ``dqn`` makes the policy's
    controller and ``model`` is its record in the settings; ``started`` (a ``perf_counter``)
    dates the wall time from the caller's start."""
    t0 = time.perf_counter() if started is None else started
    profile = plan.profile
    names = list(plan.controllers)
    window = plan.steps(plan.window_hours)
    horizon = plan.steps(plan.horizon_hours)
    controllers: dict[str, Callable[[], Controller] | fr.Rule] = {}
    tuned, tuned_info, choice, best, best_info = None, None, None, None, None
    in_sample: dict[str, str] = {}
    if "hpa-tuned" in names:
        if log is not None:
            log("tuning the HPA on the training split (cached after the first run) ...")
        tuned, tuned_info = tune_hpa(plan.traces, profile, device, plan.cache, log)
        if not shared_trace_files() and plan.split in ("train", "all"):
            in_sample["hpa-tuned"] = "tuned on the training split of these traces"
    out_of_sample = plan.split not in IN_SAMPLE_SPLITS
    if "rule-tuned" in names or (plan.frontier and out_of_sample):
        if log is not None:
            log("choosing the frontier's settings and the tuned rule on the validation split ...")
        choice, best, best_info = choose_on_validation(
            plan.traces, profile, plan.seeds, window or 1, horizon, device, plan.cache, log
        )
        if not out_of_sample:
            in_sample["rule-tuned"] = "tuned on the validation split, part of these windows"
    for name in names:
        if name == "dqn":
            if dqn is None:
                raise ValueError("the dqn row needs a model")
            controllers[name] = dqn
        elif name == "oracle":
            controllers[name] = OracleController
        elif name == "hpa-tuned" and tuned is not None:
            controllers[name] = tuned
        elif name == "rule-tuned" and best is not None:
            controllers[name] = best
        elif name in fr.DEFAULT_RULES:
            controllers[name] = fr.DEFAULT_RULES[name]
        else:
            raise ValueError(f"unknown controller {name!r}")
    grid = fr.rule_grid() if plan.frontier else []
    cache_parts = None
    if plan.cache:
        cache_parts = {
            "purpose": "frontier",
            "traces": [_fingerprint(p) for p in plan.traces],
            "split": plan.split,
            "profile": rules_profile(profile),
            "seeds": len(plan.seeds),
            "window": window,
            "horizon": horizon,
        }
    if grid and log is not None:
        log(
            f"the rule frontier: {len(grid)} settings on every window "
            "(cached after the first run) ..."
        )
    params, win = build(bank, profile, plan.seeds, window or 1, horizon)
    # Without the frontier the grid is the rows' own rules, default ones first (as always).
    rows_first = [r for n, r in fr.DEFAULT_RULES.items() if n in names]
    rows_first += [r for r in (tuned, best) if r is not None]
    ev = evaluate(
        controllers, params, win, rules=grid or rows_first, cache_parts=cache_parts,
        progress=progress, log=log, bootstrap=plan.bootstrap,
    )  # fmt: skip
    if choice is not None and plan.frontier and out_of_sample:
        ev.chosen = choice
    rows = ev.summary()
    for r in rows:
        if r["controller"] in in_sample:
            r["in_sample"] = in_sample[r["controller"]]
    lines = [format_table(rows)]
    if tuned_info is not None:
        lines.append(
            f"hpa-tuned = {tuned_info['chosen']} ({tuned_info['rule']}; {tuned_info['tuned_on']})"
        )
    if best_info is not None:
        lines.append(
            f"rule-tuned = {best_info['chosen']} ({best_info['rule']}; {best_info['validation']})"
        )
    lines += [f"{name}: IN SAMPLE, {why}" for name, why in in_sample.items()]
    lines += _frontier_notes(ev, rows, grid)
    lines.append(
        f"{plan.split} split, {ev.n_units} windows of {plan.window_hours:g} h x "
        f"{len(plan.seeds)} seeds; CPU targets are fractions of the CPU limit; cost and SLO "
        "minutes are means over seeds of the totals over the windows; ±: half 95 % intervals "
        "across windows / seeds"
    )
    meta = {
        "command": command,
        "traces": [str(p) for p in plan.traces],
        "split": plan.split,
        "seeds": list(plan.seeds),
        "window_hours": plan.window_hours,
        "horizon_hours": plan.horizon_hours,
        "windows": ev.n_units,
        "profile": asdict(profile),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "frontier_rule_settings": len(grid),
        "figures": __doc__,
    }
    if model is not None:
        meta["model"] = model
    if tuned_info is not None:
        meta["hpa_tuned"] = tuned_info
    if best_info is not None:
        meta["rule_tuned"] = best_info
    if ev.rules:
        meta["frontier"] = {
            "kind": ev.main_frontier,
            "chosen_on_validation": {k: v for k, v in ev.chosen.items()},
        }
    meta["wall_seconds"] = round(time.perf_counter() - t0, 1)
    return Report(ev, rows, "\n".join(lines), meta, bank, profile.dt)
