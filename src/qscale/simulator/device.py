"""Which torch device a command runs on: one rule for `qscale train`, `evaluate` and the rest."""

from __future__ import annotations

import re

import torch

__all__ = ["resolve_device"]

_NAME = re.compile(r"auto|cpu|cuda(:\d+)?")


def resolve_device(name: str, label: str = "device") -> torch.device:
    """``auto`` is CUDA when a CUDA device is available, else the CPU; ``cpu``, ``cuda`` and
    ``cuda:N`` are taken as given, but a CUDA name without a CUDA device is refused. Errors are
    :class:`ValueError` with one line starting with ``label`` (the option's name, for a CLI)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"{label} must be auto, cpu, cuda or cuda:N, got {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"{label} {name!r}: no CUDA device is available")
    return torch.device(name)
