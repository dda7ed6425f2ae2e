"""The demo's summary (both sides from the same samples), its table, CSV, JSON and PNG."""

from __future__ import annotations

import csv
import itertools
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from qscale.demo.stretch import Stretch

__all__ = ["SIDE_LABELS", "summarize", "summary_table", "write_outputs"]

SIDE_LABELS = {"web-qscale": "qscale", "web-hpa": "HPA"}


def _durations(rows: Sequence[dict[str, Any]]) -> list[float]:
    """Each sample stands for the time until the next one (the last: the median step)."""
    ts = [float(r["t"]) for r in rows]
    steps = [b - a for a, b in itertools.pairwise(ts)]
    last = sorted(steps)[len(steps) // 2] if steps else 0.0
    return [*steps, last]


def summarize(rows: Sequence[dict[str, Any]], slo_s: float) -> dict[str, Any]:
    """Per side: cost (pod-minutes, every pod, starting ones included), SLO-violation minutes
    (p95 over the SLO), scale actions (writes of the replica count), on the wall clock."""
    dur = _durations(rows)
    out: dict[str, Any] = {"samples": len(rows), "minutes": sum(dur) / 60.0, "slo_s": slo_s}
    sides: dict[str, Any] = {}
    for side, label in SIDE_LABELS.items():
        pods = [int(r.get(f"{side}.pods") or 0) for r in rows]
        p95 = [r.get(f"{side}.p95_s") for r in rows]
        reps = [int(r.get(f"{side}.replicas") or 0) for r in rows]
        gens = [int(r.get(f"{side}.generation") or 0) for r in rows]
        ups = sum(1 for a, b in itertools.pairwise(reps) if b > a)
        downs = sum(1 for a, b in itertools.pairwise(reps) if b < a)
        seen = [v for v in p95 if v is not None and math.isfinite(v)]
        sides[label] = {
            "deployment": side,
            "pod_minutes": sum(p * d for p, d in zip(pods, dur, strict=True)) / 60.0,
            "slo_violation_minutes": sum(
                d for v, d in zip(p95, dur, strict=True) if v is not None and v > slo_s
            )
            / 60.0,
            "scale_actions": (gens[-1] - gens[0]) if gens else 0,
            "scale_ups_seen": ups,
            "scale_downs_seen": downs,
            "peak_pods": max(pods) if pods else 0,
            "final_replicas": reps[-1] if reps else 0,
            "p95_median_s": sorted(seen)[len(seen) // 2] if seen else None,
            "p95_max_s": max(seen) if seen else None,
        }
    out["sides"] = sides
    q, h = sides["qscale"], sides["HPA"]
    out["ratios"] = {
        k: (q[k] / h[k] if h[k] else None)
        for k in ("pod_minutes", "slo_violation_minutes", "scale_actions")
    }
    return out


def _ratio(r: float | None, q: float, h: float) -> str:
    if r is not None:
        return f"{r:.2f}x"
    return "both 0" if q == h == 0 else "HPA 0"


def summary_table(s: dict[str, Any]) -> str:
    q, h, r = s["sides"]["qscale"], s["sides"]["HPA"], s["ratios"]
    qv, hv = q["slo_violation_minutes"], h["slo_violation_minutes"]
    lines = [
        f"{'':28}{'qscale':>10}{'HPA':>10}   qscale vs HPA",
        f"{'cost (pod-minutes)':28}{q['pod_minutes']:10.1f}{h['pod_minutes']:10.1f}   "
        f"{_ratio(r['pod_minutes'], q['pod_minutes'], h['pod_minutes'])}",
        f"{'SLO-violation minutes':28}{q['slo_violation_minutes']:10.2f}"
        f"{h['slo_violation_minutes']:10.2f}   "
        f"{_ratio(r['slo_violation_minutes'], qv, hv)}",
        f"{'scale actions':28}{q['scale_actions']:10d}{h['scale_actions']:10d}   "
        f"{_ratio(r['scale_actions'], q['scale_actions'], h['scale_actions'])}",
        f"{'  up / down (as sampled)':28}{q['scale_ups_seen']:>6d}/{q['scale_downs_seen']:<3d}"
        f"{h['scale_ups_seen']:>6d}/{h['scale_downs_seen']:<3d}",
        f"{'peak pods':28}{q['peak_pods']:10d}{h['peak_pods']:10d}",
        f"{'p95 median (ms)':28}{_ms(q['p95_median_s']):>10}{_ms(h['p95_median_s']):>10}",
    ]
    tw = s.get("twin") or {}
    if tw.get("decisions"):
        lines += [
            "",
            "qscale in the simulator on the same stretch (the twin, twin.json):",
            f"{'  cost (pod-minutes)':28}{tw['pod_minutes_twin']:10.1f}",
            f"{'  SLO-violation minutes':28}{tw['slo_minutes_twin']:10.2f}",
            f"{'  live decisions within one pod of the twin':44}"
            f"{tw['within_one_pod'] * 100:5.0f} % of {tw['decisions']}",
        ]
        if "within_one_pod_followed" in tw:
            lines.append(
                f"{'    decision by decision (the twin given the live past)':56}"
                f"{tw['within_one_pod_followed'] * 100:5.0f} %"
            )
    return "\n".join(lines)


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.0f}"


def write_outputs(
    rows: Sequence[dict[str, Any]], summary: dict[str, Any], stretch: Stretch, out: Path
) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "summary": out / "summary.json",
        "timeline": out / "timeline.csv",
        "png": out / "demo.png",
    }
    files["summary"].write_text(json.dumps({**summary, "table": summary_table(summary)}, indent=2))
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with files["timeline"].open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    plot(rows, summary, stretch, files["png"])
    return files


def plot(rows: Sequence[dict[str, Any]], summary: dict[str, Any], stretch: Stretch, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [float(r["t"]) / 60.0 for r in rows]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(11, 7.5), sharex=True, height_ratios=[3, 2])
    colors = {"web-qscale": "tab:blue", "web-hpa": "tab:orange"}
    load = [r["load_rps"] for r in rows]
    axl = ax1.twinx()
    axl.fill_between(t, load, color="0.85", lw=0, label="offered load (req/s)")
    axl.set_ylabel("offered load (req/s)")
    axl.set_ylim(0, max([*load, 1.0]) * 1.15)
    ax1.set_zorder(axl.get_zorder() + 1)
    ax1.patch.set_visible(False)
    for side, label in SIDE_LABELS.items():
        c = colors[side]
        s = summary["sides"][label]
        ax1.step(
            t,
            [r[f"{side}.pods"] for r in rows],
            where="post",
            color=c,
            lw=2,
            label=f"{label}: pods ({s['pod_minutes']:.0f} pod-min, {s['scale_actions']} actions)",
        )
        ax1.step(
            t,
            [r[f"{side}.ready"] for r in rows],
            where="post",
            color=c,
            lw=1,
            ls=":",
            label=f"{label}: ready",
        )
        ax2.plot(
            t,
            [(r[f"{side}.p95_s"] or math.nan) * 1000 for r in rows],
            color=c,
            lw=1.5,
            label=f"{label} p95 ({s['slo_violation_minutes']:.2f} min over the SLO)",
        )
    tw = summary.get("twin") or {}
    if tw.get("replicas"):
        dt = tw["interval_s"]
        ax1.step(
            [k * dt / 60.0 for k in range(len(tw["replicas"]))],
            tw["replicas"],
            where="post",
            color="tab:blue",
            lw=1,
            ls="--",
            alpha=0.7,
            label="qscale in the simulator (the twin): replicas",
        )
    ax1.set_ylabel("pods")
    ax1.set_ylim(bottom=0)
    ax1.legend(loc="upper left", fontsize=8)
    ax1.set_title(
        f"qscale vs the Kubernetes HPA on a local control plane\n{stretch.describe()}", fontsize=9
    )
    ax2.axhline(summary["slo_s"] * 1000, color="red", ls="--", lw=1, label="SLO")
    ax2.set_ylabel("p95 latency (ms)")
    ax2.set_yscale("log")
    ax2.set_ylim(50, 20000)
    ax2.set_xlabel(
        f"wall-clock minutes (trace: {stretch.clock(0)}-{stretch.clock(stretch.play_s)} EDT)"
    )
    ax2.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
