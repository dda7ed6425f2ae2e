"""Status without churn: conditions, minimal merge patches, the shield's memory across restarts."""

from __future__ import annotations

import math
from types import MappingProxyType

import pytest
import torch

from qscale.guardrails import ShieldConfig, ShieldState, shield
from qscale.operator.status import json_copy, merge_patch, set_condition


@pytest.mark.parametrize(
    ("old", "new", "patch"),
    [
        ({"a": 1}, {"a": 1}, None),
        ({"a": 1}, {"a": 1.0}, None),
        ({"a": 1}, {"a": 2}, {"a": 2}),
        ({"a": 1, "b": 2}, {"a": 1}, {"b": None}),
        ({"s": {"x": 1, "y": 2}}, {"s": {"x": 1}}, {"s": {"y": None}}),
        ({"s": {"x": 1}}, {"s": {"x": 1, "z": [1, 2]}}, {"s": {"z": [1, 2]}}),
        ({"l": [1, 2]}, {"l": [1, 2]}, None),
        ({"l": [1, 2]}, {"l": [2, 1]}, {"l": [2, 1]}),
        ({"c": [{"type": "A", "status": "True"}]}, {"c": [{"type": "A", "status": "True"}]}, None),
        ({"f": True}, {"f": 1}, {"f": 1}),
        ({}, {"n": {"k": "v"}}, {"n": {"k": "v"}}),
        ({"f": 1}, {"f": True}, {"f": True}),
        ({"x": None}, {"x": None}, None),
        ({"x": None}, {"x": 0}, {"x": 0}),
        ({"r": math.nan}, {"r": math.nan}, None),
        ({"l": [[1, {"a": "b"}]]}, {"l": [[1, {"a": "b"}]]}, None),
        ({"l": [[1, {"a": "b"}]]}, {"l": [[1, {"a": "c"}]]}, {"l": [[1, {"a": "c"}]]}),
        ({"l": [1, 2]}, {"l": (1, 2)}, None),
        ({"s": "1"}, {"s": 1}, {"s": 1}),
        ({"m": {"k": 1}}, {"m": MappingProxyType({"k": 1})}, None),
    ],
)
def test_merge_patch(old, new, patch):
    assert merge_patch(old, new) == patch


def test_json_copy_is_a_deep_copy_of_a_status():
    from types import MappingProxyType

    status = {
        "replicas": 3,
        "ok": True,
        "rate": 1.5,
        "none": None,
        "conditions": [{"type": "Ready", "status": "True"}],
        "shield": {"proposals": [[1, 2.0], [3, 4.0]], "view": MappingProxyType({"k": [1]})},
    }
    out = json_copy(status)
    assert out == {**status, "shield": {"proposals": [[1, 2.0], [3, 4.0]], "view": {"k": [1]}}}
    out["conditions"][0]["status"] = "False"
    out["shield"]["proposals"][0][0] = 9
    out["shield"]["view"]["k"].append(2)
    assert status["conditions"][0]["status"] == "True"  # nothing shared, at any depth
    assert status["shield"]["proposals"][0][0] == 1 and status["shield"]["view"]["k"] == [1]
    assert type(out["shield"]["view"]) is dict


def test_condition_transition_time_moves_only_on_a_flip():
    c = set_condition(None, "Ready", True, "OK", "", now=100.0, generation=1)
    c = set_condition(c, "Ready", True, "OK", "", now=200.0, generation=1)
    assert c[0]["lastTransitionTime"] == "1970-01-01T00:01:40Z"
    c = set_condition(c, "Ready", True, "OTHER", "why", now=300.0, generation=1)
    assert c[0]["lastTransitionTime"] == "1970-01-01T00:01:40Z" and c[0]["reason"] == "OTHER"
    c = set_condition(c, "Ready", False, "TARGET_MISSING", "gone", now=400.0, generation=1)
    assert c[0]["lastTransitionTime"] == "1970-01-01T00:06:40Z" and c[0]["status"] == "False"
    c = set_condition(c, "MetricsAvailable", None, "X", "", now=400.0, generation=2)
    assert [x["type"] for x in c] == ["Ready", "MetricsAvailable"] and c[1]["status"] == "Unknown"


CFG = ShieldConfig(down_cooldown_s=60.0, down_stabilization_s=120.0)
HI = torch.tensor([20.0])


def _run(state, cur, desired, t):
    r = shield(torch.tensor([float(cur)]), torch.tensor([float(desired)]), state, t, CFG, 1.0, 20.0)
    return r


def test_steady_state_record_never_changes():
    st = ShieldState.init(1)
    records = set()
    t = 1_800_000_000.0
    for _ in range(40):  # 40 ticks of 15 s holding at 4
        st = _run(st, 4, 4, t).state
        records.add(repr(st.to_records(t, CFG, HI)[0]))
        t += 15.0
    assert records == {"{'lastApplied': 4}"}


def test_record_keeps_scale_times_and_proposals_above_the_applied_count():
    t = 1_800_000_000.0
    st = _run(ShieldState.init(1), 4, 4, t).state
    st = _run(st, 4, 12, t + 15).state  # step limit: 4 -> 8, the proposal 12 stays above
    rec = st.to_records(t + 15, CFG, HI)[0]
    assert rec["lastApplied"] == 8 and rec["lastScaleUp"] == t + 15
    assert [m for _, m in rec["proposals"]] == [12]
    # capped at maxReplicas: a proposal of 50 at max 20 is no more than 20, which is applied
    st2 = _run(ShieldState.init(1), 20, 50, t).state
    assert "proposals" not in st2.to_records(t, CFG, HI)[0]


def test_restore_keeps_cooldown_and_holds_a_scale_down_for_one_window():
    t = 1_800_000_000.0
    st = _run(ShieldState.init(1), 4, 4, t - 300).state
    st = _run(st, 4, 8, t).state  # scaled up at t
    rec = st.to_records(t, CFG, HI)[0]
    # restart 30 s later: the record is all there is
    back = ShieldState.from_records([rec], CFG, [8.0], t + 30)
    assert float(back.last_up_s[0]) == t and float(back.last_applied[0]) == 8.0
    r = _run(back, 8, 2, t + 45)  # within the down cooldown of the scale-up
    assert int(r.replicas[0]) == 8 and r.reason.item() in (3, 4, 2)
    r = _run(back, 8, 2, t + 100)  # cooldown over, but the restart's seed holds for one window
    assert int(r.replicas[0]) == 8
    r = _run(r.state, 8, 2, t + 30 + 125)
    assert int(r.replicas[0]) < 8


def test_restore_of_garbage_is_a_fresh_seeded_state():
    back = ShieldState.from_records(
        [{"lastScaleUp": "x", "proposals": [["a", 1]]}, None], CFG, [3.0, math.nan], 1e9
    )
    assert math.isinf(float(back.last_up_s[0])) and back.batch_size == 2
