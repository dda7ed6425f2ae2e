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

from qscale import history as hist
from qscale.service import DEFAULT_BUCKETS
from qscale.simulator.splits import split_bounds
from qscale.simulator.traces import DEFAULT_DT, TraceError, load_rates

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


def history_series(
    rates: np.ndarray, dt: float, lookback_s: float = hist.LOOKBACK_S, reduce: str = "max"
) -> np.ndarray:
    """Per step of a whole series (requests/s per ``dt`` step): what the history range query of
    :mod:`qscale.history` returns at that step's decision -- the highest 1 m rate among the
    points ``lookback - POINT_S, ..., lookback - AHEAD_S`` seconds back (each the mean of the
    steps in the minute it ends). NaN where the series does not reach that far back. Only the
    past: every point lies at least ``lookback - AHEAD_S`` seconds before the step."""
    hist.range_window(0.0, lookback_s)  # refuses a lookback that reaches the present
    a = np.asarray(rates, dtype=np.float64)
    n = a.size
    out = np.full(n, np.nan)
    w = max(1, round(hist.POINT_S / dt))
    back = round(lookback_s / dt)
    n_points = round(hist.AHEAD_S / hist.POINT_S)
    ends = [back - round(k * hist.POINT_S / dt) for k in range(1, n_points + 1)]
    if n < w:
        return out.astype(np.float32)
    cs = np.concatenate([[0.0], np.cumsum(a)])
    minute = (cs[w:] - cs[:-w]) / w  # minute[j]: mean of a[j .. j + w - 1], ending at step j+w-1
    cols = []
    for e in ends:
        # a decision at step i sees steps up to i - 1 (its "now"); the point ``e`` steps before
        # that is the minute ending at step i - 1 - e
        j = np.arange(n) - 1 - e - (w - 1)
        ok = j >= 0
        vals = np.full(n, np.nan)
        vals[ok] = minute[j[ok]]
        cols.append(vals)
    best = getattr(np, reduce)(np.stack(cols), axis=0)
    reach = np.arange(n) - 1 - max(ends) - (w - 1) >= 0
    out[reach] = best[reach]
    return out.astype(np.float32)


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
    history: torch.Tensor | None = None
    """Per position of ``rates``: :func:`history_series` of the trace's whole series (its past
    before the split included: the past is what a cluster has), unscaled, float32 ``[L]``; NaN
    where the trace has no such past. ``None``: no history at all."""

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
        histories: Sequence[np.ndarray] | None = None,
    ) -> TraceBank:
        """``ref_rates`` default to :func:`reference_rate` of each array (pass the whole
        series' when the arrays are a split of it); ``histories`` (one per array, same length)
        to :func:`history_series` of the array itself (pass the whole series', sliced like the
        array, when the arrays are a split of it)."""
        if ref_rates is None:
            ref_rates = [reference_rate(a) for a in arrays]
        if histories is None:
            histories = [history_series(a, dt) for a in arrays]
        kept = [
            (n, np.asarray(a, dtype=np.float32), float(r), np.asarray(h, dtype=np.float32))
            for n, a, r, h in zip(names, arrays, ref_rates, histories, strict=True)
        ]
        if any(len(a) != len(h) for _, a, _, h in kept):
            raise ValueError("each history must be as long as its trace")
        kept = [k for k in kept if len(k[1]) > 0]
        if not kept:
            raise TraceError("no trace has any data in the requested split")
        lengths = np.array([len(k[1]) for k in kept], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        gen = torch.Generator().manual_seed(noise_seed)
        noise = torch.randn(NOISE_TABLE_SIZE, generator=gen)
        return TraceBank(
            names=tuple(k[0] for k in kept),
            rates=torch.from_numpy(np.concatenate([k[1] for k in kept])).to(device),
            starts=torch.from_numpy(starts).to(device),
            lengths=torch.from_numpy(lengths).to(device),
            ref_rate=torch.tensor([k[2] for k in kept], dtype=torch.float32, device=device),
            noise=noise.to(device),
            dt=dt,
            buckets=torch.tensor(DEFAULT_BUCKETS, dtype=torch.float32, device=device),
            history=torch.from_numpy(np.concatenate([k[3] for k in kept])).to(device),
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
        names, arrays, refs, hists = [], [], [], []
        for p in paths:
            name = Path(p).stem
            whole = load_rates(p, dt)
            a, b = split_bounds(name, len(whole), split)
            arrays.append(whole[a:b])
            hists.append(history_series(whole, dt)[a:b])
            refs.append(reference_rate(whole))
            names.append(name)
        return TraceBank.from_arrays(
            names,
            arrays,
            dt=dt,
            device=device,
            noise_seed=noise_seed,
            ref_rates=refs,
            histories=hists,
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
            history=None if self.history is None else self.history.to(device),
        )
