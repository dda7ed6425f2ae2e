"""The demo's twin in the simulator (:mod:`qscale.demo.twin`): it plays what the emulator
serves at the demo's pace, starts where the live run starts, and :func:`compare` lines the
operator's decision log up against it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from qscale import features
from qscale.actions import ACTION_NAMES
from qscale.demo.stretch import Stretch
from qscale.demo.twin import _bins, compare, live_counts, read_decision_log, simulate


def _stretch(tmp_path, values, play_s=120.0, scale=10.0):
    """A trace of one row per minute, played from its start over ``len(values)`` minutes."""
    p = tmp_path / "t.csv"
    p.write_text("t,value\n" + "".join(f"{60 * i},{v}\n" for i, v in enumerate(values)))
    return Stretch.load(p, 0.0, len(values) / 60.0, play_s, scale)


def _module(action):
    """A network that always prefers ``action``."""
    k = ACTION_NAMES.index(action)

    def q(obs):
        out = torch.zeros(obs.shape[0], len(ACTION_NAMES))
        out[:, k] = 1.0
        return out

    return q


KW = dict(
    capacity_rps=50.0,
    service_time_s=0.05,
    slo_s=0.3,
    startup_delay_s=20.0,
    min_replicas=1,
    max_replicas=24,
)


def test_bins_are_what_the_emulator_serves(tmp_path):
    st = _stretch(tmp_path, [1.0, 1.0, 3.0, 3.0], play_s=60.0)
    b = _bins(st, 15.0)
    assert b.shape == (4,)
    # each bin: the mean of the loads at the ends of its fifteen 1-s steps
    want = [np.mean([st.rps(15.0 * k + j + 1.0) for j in range(15)]) for k in range(4)]
    assert b == pytest.approx(want)
    assert b[0] == pytest.approx(10.0) and b[-1] == pytest.approx(30.0)


def test_a_steady_load_holds_the_initial_pods(tmp_path):
    st = _stretch(tmp_path, [4.0] * 10)  # 40 req/s, 120 s of play
    tw = simulate(st, _module("hold"), initial_replicas=3, **KW)
    assert len(tw.t) == 8 and tw.t[1] == 15.0
    assert (tw.replicas_before == 3).all() and (tw.desired == 3).all() and (tw.ready == 3).all()
    assert tw.slo_violation_minutes == 0.0
    assert tw.pod_minutes == pytest.approx(3 * 120 / 60)
    assert tw.features.shape == (8, features.N_FEATURES)
    busy = features.FEATURE_NAMES.index("cpu_busy")
    assert tw.features[0, busy] == pytest.approx(40.0 / (3 * 50.0), rel=1e-3)


def test_new_pods_serve_after_the_start_up_delay(tmp_path):
    # 60 req/s on 1 pod of 50 req/s, a pod added at every decision: a pod started at a
    # decision is Ready two decisions later (20 s, decisions 15 s apart), and the SLO is
    # missed until the queue of the first 30 s has drained: the step the second pod serves in
    # drains its 300 requests flat out for 7.5 of its 15 s (100 - 60 req/s to spare)
    st = _stretch(tmp_path, [6.0] * 8, play_s=120.0)
    tw = simulate(st, _module("plus_1"), initial_replicas=1, **KW)
    assert tw.replicas_before[0] == 1
    assert list(tw.desired[:4]) == [2, 3, 4, 5]
    assert list(tw.ready[:4]) == [1, 1, 2, 3]
    assert tw.p95_s[0] > KW["slo_s"] and tw.p95_s[2] > KW["slo_s"] > tw.p95_s[3]
    assert tw.slo_violation_minutes >= 0.5


def test_the_shield_bounds_the_twin(tmp_path):
    st = _stretch(tmp_path, [30.0] * 4, play_s=120.0)
    tw = simulate(st, _module("times_2"), initial_replicas=2, **{**KW, "max_replicas": 5})
    assert tw.desired.max() == 5
    assert np.diff(tw.desired).max() <= 4  # the default shield's step limit


def _records(tw, t0, offset=0, shift_s=0.8):
    return [
        {
            "ts": t0 + float(t) + shift_s,
            "policy": "web-qscale",
            "desired": int(d) + offset,
            "action": a,
            "features": [float(x) for x in f],
        }
        for t, d, a, f in zip(tw.t, tw.desired, tw.action, tw.features, strict=True)
    ]


def test_compare_lines_live_decisions_up_with_the_twin(tmp_path):
    st = _stretch(tmp_path, [6.0] * 8, play_s=120.0)
    tw = simulate(st, _module("plus_1"), initial_replicas=1, **KW)
    same = compare(tw, _records(tw, 1000.0), 1000.0, live_slo_minutes=0.5)
    assert same["decisions"] == len(tw.t) and same["within_one_pod"] == 1.0
    assert all(v["max_abs_diff"] == 0.0 for v in same["features"].values())
    assert same["slo_minutes_live"] == 0.5
    off = compare(tw, _records(tw, 1000.0, offset=2), 1000.0)
    assert off["within_one_pod"] == 0.0
    assert off["mean_replicas_live"] == pytest.approx(off["mean_replicas_twin"] + 2)
    # decisions before the play or after its end are not compared
    outside = _records(tw, 1000.0, shift_s=-30.0)
    assert compare(tw, outside, 1000.0)["decisions"] == len(tw.t) - 2
    assert compare(tw, [], 1000.0) == {"decisions": 0}


def test_the_decision_log_is_read_per_policy(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(
        json.dumps({"policy": "a", "ts": 1}) + "\nnot json\n" + json.dumps({"policy": "b"}) + "\n"
    )
    assert read_decision_log(p, "a") == [{"policy": "a", "ts": 1}]
    assert read_decision_log(tmp_path / "missing", "a") == []


def test_followed_the_world_moves_as_live_did_and_each_decision_is_the_models(tmp_path):
    st = _stretch(tmp_path, [6.0] * 8, play_s=120.0)
    # live never scaled: the world stays at 1 pod, overloaded, and the model's decision at
    # each step is +1 from there (closed loop it would have climbed 2, 3, 4, ...)
    held = simulate(st, _module("plus_1"), initial_replicas=1, follow=[1] * 8, **KW)
    assert (held.replicas_before == 1).all() and (held.ready == 1).all()
    assert (held.desired == 2).all() and set(held.action) == {"plus_1"}
    assert held.slo_violation_minutes == pytest.approx(8 * 15 / 60)
    # live scaled to 3 at once: the world has 3 pods, Ready after the start-up delay
    up = simulate(st, _module("hold"), initial_replicas=1, follow=[3] * 8, **KW)
    assert list(up.replicas_before[:3]) == [1, 3, 3] and list(up.ready[:3]) == [1, 1, 3]
    assert list(up.desired[:3]) == [1, 3, 3]


def test_live_counts_fill_each_slot_with_the_last_live_decision(tmp_path):
    st = _stretch(tmp_path, [6.0] * 8, play_s=120.0)
    tw = simulate(st, _module("hold"), initial_replicas=2, **KW)
    recs = [
        {"ts": 100.5, "desired": 3},
        {"ts": 107.0, "desired": 4},  # the same slot (k = 0): the last one counts
        {"ts": 145.4, "desired": 5},  # k = 3; k = 1, 2 keep 4
        {"ts": 90.0, "desired": 9},  # before the play
    ]
    assert live_counts(tw, recs, 100.0) == [4, 4, 4, 5, 5, 5, 5, 5]
    followed = simulate(st, _module("hold"), initial_replicas=2, follow=[4] * 8, **KW)
    out = compare(tw, _records(followed, 100.0), 100.0, followed=followed)
    # closed loop the twin holds 2: only the first decision (2 there too) is within one pod
    assert out["within_one_pod_followed"] == 1.0 and out["within_one_pod"] == 0.125
    assert out["timeline"][0]["followed"] == 2 and out["timeline"][1]["followed"] == 4
