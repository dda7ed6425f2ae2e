"""Drift in the operator: per policy, the bins its model's inputs fell in over a sliding window
(``spec.drift.window``), judged against the model's drift reference (:mod:`qscale.drift`).

Every tick the model was asked on usable metrics (its input, ``Row.features``, exists and its
decision stood, or the drift fallback overrode it) adds one observation. The
window is kept as 30 slots of bin counts, one ring of 16-bit counters per policy (about 5 KB
with the shipped model's bins, whatever the window: a slot holds at most 2,880 ticks, a 24 h
window at 1 s).
Every slot (1/30 of the window) the PSI of each feature is computed and, once the window holds
90 % of its ticks, judged with the thresholds calibrated for the longest length it covers:

- ``Drifting`` when a judged feature's PSI is past its threshold; it stays ``Drifting`` until
  each feature that drifted is under 80 % of its threshold (no flapping on a border);
- ``Normal`` otherwise; ``Filling`` while the window is short of ticks (the last judgement in
  the status holds meanwhile, across restarts too: a policy moved to Shadow or the fallback by
  drift stays there until a full window says otherwise); ``NoReference`` when the model ships
  no reference (or an unusable one: the message says why).

A canary's candidate ticks are left out (the window stays the policy's own model's; the canary
judges the candidate). Judged features are the ones that describe the service (load, latency,
CPU, start-up); the shield's memory (``since_scale_*``) is the policy's own behaviour, so it is
reported, not judged.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from qscale import drift, features
from qscale.operator.metrics import Metrics
from qscale.operator.models import Model
from qscale.operator.rows import Row
from qscale.operator.status import iso

__all__ = ["JUDGED", "STATES", "DriftWatch", "act_on_drift"]

STATES = ("Normal", "Drifting", "Filling", "NoReference")
NOT_JUDGED = frozenset({"since_scale_up", "since_scale_down", "slo_priority"})
"""Not the service's world: the shield's own memory, and the trade-off the policy's author set
(training draws it over its whole range, a policy holds one value)."""
JUDGED = tuple(i for i, n in enumerate(features.FEATURE_NAMES) if n not in NOT_JUDGED)
_SLOTS = 30
_FULL = 0.9
"""Share of the window's ticks needed for a judgement."""
_CLEAR = 0.8
"""A drifting policy is back to Normal when every judged PSI is under this x its threshold."""


@dataclass
class _Window:
    model: str
    """The model (digest) whose reference the bins belong to."""
    window_s: float
    interval_s: float
    slot_s: float
    counts: np.ndarray | None = None
    """``[_SLOTS, bins of every feature]`` (uint16), slot ``k`` in row ``k % _SLOTS``; made at
    the first observation."""
    ids: np.ndarray = field(default_factory=lambda: np.full(_SLOTS, -1, dtype=np.int64))
    """The slot each row counts (-1: none)."""
    edges: np.ndarray | None = None
    """Where each feature's bins start in a row (and, last, the row's length)."""
    judged_slot: int | None = None
    status: dict[str, Any] | None = None
    psi: list[float] | None = None
    eta: float | None = None
    """While filling: when the window will hold enough ticks to be judged, if every tick from
    now on counts (epoch seconds; ``None``: never, or not filling)."""
    filling_shown: bool = False
    """This process shows a filling status (one of its own, not a former leader's)."""
    shown_eta: float | None = None
    """The :attr:`eta` of the filling status shown."""

    @property
    def slots(self) -> int:
        """The slots the window spans: 30, or fewer when a slot is a whole interval (a 1 m
        window at 4 s is 15 slots, not 30 intervals)."""
        return min(_SLOTS, max(1, round(self.window_s / self.slot_s)))

    def add(self, slot: int, ref: drift.Reference, obs: Sequence[float]) -> None:
        if self.counts is None or self.edges is None:
            self.edges = np.concatenate([[0], np.cumsum(ref.n_bins)]).astype(np.int64)
            self.counts = np.zeros((_SLOTS, int(self.edges[-1])), dtype=np.uint16)
        row = slot % _SLOTS
        if self.ids[row] != slot:
            self.counts[row] = 0
            self.ids[row] = slot
        self.counts[row, self.edges[:-1] + ref.bins(obs)] += 1

    def totals(self, slot: int, ref: drift.Reference) -> tuple[list[np.ndarray], int]:
        """Per feature, its bins' counts over the slots in the window up to ``slot``; the
        number of ticks they hold."""
        if self.counts is None or self.edges is None:
            return [np.zeros(k, dtype=np.int64) for k in ref.n_bins], 0
        live = self.ids > slot - self.slots
        total = self.counts[live].sum(axis=0, dtype=np.int64)
        out = [total[a:b] for a, b in itertools.pairwise(self.edges.tolist())]
        return out, int(out[0].sum())


class DriftWatch:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._windows: dict[str, _Window] = {}
        self._dirty = False
        """The metrics are behind the judgements (:meth:`export` brings them up to date)."""
        self._refs: dict[str, drift.Reference | str] = {}
        """Per model digest: its reference, or why it has none."""

    # --- the tick's view ------------------------------------------------------------------

    @staticmethod
    def drifting(status: dict[str, Any]) -> bool:
        """Whether the last judgement (in the policy's status) is ``Drifting``."""
        return (status.get("drift") or {}).get("state") == "Drifting"

    def observe(self, r: Row, now: float) -> dict[str, Any] | None:
        """Add the row's tick; its ``status.drift`` (``None``: no model, or mode Off)."""
        if r.model is None or r.spec.mode == "Off":
            self._drop(r.policy.uid)
            return None
        if r.arm == "candidate":  # a canary's candidate: judged by the canary, not here
            held = self._windows.get(r.policy.uid)
            return (held.status if held else None) or r.runtime.status.get("drift")
        ref = self._reference(r.model)
        if isinstance(ref, str):
            self._drop(r.policy.uid)
            return {"state": "NoReference", "message": ref}
        w = self._window(r, ref)
        slot = math.floor(now / w.slot_s)
        if r.features is not None and r.verdict.model_decided:  # usable metrics only
            w.add(slot, ref, r.features)
        if w.judged_slot != slot:
            w.judged_slot = slot
            kept = r.runtime.status.get("drift")
            w.status = _settled(kept, self._judge(w, ref, kept, slot, now), w, now)
            self._dirty = True
        return w.status

    def retain(self, uids: set[str]) -> None:
        gone = [u for u in self._windows if u not in uids]
        for u in gone:
            del self._windows[u]
        if gone:
            self._dirty = True

    def clear(self) -> None:
        self._windows.clear()
        self._dirty = True
        self.export()

    # --- inside ---------------------------------------------------------------------------

    def _reference(self, model: Model) -> drift.Reference | str:
        ref = self._refs.get(model.digest)
        if ref is None:
            try:
                found = drift.Reference.from_manifest(model.manifest)
                ref = found if found is not None else (
                    f"model {model.name} carries no drift reference (export it with a current "
                    "qscale, or add one: qscale drift-reference MODEL_DIR)"
                )  # fmt: skip
            except drift.DriftError as e:
                ref = f"model {model.name}: {e}"
            self._refs[model.digest] = ref
        return ref

    def _window(self, r: Row, ref: drift.Reference) -> _Window:
        assert r.model is not None
        key = (r.model.digest, r.spec.drift_window_s, r.spec.interval_s)
        w = self._windows.get(r.policy.uid)
        if w is None or (w.model, w.window_s, w.interval_s) != key:
            slot_s = max(r.spec.interval_s, r.spec.drift_window_s / _SLOTS)
            w = self._windows[r.policy.uid] = _Window(*key, slot_s=slot_s)
        return w

    def _drop(self, uid: str) -> None:
        if self._windows.pop(uid, None) is not None:
            self._dirty = True

    def _judge(
        self,
        w: _Window,
        ref: drift.Reference,
        kept: dict[str, Any] | None,
        slot: int,
        now: float,
    ) -> dict[str, Any]:
        counts, ticks = w.totals(slot, ref)
        want = max(1, math.floor(w.window_s / w.interval_s))
        limit = ref.threshold(ticks)
        base = {"windowSeconds": w.window_s, "ticks": ticks, "updatedAt": iso(now)}
        w.eta = None
        if ticks < _FULL * want or limit is None:
            w.psi = None
            shortest = min(t.ticks for t in ref.thresholds)
            need = max(math.ceil(_FULL * want), shortest)
            if want < shortest:
                why = (
                    f"the window ({want} ticks) is shorter than the shortest calibrated one "
                    f"({shortest} ticks at {ref.interval_s:g}s): lengthen spec.drift.window"
                )
            else:
                w.eta = now + (need - ticks) * w.interval_s
                why = (
                    f"the window holds {ticks} of its {want} ticks; judged from {need}, about "
                    f"{iso(w.eta)} if every tick's metrics are usable"
                )
            held = kept if kept and kept.get("state") in ("Normal", "Drifting") else None
            if held is not None:
                return {**held, "filling": why}
            return {**base, "state": "Filling", "message": why}
        values = ref.psi(counts)
        w.psi = [float(x) for x in values]
        over = [i for i in JUDGED if values[i] > limit.psi[i]]
        was = (
            set((kept or {}).get("drifting") or ())
            if (kept or {}).get("state") == "Drifting"
            else set()
        )
        names = features.FEATURE_NAMES
        still = [i for i in JUDGED if names[i] in was and values[i] > _CLEAR * limit.psi[i]]
        state = "Drifting" if over or still else "Normal"
        top = sorted(JUDGED, key=lambda i: values[i] / limit.psi[i], reverse=True)[:3]
        shown = ", ".join(
            f"{features.FEATURE_NAMES[i]} {values[i]:.2f} (threshold {limit.psi[i]:.2f})"
            for i in top
        )
        if state == "Drifting":
            message = f"inputs unlike the model's training: {shown}"
        else:
            message = f"inputs like the model's training; closest to a threshold: {shown}"
        return {
            **base,
            "state": state,
            "calibratedTicks": limit.ticks,
            "psi": {n: round(float(values[i]), 4) for i, n in enumerate(features.FEATURE_NAMES)},
            "drifting": [names[i] for i in sorted(set(over) | set(still))],
            "message": message,
        }

    def export(self) -> None:
        """The metrics, once per tick when a judgement changed them (per judgement, a tick
        that judges 1,000 policies would go over every window 1,000 times)."""
        if not self._dirty:
            return
        self._dirty = False
        m = self.metrics
        counts = dict.fromkeys(STATES, 0)
        worst: dict[tuple[str, str], float] = {}
        for w in self._windows.values():
            if w.status:
                counts[w.status.get("state", "Filling")] += 1
            for f, x in enumerate(w.psi or ()):
                key = (features.FEATURE_NAMES[f], w.model[:12])
                worst[key] = max(worst.get(key, 0.0), x)
        for state, n in counts.items():
            m.drift_policies.labels(state).set(n)
        m.drift_psi.clear()
        for (name, model), x in worst.items():
            m.drift_psi.labels(name, model).set(x)


def _settled(kept: dict[str, Any] | None, new: dict[str, Any], w: _Window, now: float) -> dict:
    """What the status shows: the new judgement when it differs in substance (state, the
    features past their thresholds) or the shown one is a window old, else the shown one (a
    status write per policy every slot would be most of the operator's writes; the metrics
    carry the PSI as it moves).

    While the window fills, the status says when it will be judged and is shown again only
    when that time slips by a tenth of the window (ticks without usable metrics): a count
    that moved every slot would rewrite every policy's status every slot for the window's
    first length, after each start of the operator."""
    if not kept or kept.get("state") != new.get("state") or _filling(kept) != _filling(new):
        return _shown(new, w)
    if _filling(new):
        if not w.filling_shown:  # not shown by this process yet
            return _shown(new, w)
        if w.eta is None or w.shown_eta is None:
            same = all(kept.get(k) == new.get(k) for k in ("message", "filling"))
            return kept if same else _shown(new, w)
        return _shown(new, w) if w.eta - w.shown_eta >= w.window_s / 10 else kept
    w.filling_shown = False
    if kept.get("drifting") != new.get("drifting"):
        return new
    try:
        shown = datetime.fromisoformat(str(kept.get("updatedAt"))).timestamp()
    except ValueError:
        return new
    return new if now - shown >= w.window_s else kept


def _shown(new: dict[str, Any], w: _Window) -> dict[str, Any]:
    """``new`` becomes the status shown (and, while filling, its :attr:`_Window.eta`)."""
    w.filling_shown = _filling(new)
    w.shown_eta = w.eta
    return new


def _filling(status: dict[str, Any]) -> bool:
    """The window is filling: no judgement yet, or a former one held meanwhile."""
    return status.get("state") == "Filling" or "filling" in status


def act_on_drift(r: Row) -> None:
    """While the last judgement says drift, an Enforce policy acts as its ``spec.drift.action``
    says (a kill switch and a canary's HPA incumbent come first)."""
    if r.kill is not None or r.by_rule or r.spec.mode != "Enforce":
        return
    if not DriftWatch.drifting(r.runtime.status):
        return
    if r.spec.drift_action == "Shadow":
        r.spec = dataclasses.replace(r.spec, mode="Shadow")
    elif r.spec.drift_action == "Fallback":
        r.drift_fallback = True
