"""``qscale emulate``: play the services behind emulated Deployments until interrupted."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence

__all__ = ["emulate_main"]


def emulate_main(argv: Sequence[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="qscale emulate",
        description="Play the service behind each emulated Deployment (kwok's fake pods): follow a "
        "load, watch the Ready pods, step the simulator's service model, export what the app, "
        "cAdvisor and kube-state-metrics would, on one loopback endpoint for Prometheus.",
    )
    ap.add_argument("--kubeconfig", required=True)
    ap.add_argument("--namespace", "-n", required=True)
    ap.add_argument(
        "--deployment", "-d", action="append", default=[], help="emulated Deployment (repeat)"
    )
    ap.add_argument(
        "--config",
        help="JSON list of workloads: {namespace, deployment, load, capacity_rps, "
        "service_time_s}; replaces --deployment/--load",
    )
    ap.add_argument(
        "--load",
        default="20",
        help="requests/s: N, T:N,T:N (steps), ramp:T:N,..., or trace:FILE[:SCALE] (default 20)",
    )
    ap.add_argument(
        "--capacity", type=float, default=50.0, help="requests/s one pod serves (default 50)"
    )
    ap.add_argument(
        "--service-time", type=float, default=0.05, help="mean service time, s (default 0.05)"
    )
    ap.add_argument("--compress", type=float, default=1.0, help="emulated seconds per real second")
    ap.add_argument("--step", type=float, default=1.0, help="seconds between steps (default 1)")
    ap.add_argument(
        "--control",
        help='JSON file {"namespace/deployment": LOAD, ...} re-read when it '
        "changes: loads to switch to while running",
    )
    ap.add_argument("--address", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9100)
    ap.add_argument(
        "--annotate-cpu",
        action="store_true",
        help="write each pod's CPU use to kwok.x-k8s.io/usage-cpu (metrics-server, a real HPA)",
    )
    args = ap.parse_args(list(argv))
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    from qscale.emulator import Emulator
    from qscale.emulator.workload import Load, Workload
    from qscale.simulator.traces import TraceError

    try:
        if args.config:
            with open(args.config) as f:
                items = json.load(f)
            workloads = [
                Workload(
                    namespace=i.get("namespace", args.namespace),
                    deployment=i["deployment"],
                    load=Load.parse(str(i.get("load", args.load))),
                    capacity_rps=float(i.get("capacity_rps", args.capacity)),
                    service_time_s=float(i.get("service_time_s", args.service_time)),
                )
                for i in items
            ]
        else:
            if not args.deployment:
                raise ValueError("name at least one --deployment (or give --config)")
            workloads = [
                Workload(args.namespace, d, Load.parse(args.load), args.capacity, args.service_time)
                for d in args.deployment
            ]
    except (OSError, ValueError, KeyError, TraceError) as e:
        print(f"qscale emulate: error: {e}", file=sys.stderr)
        return 2
    em = Emulator(
        args.kubeconfig,
        workloads,
        compress=args.compress,
        step_s=args.step,
        port=args.port,
        address=args.address,
        annotate_cpu=args.annotate_cpu,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with em:
        print(f"emulating {len(workloads)} workload(s); metrics on {em.url}", flush=True)
        mtime = None
        while not stop.wait(0.2):
            if not args.control:
                continue
            try:
                m = os.stat(args.control).st_mtime_ns
                if m == mtime:
                    continue
                mtime = m
                with open(args.control) as f:
                    changes = json.load(f)
                for key, load in changes.items():
                    ns, name = key.split("/", 1)
                    em.set_load(ns, name, str(load))
                print(f"loads changed at {time.time():.3f}: {len(changes)}", flush=True)
            except (OSError, ValueError, KeyError) as e:
                print(f"control file: {e}", file=sys.stderr, flush=True)
    return 0
