"""The one fixed train/validation/test split of the shared trace families.

Everything that trains, tunes or reports on the shared traces must take its data through
:func:`split_rates`, so that a number called "test" always means the same unseen data. The split
is two-fold:

* **By series.** :data:`HELDOUT_SERIES` are never seen during training or tuning: they give "how
  does the policy do on a series it has never met", not just on the future of a familiar one.
* **By time.** Every other series is cut into consecutive train / val / test stretches
  (:data:`SPLITS`). Contiguous stretches, not random steps, because neighbouring steps are
  strongly correlated: a shuffled split would leak the test load into training.

The fractions apply to the *resampled* length (after gaps are dropped, see
:func:`qscale.simulator.traces.resample`), so they mean the same thing for every ``dt``-grid
consumer and need no knowledge of the raw rows.

This module also knows where the shared traces live and which small trace ships in the package,
so tests, CLI and benchmarks find data the same way.
"""

from __future__ import annotations

import importlib.resources
import math
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

__all__ = [
    "HELDOUT_SERIES",
    "SPLITS",
    "SPLIT_NAMES",
    "TRACES_DIR_ENV",
    "packaged_trace",
    "shared_trace_dir",
    "shared_trace_files",
    "split_bounds",
    "split_rates",
]

SPLITS: dict[str, tuple[float, float]] = {
    "train": (0.0, 0.6),
    "val": (0.6, 0.8),
    "test": (0.8, 1.0),
}
"""``[start, end)`` fractions of each (non-held-out) series' resampled length."""

HELDOUT_SERIES: frozenset[str] = frozenset({"twitter_volume_GOOG", "twitter_volume_UPS"})
"""Whole series that are test-only. GOOG is a typical moderate Twitter series and UPS the one
with many multi-interval bursts, so the test set covers both an "easy" and a bursty unseen load."""

SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test", "all")
"""Valid ``split`` arguments; ``"all"`` is the whole series (for demos and plots, not scoring)."""

TRACES_DIR_ENV = "QSCALE_TRACES_DIR"
"""Environment variable that overrides where the shared traces are looked for."""


def _series_name(name: str) -> str:
    """Normalise ``name`` to a file stem so ``"x.csv"`` or a path still matches the held-out set."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    return base.removesuffix(".csv")


def _check_split(split: str) -> None:
    """Reject typos loudly: a misspelt split silently returning data would corrupt a result."""
    if split not in SPLIT_NAMES:
        raise ValueError(f"unknown split {split!r}; valid splits are {', '.join(SPLIT_NAMES)}")


def _boundary(fraction: float, n: int) -> int:
    """Index where ``fraction`` of ``n`` steps ends; shared by neighbouring splits.

    Both neighbours use this same function for their common edge, so the splits partition the
    series exactly (no step lost or duplicated). The epsilon absorbs float noise such as
    ``0.6 * 5 == 3.0000000000000004`` vs ``0.8 * 10 == 8.000000000000002``.
    """
    return min(n, max(0, math.floor(fraction * n + 1e-9)))


def split_bounds(name: str, n: int, split: str) -> tuple[int, int]:
    """``[start, stop)`` indices of ``split`` in a series ``name`` of ``n`` resampled steps.

    Exposed alongside :func:`split_rates` for callers that need offsets (e.g. to align plots or
    to slice several arrays the same way) rather than the rates themselves.
    """
    _check_split(split)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if split == "all":
        return 0, n
    if _series_name(name) in HELDOUT_SERIES:
        return (0, n) if split == "test" else (0, 0)
    lo, hi = SPLITS[split]
    return _boundary(lo, n), _boundary(hi, n)


def split_rates(name: str, rates: np.ndarray, split: str) -> np.ndarray:
    """The part of a resampled series that belongs to ``split`` (a view, not a copy).

    ``name`` is the series' file stem (``Trace.name``). Held-out series give an empty array for
    ``"train"``/``"val"`` and the whole series for ``"test"``; any other name -- including a
    user's own trace -- is split by the time fractions in :data:`SPLITS`.
    """
    a, b = split_bounds(name, int(np.shape(rates)[0]), split)
    return rates[a:b]


def _candidate_roots() -> Iterable[Path]:
    """Directories whose ``shared/traces`` might be the shared one, nearest first.

    Walks up from this file (an editable/source checkout sits next to ``shared/``) and then from
    the CWD (covers a regular install run from inside the checkout).
    """
    here = Path(__file__).resolve()
    yield from here.parents
    try:
        cwd = Path.cwd().resolve()
    except OSError:  # CWD deleted under us; nothing to walk
        return
    yield cwd
    yield from cwd.parents


def shared_trace_dir() -> Path | None:
    """Where the shared trace families are, or ``None`` if this machine has none.

    ``$QSCALE_TRACES_DIR`` wins when set (even if it does not exist: an explicit setting that is
    wrong should show up as "no traces", not be silently replaced by another directory).
    Otherwise the first ``<ancestor>/shared/traces`` holding ``CATALOG.md``; requiring the
    catalog keeps an unrelated ``shared/traces`` folder from being picked up.
    """
    env = os.environ.get(TRACES_DIR_ENV)
    if env:
        return Path(env).expanduser()
    seen: set[Path] = set()
    for root in _candidate_roots():
        if root in seen:
            continue
        seen.add(root)
        candidate = root / "shared" / "traces"
        if (candidate / "CATALOG.md").is_file():
            return candidate
    return None


def shared_trace_files() -> list[Path]:
    """Sorted ``*.csv`` files of :func:`shared_trace_dir` (empty if there is none).

    Sorted so every consumer iterates the families in the same, reproducible order.
    """
    d = shared_trace_dir()
    if d is None or not d.is_dir():
        return []
    return sorted(p for p in d.glob("*.csv") if p.is_file())


def packaged_trace(name: str = "nasa_excerpt") -> Path:
    """Path of a trace CSV shipped in the package (``qscale/data/<name>.csv``).

    The shared traces are not installed with the package; this small excerpt is, so the demo
    and tests work on a fresh install with no data directory.
    """
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"packaged trace name must be a plain file stem, got {name!r}")
    path = Path(str(importlib.resources.files("qscale") / "data" / f"{name}.csv"))
    if not path.is_file():
        available = sorted(p.stem for p in path.parent.glob("*.csv"))
        raise FileNotFoundError(
            f"no packaged trace {name!r} at {path}; available: {', '.join(available) or 'none'}"
        )
    return path
