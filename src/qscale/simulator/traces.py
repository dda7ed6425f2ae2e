"""Loading real traffic traces and putting them on the simulator's time grid.

A trace is a plain CSV with (at least) the columns ``t`` and ``value``: ``t`` is seconds since
the start of the series, ``value`` is the mean request rate (req/s) over ``[t, t + interval)``.
The interval is constant per file (60 s, 300 s or 1800 s for the shared families) and a *gap*
in the data is a missing row, i.e. a jump in ``t`` larger than the interval -- never a filled-in
value (see ``shared/traces/CATALOG.md``).

The loader is strict on purpose: a silently mis-parsed trace (a NaN, a negative rate, rows out of
order) would not crash training, it would quietly train the policy on garbage. Every problem is
reported as a :class:`TraceError` that names the file and the 1-based line, so a user with a
hand-made trace can fix it without reading this code.
"""

from __future__ import annotations

import csv
import itertools
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qscale.actions import DECISION_INTERVAL_S

__all__ = [
    "DEFAULT_DT",
    "DEFAULT_INTERVAL",
    "GAP_FACTOR",
    "Trace",
    "TraceError",
    "load_rates",
    "load_trace",
    "resample",
    "segments",
]

DEFAULT_DT = DECISION_INTERVAL_S
"""Simulator step (s): the grid :func:`resample` produces unless told otherwise."""

DEFAULT_INTERVAL = 60.0
"""Interval assumed for a one-row file, where no spacing can be measured (the finest shared one)."""

MAX_RATE = 1e9
"""No service sees a billion requests per second: a larger value is a unit or parsing mistake
(one 1e30 row would otherwise dominate everything derived from the trace)."""

GAP_FACTOR = 1.5
"""A jump in ``t`` larger than ``GAP_FACTOR * interval`` is a gap (missing rows), not jitter."""


class TraceError(ValueError):
    """A trace file that cannot be used, with ``file:line:`` in the message.

    Subclasses :class:`ValueError` so callers that only care about "bad input" can catch that,
    while callers that want to tell bad traces apart from other bad arguments can catch this.
    """

    def __init__(self, path: str, message: str, line: int | None = None) -> None:
        self.path = path
        self.line = line
        self.reason = message
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True, eq=False)
class Trace:
    """One loaded series, exactly as in the file (no resampling, gaps still present).

    ``eq=False`` because the generated ``__eq__``/``__hash__`` would compare/hash numpy arrays,
    which raises; identity comparison is the honest default. The arrays are made read-only in
    :func:`load_trace` so that "frozen" also holds for their contents.
    """

    name: str
    """File stem, e.g. ``"twitter_volume_GOOG"``: the key the split definitions use."""
    path: str
    """Path the trace was loaded from, as given by the caller (used in error messages)."""
    t: np.ndarray
    """Row start times (float64 seconds since series start), strictly increasing."""
    value: np.ndarray
    """Mean rate over ``[t, t + interval)`` (float64 req/s), finite and >= 0."""
    interval: float
    """Row length (s): median positive diff of ``t``; ``DEFAULT_INTERVAL`` for one row."""

    @property
    def duration(self) -> float:
        """Span covered including gaps (last ``t`` - first ``t`` + interval), as in the catalog."""
        return float(self.t[-1] - self.t[0] + self.interval)

    def __len__(self) -> int:
        """Number of data rows, so ``len(trace)`` reads naturally."""
        return int(self.t.shape[0])


def _parse_float(raw: str, column: str, path: str, line: int) -> float:
    """Parse one field, turning Python's terse ``ValueError`` into a located ``TraceError``."""
    try:
        return float(raw)
    except ValueError:
        raise TraceError(path, f"{column} {raw!r} is not a number", line) from None


def load_trace(path: str | os.PathLike[str]) -> Trace:
    """Read and validate a ``t,value`` CSV trace.

    Extra columns are ignored and column order is free, so exports with e.g. a ``timestamp``
    column next to ``t`` load as they are. Blank lines are skipped (a trailing newline or an
    empty last line is common in hand-edited files and carries no data). Everything else that is
    not a clean, strictly increasing, finite, non-negative series raises :class:`TraceError`
    naming the file and line: see the module docstring for why the loader is strict.
    """
    shown = os.fspath(path)
    p = Path(shown)
    try:
        # utf-8-sig drops a BOM, which spreadsheet exports like to prepend to the header.
        with p.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            try:
                header = next(reader, None)
                while header is not None and not any(f.strip() for f in header):
                    header = next(reader, None)
                if header is None:
                    raise TraceError(shown, "file is empty (expected a 't,value' header)")
                header_line = reader.line_num
                columns = [f.strip() for f in header]
                for col in ("t", "value"):
                    if col not in columns:
                        raise TraceError(
                            shown,
                            f"header has no {col!r} column (got {','.join(columns)!r}; "
                            "expected at least 't,value')",
                            header_line,
                        )
                    if columns.count(col) > 1:
                        raise TraceError(shown, f"header repeats the {col!r} column", header_line)
                ti, vi, ncol = columns.index("t"), columns.index("value"), len(columns)

                ts: list[float] = []
                vs: list[float] = []
                lines: list[int] = []
                for row in reader:
                    if not row or (len(row) == 1 and not row[0].strip()):
                        continue
                    line = reader.line_num
                    if len(row) != ncol:
                        raise TraceError(
                            shown, f"expected {ncol} fields like the header, got {len(row)}", line
                        )
                    ts.append(_parse_float(row[ti], "t", shown, line))
                    vs.append(_parse_float(row[vi], "value", shown, line))
                    lines.append(line)
            except csv.Error as exc:
                raise TraceError(shown, f"malformed CSV: {exc}", reader.line_num) from None
    except TraceError:
        raise
    except FileNotFoundError:
        raise TraceError(shown, "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TraceError(shown, f"cannot read file: {exc}") from None

    if not ts:
        raise TraceError(shown, "no data rows after the header")
    if len(ts) < 2:
        raise TraceError(
            shown, "a trace needs at least 2 rows (one row has no interval: it is a constant)"
        )

    t = np.asarray(ts, dtype=np.float64)
    value = np.asarray(vs, dtype=np.float64)
    _check_rows(shown, t, value, lines)

    diffs = np.diff(t)
    interval = float(np.median(diffs)) if diffs.size else DEFAULT_INTERVAL
    t.setflags(write=False)
    value.setflags(write=False)
    return Trace(name=p.stem, path=shown, t=t, value=value, interval=interval)


def _fmt(x: float) -> str:
    """Show a number as the user likely wrote it (``120`` not ``120.0`` or ``1.2e+02``)."""
    x = float(x)
    return str(int(x)) if x.is_integer() else repr(x)


def _check_rows(path: str, t: np.ndarray, value: np.ndarray, lines: list[int]) -> None:
    """Vectorised row checks; reports the problem on the *earliest* line, as a reader expects.

    Done on arrays rather than per row so the 82k-row NASA trace stays well under the load budget.
    """
    problems: list[tuple[int, str]] = []

    bad = ~np.isfinite(t)
    if bad.any():
        i = int(np.argmax(bad))
        problems.append((i, f"t {_fmt(t[i])} is not finite"))
    bad = ~np.isfinite(value)
    if bad.any():
        i = int(np.argmax(bad))
        problems.append((i, f"value {_fmt(value[i])} is not finite (rates must be real numbers)"))
    bad = value > MAX_RATE
    if bad.any():
        i = int(np.argmax(bad))
        problems.append(
            (
                i,
                f"value {value[i]:g} is implausibly large (> {MAX_RATE:g} requests/s): "
                "check the units",
            )
        )
    bad = value < 0
    if bad.any():
        i = int(np.argmax(bad))
        problems.append((i, f"value {_fmt(value[i])} is negative (rates must be >= 0)"))
    with np.errstate(invalid="ignore"):
        bad = ~(np.diff(t) > 0)  # also catches NaN neighbours, reported above anyway
    if bad.any():
        i = int(np.argmax(bad)) + 1
        kind = "duplicates" if t[i] == t[i - 1] else "is not after"
        problems.append(
            (
                i,
                f"t {_fmt(t[i])} {kind} the previous row's t {_fmt(t[i - 1])} "
                "(t must strictly increase)",
            )
        )

    if problems:
        i, msg = min(problems, key=lambda p: p[0])
        raise TraceError(path, msg, lines[i])


def segments(trace: Trace) -> list[tuple[int, int]]:
    """Row index ranges ``[start, stop)`` of the contiguous pieces between gaps.

    A gap is a jump in ``t`` of more than ``GAP_FACTOR * interval``: missing rows mean "no data",
    and inventing traffic for a four-day outage (NASA, Jul 28 - Aug 1) would be worse than
    dropping it. Smaller irregularities are treated as contiguous.
    """
    cuts = np.flatnonzero(np.diff(trace.t) > GAP_FACTOR * trace.interval) + 1
    bounds = [0, *cuts.tolist(), len(trace)]
    return list(itertools.pairwise(bounds))


def _resample_segment(t: np.ndarray, v: np.ndarray, interval: float, dt: float) -> np.ndarray:
    """Resample one gap-free piece onto ``floor(duration / dt)`` steps of ``dt`` (float64)."""
    start = float(t[0])
    end = float(t[-1]) + interval
    n = math.floor((end - start) / dt + 1e-9)  # tolerate float noise on exact multiples
    if n <= 0:
        return np.zeros(0, dtype=np.float64)
    # Each step gets the exact mean rate over it: integrate the step function (row i covers
    # [t_i, t_{i+1}), the last covers [t_last, t_last + interval)) and difference the cumulative
    # count at the grid edges. Downsampling loses or invents no request; upsampling holds each
    # row's rate over its bin (piecewise constant). That is causal: a step's rate comes from the
    # row it lies in, never from the next one (interpolating between bin midpoints would start
    # every burst half a bin before it happened, and a policy's trend features would see it
    # coming). Within-bin variability comes from the simulator's arrival noise only.
    edges = np.append(t, end)
    cum = np.concatenate(([0.0], np.cumsum(v * np.diff(edges))))
    grid = start + np.arange(n + 1, dtype=np.float64) * dt
    return np.diff(np.interp(grid, edges, cum)) / dt


def resample(trace: Trace, dt: float = DEFAULT_DT) -> np.ndarray:
    """Rates (float32 req/s) on a regular grid of step ``dt`` seconds, gaps dropped.

    Each gap-free segment (see :func:`segments`) gets its own grid starting at its first ``t``
    and ``floor(duration / dt)`` steps (a trailing partial step is dropped so every step is fully
    backed by data); the segments are then concatenated. Dropping gaps means the result is *not*
    aligned to wall-clock time across a gap -- the simulator only needs a plausible load
    sequence, and a few-day hole has no honest fill value.

    Each step gets the exact mean rate over it (total requests are preserved): a row's rate is
    held over its whole bin when the bin is longer than ``dt``, so no step depends on a later
    row (causal; see :func:`_resample_segment`).
    """
    if not (math.isfinite(dt) and dt > 0):
        raise ValueError(f"dt must be a positive finite number of seconds, got {dt!r}")
    parts = [
        _resample_segment(trace.t[a:b], trace.value[a:b], trace.interval, dt)
        for a, b in segments(trace)
    ]
    out = np.concatenate(parts).astype(np.float32)
    if out.size == 0:
        raise TraceError(
            trace.path,
            f"trace is shorter than one step of dt={dt:g} s "
            f"(longest segment covers {_longest_segment(trace):g} s)",
        )
    # Interpolation/differencing can leave -1e-17 style noise on zero rates; rates are >= 0.
    np.maximum(out, 0.0, out=out)
    return out


def _longest_segment(trace: Trace) -> float:
    """Duration of the longest gap-free segment, for a helpful "too short" message."""
    return max(float(trace.t[b - 1] - trace.t[a] + trace.interval) for a, b in segments(trace))


def load_rates(path: str | os.PathLike[str], dt: float = DEFAULT_DT) -> np.ndarray:
    """``resample(load_trace(path), dt)``: the one call most users of a trace file need."""
    return resample(load_trace(path), dt)
