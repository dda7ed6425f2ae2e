"""The reference a training run is compared with: the default HPA and the tuned HPA.

The tuned HPA follows :data:`qscale.simulator.frontier.TUNED_RULE` on clusters and windows
drawn like the validation ones but from the *training* split, so it has seen no validation
data; then the tuned and the default HPA are scored on the validation windows once, and the
trainer logs those numbers beside its own evaluations.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from qscale.policy.train import BaselineEval
from qscale.policy.train import evaluate as score
from qscale.simulator import env as sim
from qscale.simulator import frontier as fr
from qscale.simulator.tracebank import TraceBank

DEFAULT_HPA = fr.Rule("hpa", 0.7, 300.0, "legacy")


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
    (``tuned``) the HPA chosen by the tuned rule on the training split."""
    tuned_rule = None
    if tuned:
        bank = TraceBank.from_files(traces, split=train_split, dt=config.dt)
        params = sim.make_params(bank, n_windows, seed=seed, config=config)
        tuned_rule = fr.pick_tuned(
            fr.run_rules(fr.hpa_grid(), params, windows(bank, n_windows, steps))
        )

    def on_val(params: sim.EnvParams, state: sim.EnvState, obs: torch.Tensor) -> dict:
        out = {
            f"hpa_{k}": v
            for k, v in score(fr.make_controller(DEFAULT_HPA), params, state, obs).items()
        }
        if tuned_rule is not None:
            scores = score(fr.make_controller(tuned_rule), params, state, obs)
            out.update({f"hpa_tuned_{k}": v for k, v in scores.items()})
            out["hpa_tuned_target"] = tuned_rule.target
            out["hpa_tuned_window_s"] = tuned_rule.window_s
        return out

    return on_val
