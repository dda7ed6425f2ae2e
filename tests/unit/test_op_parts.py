"""The operator's small pure parts: settings, Prometheus results, models, the HPA fallback, the
Lease, the writer's conflict rule."""

from __future__ import annotations

import json
import math
from urllib.parse import parse_qs

import httpx
import pytest
from opfakes import FakeKube, busy_model

from qscale import features
from qscale.operator import fallback
from qscale.operator.kube import ApiError
from qscale.operator.lease import LeaderElector
from qscale.operator.models import CONFIGMAP_LIMIT, ModelError, ModelRegistry, artifact_configmap
from qscale.operator.prom import NO_CPU_PEAK, Points, PromClient, QueryGroup, RangeGap, pick_lags
from qscale.operator.settings import Settings, SettingsError
from qscale.operator.spec import TEMPLATES
from qscale.operator.writer import Outcome, ScaleRequest, scale_one


def test_settings_from_env():
    s = Settings.from_env(
        {"QSCALE_NAMESPACES": "a, b,", "QSCALE_TICK_S": "0.5", "QSCALE_TORCH_THREADS": "2"}
    )
    assert s.namespaces == ("a", "b") and s.tick_s == 0.5 and s.torch_threads == 2
    assert Settings.from_env({}) == Settings()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"QSCALE_TICK_S": "fast"}, "QSCALE_TICK_S='fast' is not a valid float"),
        ({"QSCALE_TICK_S": "0"}, "QSCALE_TICK_S must be > 0"),
        ({"QSCALE_WRITE_CONCURRENCY": "0"}, "must be >= 1"),
        ({"QSCALE_PROMETHEUS_URL": "prom:9090"}, "http(s) URL"),
    ],
)
def test_bad_settings_are_one_line(env, message):
    with pytest.raises(SettingsError, match=None) as e:
        Settings.from_env(env)
    assert message in str(e.value)


@pytest.mark.parametrize(
    ("points", "expected"),
    [
        # 30 minutes of points 60 s apart, rising
        (
            [(t, 1000.0 + t) for t in range(-860, 941, 60)],
            (1940.0, 1880.0, 1640.0, 1040.0, 1940.0, 1940.0, 0.0),
        ),
        # falling: the 15-minute peak is 15 minutes back, the 30-minute one 30 minutes back
        (
            [(t, 3000.0 - t) for t in range(-860, 941, 60)],
            (2060.0, 2120.0, 2360.0, 2960.0, 2960.0, 3860.0, 0.0),
        ),
        # the newest point is 60 s old: everything as of it, with its age
        (
            [(t, 1000.0 + t) for t in range(-890, 881, 60)],
            (1850.0, 1790.0, 1550.0, 950.0, 1850.0, 1850.0, 90.0),
        ),
        # a series that began inside the range: its first point's window was not whole (a
        # third of the traffic); the history there is after it reads flat before its start
        ([(820.0, 2.0), (880.0, 5.0), (940.0, 7.0)], (7.0, 5.0, 5.0, 5.0, 7.0, 7.0, 0.0)),
        ([(880.0, 2.0), (940.0, 7.0)], (7.0, 7.0, 7.0, 7.0, 7.0, 7.0, 0.0)),
        ([(940.0, 2.0)], (2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 0.0)),  # all there is
        ([(880.0, math.nan), (940.0, 7.0)], (7.0, 7.0, 7.0, 7.0, 7.0, 7.0, 0.0)),  # NaN: no point
        ([], None),
        ([(940.0, math.nan)], None),
    ],
)
def test_pick_lags(points, expected):
    got = pick_lags(points, 940.0)
    assert (got and got[:7]) == expected
    if got is not None:  # the points used: finite ones of the last 30 minutes, newest last
        finite = {p for p in points if math.isfinite(p[1])}
        assert set(got[7]) <= finite and got[7][-1] == max(finite)


def test_the_points_used_leave_out_a_first_window_that_was_not_whole():
    got = pick_lags([(820.0, 2.0), (880.0, 5.0), (940.0, 7.0)], 940.0)
    assert got is not None and got[7] == [(880.0, 5.0), (940.0, 7.0)]


def test_a_gap_is_missing_data_not_an_older_value():
    """After an outage, the 1-minute-ago point must not be read from 10 minutes earlier."""
    points = [(t, 450.0) for t in range(40, 341, 60)] + [(880.0, 220.0), (940.0, 200.0)]
    points = [p for p in points if p[0] != 880.0]  # the outage ate -1m
    with pytest.raises(RangeGap, match="60s"):
        pick_lags(points, 940.0)


@pytest.mark.asyncio
async def test_fetch_is_five_queries_per_group_mapped_back_by_labels():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        form = {k: v[0] for k, v in parse_qs(request.content.decode()).items()}
        seen.append((request.url.path, form["query"]))
        if "prom-down" in str(request.url):
            raise httpx.ConnectError("refused")
        series = lambda d, v: {"metric": {"namespace": "a", "deployment": d}, "value": [1, v]}  # noqa: E731
        if request.url.path.endswith("query_range"):
            end = float(form["end"])
            vals = [[end - 1800 + 60 * k, "10"] for k in range(31)]
            res = [{"metric": {"namespace": "a", "deployment": "x"}, "values": vals}]
        elif form["query"].startswith("timestamp("):
            res = [series("x", form["time"])]  # a rate() is as fresh as the query
        elif "http_request_duration" in form["query"]:
            res = [series("x", "NaN"), series("y", "0.2")]
        elif form["query"].endswith("[30m:1m]"):  # the points behind the default cpu_peak
            t = float(form["time"]) // 60 * 60
            pts = [[t - 60 * k, "2.5" if k == 7 else "1.5"] for k in range(31)]
            res = [{"metric": {"namespace": "a", "deployment": "x"}, "values": pts}]
        else:
            res = [series("x", "0.5"), series("zzz", "9")]
        return httpx.Response(200, json={"status": "success", "data": {"result": res}})

    client = PromClient(transport=httpx.MockTransport(handler))
    qs = [features.PROMQL[k] for k in TEMPLATES]
    groups = [
        QueryGroup("http://prom", *qs, (("a", "x"), ("a", "y"))),
        QueryGroup("http://prom-down", *qs, (("a", "x"),)),
    ]
    out = await client.fetch(groups, 1_800_000_000.5)
    await client.close()
    assert len(seen) == 10
    assert (
        all("x|y" in q for p, q in seen[:5])
        and sum(p.endswith("query_range") for p, _ in seen) == 2
    )
    x = out[groups[0]][("a", "x")]
    assert x.has_rate and x.rate_15m == 10.0 and x.cpu_utilization == 0.5 and x.age_s == 0.0
    assert x.has_cpu_peak and x.cpu_peak_cores == 2.5 and x.rate_peak_30m == 10.0
    assert len(x.cpu_points) == 31 and x.cpu_points[-1][0] <= 1_800_000_000.5
    assert len(x.rate_points) == 31 and all(v == 10.0 for _, v in x.rate_points)
    assert not any("max_over_time" in q for _, q in seen[:5])  # its points were asked instead
    # a NaN p95 while 10 req/s flow is missing, with its reason (not "p95 at the SLO")
    assert not x.has_latency and not x.present
    assert x.gaps == ["latency_p95: no value while requests flow"] and not x.errors
    y = out[groups[0]][("a", "y")]
    assert not y.present and y.has_latency and not y.has_rate and not y.has_cpu
    assert not y.has_cpu_peak
    down = out[groups[1]][("a", "x")]
    assert not down.present and len(down.errors) == 5 and "ConnectError" in down.errors[0]


def test_models_are_verified_pinned_and_shared(tmp_path):
    d = busy_model(tmp_path / "m")
    cm, digest = artifact_configmap(d, "m", "ns")
    reg = ModelRegistry(tmp_path / "nothing")
    assert isinstance(reg.default(), ModelError)
    a = reg.put("ns", "m", digest, {**cm, "metadata": {**cm["metadata"], "resourceVersion": "1"}})
    b = reg.put("ns", "m2", digest, {**cm, "metadata": {**cm["metadata"], "resourceVersion": "7"}})
    assert a is b  # same artifact: loaded once
    bad = reg.put("ns", "m", "f" * 64, cm)
    assert isinstance(bad, ModelError) and "sha256 mismatch" in str(bad)
    tampered = json.loads(json.dumps(cm))
    tampered["binaryData"]["model.pt"] = tampered["binaryData"]["state_dict.pt"]
    got = reg.put("ns", "t", digest, tampered)
    assert isinstance(got, ModelError) and "does not match the manifest" in str(got)
    assert "ConfigMap t" in str(got) and "qscale-model-" not in str(got)  # no temp path
    assert isinstance(reg.put("ns", "gone", digest, None), ModelError)
    (tmp_path / "big").mkdir()
    for f in ("manifest.json", "model.pt", "state_dict.pt"):
        (tmp_path / "big" / f).write_bytes(b"x" * (CONFIGMAP_LIMIT // 2))
    with pytest.raises(ModelError, match="1 MiB"):
        artifact_configmap(tmp_path / "big", "big", "ns")


@pytest.mark.parametrize(
    ("replicas", "ready", "cpu", "lo", "hi", "expected"),
    [
        (2, 2, 1.4, 1, 10, 4),  # 140 % vs 70 %: double
        (4, 4, 0.7, 1, 10, 4),  # on target
        (4, 4, math.nan, 1, 10, 4),  # no metric: hold
        (12, 12, math.nan, 1, 10, 10),  # no metric, above max: the bound
        (1, 1, math.nan, 3, 10, 3),  # below min: the bound
        (4, 2, 0.35, 1, 10, 4),  # half the pods starting: their share of CPU is theirs
    ],
)
def test_fallback_is_the_hpa_rule(replicas, ready, cpu, lo, hi, expected):
    ((got, _why, state),) = fallback.hpa_decide(
        [fallback.FallbackInput(replicas, ready, cpu, lo, hi, target=0.7, interval_s=15.0)], 1e9
    )
    assert got == expected and state is not None


@pytest.mark.asyncio
async def test_lease_one_leader_takeover_after_expiry_and_release():
    class LeaseKube(FakeKube):
        lease = None

        async def get(self, path, **_):
            if self.down:
                raise ApiError(0, "down")
            if self.lease is None:
                raise ApiError(404, "nf")
            return json.loads(json.dumps(self.lease))

        async def post(self, path, body):
            self.lease = {**body, "metadata": {**body["metadata"], "resourceVersion": "1"}}
            return self.lease

        async def put(self, path, body):
            if body["metadata"]["resourceVersion"] != self.lease["metadata"]["resourceVersion"]:
                raise ApiError(409, "conflict")
            rv = str(int(self.lease["metadata"]["resourceVersion"]) + 1)
            self.lease = {**body, "metadata": {**body["metadata"], "resourceVersion": rv}}
            return self.lease

    k = LeaseKube()
    a = LeaderElector(k, "ns", "l", "a", duration_s=1.0)
    b = LeaderElector(k, "ns", "l", "b", duration_s=1.0)
    assert await a.try_once() and not await b.try_once()
    assert await a.try_once() and not await b.try_once()  # renewals keep it
    import asyncio

    await asyncio.sleep(1.05)
    assert await b.try_once()  # a stopped renewing: b takes over
    assert not await a.try_once()
    await b.release()
    assert await a.try_once()
    k.down = True
    await asyncio.sleep(0.85)
    assert not await a.try_once()  # cannot renew: steps down before anyone may take over


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("outside", "conflict", "outcome", "final"),
    [
        (None, False, Outcome.APPLIED, 4),
        (None, True, Outcome.APPLIED, 4),  # a status update in between: retried
        (4, False, Outcome.ALREADY, 4),  # an earlier attempt landed
        (3, False, Outcome.SUPERSEDED, 3),  # somebody else scaled: dropped
    ],
)
async def test_writer_never_applies_a_step_twice(outside, conflict, outcome, final):
    k = FakeKube()
    k.add("a", "web", 2)
    if outside is not None:
        k.outside[("a", "web")] = outside
    if conflict:
        k.conflict_once.add(("a", "web"))
    res = await scale_one(k, ScaleRequest("a", "web", 2, 4, "1"))
    assert res.outcome == outcome and k.scales[("a", "web")]["spec"]["replicas"] == final


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (500, "SECRET internal page", "request_rate: HTTP 500"),
        (200, '{"status": "error", "errorType": "bad_data", "error": "SECRET"}',
         "request_rate: query failed (bad_data)"),
        (200, '{"status": "error", "errorType": "SECRET", "error": "SECRET"}',
         "request_rate: query failed"),
        (400, '{"status": "error", "errorType": "bad_data", "error": "parse SECRET"}',
         "request_rate: HTTP 400 (bad_data)"),
        (200, "SECRET not json", "request_rate: HTTP 200"),
        (200, '{"status": "success", "data": {"result": "SECRET"}}', "request_rate: bad response"),
        (200, '{"status": "success", "data": "SECRET"}', "request_rate: bad response"),
    ],
)  # fmt: skip
async def test_a_reply_body_never_reaches_the_errors(status, body, expected):
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=body.encode())

    client = PromClient(transport=httpx.MockTransport(handler))
    qs = [features.PROMQL[k] for k in TEMPLATES]
    group = QueryGroup("http://prom", *qs, (("a", "x"),))
    out = await client.fetch([group], 1e9)
    await client.close()
    errors = out[group][("a", "x")].errors
    assert errors[0] == expected and not any("SECRET" in e for e in errors)


def test_prometheus_addresses_come_from_an_allow_list():
    s = Settings.from_env(
        {
            "QSCALE_PROMETHEUS_URL": "http://prom:9090/",
            "QSCALE_PROMETHEUS_ALLOWED_URLS": "http://team-prom:9090, https://other/",
        }
    )
    assert s.prometheus_address("") == "http://prom:9090"
    assert s.prometheus_address("http://prom:9090/") == "http://prom:9090"
    assert s.prometheus_address("https://other") == "https://other"
    assert s.prometheus_address("http://127.0.0.1:6443") is None
    assert s.prometheus_address("http://team-prom:9090/api/v1/query?x=") is None
    with pytest.raises(SettingsError, match="QSCALE_PROMETHEUS_ALLOWED_URLS"):
        Settings.from_env({"QSCALE_PROMETHEUS_ALLOWED_URLS": "file:///etc/passwd"})


@pytest.mark.asyncio
async def test_results_are_keyed_by_the_query_that_produced_them():
    """Two policies on one Deployment, one with its own failing query: the failure stays its
    own, it never reads the other's data."""

    def handler(request: httpx.Request) -> httpx.Response:
        form = {k: v[0] for k, v in parse_qs(request.content.decode()).items()}
        if "broken_metric" in form["query"]:
            return httpx.Response(422, json={"status": "error", "errorType": "execution"})
        series = {"metric": {"namespace": "a", "deployment": "web"}}
        if request.url.path.endswith("query_range"):
            end = float(form["end"])
            series["values"] = [[end - 900 + 60 * k, "10"] for k in range(16)]
        else:
            series["value"] = [1, "0.5"]
        return httpx.Response(200, json={"status": "success", "data": {"result": [series]}})

    qs = [features.PROMQL[k] for k in TEMPLATES]
    mine = qs[0].replace("http_requests_total", "broken_metric")
    default = QueryGroup("http://prom", *qs, (("a", "web"),))
    own = QueryGroup("http://prom", mine, *qs[1:], (("a", "web"),))
    client = PromClient(transport=httpx.MockTransport(handler))
    out = await client.fetch([default, own], 1e9)
    await client.close()
    assert out[default][("a", "web")].present
    broken = out[own][("a", "web")]
    assert not broken.has_rate and "request_rate: HTTP 422 (execution)" in broken.errors


@pytest.mark.asyncio
async def test_a_rate_sampled_long_ago_is_stale():
    """A recording rule that lags: the range has points now (lookback), timestamp() says the
    sample is 200 s old."""

    def handler(request: httpx.Request) -> httpx.Response:
        form = {k: v[0] for k, v in parse_qs(request.content.decode()).items()}
        metric = {"namespace": "a", "deployment": "x"}
        if request.url.path.endswith("query_range"):
            end = float(form["end"])
            res = [{"metric": metric, "values": [[end - 60 * k, "10"] for k in range(16)]}]
        elif form["query"].startswith("timestamp("):
            res = [{"metric": metric, "value": [1, str(float(form["time"]) - 200)]}]
        else:
            res = [{"metric": metric, "value": [1, "0.2"]}]
        return httpx.Response(200, json={"status": "success", "data": {"result": res}})

    qs = [features.PROMQL[k] for k in TEMPLATES]
    group = QueryGroup("http://prom", *qs, (("a", "x"),))
    client = PromClient(transport=httpx.MockTransport(handler))
    out = await client.fetch([group], 1_800_000_000.0)
    await client.close()
    x = out[group][("a", "x")]
    assert x.present and x.age_s == pytest.approx(200.0)


class FlakyScale:
    """A scale subresource behind an API server that answers 429/5xx or loses a response
    (``lost``: the write lands, the reply never comes)."""

    def __init__(self, script: list[str]) -> None:
        self.script, self.replicas, self.rv, self.landed = list(script), 2, 1, 0

    async def patch_merge(self, path, body):
        from qscale.operator.kube import ApiError

        step = self.script.pop(0) if self.script else "ok"
        if step in ("429", "503"):
            raise ApiError(int(step), "try later")
        if body.get("metadata", {}).get("resourceVersion") != str(self.rv):
            raise ApiError(409, "conflict")
        self.replicas, self.rv, self.landed = body["spec"]["replicas"], self.rv + 1, self.landed + 1
        if step == "lost":
            raise ApiError(0, "connection reset")
        return {"spec": {"replicas": self.replicas}, "metadata": {"resourceVersion": str(self.rv)}}

    async def get(self, path):
        return {"spec": {"replicas": self.replicas}, "metadata": {"resourceVersion": str(self.rv)}}


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("script", "outcome", "final", "landed"),
    [
        (["429", "ok"], Outcome.APPLIED, 4, 1),
        (["503", "429", "ok"], Outcome.APPLIED, 4, 1),
        (["lost"], Outcome.ALREADY, 4, 1),  # the retry meets a 409: never applied twice
        (["503", "503", "503"], Outcome.FAILED, 2, 0),  # the budget is spent: next tick
    ],
)
async def test_writer_backs_off_on_429_and_5xx_and_never_double_applies(
    monkeypatch, script, outcome, final, landed
):
    import qscale.operator.writer as writer

    monkeypatch.setattr(writer, "BACKOFF_S", 0.001)
    k = FlakyScale(script)
    res = await scale_one(k, ScaleRequest("a", "web", 2, 4, "1"))
    assert (res.outcome, k.replicas, k.landed) == (outcome, final, landed)


@pytest.mark.asyncio
@pytest.mark.parametrize("peak", ["none", "failed"])
async def test_no_cpu_history_yet_reads_flat_but_a_failed_peak_query_is_missing(peak):
    """A Deployment that just started has no point of the 30-minute CPU subquery yet (they fall
    on whole minutes): the peak reads the CPU now, and the status says so. A failed query is
    missing data: the policy holds."""

    def handler(request: httpx.Request) -> httpx.Response:
        form = {k: v[0] for k, v in parse_qs(request.content.decode()).items()}
        metric = {"namespace": "a", "deployment": "x"}
        if form["query"].endswith("[30m:1m]"):  # the points behind the default cpu_peak
            if peak == "failed":
                return httpx.Response(422, json={"status": "error", "errorType": "bad_data"})
            res = []
        elif request.url.path.endswith("query_range"):
            res = [{"metric": metric, "values": [[float(form["end"]), "10"]]}]
        else:
            res = [{"metric": metric, "value": [float(form["time"]), "0.4"]}]
        return httpx.Response(200, json={"status": "success", "data": {"result": res}})

    qs = [features.PROMQL[k] for k in TEMPLATES]
    group = QueryGroup("http://prom", *qs, (("a", "x"),))
    client = PromClient(transport=httpx.MockTransport(handler))
    x = (await client.fetch([group], 1_800_000_000.0))[group][("a", "x")]
    await client.close()
    assert math.isnan(x.cpu_peak_cores)
    if peak == "none":
        assert x.present and x.gaps == [NO_CPU_PEAK] and not x.errors
    else:
        assert not x.present and x.errors == ["cpu_peak: HTTP 422 (bad_data)"]


def test_points_read_as_the_pairs_they_hold_in_a_fraction_of_the_memory():
    import sys

    pairs = [(1_800_000_000.0 + 60.0 * i, 10.0 + i) for i in range(31)]
    p = Points(pairs)
    assert len(p) == 31 and list(p) == pairs and p == tuple(pairs)
    assert p[0] == pairs[0] and p[-1] == pairs[-1] and p[5] == pairs[5]
    assert list(p[-4:]) == pairs[-4:] and isinstance(p[-4:], Points)
    assert list(p[::10]) == pairs[::10]
    assert list(p[40:]) == [] and not Points() and p
    with pytest.raises(IndexError):
        p[31]
    as_tuples = sys.getsizeof(tuple(pairs)) + sum(
        sys.getsizeof(x) + 2 * sys.getsizeof(1.0) for x in pairs
    )
    held = sys.getsizeof(p) + sys.getsizeof(p._a)
    assert held * 4 < as_tuples, (held, as_tuples)
