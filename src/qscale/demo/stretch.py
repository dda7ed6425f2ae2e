"""The stretch of a shipped trace the demo plays, and how fast.

Only the trace is compressed: the controllers (the HPA controller syncing every 15 s on
metrics-server's 10 s resolution, the operator deciding every 15 s) run on the wall clock, so a
stretch of hours is played in minutes and both sides meet exactly the same arrivals.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["EXCERPT_START", "Stretch"]

EXCERPT_START = dt.datetime(1995, 7, 12, 0, 0, tzinfo=dt.timezone(dt.timedelta(hours=-4)))
"""Wall clock of ``t=0`` in the shipped ``nasa_excerpt.csv`` (EDT, the log's local time)."""


@dataclass(frozen=True)
class Stretch:
    """``hours`` of a ``t,value`` trace from ``start_h`` (hours after its ``t=0``), played in
    ``play_s`` real seconds, times ``scale`` (requests/s per trace request/s)."""

    path: Path
    start_h: float
    hours: float
    play_s: float
    scale: float
    t: np.ndarray
    """Trace seconds since the stretch's start (row starts)."""
    value: np.ndarray
    """The trace's rate over each row, as in the file (before ``scale``)."""

    @staticmethod
    def load(path: Path, start_h: float, hours: float, play_s: float, scale: float) -> Stretch:
        from qscale.simulator.traces import load_trace

        if hours <= 0 or play_s <= 0 or scale <= 0:
            raise ValueError("the stretch needs hours > 0, a play time > 0 and a scale > 0")
        tr = load_trace(path)
        t0 = float(tr.t[0]) + start_h * 3600.0
        keep = (tr.t >= t0) & (tr.t < t0 + hours * 3600.0)
        if keep.sum() < 2:
            raise ValueError(
                f"{path}: no data from {start_h:g} h to {start_h + hours:g} h after its start"
            )
        return Stretch(
            Path(path),
            start_h,
            hours,
            play_s,
            scale,
            np.asarray(tr.t[keep] - t0, dtype=np.float64),
            np.asarray(tr.value[keep], dtype=np.float64),
        )

    @property
    def speed(self) -> float:
        """Trace seconds per real second."""
        return self.hours * 3600.0 / self.play_s

    def rps(self, real_s: float) -> float:
        """Requests/s ``real_s`` seconds into the play (held at the ends)."""
        x = min(max(real_s, 0.0), self.play_s) * self.speed
        return float(np.interp(x, self.t, self.value)) * self.scale

    def start_rps(self, trace_minutes: float = 10.0) -> float:
        """Mean requests/s over the stretch's first ``trace_minutes``."""
        first = self.value[self.t < trace_minutes * 60.0]
        return float(first.mean() if first.size else self.value[0]) * self.scale

    def peak_rps(self) -> float:
        return float(self.value.max()) * self.scale

    def clock(self, real_s: float) -> str:
        """The trace's wall clock ``real_s`` into the play (for the shipped excerpt)."""
        at = EXCERPT_START + dt.timedelta(hours=self.start_h, seconds=real_s * self.speed)
        return at.strftime("%H:%M")

    def describe(self) -> str:
        a = EXCERPT_START + dt.timedelta(hours=self.start_h)
        b = a + dt.timedelta(hours=self.hours)
        return (
            f"{self.path.name}: NASA-HTTP {a:%b %d %Y %H:%M}-{b:%H:%M} EDT "
            f"({self.hours:g} h of trace) played in {self.play_s / 60:.3g} min "
            f"({self.speed:.0f}x), "
            f"x{self.scale:g} req/s (peak {self.peak_rps():.0f} req/s)"
        )
