"""Agreement of the HPA port (qscale.hpa) with the real kube-controller-manager, per scenario.

Plays every scenario of ``qscale.dev.hpa_conformance`` on a local control plane (kwokctl binary
runtime, metrics-server at 10 s, HPA sync period 5 s, downscale window 60 s, CPU initialization
period 60 s; about 5 minutes on 2 cores), records what the controller observed and did at each
sync, drives the port with those observations and prints the share of syncs with identical
replica counts as a Markdown table (the one in BENCHMARKS.md), the syncs in the race window by
the harness's rule and by its first, coarser one, and whether the recording discriminates the
CPU start-up rules: the port replayed with each rule's parameter at 0 must disagree.

    python benchmarks/bench_hpa_conformance.py [--out rec.json.gz]   # run on a fresh cluster
    python benchmarks/bench_hpa_conformance.py --replay rec.json.gz  # compare a recording again
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from qscale.dev import hpa_conformance as hc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="write the recording here (.json or .json.gz)")
    ap.add_argument("--replay", type=Path, help="compare a saved recording; start no cluster")
    ap.add_argument("--scenarios", help="comma-separated subset of scenario names")
    ap.add_argument("--details", action="store_true", help="print every disagreeing sync")
    args = ap.parse_args()
    torch.set_num_threads(1)

    if args.replay:
        recording = hc.load(args.replay)
    else:
        from qscale.dev.cluster import ClusterUnavailable, start_cluster

        scenarios = hc.SCENARIOS
        if args.scenarios:
            wanted = set(args.scenarios.split(","))
            scenarios = tuple(s for s in hc.SCENARIOS if s.name in wanted)
        t = time.monotonic()
        try:
            cluster = start_cluster(hc.cluster_options())
        except ClusterUnavailable as e:
            print(f"bench_hpa_conformance: {e}", file=sys.stderr)
            return 2
        try:
            recording = hc.run_conformance(
                cluster, scenarios, log=lambda m: print(f"[{time.monotonic() - t:5.0f} s] {m}")
            )
        finally:
            cluster.delete()
        print(f"recorded in {time.monotonic() - t:.0f} s")
        if args.out:
            hc.save(recording, args.out)
            print(f"recording written to {args.out}")

    rows = []
    discrimination: list[hc.Discrimination] = []
    for s in recording["scenarios"]:
        res = hc.replay(s)
        rows.append(hc.agreement(s["name"], res))
        discrimination += hc.startup_discrimination(s)
        if args.details:
            for r in res:
                if not r.agrees or r.port_proposal != r.controller_proposal:
                    print(f"  {s['name']}: {r}")
    print()
    print(hc.markdown_table(rows))
    total = sum(a.syncs for a in rows)
    agree = sum(a.agree for a in rows)
    window = sum(a.in_window for a in rows)
    ambiguous = sum(a.ambiguous for a in rows)
    coarse = sum(a.in_window_any for a in rows)
    print(f"\nall scenarios: {agree}/{total} syncs with identical replicas")
    print(
        f"race window: {window}/{total} syncs where what the controller may have observed "
        f"instead changes the port's answer ({ambiguous} observed ambiguously); "
        f"{coarse}/{total} by the first rule (any change within "
        f"{hc.RACE_MARGIN_S * 1000:g} ms)"
    )
    print("\nthe port with one start-up parameter at 0: disagreements the race does not explain")
    print("| scenario | parameter at 0 | replicas | proposals |\n|---|---|---|---|")
    for d in discrimination:
        if d.replicas or d.proposals:
            print(f"| {d.scenario} | {d.parameter} | {d.replicas} | {d.proposals} |")
    for parameter in hc.STARTUP_PARAMETERS:
        n = sum(d.replicas for d in discrimination if d.parameter == parameter)
        print(f"{parameter}=0: {n} syncs with other replica counts in all")
    return 0 if agree == total else 1


if __name__ == "__main__":
    sys.exit(main())
