"""The history floor (``qscale.history``) as an ablation: the same model with no floor and with
floors at several utilization targets, side by side on the same windows and seeds, against the
rule frontier -- the validation run that decides whether the floor is kept, and at what target.

How the figures are computed (written before the run; the evaluation code is ``qscale
evaluate``'s, ``qscale.simulator.evaluate``):

* windows: every 24 h window of the shared catalog's ``--split`` (validation by default) at the
  default profile, ``--seeds`` seeds; the floor reads each trace's own past (the day before the
  window, training-split days included: the past is what a cluster has) and is off where a
  trace does not reach a day back (GOOG and UPS have no validation split at all);
* rows: ``dqn`` (the shipped model, no floor) and ``floor NN%`` (the same model, the floor
  sizing yesterday's rate over the next 5 min at NN % of the pods' CPU limit);
* figures, overall and for the daily-cyclic families (NASA, nyc_taxi, AMZN): return (the
  model's own reward, summed over windows, mean over seeds), cost (replica-hours), SLO
  minutes, dropped requests, and the frontier ratio (convex hull of the 81 rule settings on
  these same windows: on the validation split the hull is ex post); the best rule setting's
  return beside them;
* the choice: the target with the best overall return on validation is kept if it beats the
  model without a floor there; test figures are only read after that choice.

Usage: ``OMP_NUM_THREADS=1 python benchmarks/bench_history_floor.py [--split val] [--seeds 2]
[--targets 0.65,0.8,0.95] [--out out/bench-history-floor]``. The rule grid is cached
(``~/.cache/qscale``); uncached it takes about 10-20 min per seed on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch

from qscale.policy.artifact import load_policy
from qscale.policy.controller import DQNController
from qscale.policy.default import default_model_path
from qscale.simulator import frontier as fr
from qscale.simulator.evaluate import EvalProfile, build, evaluate
from qscale.simulator.splits import shared_trace_files, split_bounds
from qscale.simulator.tracebank import TraceBank, history_series
from qscale.simulator.traces import load_rates

DAILY = ("nasa_http_1995", "nyc_taxi", "twitter_volume_AMZN")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--split", default="val")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--targets", default="0.65,0.8,0.95")
    ap.add_argument(
        "--variants",
        default="max@24",
        help="how the history points are reduced, @ the lookback in hours (max@24,mean@168)",
    )
    ap.add_argument("--out", default="out/bench-history-floor")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    paths = shared_trace_files()
    if not paths:
        print("the shared traces are not here (../shared/traces)", file=sys.stderr)
        return 2
    profile = EvalProfile()
    bank = TraceBank.from_files(paths, split=args.split, dt=profile.dt)
    seeds = list(range(args.seeds))
    params, win = build(bank, profile, seeds, window_steps=int(24 * 3600 / profile.dt))
    model = load_policy(default_model_path() if args.model == "default" else args.model)
    targets = [float(x) for x in args.targets.split(",") if x]
    variants = [v.split("@") for v in args.variants.split(",") if v]
    cache = {
        "purpose": "frontier",
        "traces": [[p.name, p.stat().st_size] for p in paths],
        "split": args.split,
        "profile": asdict(profile),
        "seeds": len(seeds),
        "window": int(24 * 3600 / profile.dt),
        "horizon": None,
        "bench": "history-floor",
    }
    rows: list[dict] = []
    ctrls: dict = {}
    for k, (reduce, hours) in enumerate(variants):
        hists = [
            history_series(load_rates(p, profile.dt), profile.dt, float(hours) * 3600, reduce)
            for p in paths
        ]
        splits = [
            split_bounds(p.stem, len(h), args.split) for p, h in zip(paths, hists, strict=True)
        ]
        kept = [h[a:b] for h, (a, b) in zip(hists, splits, strict=True) if b > a]
        vbank = replace(bank, history=torch.from_numpy(np.concatenate(kept)))
        vparams = replace(params, bank=vbank)
        these = {"dqn": partial(DQNController, model.module, name="dqn")} if k == 0 else {}
        for t in targets:
            name = f"floor {round(100 * t)}% {reduce} {hours}h"
            these[name] = partial(DQNController, model.module, name=name, floor_target=t)
        ctrls.update(these)
        ev = evaluate(
            these, vparams, win, rules=fr.rule_grid(), cache_parts=cache, timelines=False,
            log=lambda m: print(m, file=sys.stderr), bootstrap=0,
        )  # fmt: skip
        rows += [r for r in ev.summary() if r["controller"] in these]
    by = {(r["family"], r["controller"]): r for r in rows}
    # The best single rule setting on the model's own reward, per family and overall.
    rule_returns = {
        label: ev.units(m)["episode_return"]
        for label, m in ev.rules.items()
        if label.split()[0] in ("hpa", "rate")
    }
    fams = [*DAILY, "ALL"]
    lines = [
        f"{args.split} split, {ev.n_units} windows of 24 h x {len(seeds)} seeds; "
        f"{time.perf_counter() - t0:.0f} s",
        "",
        "| family | row | return | cost | SLO min | dropped % | frontier ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for fam in fams:
        in_fam = (
            np.ones(ev.n_units, bool) if fam == "ALL" else ev.unit_family == ev.families.index(fam)
        )
        if not in_fam.any():
            continue
        for name in ctrls:
            r = by[(fam, name)]
            ratio = "outside" if r.get("ratio") is None else f"{r['ratio']:.3f}"
            lines.append(
                f"| {fam} | {name} | {r['return']:.0f} | {r['cost']:.1f} | {r['slo']:.1f} | "
                f"{r['dropped_pct']:.3f} | {ratio} |"
            )
        best = max(rule_returns, key=lambda k: rule_returns[k][in_fam].sum())
        lines.append(
            f"| {fam} | best rule on return: {best} | {rule_returns[best][in_fam].sum():.0f} "
            "| | | | |"
        )
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(text + "\n")
    (out / "summary.json").write_text(
        json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=1, default=float)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
