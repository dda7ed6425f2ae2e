"""Shadow scoring through the tick: a Shadow policy's status.shadow and the operator's metrics
(the estimate itself: test_counterfactual.py)."""

from __future__ import annotations

import copy

import pytest
from opfakes import SPEC, T0, world

pytestmark = pytest.mark.asyncio

SHADOW = {**SPEC, "mode": "Shadow", "interval": "2s", "shadow": {"window": "2m"}}
"""Scored every 4 s (1/30 of the window) over 60 ticks."""


def load(w, i: int) -> None:
    """Calm and busy half-minutes in turn on 2 fixed pods of 50 req/s: busy overloads them."""
    if (i // 15) % 2:
        w.prom.set("a", "web", cpu=0.9, rate=90.0, p95=0.45)
    else:
        w.prom.set("a", "web", cpu=0.2, rate=20.0, p95=0.15)


async def play(w, ticks: int, start: int = 0) -> dict:
    for i in range(start, start + ticks):
        load(w, i)
        w.policy("a", "web", SHADOW)
        await w.tick(T0 + 2 * i)
    return w.kube.status[("a", "web")]


def metric(w, name: str, **labels) -> float:
    return w.engine.metrics.registry.get_sample_value(name, labels) or 0.0


async def test_a_shadow_policy_is_scored_against_what_runs(model_dir):
    w = world(model_dir)
    w.deployment("a", "web", 2)
    st = (await play(w, 20))["shadow"]
    assert st["verdict"] == "INSUFFICIENT_DATA" and "window" in st["message"]
    st = (await play(w, 60, start=20))["shadow"]
    assert st["verdict"] != "INSUFFICIENT_DATA", st
    assert w.kube.writes("scale") == 0  # scored, never written
    assert st["service"]["capacityPerPod"] == pytest.approx(50.0)
    # The model (busy_at_65) sizes for the load: fewer SLO minutes than the 2 fixed pods had.
    assert st["incumbent"]["measuredSloMinutes"] > 0.5
    assert st["candidate"]["sloMinutes"] < st["incumbent"]["sloMinutes"]
    assert st["incumbent"]["replicaHours"] == pytest.approx(2 * 120 / 3600, rel=0.05)
    assert metric(w, "qscale_shadow_policies", verdict=st["verdict"]) == 1
    assert metric(w, "qscale_shadow_slo_minutes", arm="incumbent_measured") == pytest.approx(
        st["incumbent"]["measuredSloMinutes"]
    )
    assert metric(w, "qscale_shadow_replica_hours", arm="candidate") == pytest.approx(
        st["candidate"]["replicaHours"]
    )


async def test_a_new_leader_keeps_the_last_score_until_its_window_fills(model_dir):
    w = world(model_dir)
    w.deployment("a", "web", 2)
    before = copy.deepcopy((await play(w, 80))["shadow"])
    w.engine.forget()  # leadership lost and regained: the samples are gone
    after = copy.deepcopy((await play(w, 5, start=80))["shadow"])
    assert after == before  # not overwritten by a window that has only just begun
    after = (await play(w, 60, start=85))["shadow"]
    assert after["updatedAt"] > before["updatedAt"] and after["verdict"] != "INSUFFICIENT_DATA"


async def test_ticks_without_a_model_decision_are_not_scored(model_dir):
    w = world(model_dir)
    w.deployment("a", "web", 2)
    w.prom.down = True
    st = (await play(w, 80))["shadow"]
    assert st["verdict"] == "INSUFFICIENT_DATA" and st["samples"] == 0


async def test_leaving_shadow_drops_the_score_and_its_metrics(model_dir):
    w = world(model_dir)
    w.deployment("a", "web", 2)
    await play(w, 80)
    w.policy("a", "web", {**SHADOW, "mode": "Off"})
    await w.tick(T0 + 200)
    assert "shadow" not in w.kube.status[("a", "web")]
    await w.tick(T0 + 202)
    w.policies.clear()
    await w.tick(T0 + 204)
    assert sum(metric(w, "qscale_shadow_policies", verdict=v) for v in ("TRADE_OFF",)) == 0
    assert metric(w, "qscale_shadow_replica_hours", arm="candidate") == 0
