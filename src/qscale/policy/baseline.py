"""The reference a training run is compared with: the default HPA and the tuned HPA.

The tuned HPA follows :data:`qscale.simulator.frontier.TUNED_RULE` on clusters and windows
drawn like the validation ones but from the *training* split, so it has seen no validation
data; then the tuned and the default HPA are scored on the validation windows once (by
:func:`qscale.simulator.evaluate.evaluate`, like the policy), and the trainer logs those numbers
beside its own evaluations.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch

from qscale.simulator import env as sim
from qscale.simulator import frontier as fr
from qscale.simulator.evaluate import Windows, evaluate
from qscale.simulator.tracebank import TraceBank

BaselineEval = Callable[[sim.EnvParams, Windows], dict]
"""``(val params, val windows) -> {metric: value}``: scores a reference controller once on the
same validation windows the policy is evaluated on (non-numbers are not logged)."""


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
    rules = {"hpa": fr.DEFAULT_HPA}
    if tuned:
        bank = TraceBank.from_files(traces, split=train_split, dt=config.dt)
        params = sim.make_params(bank, n_windows, seed=seed, config=config)
        rules["hpa_tuned"] = fr.pick_tuned(
            fr.run_rules(fr.hpa_grid(), params, windows(bank, n_windows, steps))
        )

    def on_val(params: sim.EnvParams, val_windows: Windows) -> dict:
        controllers = {name: partial(fr.make_controller, rule) for name, rule in rules.items()}
        ev = evaluate(controllers, params, val_windows, timelines=False)
        out = {f"{name}_{k}": v for name in rules for k, v in ev.means(name).items()}
        if tuned:
            out["hpa_tuned_target"] = rules["hpa_tuned"].target
            out["hpa_tuned_window_s"] = rules["hpa_tuned"].window_s
        return out

    return on_val
