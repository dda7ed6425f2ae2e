"""Plots for a decision: cost vs SLO minutes against the rule frontier, and what happened over
time (load and the pods it needs, replicas against the bounds, p95 against the SLO, cumulative
cost and SLO minutes)."""

from __future__ import annotations

from pathlib import Path

import torch

_COLORS = {
    "dqn": "tab:red",
    "hpa": "tab:blue",
    "hpa-tuned": "tab:cyan",
    "rule-tuned": "tab:olive",
    "keda": "tab:orange",
    "predictive": "tab:green",
    "oracle": "tab:purple",
}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def frontier_plot(ev, rows: list[dict], family: str, path: Path) -> Path:
    """Every rule setting, the frontier line and each controller's point for ``family``."""
    plt = _plt()
    data = ev.frontier_points(family)
    fig, ax = plt.subplots(figsize=(8, 6))
    marks = {"hpa": "o", "rate": "^", "predictive": "D"}
    for p in data["points"]:
        kind = p["label"].split()[0]
        ax.scatter(
            p["slo"], p["cost"], s=14, marker=marks.get(kind, "o"), alpha=0.45,
            color="tab:green" if kind == "predictive" else "0.55", linewidths=0,
        )  # fmt: skip
    front = data["frontier"]
    ax.plot([p["slo"] for p in front], [p["cost"] for p in front], "-", color="black", lw=1.2,
            label="frontier: convex hull (HPA + rate rule)")  # fmt: skip
    for r in rows:
        if r["family"] != family:
            continue
        c = _COLORS.get(r["controller"], "black")
        star = r["controller"] == "dqn"
        ax.errorbar(
            r["slo"], r["cost"],
            xerr=_finite(r["slo_ci_windows"]), yerr=_finite(r["cost_ci_windows"]),
            fmt="*" if star else "s", ms=14 if star else 7, color=c, capsize=3,
            label=f"{r['controller']} ({r['cost']:.0f} replica-h, {r['slo']:.0f} min)",
        )  # fmt: skip
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlabel("SLO-violation minutes (p95 over the SLO), mean per seed over the windows")
    ax.set_ylabel("cost (replica-hours)")
    ax.set_title(f"{family}: cost vs SLO minutes; gray = rule settings (o HPA, ^ rate rule)")
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _finite(x):
    return x if x is not None and x == x else 0.0


def timeline_plot(ev, i: int, name: str, path: Path, dt: float) -> Path:
    """The first window of trace ``i`` at the first seed, every controller."""
    plt = _plt()
    meta = ev.timeline_meta
    n = int(meta["length"][i])
    slo = float(meta["slo_s"][i])
    cap = float(meta["capacity"][i])
    hi = float(meta["max_replicas"][i])
    hours = torch.arange(n) * dt / 3600.0
    first = next(iter(ev.timelines))
    rate = ev.timelines[first]["rate"][:n, i]
    need = rate / cap
    fig, axes = plt.subplots(4, 1, figsize=(12, 11), sharex=True)
    axes[0].plot(hours, need, lw=0.6, color="black")
    axes[0].set_ylabel("load: pods needed\n(at 100 % CPU)")
    sec = axes[0].secondary_yaxis("right", functions=(lambda x: x * cap, lambda x: x / cap))
    sec.set_ylabel("req/s (scaled)")
    axes[0].set_title(
        f"{name}, first window, seed {ev.seeds[0]}: the trace is scaled so that its reference "
        f"rate (p99 of the whole series) needs the profile's --peak-replicas pods; "
        f"max replicas {hi:.0f}",
        fontsize=9,
    )
    axes[1].plot(hours, need, lw=0.6, color="black", alpha=0.5, label="needed (load / capacity)")
    axes[1].axhline(hi, color="gray", ls="--", lw=0.8, label="max replicas")
    for ctrl, tl in ev.timelines.items():
        c = _COLORS.get(ctrl)
        axes[1].plot(hours, tl["replicas"][:n, i], lw=0.8, label=ctrl, color=c)
        axes[2].plot(hours, tl["p95_s"][:n, i] / slo, lw=0.6, label=ctrl, color=c)
        cost = torch.cumsum(tl["cost_pod_s"][:n, i], 0) / 3600.0
        viol = torch.cumsum(tl["violation"][:n, i], 0) * dt / 60.0
        axes[3].plot(hours, cost, lw=1.0, color=c, label=f"{ctrl} cost")
        axes[3].plot(hours, viol, lw=1.0, ls=":", color=c)
    axes[1].set_ylim(0, min(hi * 1.05, max(float(need.max()) * 2.5, 4.0)))
    axes[1].set_ylabel("replicas")
    axes[1].legend(loc="upper right", fontsize=8, ncol=4)
    axes[2].axhline(1.0, color="red", ls="--", lw=0.8)
    axes[2].set_yscale("log")
    axes[2].set_ylabel("p95 / SLO")
    axes[3].set_ylabel("cumulative: cost (replica-h, solid)\nSLO minutes (dotted)")
    axes[3].set_xlabel("hours")
    axes[3].legend(loc="upper left", fontsize=8, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
