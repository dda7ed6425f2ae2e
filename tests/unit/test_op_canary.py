"""Canary (#17 §2) through the tick, on a closed loop of fakes: the fake service's CPU and p95
follow the replicas the operator writes. Rollback on the candidate's own measured figures,
promotion after a window, and what survives a restart."""

from __future__ import annotations

import pytest
from opfakes import SPEC, T0, busy_model, world

from qscale.operator.models import artifact_configmap
from qscale.operator.tick import IndexedPolicy

pytestmark = pytest.mark.asyncio

LOAD, CAPACITY = 180.0, 50.0
FAST_DOWN = {"scaleDown": {"cooldown": "0s", "stabilizationWindow": "0s", "maxPercent": 100}}


def publish(w, path, name: str) -> dict:
    cm, digest = artifact_configmap(path, name, "a")
    w.kube.configmaps[("a", name)] = cm
    return {"configMapRef": {"name": name}, "sha256": digest}


def serve(w) -> None:
    """The service at the replicas the Deployment has: 180 req/s, 50 per pod."""
    n = w.kube.scales[("a", "web")]["spec"]["replicas"]
    util = LOAD / (n * CAPACITY)
    w.prom.set("a", "web", cpu=min(util, 1.0), rate=min(LOAD, n * CAPACITY),
               p95=0.5 if util > 0.9 else 0.08)  # fmt: skip


async def run(w, spec: dict, ticks: int, start: int = 0) -> dict:
    for i in range(start, start + ticks):
        w.sync_from_kube()
        serve(w)
        w.policy("a", "web", spec)
        await w.tick(T0 + 2 * i)
    return w.kube.status[("a", "web")]


def canary_spec(candidate: dict, **kw) -> dict:
    return {
        **SPEC,
        "interval": "2s",
        "behavior": FAST_DOWN,
        "canary": {"model": candidate, "period": "8s", "window": "40s", **kw},
    }


async def test_an_under_provisioning_candidate_is_rolled_back_and_the_incumbent_holds(
    model_dir, tmp_path
):
    w = world(model_dir)  # the incumbent: busy_at_65
    w.deployment("a", "web", 2)
    hold = publish(w, busy_model(tmp_path / "hold", action=0), "hold")
    spec = canary_spec(hold)
    st = await run(w, spec, 30)
    c = st["canary"]
    assert c["state"] == "RolledBack" and c["reason"] == "SLO_VIOLATION", c
    assert c["candidate"]["sloViolationPercent"] > 5 and c["candidate"]["decisions"] >= 5
    assert w.events.reasons().count("CANARY_ROLLED_BACK") == 1
    reg = w.engine.metrics.registry
    assert reg.get_sample_value("qscale_canary_rollbacks_total") == 1
    assert reg.get_sample_value("qscale_canary_policies", {"state": "RolledBack"}) == 1
    # From then on the incumbent decides every tick and holds the SLO; no flapping back.
    st = await run(w, spec, 20, start=30)
    assert st["canary"]["state"] == "RolledBack" and st["canary"]["arm"] == "incumbent"
    assert w.kube.scales[("a", "web")]["spec"]["replicas"] >= 4
    assert w.events.reasons().count("CANARY_ROLLED_BACK") == 1
    # A restarted operator keeps it rolled back (status), a new generation starts it again.
    w.engine.forget()
    st = await run(w, spec, 3, start=50)
    assert st["canary"]["state"] == "RolledBack"
    body = {"metadata": {"namespace": "a", "name": "web", "uid": "p-web", "generation": 2},
            "spec": spec, "status": w.kube.status[("a", "web")]}  # fmt: skip
    w.policies = [IndexedPolicy.from_body(body)]
    rep = await w.engine.run_once(w.policies, T0 + 2 * 53)
    await w.engine.statuses.run_pending()
    assert rep.decided == 1 and w.kube.status[("a", "web")]["canary"]["state"] == "Running"


async def test_a_cheaper_candidate_that_keeps_the_slo_is_promoted(tmp_path):
    over = busy_model(tmp_path / "x2", action=4)  # the incumbent doubles: to maxReplicas
    w = world(over)
    w.deployment("a", "web", 6)
    good = publish(w, busy_model(tmp_path / "b65", action=6), "b65")
    spec = canary_spec(good, promotion={"enabled": True, "minCostSavingPercent": 10})
    st = await run(w, spec, 40)
    c = st["canary"]
    assert c["state"] == "Promoted", c
    assert "fewer replica-seconds per request" in c["message"]
    assert w.events.reasons().count("CANARY_PROMOTED") == 1
    st = await run(w, spec, 8, start=40)  # the candidate decides all the time now
    assert st["canary"]["arm"] == "candidate" and st["replicas"] < 10


async def test_the_arms_take_turns_and_a_refused_candidate_is_rolled_back(model_dir, tmp_path):
    w = world(model_dir)
    w.deployment("a", "web", 4)
    good = publish(w, model_dir, "same")
    spec = canary_spec(good, percent=25)
    arms = []
    for i in range(8):
        await run(w, spec, 1, start=i)
        arms.append(w.engine.canaries._c["p-web"].arm_at(T0 + 2 * i))
    assert arms == ["candidate", "incumbent", "incumbent", "incumbent"] * 2
    bad = {**good, "sha256": "0" * 64}
    st = await run(w, canary_spec(bad), 4, start=8)
    assert st["canary"]["state"] == "RolledBack" and st["canary"]["reason"] == "MODEL_REFUSED"
    assert "sha256" in st["canary"]["message"]


async def test_the_hpa_rule_as_incumbent_takes_its_turns_and_takes_over(model_dir, tmp_path):
    w = world(model_dir)
    w.deployment("a", "web", 2)
    hold = publish(w, busy_model(tmp_path / "hold", action=0), "hold")
    spec = canary_spec(hold, incumbent="HPA")
    reasons = []
    for i in range(30):
        st = await run(w, spec, 1, start=i)
        reasons.append(st["reason"])
    assert "CANARY_INCUMBENT_HPA" in reasons
    st = w.kube.status[("a", "web")]
    assert st["canary"]["state"] == "RolledBack" and st["canary"]["incumbent"]["decisions"] >= 2
    # The HPA rule scaled for the load (180 req/s, 70 % CPU target: >= 4 pods), as the
    # incumbent, not as a fallback: no FALLBACK_ACTIVE, no status.fallback.
    assert w.kube.scales[("a", "web")]["spec"]["replicas"] >= 4
    assert "FALLBACK_ACTIVE" not in w.events.reasons() and "fallback" not in st
    active = next(c for c in st["conditions"] if c["type"] == "ScalingActive")
    assert active["reason"] == "CANARY_INCUMBENT_HPA" and "HPA rule" in active["message"]
