"""Drift through the tick: a model's inputs against its drift reference (status.drift, the
ModelDrift condition, Events, metrics, and what spec.drift.action does).

The reference is made the way the product makes one, from the inputs the model itself met:
the model runs a stretch of "training" load through the tick and its inputs are fitted
(:func:`qscale.drift.fit`); the same kind of load must then read Normal, a shifted one
Drifting."""

from __future__ import annotations

import copy
import shutil

import numpy as np
import pytest
from opfakes import SPEC, T0, cond, world

from qscale import drift
from qscale.operator.prom import Observation
from qscale.operator.status import iso
from qscale.policy import driftref

pytestmark = pytest.mark.asyncio

DRIFT = {**SPEC, "interval": "2s", "drift": {"window": "1m"}}
"""Judged every 2 s (1/30 of the window) over 30 ticks."""


def load(w, i: int, seed: int, p95_scale: float = 1.0) -> None:
    """A service whose load wanders: rate, CPU and p95 move together, trends included."""
    rng = np.random.default_rng(seed * 100_003 + i)
    level = 50 + 40 * np.sin(i / 9.0) + 10 * rng.standard_normal()
    rate = max(level, 5.0)
    cpu = min(rate / 120.0, 1.2)
    replicas = w.cache._items[("a", "web")].replicas  # 1 core per pod, no limit
    w.prom.obs[("a", "web")] = Observation(
        rate_now=rate,
        rate_1m=rate * (1 + 0.1 * rng.standard_normal()),
        rate_5m=rate * (1 + 0.2 * rng.standard_normal()),
        rate_15m=rate * (1 + 0.3 * rng.standard_normal()),
        rate_peak_15m=rate * 1.3,
        rate_peak_30m=rate * 1.5,
        p95_s=p95_scale * (0.05 + 0.002 * rate),
        cpu_utilization=cpu,
        cpu_peak_cores=cpu * replicas * 1.5,
        has_rate=True,
        has_latency=True,
        has_cpu=True,
        has_cpu_peak=True,
    )


async def play(w, ticks: int, start: int = 0, spec=DRIFT, seed: int = 0, p95_scale=1.0):
    for i in range(start, start + ticks):
        load(w, i, seed, p95_scale)
        w.sync_from_kube()  # the pods of a scale-up are ready by the next tick
        w.policy("a", "web", spec)
        await w.tick(T0 + 2 * i)
    return w.kube.status[("a", "web")]


@pytest.fixture(scope="module")
def drift_model(model_dir, tmp_path_factory):
    """The test model with a reference fitted to what it met under the training load."""
    import asyncio

    path = tmp_path_factory.mktemp("dm") / "with-reference"
    shutil.copytree(model_dir, path)
    w = world(model_dir)
    w.deployment("a", "web", 4)
    seen: list[list[float]] = []
    observe = w.engine.drift.observe

    def spy(r, now):
        if r.features is not None:
            seen.append(r.features)
        return observe(r, now)

    w.engine.drift.observe = spy
    shadow = {**DRIFT, "mode": "Shadow"}

    async def run():  # on 2 to 10 pods (the rule's fallback resizes the target)
        for k in range(24):
            w.deployment("a", "web", 2 + k % 9)
            await play(w, 50, start=50 * k, spec=shadow, seed=1)

    asyncio.run(run())
    obs = np.array(seen, dtype=np.float32)
    ref, _ = drift.fit(obs[:600], [obs[600:]], 2.0, {"test": True})
    driftref.write(path, ref)
    return path


def metric(w, name: str, **labels) -> float:
    return w.engine.metrics.registry.get_sample_value(name, labels) or 0.0


async def test_a_model_without_a_reference_says_so(model_dir):
    w = world(model_dir)
    w.deployment("a", "web", 4)
    st = await play(w, 3)
    assert st["drift"]["state"] == "NoReference" and "drift-reference" in st["drift"]["message"]
    assert cond(st, "ModelDrift")["status"] == "Unknown"
    assert cond(st, "ModelDrift")["reason"] == "NO_REFERENCE"


async def test_training_like_load_reads_normal_and_a_shifted_one_drifts(drift_model):
    w = world(drift_model)
    w.deployment("a", "web", 4)
    shadow = {**DRIFT, "mode": "Shadow"}
    st = await play(w, 10, spec=shadow, seed=7)
    assert st["drift"]["state"] == "Filling" and "1 of its 30 ticks" in st["drift"]["message"]
    assert cond(st, "ModelDrift")["reason"] == "INSUFFICIENT_DATA"
    st = await play(w, 60, start=10, spec=shadow, seed=7)
    assert st["drift"]["state"] == "Normal", st["drift"]
    assert cond(st, "ModelDrift")["status"] == "False"
    assert st["drift"]["calibratedTicks"] == 20 and st["drift"]["ticks"] >= 27
    assert metric(w, "qscale_drift_policies", state="Normal") == 1
    # The service slows down 6x at the same load: p95 beyond anything training showed.
    st = await play(w, 40, start=70, spec=shadow, seed=7, p95_scale=6.0)
    d = st["drift"]
    assert d["state"] == "Drifting" and d["drifting"] == ["log2_p95_vs_slo"], d
    assert "log2_p95_vs_slo" in d["message"]
    c = cond(st, "ModelDrift")
    assert c["status"] == "True" and c["reason"] == "FEATURE_DRIFT" and "Report" in c["message"]
    events = [e for e in w.events.posted if e.reason == "MODEL_DRIFT"]
    assert len(events) == 1 and events[0].type == "Warning"
    assert metric(w, "qscale_drift_policies", state="Drifting") == 1
    model = w.engine.drift._windows["p-web"].model[:12]
    assert metric(w, "qscale_drift_psi", feature="log2_p95_vs_slo", model=model) > 1.0
    # Back to the training-like load: once a window of it has passed, the drift ends, once.
    st = await play(w, 40, start=110, spec=shadow, seed=7)
    assert st["drift"]["state"] == "Normal"
    assert [r for r in w.events.reasons() if r.startswith("MODEL_DRIFT")] == [
        "MODEL_DRIFT",
        "MODEL_DRIFT_ENDED",
    ]


async def test_drift_with_action_fallback_hands_the_policy_to_the_hpa_rule(drift_model):
    w = world(drift_model)
    w.deployment("a", "web", 4)
    spec = {**DRIFT, "drift": {"window": "1m", "action": "Fallback"}}
    st = await play(w, 40, spec=spec, seed=7)
    assert st["drift"]["state"] == "Normal" and st["reason"] != "MODEL_DRIFT"
    st = await play(w, 40, start=40, spec=spec, seed=7, p95_scale=6.0)
    assert st["drift"]["state"] == "Drifting"
    assert st["reason"] == "MODEL_DRIFT" and st["fallback"]["reason"] == "MODEL_DRIFT"
    assert st["lastAction"]["action"] == "hpa" or st["desiredReplicas"] == st["replicas"]
    assert "HPA rule decides" in cond(st, "ModelDrift")["message"]
    assert metric(w, "qscale_fallbacks_total") == 1
    # The model still sees the inputs (the drift window goes on filling) and decides again
    # once they are like its training.
    st = await play(w, 40, start=80, spec=spec, seed=7)
    assert st["drift"]["state"] == "Normal" and "fallback" not in st
    assert "FALLBACK_ENDED" in w.events.reasons()


async def test_drift_with_action_shadow_stops_the_writes(drift_model):
    w = world(drift_model)
    w.deployment("a", "web", 4)
    spec = {**DRIFT, "drift": {"window": "1m", "action": "Shadow"}}
    await play(w, 40, spec=spec, seed=7, p95_scale=6.0)
    st = w.kube.status[("a", "web")]
    assert st["drift"]["state"] == "Drifting"
    writes = w.kube.writes("scale")
    st = await play(w, 20, start=40, spec=spec, seed=7, p95_scale=6.0)
    assert w.kube.writes("scale") == writes and "wouldScaleTo" in st
    assert "writes nothing" in cond(st, "ModelDrift")["message"]


async def test_a_new_leader_keeps_the_drift_judgement_until_a_window_says_otherwise(drift_model):
    w = world(drift_model)
    w.deployment("a", "web", 4)
    spec = {**DRIFT, "drift": {"window": "1m", "action": "Fallback"}}
    await play(w, 40, spec=spec, seed=7, p95_scale=6.0)
    before = copy.deepcopy(w.kube.status[("a", "web")]["drift"])
    assert before["state"] == "Drifting"
    w.engine.forget()
    st = await play(w, 5, start=40, spec=spec, seed=7)
    assert st["drift"]["state"] == "Drifting" and "filling" in st["drift"]
    assert st["reason"] == "MODEL_DRIFT"  # still handed to the rule
    st = await play(w, 40, start=45, spec=spec, seed=7)
    assert st["drift"]["state"] == "Normal" and st["reason"] != "MODEL_DRIFT"


async def test_the_status_is_not_rewritten_every_slot_while_nothing_changes(drift_model):
    w = world(drift_model)
    w.deployment("a", "web", 4)
    shadow = {**DRIFT, "mode": "Shadow"}
    st = await play(w, 40, spec=shadow, seed=7)
    first = st["drift"]["updatedAt"]
    st = await play(w, 10, start=40, spec=shadow, seed=7)
    assert st["drift"]["state"] == "Normal" and st["drift"]["updatedAt"] == first
    st = await play(w, 30, start=50, spec=shadow, seed=7)  # a window later: refreshed
    assert st["drift"]["updatedAt"] > first


async def test_a_filling_window_is_shown_again_only_when_its_judgement_slips(drift_model):
    w = world(drift_model)
    w.deployment("a", "web", 4)
    shadow = {**DRIFT, "mode": "Shadow"}
    st = await play(w, 1, spec=shadow, seed=7)
    first = copy.deepcopy(st["drift"])
    eta = iso(T0 + 26 * 2)  # 27 of 30 ticks (90 %) needed, one a tick from the first
    assert first["state"] == "Filling" and first["ticks"] == 1
    assert first["message"] == (
        f"the window holds 1 of its 30 ticks; judged from 27, about {eta} if every tick's "
        "metrics are usable"
    )
    st = await play(w, 9, start=1, spec=shadow, seed=7)  # on schedule: not rewritten
    assert st["drift"] == first
    w.prom.down = True  # no usable metrics: the judgement slips 2 s a tick
    st = await play(w, 2, start=10, spec=shadow, seed=7)
    assert st["drift"] == first  # 4 s: under a tenth of the window
    st = await play(w, 1, start=12, spec=shadow, seed=7)
    assert (
        st["drift"]["ticks"] == 10
        and f"judged from 27, about {iso(T0 + 58)}" in (st["drift"]["message"])
    )
    w.prom.down = False
    st = await play(w, 20, start=13, spec=shadow, seed=7)
    assert st["drift"]["state"] == "Normal"


async def test_a_window_shorter_than_every_calibrated_one_says_so_once(drift_model):
    w = world(drift_model)
    w.deployment("a", "web", 4)
    spec = {**DRIFT, "mode": "Shadow", "interval": "4s"}  # 15 ticks; the shortest: 20
    st = await play(w, 1, spec=spec, seed=7)
    first = copy.deepcopy(st["drift"])
    assert first["state"] == "Filling" and "lengthen spec.drift.window" in first["message"]
    st = await play(w, 40, start=1, spec=spec, seed=7)
    assert st["drift"] == first


async def test_ticks_without_usable_metrics_do_not_fill_the_window(drift_model):
    w = world(drift_model)
    w.deployment("a", "web", 4)
    w.prom.down = True
    st = await play(w, 40, spec={**DRIFT, "mode": "Shadow"}, seed=7)
    assert st["drift"]["state"] == "Filling" and st["drift"]["ticks"] == 0


async def test_a_window_counts_its_last_30_slots_in_a_fixed_ring():
    from qscale.operator.driftwatch import _Window

    ref = drift.Reference(  # feature a: 2 bins, b: 3
        edges=((0.0,), (0.0, 1.0)), expected=((0.5, 0.5), (1 / 3,) * 3), thresholds=(),
        interval_s=15.0, samples=0, source={},
    )  # fmt: skip
    w = _Window("m", 3600.0, 15.0, slot_s=120.0)
    for slot in range(40):  # slot k: k + 1 observations, feature b in bin k % 3
        for _ in range(slot + 1):
            w.add(slot, ref, [-1.0, [-1.0, 0.5, 2.0][slot % 3]])
    counts, ticks = w.totals(39, ref)
    assert ticks == sum(k + 1 for k in range(10, 40))  # slots 10..39, the older ones gone
    assert counts[0].tolist() == [ticks, 0]
    assert counts[1].tolist() == [sum(k + 1 for k in range(10, 40) if k % 3 == i) for i in range(3)]
    assert w.counts is not None and w.counts.shape == (30, 5) and w.counts.dtype == np.uint16
    _, later = w.totals(60, ref)  # nothing new for 21 slots: only slots 31..39 remain
    assert later == sum(k + 1 for k in range(31, 40))
    # A slot of a whole interval: a 1 m window at 4 s spans 15 slots (a minute), not 30.
    short = _Window("m", 60.0, 4.0, slot_s=4.0)
    for slot in range(40):
        short.add(slot, ref, [-1.0, 0.5])
    assert short.totals(39, ref)[1] == 15
