"""The one place that writes replica counts: ``deployments/scale``, conditionally.

A decision is a step ``from -> to`` taken on what the cache showed. It is written as a merge
patch of the scale subresource carrying the resourceVersion it was decided on, so the API
server refuses it (409) if the Deployment changed since, and the uid of the Deployment object
it was decided for, so that a Deployment deleted and created again under the same name is never
written a step decided for its predecessor. On a 409 the scale is re-read: another object ->
the step is dropped; still at ``from`` -> the write is retried on the new version; already at
``to`` -> done (an earlier attempt landed, e.g. one whose response was lost); anything else ->
somebody else scaled, and the step is dropped (the next tick sees the new count). So a step is
never applied twice, and never on top of a count or an object it was not decided for.

A 429 or a 5xx (or no answer) is retried after a short jittered backoff, within the same
budget: the write is conditional, so a retry of an attempt that did land meets a 409 and reads
``ALREADY``. Beyond the budget the step fails and the next tick decides anew.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from enum import StrEnum

from qscale.operator.deployments import Target
from qscale.operator.kube import ApiError, Kube

__all__ = ["Outcome", "ScaleRequest", "ScaleResult", "scale_one", "updated_target"]

_RETRIES = 3
_TRANSIENT = frozenset({0, 429, 500, 502, 503, 504})
"""Statuses worth another try (0: the server could not be reached)."""
BACKOFF_S = 0.2
"""First backoff; doubled per retry, with full jitter (a thundering herd of 1,000 policies
retrying in step is what a 429 asks us to avoid)."""


async def _backoff(attempt: int) -> None:
    await asyncio.sleep(random.uniform(0.0, BACKOFF_S * 2**attempt))


class Outcome(StrEnum):
    APPLIED = "applied"
    ALREADY = "already"
    """The count was already ``to`` (an earlier attempt landed)."""
    SUPERSEDED = "superseded"
    """Somebody else changed the count first: the step was dropped."""
    FAILED = "failed"


@dataclass(frozen=True)
class ScaleRequest:
    namespace: str
    name: str
    current: int
    """``from``: the count the decision was taken on."""
    desired: int
    resource_version: str
    uid: str = ""
    """The Deployment object the step was decided for ("": any)."""


@dataclass(frozen=True)
class ScaleResult:
    request: ScaleRequest
    outcome: Outcome
    replicas: int | None = None
    """The count the API server holds afterwards (when known)."""
    resource_version: str = ""
    error: str = ""
    conflicts: int = 0
    """409s met on the way (each costs a re-read and a retry)."""

    @property
    def landed(self) -> bool:
        return self.outcome in (Outcome.APPLIED, Outcome.ALREADY)


def _path(ns: str, name: str) -> str:
    return f"/apis/apps/v1/namespaces/{ns}/deployments/{name}/scale"


async def scale_one(
    kube: Kube, req: ScaleRequest, sem: asyncio.Semaphore | None = None
) -> ScaleResult:
    """Write one step (holding ``sem`` throughout, if given)."""
    if sem is not None:
        async with sem:
            return await scale_one(kube, req)
    rv = req.resource_version
    path = _path(req.namespace, req.name)
    conflicts = 0
    error = "conflicts on every retry"
    for attempt in range(_RETRIES):
        body: dict = {"spec": {"replicas": req.desired}}
        meta = {k: v for k, v in (("resourceVersion", rv), ("uid", req.uid)) if v}
        if meta:
            body["metadata"] = meta
        try:
            out = await kube.patch_merge(path, body)
            return ScaleResult(
                req,
                Outcome.APPLIED,
                int((out.get("spec") or {}).get("replicas", req.desired)),
                (out.get("metadata") or {}).get("resourceVersion", ""),
                conflicts=conflicts,
            )
        except ApiError as e:
            if e.status in _TRANSIENT and attempt + 1 < _RETRIES:
                error = str(e)
                # Retried with the same resourceVersion: if the lost attempt did land, this one
                # meets a 409 and the re-read says ALREADY. The count is absolute anyway.
                await _backoff(attempt)
                continue
            if e.status != 409:
                return ScaleResult(req, Outcome.FAILED, error=str(e), conflicts=conflicts)
            conflicts += 1
        try:
            now = await kube.get(path)
        except ApiError as e:
            return ScaleResult(req, Outcome.FAILED, error=str(e))
        replicas = int((now.get("spec") or {}).get("replicas", 0))
        rv = (now.get("metadata") or {}).get("resourceVersion", "")
        uid = (now.get("metadata") or {}).get("uid", "")
        if req.uid and uid and uid != req.uid:  # deleted and created again: not our step's
            return ScaleResult(req, Outcome.SUPERSEDED, replicas, rv, conflicts=conflicts)
        if replicas == req.desired:
            return ScaleResult(req, Outcome.ALREADY, replicas, rv, conflicts=conflicts)
        if replicas != req.current:
            return ScaleResult(req, Outcome.SUPERSEDED, replicas, rv, conflicts=conflicts)
    return ScaleResult(req, Outcome.FAILED, error=error, conflicts=conflicts)


def updated_target(t: Target, res: ScaleResult) -> Target:
    """The cache's record of ``t`` after a write that landed."""
    import dataclasses

    return dataclasses.replace(
        t,
        replicas=res.replicas or t.replicas,
        resource_version=res.resource_version or t.resource_version,
    )
