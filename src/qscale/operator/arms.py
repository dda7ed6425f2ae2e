"""Who decides a policy's target this tick: its own canary's arm (``spec.canary``) first, else
its arm in the ModelRollout it is a member of, else its model; a kill switch comes before
both. And what the policy's ``status.canary`` says afterwards."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qscale.operator.canary import Canaries
from qscale.operator.events import Event
from qscale.operator.killswitch import Engaged
from qscale.operator.rollout import Rollouts
from qscale.operator.rows import IndexedPolicy, Row
from qscale.operator.spec import ModelRef

__all__ = ["Choice", "choose", "observe"]


@dataclass(frozen=True)
class Choice:
    arm: str | None
    """``candidate`` or ``incumbent`` (``None``: no canary, no rollout)."""
    ref: ModelRef
    """The model that decides."""
    by_rule: bool
    """The incumbent is the HPA rule, and it decides."""
    rollout: str | None
    """The uid of the ModelRollout the arm is of."""


def choose(
    canaries: Canaries,
    rollouts: Rollouts,
    p: IndexedPolicy,
    status: Any,
    kill: Engaged | None,
    now: float,
) -> Choice:
    assert p.spec is not None
    own = p.spec.canary
    arm = canaries.arm(p, status, now) if kill is None else None
    if arm is not None and own is not None:
        ref = own.model if arm == "candidate" else p.spec.model
        return Choice(arm, ref, arm == "incumbent" and own.incumbent_hpa, None)
    member = rollouts.arm(p) if kill is None else None
    if member is None:
        return Choice(None, p.spec.model, False, None)
    arm, uid = member
    group = rollouts.group(uid)
    ref = group.model if arm == "candidate" else p.spec.model
    return Choice(arm, ref, arm == "incumbent" and group.spec.incumbent_hpa, uid)


def observe(
    canaries: Canaries, rollouts: Rollouts, r: Row, now: float
) -> tuple[dict[str, Any] | None, list[Event]]:
    """The row's tick for its canary or its rollout: its ``status.canary`` and the Events of a
    transition."""
    canary, notice = canaries.observe(r, now)
    if notice is not None:
        p, n = r.policy, notice
        return canary, [Event(p.namespace, p.name, p.uid, n.type, n.reason, n.message, now)]
    if canary is not None:
        return canary, []
    if r.kill is not None:  # kept as it was while the switch holds the policy
        return rollouts.held(r.policy.uid), []
    return rollouts.observe(r, now)
