"""The decision log (issue #17 §4): every decision as a JSON line, bounded and rotated, kept
across a restart, and a full disk or an unwritable file costs the log, never the tick."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from opfakes import SPEC, T0, world

from qscale import features
from qscale.operator.decisionlog import DecisionLog

pytestmark = pytest.mark.asyncio


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def metric(w, name: str, labels: dict | None = None) -> float:
    for fam in w.engine.metrics.registry.collect():
        for s in fam.samples:
            if s.name == name and (labels is None or s.labels == labels):
                return s.value
    raise KeyError(name)


async def test_every_decision_is_logged_with_its_inputs_and_the_next_one_carries_its_outcome(
    model_dir, tmp_path
):
    log = tmp_path / "log" / "decisions.jsonl"
    w = world(model_dir, decision_log=str(log))
    w.deployment("a", "web", 2)
    w.deployment("a", "off", 2)
    w.prom.set("a", "web", cpu=1.0, rate=120.0, p95=0.4)
    w.prom.set("a", "off", cpu=1.0)
    w.policy("a", "web", SPEC)
    w.policy("a", "off", {**SPEC, "targetRef": {"kind": "Deployment", "name": "off"},
                          "mode": "Off"})  # fmt: skip
    await w.tick(T0)
    w.sync_from_kube()
    w.prom.set("a", "web", cpu=0.6, rate=100.0, p95=0.1)
    w.policy("a", "web", SPEC)
    await w.tick(T0 + 15)
    w.engine.decision_log.flush()
    first, second = lines(log)  # Off policies report only: nothing to log
    assert first["policy"] == "web" and first["by"] == "model" and first["mode"] == "Enforce"
    assert len(first["features"]) == features.N_FEATURES and len(first["q_values"]) > 1
    assert first["action"] == "busy_at_65" and (first["replicas"], first["desired"]) == (2, 4)
    assert first["proposal"] == 4 and first["applied"] is True and first["reason"] == "OK"
    assert first["model"]["sha256"] and first["model"]["spec"] == features.SPEC_HASH
    assert first["obs"]["rate_rps"] == 120.0 and first["obs"]["ready"] == 2
    # The outcome of the first decision: what the second tick saw, linked by prev_ts.
    assert second["prev_ts"] == first["ts"] and second["obs"]["p95_s"] == pytest.approx(0.1)
    assert second["replicas"] == 4 and metric(w, "qscale_decision_log_records_total") == 2


async def test_the_log_is_appended_across_a_restart_and_rotated_within_its_bound(tmp_path):
    path = tmp_path / "d.jsonl"
    rec = {"ts": 1.0, "pad": "x" * 200}
    a = DecisionLog(path, max_bytes=2048, files=2)
    a.write([rec] * 5)
    a.close()
    b = DecisionLog(path, max_bytes=2048, files=2)  # a restarted operator
    b.write([rec] * 5)
    b.flush()
    assert len(lines(path)) + len(lines(path.with_name("d.jsonl.1"))) == 10  # appended
    b.write([rec] * 60)
    b.close()
    kept = [path, path.with_name("d.jsonl.1"), path.with_name("d.jsonl.2")]
    assert all(p.exists() for p in kept) and not path.with_name("d.jsonl.3").exists()
    assert all(p.stat().st_size <= 2048 for p in kept)  # bounded: 3 files of at most 2 KiB
    assert all(json.loads(x)["ts"] == 1.0 for p in kept for x in p.read_text().splitlines())


async def test_a_full_disk_costs_the_log_not_the_tick(model_dir, tmp_path):
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    log = tmp_path / "decisions.jsonl"
    os.symlink("/dev/full", log)  # every write: ENOSPC, as on a full volume
    w = world(model_dir, decision_log=str(log))
    w.deployment("a", "web", 2)
    w.prom.set("a", "web", cpu=1.0)
    w.policy("a", "web", SPEC)
    rep = await w.tick(T0)
    w.engine.decision_log.flush()
    assert rep.scale_writes == 1 and w.kube.scales[("a", "web")]["spec"]["replicas"] == 4
    assert metric(w, "qscale_decision_log_errors_total", {"error": "ENOSPC"}) >= 1
    assert metric(w, "qscale_decision_log_degraded") == 1.0


async def test_an_unwritable_place_and_a_full_queue_never_block(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    log = DecisionLog(blocker / "sub" / "d.jsonl", max_bytes=4096, files=1, queue_size=10)
    t0 = time.perf_counter()
    log.write([{"ts": i} for i in range(10_000)])  # far more than the queue holds
    assert time.perf_counter() - t0 < 1.0 and log.dropped > 0
    log.flush()
    assert log.errors >= 1 and log.written == 0
    log.close()
