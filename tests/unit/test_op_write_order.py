"""The tick's write order: every scale write of a tick before any of its status patches; a
status backlog never delays the next tick's scale writes; one status write per policy at a time,
the newest status wins; a status never claims a scale that did not land."""

from __future__ import annotations

import asyncio

import pytest
from opfakes import SPEC, T0, FakeKube, world

from qscale.operator.kube import ApiError

pytestmark = pytest.mark.asyncio

N = 24


class TracingKube(FakeKube):
    """Every write takes a few event-loop turns; status patches can be blocked at will; the
    order of starts and ends, and the status writes in flight per policy, are recorded."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[str, str, str]] = []
        self.status_gate = asyncio.Event()
        self.status_gate.set()
        self.inflight: dict[str, int] = {}
        self.max_inflight_per_policy = 0
        self.max_inflight_status = 0
        self.fail_scale = False
        self.status_delay_s = 0.0

    async def patch_merge(self, path: str, body):
        kind = "scale" if path.endswith("/scale") else "status"
        self.log.append(("start", kind, path))
        if kind == "status":
            self.inflight[path] = self.inflight.get(path, 0) + 1
            self.max_inflight_per_policy = max(self.max_inflight_per_policy, self.inflight[path])
            n = sum(self.inflight.values())
            self.max_inflight_status = max(self.max_inflight_status, n)
            await self.status_gate.wait()
            await asyncio.sleep(self.status_delay_s)
        try:
            for _ in range(3):
                await asyncio.sleep(0)
            if kind == "scale" and self.fail_scale:
                raise ApiError(500, "etcd is sad")
            return await super().patch_merge(path, body)
        finally:
            if kind == "status":
                self.inflight[path] -= 1
            self.log.append(("end", kind, path))


def traced_world(model_dir, **settings):
    w = world(model_dir, **settings)
    kube = TracingKube()
    w.kube = kube
    w.engine.kube = kube
    w.engine.statuses.kube = kube
    for i in range(N):
        w.deployment("a", f"d{i}", 2)
        w.prom.set("a", f"d{i}", cpu=1.0)  # 2 busy pods -> 4
        w.policy("a", f"p{i}", {**SPEC, "targetRef": {"kind": "Deployment", "name": f"d{i}"}})
    return w


async def test_every_scale_write_of_a_tick_ends_before_any_of_its_status_patches_starts(
    model_dir,
):
    w = traced_world(model_dir, scale_concurrency=4, write_concurrency=4)
    w.engine.statuses.start()
    try:
        rep = await w.tick(T0, settle=False)
        assert rep.scale_writes == N and rep.scale_s is not None
        await asyncio.wait_for(rep.written.wait(), 5)
    finally:
        await w.engine.statuses.stop()
    kinds = [(edge, kind) for edge, kind, _ in w.kube.log]
    last_scale_end = max(i for i, k in enumerate(kinds) if k == ("end", "scale"))
    first_status_start = min(i for i, k in enumerate(kinds) if k == ("start", "status"))
    assert last_scale_end < first_status_start
    assert rep.status_writes == N and rep.status_s is not None and rep.status_s >= rep.scale_s
    assert all(st["replicas"] == 4 for st in w.kube.status.values())
    assert w.kube.max_inflight_status <= 4


async def test_a_status_backlog_does_not_delay_the_next_ticks_scale_writes(model_dir):
    w = traced_world(model_dir, scale_concurrency=8, write_concurrency=2)
    w.kube.status_gate.clear()  # status patches hang: a slow API server for statuses
    w.engine.statuses.start()
    try:
        rep1 = await w.tick(T0, settle=False)
        assert rep1.scale_writes == N and not rep1.written.is_set()
        await asyncio.sleep(0.01)
        assert w.engine.statuses.backlog == N  # 2 in flight, the rest waiting
        # the next tick: every target moves again (4 busy pods -> 7), the statuses still hang
        for i in range(N):
            w.policy("a", f"p{i}", {**SPEC, "targetRef": {"kind": "Deployment", "name": f"d{i}"}})
        rep2 = await asyncio.wait_for(w.tick(T0 + 15, settle=False), 2)
        assert rep2.scale_writes == N and rep2.changed == [("a", f"d{i}", 4, 7) for i in range(N)]
        assert w.engine.statuses.backlog == N  # one per policy: the newer replaced the older
        w.kube.status_gate.set()
        await asyncio.wait_for(rep2.written.wait(), 5)
        assert rep1.written.is_set()  # tick 1's statuses: in the API as part of tick 2's
    finally:
        await w.engine.statuses.stop()
    assert w.kube.max_inflight_per_policy == 1
    assert w.kube.max_inflight_status <= 2
    for i in range(N):
        st = w.kube.status[("a", f"p{i}")]
        assert st["replicas"] == 7 and st["lastAction"]["to"] == 7  # the newest status won
    # at most two patches per policy: the one in flight when tick 2 came, and tick 2's
    assert w.kube.writes("status") <= N + 2


async def test_a_status_backlog_pauses_while_the_next_tick_writes_its_scales(model_dir):
    w = traced_world(model_dir, scale_concurrency=8, write_concurrency=1)
    w.kube.status_delay_s = 0.01  # 24 statuses one at a time: a backlog of about 0.25 s
    w.engine.statuses.start()
    try:
        rep1 = await w.tick(T0, settle=False)
        await asyncio.sleep(0.03)
        assert 0 < w.engine.statuses.backlog < N
        mark = len(w.kube.log)
        for i in range(N):
            w.policy("a", f"p{i}", {**SPEC, "targetRef": {"kind": "Deployment", "name": f"d{i}"}})
        rep2 = await w.tick(T0 + 15, settle=False)
        assert rep2.scale_writes == N
        await asyncio.wait_for(rep2.written.wait(), 5)
        assert rep1.written.is_set()
    finally:
        await w.engine.statuses.stop()
    tick2 = w.kube.log[mark:]
    last_scale_end = max(i for i, (e, k, _) in enumerate(tick2) if (e, k) == ("end", "scale"))
    started = [i for i, (e, k, _) in enumerate(tick2) if (e, k) == ("start", "status")]
    assert started and min(started) > last_scale_end  # the backlog resumed after the scales


async def test_a_status_never_claims_a_scale_that_did_not_land(model_dir):
    w = traced_world(model_dir)
    w.kube.fail_scale = True
    rep = await w.tick(T0)
    assert rep.scale_writes == N and rep.changed == []
    for i in range(N):
        st = w.kube.status[("a", f"p{i}")]
        assert st["replicas"] == 2 and "lastAction" not in st
        assert w.kube.scales[("a", f"d{i}")]["spec"]["replicas"] == 2
    assert w.events.reasons().count("SCALE_FAILED") == N


async def test_a_failed_status_patch_is_retried_by_the_next_one_whole(model_dir):
    w = traced_world(model_dir)
    real = w.kube.patch_merge
    down = {"on": True}

    async def flaky(path, body):
        if path.endswith("/status") and down["on"]:
            raise ApiError(503, "unavailable")
        return await real(path, body)

    w.kube.patch_merge = flaky
    await w.tick(T0)
    assert w.kube.status == {} and all(
        rt.status["replicas"] == 4 for rt in w.engine.runtimes.values()
    )
    down["on"] = False
    w.sync_from_kube()
    for i in range(N):
        w.prom.set("a", f"d{i}", cpu=0.6)  # 4 pods x 0.6 = 2.4 busy -> 4: hold
        w.policy("a", f"p{i}", {**SPEC, "targetRef": {"kind": "Deployment", "name": f"d{i}"}})
    await w.tick(T0 + 15)
    for i in range(N):
        st = w.kube.status[("a", f"p{i}")]
        # the lastAction of the tick whose status failed is not lost
        assert st["replicas"] == 4 and st["lastAction"]["to"] == 4
