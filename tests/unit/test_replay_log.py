"""qscale replay-log (#17 §4): another model on a decision log the operator wrote, scored by the
Shadow estimate against what ran."""

from __future__ import annotations

import json

import pytest
from opfakes import SPEC, T0, busy_model, world

from qscale.cli import main
from qscale.policy.artifact import load_policy
from qscale.policy.replaylog import LogError, read_log, replay


def load(w, i: int) -> None:
    """Calm and busy half-minutes in turn (as in test_op_shadowscore)."""
    if (i // 15) % 2:
        w.prom.set("a", "web", cpu=0.9, rate=90.0, p95=0.45)
    else:
        w.prom.set("a", "web", cpu=0.2, rate=20.0, p95=0.15)


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """The decision log of 90 ticks of a Shadow policy (busy_at_65) on 2 fixed pods, and of an
    Enforce one beside it."""

    root = tmp_path_factory.mktemp("replay")
    model = busy_model(root / "busy65")
    log = root / "decisions.jsonl"
    shadow = {**SPEC, "mode": "Shadow", "interval": "2s"}
    enforce = {**SPEC, "interval": "2s", "targetRef": {"kind": "Deployment", "name": "api"}}
    write_log(log, model, shadow, enforce, ticks=90)
    return log, model, root


def write_log(log, model, web: dict, api: dict, ticks: int) -> None:
    """``ticks`` ticks, 2 s apart, of policy ``web`` (spec ``web``) and ``api`` on Deployments of
    2 pods under the same load, logged to ``log``."""
    import asyncio

    async def run():
        w = world(model, decision_log=str(log))
        w.deployment("a", "web", 2)
        w.deployment("a", "api", 2)
        for i in range(ticks):
            load(w, i)
            w.prom.obs[("a", "api")] = w.prom.obs[("a", "web")]
            w.policy("a", "web", web)
            w.policy("a", "api", api)
            await w.tick(T0 + 2 * i)
            w.sync_from_kube()
        w.engine.decision_log.close()

    asyncio.run(run())


def test_the_logged_model_replayed_agrees_with_itself(logged):
    log, model, _ = logged
    results = {r.policy: r for r in replay(read_log([log]), load_policy(model).module)}
    assert set(results) == {"web", "api"}
    for r in results.values():
        assert r.records == r.replayed == 90
        assert r.agreement == 1.0, r.policy
    web = results["web"].score
    assert web.verdict != "INSUFFICIENT_DATA" and web.capacity_rps == pytest.approx(50.0)
    assert web.incumbent.replica_hours == pytest.approx(2 * 180 / 3600, rel=0.05)


def test_a_model_that_holds_makes_no_difference_and_one_that_doubles_costs_more(logged):
    log, _, root = logged
    recs = read_log([log])
    hold = replay(recs, load_policy(busy_model(root / "hold", action=0)).module, policy="a/web")
    assert [r.score.verdict for r in hold] == ["NO_DIFFERENCE"]
    (double,) = replay(recs, load_policy(busy_model(root / "x2", action=4)).module, policy="a/web")
    assert double.agreement < 0.5
    assert double.score.candidate.replica_hours > 1.5 * double.score.incumbent.replica_hours
    assert double.score.d_replica_hours[0] > 0


def test_the_command_prints_a_table_and_writes_json(logged, capsys):
    log, model, root = logged
    out = root / "replay.json"
    assert main(["replay-log", str(log), "--model", str(model), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "a/web" in text and "a/api" in text and "100%" in text
    data = json.loads(out.read_text())
    assert {p["policy"] for p in data["policies"]} == {"web", "api"}
    assert all(p["agreement"] == 1.0 for p in data["policies"])


def test_bad_input_is_a_clear_error(logged, tmp_path, capsys):
    log, model, _ = logged
    assert main(["replay-log", str(tmp_path / "none.jsonl"), "--model", str(model)]) == 2
    assert "no such file" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text(log.read_text().splitlines()[0] + "\n{not json\n")
    with pytest.raises(LogError, match=r"bad.jsonl:2: not JSON"):
        read_log([bad])
    assert main(["replay-log", str(log), "--model", str(model), "--policy", "a/nope"]) == 2
    assert "no records of policy a/nope" in capsys.readouterr().err
    assert main(["replay-log", str(log), "--model", str(model), "--window", "soon"]) == 2


def test_a_model_that_sizes_from_the_declared_capacity_replays_as_served(tmp_path):
    """A policy that declares its pods' capacity and a model that plays a rate action (the KEDA
    rule): the replay sizes from the capacity the log's features carry, as served, and a log
    without one replays the same model's best action among those it may take."""
    from qscale import actions

    rate = actions.ACTION_NAMES.index("rate_peak_at_70")
    model = busy_model(tmp_path / "rate70", action=rate)
    log = tmp_path / "decisions.jsonl"
    declared = {**SPEC, "interval": "2s", "capacity": {"requestsPerSecondPerPod": 10}}
    plain = {**SPEC, "interval": "2s", "targetRef": {"kind": "Deployment", "name": "api"}}
    write_log(log, model, declared, plain, ticks=40)
    recs = read_log([log])
    results = {r.policy: r for r in replay(recs, load_policy(model).module)}
    web = [r for r in recs if r.get("policy", "").endswith("web") and r.get("desired")]
    assert len({r["desired"] for r in web}) > 1  # the rule moved the count with the load
    for name in ("web", "api"):
        assert results[name].records == results[name].replayed == 40
        assert results[name].agreement == 1.0, name
