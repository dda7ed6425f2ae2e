"""``make model``: train the default policy, ship it inside the package, record its evaluation.

One reproducible command: a fixed seed and the :class:`~qscale.policy.train.TrainConfig`
defaults on the shared traces' training split, the best validation model copied to
``src/qscale/data/default_model``, then the evaluation ``qscale evaluate --traces shared`` makes
(:func:`qscale.simulator.evaluate.compare`) of that model beside the baselines; the table is
stored in the manifest's ``evaluation`` (model hashes unchanged).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import torch

from qscale.policy.artifact import load_policy, read_manifest, update_evaluation
from qscale.policy.controller import policy_row
from qscale.policy.default import default_model_path
from qscale.policy.train import TrainConfig, make_baseline, train
from qscale.simulator.evaluate import BASELINES, EvalPlan, compare
from qscale.simulator.splits import shared_trace_files
from qscale.simulator.tracebank import TraceBank


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m qscale.policy.release", description=__doc__)
    ap.add_argument("--output-dir", default="runs/default-model", help="training run directory")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--total-env-steps", type=int, default=TrainConfig.total_env_steps)
    ap.add_argument("--eval-seeds", type=int, default=5)
    ap.add_argument("--eval-out", default="out/default-model-eval")
    ap.add_argument("--dest", default=str(default_model_path()), help="where the model ships")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument(
        "--evaluate-only",
        action="store_true",
        help="keep the shipped model and its training record; redo only its evaluation",
    )
    args = ap.parse_args(argv)
    if not shared_trace_files():
        print("release: the shared traces are needed to train the default model", file=sys.stderr)
        return 2

    t0 = time.perf_counter()
    dest = Path(args.dest)
    if args.evaluate_only:
        manifest = read_manifest(dest)
        # a model exported by `qscale train` has no release record yet: its training summary's
        training = (manifest.get("evaluation") or {}).get("training")
        summary = manifest.get("training_summary")
        if training is None and summary:
            keys = ("global_step", "gradient_updates", "best_global_step", "best_val")
            training = {k: summary.get(k) for k in keys}
            training["from"] = "the model's training_summary (trained by qscale train)"
        return _evaluate(dest, args, training, t0)
    cfg = TrainConfig(
        seed=args.seed,
        output_dir=args.output_dir,
        total_env_steps=args.total_env_steps,
        progress=not args.no_progress,
    )
    result = train(cfg, make_baseline(cfg))
    train_s = time.perf_counter() - t0

    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(result.best_model, dest)
    training = {
        "wall_seconds": round(train_s, 1),
        "global_step": result.global_step,
        "gradient_updates": result.gradient_updates,
        "best_global_step": result.best_global_step,
        "env_steps_per_s": round(result.env_steps_per_s, 1),
        "updates_per_s": round(result.updates_per_s, 1),
        "best_val": result.best_eval,
    }
    return _evaluate(dest, args, training, t0)


def _evaluate(dest: Path, args: argparse.Namespace, training: dict | None, t0: float) -> int:
    """Evaluate the shipped model as ``qscale evaluate --model DEST --traces shared`` does (one
    thread, the CPU) and store its table in the manifest."""
    started = time.perf_counter()
    torch.set_num_threads(1)
    device = torch.device("cpu")
    traces = tuple(shared_trace_files())
    plan = EvalPlan(
        traces=traces,
        split="test",
        seeds=tuple(range(args.eval_seeds)),
        controllers=("dqn", *BASELINES),
    )
    bank = TraceBank.from_files(traces, split=plan.split, dt=plan.profile.dt, device=device)
    dqn, model = policy_row(load_policy(dest, device=device))
    report = compare(
        plan, bank, device, dqn, model, progress=not args.no_progress, log=_say, started=started
    )
    print(report.text, flush=True)
    written = report.write(Path(args.eval_out))
    print(f"table and rows: {written['json']}  {written['csv']}")
    plots = [str(p) for k, p in written.items() if ":" in k]
    if plots:
        print(f"plots: {len(plots)} PNGs in {args.eval_out} (frontier_*.png, timeline_*.png)")
    doc = report.doc
    # The shipped model is `--model default` wherever the checkout lies.
    shipped = dest.resolve() == default_model_path().resolve()
    doc["command"] = (
        f"qscale evaluate --model {'default' if shipped else dest} --traces shared "
        f"--seeds {args.eval_seeds} "
        f"--out {args.eval_out}"
    )
    doc["training"] = training
    update_evaluation(dest, doc)
    total = time.perf_counter() - t0
    print(f"default model: {dest} (this command took {total / 60:.1f} min)")
    return 0


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
