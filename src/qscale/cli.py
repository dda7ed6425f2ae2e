"""The ``qscale`` command line: ``evaluate``, ``simulate`` and ``train``.

Errors a user can cause (a bad trace file, a bad flag, an unwritable output) end in one line on
stderr naming the flag or file, and exit status 2, never a traceback -- and they are found
before any simulation runs, so nothing is lost.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from qscale import features
from qscale.policy.artifact import ArtifactError
from qscale.policy.controller import policy_row
from qscale.simulator import frontier as fr
from qscale.simulator.baselines import OracleController
from qscale.simulator.device import resolve_device
from qscale.simulator.evaluate import (
    BASELINES,
    EvalPlan,
    EvalProfile,
    build,
    choose_on_validation,
    compare,
    run,
    tune_hpa,
)
from qscale.simulator.rollout import Controller
from qscale.simulator.splits import SPLIT_NAMES, packaged_trace, shared_trace_files
from qscale.simulator.tracebank import TraceBank
from qscale.simulator.traces import TraceError

CONTROLLERS = ("dqn", *BASELINES)


class UsageError(Exception):
    """A mistake in the command line or its inputs: printed as one line, exit status 2."""


def _resolve_traces(names: Sequence[str] | None) -> tuple[list[Path], bool]:
    """Paths of the traces to use and whether they are the shared catalog.

    ``None`` means the excerpt shipped in the package; ``shared`` the shared catalog.
    """
    if not names:
        return [packaged_trace()], False
    if list(names) == ["shared"]:
        files = shared_trace_files()
        if not files:
            raise UsageError("--traces shared: no shared traces found (set QSCALE_TRACES_DIR)")
        return files, True
    paths = [Path(n) for n in names]
    for p in paths:
        if p.is_dir():
            raise UsageError(f"--traces {p}: is a directory (give CSV files, e.g. {p}/*.csv)")
        if not p.is_file():
            raise UsageError(f"--traces {p}: file not found")
    return paths, False


def _device(name: str) -> torch.device:
    try:
        return resolve_device(name, "--device")
    except ValueError as e:
        raise UsageError(str(e)) from None


def _pair(flag: str, text: str) -> tuple[float, float]:
    try:
        vals = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise UsageError(f"{flag} takes a number or LO,HI, got {text!r}") from None
    if len(vals) == 1:
        vals = (vals[0], vals[0])
    if len(vals) != 2 or not all(math.isfinite(v) for v in vals) or vals[0] > vals[1]:
        raise UsageError(f"{flag} takes a number or LO,HI with LO <= HI, got {text!r}")
    return vals  # type: ignore[return-value]


def _profile(args: argparse.Namespace) -> EvalProfile:
    delay = _pair("--startup-delay", args.startup_delay)
    if delay[0] < 0:
        raise UsageError("--startup-delay must be >= 0 seconds")
    ratio = _pair("--cpu-limit-ratio", args.cpu_limit_ratio)
    if ratio[0] < 1.0:
        raise UsageError("--cpu-limit-ratio is CPU limit / request and must be >= 1")
    checks = (
        ("--peak-replicas", args.peak_replicas, args.peak_replicas >= 1, ">= 1"),
        ("--slo-factor", args.slo_factor, args.slo_factor > 1.0,
         "> 1 (the SLO is a multiple of the unloaded p95; at <= 1 every minute violates it)"),
        ("--max-replicas-factor", args.max_replicas_factor, args.max_replicas_factor >= 1, ">= 1"),
        ("--slo-priority", args.slo_priority,
         features.SLO_PRIORITY_RANGE[0] <= args.slo_priority <= features.SLO_PRIORITY_RANGE[1],
         f"in [{features.SLO_PRIORITY_RANGE[0]:g}, {features.SLO_PRIORITY_RANGE[1]:g}]"),
    )  # fmt: skip
    for flag, value, ok, rule in checks:
        if not (math.isfinite(value) and ok):
            raise UsageError(f"{flag} must be {rule}, got {value:g}")
    return EvalProfile(
        peak_replicas=args.peak_replicas,
        startup_delay_s=delay,
        noise=not args.no_noise,
        slo_factor=args.slo_factor,
        max_replicas_factor=args.max_replicas_factor,
        cpu_limit_ratio=ratio,
        capacity_declared=not args.no_capacity,
        capacity_estimated=args.estimate_capacity,
        slo_priority=args.slo_priority,
    )


def _steps(flag: str, hours: float | None, dt: float) -> int | None:
    if hours is None:
        return None
    if not (math.isfinite(hours) and hours > 0):
        raise UsageError(f"{flag} must be > 0 hours, got {hours:g}")
    steps = int(hours * 3600 / dt)
    if steps < 1:
        raise UsageError(f"{flag} {hours:g} is shorter than one {dt:g} s step")
    return steps


def _check_out_dir(flag: str, path: Path) -> None:
    """Refuse an output that cannot be written before any work is done."""
    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {path}: is a file, not a directory")
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path}: {probe} is not writable")


def _check_out_file(flag: str, path: Path) -> None:
    if path.is_dir():
        raise UsageError(f"{flag} {path}: is a directory, not a file")
    _check_out_dir(flag, path.parent if str(path.parent) else Path("."))


def _threads(n: int) -> None:
    """Pin torch's threads: unpinned, a busy core makes torch's spinning threads collapse."""
    if n < 1:
        raise UsageError(f"--threads must be >= 1, got {n}")
    torch.set_num_threads(n)


def _load_model(spec: str | None, device: torch.device):
    """The policy artifact named by ``--model``: a directory, ``default`` (the shipped model),
    or ``none``. ``None`` when no model is to be evaluated."""
    from qscale.policy.artifact import load_policy
    from qscale.policy.default import default_model_path, has_default_model

    if spec in (None, "none"):
        return None
    if spec == "default":
        if not has_default_model():
            print(
                "no default model in this install (`make model` builds it): baselines only",
                file=sys.stderr,
            )
            return None
        return load_policy(default_model_path(), device=device)
    return load_policy(spec, device=device)


def _controller_names(spec: str | None, with_model: bool) -> list[str]:
    default = CONTROLLERS if with_model else BASELINES
    names = [c.strip() for c in (spec or ",".join(default)).split(",") if c.strip()]
    for n in names:
        if n not in CONTROLLERS:
            raise UsageError(
                f"--controllers: unknown controller {n!r}; choose from {', '.join(CONTROLLERS)}"
            )
    return names


def _say(args: argparse.Namespace) -> Callable[[str], None]:
    def say(msg: str) -> None:
        if not getattr(args, "quiet", False):
            print(msg, file=sys.stderr, flush=True)

    return say


def run_evaluation(args: argparse.Namespace) -> tuple[dict, str]:
    """What ``qscale evaluate`` does: check the flags, :func:`~qscale.simulator.evaluate.compare`,
    print the table and write the results. Returns the JSON document and the printed text."""
    t0 = time.perf_counter()
    _threads(args.threads)
    if args.seeds < 1:
        raise UsageError(f"--seeds must be >= 1, got {args.seeds}")
    if args.bootstrap < 0:
        raise UsageError(f"--bootstrap must be >= 0, got {args.bootstrap}")
    device = _device(args.device)
    out = Path(args.out)
    _check_out_dir("--out", out)
    paths, is_shared = _resolve_traces(args.traces)
    split = args.split or ("test" if is_shared else "all")
    profile = _profile(args)
    _steps("--window-hours", args.window_hours, profile.dt)
    _steps("--horizon-hours", args.horizon_hours, profile.dt)
    asked = _controller_names(args.controllers, True)  # refuse a typo before any work
    bank = TraceBank.from_files(paths, split=split, dt=profile.dt, device=device)
    # baselines only (--controllers without dqn): no model is loaded, so none can be refused
    wanted = args.controllers is None or "dqn" in asked
    policy = _load_model(args.model, device) if wanted else None
    names = _controller_names(args.controllers, policy is not None)
    if "dqn" in names and policy is None:
        raise UsageError("--controllers dqn needs a model (--model PATH or default)")
    plan = EvalPlan(
        traces=tuple(paths),
        split=split,
        seeds=tuple(range(args.seeds)),
        controllers=tuple(names),
        window_hours=args.window_hours,
        horizon_hours=args.horizon_hours,
        profile=profile,
        frontier=not args.no_frontier,
        bootstrap=args.bootstrap,
        cache=not args.no_cache,
    )
    dqn, model = policy_row(policy) if policy is not None else (None, None)
    report = compare(
        plan,
        bank,
        device,
        dqn,
        model,
        command="qscale " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["evaluate"] else None,
        progress=not args.no_progress,
        log=_say(args),
        started=t0,
    )
    print(report.text, flush=True)  # the table first: a failure writing files must not lose it
    try:
        written = report.write(out)
    except OSError as e:
        raise UsageError(
            f"--out {out}: cannot write the results ({e}); the table is above"
        ) from None
    print(f"table and rows: {written['json']}  {written['csv']}")
    plots = [str(p) for k, p in written.items() if ":" in k]
    if plots:
        print(f"plots: {len(plots)} PNGs in {out} (frontier_*.png, timeline_*.png)")
    return report.doc, report.text


def cmd_evaluate(args: argparse.Namespace) -> int:
    run_evaluation(args)
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    """One controller on one trace window: a per-step CSV timeline and the totals."""
    _threads(args.threads)
    device = _device(args.device)
    out = Path(args.out)
    _check_out_file("--out", out)
    paths, _ = _resolve_traces([args.trace] if args.trace else None)
    profile = _profile(args)
    horizon = _steps("--horizon-hours", args.horizon_hours, profile.dt)
    bank = TraceBank.from_files(paths, split=args.split, dt=profile.dt, device=device)
    if args.controller == "dqn":
        policy = _load_model(args.model or "default", device)
        if policy is None:
            raise UsageError("--controller dqn needs a model (--model PATH or default)")
        ctrl: Controller = policy_row(policy)[0]()
    elif args.controller == "oracle":
        ctrl = OracleController()
    elif args.controller == "hpa-tuned":
        rule, _ = tune_hpa(paths, profile, device, not args.no_cache, _say(args))
        ctrl = fr.make_controller(rule)
    elif args.controller == "rule-tuned":  # as qscale evaluate chooses it: 24 h windows, 5 seeds
        day = int(24 * 3600 / profile.dt)
        _, rule, _ = choose_on_validation(
            paths, profile, range(5), day, None, device, not args.no_cache, _say(args)
        )
        ctrl = fr.make_controller(rule)
    else:
        ctrl = fr.make_controller(fr.DEFAULT_RULES[args.controller])
    length = int(bank.lengths[0]) if horizon is None else min(horizon, int(bank.lengths[0]))
    params, win = build(bank, profile, [args.seed], window_steps=length, horizon_steps=length)
    m = run(ctrl, params, win, record=True, progress=not args.no_progress)
    assert m.timeline is not None
    n = int(win.length[0])
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as fh:
        fh.write("t_s,rate_rps,replicas,ready,p95_s,slo_s\n")
        slo = float(params.slo_s[0])
        tl = {k: v[:, 0].tolist() for k, v in m.timeline.items()}
        for i in range(n):
            fh.write(
                f"{i * profile.dt:g},{tl['rate'][i]:.4f},{tl['replicas'][i]:g},"
                f"{tl['ready'][i]:g},{tl['p95_s'][i]:.4f},{slo:.4f}\n"
            )
    totals = {
        "controller": args.controller,
        "trace": bank.names[0],
        "cost_replica_hours": round(float(m.cost_replica_hours[0]), 1),
        "slo_violation_minutes": round(float(m.slo_violation_minutes[0]), 1),
        "scaling_actions": int(m.scaling_actions[0]),
        "dropped_requests": int(m.dropped_requests[0]),
        "timeline": str(out),
    }
    print(json.dumps(totals, indent=2))
    return 0


def cmd_train(argv: list[str]) -> int:
    from qscale.policy.train import main as train_main

    return train_main(argv)


def _add_profile_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--peak-replicas",
        type=float,
        default=20.0,
        help="pods a trace's reference rate (its p99) needs at 100%% CPU (default 20)",
    )
    p.add_argument(
        "--startup-delay",
        default="30,90",
        help="pod start-up delay in seconds, SECONDS or LO,HI drawn per window and seed",
    )
    p.add_argument(
        "--slo-factor",
        type=float,
        default=2.0,
        help="SLO as a multiple of the unloaded p95 latency, > 1 (default 2)",
    )
    p.add_argument(
        "--max-replicas-factor",
        type=float,
        default=2.5,
        help="maxReplicas as a multiple of --peak-replicas (a safety cap; default 2.5)",
    )
    p.add_argument(
        "--cpu-limit-ratio",
        default="1,4",
        help="pods' CPU limit / request, RATIO or LO,HI drawn per window and seed (default 1,4)",
    )
    p.add_argument("--no-noise", action="store_true", help="no Poisson arrival noise")
    p.add_argument(
        "--no-capacity",
        action="store_true",
        help="the model is not told the pods' capacity (a policy without "
        "spec.capacity): its rate actions are unavailable; the rate rules still get it",
    )
    p.add_argument(
        "--estimate-capacity",
        action="store_true",
        help="with --no-capacity: the pods' capacity is estimated from the metrics (rate over "
        "busy pods, last 30 minutes) and the model sizes with that",
    )
    p.add_argument(
        "--slo-priority",
        type=float,
        default=1.0,
        help="the SLO priority the model's policy sets (spec.slo.priority: 2 weighs a minute "
        "over the SLO twice as much against cost; default 1); returns stay scored at 1",
    )
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads, pinned (default 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--no-cache", action="store_true", help="recompute the rule grids")


_CLUSTER_COMMANDS = {
    "operator": "run the Kubernetes operator (see qscale operator --help)",
    "emulate": "play the services behind emulated Deployments (see qscale emulate --help)",
    "model": "publish a model to a ConfigMap (qscale model publish --help)",
}


def _duration_s(flag: str, text: str | None) -> float | None:
    """Seconds in ``90``, ``15m``, ``1h`` or ``2d`` (``None``: not given)."""
    if text is None:
        return None
    units = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    try:
        value = float(text[:-1]) * units[text[-1]] if text[-1:] in units else float(text)
    except (ValueError, IndexError):
        raise UsageError(
            f"{flag} takes seconds or a duration like 15m, 1h, 2d; got {text!r}"
        ) from None
    if not (math.isfinite(value) and value > 0):
        raise UsageError(f"{flag} must be > 0, got {text!r}")
    return value


def cmd_drift_reference(args: argparse.Namespace) -> int:
    """Build a model's drift reference from its training traces and write it into its
    manifest (models exported by ``qscale train`` have one already)."""
    from qscale.policy import artifact, driftref, train

    _threads(args.threads)
    root = Path(args.model)
    policy = artifact.load_policy(root)
    tc = policy.manifest.get("training_config") or {}
    traces = args.traces or tc.get("traces") or []
    if not traces:
        raise UsageError("--traces: the manifest names no training traces; give them")
    missing = [t for t in traces if not Path(t).is_file()]
    if missing:
        raise UsageError(f"--traces: not found: {', '.join(map(str, missing))}")
    cfg = train.config_of(policy.manifest, traces=list(traces))
    ref, report = driftref.build(
        policy.module, traces, train.sim_config(cfg), args.split, args.seed, args.per_trace
    )
    if not args.dry_run:
        driftref.write(root, ref)
    print(f"drift reference of {root}: {ref.samples} observations, {len(traces)} traces")
    print(f"{'ticks':>6} {'windows':>8} {'false alarms':>13}  thresholds (PSI per feature)")
    for t in ref.thresholds:
        fa = report[t.ticks]["false_alarms"]
        print(f"{t.ticks:>6} {t.windows:>8} {fa:>13.3f}  " + " ".join(f"{x:.2f}" for x in t.psi))
    if args.dry_run:
        print("--dry-run: the manifest was not changed")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    """A model for one service (``qscale tune``, ``qscale train --from-log``): fine-tuned on
    its own load, kept only if it beats the base model on held-back days."""
    import subprocess

    from qscale.policy import tune as tn
    from qscale.policy.default import default_model_path
    from qscale.policy.replaylog import read_log
    from qscale.simulator.traces import load_rates

    _threads(args.threads)
    given = [bool(args.trace), bool(args.from_log), bool(args.prometheus)]
    if sum(given) != 1:
        raise UsageError(
            "give one source: --trace CSV, --from-log LOG... with --policy NS/NAME, or "
            "--prometheus URL with --target NS/DEPLOYMENT"
        )
    publish = None
    if args.publish:
        ns, _, name = args.publish.partition("/")
        if not ns or not name:
            raise UsageError(f"--publish must be NAMESPACE/NAME, got {args.publish!r}")
        publish = (ns, name)
    out = Path(args.out)
    dt = 15.0
    service = tn.Service(args.capacity, args.startup_delay, None, "flags")
    if args.trace:
        rates = load_rates(args.trace, dt)
    elif args.from_log:
        if not args.policy:
            raise UsageError("--from-log needs --policy NAMESPACE/NAME")
        points, found = tn.from_log(read_log(args.from_log), args.policy)
        service = tn.Service(
            args.capacity or found.capacity_rps,
            args.startup_delay or found.startup_s,
            found.service_time_s,
            found.source,
        )
        rates = tn.rates_from_points(points, out, dt)
    else:
        if not args.target:
            raise UsageError("--prometheus needs --target NAMESPACE/DEPLOYMENT")
        points = tn.from_prometheus(args.prometheus, args.target, args.days)
        rates = tn.rates_from_points(points, out, dt)
    base = default_model_path() if args.model == "default" else Path(args.model)
    seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    report = tn.tune(
        rates, service, out, base_model=base, steps=args.steps, holdout=args.holdout,
        seeds=seeds, threads=args.threads,
    )  # fmt: skip
    print(f"{'':8} {'replica-h':>10} {'SLO min':>8} {'return':>9}   (per held-back window)")
    for name, r in report.results.items():
        print(
            f"{name:8} {r['cost_replica_hours']:>10.2f} {r['slo_violation_minutes']:>8.1f} "
            f"{r['return']:>9.1f}"
        )
    print(report.message)
    print(f"report: {out / 'report.json'}; model: {report.model}")
    if not report.better:
        print("nothing published")
        return 1
    if publish is None:
        print(f"publish it with: qscale model publish {report.model} --name NAME -n NAMESPACE")
        return 0
    cmd = [sys.executable, "-m", "qscale.entry", "model", "publish", str(report.model),
           "--name", publish[1], "--namespace", publish[0]]  # fmt: skip
    return subprocess.run(cmd, check=False).returncode


def cmd_replay_log(args: argparse.Namespace) -> int:
    """Another model on the states an operator's decision log recorded: its choices, cost and
    SLO minutes against what ran (the Shadow score's estimate)."""
    from qscale.policy.replaylog import read_log, replay

    _threads(args.threads)
    window = _duration_s("--window", args.window)
    if args.out:
        _check_out_file("--out", Path(args.out))
    policy = _load_model(args.model, torch.device("cpu"))
    if policy is None:
        raise UsageError("--model: give a model directory or default")
    results = replay(
        read_log(args.log),
        policy.module,
        policy=args.policy,
        window_s=window,
        startup_s=args.startup_delay,
    )
    name = policy.manifest.get("name") or Path(args.model).name
    print(f"model {name} replayed on {len(results)} policies of {', '.join(args.log)}")
    head = (
        f"{'policy':32} {'ticks':>6} {'agree':>6} {'model r-h':>10} {'ran r-h':>9} "
        f"{'model SLO min':>14} {'ran SLO min (measured)':>23}  verdict"
    )
    print(head)
    for r in results:
        sc = r.score
        agree = f"{r.agreement:6.0%}" if math.isfinite(r.agreement) else f"{'-':>6}"
        if sc.candidate is not None and sc.incumbent is not None:
            meas = sc.incumbent_measured_slo_minutes
            ran = f"{sc.incumbent.slo_minutes:.1f}" + (
                f" ({meas:.1f})" if math.isfinite(meas) else ""
            )
            figures = (
                f"{sc.candidate.replica_hours:10.2f} {sc.incumbent.replica_hours:9.2f} "
                f"{sc.candidate.slo_minutes:14.1f} {ran:>23}"
            )
        else:
            figures = f"{'-':>10} {'-':>9} {'-':>14} {'-':>23}"
        label = f"{r.namespace}/{r.policy}"
        print(f"{label:32} {r.replayed:6d} {agree} {figures}  {sc.verdict}")
        if sc.verdict == "INSUFFICIENT_DATA" or not r.replayed:
            why = (
                sc.message
                if r.replayed
                else (
                    "no replayable records (features, bounds and shield settings: the model was "
                    "never asked, or the log is from an older operator)"
                )
            )
            print(f"{'':32} {why}")
    if args.out:
        Path(args.out).write_text(
            json.dumps(
                {"model": name, "logs": list(args.log), "policies": [r.as_json() for r in results]},
                indent=2,
            )
            + "\n"
        )
    return 0


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="qscale", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)

    ev = sub.add_parser("evaluate", help="compare controllers on traces: table, frontier, plots")
    ev.add_argument(
        "--traces",
        nargs="*",
        help="CSV files (t,value); 'shared' for the shared catalog; "
        "default: the excerpt shipped in the package",
    )
    ev.add_argument(
        "--split",
        choices=SPLIT_NAMES,
        help="part of each trace (default: test for the shared catalog, else all)",
    )
    ev.add_argument(
        "--controllers",
        help=f"comma list from {', '.join(CONTROLLERS)} (default: all; dqn only with a model)",
    )
    ev.add_argument(
        "--model",
        default="default",
        help="policy artifact directory to evaluate as 'dqn'; 'default' = the model shipped in "
        "the package; 'none' = baselines only",
    )
    ev.add_argument("--seeds", type=int, default=5, help="number of seeds (default 5)")
    ev.add_argument(
        "--window-hours", type=float, default=24.0, help="length of each window (default 24)"
    )
    ev.add_argument(
        "--horizon-hours",
        type=float,
        default=None,
        help="use only the first this-many hours of each trace (default: all of it)",
    )
    ev.add_argument("--no-frontier", action="store_true", help="skip the rule frontier")
    ev.add_argument(
        "--bootstrap", type=int, default=200, help="bootstrap resamples for intervals (default 200)"
    )
    ev.add_argument("--out", default="out/evaluate", help="output directory")
    ev.add_argument("--quiet", action="store_true", help="no progress messages on stderr")
    _add_profile_args(ev)

    si = sub.add_parser("simulate", help="one controller on one trace, per-step CSV timeline")
    si.add_argument("--trace", help="CSV file (default: the shipped excerpt)")
    si.add_argument("--split", choices=SPLIT_NAMES, default="all")
    si.add_argument("--controller", default="hpa", choices=CONTROLLERS)
    si.add_argument("--model", help="policy artifact for --controller dqn (default: the shipped)")
    si.add_argument("--seed", type=int, default=0)
    si.add_argument(
        "--horizon-hours", type=float, default=72.0, help="hours of the trace to play (default 72)"
    )
    si.add_argument("--out", default="out/simulate.csv", help="timeline CSV path")
    _add_profile_args(si)

    rl = sub.add_parser(
        "replay-log",
        help="another model on an operator's decision log: its choices, cost and SLO minutes",
    )
    rl.add_argument(
        "log", nargs="+", help="decision log files (QSCALE_DECISION_LOG, rotated ones too)"
    )
    rl.add_argument(
        "--model", required=True, help="model directory, or 'default' (the shipped one)"
    )
    rl.add_argument("--policy", help="only this policy: NAMESPACE/NAME")
    rl.add_argument("--window", help="score the last this long of each policy (default: all of it)")
    rl.add_argument(
        "--startup-delay",
        type=float,
        default=30.0,
        help="pod start-up delay (s) to assume where the log shows no scale-up (default 30)",
    )
    rl.add_argument("--out", help="write the results as JSON here")
    rl.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")

    dr = sub.add_parser(
        "drift-reference",
        help="write a model's drift reference (its inputs over its training windows) into it",
    )
    dr.add_argument("model", help="model directory")
    dr.add_argument(
        "--traces", nargs="+", help="training traces (default: those its manifest names)"
    )
    dr.add_argument("--split", default="train", help="part of each trace (default train)")
    dr.add_argument("--seed", type=int, default=0, help="seed of the simulated clusters")
    dr.add_argument(
        "--per-trace", type=int, default=12, help="day-long windows per trace (default 12)"
    )
    dr.add_argument("--dry-run", action="store_true", help="print, do not write")
    dr.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")

    tu = sub.add_parser(
        "tune",
        help="fine-tune a model on one service's load; publish it only if it beats the base",
    )
    src = tu.add_argument_group("the service's load (one of)")
    src.add_argument("--trace", help="a t,value CSV of its request rate")
    src.add_argument("--from-log", nargs="+", help="decision log files (with --policy)")
    src.add_argument("--policy", help="NAMESPACE/NAME of the policy in the log")
    src.add_argument("--prometheus", help="Prometheus URL to read its request-rate history from")
    src.add_argument("--target", help="NAMESPACE/DEPLOYMENT (with --prometheus)")
    src.add_argument("--days", type=float, default=14.0, help="days of history (default 14)")
    tu.add_argument("--capacity", type=float, help="requests/s one pod serves, if known")
    tu.add_argument("--startup-delay", type=float, help="pod start-up delay (s), if known")
    tu.add_argument("--model", default="default", help="base model directory (default: shipped)")
    tu.add_argument("--steps", type=int, default=1_000_000, help="fine-tuning env steps")
    tu.add_argument(
        "--holdout", type=float, default=0.25, help="share of the series held back (default 0.25)"
    )
    tu.add_argument("--seeds", default="0,1,2", help="simulated clusters per held-back window")
    tu.add_argument("--out", default="out/tune", help="output directory")
    tu.add_argument(
        "--publish", metavar="NAMESPACE/NAME", help="publish the model as this ConfigMap if better"
    )
    tu.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")

    sub.add_parser("train", help="train a DQN policy (see qscale train --help)", add_help=False)
    for name, what in _CLUSTER_COMMANDS.items():
        sub.add_parser(name, help=what, add_help=False)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"] and "--from-log" in argv:  # the tuning path, on a decision log
        argv = ["tune", *argv[1:]]
    if argv[:1] == ["train"]:
        return cmd_train(argv[1:])
    if argv[:1] and argv[0] in _CLUSTER_COMMANDS:
        # Dispatched by the console script (qscale.entry), so that this module's imports never
        # reach kopf or kubernetes (qscale.policy imports it; see the import-linter contract).
        print(
            f"qscale {argv[0]}: run it as `qscale {argv[0]}` (qscale.entry:main)", file=sys.stderr
        )
        return 2
    args = parser().parse_args(argv)
    try:
        if args.command == "evaluate":
            return cmd_evaluate(args)
        if args.command == "replay-log":
            return cmd_replay_log(args)
        if args.command == "drift-reference":
            return cmd_drift_reference(args)
        if args.command == "tune":
            return cmd_tune(args)
        return cmd_simulate(args)
    except (UsageError, TraceError, ValueError, ArtifactError, OSError) as err:
        print(f"qscale {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
