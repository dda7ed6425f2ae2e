"""The AutoscalePolicy spec as the tick reads it: defaults, durations, the shield's precedence."""

from __future__ import annotations

import math

import pytest
from crds import CHART_CRD, CRD, spec_schemas

from qscale import features
from qscale.guardrails import ShieldConfig
from qscale.operator.spec import (
    SpecError,
    parse_duration,
    parse_spec,
    shield_config,
    training_mismatch,
)

BASE = {
    "targetRef": {"kind": "Deployment", "name": "web"},
    "maxReplicas": 10,
    "slo": {"latencyP95": "250ms"},
}


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("15s", 15.0),
        ("250ms", 0.25),
        ("1m30s", 90.0),
        ("2h", 7200.0),
        ("0.5s", 0.5),
        (3, 3.0),
        ("0s", 0.0),
    ],
)
def test_durations(text, seconds):
    assert parse_duration(text, "f") == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "15", "s", "1x", "-1s", "1s 2s", True, None, "1.s"])
def test_bad_durations(bad):
    with pytest.raises(SpecError):
        parse_duration(bad, "spec.interval")


def test_defaults_are_the_feature_spec_queries_and_the_crd_defaults():
    s = parse_spec(BASE)
    assert (s.metrics.request_rate, s.metrics.latency_p95, s.metrics.cpu_utilization) == (
        features.PROMQL["request_rate"],
        features.PROMQL["latency_p95"],
        features.PROMQL["cpu_utilization"],
    )
    assert (s.min_replicas, s.mode, s.interval_s, s.slo_s) == (1, "Enforce", 15.0, 0.25)
    assert s.model.is_default and s.metrics.address == ""
    assert (s.fallback_target, s.fallback_after) == (0.7, 3)
    assert s.shadow_window_s == 3600.0
    assert parse_spec({**BASE, "shadow": {"window": "90m"}}).shadow_window_s == 5400.0
    assert (s.drift_window_s, s.drift_action) == (3600.0, "Report")
    d = parse_spec({**BASE, "drift": {"window": "6h", "action": "Fallback"}})
    assert (d.drift_window_s, d.drift_action) == (21600.0, "Fallback")
    assert s.canary is None
    c = parse_spec({**BASE, "canary": {"model": _PIN}}).canary
    assert (c.fraction, c.period_s, c.window_s, c.promote) == (0.5, 600.0, 3600.0, False)
    assert (c.max_slo_violation, c.max_interventions, c.min_cost_saving) == (0.05, 0.5, 0.05)


_PIN = {"configMapRef": {"name": "cand"}, "sha256": "a" * 64}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"minReplicas": 11}, "minReplicas (11) must be <= spec.maxReplicas (10)"),
        ({"minReplicas": -1}, "minReplicas must be >= 1"),
        ({"targetRef": {"kind": "StatefulSet", "name": "web"}}, "apps/v1 Deployment"),
        ({"mode": "Sometimes"}, "spec.mode must be one of"),
        ({"interval": "500ms"}, "at least 1s"),
        ({"slo": {}}, "latencyP95 is required"),
        ({"model": {"configMapRef": {"name": "m"}}}, "both configMapRef and sha256"),
        (
            {"metrics": {"requestRate": "sum(rate(x[1m]))"}},
            'spec.metrics.requestRate: the selector x needs the matcher namespace=~"$namespace"',
        ),
        (  # the placeholders only in a comment: a substring check would pass it
            {"metrics": {"requestRate": "sum(rate(x[1m])) # $namespace $deployment"}},
            "spec.metrics.requestRate: comments are not allowed",
        ),
        (
            {"targetRef": {"name": 'web"} or vector(1) #'}},
            "spec.targetRef.name must be a Kubernetes name",
        ),
        ({"behavior": {"scaleUp": {"maxPods": 0}}}, "maxPods must be >= 1"),
        ({"shadow": {"window": "30s"}}, "spec.shadow.window must be between 1m and 24h"),
        ({"drift": {"window": "30s"}}, "spec.drift.window must be between 1m and 24h"),
        ({"drift": {"action": "Delete"}}, "spec.drift.action must be one of Report, Shadow"),
        ({"canary": {"percent": 10}}, "spec.canary.model needs a configMapRef and its sha256"),
        ({"canary": {"model": _PIN, "percent": 99}}, "spec.canary.percent must be between 5"),
        ({"canary": {"model": _PIN, "period": "30s"}}, "at least 4 intervals (60s)"),
        ({"canary": {"model": _PIN, "window": "15m"}}, "window must be at least 2 periods"),
        ({"canary": {"model": _PIN, "incumbent": "KEDA"}}, "incumbent must be Model or HPA"),
        ({"shadow": {"window": "2d"}}, "spec.shadow.window: '2d' is not a duration"),
        (
            {"capacity": {"requestsPerSecondPerPod": 0}},
            "spec.capacity.requestsPerSecondPerPod must be > 0",
        ),
        (
            {"capacity": {"requestsPerSecondPerPod": -5}},
            "spec.capacity.requestsPerSecondPerPod: -5 must be a number >= 0",
        ),
        (
            {"capacity": {"requestsPerSecondPerPod": "fast"}},
            "spec.capacity.requestsPerSecondPerPod: 'fast' must be a number",
        ),
        ({"capacity": 40}, "spec.capacity must be an object"),
        ({"capacity": {"estimate": "yes"}}, "spec.capacity.estimate must be true or false"),
        (
            {"slo": {"latencyP95": "300ms", "priority": 64}},
            "spec.slo.priority must be between 0.25 and 32, got 64",
        ),
        (
            {"slo": {"latencyP95": "300ms", "priority": 0}},
            "spec.slo.priority must be between 0.25 and 32, got 0",
        ),
        (
            {"slo": {"latencyP95": "300ms", "priority": True}},
            "spec.slo.priority: True must be a number",
        ),
        (
            {
                "metrics": {
                    "latencyP95": f'x{{namespace=~"$namespace", pod=~"$deployment-{"a" * 8200}"}}'
                }
            },
            "spec.metrics.latencyP95 is longer than 8192 characters",
        ),
    ],
)
def test_refused_with_one_line(change, message):
    with pytest.raises(SpecError, match=None) as e:
        parse_spec({**BASE, **change})
    assert message in str(e.value) and "\n" not in str(e.value)


def test_shield_precedence_explicit_over_trained_over_defaults():
    spec = parse_spec({**BASE, "behavior": {"scaleDown": {"cooldown": "30s"}}})
    assert shield_config(spec) == ShieldConfig(down_cooldown_s=30.0)
    trained = {
        "shield": {"down_cooldown_s": 90.0, "up_cooldown_s": 15.0, "max_replicas": 3, "bogus": 1}
    }
    cfg = shield_config(spec, trained)
    assert (cfg.down_cooldown_s, cfg.up_cooldown_s) == (30.0, 15.0)
    assert not hasattr(cfg, "max_replicas")  # bounds reach the shield per target only


@pytest.mark.parametrize(
    ("spec_change", "serving", "expected"),
    [
        ({}, None, []),
        ({}, {"interval_s": 15.0, "shield": {"down_cooldown_s": 60.0}}, []),
        ({"interval": "5s"}, {"interval_s": 15.0}, ["interval 5s (trained 15s)"]),
        (
            {"behavior": {"scaleDown": {"cooldown": "30s"}}},
            {"shield": {"down_cooldown_s": 60.0}},
            ["down_cooldown_s 30 (trained 60)"],
        ),
        (
            {"fallback": {"targetUtilization": 60}},
            {"target_utilization": 0.7},
            ["fallback.targetUtilization 60% (trained 70%)"],
        ),
    ],
)
def test_training_mismatch_lists_what_differs(spec_change, serving, expected):
    assert training_mismatch(parse_spec({**BASE, **spec_change}), serving) == expected


def test_the_query_length_limit_is_the_crds():
    from qscale.operator.spec import MAX_QUERY_CHARS

    metrics = spec_schemas(CRD)[0]["properties"]["metrics"]["properties"]
    for key in ("requestRate", "latencyP95", "cpuUtilization", "cpuPeak"):
        assert metrics[key]["maxLength"] == MAX_QUERY_CHARS


def test_every_template_can_be_overridden_and_is_checked():
    from qscale.operator.spec import TEMPLATES

    assert set(TEMPLATES) == set(features.PROMQL)
    own = 'max_over_time(sum by (namespace, deployment) (my_cores{namespace=~"$namespace", ' \
        'deployment=~"$deployment"})[30m:1m])'  # fmt: skip
    spec = parse_spec({**BASE, "metrics": {"cpuPeak": own}})
    assert (
        spec.metrics.cpu_peak == own
        and spec.metrics.request_rate == features.PROMQL["request_rate"]
    )
    with pytest.raises(SpecError, match=r"spec\.metrics\.cpuPeak"):
        parse_spec({**BASE, "metrics": {"cpuPeak": "max_over_time(my_cores[30m:1m])"}})


def test_the_cpu_limit_per_pod_comes_from_the_pod_template():
    from qscale.operator.deployments import target_from

    def deployment(*containers):
        pod = {"containers": [{"resources": r} for r in containers]}
        return {"metadata": {"name": "web"}, "spec": {"template": {"spec": pod}}}

    t = target_from(deployment({"requests": {"cpu": "250m"}, "limits": {"cpu": "1"}},
                               {"requests": {"cpu": "250m"}}))  # fmt: skip
    assert t.cpu_limit_cores == 1.25 and t.cpu_limit_ratio == 2.5  # no limit: its request
    t = target_from(deployment({"limits": {"cpu": "500m"}}))  # request defaults to the limit
    assert t.cpu_limit_cores == 0.5 and t.cpu_limit_ratio == 1.0
    t = target_from(deployment({}))
    assert math.isnan(t.cpu_limit_cores) and t.cpu_limit_ratio == 1.0


def test_behavior_explicit_is_the_fields_the_user_set():
    import dataclasses

    from qscale.operator.spec import Behavior

    b = Behavior(max_step_up_pods=3, up_cooldown_s=0.0, down_stabilization_s=120.0)
    assert (
        b.explicit()
        == {k: v for k, v in dataclasses.asdict(b).items() if v is not None}
        == {"max_step_up_pods": 3, "up_cooldown_s": 0.0, "down_stabilization_s": 120.0}
    )
    assert Behavior().explicit() == {}


def test_the_slo_priority_is_read_and_defaults_to_1():
    assert parse_spec(BASE).slo_priority == 1.0
    spec = parse_spec({**BASE, "slo": {**BASE["slo"], "priority": 2}})
    assert spec.slo_priority == 2.0


def test_a_declared_capacity_is_read_and_absent_is_none():
    assert parse_spec(BASE).capacity_rps is None
    assert parse_spec({**BASE, "capacity": {}}).capacity_rps is None
    spec = parse_spec({**BASE, "capacity": {"requestsPerSecondPerPod": 42.5}})
    assert spec.capacity_rps == 42.5


@pytest.mark.parametrize("crd", [CRD, CHART_CRD])
def test_the_crds_slo_priority_bounds_are_the_features_range(crd):
    """The API server refuses what the model cannot be shown: the CRD's bounds on
    spec.slo.priority (it cannot import them) are the feature's range, in both copies."""
    lo, hi = features.SLO_PRIORITY_RANGE
    for spec in spec_schemas(crd):
        priority = spec["properties"]["slo"]["properties"]["priority"]
        assert (priority["minimum"], priority["maximum"], priority["default"]) == (lo, hi, 1)
