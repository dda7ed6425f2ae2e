"""An AutoscalePolicy's status: conditions, the shield's memory, and minimal patches (pure).

The status is written only when something in it changes: it holds no timestamps that move by
themselves (a condition's ``lastTransitionTime`` moves only when its status flips, the last
action's time only with a new action), Q-values only with the action they led to, and the
shield's memory only as far as it matters after a restart
(:meth:`qscale.guardrails.ShieldState.to_records`). So 1,000
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

from qscale.guardrails import Reason

__all__ = [
    "CONDITION_TYPES",
    "LIMIT_REASONS",
    "OpReason",
    "iso",
    "merge_patch",
    "set_condition",
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
