"""How much room there is under the rule hull (issue #15 §3), on the validation split.

Every figure is a cost over the rule hull's cost at the shipped model's own SLO minutes (per
family and overall): what the model's hull ratio is for the model. Rows:

* ``model``: the shipped model at SLO priority 1;
* ``clairvoyant rules``: the hull of the grid and a request-rate rule that knows the true
  arrival rate (the simulator's own arrivals, noise included) over the next start-up delay +
  scrape lag + half the rate window and sizes for the higher of it and the rate it observes
  (:class:`ClairvoyantRate`; targets x scale-down windows below): perfect foresight of the next
  minute or two inside the rules' shape;
* ``forecast rules``: the hull of the grid and the same rule with the true arrivals replaced by
  a causal forecast of the same reach (:class:`ForecastRate`, Holt's level and trend of the
  observed rate): how much of the clairvoyant rows' gain a forecast from what the cluster shows
  recovers, in the same shape;
* ``predictive peer``: the hull of the grid and its predictive peer's settings (Holt, 5-minute
  scale-down window), as ``qscale evaluate``'s ``with_predictive`` frontier;
* ``hindsight selector``: per window the grid setting with the lowest cost + lambda x SLO
  minutes, lambda swept; the lower hull of those points (the best day-by-day choice among the
  rules, knowing the day);
* ``causal selector``: each window plays the setting that was best (same lambda) on the previous
  window of its series; a series' first window the setting best over the other series' windows;
* ``oracle``: the perfect-foresight oracle's cost (fewer SLO minutes than the model, so a lower
  bound at the model's).

The same columns, overall, at the curve goal's SLO levels (share of the windows' minutes over
the SLO). A ratio is left out (``-``) where a curve does not reach the SLO minutes asked for.
The rule grid is ``qscale evaluate``'s (cached); the clairvoyant rules run in one batched
rollout.

Usage: ``OMP_NUM_THREADS=1 python benchmarks/bench_headroom.py [--model DIR] [--split val]
[--levels 0.5,1.5,5] [--json out/headroom.json]`` (about 10 min on one core with the grid cached).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from qscale import batching
from qscale.policy.artifact import load_policy
from qscale.policy.controller import policy_row
from qscale.policy.default import default_model_path
from qscale.simulator import env as sim
from qscale.simulator import frontier as fr
from qscale.simulator.baselines.keda import TOLERANCE, KedaController
from qscale.simulator.evaluate import EvalPlan, EvalProfile, build, compare
from qscale.simulator.rollout import rollout
from qscale.simulator.splits import shared_trace_files
from qscale.simulator.tracebank import TraceBank

TARGETS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
WINDOWS_S = (0.0, 300.0, 900.0, 1800.0)
LAMBDAS = tuple(float(x) for x in np.geomspace(0.01, 100.0, 41))
"""Replica-hours one SLO minute is worth to the selectors."""


class ClairvoyantRate(KedaController):
    """The KEDA rule sizing for max(observed rate, the true arrival rate's peak over the time a
    pod asked for now needs to start and show up in the metric): not deployable, a bound.

    ``act`` is :meth:`KedaController.act` with the rate it sizes for replaced; it is written out
    here rather than given a hook in ``keda.py`` because every byte of the rules' code keys the
    rule-grid cache (:func:`qscale.simulator.frontier.code_fingerprint`), and a benchmark's
    convenience is not worth recomputing every cached grid."""

    def reset(self, state: sim.EnvState, params: sim.EnvParams) -> None:
        super().reset(state, params)
        reach = params.delay_steps + params.scrape_lag + params.config.rate_window // 2
        self._ahead = torch.arange(int(reach.max()) + 1, device=params.device)
        self._within = self._ahead[None, :] <= reach[:, None]
        self._reach = reach.float()

    def ahead(
        self, state: sim.EnvState, params: sim.EnvParams, observed: torch.Tensor
    ) -> torch.Tensor:
        """``[B]`` the rate to size for besides the observed one: the true arrivals' peak."""
        pos = torch.clamp(
            state.pos[:, None] + self._ahead[None, :], max=params.bank.rates.shape[0] - 1
        )
        future = torch.where(self._within, sim.arrival_rate(params, pos, state.scale[:, None]), 0.0)
        return future.amax(dim=1)

    def act(
        self, state: sim.EnvState, obs: torch.Tensor | None, params: sim.EnvParams
    ) -> torch.Tensor:
        cur = state.replicas
        observed = sim.signals(state, params).inputs.rate_now
        rate = torch.maximum(observed, self.ahead(state, params, observed))
        threshold = params.capacity * self._frac
        ratio = rate / torch.clamp(threshold * cur, min=1e-9)
        ask = torch.where(
            (ratio - 1.0).abs() <= TOLERANCE, cur, torch.ceil(rate / threshold - 1e-6)
        )
        fresh = state.t == 0
        self._asks = torch.where(
            fresh[:, None], cur[:, None], torch.cat([self._asks[:, 1:], ask[:, None]], dim=1)
        )
        highest = torch.where(self._in_window, self._asks, -math.inf).amax(dim=1)
        desired = torch.where(ask < cur, torch.minimum(cur, highest), ask)
        return torch.minimum(desired, torch.maximum(2.0 * cur, torch.full_like(cur, 4.0)))


class ForecastRate(ClairvoyantRate):
    """The same rule with the true arrivals replaced by a causal forecast over the same reach:
    Holt's level and trend of the observed rate (the predictive peer's smoothing), extrapolated
    to the end of the reach -- what the clairvoyant rule's foresight is worth when it has to
    be forecast from what the cluster shows."""

    alpha: float = 0.5
    beta: float = 0.2

    def reset(self, state: sim.EnvState, params: sim.EnvParams) -> None:
        super().reset(state, params)
        self._level = sim.signals(state, params).inputs.rate_now.clone()
        self._trend = torch.zeros_like(self._level)

    def ahead(
        self, state: sim.EnvState, params: sim.EnvParams, observed: torch.Tensor
    ) -> torch.Tensor:
        fresh = state.t == 0
        prev = self._level
        level = self.alpha * observed + (1.0 - self.alpha) * (prev + self._trend)
        trend = self.beta * (level - prev) + (1.0 - self.beta) * self._trend
        self._level = torch.where(fresh, observed, level)
        self._trend = torch.where(fresh, 0.0, trend)
        return torch.clamp(self._level + self._reach * self._trend, min=0.0)


def run_clairvoyant(
    params: sim.EnvParams, win, kind: type[ClairvoyantRate] = ClairvoyantRate
) -> dict[str, dict[str, np.ndarray]]:
    """Per-env metrics of every setting of ``kind`` (one batched rollout)."""
    settings = [(t, w) for w in WINDOWS_S for t in TARGETS]
    k, n = len(settings), params.n_envs
    big = batching.cat([params] * k)
    targets = torch.tensor([t for t, _ in settings]).repeat_interleave(n)
    cool = torch.tensor([w for _, w in settings]).repeat_interleave(n)
    name = "clairvoyant" if kind is ClairvoyantRate else "forecast"
    ctrl = kind(target_fraction=targets, cooldown_s=cool, name=name)
    state, obs = sim.reset_fixed(big, *(w.repeat(k) for w in win.triple()))
    m = fr._metrics_of(rollout(ctrl, big, state, obs))
    return {
        f"{name} {round(t * 100)}% w{int(w)}": {key: v[i * n : (i + 1) * n] for key, v in m.items()}
        for i, (t, w) in enumerate(settings)
    }


def selector_points(
    per_rule: dict[str, dict[str, np.ndarray]],
    unit_family: np.ndarray,
    families: list[str],
    causal: bool,
) -> dict[str, list[tuple[float, float]]]:
    """Per family and ``ALL``: one (SLO minutes, cost) point per lambda of a per-window choice
    among the settings (``per_rule``: per-unit totals), with hindsight or from the previous
    window of the same series."""
    labels = list(per_rule)
    cost = np.stack([per_rule[k]["cost_replica_hours"] for k in labels])  # [R, U]
    slo = np.stack([per_rule[k]["slo_violation_minutes"] for k in labels])
    units = np.arange(cost.shape[1])
    out: dict[str, list[tuple[float, float]]] = {f: [] for f in [*families, "ALL"]}
    for lam in LAMBDAS:
        score = cost + lam * slo
        pick = score.argmin(axis=0)  # hindsight: each window's own best
        if causal:
            chosen = np.empty_like(pick)
            for u in units:
                same = unit_family == unit_family[u]
                before = units[same & (units < u)]
                if before.size:  # windows of a series are in time order, 24 h apart
                    chosen[u] = pick[before.max()]
                else:
                    chosen[u] = score[:, ~same].sum(axis=1).argmin()
            pick = chosen
        c, s = cost[pick, units], slo[pick, units]
        for fam in out:
            sel = np.ones_like(units, bool) if fam == "ALL" else unit_family == families.index(fam)
            out[fam].append((float(s[sel].sum()), float(c[sel].sum())))
    return out


def hull_at(f: fr.FamilyFrontier, slo: float) -> float:
    """A frontier's hull cost at ``slo`` SLO minutes."""
    return fr.frontier_cost([(p.slo, p.cost, i) for i, p in enumerate(f.front)], slo)


def at(curve_points: list[tuple[float, float]], slo: float) -> float | None:
    """The lower hull of ``curve_points`` at ``slo`` SLO minutes, ``None`` outside it."""
    hull = fr.lower_hull(curve_points)
    if not hull or slo < hull[0][0] - 1e-9 or slo > hull[-1][0] + 1e-9:
        return None
    return fr.frontier_cost(hull, slo)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=default_model_path())
    ap.add_argument("--split", default="val")
    ap.add_argument("--levels", default="0.5,1.5,5", help="SLO levels, %% of minutes violating")
    ap.add_argument("--json", type=Path, default=Path("out/headroom.json"))
    args = ap.parse_args(argv)
    args.levels = [float(x) for x in args.levels.split(",")]
    torch.set_num_threads(1)
    traces = tuple(shared_trace_files())
    if not traces:
        print("the shared traces are needed", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    device = torch.device("cpu")
    dqn, model = policy_row(load_policy(args.model, device=device))
    profile = EvalProfile()
    bank = TraceBank.from_files(traces, split=args.split, dt=profile.dt, device=device)
    plan = EvalPlan(
        traces=traces, split=args.split, seeds=(0,), controllers=("dqn", "oracle"),
        profile=profile, bootstrap=0,
    )  # fmt: skip
    rep = compare(plan, bank, device, dqn, model, progress=False)
    ev = rep.evaluation
    print(f"model and oracle run, grid {'ex post' if ev.main_frontier == 'ex_post' else 'chosen'}"
          f" ({time.perf_counter() - t0:.0f} s)", flush=True)  # fmt: skip
    params, win = build(bank, profile, plan.seeds, plan.steps(plan.window_hours) or 1)
    clair = {k: ev.units(v) for k, v in run_clairvoyant(params, win).items()}
    print(f"clairvoyant rules run ({time.perf_counter() - t0:.0f} s)", flush=True)
    holt = {k: ev.units(v) for k, v in run_clairvoyant(params, win, ForecastRate).items()}
    print(f"their forecast twins run ({time.perf_counter() - t0:.0f} s)", flush=True)
    grid = ev.frontier_rules()
    fronts = ev.fronts(ev.main_frontier)
    with_clair = fr.family_frontiers({**grid, **clair}, ev.unit_family, ev.families)
    with_holt = fr.family_frontiers({**grid, **holt}, ev.unit_family, ev.families)
    with_peer = ev.fronts("with_predictive")
    hind = selector_points(grid, ev.unit_family, ev.families, causal=False)
    causal = selector_points(grid, ev.unit_family, ev.families, causal=True)
    rows = []
    print("| family | model SLO min | model | clairvoyant rules | forecast rules | predictive "
          "peer | hindsight selector | causal selector | oracle |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for fam in [*ev.families, "ALL"]:
        r = {x["controller"]: x for x in rep.rows if x["family"] == fam}
        slo, cost = r["dqn"]["slo"], r["dqn"]["cost"]
        base = hull_at(fronts[fam], slo)
        hind_cost, causal_cost = at(hind[fam], slo), at(causal[fam], slo)
        fig = {
            "model": r["dqn"]["ratio"],
            "clairvoyant_rules": hull_at(with_clair[fam], slo) / base,
            "forecast_rules": hull_at(with_holt[fam], slo) / base,
            "predictive_peer": hull_at(with_peer[fam], slo) / base,
            "hindsight_selector": None if hind_cost is None else hind_cost / base,
            "causal_selector": None if causal_cost is None else causal_cost / base,
            "oracle": r["oracle"]["cost"] / base,
        }
        rows.append({"family": fam, "model_slo": slo, "model_cost": cost, "hull_cost": base,
                     "oracle_slo": r["oracle"]["slo"], **fig})  # fmt: skip
        cells = " | ".join("-" if v is None else f"{v:.3f}" for v in fig.values())
        print(f"| {fam} | {slo:,.0f} | {cells} |", flush=True)
    minutes = float(win.length.sum()) * profile.dt / 60.0 / len(plan.seeds)
    levels = []
    print("\n| SLO level (overall) | SLO min | clairvoyant rules | forecast rules | "
          "predictive peer | hindsight selector | causal selector |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for pct in args.levels:
        slo = pct / 100.0 * minutes
        base = hull_at(fronts["ALL"], slo)
        costs = {
            "clairvoyant_rules": hull_at(with_clair["ALL"], slo),
            "forecast_rules": hull_at(with_holt["ALL"], slo),
            "predictive_peer": hull_at(with_peer["ALL"], slo),
            "hindsight_selector": at(hind["ALL"], slo),
            "causal_selector": at(causal["ALL"], slo),
        }
        fig = {k: None if c is None or math.isnan(c) else c / base for k, c in costs.items()}
        levels.append({"level_pct": pct, "slo_minutes": slo, "hull_cost": base, **fig})
        cells = " | ".join("-" if v is None else f"{v:.3f}" for v in fig.values())
        print(f"| {pct:g} % | {slo:,.0f} | {cells} |", flush=True)
    doc = {
        "command": " ".join(sys.argv),
        "model": model,
        "split": args.split,
        "windows": ev.n_units,
        "rule_settings": {"targets": TARGETS, "windows_s": WINDOWS_S},
        "lambdas": LAMBDAS,
        "rows": rows,
        "levels": levels,
        "wall_seconds": round(time.perf_counter() - t0, 1),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.json} ({doc['wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
