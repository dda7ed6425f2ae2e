"""The reference a training run is compared with: the HPA tuned on the training split.

Tuning uses clusters and windows drawn like the validation ones but from the *training* split,
so the tuned HPA has seen no validation data; then the tuned and the default HPA are scored on
the validation windows once, and the trainer logs those numbers beside its own evaluations.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from qscale.policy.train import BaselineEval
from qscale.policy.train import evaluate as score
from qscale.simulator import env as sim
from qscale.simulator.baselines import HPAController, tune_hpa_on
from qscale.simulator.tracebank import TraceBank


def hpa_baseline(
    traces: list[str],
    train_split: str,
    config: sim.SimConfig,
    windows: Callable[[TraceBank, int, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    n_windows: int,
    steps: int,
    seed: int,
    tuned: bool = True,
) -> BaselineEval:
    """A ``baseline_eval`` hook for :func:`qscale.policy.train.train`: the default HPA and
    (``tuned``) the HPA grid-searched on the training split for the highest mean return."""
    tuned_cfg = None
    tune_info: dict[str, float] = {}
    if tuned:
        bank = TraceBank.from_files(traces, split=train_split, dt=config.dt)
        params = sim.make_params(bank, n_windows, seed=seed, config=config)
        tuned_cfg = tune_hpa_on(params, *windows(bank, n_windows, steps)).config
        tune_info = {
            "hpa_tuned_target_utilization": tuned_cfg.target_utilization,
            "hpa_tuned_stabilization_s": tuned_cfg.scale_down_stabilization_s,
        }

    def on_val(params: sim.EnvParams, state: sim.EnvState, obs: torch.Tensor) -> dict:
        out = {f"hpa_{k}": v for k, v in score(HPAController(), params, state, obs).items()}
        if tuned_cfg is not None:
            scores = score(HPAController(tuned_cfg, name="hpa-tuned"), params, state, obs)
            out.update({f"hpa_tuned_{k}": v for k, v in scores.items()})
            out.update(tune_info)
        return out

    return on_val
