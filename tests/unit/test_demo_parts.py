"""The demo's pure parts: the trace stretch and its speed, the summary's integration, the
table, the live line, the HPA's steady state, the manifests of both sides."""

from __future__ import annotations

import io
import json
import math

import pytest

from qscale.demo.report import summarize, summary_table
from qscale.demo.run import (
    HPA,
    QSCALE,
    DemoConfig,
    DemoError,
    _decisions,
    hpa_holds,
    hpa_manifest,
    live_line,
    policy_manifest,
    run_demo,
)
from qscale.demo.stretch import Stretch
from qscale.operator.spec import parse_spec
from qscale.simulator.splits import packaged_trace


@pytest.fixture(scope="module")
def stretch():
    return Stretch.load(
        packaged_trace(), start_h=32.0 + 5 / 60, hours=2.5, play_s=270.0, scale=60.0
    )


def test_stretch_is_the_launch_morning_compressed(stretch):
    assert stretch.speed == pytest.approx(2.5 * 3600 / 270)
    assert stretch.clock(0) == "08:05" and stretch.clock(270) == "10:35"
    d = stretch.describe()
    assert "Jul 13 1995 08:05-10:35 EDT" in d and "33.3x, compressed" in d
    # The peak minute of the whole excerpt (09:49, 6.75 req/s) is inside, scaled.
    assert stretch.peak_rps() == pytest.approx(6.75 * 60, rel=1e-3)
    t_peak = (9 * 60 + 49 - 8 * 60 - 5) * 60 / stretch.speed
    assert stretch.rps(t_peak) == pytest.approx(6.75 * 60, rel=1e-3)
    # Held at both ends.
    assert stretch.rps(-5) == stretch.rps(0) and stretch.rps(1e6) == stretch.rps(270)


def test_stretch_refuses_what_is_not_there():
    with pytest.raises(ValueError, match="no data"):
        Stretch.load(packaged_trace(), start_h=100.0, hours=1.0, play_s=60.0, scale=1.0)
    with pytest.raises(ValueError):
        Stretch.load(packaged_trace(), start_h=0.0, hours=1.0, play_s=0.0, scale=1.0)


@pytest.mark.parametrize(("rps", "want"), [(0.0, 1), (35.0, 1), (35.1, 2), (126.0, 4), (1e6, 24)])
def test_both_sides_start_where_the_hpa_would_hold(rps, want):
    assert hpa_holds(DemoConfig(), rps) == want


def test_the_two_sides_are_set_up_alike():
    cfg = DemoConfig()
    pol = json.loads(policy_manifest(cfg))["spec"]
    hpa = json.loads(hpa_manifest(cfg))["spec"]
    assert pol["mode"] == "Enforce" and "model" not in pol  # the default model
    assert (pol["minReplicas"], pol["maxReplicas"]) == (hpa["minReplicas"], hpa["maxReplicas"])
    assert hpa["metrics"][0]["resource"]["target"] == {
        "type": "Utilization",
        "averageUtilization": 70,
    }
    assert hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 120
    assert pol["targetRef"]["name"] == QSCALE and hpa["scaleTargetRef"]["name"] == HPA
    assert pol["slo"]["priority"] == 0.5
    assert parse_spec(pol).slo_priority == 0.5


def test_a_demo_priority_the_operator_would_refuse_stops_it_before_anything_starts(tmp_path):
    cfg = DemoConfig(out=tmp_path, slo_priority=64.0)
    with pytest.raises(DemoError, match=r"spec\.slo\.priority must be between 0\.25 and 32,"):
        run_demo(cfg, stream=io.StringIO())
    assert not any(tmp_path.iterdir())


def _row(t, q_pods, h_pods, q_p95, h_p95, q_gen=1, h_gen=1):
    return {
        "t": t,
        "load_rps": 100.0,
        f"{QSCALE}.pods": q_pods,
        f"{QSCALE}.replicas": q_pods,
        f"{QSCALE}.ready": q_pods,
        f"{QSCALE}.generation": q_gen,
        f"{QSCALE}.p95_s": q_p95,
        f"{QSCALE}.desired": q_pods,
        f"{QSCALE}.action": "plus_1",
        f"{QSCALE}.reason": "OK",
        f"{HPA}.pods": h_pods,
        f"{HPA}.replicas": h_pods,
        f"{HPA}.ready": h_pods,
        f"{HPA}.generation": h_gen,
        f"{HPA}.p95_s": h_p95,
        f"{HPA}.desired": h_pods,
        f"{HPA}.cpu": 71,
        f"{HPA}.reason": "ReadyForNewScale",
    }


def test_summary_integrates_samples_over_wall_time():
    rows = [
        _row(0, 2, 2, 0.2, 0.2),
        _row(30, 4, 2, 0.2, 0.5, q_gen=2),
        _row(60, 4, 3, None, 0.5, q_gen=2, h_gen=2),
        _row(90, 3, 3, 0.2, 0.2, q_gen=3, h_gen=2),
    ]
    s = summarize(rows, slo_s=0.3)
    q, h = s["sides"]["qscale"], s["sides"]["HPA"]
    # each sample stands for 30 s (the last: the median step)
    assert q["pod_minutes"] == pytest.approx((2 + 4 + 4 + 3) * 0.5)
    assert h["pod_minutes"] == pytest.approx((2 + 2 + 3 + 3) * 0.5)
    assert q["slo_violation_minutes"] == 0.0  # no p95 (no traffic) is no violation
    assert h["slo_violation_minutes"] == pytest.approx(1.0)
    assert (q["scale_actions"], h["scale_actions"]) == (2, 1)
    assert (q["scale_ups_seen"], q["scale_downs_seen"]) == (1, 1)
    assert s["ratios"]["pod_minutes"] == pytest.approx(6.5 / 5.0)
    assert s["ratios"]["slo_violation_minutes"] == 0.0
    table = summary_table(s)
    assert "cost (pod-minutes)" in table and "1.30x" in table and "SLO-violation minutes" in table
    assert "twin" not in table
    s["twin"] = {
        "decisions": 20, "within_one_pod": 0.95, "pod_minutes_twin": 7.25,
        "slo_minutes_twin": 0.5,
    }  # fmt: skip
    table = summary_table(s)
    assert "qscale in the simulator on the same stretch" in table
    assert "95 % of 20" in table and "7.2" in table and "0.50" in table


def test_the_default_demo_plays_the_trace_at_its_own_pace():
    """The world the model was trained in: one trace second per real second, and each trace
    row's rate held over its minute (the simulator's causal zero-order hold), never a later
    row's value, so a decision sees what a cluster would."""
    cfg = DemoConfig()
    st = Stretch.load(packaged_trace(), cfg.start_h, cfg.hours, cfg.play_s, cfg.scale)
    assert st.speed == pytest.approx(1.0)
    assert "09:40-09:52" in st.describe() and "the trace's own pace" in st.describe()
    assert st.peak_rps() == pytest.approx(6.75 * 60, rel=1e-3)  # the launch minute is in it
    for minute in range(12):
        row = st.value[minute] * st.scale
        assert st.rps(60.0 * minute) == pytest.approx(row)
        assert st.rps(60.0 * minute + 59.9) == pytest.approx(row)


def test_live_line_marks_slo_violations(stretch):
    line = live_line(_row(12, 4, 5, 0.25, 12.0), stretch, 0.3)
    assert line.startswith("0:12  08:11") and "plus_1" in line and "ReadyForNewScale" in line
    assert ">10s!" in line and "250ms " in line and " 71%" in line


def test_latest_decision_is_read_from_the_operators_counter():
    text = (
        "# TYPE qscale_decisions_total counter\n"
        'qscale_decisions_total{action="hold",mode="Enforce",reason="OK"} 3.0\n'
        'qscale_decisions_total{action="times_1.5",mode="Enforce",reason="STEP_LIMIT_UP"} 1.0\n'
        'qscale_decisions_created{action="hold",mode="Enforce",reason="OK"} 1.7e9\n'
    )
    got = _decisions(text)
    assert got == {("hold", "OK"): 3.0, ("times_1.5", "STEP_LIMIT_UP"): 1.0}
    assert not math.isnan(sum(got.values()))


def test_without_a_control_plane_it_says_so_and_runs_the_offline_demo(
    monkeypatch, capsys, tmp_path
):
    import qscale.cli
    from qscale.demo.cli import OFFLINE_ARGS, demo_main

    monkeypatch.setenv("QSCALE_K8S_BIN", str(tmp_path / "nothing-here"))
    ran = []
    monkeypatch.setattr(qscale.cli, "main", lambda args: ran.append(args) or 0)
    assert demo_main(["--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("qscale demo: no local control plane here (")
    assert "running the offline demo instead: qscale evaluate" in out[0]
    assert ran == [[*OFFLINE_ARGS, "--out", str(tmp_path / "o")]]
    assert demo_main(["--no-fallback"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("qscale demo: error: QSCALE_K8S_BIN=")
