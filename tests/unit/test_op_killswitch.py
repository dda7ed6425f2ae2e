"""The kill switch (issue #17 §2): every policy to the HPA rule, or to Off, within one tick,
from a setting, the operator's ConfigMap or a namespace's; nothing deleted; a fault never
releases it. In-memory API and Prometheus (tests/unit/opfakes.py); the real ones in the
operator's cluster tests."""

from __future__ import annotations

import pytest
from opfakes import SPEC, T0, cond, world

from qscale.operator.killswitch import parse
from qscale.operator.kube import ApiError

pytestmark = pytest.mark.asyncio

HOME = "qscale-system"
MODEL_STEP = 4  # the busy_at_65 model: 2 pods at 100 % CPU -> ceil(2 / 0.65)
HPA_STEP = 3  # the HPA rule at 70 %: ceil(2 x 1.0 / 0.7)


def switch(w, ns: str, mode: str) -> None:
    w.kube.configmaps[(ns, "qscale-kill-switch")] = {"data": {"mode": mode}}


def two_namespaces(model_dir, **settings):
    w = world(model_dir, lease_namespace=HOME, **settings)
    for ns in ("a", "b"):
        w.deployment(ns, "web", 2)
        w.prom.set(ns, "web", cpu=1.0)
        w.policy(ns, "web", SPEC, uid=f"p-{ns}")
    return w


def gauge(w, mode: str) -> float:
    fam = next(f for f in w.engine.metrics.registry.collect() if f.name == "qscale_kill_switch")
    return next(s.value for s in fam.samples if s.labels == {"scope": "operator", "mode": mode})


def replicas(w, ns: str) -> int:
    return w.kube.scales[(ns, "web")]["spec"]["replicas"]


async def test_the_operator_configmap_hands_every_policy_to_the_hpa_rule_in_one_tick(model_dir):
    w = two_namespaces(model_dir)
    switch(w, HOME, "HPA")
    await w.tick(T0)
    assert replicas(w, "a") == HPA_STEP and replicas(w, "b") == HPA_STEP
    for ns in ("a", "b"):
        st = w.kube.status[(ns, "web")]
        assert st["reason"] == "KILL_SWITCH" and st["fallback"]["reason"] == "KILL_SWITCH"
        active = cond(st, "ScalingActive")
        assert active["status"] == "True" and active["reason"] == "KILL_SWITCH"
        assert f"ConfigMap {HOME}/qscale-kill-switch" in active["message"]
        assert cond(st, "ModelReady")["status"] == "True"  # nothing wrong with the model
    engaged = [e for e in w.events.posted if e.reason == "KILL_SWITCH" and e.type == "Warning"]
    assert len(engaged) == 2 and gauge(w, "HPA") == 1.0  # once per policy; the scales follow
    # Released: the model decides again on the next tick, and says so once.
    del w.kube.configmaps[(HOME, "qscale-kill-switch")]
    w.sync_from_kube()
    w.prom.set("a", "web", cpu=1.0)
    for ns in ("a", "b"):
        w.policy(ns, "web", SPEC, uid=f"p-{ns}")
    await w.tick(T0 + 15)
    st = w.kube.status[("a", "web")]
    assert st["reason"] != "KILL_SWITCH" and "fallback" not in st
    assert cond(st, "ScalingActive")["reason"] != "KILL_SWITCH"
    assert w.events.reasons().count("KILL_SWITCH_RELEASED") == 2 and gauge(w, "HPA") == 0.0


async def test_a_namespace_switch_to_off_stops_only_that_namespace(model_dir):
    w = two_namespaces(model_dir)
    switch(w, "b", "Off")
    await w.tick(T0)
    assert replicas(w, "a") == MODEL_STEP  # untouched: the model decides
    assert replicas(w, "b") == 2  # Off: reports only
    st = w.kube.status[("b", "web")]
    assert st["reason"] == "KILL_SWITCH" and "desiredReplicas" not in st
    active = cond(st, "ScalingActive")
    assert active["status"] == "False" and "ConfigMap b/qscale-kill-switch" in active["message"]
    assert w.kube.status[("a", "web")]["reason"] == "OK"


async def test_the_setting_and_the_strongest_switch_win(model_dir):
    w = two_namespaces(model_dir, kill_switch="HPA")
    switch(w, "b", "Off")  # Off beats the operator-wide HPA
    await w.tick(T0)
    assert replicas(w, "a") == HPA_STEP and replicas(w, "b") == 2
    assert "operator setting QSCALE_KILL_SWITCH" in cond(w.kube.status[("a", "web")],
                                                          "ScalingActive")["message"]  # fmt: skip


async def test_an_unreadable_switch_stays_engaged(model_dir):
    w = two_namespaces(model_dir)
    switch(w, HOME, "Off")
    await w.tick(T0)
    assert replicas(w, "a") == 2
    real_get = w.kube.get

    async def flaky(path, **kw):
        if "/configmaps/" in path:
            raise ApiError(500, "etcd is unhappy")
        return await real_get(path, **kw)

    w.kube.get = flaky
    del w.kube.configmaps[(HOME, "qscale-kill-switch")]  # released, but nobody can read that
    for ns in ("a", "b"):
        w.policy(ns, "web", SPEC, uid=f"p-{ns}")
    await w.tick(T0 + 15)
    assert replicas(w, "a") == 2 and w.kube.status[("a", "web")]["reason"] == "KILL_SWITCH"
    w.kube.get = real_get
    await w.tick(T0 + 30)
    assert replicas(w, "a") == MODEL_STEP


async def test_a_shadow_policy_under_the_hpa_switch_still_never_writes(model_dir):
    w = world(model_dir, lease_namespace=HOME)
    w.deployment("a", "web", 2)
    w.prom.set("a", "web", cpu=1.0)
    w.policy("a", "web", {**SPEC, "mode": "Shadow"})
    switch(w, "a", "HPA")
    await w.tick(T0)
    st = w.kube.status[("a", "web")]
    assert replicas(w, "a") == 2 and w.kube.writes("scale") == 0
    assert st["wouldScaleTo"] == HPA_STEP and cond(st, "ScalingActive")["status"] == "False"


@pytest.mark.parametrize(
    ("value", "mode", "note"),
    [("HPA", "HPA", False), ("off", "Off", False), ("", None, False), ("none", None, False),
     ("of", "HPA", True), ("disable-everything", "HPA", True)],
)  # fmt: skip
async def test_a_value_that_is_not_hpa_or_off_still_stops_the_model(value, mode, note):
    got = parse(value, "x")
    assert (got.mode if got else None) == mode
    assert bool(got and got.note) is note
