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

from qscale.service import DEFAULT_BUCKETS
from qscale.simulator.splits import split_rates
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
    ) -> TraceBank:
        """``ref_rates`` default to :func:`reference_rate` of each array (pass the whole
        series' when the arrays are a split of it)."""
        if ref_rates is None:
            ref_rates = [reference_rate(a) for a in arrays]
        kept = [
            (n, np.asarray(a, dtype=np.float32), float(r))
            for n, a, r in zip(names, arrays, ref_rates, strict=True)
        ]
        kept = [(n, a, r) for n, a, r in kept if len(a) > 0]
        if not kept:
            raise TraceError("no trace has any data in the requested split")
        lengths = np.array([len(a) for _, a, _ in kept], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        gen = torch.Generator().manual_seed(noise_seed)
        noise = torch.randn(NOISE_TABLE_SIZE, generator=gen)
        return TraceBank(
            names=tuple(n for n, _, _ in kept),
            rates=torch.from_numpy(np.concatenate([a for _, a, _ in kept])).to(device),
            starts=torch.from_numpy(starts).to(device),
            lengths=torch.from_numpy(lengths).to(device),
            ref_rate=torch.tensor([r for _, _, r in kept], dtype=torch.float32, device=device),
            noise=noise.to(device),
            dt=dt,
            buckets=torch.tensor(DEFAULT_BUCKETS, dtype=torch.float32, device=device),
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
        names, arrays, refs = [], [], []
        for p in paths:
            name = Path(p).stem
            whole = load_rates(p, dt)
            arrays.append(split_rates(name, whole, split))
            refs.append(reference_rate(whole))
            names.append(name)
        return TraceBank.from_arrays(
            names, arrays, dt=dt, device=device, noise_seed=noise_seed, ref_rates=refs
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
        )
