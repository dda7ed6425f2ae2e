"""The batched tick against in-memory API/Prometheus stand-ins: what it writes, and when not."""

from __future__ import annotations

import dataclasses
import math

import pytest
from opfakes import SPEC, T0, busy_model, cond, world

from qscale.operator.models import artifact_configmap

pytestmark = pytest.mark.asyncio


async def test_scale_up_then_steady_state_writes_nothing(model_dir):
    w = world(model_dir)
    w.deployment("a", "web", 2)
    w.prom.set("a", "web", cpu=1.0)  # 2 busy pods -> ceil(2 / 0.65) = 4
    w.policy("a", "web", SPEC)
    rep = await w.tick(T0)
    assert rep.queries == 5 and rep.scale_writes == 1 and rep.changed == [("a", "web", 2, 4)]
    st = w.kube.status[("a", "web")]
    assert st["replicas"] == 4 and st["desiredReplicas"] == 4 and st["reason"] == "OK"
    assert st["lastAction"]["action"] == "busy_at_65" and st["lastAction"]["applied"] is True
    assert set(st["lastAction"]["qValues"]) >= {"hold", "busy_at_65"}
    assert (
        cond(st, "ScalingActive")["status"] == "True" and cond(st, "ModelReady")["status"] == "True"
    )
    assert w.events.reasons() == ["OK"]
    w.sync_from_kube()
    w.prom.set("a", "web", cpu=0.6)  # 4 pods x 0.6 = 2.4 busy -> 4: hold
    before = (w.kube.writes("scale"), w.kube.writes("status"))
    for i in range(1, 12):
        w.policy("a", "web", SPEC)
        await w.tick(T0 + 15 * i)
    after = (w.kube.writes("scale"), w.kube.writes("status"))
    assert after[0] == before[0]
    assert after[1] - before[1] <= 1  # at most the one status change (the proposal's memory)


async def test_only_due_policies_are_decided_and_all_share_four_queries_and_one_forward_pass(
    model_dir,
):
    w = world(model_dir)
    for i in range(50):
        w.deployment("a", f"d{i}", 2)
        w.prom.set("a", f"d{i}", cpu=0.3)
        w.policy("a", f"p{i}", {**SPEC, "targetRef": {"kind": "Deployment", "name": f"d{i}"}})
    rep = await w.tick(T0)
    assert rep.due == 50 and rep.queries == 5 and w.prom.fetches == 1 and w.prom.groups == 1
    family = next(
        f for f in w.engine.metrics.registry.collect() if f.name == "qscale_inference_seconds"
    )
    assert next(s.value for s in family.samples if s.name.endswith("_count")) == 1
    rep = await w.tick(T0 + 5)  # not due yet (15 s interval)
    assert rep.due == 0 and w.prom.fetches == 1


async def test_shadow_never_writes_and_records_a_would_be_scale_once(model_dir):
    w = world(model_dir)
    w.deployment("a", "web", 2)
    w.prom.set("a", "web", cpu=1.0)
    for i in range(4):
        w.policy("a", "web", {**SPEC, "mode": "Shadow"})
        await w.tick(T0 + 15 * i)
    assert w.kube.writes("scale") == 0 and w.kube.scales[("a", "web")]["spec"]["replicas"] == 2
    st = w.kube.status[("a", "web")]
    assert st["wouldScaleTo"] == 4 and st["lastAction"]["applied"] is False
    assert st["lastAction"]["time"] == "2027-01-15T08:00:00Z"  # recorded once, not every tick
    assert cond(st, "ScalingActive")["reason"] == "MODE_SHADOW"
    assert w.kube.writes("status") == 1


async def test_off_only_reports(model_dir):
    w = world(model_dir)
    w.deployment("a", "web", 2)
    w.prom.set("a", "web", cpu=1.0)
    w.policy("a", "web", {**SPEC, "mode": "Off"})
    rep = await w.tick(T0)
    assert rep.decided == 0 and w.kube.writes("scale") == 0
    st = w.kube.status[("a", "web")]
    assert st["reason"] == "MODE_OFF" and "desiredReplicas" not in st and st["replicas"] == 2


async def test_metrics_down_holds_then_fallback_holds_too_and_bounds_still_apply(model_dir):
    w = world(model_dir)
    w.deployment("a", "web", 12)  # above maxReplicas 10
    w.prom.down = True
    reasons = []
    for i in range(4):
        w.policy("a", "web", SPEC)
        await w.tick(T0 + 15 * i)
        w.sync_from_kube()
        reasons.append(w.kube.status[("a", "web")]["reason"])
    st = w.kube.status[("a", "web")]
    # the bound applies at once, without metrics; then hold; the third failed tick: the HPA rule
    assert reasons == ["AT_MAX", "METRICS_MISSING", "FALLBACK_ACTIVE", "FALLBACK_ACTIVE"]
    assert w.kube.scales[("a", "web")]["spec"]["replicas"] == 10
    assert cond(st, "MetricsAvailable") == {
        **cond(st, "MetricsAvailable"),
        "status": "False",
        "reason": "QUERY_FAILED",
    }
    assert st["fallback"]["active"] is True
    assert w.events.reasons().count("FALLBACK_ACTIVE") == 1  # the event, once
    w.prom.down = False
    w.prom.set("a", "web", cpu=0.65)
    w.policy("a", "web", SPEC)
    await w.tick(T0 + 60)
    st = w.kube.status[("a", "web")]
    assert "fallback" not in st and cond(st, "MetricsAvailable")["status"] == "True"
    assert "FALLBACK_ENDED" in w.events.reasons()


async def test_model_with_a_wrong_pin_is_refused_and_the_hpa_rule_takes_over(model_dir, tmp_path):
    w = world(model_dir)
    cm, digest = artifact_configmap(model_dir, "m", "a")
    w.kube.configmaps[("a", "m")] = cm
    w.deployment("a", "web", 2)
    w.prom.set("a", "web", cpu=1.4)  # 140 % of the request, HPA at 70 %: 2 -> 4
    spec = {
        **SPEC,
        "model": {"configMapRef": {"name": "m"}, "sha256": "0" * 64},
        "fallback": {"afterFailedTicks": 2},
    }
    for i in range(2):
        w.policy("a", "web", spec)
        await w.tick(T0 + 15 * i)
    st = w.kube.status[("a", "web")]
    assert (
        cond(st, "ModelReady")["status"] == "False"
        and "sha256 mismatch" in cond(st, "ModelReady")["message"]
    )
    assert cond(st, "Ready")["status"] == "False"
    assert (
        w.kube.scales[("a", "web")]["spec"]["replicas"] == 4 and st["lastAction"]["action"] == "hpa"
    )
    assert w.events.reasons().count("MODEL_REFUSED") == 1
    # the right pin: the ConfigMap's model is served
    w2 = world(model_dir)
    w2.kube.configmaps[("a", "m")] = cm
    w2.deployment("a", "web", 2)
    w2.prom.set("a", "web", cpu=0.3)
    w2.policy("a", "web", {**spec, "model": {"configMapRef": {"name": "m"}, "sha256": digest}})
    await w2.tick(T0)
    st = w2.kube.status[("a", "web")]
    assert cond(st, "ModelReady")["status"] == "True" and st["model"]["sha256"] == digest


async def test_outside_scale_is_noticed_and_counts_for_the_cooldown(model_dir):
    w = world(model_dir)
    w.deployment("a", "web", 4)
    w.prom.set("a", "web", cpu=0.6)
    w.policy("a", "web", SPEC)
    await w.tick(T0)
    w.deployment("a", "web", 9)  # kubectl scale
    w.prom.set("a", "web", cpu=0.1)  # would scale down at once
    w.policy("a", "web", SPEC)
    await w.tick(T0 + 15)
    st = w.kube.status[("a", "web")]
    assert st["lastOutsideScale"]["from"] == 4 and st["lastOutsideScale"]["to"] == 9
    assert "OUTSIDE_SCALE" in w.events.reasons()
    assert (
        w.kube.scales[("a", "web")]["spec"]["replicas"] == 9
    )  # down cooldown from the outside scale
    assert st["reason"] in ("COOLDOWN_DOWN", "STABILIZED")


async def test_a_conflict_is_retried_once_and_a_step_never_lands_twice(model_dir):
    w = world(model_dir)
    w.deployment("a", "web", 2)
    w.prom.set("a", "web", cpu=1.0)
    w.kube.conflict_once.add(("a", "web"))  # e.g. a status update of the Deployment
    w.policy("a", "web", SPEC)
    await w.tick(T0)
    assert w.kube.scales[("a", "web")]["spec"]["replicas"] == 4
    # someone else scales just before our next write: the step is dropped, not stacked
    w2 = world(model_dir)
    w2.deployment("a", "web", 2)
    w2.prom.set("a", "web", cpu=1.0)
    w2.kube.outside[("a", "web")] = 3
    w2.policy("a", "web", SPEC)
    rep = await w2.tick(T0)
    assert rep.changed == [] and w2.kube.scales[("a", "web")]["spec"]["replicas"] == 3
    assert "lastAction" not in w2.kube.status[("a", "web")]


async def test_a_restarted_operator_keeps_the_cooldown(model_dir):
    spec = {**SPEC, "behavior": {"scaleDown": {"cooldown": "300s", "stabilizationWindow": "0s"}}}
    w = world(model_dir)
    w.deployment("a", "web", 2)
    w.prom.set("a", "web", cpu=1.0)
    w.policy("a", "web", spec)
    await w.tick(T0)
    assert w.kube.scales[("a", "web")]["spec"]["replicas"] == 4
    status = w.kube.status[("a", "web")]
    # a new process: nothing in memory, only the status
    w2 = world(model_dir)
    w2.kube.status = w.kube.status
    w2.deployment("a", "web", 4)
    w2.prom.set("a", "web", cpu=0.1)
    w2.policy("a", "web", spec, status=status)
    await w2.tick(T0 + 60)
    assert (
        w2.kube.writes("scale") == 0 and w2.kube.status[("a", "web")]["reason"] == "COOLDOWN_DOWN"
    )
    w2.policy("a", "web", spec)
    await w2.tick(T0 + 315)
    assert w2.kube.scales[("a", "web")]["spec"]["replicas"] < 4


async def test_missing_target_and_invalid_spec_are_conditions_reported_once(model_dir):
    w = world(model_dir)
    w.cache._synced["a"] = True  # listed: no Deployment "web"
    w.policy("a", "web", SPEC)
    w.policy("a", "bad", {**SPEC, "minReplicas": 20})
    for i in range(3):
        await w.tick(T0 + 15 * i)
    st = w.kube.status[("a", "web")]
    assert st["reason"] == "TARGET_MISSING" and cond(st, "Ready")["status"] == "False"
    assert w.kube.status[("a", "bad")]["reason"] == "INVALID_SPEC"
    assert w.events.reasons().count("TARGET_MISSING") == 1 and w.kube.writes("status") == 2
    w.deployment("a", "web", 2)
    w.prom.set("a", "web", cpu=0.5)
    await w.tick(T0 + 45)
    assert w.kube.status[("a", "web")]["reason"] == "OK"


async def test_api_down_decides_and_writes_nothing(model_dir):
    w = world(model_dir)
    w.deployment("a", "web", 2)
    w.cache._synced["a"] = False  # the watch broke: replicas unknown
    w.prom.set("a", "web", cpu=1.0)
    w.policy("a", "web", SPEC)
    rep = await w.tick(T0)
    reads = ("kill-switch", "modelrollouts")  # read every tick, written never here
    assert rep.decided == 0
    assert not [c for c in w.kube.calls if not any(x in c[1] for x in reads)]


async def test_a_policy_that_differs_from_the_training_settings_gets_a_condition(tmp_path):
    from opfakes import QNetwork, export

    d = export(
        QNetwork(),
        tmp_path / "m",
        serving={"interval_s": 15.0, "shield": {"down_cooldown_s": 60.0}},
    )
    w = world(d)
    w.deployment("a", "web", 2)
    w.prom.set("a", "web", cpu=0.5)
    w.policy("a", "web", {**SPEC, "interval": "5s", "behavior": {"scaleDown": {"cooldown": "30s"}}})
    w.policy(
        "a", "same", {**SPEC, "mode": "Shadow", "targetRef": {"kind": "Deployment", "name": "web"}}
    )
    await w.tick(T0)
    c = cond(w.kube.status[("a", "web")], "MatchesTraining")
    assert c["status"] == "False" and c["reason"] == "TRAINING_MISMATCH"
    assert c["message"] == "interval 5s (trained 15s); down_cooldown_s 30 (trained 60)"
    assert cond(w.kube.status[("a", "same")], "MatchesTraining")["status"] == "True"


@pytest.mark.asyncio
async def test_a_second_enforce_policy_on_one_deployment_is_refused(tmp_path):
    """Two writers would undo each other every tick: the newer Enforce policy is refused with a
    condition and writes nothing; Shadow beside Enforce (the recommended trial) still decides;
    the newer one takes over when the older one goes."""
    w = world(busy_model(tmp_path / "m"))
    w.deployment("a", "web", 2)
    w.prom.set("a", "web", cpu=0.9)
    w.policy("a", "x-web", SPEC, uid="p-old")
    w.policy("a", "a-web", SPEC, uid="p-new")  # created later, though its name sorts first
    shadow = w.policy("a", "web-shadow", {**SPEC, "mode": "Shadow"})
    born = {"p-old": "2026-01-01T00:00:00Z", "p-new": "2026-06-01T00:00:00Z"}
    w.policies = [dataclasses.replace(p, created=born.get(p.uid, "")) for p in w.policies]
    await w.tick(T0)
    st = w.kube.status[("a", "a-web")]
    assert (
        st["reason"] == "TARGET_CONFLICT"
        and "AutoscalePolicy x-web" in cond(st, "Ready")["message"]
    )
    assert cond(st, "Ready")["status"] == "False" and "desiredReplicas" not in st
    assert w.kube.status[("a", "x-web")]["reason"] != "TARGET_CONFLICT"
    assert w.kube.status[("a", "web-shadow")].get("wouldScaleTo") is not None
    assert [e.reason for e in w.events.posted].count("TARGET_CONFLICT") == 1
    assert shadow.uid in w.engine.runtimes
    # the older one is deleted: the newer one decides from the next tick on
    w.policies = [p for p in w.policies if p.uid != "p-old"]
    await w.tick(T0 + 15)
    assert w.kube.status[("a", "a-web")]["reason"] != "TARGET_CONFLICT"


@pytest.mark.asyncio
async def test_a_model_that_answers_nan_is_contained_and_the_fallback_acts(tmp_path):
    import torch
    from opfakes import QNetwork, export

    net = QNetwork()
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(math.nan)
    w = world(export(net, tmp_path / "nan"))
    w.deployment("a", "web", 4)
    w.prom.set("a", "web", cpu=0.9)
    w.policy("a", "web", {**SPEC, "fallback": {"afterFailedTicks": 2}})
    await w.tick(T0)
    st = w.kube.status[("a", "web")]
    assert (
        st["reason"] == "MODEL_OUTPUT_INVALID"
        and w.kube.scales[("a", "web")]["spec"]["replicas"] == 4
    )
    assert cond(st, "ModelReady")["status"] == "False"
    await w.tick(T0 + 15)
    st = w.kube.status[("a", "web")]
    assert (
        st["fallback"]["active"] is True
        and cond(st, "ModelReady")["reason"] == "MODEL_OUTPUT_INVALID"
    )


async def test_decisions_and_their_outcomes_are_counted_per_model_version(model_dir):
    w = world(model_dir)
    w.deployment("a", "web", 2)
    reg = w.engine.metrics.registry
    w.prom.set("a", "web", cpu=1.0, p95=0.1)
    w.policy("a", "web", SPEC)
    await w.tick(T0)
    (m,) = [x for x in w.engine.models.loaded()]
    label = f"{m.name}@{m.digest[:12]}"
    decided = {"action": "busy_at_65", "mode": "Enforce", "reason": "OK", "model": label}
    assert reg.get_sample_value("qscale_decisions_total", decided) == 1
    for i, p95 in ((1, 0.1), (2, 0.5)):  # the SLO is 200 ms: held after the first, missed after
        w.sync_from_kube()
        w.prom.set("a", "web", cpu=0.5, p95=p95)
        w.policy("a", "web", SPEC)
        await w.tick(T0 + 15 * i)
    held = reg.get_sample_value(
        "qscale_action_outcomes_total", {"model": label, "outcome": "slo_held"}
    )
    missed = reg.get_sample_value(
        "qscale_action_outcomes_total", {"model": label, "outcome": "slo_missed"}
    )
    assert (held, missed) == (1, 1)
    # The HPA rule's decisions are its own, never the model's outcome.
    w.prom.down = True
    for i in range(3, 8):
        w.policy("a", "web", SPEC)
        await w.tick(T0 + 15 * i)
    hpa = [
        s for f in reg.collect() for s in f.samples
        if s.name == "qscale_decisions_total" and s.labels["model"] == "hpa-rule"
    ]  # fmt: skip
    assert hpa and all(s.labels["reason"] == "FALLBACK_ACTIVE" for s in hpa)
