"""A policy's row through the tick: query grouping, holding without a model, the HPA rule's
verdict, the shield's memory restored from the status."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from qscale import features
from qscale.guardrails import ShieldState
from qscale.operator.deployments import Target
from qscale.operator.prom import Observation
from qscale.operator.rows import (
    IndexedPolicy,
    Row,
    Runtime,
    estimate_capacities,
    hold_within_bounds,
    query_groups,
    restore_shield,
    shield_record,
    signals_of,
    take_fallback,
)
from qscale.operator.settings import Settings

NOW = 1_800_000_000.0
SPEC = {
    "targetRef": {"kind": "Deployment", "name": "web"},
    "minReplicas": 2,
    "maxReplicas": 10,
    "slo": {"latencyP95": "200ms"},
}


def row(name="web", replicas=4, status=None, **spec):
    body = {
        "metadata": {"namespace": "a", "name": name, "uid": f"u-{name}", "generation": 1},
        "spec": {**SPEC, "targetRef": {"kind": "Deployment", "name": name}, **spec},
        "status": status or {},
    }
    p = IndexedPolicy.from_body(body)
    assert p.spec is not None
    target = Target("a", name, f"d-{name}", "1", replicas, replicas, 1.0)
    return Row(p, Runtime(p.uid, dict(p.status)), p.spec, target, None, "no model")


def test_a_policys_spec_is_parsed_again_only_when_its_generation_moves(monkeypatch):
    import qscale.operator.rows as rows

    calls = []
    real = rows.parse_spec
    monkeypatch.setattr(rows, "parse_spec", lambda spec: calls.append(spec) or real(spec))
    index = rows.PolicyIndex()
    body = {
        "metadata": {"namespace": "a", "name": "p", "uid": "u1", "generation": 1},
        "spec": SPEC,
        "status": {"replicas": 2},
    }
    index.put(body)
    index.put({**body, "status": {"replicas": 3}})  # the operator's own status write
    (p,) = index.values()
    assert len(calls) == 1 and p.status == {"replicas": 3} and p.spec.max_replicas == 10
    index.put(
        {
            **body,
            "metadata": {**body["metadata"], "generation": 2},
            "spec": {**SPEC, "maxReplicas": 5},
        }
    )
    assert len(calls) == 2 and index.values()[0].spec.max_replicas == 5
    # another object (a new uid), or no generation at all: parsed
    index.put({**body, "metadata": {**body["metadata"], "uid": "u2", "generation": 2}})
    index.put({**body, "metadata": {"namespace": "a", "name": "p", "uid": "u2"}})
    assert len(calls) == 4
    # a spec that fails keeps failing with its message until the generation moves
    bad = {
        **body,
        "metadata": {**body["metadata"], "uid": "u3"},
        "spec": {**SPEC, "minReplicas": 20},
    }
    index.put(bad)
    index.put({**bad, "status": {"x": 1}})
    p3 = next(p for p in index.values() if p.uid == "u3")
    assert len(calls) == 5 and p3.spec is None and "minReplicas" in p3.error


def test_rows_sharing_a_prometheus_and_templates_share_one_group():
    other = {"prometheus": {"address": "http://other:9090/"}}
    rows = [row("a1"), row("a2"), row("b1", metrics=other), row("a3")]
    allowed = Settings(
        prometheus_url="http://prom:9090", prometheus_allowed_urls=("http://other:9090",)
    )
    groups = query_groups(rows, allowed.prometheus_address)
    assert [(g.address, sorted(t for _, t in g.targets)) for g in groups] == [
        ("http://prom:9090", ["a1", "a2", "a3"]),
        ("http://other:9090", ["b1"]),
    ]
    assert [[r.spec.target for r in rs] for rs in groups.values()] == [["a1", "a2", "a3"], ["b1"]]


def test_an_address_not_allowed_is_never_queried():
    rows = [row("a1"), row("b1", metrics={"prometheus": {"address": "http://127.0.0.1:6443"}})]
    groups = query_groups(rows, Settings(prometheus_url="http://prom:9090").prometheus_address)
    assert [sorted(t for _, t in g.targets) for g in groups] == [["a1"]]
    assert "not one of the Prometheus addresses" in rows[1].obs.refused


def test_own_templates_are_queried_per_namespace():
    """A tenant's query is filled only with its own namespace (the defaults serve all)."""
    own = features.PROMQL["request_rate"].replace("http_requests_total", "mine_total")
    rows = [
        row("a1"),
        row("a2", metrics={"requestRate": own}),
        row("b1", metrics={"requestRate": own}),
    ]
    rows[2].policy = dataclasses.replace(rows[2].policy, namespace="b")
    groups = query_groups(rows, Settings(prometheus_url="http://prom:9090").prometheus_address)
    assert sorted(g.targets for g in groups) == [(("a", "a1"),), (("a", "a2"),), (("b", "b1"),)]


@pytest.mark.parametrize(("replicas", "held"), [(1, 2), (4, 4), (12, 10)])
def test_without_a_model_the_count_holds_within_the_bounds(replicas, held):
    r = row(replicas=replicas)
    hold_within_bounds([r])
    assert (r.verdict.desired, r.verdict.action, r.verdict.reason) == (
        held,
        "hold",
        "MODEL_REFUSED",
    )


@pytest.mark.parametrize(("mode", "recorded"), [("Enforce", True), ("Shadow", False)])
def test_the_hpa_rule_decides_and_in_enforce_its_step_is_a_scale_for_the_shield(mode, recorded):
    r = row(mode=mode)
    restore_shield(r, NOW)
    take_fallback(r, 6, "ScaleUpLimit", "hpa-state", NOW)
    v = r.verdict
    assert (v.desired, v.action, v.reason, v.by_fallback, v.hpa_reason) == (
        6,
        "hpa",
        "FALLBACK_ACTIVE",
        True,
        "ScaleUpLimit",
    )
    assert r.new_hpa == "hpa-state"
    assert (r.new_shield is not None) == recorded
    if recorded:
        assert (
            float(r.new_shield.last_applied[0]) == 6.0 and float(r.new_shield.last_up_s[0]) == NOW
        )


def test_the_shield_is_restored_from_the_status_and_a_scale_by_someone_else_is_seen():
    r = row(replicas=7, status={"shield": {"lastApplied": 4, "lastScaleUp": NOW - 30}})
    restore_shield(r, NOW)
    assert isinstance(r.runtime.shield, ShieldState)
    assert r.runtime.shield_config == r.shield_config
    assert float(r.runtime.shield.last_up_s[0]) == NOW - 30
    assert r.outside == (4, 7)
    same = row(replicas=4, status={"shield": {"lastApplied": 4}})
    restore_shield(same, NOW)
    assert same.outside is None


def test_a_recreated_deployment_starts_with_a_fresh_memory():
    """Same name, new object (uid): no inherited cooldown, no "scaled by someone else"."""
    rec = {"lastApplied": 4, "lastScaleUp": NOW - 30, "targetUID": "d-web"}
    r = row(replicas=7, status={"shield": rec})
    restore_shield(r, NOW)
    assert r.outside == (4, 7) and r.runtime.target_uid == "d-web"  # the same object
    assert shield_record(r, NOW)["targetUID"] == "d-web"
    # the Deployment is deleted and created again: a new uid, the status still has the old one
    fresh = row(replicas=7, status={"shield": rec})
    fresh.target = dataclasses.replace(fresh.target, uid="d-web-2")
    restore_shield(fresh, NOW)
    assert fresh.outside is None and math.isinf(float(fresh.runtime.shield.last_up_s[0]))
    # ... and in memory: the runtime that knew the old object forgets it
    r.target = dataclasses.replace(r.target, uid="d-web-3")
    r.outside = None
    restore_shield(r, NOW + 15)
    assert r.outside is None and r.runtime.target_uid == "d-web-3"
    assert math.isinf(float(r.runtime.shield.last_up_s[0]))


def test_the_declared_capacity_reaches_the_features_and_none_reads_as_none():
    rows = [
        row("web", replicas=4, capacity={"requestsPerSecondPerPod": 50}),
        row("api", replicas=4),
    ]
    for r in rows:
        r.obs = Observation(rate_now=100.0, p95_s=0.1, cpu_utilization=0.5, cpu_peak_cores=3.0,
                            has_rate=True, has_latency=True, has_cpu=True,
                            has_cpu_peak=True)  # fmt: skip
    x = signals_of(rows).inputs
    assert x.capacity_rps[0].item() == 50.0 and math.isnan(x.capacity_rps[1].item())
    obs = features.compute(x)
    assert obs[:, features.LOAD_PER_POD].tolist() == [0.5, -1.0]  # 100 / (50 x 4); none
    assert features.capacity_declared(obs).tolist() == [True, False]


def test_the_slo_priority_reaches_the_features_as_its_log2():
    rows = [row("web", slo={"latencyP95": "250ms", "priority": 2}), row("api")]
    for r in rows:
        r.obs = Observation(rate_now=100.0, p95_s=0.1, cpu_utilization=0.5, has_rate=True,
                            has_latency=True, has_cpu=True)  # fmt: skip
    obs = features.compute(signals_of(rows).inputs)
    assert obs[:, features.FEATURE_NAMES.index("slo_priority")].tolist() == [1.0, 0.0]


def _history(cap: float, cores_per_pod: float = 1.0, end: float = 1_800_000_000.0):
    """30 minutes of a service at ``cap`` req/s per busy pod: rate points where the tick's
    second falls, CPU points on whole minutes (7 s earlier), 2-3.5 pods busy."""
    busy = [2.0 + 1.5 * (k % 4) / 3 for k in range(31)]
    rate = tuple((end - 60 * (30 - k), cap * b) for k, b in enumerate(busy))
    cpu = tuple((t - 7.0, b * cores_per_pod) for (t, _), b in zip(rate, busy, strict=True))
    return rate, cpu


def test_an_undeclared_capacity_is_estimated_from_the_rate_and_cpu_points():
    """Rate over busy pods at the same instants (CPU points paired within 30 s), as the
    simulator reads them; a declared capacity wins; ``estimate: false`` leaves none; a template
    that gave the peak alone (no points) leaves none."""
    declared = row("web", replicas=4, capacity={"requestsPerSecondPerPod": 50})
    guessed = row("api", replicas=4)
    off = row("off", replicas=4, capacity={"estimate": False})
    peak_only = row("bare", replicas=4)
    rows = [declared, guessed, off, peak_only]
    for r in rows:
        rate, cpu = _history(40.0, cores_per_pod=2.0)
        r.target = dataclasses.replace(r.target, cpu_limit_ratio=2.0, cpu_limit_cores=2.0)
        r.obs = Observation(rate_now=160.0, p95_s=0.1, cpu_utilization=0.8, cpu_peak_cores=7.0,
                            has_rate=True, has_latency=True, has_cpu=True, has_cpu_peak=True,
                            rate_points=rate, cpu_points=() if r is peak_only else cpu)  # fmt: skip
    estimate_capacities(rows)
    assert guessed.capacity_estimate == pytest.approx(40.0)
    assert all(math.isnan(r.capacity_estimate) for r in (declared, off, peak_only))
    x = signals_of(rows).inputs
    assert x.capacity_rps.tolist()[:2] == [50.0, pytest.approx(40.0)]
    assert all(math.isnan(c) for c in x.capacity_rps.tolist()[2:])
    assert features.capacity_declared(features.compute(x)).tolist() == [True, True, False, False]
    # CPU points more than 30 s from every rate point pair with none: too few points, no estimate
    far = row("far", replicas=4)
    rate, cpu = _history(40.0)
    far.obs = dataclasses.replace(peak_only.obs, rate_points=rate,
                                  cpu_points=tuple((t - 31.0, v) for t, v in cpu))  # fmt: skip
    estimate_capacities([far])
    assert math.isnan(far.capacity_estimate)


def test_the_forecast_reads_the_range_points_on_their_grid():
    """The rows' forecast is :func:`qscale.features.rate_forecast` of the range query's points
    placed on the grid 60 s apart that ends at the newest (as the simulator's 31 points): a
    missing point inside stays missing (predicted, not shifted), a short history is NaN in
    front, no points is no forecast."""
    whole, gap, short, none = (row(n) for n in ("whole", "gap", "short", "none"))
    ramp = [(NOW - 60 * (30 - k), 100.0 + 5.0 * k) for k in range(31)]
    whole.obs = Observation(rate_now=250.0, has_rate=True, rate_points=tuple(ramp))
    gap.obs = Observation(rate_now=250.0, has_rate=True, rate_points=tuple(ramp[:20] + ramp[21:]))
    short.obs = Observation(rate_now=250.0, has_rate=True, rate_points=tuple(ramp[-6:]))
    none.obs = Observation()
    got = signals_of([whole, gap, short, none]).inputs.rate_forecast.tolist()
    values = [v for _, v in ramp]
    with_gap = [*values[:20], math.nan, *values[21:]]
    front = [math.nan] * 25 + values[-6:]
    want = features.rate_forecast(torch.tensor([values, with_gap, front], dtype=torch.float32))
    assert got[:3] == pytest.approx(want.tolist())
    assert got[0] == pytest.approx(250.0 + 10.0, rel=1e-3)  # the ramp, 2 points on
    assert got[1] != pytest.approx(
        features.rate_forecast(torch.tensor([values[:20] + values[21:]])).item()
    )
    assert math.isnan(got[3])
