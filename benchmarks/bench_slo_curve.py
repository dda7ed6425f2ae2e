"""The model as a curve (issue #15 §1, §3): one model at several SLO priorities against the
rule frontier.

``qscale evaluate``'s own comparison (:func:`qscale.simulator.evaluate.compare`) is run once per
priority with the policy told ``--slo-priority P`` (returns stay scored at priority 1, so the
rule grid is the same for every run and cached after the first). Each priority gives the model
one (SLO minutes, cost) point overall; the model's curve is the lower convex hull of its points
(mixing two priorities in time reaches any point between them, the argument that makes the
rules' frontier a hull). Printed, and written as JSON:

* per priority: cost, SLO minutes, share of minutes violating, return (at priority 1), the
  hull ratio and position;
* at each SLO level (share of the windows' minutes over the SLO, default 0.5 / 1.5 / 5 %): the
  model curve's cost, the rule hull's cost and their ratio (none where a curve does not reach
  the level: no credit outside either curve);
* the area between the curves over the SLO range both cover, over the area under the rule
  hull there (< 1: the model's curve lies below the hull on average).

Usage: ``OMP_NUM_THREADS=1 python benchmarks/bench_slo_curve.py [--model DIR] [--split val]
[--seeds 1] [--priorities 0.25,0.5,1,2,4,8,16,32] [--levels 0.5,1.5,5]
[--json out/slo_curve.json]``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from qscale.policy.artifact import load_policy
from qscale.policy.controller import policy_row
from qscale.policy.default import default_model_path
from qscale.simulator import frontier as fr
from qscale.simulator.evaluate import EvalPlan, EvalProfile, build, compare
from qscale.simulator.splits import shared_trace_files
from qscale.simulator.tracebank import TraceBank


def curve_cost(curve: list[tuple[float, float, int]], slo: float) -> float | None:
    """The curve's cost at ``slo`` SLO minutes, ``None`` outside its range (either side)."""
    if not curve or slo < curve[0][0] - 1e-9 or slo > curve[-1][0] + 1e-9:
        return None
    return fr.frontier_cost(curve, slo)


def area_ratio(model: list[tuple[float, float, int]], rules: list[tuple[float, float, int]]):
    """(area under the model's curve, area under the rules' hull, SLO range) over the range
    both cover, by the trapezoid rule on the union of their vertices; ``None`` if they do not
    overlap."""
    lo = max(model[0][0], rules[0][0])
    hi = min(model[-1][0], rules[-1][0])
    if not hi > lo:
        return None
    xs = sorted({lo, hi, *(x for x, _, _ in model + rules if lo < x < hi)})
    m = np.array([fr.frontier_cost(model, x) for x in xs])
    r = np.array([fr.frontier_cost(rules, x) for x in xs])
    return float(np.trapezoid(m, xs)), float(np.trapezoid(r, xs)), (lo, hi)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=default_model_path())
    ap.add_argument("--split", default="val")
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--priorities", default="0.25,0.5,1,2,4,8,16,32")
    ap.add_argument("--levels", default="0.5,1.5,5", help="SLO levels, %% of minutes violating")
    ap.add_argument("--estimate-capacity", action="store_true",
                    help="the policy declares no capacity and estimates it")  # fmt: skip
    ap.add_argument("--json", type=Path, default=Path("out/slo_curve.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    traces = tuple(shared_trace_files())
    if not traces:
        print("the shared traces are needed", file=sys.stderr)
        return 2
    priorities = [float(x) for x in args.priorities.split(",")]
    levels = [float(x) for x in args.levels.split(",")]
    device = torch.device("cpu")
    dqn, model = policy_row(load_policy(args.model, device=device))
    base = EvalProfile()
    if args.estimate_capacity:
        base = replace(base, capacity_declared=False, capacity_estimated=True)
    bank = TraceBank.from_files(traces, split=args.split, dt=base.dt, device=device)
    points, rows, hull, others = [], [], None, []
    t0 = time.perf_counter()
    for p in priorities:
        plan = EvalPlan(
            traces=traces,
            split=args.split,
            seeds=tuple(range(args.seeds)),
            controllers=("dqn", "rule-tuned", "hpa-tuned", "hpa") if p == 1.0 else ("dqn",),
            profile=replace(base, slo_priority=p),
            bootstrap=0,
        )
        rep = compare(plan, bank, device, dqn, model, progress=False)
        row = next(r for r in rep.rows if r["family"] == "ALL" and r["controller"] == "dqn")
        ev = rep.evaluation
        if hull is None:
            front = ev.fronts(ev.main_frontier)["ALL"].front
            hull = [(q.slo, q.cost, i) for i, q in enumerate(front)]
            _, win = build(bank, plan.profile, plan.seeds, plan.steps(plan.window_hours) or 1)
            minutes = float(win.length.sum()) / len(plan.seeds) * base.dt / 60.0
        if p == 1.0:
            others = [r for r in rep.rows if r["family"] == "ALL" and r["controller"] != "dqn"]
        points.append((row["slo"], row["cost"]))
        rows.append({
            "priority": p, "cost": row["cost"], "slo": row["slo"],
            "slo_pct": 100.0 * row["slo"] / minutes, "return": row["return"],
            "dropped_pct": row["dropped_pct"], "ratio": row["ratio"],
            "position": row.get("frontier_position"),
        })  # fmt: skip
        print(f"priority {p:g}: cost {row['cost']:,.1f} rh, SLO {row['slo']:,.1f} min, return "
              f"{row['return']:,.0f}, ratio {row['ratio']} ({time.perf_counter() - t0:.0f} s)",
              flush=True)  # fmt: skip
    assert hull is not None
    curve = fr.lower_hull(points)
    at = []
    for pct in levels:
        slo = pct / 100.0 * minutes
        mc, rc = curve_cost(curve, slo), curve_cost(hull, slo)
        at.append({"level_pct": pct, "slo_minutes": slo, "model_cost": mc, "hull_cost": rc,
                   "ratio": mc / rc if mc is not None and rc else None})  # fmt: skip
    area = area_ratio(curve, hull)
    monotone = all(
        a["slo"] >= b["slo"] and a["cost"] <= b["cost"] for a, b in itertools.pairwise(rows)
    )
    doc = {
        "command": " ".join(sys.argv),
        "model": model,
        "split": args.split,
        "seeds": args.seeds,
        "window_minutes": minutes,
        "priorities": rows,
        "monotone": monotone,
        "model_curve": [{"slo": s, "cost": c, "priority": priorities[i]} for s, c, i in curve],
        "rule_hull": [{"slo": s, "cost": c} for s, c, _ in hull],
        "levels": at,
        "area": None if area is None else {
            "model": area[0], "hull": area[1], "ratio": area[0] / area[1], "slo_range": area[2]},
        "other_rows": [{k: r.get(k) for k in ("controller", "cost", "slo", "return", "ratio")}
                       for r in others],
        "wall_s": round(time.perf_counter() - t0, 1),
    }  # fmt: skip
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=1, default=str))
    print("\n| priority | cost (rh) | SLO min | % of minutes | return (at p=1) | hull ratio |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        ratio = "outside" if r["ratio"] is None else f"{r['ratio']:.3f}"
        print(f"| {r['priority']:g} | {r['cost']:,.1f} | {r['slo']:,.1f} | {r['slo_pct']:.2f} | "
              f"{r['return']:,.0f} | {ratio} |")  # fmt: skip
    print(f"\nmonotone trade-off (SLO minutes fall, cost rises with the priority): {monotone}")
    print("\n| SLO level | model curve cost | rule hull cost | ratio |")
    print("|---|---|---|---|")
    for a in at:
        mc = "outside" if a["model_cost"] is None else f"{a['model_cost']:,.1f}"
        rc = "outside" if a["hull_cost"] is None else f"{a['hull_cost']:,.1f}"
        ratio = "-" if a["ratio"] is None else f"{a['ratio']:.3f}"
        print(f"| {a['level_pct']:g} % ({a['slo_minutes']:,.0f} min) | {mc} | {rc} | {ratio} |")
    if area is not None:
        lo, hi = area[2]
        print(f"\narea under the model's curve / under the rule hull, {lo:,.0f}-{hi:,.0f} SLO "
              f"min: {area[0] / area[1]:.3f}")  # fmt: skip
    else:
        print("\nthe model's curve and the rule hull do not overlap")
    print(f"\n{args.json} ({doc['wall_s']:.0f} s)")
    return 0 if all(math.isfinite(p[1]) for p in points) else 1


if __name__ == "__main__":
    sys.exit(main())
