"""Group canary (#17 §2): a ModelRollout runs a candidate on a share of the targets of the
policies its selector matches, through the tick, on a closed loop of fakes (each fake service's
CPU and p95 follow the replicas the operator writes)."""

from __future__ import annotations

import pytest
from opfakes import SPEC, T0, busy_model, world

from qscale.operator.events import body
from qscale.operator.models import artifact_configmap
from qscale.operator.rollout import IndexedRollout, candidates
from qscale.operator.spec import SpecError, parse_rollout, parse_selector

LOAD, CAPACITY = 180.0, 50.0
FAST_DOWN = {"scaleDown": {"cooldown": "0s", "stabilizationWindow": "0s", "maxPercent": 100}}
NAMES = ("web0", "web1", "web2", "web3")


def publish(w, path, name: str) -> dict:
    cm, digest = artifact_configmap(path, name, "a")
    w.kube.configmaps[("a", name)] = cm
    return {"configMapRef": {"name": name}, "sha256": digest}


def rollout(w, name: str, model: dict, generation: int = 1, uid: str | None = None, **spec):
    body = {
        "metadata": {
            "namespace": "a",
            "name": name,
            "uid": uid or f"r-{name}",
            "generation": generation,
            "creationTimestamp": f"2026-01-0{generation}T00:00:00Z",
        },
        "spec": {
            "selector": {"matchLabels": {"team": "x"}},
            "model": model,
            "window": "40s",
            **spec,
        },
        "status": (w.kube.rollouts.get(("a", name)) or {}).get("status", {}),
    }
    w.kube.rollouts[("a", name)] = body


def serve(w, names=NAMES) -> None:
    """Each service at the replicas its Deployment has: 180 req/s, 50 per pod."""
    for name in names:
        n = w.kube.scales[("a", name)]["spec"]["replicas"]
        util = LOAD / (n * CAPACITY)
        w.prom.set("a", name, cpu=min(util, 1.0), rate=min(LOAD, n * CAPACITY),
                   p95=0.5 if util > 0.9 else 0.08)  # fmt: skip


def member_spec(name: str, **kw) -> dict:
    return {**SPEC, "targetRef": {"kind": "Deployment", "name": name}, "interval": "2s",
            "behavior": FAST_DOWN, **kw}  # fmt: skip


async def run(w, ticks: int, start: int = 0, names=NAMES, **kw) -> None:
    for i in range(start, start + ticks):
        w.sync_from_kube()
        serve(w, names)
        for name in names:
            w.policy("a", name, member_spec(name, **kw.get(name, {})), labels={"team": "x"})
        await w.tick(T0 + 2 * i)


def status(w, name: str = "ro") -> dict:
    return w.kube.rollouts[("a", name)].get("status", {})


def group(w, replicas: int, model) -> None:
    for name in NAMES:
        w.deployment("a", name, replicas)


def test_the_spec_and_the_selector_are_checked():
    ref = {"configMapRef": {"name": "c"}, "sha256": "a" * 64}
    s = parse_rollout({"selector": {"matchLabels": {"team": "x"}}, "model": ref})
    assert s.fraction == 0.5 and s.window_s == 3600 and not s.promote and not s.incumbent_hpa
    sel = parse_selector(
        {"matchLabels": {"team": "x"},
         "matchExpressions": [{"key": "tier", "operator": "In", "values": ["web", "api"]},
                              {"key": "legacy", "operator": "DoesNotExist"}]},
        "s",
    )  # fmt: skip
    assert sel.matches({"team": "x", "tier": "web"})
    assert not sel.matches({"team": "x", "tier": "db"})
    assert not sel.matches({"team": "x", "tier": "web", "legacy": "1"})
    assert not sel.matches({"team": "y", "tier": "web"})
    bad = [
        ({"model": ref}, "spec.selector"),
        ({"selector": {}, "model": ref}, "every policy"),
        ({"selector": {"matchLabels": {"a": "b"}}, "model": {}}, "candidate"),
        ({"selector": {"matchLabels": {"a": "b"}}, "model": ref, "percent": 100}, "between 5"),
        ({"selector": {"matchLabels": {"a": "b"}}, "model": ref, "window": "5s"}, "10s and"),
        ({"selector": {"matchExpressions": [{"key": "a", "operator": "In"}]}, "model": ref},
         "need values"),
        ({"selector": {"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]},
          "model": ref}, "operator"),
        ({"selector": {"matchLabels": {"a": "b"}}, "model": ref, "incumbent": "Rule"}, "HPA"),
    ]  # fmt: skip
    for spec, words in bad:
        with pytest.raises(SpecError, match=words):
            parse_rollout(spec)
    assert [candidates(n, 0.5) for n in range(6)] == [0, 0, 1, 2, 2, 2]
    assert candidates(10, 0.05) == 1 and candidates(10, 0.95) == 9 and candidates(3, 0.1) == 1


@pytest.mark.asyncio
async def test_an_under_provisioning_candidate_is_rolled_back_on_its_targets(model_dir, tmp_path):
    w = world(model_dir)  # the incumbent: each policy's busy_at_65
    group(w, 2, model_dir)  # 2 pods of 50 req/s for 180 req/s: overloaded until scaled
    hold = publish(w, busy_model(tmp_path / "hold", action=0), "hold")
    rollout(w, "ro", hold)
    await run(w, 1)
    st = status(w)
    assert st["state"] == "Running" and st["members"] == 4
    cand = st["candidate"]["policies"]
    assert len(cand) == 2 and len(st["incumbent"]["policies"]) == 2
    assert w.kube.status[("a", cand[0])]["canary"]["rollout"] == "ro"
    assert w.kube.status[("a", cand[0])]["canary"]["arm"] == "candidate"
    await run(w, 24, start=1)
    st = status(w)
    assert st["state"] == "RolledBack" and st["reason"] == "SLO_VIOLATION", st
    assert st["candidate"]["sloViolationPercent"] > 5 and "on its 2 targets" in st["message"]
    # One Event on the rollout, one on each candidate target; the metrics say so.
    kinds = [(e.kind, e.name) for e in w.events.posted if e.reason == "CANARY_ROLLED_BACK"]
    want = [("ModelRollout", "ro")] + [("AutoscalePolicy", n) for n in cand]
    assert sorted(kinds) == sorted(want)
    on_rollout = next(e for e in w.events.posted if e.kind == "ModelRollout")
    assert body(on_rollout, "op")["involvedObject"] == {
        "apiVersion": "qscale.io/v1alpha1", "kind": "ModelRollout", "name": "ro",
        "namespace": "a", "uid": "r-ro"}  # fmt: skip
    reg = w.engine.metrics.registry
    assert reg.get_sample_value("qscale_canary_rollbacks_total") == 1
    assert reg.get_sample_value("qscale_rollouts", {"state": "RolledBack"}) == 1
    # From then on every target is the incumbent's; the candidate's get scaled up; no flap.
    await run(w, 20, start=25)
    st = status(w)
    assert st["state"] == "RolledBack" and st["candidate"]["policies"] == []
    assert len(st["incumbent"]["policies"]) == 4
    assert st["candidate"]["targets"] == 2  # the figures of the rollback stay
    for name in cand:
        assert w.kube.scales[("a", name)]["spec"]["replicas"] >= 4
        assert w.kube.status[("a", name)]["canary"]["arm"] == "incumbent"
    assert [e.reason for e in w.events.posted].count("CANARY_ROLLED_BACK") == 3
    # A restarted operator keeps it rolled back (from the rollout's status) ...
    w.engine.forget()
    await run(w, 3, start=45)
    assert status(w)["state"] == "RolledBack"
    # ... and a new generation of the rollout starts it again, on the same targets.
    rollout(w, "ro", hold, generation=2)
    await run(w, 1, start=48)
    st = status(w)
    assert st["state"] == "Running" and st["generation"] == 2
    assert st["candidate"]["policies"] == cand
    assert "reason" not in st and "message" not in st  # the rollback's are taken out


@pytest.mark.asyncio
async def test_a_cheaper_candidate_that_keeps_the_slo_is_promoted_over_the_group(tmp_path):
    over = busy_model(tmp_path / "x2", action=4)  # the incumbent doubles: to maxReplicas
    w = world(over)
    group(w, 6, over)
    good = publish(w, busy_model(tmp_path / "b65", action=6), "b65")
    rollout(w, "ro", good, promotion={"enabled": True, "minCostSavingPercent": 10})
    await run(w, 40)
    st = status(w)
    assert st["state"] == "Promoted", st
    assert "fewer replica-seconds per second of CPU used" in st["message"]
    assert [e.reason for e in w.events.posted].count("CANARY_PROMOTED") == 5  # rollout + 4
    await run(w, 8, start=40)
    assert len(status(w)["candidate"]["policies"]) == 4
    assert all(w.kube.scales[("a", n)]["spec"]["replicas"] < 10 for n in NAMES)


@pytest.mark.asyncio
async def test_a_candidate_as_costly_as_the_incumbent_is_not_promoted(model_dir):
    w = world(model_dir)
    group(w, 4, model_dir)
    same = publish(w, model_dir, "same")
    rollout(w, "ro", same, promotion={"enabled": True, "minCostSavingPercent": 10})
    await run(w, 40)
    assert status(w)["state"] == "Running"
    assert "CANARY_PROMOTED" not in [e.reason for e in w.events.posted]


@pytest.mark.asyncio
async def test_who_is_a_member(model_dir, tmp_path):
    w = world(model_dir)
    for name in (*NAMES, "other", "web4"):
        w.deployment("a", name, 4)
    w.deployment("b", "web0", 4)
    w.engine.settings = w.engine.settings.__class__(
        **{**w.engine.settings.__dict__, "namespaces": ("a", "b")}
    )
    w.cache._synced["b"] = True
    same = publish(w, model_dir, "same")
    own = {"model": same, "period": "8s", "window": "40s"}
    rollout(w, "ro", same)
    rollout(w, "second", same, generation=2)  # created later: its matches are the older one's
    w.kube.rollouts[("a", "second")]["spec"]["selector"] = {
        "matchExpressions": [{"key": "team", "operator": "Exists"}]
    }
    w.kube.rollouts[("a", "bad")] = {
        "metadata": {"namespace": "a", "name": "bad", "uid": "r-bad", "generation": 3},
        "spec": {"selector": {}, "model": same},
    }
    serve(w, (*NAMES, "other", "web4"))
    w.prom.set("b", "web0", cpu=0.5, rate=100.0, p95=0.08)
    for name in NAMES[:2]:
        w.policy("a", name, member_spec(name), labels={"team": "x"})
    w.policy("a", "web2", member_spec("web2", canary=own), labels={"team": "x"})
    w.policy("a", "web3", member_spec("web3", mode="Shadow"), labels={"team": "x"})
    w.policy("a", "other", member_spec("other"), labels={"team": "y"})
    w.policy("a", "web4", member_spec("web4"), labels={"team": "z"})
    # A second Enforce policy on web0 is refused as a writer: not a member either.
    w.policy("a", "zdup", member_spec("web0"), labels={"team": "x"})
    # Same labels in another namespace: a selector never reaches there.
    w.policy("b", "web0", member_spec("web0"), labels={"team": "x"}, uid="p-b")
    await w.tick(T0)
    st = status(w)
    assert st["members"] == 2 and st["excluded"] == [
        {"name": "web2", "reason": "it runs its own spec.canary"}
    ]
    assert sorted(st["candidate"]["policies"] + st["incumbent"]["policies"]) == ["web0", "web1"]
    second = status(w, "second")
    assert second["members"] == 2  # other (team y) and web4 (team z)
    assert {"name": "web0", "reason": "it belongs to the older ModelRollout ro"} in second[
        "excluded"
    ]
    assert "canary" not in w.kube.status.get(("b", "web0"), {})
    assert w.kube.status[("a", "web2")]["canary"].get("rollout") is None  # its own canary
    bad = status(w, "bad")
    assert bad["state"] == "Invalid" and "every policy" in bad["message"]
    invalid = [e for e in w.events.posted if e.reason == "INVALID_SPEC"]
    assert invalid[0].kind == "ModelRollout" and invalid[0].name == "bad"
    assert len(invalid) == 1
    await w.tick(T0 + 15)
    assert len([e for e in w.events.posted if e.reason == "INVALID_SPEC"]) == 1
    reg = w.engine.metrics.registry
    assert reg.get_sample_value("qscale_rollouts", {"state": "Invalid"}) == 1
    assert reg.get_sample_value("qscale_rollouts", {"state": "Running"}) == 2


@pytest.mark.asyncio
async def test_one_member_runs_no_candidate_and_the_kill_switch_comes_first(model_dir, tmp_path):
    w = world(model_dir)
    w.deployment("a", "web0", 2)
    hold = publish(w, busy_model(tmp_path / "hold", action=0), "hold")
    rollout(w, "ro", hold)
    await run(w, 2, names=("web0",))
    st = status(w)
    assert st["members"] == 1 and st["candidate"]["targets"] == 0
    assert "needs 2" in st["message"]
    w.deployment("a", "web1", 2)
    await run(w, 1, start=2, names=("web0", "web1"))
    cand = status(w)["candidate"]["policies"]
    assert len(cand) == 1
    w.kube.configmaps[("a", "qscale-kill-switch")] = {"data": {"mode": "HPA"}}
    await run(w, 1, start=3, names=("web0", "web1"))
    s = w.kube.status[("a", cand[0])]
    assert s["reason"] == "KILL_SWITCH" and s["fallback"]["reason"] == "KILL_SWITCH"
    assert s["canary"]["arm"] == "candidate"  # kept as it was while the switch holds it


@pytest.mark.asyncio
async def test_a_candidate_that_cannot_be_served_is_rolled_back_at_once(model_dir):
    w = world(model_dir)
    group(w, 4, model_dir)
    same = publish(w, model_dir, "same")
    rollout(w, "ro", {**same, "sha256": "0" * 64})
    await run(w, 2)
    st = status(w)
    assert st["state"] == "RolledBack" and st["reason"] == "MODEL_REFUSED", st
    assert "sha256" in st["message"]
    await run(w, 2, start=2)  # every target decided by its own model
    assert all(w.kube.status[("a", n)]["reason"] == "OK" for n in NAMES)


def test_a_rollout_body_is_read_without_its_spec_crashing_anything():
    r = IndexedRollout.from_body({"metadata": {"name": "x", "namespace": "a"}, "spec": None})
    assert r.spec is None and "spec" in r.error
