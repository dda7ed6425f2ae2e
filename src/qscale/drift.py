"""Feature drift: how far the observations a policy meets are from those its model trained on.

A model's manifest carries a :class:`Reference` (built by :mod:`qscale.policy.driftref` when
the model is exported): for every feature, bin edges (the deciles of the observations the model
itself produced over its training windows, point masses merged), the share of those
observations in each bin, and *calibrated* thresholds on the population stability index

    PSI = sum over bins of (a - e) * ln(a / e)

(``a``: the window's share of a bin, ``e``: the training share; both smoothed, :func:`psi`).

PSI over a short window of a training-like workload is not 0: 20 ticks of one afternoon fill a
few bins only. So a fixed threshold (the folklore 0.25) either fires on every short window or
misses shifts on long ones. The thresholds here are measured instead: single windows of the
training traces (other simulated clusters than the reference's), cut to each calibrated length,
give PSI under "no drift"; per length, every feature's threshold is the same quantile of its
PSIs, the lowest quantile at which no more than :data:`FALSE_ALARM_RATE` of those windows cross
*any* feature's threshold (and never under :data:`MIN_THRESHOLD`). A window is judged with the
thresholds of the longest calibrated length it covers.

This module is pure (numpy): the operator calls it per policy, the reference builder calls
:func:`fit`.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from qscale import features

__all__ = [
    "CALIBRATED_TICKS",
    "FALSE_ALARM_RATE",
    "DriftError",
    "Reference",
    "Threshold",
    "fit",
    "psi",
]

VERSION = 1
#: Window lengths (ticks at the model's interval) the thresholds are calibrated for: 5 min,
#: 10 min, 20 min, 1 h, 2 h, 6 h and 24 h at 15 s.
CALIBRATED_TICKS: tuple[int, ...] = (20, 40, 80, 240, 480, 1440, 5760)
#: Share of training-like windows allowed to cross a threshold (any feature).
FALSE_ALARM_RATE = 0.01
_QUANTILES = np.linspace(0.1, 0.9, 9)
_FLOOR = 1e-3
"""The smallest share a bin is given (:func:`psi`)."""
_TAIL = 0.001
"""Training's outer quantiles that bound the bins of values training (almost) never showed."""
MIN_THRESHOLD = 0.1
"""No threshold is lower: PSI under 0.1 is read as no shift in common practice (a feature that
never moved in training would otherwise drift on its first wobble)."""
_MIN_SHARE = 0.02
"""The smallest training share of a bin (:func:`_edges`)."""


class DriftError(ValueError):
    """A drift reference that cannot be used (one line saying why)."""


@dataclass(frozen=True)
class Threshold:
    ticks: int
    psi: tuple[float, ...]
    """Per feature."""
    windows: int
    """Training windows of this length the threshold was measured on."""


@dataclass(frozen=True)
class Reference:
    edges: tuple[tuple[float, ...], ...]
    """Per feature, the inner bin edges (bin ``i``: ``edges[i-1] < x <= edges[i]``)."""
    expected: tuple[tuple[float, ...], ...]
    """Per feature, the training share of each bin (``len(edges) + 1`` of them)."""
    thresholds: tuple[Threshold, ...]
    interval_s: float
    samples: int
    source: Mapping[str, Any]

    @property
    def n_bins(self) -> tuple[int, ...]:
        return tuple(len(e) + 1 for e in self.edges)

    def bins(self, obs: Sequence[float] | np.ndarray) -> np.ndarray:
        """The bin of each feature of one observation (``[F]`` ints)."""
        # bisect on the edge tuples: np.searchsorted (same bins) would turn each tuple into an
        # array on every call, the most of a tick's drift cost at 1,000 policies. NaN sorts
        # last, as in searchsorted.
        x = np.asarray(obs, dtype=np.float64).tolist()
        return np.array(
            [
                len(e) if v != v else bisect.bisect_left(e, v)
                for e, v in zip(self.edges, x, strict=True)
            ],
            dtype=np.int64,
        )

    def bin_many(self, obs: np.ndarray) -> np.ndarray:
        """Bins of ``[N, F]`` observations: ``[N, F]`` ints."""
        return np.stack(
            [np.searchsorted(e, obs[:, f], side="left") for f, e in enumerate(self.edges)], axis=1
        )

    def psi(self, counts: Sequence[np.ndarray]) -> np.ndarray:
        """PSI of each feature for a window's bin counts (one array per feature)."""
        return np.array(
            [psi(np.asarray(e), np.asarray(c)) for e, c in zip(self.expected, counts, strict=True)]
        )

    def threshold(self, ticks: int) -> Threshold | None:
        """The thresholds of the longest calibrated length within ``ticks`` (``None``: the
        window is shorter than every calibrated length)."""
        fit_ = [t for t in self.thresholds if t.ticks <= ticks]
        return max(fit_, key=lambda t: t.ticks) if fit_ else None

    def as_manifest(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "feature_names": list(features.FEATURE_NAMES),
            "interval_s": self.interval_s,
            "samples": self.samples,
            "false_alarm_rate": FALSE_ALARM_RATE,
            "edges": [list(e) for e in self.edges],
            "expected": [list(e) for e in self.expected],
            "thresholds": [
                {"ticks": t.ticks, "psi": list(t.psi), "windows": t.windows}
                for t in self.thresholds
            ],
            "source": dict(self.source),
        }

    @staticmethod
    def from_manifest(manifest: Mapping[str, Any]) -> Reference | None:
        """The manifest's reference (``None``: it has none); raises :class:`DriftError`."""
        d = manifest.get("drift")
        if d is None:
            return None
        try:
            if d.get("version") != VERSION:
                raise DriftError(f"drift reference version {d.get('version')!r} is not {VERSION}")
            if list(d["feature_names"]) != list(features.FEATURE_NAMES):
                raise DriftError("drift reference is for other features")
            edges = tuple(tuple(float(x) for x in e) for e in d["edges"])
            expected = tuple(tuple(float(x) for x in e) for e in d["expected"])
            thresholds = tuple(
                Threshold(int(t["ticks"]), tuple(float(x) for x in t["psi"]), int(t["windows"]))
                for t in d["thresholds"]
            )
            ref = Reference(
                edges=edges,
                expected=expected,
                thresholds=thresholds,
                interval_s=float(d["interval_s"]),
                samples=int(d["samples"]),
                source=dict(d.get("source") or {}),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            if isinstance(e, DriftError):
                raise
            raise DriftError(f"drift reference unreadable: {e}") from None
        n = features.N_FEATURES
        if len(edges) != n or len(expected) != n:
            raise DriftError("drift reference has the wrong number of features")
        for e, p in zip(edges, expected, strict=True):
            if len(p) != len(e) + 1 or any(b <= a for a, b in itertools.pairwise(e)):
                raise DriftError("drift reference bins are malformed")
            if abs(sum(p) - 1.0) > 1e-3 or min(p) < 0:
                raise DriftError("drift reference shares do not sum to 1")
        for t in thresholds:
            if t.ticks < 1 or len(t.psi) != n or not all(x > 0 for x in t.psi):
                raise DriftError("drift reference thresholds are malformed")
        return ref


def psi(expected: np.ndarray, counts: np.ndarray) -> float:
    """PSI of a window's bin ``counts`` against the ``expected`` shares; both shares are
    floored at :data:`_FLOOR` (an empty bin is not ln(0)), so the PSI of a distribution does
    not depend on how many ticks showed it."""
    counts = np.asarray(counts, dtype=np.float64)
    a = np.maximum(counts / max(counts.sum(), 1.0), _FLOOR)
    e = np.maximum(np.asarray(expected, dtype=np.float64), _FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def _edges(x: np.ndarray, f: features.Feature) -> tuple[float, ...]:
    """Inner edges: the deciles of ``x``, merged until every bin holds :data:`_MIN_SHARE` (a
    point mass makes several deciles equal; a bin with no training share would make any window
    that lands in it look drifted); then the :data:`_TAIL` and ``1 - _TAIL`` quantiles, so that
    values beyond what training showed have bins of their own."""
    q = [float(v) for v in np.unique(np.round(np.quantile(x, _QUANTILES), 6)) if f.lo <= v < f.hi]
    counts = np.bincount(np.searchsorted(q, x, side="left"), minlength=len(q) + 1) / len(x)
    kept: list[float] = []
    acc = 0.0
    for edge, share in zip(q, counts[:-1], strict=True):
        acc += share
        if acc >= _MIN_SHARE:
            kept.append(edge)
            acc = 0.0
    if kept and acc + counts[-1] < _MIN_SHARE:
        kept.pop()  # the last bin is too small: it joins the one before
    lo, hi = (float(v) for v in np.round(np.quantile(x, [_TAIL, 1.0 - _TAIL]), 6))
    if lo > f.lo and (not kept or lo < kept[0]):
        kept.insert(0, lo)
    if hi < f.hi and (not kept or hi > kept[-1]):
        kept.append(hi)
    return tuple(kept)


def _counts(bins: np.ndarray, n_bins: Sequence[int]) -> list[np.ndarray]:
    return [np.bincount(bins[:, f], minlength=k) for f, k in enumerate(n_bins)]


def _family_level(scores: np.ndarray, rate: float) -> tuple[float, tuple[float, ...]]:
    """The lowest quantile level (one for every feature) whose per-feature PSI quantiles are
    crossed by at most ``rate`` of the windows on any feature; and those quantiles."""
    for level in np.linspace(1.0 - rate, 1.0, 401):
        limit = np.quantile(scores, level, axis=0)
        if (scores > limit).any(axis=1).mean() <= rate:
            return float(level), tuple(float(x) for x in limit)
    return 1.0, tuple(float(x) for x in scores.max(axis=0))


def fit(
    reference: np.ndarray,
    calibration: Sequence[np.ndarray],
    interval_s: float,
    source: Mapping[str, Any],
    ticks: Sequence[int] = CALIBRATED_TICKS,
    false_alarm_rate: float = FALSE_ALARM_RATE,
) -> tuple[Reference, dict[str, Any]]:
    """A reference from ``reference`` observations ``[N, F]`` and thresholds from the
    ``calibration`` windows (each ``[T, F]``, consecutive ticks of one simulated cluster; cut
    into chunks of each length in ``ticks``). Returns it and a report of the calibration (the
    false alarm rate reached per length)."""
    if reference.ndim != 2 or reference.shape[1] != features.N_FEATURES or len(reference) < 100:
        raise DriftError("a drift reference needs at least 100 observations of every feature")
    edges = tuple(_edges(reference[:, f], ft) for f, ft in enumerate(features.FEATURES))
    partial = Reference(edges, (), (), interval_s, len(reference), source)
    counts = _counts(partial.bin_many(reference), partial.n_bins)
    expected = tuple(tuple(float(x) for x in c / c.sum()) for c in counts)
    ref = Reference(edges, expected, (), interval_s, len(reference), source)
    binned = [ref.bin_many(w) for w in calibration]
    thresholds, report = [], {}
    for n in ticks:
        chunks = [b[i : i + n] for b in binned for i in range(0, len(b) - n + 1, n)]
        if len(chunks) < 20:
            continue
        scores = np.stack([ref.psi(_counts(c, ref.n_bins)) for c in chunks])  # [C, F]
        level, limit = _family_level(scores, false_alarm_rate)
        limit = tuple(max(x, MIN_THRESHOLD) for x in limit)
        thresholds.append(Threshold(n, limit, len(chunks)))
        report[n] = {
            "windows": len(chunks),
            "quantile": round(level, 5),
            "false_alarms": float((scores > np.asarray(limit)).any(axis=1).mean()),
        }
    if not thresholds:
        raise DriftError("too little calibration data: no window length has 20 windows")
    return Reference(edges, expected, tuple(thresholds), interval_s, len(reference), source), report
