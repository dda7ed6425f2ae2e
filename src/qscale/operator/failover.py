"""When the HPA rule decides instead of the model, and what that tells the user.

* A tick without a model decision (metrics missing or stale, the model refused) counts as
  failed; after ``spec.fallback.afterFailedTicks`` of them the HPA rule decides
  (:func:`qscale.operator.fallback.hpa_decide`), once with an Event (``FALLBACK_ACTIVE``), until
  the model decides again (``FALLBACK_ENDED``).
* At once, with no failure counted: a kill switch (it posted its own Event), drift with
  ``spec.drift.action: Fallback`` (the drift Event says why), and a canary whose incumbent is
  the HPA rule (its part of the time: not a fallback at all).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from qscale.operator import fallback as fb
from qscale.operator.metrics import Metrics
from qscale.operator.rows import IndexedPolicy, Row, fallback_inputs, take_fallback
from qscale.operator.status import (
    FALLBACK_ENDED,
    Notice,
    failure_message,
    fallback_notice,
    percent,
)

__all__ = ["fail_over"]

log = logging.getLogger("qscale.operator")

Post = Callable[[IndexedPolicy, Notice, float], None]


def fail_over(rows: list[Row], now: float, metrics: Metrics, post: Post) -> None:
    """Count failed ticks; past ``afterFailedTicks`` the HPA rule decides instead (see the
    module's text); the rows it decides get its verdict."""
    failing = []
    for r in rows:
        if r.spec.mode == "Off":
            continue
        rt = r.runtime
        if r.drift_fallback:  # the rule decides at once; the drift Event says why
            failing.append(r)
            continue
        if r.verdict.model_decided:
            if rt.fallback_since is not None:
                post(r.policy, FALLBACK_ENDED, now)
            rt.failed, rt.fallback_since = 0, None
            continue
        if r.kill is not None or r.by_rule:  # the rule decides at once, as told
            failing.append(r)
            continue
        rt.failed += 1
        if rt.failed >= r.spec.fallback_after:
            failing.append(r)
    if not failing:
        return
    decided = fb.hpa_decide(fallback_inputs(failing), now)
    for r, (desired, why, state) in zip(failing, decided, strict=True):
        rt = r.runtime
        log.debug(
            "%s/%s fallback: %d replicas (%d ready), CPU %s -> %d (%s)",
            r.policy.namespace,
            r.policy.name,
            r.target.replicas,
            r.target.ready,
            percent(r.obs.cpu_utilization),
            desired,
            why,
        )
        if r.by_rule:  # the canary's incumbent: no fallback, nothing failed
            take_fallback(r, desired, why, state, now)
            continue
        if rt.fallback_since is None:
            rt.fallback_since = now
            if r.drift_fallback:
                metrics.fallbacks.inc()
            elif r.kill is None:  # a kill switch posted its own Event
                metrics.fallbacks.inc()
                failure = failure_message(r.model, r.model_error, r.verdict.reason)
                post(r.policy, fallback_notice(r.spec, rt.failed, failure), now)
        take_fallback(r, desired, why, state, now)
