"""Group canary: a ModelRollout puts a candidate model on a share of the targets of the Enforce
policies its label selector matches in its own namespace, the incumbent (each policy's own
model, or the HPA rule) on the rest; the candidate is rolled back on the candidate targets'
pooled figures, and optionally promoted. The bookkeeping per target is a canary's
(:class:`~qscale.operator.canary.Ledger`); this module is pure apart from :meth:`Rollouts.refresh`
and :meth:`Rollouts.write` (one listing per namespace, one status patch per rollout changed).

**Members.** The Enforce policies of the rollout's namespace that its selector matches, that
are the writer of their target (not refused as a second one), and that have no ``spec.canary``
of their own (a policy's own canary comes first). A policy two rollouts match belongs to the
older (then by name); the other lists it under ``excluded``. A selector never reaches another
namespace, and the candidate's ConfigMap is read in the rollout's namespace.

**Arms.** Members are ordered by a hash of (rollout uid, policy uid), fixed for the rollout's
life; the first ``round(percent x n)`` (at least 1, at most n - 1: each arm keeps a target)
run the candidate all the time, the others the incumbent. With fewer than 2 members nobody runs
the candidate (the status says why). A member joining or leaving moves at most the margin.

**Charging** is a canary's: each tick's outcome (replicas standing, request rate, p95 against
the SLO, CPU in use) goes to the arm of the decision before it, over the last ``window``.

**Rollback**, at once and for good (until the ModelRollout's generation changes): the candidate
targets' figures pooled (time over the SLO over time measured; decisions the shield limited
over decisions) against the thresholds a canary takes, once the candidate has decided
``MIN_DECISIONS`` times; or when the candidate model cannot be served on one of its targets.

**Promotion** (``promotion.enabled``), after one whole window with at least 2 measured targets
on each arm. The targets are different services, so their cost per request is not comparable;
how much of the CPU they pay for they use is. Per target: replica-seconds per busy pod-second
(1 / utilization) and its share of time over the SLO; a bootstrap (fixed seed) resamples the
targets of each arm. Promoted when the lower end of the 95 % interval of the saving
``1 - candidate / incumbent`` is at least ``minCostSavingPercent`` and the upper end of the SLO
share difference at most 0. Promoted, the candidate decides every member's target; the Event
says to set their ``spec.model`` to it to keep it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from qscale.operator.canary import (
    ARMS,
    MIN_DECISIONS,
    PROMOTED,
    ROLLED_BACK,
    RUNNING,
    STATES,
    Ledger,
    Transition,
    _Arm,
    charge,
    rollback_reason,
)
from qscale.operator.events import Event
from qscale.operator.kube import ApiError, Kube
from qscale.operator.metrics import Metrics
from qscale.operator.rows import IndexedPolicy, busy_pods
from qscale.operator.spec import ModelRef, RolloutSpec, SpecError, parse_rollout
from qscale.operator.status import iso, json_copy, merge_patch

__all__ = ["PLURAL", "IndexedRollout", "Rollouts"]

log = logging.getLogger("qscale.operator")

PLURAL = "modelrollouts"
KIND = "ModelRollout"
INVALID = "Invalid"
_LISTS = ("policies",)
LISTED = 50
"""Names listed per arm (and excluded) in a rollout's status; the counts are always whole."""
_RESAMPLES = 400


@dataclass(frozen=True)
class IndexedRollout:
    """What the operator keeps of one ModelRollout."""

    namespace: str
    name: str
    uid: str
    generation: int
    created: str
    spec: RolloutSpec | None
    error: str
    status: Mapping[str, Any]

    @staticmethod
    def from_body(body: Mapping[str, Any]) -> IndexedRollout:
        meta = body.get("metadata") or {}
        try:
            spec, error = parse_rollout(body.get("spec")), ""
        except SpecError as e:
            spec, error = None, str(e)
        return IndexedRollout(
            namespace=meta.get("namespace", ""),
            name=meta.get("name", ""),
            uid=meta.get("uid", ""),
            generation=int(meta.get("generation") or 0),
            created=str(meta.get("creationTimestamp") or ""),
            spec=spec,
            error=error,
            status=json_copy(body.get("status") or {}),
        )


def candidates(n: int, fraction: float) -> int:
    """How many of ``n`` members run the candidate: each arm keeps at least one."""
    if n < 2:
        return 0
    return min(max(round(fraction * n), 1), n - 1)


def _order(rollout_uid: str, policy_uid: str) -> str:
    return hashlib.sha256(f"{rollout_uid}/{policy_uid}".encode()).hexdigest()


@dataclass(frozen=True)
class Patch:
    """A rollout's status patch: ``body`` to ``path``'s status, making it ``status``."""

    path: str
    body: dict[str, Any]
    group: Group | None
    status: dict[str, Any]


@dataclass
class Group:
    """One ModelRollout's state: its members and their arms, their ledgers, its judgement."""

    rollout: IndexedRollout
    spec: RolloutSpec
    state: str = RUNNING
    since: float = 0.0
    reason: str = ""
    message: str = ""
    arm_of: dict[str, str] = field(default_factory=dict)
    """Member policy uid -> its arm."""
    names: dict[str, str] = field(default_factory=dict)
    """Member policy uid -> its name."""
    excluded: dict[str, str] = field(default_factory=dict)
    """Policy name -> why the selector's match is not a member."""
    ledgers: dict[str, Ledger] = field(default_factory=dict)
    checked: float = -math.inf
    shown: dict[str, Any] | None = None
    shown_at: float = -math.inf
    members_shown: dict[str, tuple[dict[str, Any], float]] = field(default_factory=dict)
    frozen: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Each arm's figures at the rollback or promotion (they stay those in the status)."""
    were_candidates: list[str] = field(default_factory=list)
    """The members the candidate decided until the last transition."""
    written: dict[str, Any] | None = None
    """The status as last written (``None``: as the API listed it): patches are taken
    against it, so a key the status no longer has is removed."""

    @classmethod
    def restore(cls, r: IndexedRollout, now: float) -> Group:
        """From the rollout's status when it is of this generation, else a new one from
        ``now``; a Running one's window starts again (its outcomes were in memory)."""
        assert r.spec is not None
        g = cls(r, r.spec, since=now)
        st = r.status
        if st.get("generation") == r.generation and st.get("state") in (ROLLED_BACK, PROMOTED):
            g.state, g.reason, g.message = st["state"], st.get("reason", ""), st.get("message", "")
            since = st.get("sinceEpoch")
            g.since = float(since) if isinstance(since, int | float) else now
            for arm in ARMS:
                shown = st.get(arm) if isinstance(st.get(arm), dict) else {}
                g.frozen[arm] = {k: v for k, v in shown.items() if k not in _LISTS}
        return g

    @property
    def model(self) -> ModelRef:
        return self.spec.model

    def assign(self, members: Sequence[IndexedPolicy], excluded: dict[str, str]) -> bool:
        """Arms for this tick's members; ``True`` when they changed."""
        order = sorted(members, key=lambda p: _order(self.rollout.uid, p.uid))
        k = candidates(len(order), self.spec.fraction)
        arms: dict[str, str] = {}
        for i, p in enumerate(order):
            if self.state == ROLLED_BACK:
                arms[p.uid] = "incumbent"
            elif self.state == PROMOTED:
                arms[p.uid] = "candidate"
            else:
                arms[p.uid] = "candidate" if i < k else "incumbent"
        changed = arms != self.arm_of or excluded != self.excluded
        self.arm_of, self.excluded = arms, excluded
        self.names = {p.uid: p.name for p in order}
        for uid in [u for u in self.ledgers if u not in arms]:
            del self.ledgers[uid]
        for uid in [u for u in self.members_shown if u not in arms]:
            del self.members_shown[uid]
        return changed

    def ledger(self, uid: str, interval_s: float) -> Ledger:
        led = self.ledgers.get(uid)
        if led is None or led.interval_s != interval_s:
            led = self.ledgers[uid] = Ledger(self.spec.window_s, interval_s)
        return led

    def pooled(self) -> dict[str, _Arm]:
        """Each arm's figures over the targets it decides now."""
        out = {a: _Arm() for a in ARMS}
        for uid, arm in self.arm_of.items():
            led = self.ledgers.get(uid)
            if led is not None:
                out[arm].merge(led.arms()[arm])
        return out

    def targets(self, arm: str) -> list[str]:
        return sorted(self.names[u] for u, a in self.arm_of.items() if a == arm)

    def refuse(self, now: float, name: str, why: str) -> Transition | None:
        if self.state != RUNNING:
            return None
        return self._go(now, ROLLED_BACK, "MODEL_REFUSED", f"the candidate model on {name}: {why}")

    def judge(self, now: float) -> Transition | None:
        if self.state != RUNNING:
            return None
        s = self.spec
        c = self.pooled()["candidate"]
        why = rollback_reason(c, s.max_slo_violation, s.max_interventions)
        if why is not None:
            n = len(self.targets("candidate"))
            return self._go(now, ROLLED_BACK, why[0], f"{why[1]} on its {n} targets")
        due = now - self.checked >= min(s.window_s / 4, 60.0)
        if s.promote and now - self.since >= s.window_s and due:
            self.checked = now
            verdict = self._promotion()
            if verdict is not None:
                return self._go(now, PROMOTED, "PROMOTED", verdict)
        return None

    def _per_target(self) -> dict[str, list[tuple[float, float]]]:
        """Per arm, each measured target's (replica-seconds per busy pod-second, share of
        time over the SLO)."""
        out: dict[str, list[tuple[float, float]]] = {a: [] for a in ARMS}
        for uid, arm in self.arm_of.items():
            led = self.ledgers.get(uid)
            a = led.arms()[arm] if led is not None else None
            if a is None or a.busy_s <= 0 or a.known_s <= 0 or a.decisions < MIN_DECISIONS:
                continue
            out[arm].append((a.replica_s / a.busy_s, a.violating_s / a.known_s))
        return out

    def _promotion(self) -> str | None:
        per = self._per_target()
        if min(len(v) for v in per.values()) < 2:
            return None
        c = torch.tensor(per["candidate"], dtype=torch.float64)
        i = torch.tensor(per["incumbent"], dtype=torch.float64)
        gen = torch.Generator().manual_seed(0)
        cm = c[torch.randint(0, len(c), (_RESAMPLES, len(c)), generator=gen)].mean(dim=1)
        im = i[torch.randint(0, len(i), (_RESAMPLES, len(i)), generator=gen)].mean(dim=1)
        q = torch.tensor([0.025, 0.975], dtype=torch.float64)
        save_lo = float(torch.quantile(1.0 - cm[:, 0] / im[:, 0], q)[0])
        slo_hi = float(torch.quantile(cm[:, 1] - im[:, 1], q)[1])
        if save_lo >= self.spec.min_cost_saving and slo_hi <= 0.0:
            return (
                f"over {len(c)} candidate and {len(i)} incumbent targets the candidate paid for "
                f"at least {save_lo:.0%} fewer replica-seconds per second of CPU used (95 % "
                "interval) and was no worse on the SLO"
            )
        return None

    def _go(self, now: float, state: str, reason: str, message: str) -> Transition:
        pooled = self.pooled()
        self.frozen = {
            arm: {"targets": len(self.targets(arm)), **pooled[arm].as_status()} for arm in ARMS
        }
        self.state, self.reason, self.message, self.since = state, reason, message, now
        self.checked = -math.inf
        self.were_candidates = [u for u, a in self.arm_of.items() if a == "candidate"]
        now_arm = "incumbent" if state == ROLLED_BACK else "candidate"
        self.arm_of = dict.fromkeys(self.arm_of, now_arm)  # from this tick's status on
        return Transition(state, reason, message)

    def as_status(self, now: float) -> dict[str, Any]:
        pooled = self.pooled()
        ref = self.model
        out: dict[str, Any] = {
            "state": self.state,
            "generation": self.rollout.generation,
            "since": iso(self.since),
            "sinceEpoch": round(self.since, 3),
            "model": {"configMap": ref.configmap, "sha256": ref.sha256},
            "windowSeconds": self.spec.window_s,
            "members": len(self.arm_of),
            "updatedAt": iso(now),
        }
        for arm in ARMS:
            names = self.targets(arm)
            figures = self.frozen.get(arm) if self.state != RUNNING else None
            if not figures:
                figures = {"targets": len(names), **pooled[arm].as_status()}
            out[arm] = {**figures, "policies": names[:LISTED]}
        if self.excluded:
            out["excluded"] = [
                {"name": n, "reason": why} for n, why in sorted(self.excluded.items())[:LISTED]
            ]
        if self.reason:
            out["reason"], out["message"] = self.reason, self.message
        elif len(self.arm_of) < 2:
            out["message"] = (
                f"{len(self.arm_of)} Enforce policy matches the selector: a rollout needs 2 "
                "(one target per arm); the candidate decides none"
            )
        return out

    def member_status(self, uid: str, now: float) -> dict[str, Any]:
        """A member policy's ``status.canary``."""
        arm = self.arm_of[uid]
        led = self.ledgers.get(uid)
        figures = led.arms()[arm].as_status() if led is not None else {}
        ref = self.model
        out: dict[str, Any] = {
            "rollout": self.rollout.name,
            "state": self.state,
            "arm": arm,
            "since": iso(self.since),
            "model": {"configMap": ref.configmap, "sha256": ref.sha256},
            "windowSeconds": self.spec.window_s,
            arm: figures,
            "updatedAt": iso(now),
        }
        if self.reason:
            out["reason"], out["message"] = self.reason, self.message
        return out


class Rollouts:
    """Every ModelRollout in the namespaces of the policies being decided: membership, arms,
    judgement, their statuses and Events."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.read: dict[str, list[IndexedRollout]] = {}
        """Per namespace, the rollouts as last listed."""
        self.groups: dict[str, Group] = {}
        """By rollout uid (valid ones)."""
        self.member_of: dict[str, str] = {}
        """Policy uid -> rollout uid."""
        self.invalid: dict[str, int] = {}
        """Rollout uid -> the generation its refusal was reported for (its Event)."""
        self.invalid_written: dict[str, int] = {}
        """Likewise, its status."""
        self.errors = 0
        self._warned: set[int] = set()
        self._tasks: set[asyncio.Task] = set()

    # --- read -----------------------------------------------------------------------------

    async def refresh(self, kube: Kube, namespaces: Iterable[str]) -> None:
        """List the ModelRollouts of ``namespaces``, at once. Not served (404: the CRD is not
        installed) or not allowed (403: an older RBAC): none. Any other fault keeps the last
        listing, so an API fault never ends a rollback."""
        wanted = sorted(set(namespaces))
        got = await asyncio.gather(*(self._list(kube, ns) for ns in wanted))
        for ns, items in zip(wanted, got, strict=True):
            if items is not None:
                self.read[ns] = items

    async def _list(self, kube: Kube, ns: str) -> list[IndexedRollout] | None:
        try:
            body = await kube.get(f"/apis/qscale.io/v1alpha1/namespaces/{ns}/{PLURAL}")
        except ApiError as e:
            if e.status in (403, 404):
                if e.status not in self._warned:
                    self._warned.add(e.status)
                    log.warning("ModelRollouts cannot be listed (%s): none are run", e)
                return []
            self.errors += 1
            return None
        return [IndexedRollout.from_body(item) for item in (body or {}).get("items") or []]

    # --- membership -----------------------------------------------------------------------

    def assign(
        self,
        policies: Sequence[IndexedPolicy],
        owners: Mapping[tuple[str, str], IndexedPolicy],
        now: float,
    ) -> list[Event]:
        """Each rollout's members and their arms for this tick; an invalid rollout's Event
        (once per generation)."""
        events: list[Event] = []
        live: dict[str, Group] = {}
        self.member_of = {}
        by_ns: dict[str, list[IndexedPolicy]] = {}
        for p in policies:
            by_ns.setdefault(p.namespace, []).append(p)
        for ns in [n for n in self.read if n not in by_ns]:
            del self.read[ns]  # no policy left there: nothing to run (listed again when due)
        for ns, rollouts in self.read.items():
            claimed: dict[str, str] = {}
            for r in sorted(rollouts, key=lambda r: (r.created, r.name)):
                if r.spec is None:
                    if self.invalid.get(r.uid) != r.generation:
                        self.invalid[r.uid] = r.generation
                        events.append(self._event(r, "Warning", "INVALID_SPEC", r.error, now))
                    continue
                self.invalid.pop(r.uid, None)
                g = self.groups.get(r.uid)
                if g is None or g.rollout.generation != r.generation:
                    g = Group.restore(r, now)
                g.rollout = r
                members, excluded = [], {}
                for p in by_ns.get(ns, ()):
                    if p.spec is None or p.spec.mode != "Enforce":
                        continue
                    if not r.spec.selector.matches(p.labels):
                        continue
                    owner = owners.get((p.namespace, p.spec.target))
                    if owner is None or owner.uid != p.uid:
                        continue  # refused as a second writer: its own status says so
                    if p.spec.canary is not None:
                        excluded[p.name] = "it runs its own spec.canary"
                    elif p.uid in claimed:
                        excluded[p.name] = f"it belongs to the older ModelRollout {claimed[p.uid]}"
                    else:
                        members.append(p)
                for p in members:
                    claimed[p.uid] = r.name
                    self.member_of[p.uid] = r.uid
                if g.assign(members, excluded):
                    g.shown = None  # a change of membership is shown at once
                live[r.uid] = g
        self.groups = live
        listed = {r.uid for rs in self.read.values() for r in rs}
        for seen in (self.invalid, self.invalid_written):
            for uid in [u for u in seen if u not in listed]:
                del seen[uid]
        self._export()
        return events

    def arm(self, p: IndexedPolicy) -> tuple[str, str] | None:
        """``(arm, rollout uid)`` of a member policy (``None``: not a member)."""
        uid = self.member_of.get(p.uid)
        if uid is None:
            return None
        return self.groups[uid].arm_of[p.uid], uid

    def group(self, uid: str) -> Group:
        return self.groups[uid]

    def held(self, uid: str) -> dict[str, Any] | None:
        """A member's ``status.canary`` as last shown (a kill switch holds it: kept as it was)."""
        g = self.groups.get(self.member_of.get(uid, ""))
        shown = g.members_shown.get(uid) if g is not None else None
        return shown[0] if shown is not None else None

    def model_refs(self) -> set[tuple[str, str, str]]:
        """The candidates' ConfigMaps the members need: ``(namespace, name, sha256)``."""
        return {
            (g.rollout.namespace, g.model.configmap, g.model.sha256)
            for g in self.groups.values()
            if "candidate" in g.arm_of.values()
        }

    # --- each member's tick ---------------------------------------------------------------

    def observe(self, r: Any, now: float) -> tuple[dict[str, Any] | None, list[Event]]:
        """A member row's tick: its outcome and decision to its ledger, its
        ``status.canary``; a refused candidate model rolls the group back (its Events)."""
        if r.rollout is None or r.rollout not in self.groups or r.arm is None:
            return None, []
        g = self.groups[r.rollout]
        events: list[Event] = []
        if r.arm == "candidate" and r.model is None:
            trans = g.refuse(now, r.policy.name, r.model_error or "not loaded")
            if trans is not None:
                events = self._transition(g, trans, now)
        # the CPU in use at the count the last decision left
        busy = busy_pods(r) * r.before / max(r.target.replicas, 1)
        charge(self.metrics, g.ledger(r.policy.uid, r.spec.interval_s), r, now, busy)
        shown = g.members_shown.get(r.policy.uid)
        if (
            shown is None
            or shown[0].get("arm") != r.arm
            or shown[0].get("state") != g.state
            or (g.state == RUNNING and now - shown[1] >= _every(g))
        ):
            shown = g.members_shown[r.policy.uid] = (g.member_status(r.policy.uid, now), now)
        return shown[0], events

    # --- after the members' ticks ---------------------------------------------------------

    def conclude(self, kube: Kube, now: float) -> list[Event]:
        """Each rollout judged: the Events of its transitions; the status patches due written
        in the background (:meth:`write`)."""
        events, patches = self.judge(now)
        self.write(kube, patches)
        return events

    def judge(self, now: float) -> tuple[list[Event], list[Patch]]:
        """Each rollout judged: the Events of its transitions, and the status patches due
        (on a transition or a change of members at once, else at most once a minute; a merge
        patch against the status as last written)."""
        events: list[Event] = []
        patches: list[Patch] = []
        for g in self.groups.values():
            trans = g.judge(now)
            if trans is not None:
                events += self._transition(g, trans, now)
                g.shown = None
            if g.shown is None or (g.state == RUNNING and now - g.shown_at >= _every(g)):
                g.shown, g.shown_at = g.as_status(now), now
                old = g.written if g.written is not None else dict(g.rollout.status)
                patch = merge_patch(old, g.shown)
                if patch is not None:
                    patches.append(Patch(self._path(g.rollout), patch, g, g.shown))
        for rs in self.read.values():
            for r in rs:
                st = {"state": INVALID, "generation": r.generation, "message": r.error[:1024]}
                patch = merge_patch(dict(r.status), st) if r.spec is None else None
                if patch is not None and self.invalid_written.get(r.uid) != r.generation:
                    self.invalid_written[r.uid] = r.generation
                    patches.append(Patch(self._path(r), patch, None, st))
        self._export()
        return events, patches

    def write(self, kube: Kube, patches: Sequence[Patch]) -> None:
        """The status patches, in the background (the tick never waits on them)."""
        for p in patches:
            task = asyncio.ensure_future(self._patch(kube, p))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _patch(self, kube: Kube, p: Patch) -> None:
        try:
            await kube.patch_merge(p.path, {"status": p.body})
            self.metrics.writes.labels("rollout_status", "ok").inc()
            if p.group is not None:
                p.group.written = p.status
        except ApiError as e:
            self.metrics.writes.labels("rollout_status", "error").inc()
            log.debug("status of %s not written: %s", p.path, e)
            if p.group is not None:
                p.group.shown = None  # written again next tick, against what was written

    def clear(self) -> None:
        self.groups.clear()
        self.member_of.clear()
        self.read.clear()
        self.invalid.clear()
        self.invalid_written.clear()
        self._export()

    # --- helpers --------------------------------------------------------------------------

    def _transition(self, g: Group, trans: Transition, now: float) -> list[Event]:
        m = self.metrics
        if trans.state == ROLLED_BACK:
            m.canary_rollbacks.inc()
            kind, reason = "Warning", "CANARY_ROLLED_BACK"
            text = (
                f"{trans.message}: the incumbent decides every target again; a change of the "
                "ModelRollout's spec starts it again"
            )
        else:
            m.canary_promotions.inc()
            kind, reason = "Normal", "CANARY_PROMOTED"
            text = (
                f"{trans.message}: it decides every member's target from now on; set their "
                "spec.model to it to keep it"
            )
        r = g.rollout
        out = [self._event(r, kind, reason, text, now)]
        for uid in g.arm_of:
            if uid in g.were_candidates or trans.state == PROMOTED:
                about = f"ModelRollout {r.name}: {text}"
                out.append(Event(r.namespace, g.names[uid], uid, kind, reason, about, now))
        return out

    @staticmethod
    def _event(r: IndexedRollout, type_: str, reason: str, text: str, now: float) -> Event:
        return Event(r.namespace, r.name, r.uid, type_, reason, text, now, kind=KIND)

    @staticmethod
    def _path(r: IndexedRollout) -> str:
        return f"/apis/qscale.io/v1alpha1/namespaces/{r.namespace}/{PLURAL}/{r.name}/status"

    def _export(self) -> None:
        counts = dict.fromkeys(STATES, 0)
        for g in self.groups.values():
            counts[g.state] += 1
        counts[INVALID] = len(self.invalid)
        for state, n in counts.items():
            self.metrics.rollouts.labels(state).set(n)


def _every(g: Group) -> float:
    """How often a Running rollout's figures are shown again: a quarter of its window, at most
    a minute."""
    return min(g.spec.window_s / 4, 60.0)
