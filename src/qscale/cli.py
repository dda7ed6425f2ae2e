"""The ``qscale`` command line: ``evaluate``, ``simulate`` and ``train``.

Errors a user can cause (a bad trace file, an unknown controller) end in one line on stderr and
exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from qscale.policy.artifact import ArtifactError
from qscale.simulator.baselines import (
    HPAController,
    KedaController,
    OracleController,
    TuneResult,
    tune_hpa_on,
)
from qscale.simulator.evaluate import (
    EvalProfile,
    build,
    evaluate,
    format_table,
    run,
    write_outputs,
)
from qscale.simulator.rollout import Controller
from qscale.simulator.splits import SPLIT_NAMES, packaged_trace, shared_trace_files
from qscale.simulator.tracebank import TraceBank
from qscale.simulator.traces import TraceError

BASELINES = ("hpa", "hpa-tuned", "keda", "oracle")
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
            raise UsageError("no shared traces found (set QSCALE_TRACES_DIR or pass CSV paths)")
        return files, True
    paths = [Path(n) for n in names]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise UsageError(f"trace file not found: {', '.join(missing)}")
    return paths, False


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available")
    return torch.device(name)


def _profile(args: argparse.Namespace) -> EvalProfile:
    delay = tuple(float(x) for x in args.startup_delay.split(","))
    if len(delay) == 1:
        delay = (delay[0], delay[0])
    if len(delay) != 2 or delay[0] > delay[1] or delay[0] < 0:
        raise UsageError("--startup-delay takes SECONDS or LO,HI with 0 <= LO <= HI")
    if args.peak_replicas < 1:
        raise UsageError("--peak-replicas must be >= 1")
    return EvalProfile(
        peak_replicas=args.peak_replicas,
        startup_delay_s=delay,  # type: ignore[arg-type]
        noise=not args.no_noise,
        slo_factor=args.slo_factor,
    )


def _tune(
    args: argparse.Namespace, profile: EvalProfile, eval_paths: list[Path], device: torch.device
) -> tuple[TuneResult, str]:
    """Tune the HPA on the training split: the shared catalog's when it is there, else the
    evaluated traces' own training split."""
    shared = shared_trace_files()
    tune_paths = shared or eval_paths
    source = "shared traces" if shared else "the evaluated traces"
    bank = TraceBank.from_files(tune_paths, split="train", dt=profile.dt, device=device)
    steps = int(args.tune_hours * 3600 / profile.dt)
    params, win = build(bank, profile, [1000, 1001], horizon_steps=steps)
    result = tune_hpa_on(params, win.trace, win.start, win.length, not args.no_progress)
    return result, f"{source}, split=train, {len(bank.names)} traces x {args.tune_hours:g} h"


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


def _controllers(
    names: Sequence[str], tuned: TuneResult | None, policy=None
) -> dict[str, Callable[[], Controller]]:
    makers: dict[str, Callable[[], Controller]] = {}
    for name in names:
        if name == "dqn":
            if policy is None:
                raise UsageError("controller 'dqn' needs a model (--model PATH or default)")
            from qscale.policy.controller import DQNController

            makers[name] = lambda: DQNController(policy.module, name="dqn")
        elif name == "hpa":
            makers[name] = lambda: HPAController(name="hpa")
        elif name == "hpa-tuned":
            assert tuned is not None
            cfg = tuned.config
            makers[name] = lambda cfg=cfg: HPAController(cfg, name="hpa-tuned")
        elif name == "keda":
            makers[name] = KedaController
        elif name == "oracle":
            makers[name] = OracleController
        else:
            raise UsageError(f"unknown controller {name!r}; choose from {', '.join(CONTROLLERS)}")
    return makers


def _controller_names(spec: str | None, with_model: bool) -> list[str]:
    default = CONTROLLERS if with_model else BASELINES
    names = [c.strip() for c in (spec or ",".join(default)).split(",") if c.strip()]
    for n in names:
        if n not in CONTROLLERS:
            raise UsageError(f"unknown controller {n!r}; choose from {', '.join(CONTROLLERS)}")
    return names


def run_evaluation(args: argparse.Namespace) -> tuple[dict, str]:
    """What ``qscale evaluate`` does, returning the JSON document and the printed text."""
    t0 = time.perf_counter()
    device = _device(args.device)
    paths, is_shared = _resolve_traces(args.traces)
    split = args.split or ("test" if is_shared else "all")
    profile = _profile(args)
    _controller_names(args.controllers, True)  # refuse a typo before any work
    bank = TraceBank.from_files(paths, split=split, dt=profile.dt, device=device)
    policy = _load_model(args.model, device)
    names = _controller_names(args.controllers, policy is not None)
    tuned, tuned_on = (None, "")
    if "hpa-tuned" in names:
        print("tuning the HPA (target utilization x stabilization window) ...", file=sys.stderr)
        tuned, tuned_on = _tune(args, profile, paths, device)
    horizon = None if args.horizon_hours is None else int(args.horizon_hours * 3600 / profile.dt)
    seeds = list(range(args.seeds))
    res = evaluate(
        _controllers(names, tuned, policy),
        bank,
        profile,
        seeds,
        horizon_steps=horizon,
        progress=not args.no_progress,
    )
    out = Path(args.out)
    meta = {
        "traces": [str(p) for p in paths],
        "split": split,
        "seeds": seeds,
        "horizon_hours": args.horizon_hours,
        "profile": dataclasses.asdict(profile),
        "device": str(device),
    }
    if policy is not None:
        meta["model"] = {
            "path": str(policy.path),
            "kind": policy.kind,
            "model_sha256": policy.manifest.get("model_sha256"),
            "spec_hash": policy.manifest.get("spec_hash"),
        }
    if tuned is not None:
        meta["hpa_tuned"] = {
            "target_utilization": tuned.config.target_utilization,
            "scale_down_stabilization_s": tuned.config.scale_down_stabilization_s,
            "tuned_on": tuned_on,
            "rule": tuned.rule,
            "grid": tuned.table,
        }
    meta["wall_seconds"] = round(time.perf_counter() - t0, 1)
    summary = res.summary()
    written = write_outputs(res, summary, out, bank, meta)
    lines = [format_table(summary)]
    if tuned is not None:
        c = tuned.config
        lines.append(
            f"hpa-tuned: target utilization {c.target_utilization:.2f}, scale-down "
            f"stabilization {c.scale_down_stabilization_s:g} s (tuned on {tuned_on})"
        )
    text = "\n".join(lines)
    print(text)
    print(f"table and rows: {written['json']}  {written['csv']}")
    for key, p in written.items():
        if key.startswith("plot:"):
            print(f"plot: {p}")
    doc = {"meta": meta, "summary": summary, "table": text}
    return doc, text


def cmd_evaluate(args: argparse.Namespace) -> int:
    run_evaluation(args)
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    """One controller on one trace: a per-step CSV timeline and the totals."""
    device = _device(args.device)
    paths, _ = _resolve_traces([args.trace] if args.trace else None)
    profile = _profile(args)
    bank = TraceBank.from_files(paths, split=args.split, dt=profile.dt, device=device)
    tuned = None
    if args.controller == "hpa-tuned":
        tuned, _ = _tune(args, profile, paths, device)
    make = _controllers([args.controller], tuned)[args.controller]
    horizon = None if args.horizon_hours is None else int(args.horizon_hours * 3600 / profile.dt)
    params, win = build(bank, profile, [args.seed], horizon)
    m = run(make(), params, win, record=True, progress=not args.no_progress)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    assert m.timeline is not None
    n = int(win.length[0])
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
        "cost_replica_hours": float(m.cost_replica_hours[0]),
        "slo_violation_minutes": float(m.slo_violation_minutes[0]),
        "scaling_actions": float(m.scaling_actions[0]),
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
        help="pods the traffic's p99 rate needs at 100%% CPU (default 20)",
    )
    p.add_argument(
        "--startup-delay",
        default="30,90",
        help="pod start-up delay in seconds, SECONDS or LO,HI drawn per seed",
    )
    p.add_argument(
        "--slo-factor",
        type=float,
        default=2.0,
        help="SLO as a multiple of the unloaded p95 latency (default 2)",
    )
    p.add_argument("--no-noise", action="store_true", help="no Poisson arrival noise")
    p.add_argument(
        "--horizon-hours",
        type=float,
        default=72.0,
        help="evaluate at most this much of each trace from its start (default 72)",
    )
    p.add_argument(
        "--tune-hours",
        type=float,
        default=12.0,
        help="hours of each training trace used to tune the HPA (default 12)",
    )
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


_CLUSTER_COMMANDS = {
    "operator": "run the Kubernetes operator (see qscale operator --help)",
    "emulate": "play the services behind emulated Deployments (see qscale emulate --help)",
    "model": "publish a model to a ConfigMap (qscale model publish --help)",
}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="qscale", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)

    ev = sub.add_parser("evaluate", help="compare controllers on traces: table, JSON/CSV, plots")
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
        "the package (if any); 'none' = baselines only",
    )
    ev.add_argument("--seeds", type=int, default=5, help="number of seeds (default 5)")
    ev.add_argument("--out", default="out/evaluate", help="output directory")
    _add_profile_args(ev)

    si = sub.add_parser("simulate", help="one controller on one trace, per-step CSV timeline")
    si.add_argument("--trace", help="CSV file (default: the shipped excerpt)")
    si.add_argument("--split", choices=SPLIT_NAMES, default="all")
    si.add_argument("--controller", default="hpa", choices=BASELINES)
    si.add_argument("--seed", type=int, default=0)
    si.add_argument("--out", default="out/simulate.csv", help="timeline CSV path")
    _add_profile_args(si)

    sub.add_parser("train", help="train a DQN policy (see qscale train --help)", add_help=False)
    for name, what in _CLUSTER_COMMANDS.items():
        sub.add_parser(name, help=what, add_help=False)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
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
            if args.seeds < 1:
                raise UsageError("--seeds must be >= 1")
            return cmd_evaluate(args)
        return cmd_simulate(args)
    except (UsageError, TraceError, ValueError, ArtifactError) as err:
        print(f"qscale {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
