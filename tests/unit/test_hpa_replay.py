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
from qscale.hpa import HPAConfig, PodMetric

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
