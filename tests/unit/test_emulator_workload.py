"""The emulator steps the simulator's service model and exports what the default queries read."""

from __future__ import annotations

import itertools

import pytest
import torch

from qscale import features, service
from qscale.emulator import _deployment_of
from qscale.emulator.exporter import exposition
from qscale.emulator.workload import Load, Pod, Workload, WorkloadSet


@pytest.mark.parametrize(
    ("spec", "t", "rps"),
    [
        ("50", 123.0, 50.0),
        ("0:20,60:200,120:20", 30.0, 20.0),
        ("0:20,60:200,120:20", 60.0, 200.0),
        ("0:20,60:200,120:20", 500.0, 20.0),
        ("ramp:0:0,100:100", 25.0, 25.0),
    ],
)
def test_loads(spec, t, rps):
    assert Load.parse(spec)(t) == pytest.approx(rps)


def test_trace_load_is_compressed_time(tmp_path):
    f = tmp_path / "t.csv"
    f.write_text("t,value\n0,10\n60,30\n120,10\n")
    load = Load.trace(f, scale=2.0)
    assert load(60.0) == pytest.approx(60.0) and load(30.0) == pytest.approx(40.0)
    ws = WorkloadSet([Workload("a", "web", load)], compress=60.0)
    ws.t0 = 0.0
    assert ws.emulated(1.0) == 60.0


@pytest.mark.parametrize(
    ("name", "dep"), [("web-7ff787bd96-pkknc", "web"), ("my-api-5d9c-x1y2z", "my-api"), ("x", "")]
)
def test_pod_names_map_to_deployments_as_the_queries_do(name, dep):
    assert _deployment_of(name) == dep


def _pods(ws, n_ready, n_starting, limit=0.2):
    for i in range(n_ready + n_starting):
        ws.upsert_pod(Pod(f"web-abc12-p{i:04d}", "a", "web", i < n_ready, 0.1, limit))


def test_served_requests_latency_and_cpu_follow_the_service_model():
    ws = WorkloadSet(
        [Workload("a", "web", Load.constant(120.0), capacity_rps=50.0, service_time_s=0.05)]
    )
    _pods(ws, 2, 1)
    ws.upsert_pod(Pod("other-abc12-zzzzz", "a", "other", True, 0.1, 0.1))  # not emulated: ignored
    for k in range(10):
        ws.step(float(k), 1.0)
    pods = {p.name: p for p in ws.snapshot()}
    assert set(pods) == {"web-abc12-p0000", "web-abc12-p0001", "web-abc12-p0002"}
    ready = [pods["web-abc12-p0000"], pods["web-abc12-p0001"]]
    # capacity 2 x 50 = 100 req/s < 120: served at capacity, CPU at the limit
    assert sum(p.requests_total for p in ready) == pytest.approx(1000.0, rel=1e-6)
    assert all(p.cpu_seconds == pytest.approx(10 * 0.2) for p in ready)
    assert pods["web-abc12-p0002"].requests_total == 0 and pods["web-abc12-p0002"].cpu_seconds == 0
    b = ready[0].buckets
    assert all(x <= y + 1e-9 for x, y in itertools.pairwise(b))
    assert b[-1] == pytest.approx(500.0)
    # the histogram is the model's latency distribution: the backlog makes it slow
    q = service.histogram_quantile(
        0.95,
        torch.tensor([b], dtype=torch.float64),
        torch.tensor(service.DEFAULT_BUCKETS, dtype=torch.float64),
    )
    assert float(q[0]) > 1.0


def test_exposition_has_the_names_and_labels_the_default_queries_read():
    from prometheus_client.parser import text_string_to_metric_families

    ws = WorkloadSet([Workload("a", "web", Load.constant(10.0))])
    _pods(ws, 1, 0)
    ws.step(0.0, 1.0)
    samples = {
        (s.name, tuple(sorted(s.labels.items())))
        for f in text_string_to_metric_families(exposition(ws).decode())
        for s in f.samples
    }
    pod = (("namespace", "a"), ("pod", "web-abc12-p0000"))
    for name, extra in (
        ("http_requests_total", ()),
        ("http_request_duration_seconds_bucket", (("le", "0.005"),)),
        ("http_request_duration_seconds_bucket", (("le", "+Inf"),)),
        ("http_request_duration_seconds_count", ()),
        ("container_cpu_usage_seconds_total", (("container", "app"),)),
        (
            "kube_pod_container_resource_requests",
            (("container", "app"), ("resource", "cpu"), ("unit", "core")),
        ),
    ):
        assert (name, tuple(sorted(pod + extra))) in samples, name
    for metric in (
        "http_requests_total",
        "http_request_duration_seconds_bucket",
        "container_cpu_usage_seconds_total",
        "kube_pod_container_resource_requests",
    ):
        assert metric in " ".join(features.PROMQL.values())
