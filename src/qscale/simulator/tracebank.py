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

from qscale.simulator.splits import split_rates
from qscale.simulator.traces import TraceError, load_rates

NOISE_TABLE_SIZE = 1 << 16


@dataclass(frozen=True)
class TraceBank:
    names: tuple[str, ...]
    rates: torch.Tensor
    """All traces concatenated, requests/s per decision step, float32 ``[L]``."""
    starts: torch.Tensor
    """Index of each trace's first step in ``rates``, int64 ``[K]``."""
    lengths: torch.Tensor
    """Steps in each trace, int64 ``[K]``."""
    noise: torch.Tensor
    """A fixed table of standard normals. Arrival noise at bank position ``p`` is a lookup, so it
    is a pure function of the position: reproducible, identical on CPU and CUDA, and known to
    the oracle (which is told the future)."""
    dt: float

    @property
    def n_traces(self) -> int:
        return len(self.names)

    @staticmethod
    def from_arrays(
        names: Sequence[str],
        arrays: Sequence[np.ndarray],
        dt: float = 15.0,
        device: torch.device | str = "cpu",
        noise_seed: int = 0,
    ) -> TraceBank:
        kept = [(n, np.asarray(a, dtype=np.float32)) for n, a in zip(names, arrays, strict=True)]
        kept = [(n, a) for n, a in kept if len(a) > 0]
        if not kept:
            raise TraceError("no trace has any data in the requested split")
        lengths = np.array([len(a) for _, a in kept], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        gen = torch.Generator().manual_seed(noise_seed)
        noise = torch.randn(NOISE_TABLE_SIZE, generator=gen)
        return TraceBank(
            names=tuple(n for n, _ in kept),
            rates=torch.from_numpy(np.concatenate([a for _, a in kept])).to(device),
            starts=torch.from_numpy(starts).to(device),
            lengths=torch.from_numpy(lengths).to(device),
            noise=noise.to(device),
            dt=dt,
        )

    @staticmethod
    def from_files(
        paths: Sequence[str | os.PathLike],
        split: str = "all",
        dt: float = 15.0,
        device: torch.device | str = "cpu",
        noise_seed: int = 0,
    ) -> TraceBank:
        """Load CSV traces (any user file works) and keep the ``split`` part of each."""
        names, arrays = [], []
        for p in paths:
            name = Path(p).stem
            arrays.append(split_rates(name, load_rates(p, dt), split))
            names.append(name)
        return TraceBank.from_arrays(names, arrays, dt=dt, device=device, noise_seed=noise_seed)

    def to(self, device: torch.device | str) -> TraceBank:
        return TraceBank(
            names=self.names,
            rates=self.rates.to(device),
            starts=self.starts.to(device),
            lengths=self.lengths.to(device),
            noise=self.noise.to(device),
            dt=self.dt,
        )
