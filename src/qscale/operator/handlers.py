"""kopf handlers: they register and report; the work happens in :mod:`qscale.operator.tick`.

* ``@kopf.on.startup`` puts every kopf setting in one place, derived from
  :class:`~qscale.operator.settings.Settings`, and starts the :class:`~qscale.operator.app.App`;
* ``@kopf.on.event`` keeps a slim record of each AutoscalePolicy (:class:`IndexedPolicy`) in
  :data:`POLICIES` (a :class:`~qscale.operator.rows.PolicyIndex`, which the App checks against
  a listing every ``QSCALE_POLICY_RESYNC_S``: kopf never reports the deletions it missed while
  its watch was broken) -- an index in all but name: kopf 1.45.2's ``@kopf.index`` makes every
  per-object worker wait, after indexing its object, until *all* objects are indexed, so with a
  worker limit (which memory needs, below) the first ``worker_limit`` workers wait on objects
  that can never get a worker: indexing 100 policies with 16 workers stalled at 16 for good
  (measured; BENCHMARKS.md). An event handler has no such barrier;
* ``@kopf.on.login`` gives kopf the same credentials the operator's own client uses (one
  :func:`~qscale.operator.kube.connection`: exec plugins, OIDC, refreshed when they expire);
* ``@kopf.on.probe`` reports the model (and leadership) on the liveness endpoint.

Why these kopf settings, measured with 1,000 AutoscalePolicies (BENCHMARKS.md):

* ``queueing.worker_limit`` bounds kopf's per-object workers (unbounded, kopf starts one per
  object at once: 250-400 MB before torch). ``queueing.idle_timeout`` short, because with a
  bound every object waits out the idle timeout in its worker (5 s by default: minutes to
  index 1,000 objects); our handler is an index, there is nothing to wait for.
* No change handlers, no finalizers: kopf writes nothing to the objects (no progress or
  last-handled-configuration annotations); the status is ours, written by the tick.
* ``scanning.disabled``: no CRD/Namespace listing (the chart grants neither);
  ``peering.standalone``: coordination is our Lease; ``posting.enabled`` off: the Events are
  ours, one per scale and fallback, not one per log line.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from qscale.operator.app import App
from qscale.operator.kube import connection, kopf_connection_info
from qscale.operator.rows import PolicyIndex
from qscale.operator.settings import Settings
from qscale.operator.tick import GROUP, PLURAL, VERSION

log = logging.getLogger("qscale.operator")


def configure(settings: kopf.OperatorSettings, s: Settings) -> None:
    settings.scanning.disabled = True
    settings.peering.standalone = True
    settings.posting.enabled = False
    settings.queueing.worker_limit = s.kopf_worker_limit or None
    settings.queueing.idle_timeout = s.kopf_idle_timeout_s
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    settings.networking.request_timeout = s.api_timeout_s * 3
    settings.networking.connect_timeout = min(10.0, s.api_timeout_s)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    s = Settings.from_env()
    configure(settings, s)
    app = App(s, POLICIES)
    await app.start()
    memo.app = app


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    app: App | None = getattr(memo, "app", None)
    if app is not None:
        await app.stop()


@kopf.on.login()
def login(**_: Any) -> kopf.ConnectionInfo:
    # A fresh credential each time: kopf asks again only at start-up, on expiry and after a 401.
    return kopf_connection_info(connection(), refresh=True)


POLICIES = PolicyIndex()
"""Every AutoscalePolicy, by uid, as :class:`~qscale.operator.rows.IndexedPolicy` (the tick's
input)."""


@kopf.on.event(GROUP, VERSION, PLURAL)
async def policy_event(body: kopf.Body, type: str | None, uid: str, **_: Any) -> None:
    if type == "DELETED":
        POLICIES.drop(uid)
    else:
        POLICIES.put(body)


@kopf.on.probe(id="qscale")
def probe(memo: kopf.Memo, **_: Any) -> dict[str, Any]:
    app: App | None = getattr(memo, "app", None)
    return app.probe() if app is not None else {"started": False}
