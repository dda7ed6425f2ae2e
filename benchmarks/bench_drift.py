"""How often the shipped model's drift thresholds fire: on held-out days of its training traces
(false alarms) and on simulated services shifted away from its training (detections).

The model runs greedy and shielded, as in serving, on the validation split of its 12 training
traces (days it never trained on; the thresholds were calibrated on the training split), on
clusters drawn as in training, and on clusters drawn with one thing changed. Each run's inputs
are cut into consecutive windows of each calibrated length; a window is flagged when a judged
input (qscale.operator.driftwatch.JUDGED) crosses its threshold. Written before looking at the
numbers: the goal is a false alarm rate near the calibrated 1 % on held-out days, and the
figures for the shifts are reported as they come.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_drift.py
"""

from __future__ import annotations

import dataclasses
import sys
import time

import numpy as np
import torch

from qscale import drift
from qscale.operator.driftwatch import JUDGED
from qscale.policy import artifact, driftref, train
from qscale.policy.default import default_model_path
from qscale.simulator.tracebank import TraceBank

SHIFTS = {
    "held-out days (val split)": {},
    "pods start in 10-20 min (trained: 15 s-4 min)": {"startup_delay_s": (600.0, 1200.0)},
    "services of 300-600 pods at peak (trained: 1-100)": {"peak_replicas": (300.0, 600.0)},
    "requests take 0.5-1 s (trained: 0.02-0.2 s)": {"service_time_s": (0.5, 1.0)},
}
WINDOW_STEPS = 1440  # 6 h at 15 s: the lengths up to it are measured
PER_TRACE = 4


def main() -> int:
    torch.set_num_threads(1)
    policy = artifact.load_policy(default_model_path())
    ref = drift.Reference.from_manifest(policy.manifest)
    assert ref is not None, "the shipped model has no drift reference"
    cfg = train.config_of(policy.manifest)
    base = train.sim_config(cfg)
    bank = TraceBank.from_files(cfg.traces, "val", cfg.dt)
    lengths = [t.ticks for t in ref.thresholds if t.ticks <= WINDOW_STEPS]
    print(f"windows flagged (any judged input over its threshold), {PER_TRACE} windows of "
          f"{WINDOW_STEPS} steps per trace, val split, seed 0")  # fmt: skip
    print(f"{'world':52}" + "".join(f"{n:>8}" for n in lengths))
    for name, change in SHIFTS.items():
        t0 = time.perf_counter()
        config = dataclasses.replace(base, domain=dataclasses.replace(base.domain, **change))
        runs = driftref.rollout_observations(
            policy.module, bank, config, seed=0, window_steps=WINDOW_STEPS, per_trace=PER_TRACE
        )
        binned = [ref.bin_many(r) for r in runs]
        cells = []
        for n in lengths:
            limit = np.array(ref.threshold(n).psi)[list(JUDGED)]
            flags = []
            for b in binned:
                for i in range(0, len(b) - n + 1, n):
                    w = b[i : i + n]
                    c = [np.bincount(w[:, f], minlength=k) for f, k in enumerate(ref.n_bins)]
                    flags.append(bool((ref.psi(c)[list(JUDGED)] > limit).any()))
            cells.append(f"{np.mean(flags):>7.1%}" if flags else "      -")
        print(f"{name:52}" + " ".join(cells) + f"   ({time.perf_counter() - t0:.0f} s)")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
