"""The drift reference a model ships with (:class:`qscale.drift.Reference`).

The observations a model meets depend on the model itself (how many replicas it keeps, how
often it scales), so the reference is what *this* model saw: it is run greedy, shielded as in
serving, over day-long windows of its training traces' training split, on simulated clusters
drawn as in training. Every other window makes the reference; the ones between them (other days,
other clusters) are cut into shorter windows to calibrate the thresholds
(:func:`qscale.drift.fit`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qscale import drift
from qscale.policy import artifact
from qscale.simulator import env as sim
from qscale.simulator.evaluate import eval_windows
from qscale.simulator.tracebank import TraceBank

__all__ = ["build", "write"]

WINDOW_STEPS = 5760
"""24 h at 15 s: the longest calibrated length."""
MIN_WINDOW_STEPS = 480
"""A training episode (2 h at 15 s): the shortest window the reference is taken over."""


def _spread(trace: list[int], per_trace: int) -> list[int]:
    keep: list[int] = []
    for k in sorted(set(trace)):
        idx = [i for i, t in enumerate(trace) if t == k]
        pick = np.linspace(0, len(idx) - 1, min(per_trace, len(idx))).round().astype(int)
        keep += [idx[j] for j in sorted(set(pick.tolist()))]
    return keep


def rollout_observations(
    module: Callable[[torch.Tensor], torch.Tensor],
    bank: TraceBank,
    config: sim.SimConfig,
    seed: int,
    window_steps: int,
    per_trace: int,
) -> list[np.ndarray]:
    """The model's observations ``[T, F]`` over up to ``per_trace`` windows of each trace."""
    tr, st, ln = eval_windows(bank, window_steps)
    keep = _spread(tr, per_trace)
    tr, st, ln = ([x[i] for i in keep] for x in (tr, st, ln))
    params = sim.make_params(bank, len(tr), seed=seed, config=config)
    state, obs = sim.reset_fixed(params, torch.tensor(tr), torch.tensor(st), torch.tensor(ln))
    steps = max(ln)
    out = np.zeros((steps, len(tr), obs.shape[1]), dtype=np.float32)
    with torch.no_grad():
        for t in range(steps):
            out[t] = obs.cpu().numpy()
            q = module(obs).float()
            state, obs, *_ = sim.step_greedy(state, q, params)
    return [out[: ln[i], i] for i in range(len(tr))]


def build(
    module: Callable[[torch.Tensor], torch.Tensor],
    traces: Sequence[str | Path],
    config: sim.SimConfig,
    split: str = "train",
    seed: int = 0,
    per_trace: int = 12,
    window_steps: int = WINDOW_STEPS,
) -> tuple[drift.Reference, dict[str, Any]]:
    """The reference of ``module`` on ``traces``; and the calibration report."""
    bank = TraceBank.from_files(traces, split, config.dt)
    # Short data in day-long windows is one or two simulated clusters stepped one at a time:
    # cut it into more windows (never shorter than a training episode) that step together.
    total = int(bank.lengths.sum())
    window_steps = max(MIN_WINDOW_STEPS, min(window_steps, total // 32))
    windows = rollout_observations(module, bank, config, seed, window_steps, per_trace)
    ref_obs = np.concatenate(windows[0::2])
    calibration = windows[1::2] or windows
    source = {
        "traces": [Path(p).stem for p in traces],
        "split": split,
        "seed": seed,
        "window_steps": window_steps,
        "windows": len(windows),
    }
    return drift.fit(ref_obs, calibration, config.dt, source)


def write(path: str | Path, reference: drift.Reference) -> dict[str, Any]:
    """Put ``reference`` into the artifact's manifest (the weights are not touched)."""
    return artifact.update_manifest(path, {"drift": reference.as_manifest()})
