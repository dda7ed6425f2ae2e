"""The stretch of a shipped trace the demo plays, and how fast.

The controllers (the HPA controller syncing every 15 s on metrics-server's 10 s resolution, the
operator deciding every 15 s) run on the wall clock. The default plays the trace at its own
pace (``speed`` 1), the world the model was trained in; a faster play compresses the trace
only, so both sides still meet exactly the same arrivals, but each decision then sees minutes
of traffic change and a pod's start-up spans minutes of trace: a world no model was trained in.
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
        rel = np.round(np.asarray(tr.t, dtype=np.float64) - t0, 6)  # hours in float: no drift
        keep = (rel >= 0.0) & (rel < round(hours * 3600.0, 6))
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
            rel[keep],
            np.asarray(tr.value[keep], dtype=np.float64),
        )

    @property
    def speed(self) -> float:
        """Trace seconds per real second."""
        return self.hours * 3600.0 / self.play_s

    def rps(self, real_s: float) -> float:
        """Requests/s ``real_s`` seconds into the play (held at the ends): each row's rate over
        its whole bin, as the simulator holds it (causal: no step plays a later row)."""
        x = min(max(real_s, 0.0), self.play_s) * self.speed
        i = int(np.searchsorted(self.t, x, side="right")) - 1
        return float(self.value[min(max(i, 0), len(self.value) - 1)]) * self.scale

    def peak_rps(self) -> float:
        return float(self.value.max()) * self.scale

    def clock(self, real_s: float) -> str:
        """The trace's wall clock ``real_s`` into the play (for the shipped excerpt)."""
        at = EXCERPT_START + dt.timedelta(hours=self.start_h, seconds=real_s * self.speed)
        return at.strftime("%H:%M")

    def describe(self) -> str:
        a = EXCERPT_START + dt.timedelta(hours=self.start_h)
        b = a + dt.timedelta(hours=self.hours)
        pace = "the trace's own pace" if abs(self.speed - 1.0) < 1e-6 else "compressed"
        return (
            f"{self.path.name}: NASA-HTTP {a:%b %d %Y %H:%M}-{b:%H:%M} EDT "
            f"({self.hours:g} h of trace) played in {self.play_s / 60:.3g} min "
            f"({self.speed:.3g}x, {pace}), "
            f"x{self.scale:g} req/s (peak {self.peak_rps():.0f} req/s)"
        )
