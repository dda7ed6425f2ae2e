"""``qscale demo``: the live demo on a local control plane, or the offline one.

Binaries not found here (see :mod:`qscale.dev.cluster` and :mod:`qscale.dev.prom`) are
downloaded, pinned by sha256, into a cache (:mod:`qscale.dev.fetch`; ``--no-fetch`` or
``QSCALE_NO_FETCH=1`` forbids it). Where no control plane can be had even so (offline:
:class:`qscale.dev.cluster.ClusterUnavailable`) or no Prometheus, it says so in one line and
runs the offline demo, ``qscale evaluate`` on the shipped excerpt, instead (``--offline`` asks
for it; ``--no-fallback`` makes it an error). A download that fails its sha256 check is always
an error (exit 1), never a quiet fallback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from qscale.features import SLO_PRIORITY_RANGE

__all__ = ["demo_main"]

PRIORITY_LO, PRIORITY_HI = SLO_PRIORITY_RANGE

# Quick: no rule frontier, and no hpa-tuned (tuning it on a fresh machine takes many minutes).
OFFLINE_ARGS = [
    "evaluate",
    "--seeds",
    "2",
    "--no-frontier",
    "--controllers",
    "dqn,hpa,keda,predictive,oracle",
]


def _parser() -> argparse.ArgumentParser:
    from qscale.demo.run import DemoConfig

    d = DemoConfig()
    ap = argparse.ArgumentParser(
        prog="qscale demo",
        description="qscale against the real Kubernetes HorizontalPodAutoscaler: two identical "
        "Deployments on a local control plane take the same traffic (a stretch of a shipped "
        "trace at its own pace), one scaled by the qscale operator, the other by the HPA "
        "controller of kube-controller-manager; then the same stretch runs in the simulator "
        "(the twin) beside the operator's decisions. Prints a live view and a summary, writes "
        "summary.json, timeline.csv, demo.png, decisions.jsonl and twin.json. Binaries missing "
        "here are downloaded once, pinned by sha256, into ~/.cache; without a local control "
        "plane (offline) it runs the offline demo (qscale evaluate) instead.",
    )
    ap.add_argument("--out", type=Path, default=d.out, help=f"output directory (default {d.out})")
    ap.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="real minutes the trace stretch is played in (default: its own length, the "
        "trace's pace, the world the model was trained in; fewer compress the trace)",
    )
    ap.add_argument(
        "--trace", type=Path, help="a t,value trace (default: the shipped NASA excerpt)"
    )
    ap.add_argument(
        "--start-hour",
        type=float,
        default=d.start_h,
        help="start of the stretch, "
        f"hours after the trace's t=0 (default {d.start_h:.4g}: Jul 13 1995 09:40 EDT)",
    )
    ap.add_argument(
        "--hours",
        type=float,
        default=d.hours,
        help=f"trace hours in the stretch (default {d.hours:g})",
    )
    ap.add_argument(
        "--scale", type=float, default=d.scale, help=f"req/s per trace req/s (default {d.scale:g})"
    )
    ap.add_argument(
        "--startup-delay",
        type=float,
        default=d.startup_delay_s,
        help=f"pod start-up delay, s, both sides (default {d.startup_delay_s:g})",
    )
    ap.add_argument(
        "--slo-ms", type=float, default=d.slo_ms, help=f"p95 latency SLO, ms (default {d.slo_ms:g})"
    )
    ap.add_argument(
        "--slo-priority",
        type=float,
        default=d.slo_priority,
        help="qscale's spec.slo.priority, the trade-off its model plays "
        f"({PRIORITY_LO:g}-{PRIORITY_HI:g}; default {d.slo_priority:g})",
    )
    ap.add_argument(
        "--max-replicas",
        type=int,
        default=d.max_replicas,
        help=f"both sides' maxReplicas (default {d.max_replicas})",
    )
    ap.add_argument(
        "--hpa-target",
        type=int,
        default=d.hpa_target,
        help=f"the HPA's CPU target in %% (default {d.hpa_target})",
    )
    ap.add_argument(
        "--hpa-stabilization",
        type=int,
        default=d.hpa_stabilization_s,
        help="the HPA's scale-down stabilization window, s (default "
        f"{d.hpa_stabilization_s}: the shield's; Kubernetes' default is 300)",
    )
    ap.add_argument("--quiet", action="store_true", help="no live view")
    ap.add_argument(
        "--no-fetch",
        action="store_true",
        help="never download the pinned control plane or Prometheus (also QSCALE_NO_FETCH=1); "
        "cached copies are still used",
    )
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument(
        "--offline",
        action="store_true",
        help="run the offline demo (qscale evaluate) without trying a cluster",
    )
    mode.add_argument(
        "--no-fallback",
        action="store_true",
        help="fail instead of falling back to the offline demo",
    )
    return ap


def _offline(out: Path, why: str | None) -> int:
    from qscale.cli import main as cli_main

    args = [*OFFLINE_ARGS, "--out", str(out)]
    if why:
        print(
            f"qscale demo: no local control plane here ({why}); running the offline demo "
            f"instead: qscale {' '.join(args)}",
            flush=True,
        )
    return cli_main(args)


def demo_main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(list(argv))
    if args.offline:
        return _offline(args.out, None)
    from qscale.dev.cluster import ClusterUnavailable, find_k8s_bin
    from qscale.dev.fetch import FetchError
    from qscale.dev.prom import PrometheusUnavailable, find_prometheus

    def say(msg: str) -> None:
        print(f"qscale demo: {msg}", flush=True)

    try:
        find_k8s_bin(fetch=not args.no_fetch, say=say)
        find_prometheus(fetch=not args.no_fetch, say=say)
    except (ClusterUnavailable, PrometheusUnavailable) as e:
        if args.no_fallback:
            print(f"qscale demo: error: {e}", file=sys.stderr)
            return 2
        return _offline(args.out, str(e))
    except (FetchError, OSError) as e:  # a wrong download, or no room for it: never fall back
        print(f"qscale demo: error: {e}", file=sys.stderr)
        return 1

    from qscale.demo.report import summary_table
    from qscale.demo.run import DemoConfig, DemoError, run_demo

    cfg = DemoConfig(
        out=args.out,
        trace=args.trace,
        start_h=args.start_hour,
        hours=args.hours,
        play_s=(args.minutes if args.minutes is not None else args.hours * 60.0) * 60.0,
        scale=args.scale,
        startup_delay_s=args.startup_delay,
        slo_ms=args.slo_ms,
        slo_priority=args.slo_priority,
        max_replicas=args.max_replicas,
        hpa_target=args.hpa_target,
        hpa_stabilization_s=args.hpa_stabilization,
        live=not args.quiet,
    )
    try:
        res = run_demo(cfg)
    except KeyboardInterrupt:
        print("qscale demo: interrupted; everything it started is stopped", file=sys.stderr)
        return 130
    except (DemoError, ClusterUnavailable, PrometheusUnavailable, ValueError, OSError) as e:
        print(f"qscale demo: error: {e}", file=sys.stderr)
        return 1
    s = res.summary
    print()
    print(
        f"summary over {s['minutes']:.1f} wall-clock minutes ({s['trace']}); p95 from "
        f"{s['p95_source']}:"
    )
    print(summary_table(s))
    tm = s["timings_s"]
    print(
        f"\nwrote {res.files['summary']}, {res.files['timeline']}, {res.files['png']} "
        f"(set-up {tm.get('setup_s', 0):.0f} s, total {tm['total_s']:.0f} s); "
        "everything the demo started is stopped"
    )
    return 0
