"""An AutoscalePolicy's status: conditions, the shield's memory, and minimal patches (pure).

The status is written only when something in it changes: it holds no timestamps that move by
themselves (a condition's ``lastTransitionTime`` moves only when its status flips, the last
action's time only with a new action), Q-values only with the action they led to, and the
shield's memory only as far as it matters after a restart (:func:`shield_record`). So 1,000
policies in a steady state cost no writes at all.

Reason codes are :class:`qscale.guardrails.Reason` names plus the operator's own
(:class:`OpReason`); the same strings go into status, Events and the operator's metrics.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import torch

from qscale.guardrails import BUCKETS, Reason, ShieldConfig, ShieldState

__all__ = [
    "CONDITION_TYPES",
    "LIMIT_REASONS",
    "OpReason",
    "iso",
    "merge_patch",
    "restore_shield",
    "set_condition",
    "shield_record",
]

CONDITION_TYPES = (
    "Ready",
    "MetricsAvailable",
    "ModelReady",
    "ScalingActive",
    "ScalingLimited",
    "MatchesTraining",
)


class OpReason(StrEnum):
    """Operator-level reason codes (beside :class:`~qscale.guardrails.Reason`'s)."""

    FALLBACK_ACTIVE = "FALLBACK_ACTIVE"
    """The HPA rule decides (after ``afterFailedTicks`` ticks without a model decision)."""
    FALLBACK_ENDED = "FALLBACK_ENDED"
    MODEL_LOADED = "MODEL_LOADED"
    MODEL_REFUSED = "MODEL_REFUSED"
    """The model could not be loaded or verified (sha256, spec hash, ConfigMap missing)."""
    TARGET_MISSING = "TARGET_MISSING"
    INVALID_SPEC = "INVALID_SPEC"
    MODE_SHADOW = "MODE_SHADOW"
    MODE_OFF = "MODE_OFF"
    TRAINING_MISMATCH = "TRAINING_MISMATCH"
    TRAINING_UNKNOWN = "TRAINING_UNKNOWN"
    OUTSIDE_SCALE = "OUTSIDE_SCALE"
    SCALE_FAILED = "SCALE_FAILED"
    METRICS_OK = "METRICS_OK"
    QUERY_FAILED = "QUERY_FAILED"


LIMIT_REASONS = frozenset(
    r.name
    for r in (
        Reason.STABILIZED,
        Reason.COOLDOWN_UP,
        Reason.COOLDOWN_DOWN,
        Reason.STEP_LIMIT_UP,
        Reason.STEP_LIMIT_DOWN,
        Reason.AT_MIN,
        Reason.AT_MAX,
    )
)
"""Decision reasons that mean the shield changed the proposal."""
HPA_LIMIT_REASONS = frozenset(
    (
        "ScaleUpStabilized",
        "ScaleDownStabilized",
        "ScaleUpLimit",
        "ScaleDownLimit",
        "TooManyReplicas",
        "TooFewReplicas",
        "AboveMax",
        "BelowMin",
    )
)
"""The HPA controller's own condition reasons that mean a limit held its proposal."""


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: Sequence[Mapping[str, Any]] | None,
    type_: str,
    status: bool | None,
    reason: str,
    message: str,
    now: float,
    generation: int,
) -> list[dict[str, Any]]:
    """``conditions`` with ``type_`` set; its ``lastTransitionTime`` moves only on a flip."""
    value = "Unknown" if status is None else ("True" if status else "False")
    out = [dict(c) for c in conditions or [] if c.get("type") != type_]
    old = next((c for c in conditions or [] if c.get("type") == type_), None)
    since = old.get("lastTransitionTime") if old and old.get("status") == value else iso(now)
    out.append(
        {
            "type": type_,
            "status": value,
            "reason": reason,
            "message": message[:1000],
            "lastTransitionTime": since,
            "observedGeneration": generation,
        }
    )
    order = {t: i for i, t in enumerate(CONDITION_TYPES)}
    out.sort(key=lambda c: order.get(c.get("type", ""), len(order)))
    return out


def merge_patch(old: Any, new: Any) -> Any:
    """The JSON merge patch (RFC 7386) that turns ``old`` into ``new``; ``None`` when equal."""
    if not (isinstance(old, Mapping) and isinstance(new, Mapping)):
        return None if _same(old, new) else new
    patch: dict[str, Any] = {}
    for k in old.keys() - new.keys():
        patch[k] = None
    for k, v in new.items():
        if k not in old:
            patch[k] = v
        elif isinstance(v, Mapping) and isinstance(old[k], Mapping):
            sub = merge_patch(old[k], v)
            if sub is not None:
                patch[k] = sub
        elif not _same(old[k], v):
            patch[k] = v
    return patch or None


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b or (a == b and type(a) is type(b))
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return merge_patch(a, b) is None
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _opt(x: float) -> float | None:
    return x if math.isfinite(x) else None


def shield_record(
    state: ShieldState, now: float, config: ShieldConfig, max_replicas: torch.Tensor
) -> list[dict[str, Any]]:
    """What each row of ``state`` keeps in status: the scale times and the last applied count
    (they change only with scale events), plus the stabilization proposals that can still hold
    a scale-down *above* the last applied count (clamped to ``maxReplicas``, within the window).

    Proposals at or below the applied count are left out: on restore, :func:`restore_shield`
    seeds the memory with the current count, as the HPA does after a controller restart, which
    holds any scale-down for one window -- never less conservative than what was left out.
    That keeps the record constant while nothing happens, so it costs no status writes.
    """
    ups = state.last_up_s.tolist()
    downs = state.last_down_s.tolist()
    applied = state.last_applied.tolist()
    w = config.bucket_s
    keep = None
    if w > 0:
        capped = torch.minimum(state.bucket_max, max_replicas.to(torch.float64)[:, None])
        fresh = (state.bucket_start_s + w) > (now - config.down_stabilization_s)
        above = capped > torch.nan_to_num(state.last_applied, nan=math.inf)[:, None]
        keep = torch.isfinite(state.bucket_start_s) & fresh & above
        rows_with = keep.any(dim=1).tolist()
    out = []
    for i in range(len(ups)):
        rec: dict[str, Any] = {}
        for key, v in (
            ("lastScaleUp", ups[i]),
            ("lastScaleDown", downs[i]),
            ("lastApplied", applied[i]),
        ):
            if math.isfinite(v):
                rec[key] = int(v) if key == "lastApplied" else v
        if keep is not None and rows_with[i]:
            idx = keep[i].nonzero().flatten().tolist()
            props = sorted([float(state.bucket_start_s[i, k]), int(capped[i, k])] for k in idx)
            rec["proposals"] = props
        out.append(rec)
    return out


def restore_shield(
    records: Sequence[Mapping[str, Any] | None],
    current: Sequence[float],
    now: float,
    config: ShieldConfig,
) -> ShieldState:
    """Shield memory from status records, seeded with the current count at ``now`` (so that no
    scale-down happens within one stabilization window of a restart, as with the HPA)."""
    seeded = []
    w = config.bucket_s
    for rec, cur in zip(records, current, strict=True):
        r = dict(rec or {})
        if w > 0 and math.isfinite(cur):
            start = math.floor(now / w + 1e-9) * w
            r["proposals"] = [*list(r.get("proposals") or [])[: BUCKETS - 1], [start, cur]]
        seeded.append(r)
    return ShieldState.from_records(seeded, config)
