"""The fault matrix (docs/faults.md), fault by fault, on the tick in-process: the Engine over the
in-memory API server of ``opfakes`` and, for Prometheus, the real client over loopback HTTP to
:class:`faultprom.FaultProm`. Every row checks what the status and the Events say, what the
operator's metrics say, that no count leaves ``[min, max]``, that no step lands twice, and that
the same Engine recovers once the fault is gone (no restart)."""

from __future__ import annotations

import asyncio
import copy
import json
import shutil

import pytest
from opfakes import SPEC as BASE_SPEC
from opfakes import T0, FakeKube, FakeProm, cond, world

from faultprom import FaultProm, synthetic
from qscale.operator.app import App
from qscale.operator.kube import ApiError
from qscale.operator.models import artifact_configmap
from qscale.operator.prom import PromClient
from qscale.operator.rows import PolicyIndex
from qscale.operator.settings import Settings

pytestmark = pytest.mark.asyncio

TIMEOUT_S = 1.0  # a healthy loopback answer on a loaded 2-core machine stays well under it
SPEC = {**BASE_SPEC, "fallback": {"afterFailedTicks": 2}}


def total(w, name, labels=None):
    """The sum of a metric's samples (matching ``labels``) in the Engine's registry."""
    return sum(
        s.value
        for fam in w.engine.metrics.registry.collect()
        for s in fam.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in (labels or {}).items())
    )


# mode -> the victim's MetricsAvailable reason and message
PROM_FAULTS = [
    ("delay", "QUERY_FAILED", f"request_rate: no answer within {TIMEOUT_S:g}s"),
    ("trickle", "QUERY_FAILED", f"request_rate: no answer within {TIMEOUT_S:g}s"),
    ("malformed", "QUERY_FAILED", "request_rate: HTTP 200"),
    ("unavailable", "QUERY_FAILED", "request_rate: HTTP 503"),
    ("nan", "METRICS_MISSING", "no series for request_rate, cpu_utilization"),
    ("inf", "METRICS_MISSING", "no series for request_rate, cpu_utilization"),
    ("empty", "METRICS_MISSING", "no series for request_rate, latency_p95, cpu_utilization"),
    ("drop", "METRICS_MISSING", "no series for request_rate, latency_p95, cpu_utilization"),
]


@pytest.mark.parametrize(("mode", "reason", "message"), PROM_FAULTS)
async def test_a_prometheus_fault_holds_its_own_policies_only_and_heals(
    model_dir, mode, reason, message
):
    """``victim`` and ``peer`` ask the faulty Prometheus (one query group), ``bystander`` the
    default one. In mode ``drop`` only the victim's series are missing: its peer in the same
    query still decides. The bystander's load rises during the fault: it scales meanwhile."""
    data = {("a", d): (10.0, 0.05, 0.5) for d in ("web", "api", "other")}
    with FaultProm(synthetic(data)) as bad, FaultProm(synthetic(data)) as good:
        client = PromClient(timeout_s=TIMEOUT_S)
        w = world(
            model_dir,
            prom=client,
            prometheus_url=good.url,
            prometheus_allowed_urls=(bad.url,),
        )
        client._on_query = w.engine.metrics.on_query
        via_bad = {"prometheus": {"address": bad.url}}
        specs = {}
        for name, target, metrics in (
            ("victim", "web", via_bad),
            ("peer", "api", via_bad),
            ("bystander", "other", {}),
        ):
            w.deployment("a", target, 2)
            ref = {"kind": "Deployment", "name": target}
            specs[name] = {**SPEC, "targetRef": ref, "metrics": metrics}

        async def tick(t):
            for name, spec in specs.items():  # as kopf hands them over: with their status
                w.policy("a", name, spec)
            rep = await asyncio.wait_for(w.tick(t), timeout=10)  # a hung tick fails, not hangs
            w.sync_from_kube()
            return rep

        await tick(T0)
        for name in ("victim", "peer", "bystander"):
            assert cond(w.kube.status[("a", name)], "MetricsAvailable")["status"] == "True"
        errors0 = total(w, "qscale_prometheus_query_errors_total")

        bad.set(mode, delay_s=4.0, drop={"web"})
        data[("a", "other")] = (10.0, 0.05, 1.0)  # 2 busy pods at 65 %: 4
        for i in (1, 2):
            rep = await tick(T0 + 15 * i)
            assert rep.seconds < TIMEOUT_S + 1.5  # a slow group delays the tick by its timeout
            data[("a", "other")] = (10.0, 0.05, 0.6)  # 4 pods at 60 %: enough
        st = w.kube.status[("a", "victim")]
        c = cond(st, "MetricsAvailable")
        assert (c["status"], c["reason"]) == ("False", reason) and message in c["message"], c
        assert st["fallback"] == {**st["fallback"], "active": True, "reason": "METRICS_MISSING"}
        assert st["replicas"] == st["desiredReplicas"] == 2  # held: no data, the HPA rule holds
        assert "SECRET" not in str(st) and "<html>" not in str(st)
        fallback = [e for e in w.events.posted if e.name == "victim"]
        assert [e.reason for e in fallback] == ["FALLBACK_ACTIVE"]
        assert "METRICS_MISSING" in fallback[0].message
        peer = cond(w.kube.status[("a", "peer")], "MetricsAvailable")
        assert (peer["status"] == "True") == (mode == "drop")  # partial: only the victim's
        assert "fallback" not in w.kube.status[("a", "bystander")]
        assert w.kube.scales[("a", "other")]["spec"]["replicas"] == 4  # decided meanwhile
        errors = total(w, "qscale_prometheus_query_errors_total") - errors0
        assert (errors > 0) == (reason == "QUERY_FAILED")
        assert total(w, "qscale_fallback_active") == (1 if mode == "drop" else 2)
        assert total(w, "qscale_decisions_total", {"reason": "METRICS_MISSING"}) >= 1

        bad.set("pass")
        await tick(T0 + 45)
        for name in ("victim", "peer"):
            st = w.kube.status[("a", name)]
            assert cond(st, "MetricsAvailable")["status"] == "True" and "fallback" not in st
        assert [e.reason for e in w.events.posted if e.name == "victim"] == [
            "FALLBACK_ACTIVE",
            "FALLBACK_ENDED",
        ]
        assert total(w, "qscale_fallback_active") == 0
        # nothing but the bystander's one step was written; every count within [1, 10]
        assert [c for c in w.kube.calls if c[0] == "PATCH" and c[1].endswith("/scale")] == [
            ("PATCH", "/apis/apps/v1/namespaces/a/deployments/other/scale")
        ]
        assert all(1 <= o["spec"]["replicas"] <= 10 for o in w.kube.scales.values())
        assert bad.served.get(mode, 0) >= 4
        await client.close()


# --- Kubernetes: the policy, its target ----------------------------------------------------


class HookedProm(FakeProm):
    """A FakeProm that runs ``hook`` once, mid-tick (after the rows are made, before the
    writes): what changes in the cluster while a tick is in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.hook = None

    async def fetch(self, groups, now):
        out = await super().fetch(groups, now)
        hook, self.hook = self.hook, None
        if hook is not None:
            hook()
        return out


class GoneKube(FakeKube):
    """Policies deleted on the API server: their status answers 404."""

    def __init__(self) -> None:
        super().__init__()
        self.deleted: set[str] = set()

    async def patch_merge(self, path, body):
        if path.endswith("/status") and path.split("/")[-2] in self.deleted:
            self.calls.append(("PATCH", path))
            raise ApiError(404, "not found")
        return await super().patch_merge(path, body)


async def test_a_policy_deleted_mid_tick_is_dropped_without_a_crash_or_a_trace(model_dir):
    w = world(model_dir, prom=HookedProm())
    w.kube = w.engine.kube = w.engine.statuses.kube = GoneKube()
    for name in ("web", "api"):
        w.deployment("a", name, 2)
        w.prom.set("a", name, cpu=1.0)  # both would scale 2 -> 4
        w.policy("a", name, {**SPEC, "targetRef": {"kind": "Deployment", "name": name}})

    def delete_web():  # kopf's DELETED event and the API server's 404, mid-tick
        w.policies = [p for p in w.policies if p.name != "web"]
        w.kube.deleted.add("web")

    w.prom.hook = delete_web
    rep = await w.tick(T0)
    # The step decided before the deletion may land (the deletion raced the write); its status
    # is refused by the API server and nothing of it is kept as written.
    assert ("a", "web") not in w.kube.status and rep.status_writes == 1
    assert total(w, "qscale_api_writes_total", {"kind": "status", "result": "error"}) == 1
    assert w.kube.status[("a", "api")]["replicas"] == 4  # the other policy: decided, written
    assert "p-web" in w.engine.runtimes and w.engine.runtimes["p-web"].written == {}
    w.sync_from_kube()
    calls = len(w.kube.calls)
    await w.tick(T0 + 15)
    assert "p-web" not in w.engine.runtimes  # its memory is dropped with it
    assert not any("/web" in p for _, p in w.kube.calls[calls:])  # nothing more for it
    assert total(w, "qscale_fallback_active") == 0


async def test_a_target_deleted_and_created_again_starts_fresh(model_dir):
    """Deleted: TARGET_MISSING once, nothing written to it. Created again under the same name
    (a new uid) at another count: no "scaled by someone else", no inherited cooldown; its
    memory in the status names the new object."""
    spec = {**SPEC, "behavior": {"scaleUp": {"cooldown": "300s"}}}
    w = world(model_dir)
    w.deployment("a", "web", 2)
    w.prom.set("a", "web", cpu=1.0)
    w.policy("a", "web", spec)
    await w.tick(T0)
    assert w.kube.scales[("a", "web")]["spec"]["replicas"] == 4
    w.delete_deployment("a", "web")
    for i in (1, 2):
        w.policy("a", "web", spec)
        await w.tick(T0 + 15 * i)
    st = w.kube.status[("a", "web")]
    assert st["reason"] == "TARGET_MISSING" and cond(st, "Ready")["status"] == "False"
    assert "replicas" not in st and "desiredReplicas" not in st
    assert w.events.reasons().count("TARGET_MISSING") == 1 and w.kube.writes("scale") == 1
    w.deployment("a", "web", 2, uid="uid-web-2")
    w.prom.set("a", "web", cpu=1.0)
    w.policy("a", "web", spec)
    await w.tick(T0 + 45)
    st = w.kube.status[("a", "web")]
    # the old object's scale-up cooldown (300 s) would hold this: a new object has none
    assert w.kube.scales[("a", "web")]["spec"]["replicas"] == 4 and st["reason"] == "OK"
    assert cond(st, "Ready")["status"] == "True" and st["shield"]["targetUID"] == "uid-web-2"
    assert "OUTSIDE_SCALE" not in w.events.reasons() and "lastOutsideScale" not in st


async def test_a_target_replaced_mid_tick_is_not_written_the_old_ones_step(model_dir):
    w = world(model_dir, prom=HookedProm())
    w.deployment("a", "web", 2)
    w.prom.set("a", "web", cpu=1.0)
    w.policy("a", "web", SPEC)
    w.prom.hook = lambda: w.kube.add("a", "web", 2, uid="uid-web-2")  # same name, same count
    rep = await w.tick(T0)
    assert rep.changed == [] and w.kube.scales[("a", "web")]["spec"]["replicas"] == 2
    assert total(w, "qscale_api_writes_total", {"kind": "scale", "result": "superseded"}) == 1
    assert "lastAction" not in w.kube.status[("a", "web")] and "OK" not in w.events.reasons()
    w.deployment("a", "web", 2, uid="uid-web-2")  # the watch brings the new object
    w.policy("a", "web", SPEC)
    await w.tick(T0 + 15)
    assert w.kube.scales[("a", "web")]["spec"]["replicas"] == 4  # decided for it: written once
    assert w.kube.writes("scale") == 2


async def test_a_policy_pointed_at_another_deployment_takes_nothing_along(model_dir):
    spec = {**SPEC, "behavior": {"scaleUp": {"cooldown": "300s"}}}
    w = world(model_dir)
    w.deployment("a", "web", 2)
    w.deployment("a", "web2", 6)
    w.prom.set("a", "web", cpu=1.0)
    w.prom.set("a", "web2", cpu=1.0)  # 6 busy pods at 65 %: 10
    w.policy("a", "p", {**spec, "targetRef": {"kind": "Deployment", "name": "web"}})
    await w.tick(T0)
    assert w.kube.scales[("a", "web")]["spec"]["replicas"] == 4
    w.sync_from_kube()
    renamed = {**spec, "targetRef": {"kind": "Deployment", "name": "web2"}}
    for i in (1, 2):
        w.policy("a", "p", renamed)
        await w.tick(T0 + 15 * i)
        w.sync_from_kube()
    st = w.kube.status[("a", "p")]
    assert w.kube.scales[("a", "web2")]["spec"]["replicas"] == 10  # no inherited cooldown
    assert w.kube.scales[("a", "web")]["spec"]["replicas"] == 4  # the old target: left alone
    assert st["replicas"] == 10 and st["shield"]["targetUID"] == "uid-web2"
    assert "OUTSIDE_SCALE" not in w.events.reasons()


# --- the operator: killed inside a stabilization window ------------------------------------


async def test_killed_inside_a_stabilization_window_no_burst_after_the_restart(model_dir):
    """An operator killed (nothing kept but the statuses) while a scale-down is held by the
    stabilization window, with a step-limited proposal above the applied count in memory:
    the restarted one never goes lower, or sooner, than the one that kept running, and does
    scale down in the end. The memory goes through the status only
    (``ShieldState.to_records`` -> status -> ``from_records``)."""
    spec = {
        **SPEC,
        "behavior": {
            "scaleUp": {"maxPods": 2, "maxPercent": 0, "cooldown": "15s"},
            "scaleDown": {"cooldown": "0s", "stabilizationWindow": "120s", "maxPods": 10},
        },
    }

    def start(status=None, replicas=4):
        w = world(model_dir)
        if status is not None:
            w.kube.status = status
        w.deployment("a", "web", replicas)
        w.prom.set("a", "web", cpu=1.0)  # 4 busy pods at 65 %: 7, stepped to 6
        return w

    async def tick(w, t, cpu):
        w.prom.set("a", "web", cpu=cpu)
        w.policy("a", "web", spec)
        await w.tick(t)
        w.sync_from_kube()
        return w.kube.scales[("a", "web")]["spec"]["replicas"]

    kept = start()
    assert await tick(kept, T0, 1.0) == 6
    restarted = None
    counts = []
    for i in range(1, 21):
        t = T0 + 15 * i
        if i == 2:  # SIGKILL: a new process, with only what the statuses say
            status = copy.deepcopy(kept.kube.status)
            rec = status[("a", "web")]["shield"]
            assert rec["lastApplied"] == 6 and [m for _, m in rec["proposals"]] == [7]
            restarted = start(status, kept.kube.scales[("a", "web")]["spec"]["replicas"])
        a = await tick(kept, t, 0.1)  # the load is gone: the model proposes 1
        b = await tick(restarted, t, 0.1) if restarted else a
        counts.append((i, a, b))
        assert 1 <= a <= 10 and 1 <= b <= 10
        assert b >= a, counts  # never lower, never sooner
    st = restarted.kube.status[("a", "web")]
    first_down = next(i for i, _, b in counts if b < 6)
    assert 15 * first_down >= 15 * 2 + 120, counts  # one whole window after the restart
    assert counts[-1][2] < 6, counts  # and not stuck
    assert restarted.kube.writes("scale") == 1 and st["lastAction"]["from"] == 6
    assert "OUTSIDE_SCALE" not in restarted.events.reasons()


# --- models ----------------------------------------------------------------------------------


def _configmaps(model_dir, tmp_path):
    """The good ConfigMap and its pin; a tampered one (same pin); one of another feature spec
    (its own pin)."""
    good, pin = artifact_configmap(model_dir, "m", "a")
    tampered = copy.deepcopy(good)
    tampered["binaryData"]["model.pt"] = tampered["binaryData"]["state_dict.pt"]
    other = tmp_path / "other-spec"
    shutil.copytree(model_dir, other)
    manifest = json.loads((other / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps({**manifest, "spec_hash": "0123abcd"}))
    wrong_spec, wrong_pin = artifact_configmap(other, "m", "a")
    return {
        "good": (good, pin),
        "deleted": (None, pin),
        "tampered": (tampered, pin),
        "spec_hash": (wrong_spec, wrong_pin),
    }


MODEL_FAULTS = [
    ("deleted", True, "ConfigMap m not found"),
    ("deleted", False, "ConfigMap m not found"),  # before it was ever loaded
    ("tampered", True, "ConfigMap m: model.pt: sha256 does not match the manifest"),
    ("spec_hash", True, "trained for feature spec 0123abcd"),
]


@pytest.mark.parametrize(("fault", "in_use", "message"), MODEL_FAULTS)
async def test_a_model_configmap_gone_or_bad_is_refused_the_fallback_acts_and_it_heals(
    model_dir, tmp_path, fault, in_use, message
):
    cms = _configmaps(model_dir, tmp_path)
    w = world(model_dir)
    w.engine.models.refresh_s = 0.0  # re-read every tick
    w.deployment("a", "web", 2)
    w.prom.set("a", "web", cpu=1.4)  # the HPA rule at 70 %: 2 -> 4
    rv = iter(range(1, 100))

    async def tick(t, phase):
        cm, pin = cms[phase]
        w.kube.configmaps.pop(("a", "m"), None)
        if cm is not None:
            w.kube.configmaps[("a", "m")] = {
                **cm,
                "metadata": {**cm["metadata"], "resourceVersion": str(next(rv))},
            }
        model = {"configMapRef": {"name": "m"}, "sha256": pin}
        w.policy("a", "web", {**SPEC, "maxReplicas": 4, "model": model})
        await w.tick(t)
        w.sync_from_kube()
        return w.kube.status[("a", "web")]

    if in_use:
        w.prom.set("a", "web", cpu=0.5)  # the model holds at 2
        st = await tick(T0, "good")
        assert (
            cond(st, "ModelReady")["status"] == "True" and st["model"]["sha256"] == cms["good"][1]
        )
        w.prom.set("a", "web", cpu=1.4)
    st = await tick(T0 + 15, fault)
    c = cond(st, "ModelReady")
    assert (c["status"], c["reason"]) == ("False", "MODEL_REFUSED") and message in c["message"]
    assert cond(st, "Ready")["status"] == "False" and st["replicas"] == 2  # held
    st = await tick(T0 + 30, fault)
    assert st["fallback"]["active"] is True and st["fallback"]["reason"] == "MODEL_REFUSED"
    assert st["lastAction"]["action"] == "hpa" and st["replicas"] == 4  # within max 4
    assert w.events.reasons().count("MODEL_REFUSED") == 1
    assert any(e.reason == "FALLBACK_ACTIVE" and message in e.message for e in w.events.posted)
    assert total(w, "qscale_fallbacks_total") == 1
    w.prom.set("a", "web", cpu=0.5)
    st = await tick(T0 + 45, "good")  # a good ConfigMap again: no restart needed
    c = cond(st, "ModelReady")
    assert (
        c["status"] == "True" and "fallback" not in st and st["model"]["sha256"] == cms["good"][1]
    )
    assert w.events.reasons()[-1] == "FALLBACK_ENDED" and w.kube.writes("scale") == 1


# --- Kubernetes: watches dropped, 410 Gone -------------------------------------------------


def _body(name, target, uid, status=None):
    ref = {"kind": "Deployment", "name": target}
    return {
        "metadata": {"namespace": "a", "name": name, "uid": uid, "generation": 1},
        "spec": {**SPEC, "targetRef": ref},
        "status": status or {},
    }


async def test_a_policy_deleted_while_kopfs_watch_was_down_is_dropped_on_resync(model_dir):
    """kopf relists after a 410 but never reports a deletion it missed: the ghost would keep
    scaling its Deployment. The App's resync drops it (and only it: a policy indexed after the
    listing started stays), and the Engine forgets it."""
    w = world(model_dir)
    index = PolicyIndex()
    for name in ("web", "api"):
        w.deployment("a", name, 2)
        w.prom.set("a", name, cpu=0.5)
        index.put(_body(name, name, f"p-{name}"))
    await w.engine.run_once(index.values(), T0)
    assert set(w.engine.runtimes) == {"p-web", "p-api"}
    # "web" is deleted while kopf's watch is broken; the relist shows only "api"; meanwhile a
    # new policy is indexed from a watch event that is newer than the listing
    listed = {"items": [{"metadata": {"uid": "p-api"}}]}

    class Lister(FakeKube):
        async def get(self, path, **params):
            self.calls.append(("GET", path))
            index.put(_body("late", "api", "p-late"))  # arrives while the list is in flight
            return listed

    app = App(Settings(namespaces=("a",)), index)
    app.kube = Lister()
    assert await app.resync() == ["p-web"]
    assert app.kube.calls == [("GET", "/apis/qscale.io/v1alpha1/namespaces/a/autoscalepolicies")]
    assert {p.uid for p in index.values()} == {"p-api", "p-late"}
    w.prom.set("a", "web", cpu=1.0)  # the ghost would scale 2 -> 4 now
    await w.engine.run_once(index.values(), T0 + 15)
    assert "p-web" not in w.engine.runtimes and w.kube.scales[("a", "web")]["spec"]["replicas"] == 2

    class Down(FakeKube):
        async def get(self, path, **params):
            raise ApiError(503, "unavailable")

    app.kube = Down()
    assert await app.resync() == [] and len(index.values()) == 2  # a failed listing drops none


class WatchApi:
    """A Deployments list + watch endpoint on loopback, whose watches break on demand: the
    test pushes events into the open watch, or ``"410"`` (an ERROR event: resourceVersion too
    old), ``"drop"`` (the connection is cut), ``"end"`` (the server's timeout closes it
    cleanly); ``gone_on_next_watch`` answers the next watch request with HTTP 410 itself. A
    listing waits for ``listing_open``."""

    def __init__(self) -> None:
        self.items: dict[str, dict] = {}
        self.rv = 10
        self.lists = 0
        self.watches: list[str] = []
        self.queue: asyncio.Queue = asyncio.Queue()
        self.listing_open = asyncio.Event()
        self.listing_open.set()
        self.gone_on_next_watch = False
        self.pages: list[int] = []
        """The offset of each listing page asked for."""

    async def serve(self):
        """Serve namespace ``a``'s Deployments on loopback: the runner and a client of it."""
        from aiohttp import web

        from qscale.operator.kube import Connection, Credentials, Kube

        app = web.Application()
        app.router.add_get("/apis/apps/v1/namespaces/a/deployments", self.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        url = f"http://127.0.0.1:{port}"
        return runner, Kube(Connection(url, Credentials.static("t")), timeout_s=2.0)

    def put(self, name: str, replicas: int, uid: str | None = None) -> dict:
        self.rv += 1
        obj = {
            "metadata": {"namespace": "a", "name": name, "uid": uid or f"uid-{name}",
                         "resourceVersion": str(self.rv)},
            "spec": {"replicas": replicas},
            "status": {"readyReplicas": replicas},
        }  # fmt: skip
        self.items[name] = obj
        return obj

    async def handle(self, request):
        from aiohttp import web

        if "watch" not in request.query:
            await self.listing_open.wait()
            self.lists += 1
            meta = {"resourceVersion": str(self.rv)}
            items = [self.items[k] for k in sorted(self.items)]
            limit = int(request.query.get("limit") or 0)
            if limit:  # pages: the continue token is the offset of the next one
                start = int(request.query.get("continue") or 0)
                self.pages.append(start)
                if start + limit < len(items):
                    meta["continue"] = str(start + limit)
                items = items[start : start + limit]
            return web.json_response({"items": items, "metadata": meta})
        self.watches.append(request.query["resourceVersion"])
        if self.gone_on_next_watch:
            self.gone_on_next_watch = False
            return web.json_response({"kind": "Status", "code": 410}, status=410)
        resp = web.StreamResponse()
        await resp.prepare(request)
        while True:
            ev = await self.queue.get()
            if ev == "410":
                status = {"kind": "Status", "code": 410, "message": "too old resource version"}
                await resp.write(json.dumps({"type": "ERROR", "object": status}).encode() + b"\n")
                return resp
            if ev == "drop":
                request.transport.close()
                return resp
            if ev == "end":
                return resp
            await resp.write(json.dumps(ev).encode() + b"\n")


async def test_the_deployment_cache_keeps_no_listing_while_it_watches():
    """The records are slim: the listing's whole Deployments are freed once it is read, not
    held for as long as the watch after it lasts (at 1,000 Deployments about 15 MB)."""
    import gc
    import weakref

    from qscale.operator.deployments import DeploymentCache

    class Listing(dict):  # a dict that can be weakly referenced
        pass

    seen: list[weakref.ref] = []
    watching = asyncio.Event()

    class Kube:
        async def get(self, path, **params):
            obj = {"metadata": {"namespace": "a", "name": "web", "resourceVersion": "7"}}
            listing = Listing(items=[obj], metadata={"resourceVersion": "7"})
            seen.append(weakref.ref(listing))
            return listing

        async def watch(self, path, rv):
            watching.set()
            await asyncio.Event().wait()
            yield {}

    cache = DeploymentCache(Kube(), ("a",))
    cache.start()
    try:
        await asyncio.wait_for(watching.wait(), 5)
        gc.collect()
        assert cache.get("a", "web") is not None
        assert len(seen) == 1 and seen[0]() is None
    finally:
        await cache.stop()


async def test_the_deployment_cache_lists_a_page_at_a_time():
    """A listing is read in pages (``limit`` and the server's ``continue`` token), every page
    taken, and a relist reads them all again (what was deleted meanwhile is dropped)."""
    from qscale.operator.deployments import DeploymentCache

    api = WatchApi()
    for i in range(5):
        api.put(f"d{i}", i + 1)
    runner, kube = await api.serve()
    cache = DeploymentCache(kube, ("a",), page=2)
    cache.start()
    try:
        await asyncio.wait_for(cache.ready.wait(), 5)
        assert api.pages == [0, 2, 4]
        assert [cache.get("a", f"d{i}").replicas for i in range(5)] == [1, 2, 3, 4, 5]
        for _ in range(200):
            if api.watches:
                break
            await asyncio.sleep(0.025)
        assert api.watches == [str(api.rv)]  # the watch resumes from the listing's version
        del api.items["d1"]
        await api.queue.put("410")
        for _ in range(200):
            if len(api.watches) == 2:
                break
            await asyncio.sleep(0.025)
        assert api.pages == [0, 2, 4, 0, 2] and cache.synced("a")  # 4 left: two pages
        assert cache.get("a", "d1") is None and cache.get("a", "d4").replicas == 5
    finally:
        await cache.stop()
        await kube.close()
        api.queue.put_nowait("end")  # the handler of the last watch, still waiting
        await runner.cleanup()


async def test_the_deployment_cache_relists_after_a_410_or_a_dropped_watch(model_dir):
    """While the watch is broken the namespace reads as not synced (the tick decides and
    writes nothing for it); the relist drops what was deleted meanwhile and takes what was
    created or changed; a watch the server closes cleanly resumes without a relist."""
    from qscale.operator.deployments import DeploymentCache

    api = WatchApi()
    api.put("web", 2)
    api.put("api", 3)
    runner, kube = await api.serve()
    cache = DeploymentCache(kube, ("a",))
    cache.start()

    async def until(pred, what):
        for _ in range(200):
            if pred():
                return
            await asyncio.sleep(0.025)
        raise AssertionError(f"never: {what}")

    def replicas(name):
        t = cache.get("a", name)
        return None if t is None else t.replicas

    try:
        await asyncio.wait_for(cache.ready.wait(), 5)
        assert (replicas("web"), replicas("api"), api.lists) == (2, 3, 1)
        await api.queue.put({"type": "MODIFIED", "object": api.put("web", 5)})
        await until(lambda: replicas("web") == 5, "the watch's event")

        # 410: "web" deleted, "new" created, both while the watch was gone; the relist waits
        api.listing_open.clear()
        del api.items["web"]
        api.put("new", 1)
        await api.queue.put("410")
        await until(lambda: not cache.synced("a"), "not synced while broken")
        w = world(model_dir)
        w.engine.cache = cache
        w.prom.set("a", "web", cpu=1.0)
        w.policy("a", "web", SPEC)
        rep = await w.tick(T0)
        # nothing decided or written on a stale cache (the kill switch and the ModelRollouts
        # are read, as every tick)
        reads = ("kill-switch", "modelrollouts")
        assert rep.decided == 0
        assert not [c for c in w.kube.calls if not any(x in c[1] for x in reads)]
        api.listing_open.set()
        await until(lambda: cache.synced("a") and api.lists == 2, "the relist")
        assert (replicas("web"), replicas("new"), replicas("api")) == (None, 1, 3)
        await w.tick(T0 + 15)
        assert w.kube.status[("a", "web")]["reason"] == "TARGET_MISSING"

        # the connection cut mid-watch, "api" scaled meanwhile; then a 410 on the next watch
        api.put("api", 7)
        api.gone_on_next_watch = True
        await api.queue.put("drop")
        # (the server counts the 4th listing before the cache has its answer: wait for both)
        await until(
            lambda: api.lists == 4 and replicas("api") == 7 and cache.synced("a"), "two relists"
        )

        # the server's timeout closes a healthy watch: resume from the last resourceVersion
        last = api.put("api", 8)
        await api.queue.put({"type": "MODIFIED", "object": last})
        await until(lambda: replicas("api") == 8, "the event")
        await api.queue.put("end")
        await until(lambda: api.watches[-1] == last["metadata"]["resourceVersion"], "resumed")
        assert api.lists == 4 and cache.synced("a")
    finally:
        await cache.stop()
        await kube.close()
        api.queue.put_nowait("end")  # the handler of the last watch, still waiting
        await runner.cleanup()


@pytest.mark.parametrize("status", [409, 429, 500, 503])
async def test_a_status_write_refused_is_written_again_on_the_next_tick(model_dir, status):
    """A status patch carries no resourceVersion (a merge of the fields the operator alone
    writes, absolute values): a refusal is not remembered as written, so the next tick sends
    the difference again; the scale it reports landed once."""

    class Refuses(FakeKube):
        refuse = 1

        async def patch_merge(self, path, body):
            if path.endswith("/status") and self.refuse:
                self.refuse -= 1
                self.calls.append(("PATCH", path))
                raise ApiError(status, "try again")
            return await super().patch_merge(path, body)

    w = world(model_dir)
    w.kube = w.engine.kube = w.engine.statuses.kube = Refuses()
    w.deployment("a", "web", 2)
    w.prom.set("a", "web", cpu=1.0)
    w.policy("a", "web", SPEC)
    await w.tick(T0)
    assert ("a", "web") not in w.kube.status and w.kube.scales[("a", "web")]["spec"][
        "replicas"
    ] == 4
    w.sync_from_kube()
    w.prom.set("a", "web", cpu=0.6)  # 4 pods at 60 %: hold
    w.policy("a", "web", SPEC)
    await w.tick(T0 + 15)
    st = w.kube.status[("a", "web")]
    assert st["lastAction"]["from"] == 2 and st["lastAction"]["to"] == 4 and st["replicas"] == 4
    assert w.kube.writes("scale") == 1 and w.kube.writes("status") == 2
