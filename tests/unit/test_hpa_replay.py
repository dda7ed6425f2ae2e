"""The conformance harness's offline parts, and the port replayed on a recorded real run.

``tests/data/hpa_conformance.json.gz`` is one run of the conformance suite
(``tests/conformance/`` with ``QSCALE_CONFORMANCE_OUT`` set) against kube-controller-manager
1.37.2: every sync of every scenario with what the controller observed (pods, metrics samples)
and decided. Replaying it needs no cluster, so CI checks the
port against the real controller's decisions on every run, not only where a cluster is at hand.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from qscale.dev import hpa_conformance as hc
from qscale.hpa import HPAConfig, Pod, PodMetric

RECORDING = Path(__file__).parent.parent / "data" / "hpa_conformance.json.gz"


@pytest.fixture(scope="module")
def recording() -> dict:
    return hc.load(RECORDING)


def test_recording_covers_every_scenario(recording) -> None:
    assert [s["name"] for s in recording["scenarios"]] == [sc.name for sc in hc.SCENARIOS]


@pytest.mark.parametrize("name", [sc.name for sc in hc.SCENARIOS])
def test_port_reproduces_the_recorded_controller(recording, name: str) -> None:
    record = next(s for s in recording["scenarios"] if s["name"] == name)
    res = hc.replay(record)
    a = hc.agreement(name, res)
    assert a.syncs >= 10
    assert (a.agree, a.proposals_agree) == (a.syncs, a.proposals), [
        r for r in res if not r.agrees or r.port_proposal != r.controller_proposal
    ]


DISCRIMINATING = {
    "cpu_initialization_period_s": "warm-up",
    "initial_readiness_delay_s": "slow-start",
}
"""The scenario whose recording must tell each start-up parameter's real value from 0."""


def test_recording_ran_with_the_harness_flags(recording) -> None:
    for s in recording["scenarios"]:
        assert s["flags"] == hc.CONTROLLER_FLAGS
        assert hc.startup_rules(s["flags"]) == (60.0, 30.0)
    assert hc.startup_rules({}) == (300.0, 30.0)  # the Go defaults


@pytest.mark.parametrize("parameter", hc.STARTUP_PARAMETERS)
def test_startup_parameter_is_discriminated(recording, parameter: str) -> None:
    # With the controller's value the port agrees at every sync (above); with the parameter at
    # 0 (the other one right) it must disagree somewhere outside the race window, else the
    # recording does not check that rule.
    name = DISCRIMINATING[parameter]
    record = next(s for s in recording["scenarios"] if s["name"] == name)
    wrong = [r for r in hc.replay(record, **{parameter: 0.0}) if not r.agrees and not r.raced]
    assert len(wrong) >= 2, wrong
    right = hc.replay(record)
    assert all(r.agrees for r in right)
    # ... and the rule the scenario is there for did set pods aside.
    a = hc.agreement(name, right)
    path = hc.OVERLAP_PATH if parameter == "cpu_initialization_period_s" else hc.LATE_PATH
    assert path in a.paths


def test_race_window_holds_few_syncs(recording) -> None:
    # A disagreement is excused only at a sync the controller may have observed otherwise
    # where that other observation changes the port's answer: few such syncs, fewer than the
    # harness's first rule (any change within the margin) held.
    res = [r for s in recording["scenarios"] for r in hc.replay(s)]
    window = sum(r.raced for r in res)
    coarse = sum(r.raced_any for r in res)
    # (The behavior scenarios' rescales are 10.1 s apart with 10 s policy periods, so every
    # other sync of theirs sits within RESCALE_LAG_S of a period's end: 10 of the 12.)
    assert window <= len(res) // 20, (window, len(res))
    assert window < coarse
    assert sum(r.ambiguous for r in res) >= window


def test_changes_caused_by_the_sync_are_its_own() -> None:
    def pod(name: str, deleting: bool = False) -> Pod:
        return Pod(name, phase="Pending", deleting=deleting)

    events = [
        (1.0, "a", pod("a")),
        (9.0, "c", pod("c")),  # an unrelated pod, 30 ms before the sync at 9.03
        (9.05, "b", pod("b")),  # created by the sync's scale-up
        (9.06, "a", pod("a", deleting=True)),
    ]
    changes = hc._pod_changes(events)
    up = hc._changes_near(9.03, changes, [8.5], up=True, down=False)
    assert up == [[-0.53, "metrics"], [-0.03, "pod"], [0.02, "own"], [0.03, "pod"]]
    down = hc._changes_near(9.03, changes, [], up=False, down=True)
    assert down == [[-0.03, "pod"], [0.02, "pod"], [0.03, "own"]]
    assert hc._margins({"changes": up}) == (0.03, 0.02)
    # The pod lists the scale-up sync may have read: without c, or with a being deleted; never
    # with b, which its own rescale created.
    views = hc._pod_views(events, changes, 9.03, up=True, down=False)
    assert [[(p.name, p.deleting) for p in v] for v in views] == [
        [("a", False)],
        [("a", True), ("c", False)],
    ]
    assert hc._pod_views(events, changes, 5.0, up=False, down=False) == []


def test_metric_snapshots_the_sync_may_have_read() -> None:
    a = {"p": PodMetric(100.0, 10.0, 50), "q": PodMetric(100.0, 10.0, 70)}
    b = {"p": PodMetric(100.0, 10.0, 50)}  # q deleted: gone from the API, same scrape
    c = {"p": PodMetric(110.0, 10.0, 60)}
    spans = [hc._Span(100.5, 104.0, a), hc._Span(104.5, 110.0, b), hc._Span(110.5, 120.0, c)]
    # At 104.2 (between the polls) either a or b was served; at 107 only b; c lacks the stamp.
    assert hc._metric_views(spans, 104.2, 100.0, a) == [b]
    assert hc._metric_views(spans, 104.2, 100.0, b) == [a]
    assert hc._metric_views(spans, 107.0, 100.0, b) == []
    assert hc._metric_views(spans, 104.6, 100.0, b) == [a]  # read up to 0.25 s before the log
    assert hc._metric_views(spans, 104.2, None, a) == []


def _sync(t: float, cpu: int, desired: int, proposal: int, alternatives=()) -> dict:
    pods = [
        {"name": n, "start_time": -1e3, "ready": "True", "ready_transition": -1e3} for n in "ab"
    ]
    return {
        "t": t,
        "kind": "metric",
        "current": 2,
        "desired": desired,
        "proposal": proposal,
        "metrics_matched": True,
        "status_utilization": None,
        "changes": [],
        "pods": pods,
        "metrics": {n: [t - 1.0, 10.0, cpu] for n in "ab"},
        "alternatives": list(alternatives),
    }


def test_a_disagreement_is_excused_only_by_an_observation_that_explains_it() -> None:
    spec = {"minReplicas": 1, "maxReplicas": 10, "metrics": [_CPU50]}
    other = _sync(0.0, 100, 4, 4)  # both pods at 100 %: 4 pods
    record = {
        "name": "x",
        "hpa": {"spec": spec},
        "syncs": [
            # Pods at 50 %: the port keeps 2; the controller said 4, which the port says on the
            # other observation the controller may have made.
            _sync(0.0, 50, 4, 4, [{"pods": other["pods"], "metrics": other["metrics"]}]),
            _sync(5.0, 50, 4, 4),  # the same without one: not excused
        ],
    }
    first, second = hc.replay(record)
    assert (first.port, first.port_proposal, first.alternatives) == (2, 2, ((4, 4),))
    assert first.raced and first.excused and not first.agrees
    assert not second.raced and not second.excused and not second.agrees


_CPU50 = {"resource": {"target": {"averageUtilization": 50}}}


def test_replay_can_fail() -> None:
    # The same observations, but the controller "decided" otherwise at one sync: caught.
    record = hc.load(RECORDING)["scenarios"][0]
    i = next(k for k, s in enumerate(record["syncs"]) if s["desired"] != s["current"])
    record["syncs"][i]["desired"] += 1
    res = hc.replay(record)
    assert [k for k, r in enumerate(res) if not r.agrees] == [i]


LOG = """\
I1201 07:17:25.251339    4413 horizontal.go:958] "Proposing desired replicas" desiredReplicas=2 metric="cpu resource utilization (percentage of request)" tolerances="[down:10.0%, up:10.0%]" timestamp="2026-12-01 07:17:16 +0000 UTC" scaleTarget="Deployment/c1/web"
I1201 07:17:25.251394    4413 horizontal.go:1059] "Decided not to scale" scaleTarget="Deployment/c1/web" desiredReplicas=2 lastScaleTime=""
I1201 07:17:25.254249    4413 horizontal.go:1568] "Successfully updated status" HPA="c1/web"
I1201 07:17:26.000001    4413 deployment_controller.go:583] "Started syncing deployment" deployment="c1/web"
I1201 07:17:50.309000    4413 horizontal.go:958] "Proposing desired replicas" desiredReplicas=30 metric="cpu resource utilization (percentage of request)" tolerances="[down:10.0%, up:10.0%]" timestamp="2026-12-01 07:17:46 +0000 UTC" scaleTarget="Deployment/c1/web"
I1201 07:17:50.309787    4413 horizontal.go:1032] "Successfully rescaled" HPA="c1/web" currentReplicas=2 desiredReplicas=4 reason="cpu resource utilization (percentage of request) above target"
I1201 07:17:55.400000    4413 horizontal.go:1032] "Successfully rescaled" HPA="c2/web" currentReplicas=9 desiredReplicas=6 reason="Current number of replicas above Spec.MaxReplicas"
E1201 07:18:00.500000    4413 horizontal.go:354] "Unhandled Error" err="failed to compute desired number of replicas based on listed metrics for Deployment/c2/web: invalid metrics (1 invalid out of 1), first error is: failed to get cpu resource metric value"
"""  # noqa: E501


def test_parse_controller_log() -> None:
    syncs = hc.parse_controller_log(LOG.splitlines(), 2026)
    c1, c2 = syncs["c1/web"], syncs["c2/web"]
    assert [(s.kind, s.proposal, s.current, s.desired) for s in c1] == [
        ("metric", 2, 2, 2),
        ("metric", 30, 2, 4),
    ]
    assert c1[1].t - c1[0].t == pytest.approx(25.057661, abs=1e-6)
    assert c1[0].metric_timestamp == pytest.approx(1796109436.0)  # 2026-12-01T07:17:16Z
    assert [(s.kind, s.current, s.desired) for s in c2] == [("bound", 9, 6), ("error", None, None)]


def test_metrics_snapshot_is_the_one_the_controller_logged() -> None:
    a = {"p": PodMetric(100.0, 10.0, 50)}
    b = {"p": PodMetric(110.0, 10.0, 80)}
    spans = [hc._Span(100.5, 110.2, a), hc._Span(110.7, 120.0, b)]
    # At 110.5 the poller still showed a's samples, but the controller logged b's timestamp:
    # metrics-server had scraped between the last poll and the sync.
    assert hc._metrics_at(spans, 110.5, 110.0) == (b, True)
    assert hc._metrics_at(spans, 110.5, 100.0) == (a, True)
    assert hc._metrics_at(spans, 110.5, None) == (a, True)
    assert hc._metrics_at(spans, 110.5, 90.0) == (a, False)


def test_hpa_config_from_the_stored_object() -> None:
    spec = {
        "minReplicas": 2,
        "maxReplicas": 20,
        "metrics": [{"resource": {"target": {"averageUtilization": 50}}}],
    }
    legacy = hc.hpa_config({"spec": spec})
    assert not legacy.behavior and legacy.scale_down_stabilization_s == 60.0
    assert (legacy.target_percent, legacy.min_replicas, legacy.max_replicas) == (50, 2, 20)
    spec["behavior"] = {
        "scaleUp": {
            "stabilizationWindowSeconds": 0,
            "selectPolicy": "Min",
            "policies": [{"type": "Pods", "value": 2, "periodSeconds": 10}],
        },
        "scaleDown": {
            "selectPolicy": "Max",
            "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}],
        },
    }
    cfg = hc.hpa_config({"spec": spec})
    assert cfg == HPAConfig(
        target_utilization=0.5,
        sync_period_s=cfg.sync_period_s,
        min_replicas=2,
        max_replicas=20,
        behavior=True,
        scale_down_stabilization_s=60.0,  # unset in the spec: the controller's flag
        scale_up_policies=(("Pods", 2, 10.0),),
        scale_up_select="Min",
    )
