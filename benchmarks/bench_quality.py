"""Decision quality of a model against the rule frontier, the profile robustness run, and the
maxReplicas sensitivity -- the figures of BENCHMARKS.md's "Decision quality" section.

Every figure comes from ``qscale evaluate`` (see ``qscale.simulator.evaluate`` for how each is
computed); this script runs the evaluations the goals name and prints their tables plus one
summary table in Markdown:

1. the shared test split, default profile, 5 seeds, all 24 h windows, the frontier;
2. the same at ``--peak-replicas 60 --startup-delay 120,240`` (the same model, unchanged);
3. maxReplicas at 1.5x, 2.5x, 5x and 10x of the need (``--max-replicas-factor``), the model and
   the default HPA only (no frontier): the change of cost and SLO minutes against 2.5x;
4. the night floor on the smooth diurnal families (NASA, nyc_taxi, AMZN): in the quietest
   quarter of each window's steps (by the load), pods provisioned / pods the load needs at
   100 % CPU, for the model and the rules (a fixed floor shows as a ratio far above the rules').

Usage: ``python benchmarks/bench_quality.py [--model DIR] [--seeds 5] [--split test]
[--robust-seeds N] [--out out/bench-quality] [--only frontier,robust,max,night]``. The grids
are cached
(``~/.cache/qscale``): the first run takes about an hour on 2 cores, later ones minutes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from qscale import cli


def evaluate(argv: list[str]) -> dict:
    doc, _ = cli.run_evaluation(cli.parser().parse_args(["evaluate", *argv]))
    return doc


def rows_by(doc: dict) -> dict[tuple[str, str], dict]:
    return {(r["family"], r["controller"]): r for r in doc["summary"]}


def _ratio(r: dict, key: str = "ratio") -> str:
    v = r.get(key)
    if v is None:
        return f"outside ({r.get('frontier_position', '?')})" if key == "ratio" else "outside"
    return f"{v:.3f}"


def frontier_table(doc: dict, title: str) -> str:
    """Per family: the model against the frontier (convex hull, settings chosen on validation)
    with its intervals and how sure "dominated" is, the ex-post and HPA-only frontiers beside
    it, and the default HPA and the tuned rule as plain rows."""
    rows = rows_by(doc)
    fams = list(dict.fromkeys(r["family"] for r in doc["summary"]))
    head = ("| family | dqn cost | dqn SLO min | frontier ratio [95 % CI] | dominated beyond "
            "the CI | some setting dominates (resamples, seeds) | ex post | HPA only | "
            "hpa cost / SLO | rule-tuned cost / SLO | predictive ratio |")  # fmt: skip
    out = [f"### {title}", "", head, "|---|---|---|---|---|---|---|---|---|---|---|"]
    for fam in fams:
        d = rows.get((fam, "dqn"))
        if d is None:
            continue
        ci = d.get("ratio_ci")
        ci_txt = f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""
        h = rows.get((fam, "hpa"), {})
        t = rows.get((fam, "rule-tuned"), {})
        p = rows.get((fam, "predictive"), {})
        seeds = d.get("dominated_seeds") or [0, 0]
        out.append(
            f"| {fam} | {d['cost']:.1f} | {d['slo']:.1f} | {_ratio(d)}{ci_txt} | "
            f"{d.get('dominated_by') or 'no'} | "
            f"{100 * d.get('dominated_share', float('nan')):.0f} %, {seeds[0]}/{seeds[1]} | "
            f"{_ratio(d, 'ratio_ex_post')} | {_ratio(d, 'ratio_cpu_only')} | "
            f"{h.get('cost', float('nan')):.1f} / {h.get('slo', float('nan')):.1f} | "
            f"{t.get('cost', float('nan')):.1f} / {t.get('slo', float('nan')):.1f} | "
            f"{_ratio(p)} |"
        )
    return "\n".join(out)


def headline(doc: dict) -> str:
    """The three headline rows of issue #15 §1, overall: the model against the default HPA,
    against the deployable tuned rule (reward-best on validation), and the frontier ratio."""
    rows = rows_by(doc)
    d = rows[("ALL", "dqn")]
    out = ["| row | cost | SLO min | return (the DQN's reward) | dqn cost / row | dqn SLO / row |",
           "|---|---|---|---|---|---|"]  # fmt: skip
    tuned = doc["meta"].get("rule_tuned", {}).get("chosen", "")
    for name, what in (("dqn", "dqn"), ("hpa", "default HPA"), ("rule-tuned", f"tuned: {tuned}")):
        r = rows.get(("ALL", name))
        if r is not None:
            out.append(
                f"| {what} | {r['cost']:.1f} | {r['slo']:.1f} | {r['return']:.0f} | "
                f"{d['cost'] / r['cost']:.3f} | {d['slo'] / max(r['slo'], 1e-9):.3f} |"
            )
    ci = d.get("ratio_ci")
    ci_txt = f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""
    out += ["", f"Frontier ratio (convex hull, settings chosen on validation): {_ratio(d)}{ci_txt}"]
    return "\n".join(out)


def night_floor(args) -> str:
    """Pods / need in the quietest quarter of each window's steps, smooth diurnal families."""
    import torch

    from qscale.policy.artifact import load_policy
    from qscale.policy.controller import DQNController
    from qscale.policy.default import default_model_path
    from qscale.simulator import frontier as fr
    from qscale.simulator.evaluate import EvalProfile, build, run
    from qscale.simulator.splits import shared_trace_files
    from qscale.simulator.tracebank import TraceBank

    torch.set_num_threads(int(args.threads))
    names = ("nasa_http_1995", "nyc_taxi", "twitter_volume_AMZN")
    paths = [p for p in shared_trace_files() if p.stem in names]
    bank = TraceBank.from_files(paths, split=args.split)
    params, win = build(bank, EvalProfile(), list(range(args.seeds)), window_steps=5760)
    model = load_policy(default_model_path() if args.model == "default" else args.model)
    ctrls = {
        "dqn": DQNController(model.module),
        "hpa": fr.make_controller(fr.DEFAULT_RULES["hpa"]),
        "hpa 70% w1800": fr.make_controller(fr.Rule("hpa", 0.7, 1800.0, "legacy")),
        "keda": fr.make_controller(fr.DEFAULT_RULES["keda"]),
    }
    title = "### Night floor: pods / need in the quietest quarter of each window (smooth families)"
    lines = [title, "", "| family | " + " | ".join(ctrls) + " |", "|---|" + "---|" * len(ctrls)]
    ratios: dict[str, dict[str, float]] = {n: {} for n in names}
    for cname, ctrl in ctrls.items():
        m = run(ctrl, params, win, record=True)
        rate, reps = m.timeline["rate"], m.timeline["replicas"]
        need = rate / params.capacity[None, :]
        for k, name in enumerate(bank.names):
            envs = (win.trace == k).nonzero().squeeze(1)
            q = torch.quantile(need[:, envs], 0.25, dim=0, keepdim=True)
            quiet = need[:, envs] <= q
            ratios[name][cname] = float(
                (reps[:, envs] * quiet).sum() / (need[:, envs] * quiet).sum()
            )
    for name in bank.names:
        lines.append(f"| {name} | " + " | ".join(f"{ratios[name][c]:.2f}" for c in ctrls) + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument(
        "--robust-seeds", type=int, help="seeds of the robust profile (default --seeds)"
    )
    ap.add_argument("--split", default="test")
    ap.add_argument("--out", default="out/bench-quality")
    ap.add_argument("--only", default="frontier,robust,max,night")
    ap.add_argument("--threads", default="1")
    args = ap.parse_args()
    parts = set(args.only.split(","))
    out = Path(args.out)
    common = ["--traces", "shared", "--split", args.split, "--model", args.model, "--threads",
              args.threads, "--no-progress", "--quiet"]  # fmt: skip
    report: dict = {"command": "python benchmarks/bench_quality.py " + " ".join(sys.argv[1:])}
    md = []
    if "frontier" in parts:
        doc = evaluate([*common, "--seeds", str(args.seeds), "--out", str(out / "default")])
        report["default"] = doc["summary"]
        md.append(headline(doc))
        md.append(frontier_table(doc, f"{args.split} split, default profile, {args.seeds} seeds"))
    if "robust" in parts:
        n = args.robust_seeds or args.seeds
        doc = evaluate([*common, "--seeds", str(n), "--peak-replicas", "60",
                        "--startup-delay", "120,240", "--out", str(out / "robust")])  # fmt: skip
        report["robust"] = doc["summary"]
        md.append(frontier_table(doc, f"--peak-replicas 60 --startup-delay 120,240, {n} seeds"))
    if "max" in parts:
        sens = {}
        for f in ("1.5", "2.5", "5", "10"):
            doc = evaluate([*common, "--seeds", str(args.seeds), "--no-frontier", "--controllers",
                            "dqn,hpa", "--max-replicas-factor", f, "--bootstrap", "0",
                            "--out", str(out / f"max-{f}")])  # fmt: skip
            sens[f] = {c: rows_by(doc)[("ALL", c)] for c in ("dqn", "hpa")}
        report["max_sensitivity"] = sens
        head = ("| max / need | dqn cost | dqn SLO min | Δcost | ΔSLO "
                "| hpa cost | hpa SLO min | Δcost | ΔSLO |")  # fmt: skip
        lines = ["### maxReplicas sensitivity (ALL families; change against 2.5x)", "", head,
                 "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        ref = sens["2.5"]
        for f, v in sens.items():
            cells = []
            for c in ("dqn", "hpa"):
                r, b = v[c], ref[c]
                dc = 100.0 * (r["cost"] / b["cost"] - 1.0)
                ds = 100.0 * (r["slo"] / b["slo"] - 1.0) if b["slo"] > 0 else float("nan")
                cells += [f"{r['cost']:.1f}", f"{r['slo']:.1f}", f"{dc:+.1f} %", f"{ds:+.1f} %"]
            lines.append(f"| {f}x | " + " | ".join(cells) + " |")
        md.append("\n".join(lines))
    if "night" in parts:
        md.append(night_floor(args))
    text = "\n\n".join(md)
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(text + "\n")
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
