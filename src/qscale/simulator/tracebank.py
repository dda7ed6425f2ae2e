"""Traces resampled to the decision interval and laid end to end in one device tensor.

Envs read their arrival rate with a single gather (``rates[pos]``), whichever trace and window
they are in, so stepping thousands of envs costs the same few tensor ops as stepping one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from qscale import features
from qscale.service import DEFAULT_BUCKETS
from qscale.simulator.splits import split_bounds
from qscale.simulator.traces import DEFAULT_DT, TraceError, load_trace, resample, resample_times

NOISE_TABLE_SIZE = 1 << 16
REFERENCE_QUANTILE = 0.99
"""A trace's reference rate is this quantile of its whole series (all splits)."""


def reference_rate(rates: np.ndarray) -> float:
    """The rate a service with this traffic is sized for: the 99th percentile of the whole
    series (its maximum when that is 0, 1 for an all-zero series)."""
    a = np.asarray(rates, dtype=np.float64)
    if a.size == 0:
        return 1.0
    q = float(np.quantile(a, REFERENCE_QUANTILE))
    if q <= 0:
        q = float(a.max())
    return q if q > 0 else 1.0


def week_history(rates: np.ndarray, times: np.ndarray, dt: float) -> tuple[np.ndarray, np.ndarray]:
    """Per step of a resampled series (``times``: each step's wall-clock start, seconds): the
    1 m request rate at the same time one week earlier and the highest 1 m rate of the 30
    minutes that followed it then (points 60 s apart), NaN where the series has no data
    there (its first week, its gaps) -- what the operator's range query ``offset 7d`` reads.
    The past only: the latest point used lies :data:`features.WEEK_S` - 30 min back."""
    n = len(rates)
    nan = np.full(n, np.nan, dtype=np.float32)
    if n == 0:
        return nan, nan.copy()
    j = np.rint((times - times[0]) / dt).astype(np.int64)
    grid = np.full(int(j[-1]) + 1, np.nan)
    grid[j] = rates
    w = max(1, round(features.RATE_WINDOW_S / dt))
    # the 1 m rate ending at each grid step (NaN when any of its steps is missing)
    have = np.isfinite(grid)
    csum = np.concatenate(([0.0], np.cumsum(np.where(have, grid, 0.0))))
    count = np.concatenate(([0], np.cumsum(have)))
    m1 = np.full_like(grid, np.nan)
    whole = (count[w:] - count[:-w]) == w
    m1[w - 1 :] = np.where(whole, (csum[w:] - csum[:-w]) / w, np.nan)
    lag = round(features.WEEK_S / dt)
    step = max(1, round(features.RATE_PEAK_STEP_S / dt))
    span = round(features.WEEK_AHEAD_S / dt)
    back = j - lag  # each step's grid index one week earlier
    ok = back >= 0
    now = nan.copy()
    now[ok] = m1[back[ok]]
    ahead = np.full(n, -np.inf)
    for k in range(0, span + 1, step):
        idx = back + k
        got = ok & (idx < len(m1))
        vals = np.full(n, np.nan)
        vals[got] = m1[idx[got]]
        ahead = np.fmax(ahead, vals)
    ahead[~np.isfinite(ahead)] = np.nan
    return now, ahead.astype(np.float32)


@dataclass(frozen=True)
class TraceBank:
    names: tuple[str, ...]
    rates: torch.Tensor
    """All traces concatenated, requests/s per decision step, float32 ``[L]``."""
    starts: torch.Tensor
    """Index of each trace's first step in ``rates``, int64 ``[K]``."""
    lengths: torch.Tensor
    """Steps in each trace, int64 ``[K]``."""
    ref_rate: torch.Tensor
    """Each trace's reference rate ``[K]`` (:func:`reference_rate` of its whole series): the
    simulator scales a trace so that this rate needs the env's ``peak_replicas`` pods. A fixed
    property of the service, the same for every window, so no window's future sets its scale."""
    noise: torch.Tensor
    """A fixed table of standard normals. Arrival noise at bank position ``p`` is a lookup, so it
    is a pure function of the position: reproducible, identical on CPU and CUDA, and known to
    the oracle (which is told the future)."""
    dt: float
    buckets: torch.Tensor
    """Upper bounds of the latency histogram apps export (``+Inf`` implicit), float ``[K]``."""
    week_now: torch.Tensor
    """``[L]`` per step the trace's 1 m rate one week earlier (:func:`week_history`; unscaled,
    NaN where unknown, e.g. for arrays given without their wall clock)."""
    week_ahead: torch.Tensor
    """``[L]`` per step the highest 1 m rate of the 30 minutes after that (the same)."""

    @property
    def n_traces(self) -> int:
        return len(self.names)

    @staticmethod
    def from_arrays(
        names: Sequence[str],
        arrays: Sequence[np.ndarray],
        dt: float = DEFAULT_DT,
        device: torch.device | str = "cpu",
        noise_seed: int = 0,
        ref_rates: Sequence[float] | None = None,
        weeks: Sequence[tuple[np.ndarray, np.ndarray]] | None = None,
    ) -> TraceBank:
        """``ref_rates`` default to :func:`reference_rate` of each array (pass the whole
        series' when the arrays are a split of it); ``weeks`` to unknown (NaN) histories (pass
        :func:`week_history` of the whole series, split as the arrays are)."""
        if ref_rates is None:
            ref_rates = [reference_rate(a) for a in arrays]
        if weeks is None:
            weeks = [(np.full(len(a), np.nan), np.full(len(a), np.nan)) for a in arrays]
        kept = [
            (n, np.asarray(a, dtype=np.float32), float(r), wk)
            for n, a, r, wk in zip(names, arrays, ref_rates, weeks, strict=True)
        ]
        kept = [(n, a, r, wk) for n, a, r, wk in kept if len(a) > 0]
        if not kept:
            raise TraceError("no trace has any data in the requested split")
        lengths = np.array([len(a) for _, a, _, _ in kept], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        gen = torch.Generator().manual_seed(noise_seed)
        noise = torch.randn(NOISE_TABLE_SIZE, generator=gen)

        def cat(col):
            return torch.from_numpy(np.concatenate(col).astype(np.float32)).to(device)

        return TraceBank(
            names=tuple(n for n, _, _, _ in kept),
            rates=cat([a for _, a, _, _ in kept]),
            starts=torch.from_numpy(starts).to(device),
            lengths=torch.from_numpy(lengths).to(device),
            ref_rate=torch.tensor([r for _, _, r, _ in kept], dtype=torch.float32, device=device),
            noise=noise.to(device),
            dt=dt,
            buckets=torch.tensor(DEFAULT_BUCKETS, dtype=torch.float32, device=device),
            week_now=cat([wk[0] for _, _, _, wk in kept]),
            week_ahead=cat([wk[1] for _, _, _, wk in kept]),
        )

    @staticmethod
    def from_files(
        paths: Sequence[str | os.PathLike],
        split: str = "all",
        dt: float = DEFAULT_DT,
        device: torch.device | str = "cpu",
        noise_seed: int = 0,
    ) -> TraceBank:
        """Load CSV traces (any user file works) and keep the ``split`` part of each."""
        names, arrays, refs, weeks = [], [], [], []
        for p in paths:
            name = Path(p).stem
            trace = load_trace(p)
            whole = resample(trace, dt)
            now, ahead = week_history(whole, resample_times(trace, dt), dt)
            a, b = split_bounds(name, len(whole), split)
            arrays.append(whole[a:b])
            weeks.append((now[a:b], ahead[a:b]))
            refs.append(reference_rate(whole))
            names.append(name)
        return TraceBank.from_arrays(
            names, arrays, dt=dt, device=device, noise_seed=noise_seed, ref_rates=refs, weeks=weeks
        )

    def to(self, device: torch.device | str) -> TraceBank:
        return TraceBank(
            names=self.names,
            rates=self.rates.to(device),
            starts=self.starts.to(device),
            lengths=self.lengths.to(device),
            ref_rate=self.ref_rate.to(device),
            noise=self.noise.to(device),
            dt=self.dt,
            buckets=self.buckets.to(device),
            week_now=self.week_now.to(device),
            week_ahead=self.week_ahead.to(device),
        )
