"""The operator's process: the parts of a tick wired together, and the one loop that runs it.

kopf keeps a slim record of every AutoscalePolicy (:mod:`qscale.operator.handlers`); this loop
wakes every ``QSCALE_TICK_S`` and, while this replica holds the Lease, hands those records to
:meth:`Engine.run_once`. One loop for all policies rather than a kopf timer per policy: timers
mean a task per object and a kopf worker per object at once (hundreds of MB at 1,000 policies),
and a batch is what the tick wants anyway (5 queries, one forward pass).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from qscale.operator.deployments import DeploymentCache
from qscale.operator.events import EventPoster
from qscale.operator.kube import ApiError, Kube, cancel_all, connection
from qscale.operator.lease import LeaderElector
from qscale.operator.metrics import Metrics
from qscale.operator.models import Model, ModelRegistry
from qscale.operator.prom import PromClient
from qscale.operator.rows import PolicyIndex
from qscale.operator.settings import Settings
from qscale.operator.tick import GROUP, PLURAL, VERSION, Engine, TickReport

__all__ = ["App", "process_start_time"]

log = logging.getLogger("qscale.operator")


def process_start_time() -> float:
    """Epoch time this process started (from /proc; the import time elsewhere)."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:  # 10 ms resolution (/proc/stat's btime: whole seconds)
            uptime = float(f.read().split()[0])
        return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return _IMPORTED


_IMPORTED = time.time()


def default_model_dir(settings: Settings) -> Path:
    if settings.default_model:
        return Path(settings.default_model)
    from qscale.policy.default import default_model_path

    return default_model_path()


@dataclass
class App:
    settings: Settings
    index: PolicyIndex
    """The policies kopf has seen (:data:`qscale.operator.handlers.POLICIES`)."""
    metrics: Metrics = field(default_factory=Metrics)
    started_at: float = field(default_factory=process_start_time)
    kube: Kube | None = None
    engine: Engine | None = None
    elector: LeaderElector | None = None
    _tasks: list[asyncio.Task] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _runner: web.AppRunner | None = None
    _expected: set[str] = field(default_factory=set)
    _first_full: bool = False
    ticks: int = 0

    async def start(self) -> None:
        s = self.settings
        torch.set_num_threads(s.torch_threads)
        conn = await asyncio.to_thread(connection)  # may run an exec credential plugin
        # Room for every scale write and status patch at once, the Events, the watches and the
        # Lease: a status backlog must never hold the connections a scale write waits for.
        pool = s.scale_concurrency + s.write_concurrency + 8 + max(1, len(s.namespaces))
        self.kube = Kube(conn, timeout_s=s.api_timeout_s, max_connections=pool)
        models = ModelRegistry(default_model_dir(s), refresh_s=s.model_refresh_s)
        default = models.default()
        if isinstance(default, Model):
            self.metrics.model_info.labels(
                default.name, default.digest[:16], default.spec_hash
            ).set(1)
            log.info("default model %s (spec %s) loaded", default.digest[:12], default.spec_hash)
        else:
            log.warning("default model unusable: %s", default)
        cache = DeploymentCache(self.kube, s.namespaces)
        events = EventPoster(
            self.kube, s.me(), on_write=lambda k, r: self.metrics.writes.labels(k, r).inc()
        )
        prom = PromClient(timeout_s=s.query_timeout_s, on_query=self.metrics.on_query)
        self.engine = Engine(s, self.kube, cache, prom, models, self.metrics, events)
        self.elector = LeaderElector(
            self.kube,
            s.lease_ns(),
            s.lease_name,
            s.me(),
            s.lease_duration_s,
            on_change=self._leader_changed,
        )
        await self._expect()
        cache.start()
        events.start()
        self.engine.statuses.start()
        await self._serve()
        self._tasks += [
            asyncio.create_task(self.elector.run(self._stop), name="lease"),
            asyncio.create_task(self._loop(), name="tick loop"),
            asyncio.create_task(self._resync_loop(), name="policy resync"),
        ]

    def _policy_paths(self) -> list[str]:
        return [
            f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/{PLURAL}" for ns in self.settings.namespaces
        ] or [f"/apis/{GROUP}/{VERSION}/{PLURAL}"]

    async def resync(self) -> list[str]:
        """Drop the indexed policies a listing no longer holds (deleted while kopf's watch was
        broken: kopf relists, but reports no deletion it missed); their uids. A listing that
        fails changes nothing."""
        assert self.kube is not None
        mark = self.index.mark()
        listed: set[str] = set()
        for path in self._policy_paths():
            try:
                listing = await self.kube.get(path, limit=0)
            except ApiError as e:
                transient = e.status in (0, 429, 500, 502, 503, 504)
                log.log(logging.DEBUG if transient else logging.WARNING, "no policy resync: %s", e)
                return []
            listed |= {i["metadata"]["uid"] for i in listing.get("items") or []}
        gone = self.index.resync(listed, mark)
        if gone:
            log.warning("dropped %d deleted AutoscalePolicies kopf still held", len(gone))
        return gone

    async def _resync_loop(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=self.settings.policy_resync_s)
            if not self._stop.is_set():
                await self.resync()

    async def _expect(self) -> None:
        """The policies there are at start-up, so the first tick waits for kopf to list them."""
        for path in self._policy_paths():
            for attempt in range(20):
                try:
                    listing = await self.kube.get(path, limit=0)
                    self._expected |= {i["metadata"]["uid"] for i in listing.get("items") or []}
                    break
                except ApiError as e:
                    if attempt == 19 or e.status not in (0, 429, 500, 503):
                        log.warning("cannot list %s: %s", path, e)
                        break
                    await asyncio.sleep(0.5)

    def _leader_changed(self, leader: bool) -> None:
        self.metrics.leader.set(1 if leader else 0)
        if not leader and self.engine is not None:
            self.engine.forget()

    async def _loop(self) -> None:
        assert self.engine is not None and self.elector is not None
        s = self.settings
        cache = self.engine.cache
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(cache.ready.wait(), timeout=60)
        deadline = time.monotonic() + 120
        while self._expected and time.monotonic() < deadline and not self._stop.is_set():
            have = {p.uid for p in self.index.values()}
            if self._expected <= have:
                break
            await asyncio.sleep(0.05)
        log.info("indexed %d policies; ticking every %gs", len(self.index.values()), s.tick_s)
        while not self._stop.is_set():
            if self.elector.leader:
                policies = list(self.index.values())
                self.metrics.policies.set(len(policies))
                try:
                    rep = await self.engine.run_once(policies)
                    self.ticks += 1
                    if not self._first_full and policies and rep.due == len(policies):
                        self._first_full = True
                        took = rep.decided_at - self.started_at
                        self.metrics.startup.set(took)
                        log.info(
                            "first decision for all %d policies %.1f s after start",
                            len(policies),
                            took,
                        )
                        self._tasks.append(
                            asyncio.create_task(self._startup_written(rep), name="start-up")
                        )
                except Exception:
                    log.exception("tick failed")
            now = time.time()
            wait = s.tick_s - (now % s.tick_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=wait)

    async def _startup_written(self, rep: TickReport) -> None:
        """Start-up, to the last status write of the first tick that decided every policy."""
        await rep.written.wait()
        took = time.time() - self.started_at
        self.metrics.startup_written.set(took)
        log.info(
            "statuses of the first full tick written %.1f s after start (%d patches)",
            took,
            rep.status_writes,
        )

    async def _serve(self) -> None:
        s = self.settings
        if not s.metrics_port:
            return
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, s.metrics_address, s.metrics_port).start()

    async def _metrics(self, _: web.Request) -> web.Response:
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    def ready(self) -> dict[str, Any]:
        eng = self.engine
        return {
            "leader": bool(self.elector and self.elector.leader),
            "deployments_synced": bool(eng and eng.cache.ready.is_set()),
            "policies": len(self.index.values()),
            "ticks": self.ticks,
        }

    async def _readyz(self, _: web.Request) -> web.Response:
        r = self.ready()
        return web.json_response(r, status=200 if r["deployments_synced"] else 503)

    def probe(self) -> dict[str, Any]:
        """For kopf's liveness endpoint (``@kopf.on.probe``)."""
        if self.engine is None:
            return {"started": False}
        d = self.engine.models.default()
        return {
            "default_model": d.digest if isinstance(d, Model) else f"unusable: {d}",
            "models_loaded": [f"{m.name}@{m.digest[:12]}" for m in self.engine.models.loaded()],
            **self.ready(),
        }

    async def stop(self) -> None:
        self._stop.set()
        await cancel_all(self._tasks)
        if self.engine is not None:  # the statuses decided, written while still the leader
            await self.engine.statuses.drain(5.0)
            await self.engine.statuses.stop()
        if self.elector is not None:
            await self.elector.release()
        if self.engine is not None:
            await self.engine.events.drain(2.0)
            await self.engine.events.stop()
            await self.engine.cache.stop()
            await self.engine.prom.close()
            if self.engine.decision_log is not None:
                await asyncio.to_thread(self.engine.decision_log.close)
        if self._runner is not None:
            await self._runner.cleanup()
        if self.kube is not None:
            await self.kube.close()
