"""The one definition of the observation vector, and of the Prometheus queries behind it.

The simulator and the operator both build observations with :func:`compute`, from the same raw
signals (:class:`FeatureInputs`), so a model never sees features in training that serving
computes differently. Every raw signal is something a cluster shows at that moment:

==================  =========================================================================
signal              where it comes from in a cluster (the simulator models the same path)
==================  =========================================================================
cpu_utilization     :data:`PROMQL` ``cpu_utilization``: cAdvisor's CPU counter over a 1 m rate
                    window / the pods' CPU requests (kube-state-metrics), for all pods of the
                    Deployment, starting ones included; lagged by cAdvisor and the scrape.
cpu_limit_ratio     the Deployment's pod template: CPU limit / CPU request (1 with no limit).
p95_s               :data:`PROMQL` ``latency_p95``: ``histogram_quantile(0.95, ...)`` over the
                    app's latency histogram (bucket-quantized, 1 m window, scrape lag).
rate_*              :data:`PROMQL` ``request_rate``, a range query: the rate now and 1, 5 and 15
                    minutes ago, and the highest of its points 60 s apart over the last 15
                    and 30 minutes (``rate_peak_15m``, ``rate_peak_30m``). The app's counter
                    counts *served* requests (it flattens at capacity during a burst); an
                    ingress counter counts arrivals. ``rate_forecast``: Holt's level and trend
                    over the same points, extrapolated :data:`FORECAST_REACH_S` past the newest
                    (:func:`rate_forecast`, the same function in the simulator and operator).
busy_peak_30m       :data:`PROMQL` ``cpu_peak``: the highest of the Deployment's CPU use (cores,
                    1 m rate, points 60 s apart) over the last 30 minutes, in pods' worth of
                    the pod template's CPU limit: what the HPA's 30-minute scale-down
                    stabilization holds on to.
replicas, ready     the Deployment's ``spec.replicas`` and ``status.readyReplicas``.
min_replicas        the policy's bound.
capacity_rps        the requests/s one pod serves, as the policy declares it
                    (``spec.capacity.requestsPerSecondPerPod``, KEDA's per-pod threshold
                    found by load-testing one pod); NaN when it declares none.
since_scale_*       the shield's own memory of scale events (kept in the policy's status).
slo_priority        the trade-off the policy sets (``spec.slo.priority``, 1 by default): how
                    much a minute over the SLO weighs against the pods that would prevent it.
==================  =========================================================================

``maxReplicas`` is deliberately *not* a feature: users set it as a safety cap, and a feature
that read it would make the policy's behaviour depend on an arbitrary number (worse: on a
number evaluation once derived from the traffic's future peak).

Every feature is scale-free except ``log_replicas``, which tells the policy the size of the
service it is looking at (latency's knee sits lower for small Deployments). Changing a name,
the order, a transform, a clip range or a query changes :data:`SPEC_HASH`; model artifacts
record the hash and refuse to load against another spec. The arithmetic of :func:`compute` is
pinned under the hash by a golden vector (:data:`GOLDEN`): a change to it that leaves the prose
alone is refused too, until the spec version is bumped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass

import torch

SPEC_VERSION = 7

#: Seconds a scale event keeps influencing the "time since" features; beyond it they read 1.
SINCE_SCALE_HORIZON_S = 300.0
#: Look-backs of the request-rate trend features, in seconds (points of the range query).
RATE_LAGS_S: tuple[float, ...] = (60.0, 300.0, 900.0)
#: The rate window of every query (``[1m]``): what the simulator averages over, too.
RATE_WINDOW_S = 60.0
#: ``rate_peak_15m`` is the highest point of the range query over this span, points this far
#: apart (16 points: now, 60 s ago, ..., 900 s ago).
RATE_PEAK_SPAN_S = 900.0
RATE_PEAK_STEP_S = 60.0
#: ``rate_peak_30m`` and ``busy_peak_30m``: the highest point over this span (31 points, 60 s
#: apart); the range query reaches this far back.
LONG_PEAK_SPAN_S = 1800.0
#: ``rate_forecast``: Holt's smoothing of the level and of the trend, per point of the range query
#: (60 s apart), and how far past the newest point the forecast reaches (one reach for every
#: service: about what a pod asked for now needs to start and show in the rate).
FORECAST_ALPHA = 0.9
FORECAST_BETA = 0.4
FORECAST_REACH_S = 120.0
#: ``log_replicas`` reads 1 at this many replicas.
REPLICAS_SCALE = 1000.0
#: The SLO priorities a policy may set: 2**-2 .. 2**5, 0.25-32 (``spec.slo.priority``; the
#: feature is their log2, and training draws them log-uniformly over this range).
SLO_PRIORITY_LOG2_MIN = -2.0
SLO_PRIORITY_LOG2_MAX = 5.0
SLO_PRIORITY_RANGE: tuple[float, float] = (2.0**SLO_PRIORITY_LOG2_MIN, 2.0**SLO_PRIORITY_LOG2_MAX)

# A Deployment's pods are named <deployment>-<pod-template-hash>-<5 chars>; label_replace turns
# the pod label into a deployment label, so one query serves many Deployments at once.
_POD = "($deployment)-[a-z0-9]+-[a-z0-9]{5}"
_TO_DEPLOYMENT = '"deployment", "$1", "pod", "(.+)-[a-z0-9]+-[a-z0-9]{5}"'


def _per_deployment(expr: str) -> str:
    return f"sum by (namespace, deployment) (label_replace({expr}, {_TO_DEPLOYMENT}))"


#: The Deployment's CPU in use, cores (cAdvisor's counter, 1 m rate): both CPU queries' numerator.
_CPU_CORES = _per_deployment(
    "rate(container_cpu_usage_seconds_total"
    f'{{namespace=~"$namespace", pod=~"{_POD}", container!="", container!="POD"}}[1m])'
)


PROMQL: dict[str, str] = {
    "request_rate": _per_deployment(
        f'rate(http_requests_total{{namespace=~"$namespace", pod=~"{_POD}"}}[1m])'
    ),
    "latency_p95": (
        "histogram_quantile(0.95, sum by (namespace, deployment, le) (label_replace("
        f'rate(http_request_duration_seconds_bucket{{namespace=~"$namespace", pod=~"{_POD}"}}[1m]),'
        f" {_TO_DEPLOYMENT})))"
    ),
    "cpu_utilization": (
        _CPU_CORES
        + " / "
        + _per_deployment(
            f'kube_pod_container_resource_requests{{namespace=~"$namespace", pod=~"{_POD}",'
            ' resource="cpu"}'
        )
    ),
    "cpu_peak": f"max_over_time({_CPU_CORES}[30m:1m])",
}
"""The default queries, templated on ``$namespace`` and ``$deployment``. Both placeholders sit
inside regex matchers (``=~``), so the operator fills them with one name or with ``a|b|c`` to
serve every Deployment due in a tick with one query per template; each query must return one
series per Deployment labelled ``namespace`` and ``deployment``. ``request_rate`` is read as a
range query over the last 30 minutes (the ``rate_*`` signals); the other three are instant
queries: ``cpu_peak`` (a subquery: the highest CPU in use, in cores, at points 60 s apart over
30 minutes) is divided by the pod template's CPU limit (cores per pod) into
``busy_peak_30m``. Metric names are the conventional ones: ``http_requests_total`` and
``http_request_duration_seconds`` (prometheus-client's defaults) from the app, cAdvisor's
``container_cpu_usage_seconds_total`` and kube-state-metrics'
``kube_pod_container_resource_requests``.
"""


@dataclass(frozen=True)
class Feature:
    """One entry of the observation vector: how it is computed and where it is clipped."""

    name: str
    formula: str
    lo: float
    hi: float


FEATURES: tuple[Feature, ...] = (
    Feature("cpu_busy",
            "cpu_utilization / cpu_limit_ratio (busy fraction of the CPU limit)", 0.0, 1.5),
    Feature("log2_p95_vs_slo",
            "log2(p95 / SLO); no requests at all reads as the low clip", -4.0, 4.0),
    Feature("rate_trend_1m", "ln(request rate now / request rate 60 s ago)", -2.0, 2.0),
    Feature("rate_trend_5m", "ln(request rate now / request rate 300 s ago)", -2.0, 2.0),
    Feature("rate_trend_15m", "ln(request rate now / request rate 900 s ago)", -2.0, 2.0),
    Feature("rate_peak_15m",
            "ln(highest request rate of the last 15 min, points 60 s apart / rate now)", 0.0, 3.0),
    Feature("rate_peak_30m",
            "ln(highest request rate of the last 30 min, points 60 s apart / rate now)", 0.0, 3.0),
    Feature("rate_forecast",
            "ln(request rate forecast 120 s past the newest point (Holt 0.9/0.4 over the range "
            "query's points 60 s apart) / rate now)", -2.0, 2.0),
    Feature("busy_peak_30m",
            "ln(highest busy pods of the last 30 min, points 60 s apart / busy pods now)",
            0.0, 3.0),
    Feature("pending_fraction", "(replicas - ready replicas) / replicas", 0.0, 1.0),
    Feature("log_replicas", "ln(1 + replicas) / ln(1 + 1000)", 0.0, 1.0),
    Feature("min_over_replicas", "min replicas / replicas (1: no room to scale down)", 0.0, 1.0),
    Feature("since_scale_up", "seconds since last scale-up / 300", 0.0, 1.0),
    Feature("since_scale_down", "seconds since last scale-down / 300", 0.0, 1.0),
    Feature("load_per_pod",
            "request rate now / (declared requests/s per pod x replicas); -1: none declared",
            -1.0, 4.0),
    Feature("slo_priority",
            "log2(the policy's SLO priority: the weight of a step over the SLO against the "
            "default trade-off's)", SLO_PRIORITY_LOG2_MIN, SLO_PRIORITY_LOG2_MAX),
)  # fmt: skip

FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)
N_FEATURES = len(FEATURES)


def _spec_hash() -> str:
    spec = {
        "version": SPEC_VERSION,
        "features": [[f.name, f.formula, f.lo, f.hi] for f in FEATURES],
        "since_horizon_s": SINCE_SCALE_HORIZON_S,
        "rate_lags_s": list(RATE_LAGS_S),
        "rate_window_s": RATE_WINDOW_S,
        "rate_peak": [RATE_PEAK_SPAN_S, RATE_PEAK_STEP_S],
        "long_peak_span_s": LONG_PEAK_SPAN_S,
        "forecast": [FORECAST_ALPHA, FORECAST_BETA, FORECAST_REACH_S],
        "replicas_scale": REPLICAS_SCALE,
        "promql": PROMQL,
    }
    blob = json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


#: Stable fingerprint of names, order, normalization and queries; artifacts store it.
SPEC_HASH: str = _spec_hash()

_LO = torch.tensor([f.lo for f in FEATURES])
_HI = torch.tensor([f.hi for f in FEATURES])
_LOG_SCALE = math.log1p(REPLICAS_SCALE)


@dataclass(frozen=True)
class FeatureInputs:
    """Raw signals for a batch of targets; each field is a tensor of shape ``[B]`` (see the
    module docstring for where each comes from). Rates may be in any unit shared by the four."""

    cpu_utilization: torch.Tensor
    cpu_limit_ratio: torch.Tensor
    p95_s: torch.Tensor
    slo_s: torch.Tensor
    rate_now: torch.Tensor
    rate_1m: torch.Tensor
    rate_5m: torch.Tensor
    rate_15m: torch.Tensor
    rate_peak_15m: torch.Tensor
    """The highest point of the rate range query over the last 15 minutes (60 s apart)."""
    rate_peak_30m: torch.Tensor
    """The same over the last 30 minutes."""
    busy_peak_30m: torch.Tensor
    """The highest busy pods (pods' worth of CPU limit in use) of the last 30 minutes, points
    60 s apart: :data:`PROMQL` ``cpu_peak`` over the pod template's CPU limit per pod."""
    replicas: torch.Tensor
    ready_replicas: torch.Tensor
    min_replicas: torch.Tensor
    since_scale_up_s: torch.Tensor
    since_scale_down_s: torch.Tensor
    capacity_rps: torch.Tensor | None = None
    """Declared requests/s per pod (NaN or ``None``: not declared); the rate actions of
    :mod:`qscale.actions` size with it and are unavailable without it."""
    slo_priority: torch.Tensor | None = None
    """The policy's SLO priority (``None``: 1, the default trade-off)."""
    rate_forecast: torch.Tensor | None = None
    """The request rate :data:`FORECAST_REACH_S` past the newest point of the range query
    (:func:`rate_forecast` of its points; ``None`` or NaN: no forecast, and the forecast
    actions of :mod:`qscale.actions` hold)."""

    def declared_capacity(self) -> torch.Tensor:
        """``[B]`` the declared per-pod capacity, NaN where none (or a non-positive one) is."""
        if self.capacity_rps is None:
            return torch.full_like(self.replicas, math.nan)
        cap = self.capacity_rps.to(self.replicas.dtype)
        return torch.where(cap > 0, cap, math.nan)


#: A point of the last 30 minutes counts toward :func:`estimate_capacity` when the Deployment
#: did at least this many pods' worth of work then (below it, CPU noise and idle overhead
#: dominate the ratio) ...
CAPACITY_EST_MIN_BUSY = 0.5
#: ... and at most this share of the pods ready now (near saturation an ingress counter's
#: arrivals run ahead of the work done) ...
CAPACITY_EST_MAX_LOAD = 0.9
#: ... and an estimate needs this many such points of the 31.
CAPACITY_EST_MIN_POINTS = 10


def estimate_capacity(
    rate_points: torch.Tensor, busy_points: torch.Tensor, ready: torch.Tensor
) -> torch.Tensor:
    """``[B]`` requests/s one pod serves at its CPU limit, estimated from the last 30 minutes:
    the median over the points 60 s apart (``[B, P]`` each, oldest first: the request-rate
    range query and the CPU counter's busy pods at the same instants) of rate / busy pods,
    over the points where the work was measurable and below saturation; NaN where fewer than
    :data:`CAPACITY_EST_MIN_POINTS` qualify. The median rides over the minute or so the CPU
    counter lags the request rate around a step."""
    rate = rate_points.to(torch.float32)
    busy = busy_points.to(torch.float32)
    ok = (busy >= CAPACITY_EST_MIN_BUSY) & (busy <= CAPACITY_EST_MAX_LOAD * ready[:, None])
    ok &= (rate > 0) & torch.isfinite(rate) & torch.isfinite(busy)
    ratio = torch.where(ok, rate / torch.clamp(busy, min=1e-9), math.nan)
    est = torch.nanmedian(ratio, dim=1).values
    return torch.where(ok.sum(dim=1) >= CAPACITY_EST_MIN_POINTS, est, math.nan)


def rate_forecast(points: torch.Tensor) -> torch.Tensor:
    """``[B]`` the request rate :data:`FORECAST_REACH_S` after the newest of ``points``
    (``[B, P]``, the request-rate range query's points :data:`RATE_PEAK_STEP_S` apart, oldest
    first), by Holt's linear method: level and trend smoothed by :data:`FORECAST_ALPHA` and
    :data:`FORECAST_BETA` per point, the level + reach x trend, never below 0. A NaN point is a
    missing one (the level moves by the trend, the trend is kept); the first finite point
    starts the level with a flat trend (a short history is read as far as it goes); NaN where
    no point is finite. Causal: the past points only."""
    pts = points.to(torch.float64)
    level = torch.full_like(pts[:, 0], math.nan)
    trend = torch.zeros_like(level)
    a, b = FORECAST_ALPHA, FORECAST_BETA
    for k in range(pts.shape[1]):
        x = pts[:, k]
        seen = ~torch.isnan(x)
        started = ~torch.isnan(level)
        guess = level + trend
        new = torch.where(started, a * x + (1.0 - a) * guess, x)
        new_trend = torch.where(started, b * (new - level) + (1.0 - b) * trend, 0.0)
        level = torch.where(seen, new, guess)
        trend = torch.where(seen, new_trend, trend)
    steps = FORECAST_REACH_S / RATE_PEAK_STEP_S
    return torch.clamp(level + steps * trend, min=0.0).to(points.dtype)


def _forecast(x: FeatureInputs) -> torch.Tensor:
    """``[B]`` the forecast, NaN where none is given."""
    if x.rate_forecast is None:
        return torch.full_like(x.rate_now, math.nan)
    return x.rate_forecast.to(x.rate_now.dtype)


def forecast_rate(x: FeatureInputs) -> torch.Tensor:
    """``[B]`` the rate the forecast actions size for: the highest of the forecast, the
    30-minute peak and the rate now (NaN without a forecast)."""
    return torch.maximum(_forecast(x), torch.maximum(x.rate_peak_30m, x.rate_now))


def _log_ratio(now: torch.Tensor, before: torch.Tensor) -> torch.Tensor:
    """ln(now/before), with a floor relative to the larger rate so that idle periods read 0."""
    floor = 1e-3 * torch.maximum(now, before) + 1e-12
    return torch.log((now + floor) / (before + floor))


def busy_pods(cpu_utilization: torch.Tensor, cpu_limit_ratio: torch.Tensor, replicas: torch.Tensor):
    """Pods' worth of CPU limit in use: the work the Deployment is doing, in pods."""
    return cpu_utilization / torch.clamp(cpu_limit_ratio, min=1e-6) * replicas


def _busy_of(x: FeatureInputs, busy: torch.Tensor | None) -> torch.Tensor:
    return busy_pods(x.cpu_utilization, x.cpu_limit_ratio, x.replicas) if busy is None else busy


def peak_busy_pods(x: FeatureInputs, busy: torch.Tensor | None = None) -> torch.Tensor:
    """The work at the recent peak rate: busy pods x (15 min peak rate / rate now), never below
    the busy pods (with no requests at all, the busy pods themselves). ``busy``:
    :func:`busy_pods` of ``x`` where the caller has it already."""
    busy = _busy_of(x, busy)
    now = torch.clamp(x.rate_now, min=1e-12)
    ratio = torch.where(x.rate_now > 0, torch.maximum(x.rate_peak_15m, x.rate_now) / now, 1.0)
    return busy * ratio


def peak30_busy_pods(x: FeatureInputs, busy: torch.Tensor | None = None) -> torch.Tensor:
    """The highest busy pods of the last 30 minutes, never below the busy pods now: what the
    HPA's 30-minute scale-down stabilization sizes from (its highest recommendation).
    ``busy``: as for :func:`peak_busy_pods`."""
    return torch.maximum(x.busy_peak_30m, _busy_of(x, busy))


def _log2_priority(x: FeatureInputs) -> torch.Tensor:
    if x.slo_priority is None:
        return torch.zeros_like(x.replicas)
    return torch.log2(torch.clamp(x.slo_priority.to(x.replicas.dtype), min=1e-9))


def _load_per_pod(x: FeatureInputs, replicas: torch.Tensor) -> torch.Tensor:
    cap = x.declared_capacity()
    load = torch.clamp(x.rate_now, min=0.0) / (cap * replicas)
    return torch.where(torch.isnan(cap), -1.0, load)


#: Index of ``load_per_pod`` in the observation: below 0 means no capacity is declared.
LOAD_PER_POD = [f.name for f in FEATURES].index("load_per_pod")


def capacity_declared(obs: torch.Tensor) -> torch.Tensor:
    """``[B]`` bool from observations ``[B, N_FEATURES]``: a per-pod capacity is declared."""
    return obs[..., LOAD_PER_POD] >= 0.0


def compute(x: FeatureInputs) -> torch.Tensor:
    """Observation tensor ``[B, N_FEATURES]`` (float32), clipped to each feature's range.

    Missing or stale signals are the decision code's business (:func:`qscale.decision.decide`
    holds on them and never asks the network); here a non-finite value is merely kept from
    reaching the network (it becomes 0 after clipping). A NaN p95 with no requests at all is
    not missing: ``histogram_quantile`` has nothing to rank, and the latency reads as low.
    """
    replicas = torch.clamp(x.replicas, min=1.0)
    raw_busy = busy_pods(x.cpu_utilization, x.cpu_limit_ratio, x.replicas)
    busy = torch.clamp(raw_busy, min=0.0)
    idle = torch.isnan(x.p95_s) & (x.rate_now <= 0)
    p95 = torch.where(idle, torch.zeros_like(x.p95_s), x.p95_s)
    cols = (
        x.cpu_utilization / torch.clamp(x.cpu_limit_ratio, min=1e-6),
        torch.log2(torch.clamp(p95, min=1e-9) / torch.clamp(x.slo_s, min=1e-9)),
        _log_ratio(x.rate_now, x.rate_1m),
        _log_ratio(x.rate_now, x.rate_5m),
        _log_ratio(x.rate_now, x.rate_15m),
        _log_ratio(torch.maximum(x.rate_peak_15m, x.rate_now), x.rate_now),
        _log_ratio(torch.maximum(x.rate_peak_30m, x.rate_now), x.rate_now),
        _log_ratio(torch.clamp(_forecast(x), min=0.0), x.rate_now),
        _log_ratio(peak30_busy_pods(x, raw_busy), busy),
        (x.replicas - x.ready_replicas) / replicas,
        torch.log1p(torch.clamp(x.replicas, min=0.0)) / _LOG_SCALE,
        x.min_replicas / replicas,
        x.since_scale_up_s / SINCE_SCALE_HORIZON_S,
        x.since_scale_down_s / SINCE_SCALE_HORIZON_S,
        _load_per_pod(x, replicas),
        _log2_priority(x),
    )
    obs = torch.stack([c.to(torch.float32) for c in cols], dim=-1)
    obs = torch.nan_to_num(obs, nan=0.0, posinf=1e9, neginf=-1e9)
    return torch.minimum(torch.maximum(obs, _LO.to(obs.device)), _HI.to(obs.device))


_NAN = float("nan")

GOLDEN_INPUTS: tuple[tuple[float, ...], ...] = (
    # cpu_utilization, cpu_limit_ratio, p95_s, slo_s, rate_now, rate_1m, rate_5m, rate_15m,
    # rate_peak_15m, rate_peak_30m, busy_peak_30m, replicas, ready_replicas, min_replicas,
    # since_scale_up_s, since_scale_down_s, capacity_rps, slo_priority, rate_forecast
    (0.6, 2.0, 0.3, 0.25, 100.0, 90.0, 80.0, 120.0, 150.0, 180.0, 2.4, 5.0, 4.0, 2.0, 120.0,
     600.0, 50.0, 1.0, 130.0),
    (0.35, 1.0, _NAN, 0.25, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 30.0, _NAN,
     2.0, 0.0),
    (2.0, 1.0, 10.0, 0.1, 1000.0, 10.0, 5000.0, 20.0, 900.0, 5e4, 1e5, 2000.0, 0.0, 3.0, 1e9,
     299.0, 0.1, 100.0, 1e5),
    (_NAN, 0.0, _NAN, 0.3, 5.0, 7.0, 3.0, 5.0, 40.0, 40.0, _NAN, 0.0, 0.0, 1.0, 45.0, 150.0,
     10.0, _NAN, _NAN),
    (0.2, 4.0, 0.02, 0.5, 12.5, 25.0, 50.0, 200.0, 12.5, 300.0, 1.0, 37.0, 30.0, 10.0, 299.0,
     1.0, 0.0, 0.3, 5.0),
)  # fmt: skip
"""Fixed raw signals, one row per case, in :class:`FeatureInputs` field order (float64): a
typical service, an idle one (no requests, NaN p95), one past every clip, missing signals and
zero replicas, a falling rate (a non-positive capacity reads as none declared); SLO priorities
1, 2, one past the clip, NaN and 0.3; forecasts above the rate, idle, past the clip, missing and
falling."""

GOLDEN: dict[str, tuple[tuple[float, ...], ...]] = {
    "f8b1c53c7e26d3d8": (
        (0.3, 0.2630344, 0.1052495, 0.2228938, -0.1821218, 0.4049657, 0.5869878, 0.2620646,
         0.4694044, 0.2, 0.2593462, 0.4, 0.4, 1.0, 0.4, 0.0),
        (0.35, -4.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.1003288, 1.0, 0.0, 0.1, -1.0, 1.0),
        (1.5, 4.0, 2.0, -1.6054499, 2.0, 0.0, 3.0, 2.0, 3.0, 1.0, 1.0, 0.0015, 1.0, 0.9966667, 4.0,
         5.0),
        (0.0, 0.0, -0.3360727, 0.5101599, 0.0, 2.0724728, 2.0724728, 0.0, 0.0, 0.0, 0.0, 1.0, 0.15,
         0.5, 0.5, 0.0),
        (0.05, -4.0, -0.6921487, -1.3833019, -2.0, 0.0, 3.0, -0.9147934, 0.0, 0.1891892, 0.5265183,
         0.2702703, 0.9966667, 0.0033333, -1.0, -1.7369655),
    ),
}  # fmt: skip
"""What :func:`compute` gives on :data:`GOLDEN_INPUTS`, pinned per :data:`SPEC_HASH`. The hash
covers the spec's prose (names, formulas, clips, queries), this covers its arithmetic: a change
to :func:`compute` that keeps the prose would otherwise keep serving a model trained on other
features. :func:`golden_mismatch` compares them; model export and loading refuse on a mismatch."""

_GOLDEN_ATOL = 1e-6


def golden_inputs() -> FeatureInputs:
    """:data:`GOLDEN_INPUTS` as a batch (float64, CPU)."""
    names = [f.name for f in dataclasses.fields(FeatureInputs)]
    columns = zip(*GOLDEN_INPUTS, strict=True)
    return FeatureInputs(
        **{n: torch.tensor(c, dtype=torch.float64) for n, c in zip(names, columns, strict=True)}
    )


def golden_mismatch() -> str | None:
    """None when :func:`compute` still gives the golden vector pinned for :data:`SPEC_HASH`,
    else one line saying what to do."""
    expected = GOLDEN.get(SPEC_HASH)
    if expected is None:
        return (
            f"no golden feature vector is pinned for feature spec {SPEC_HASH}: add "
            "features.compute(features.golden_inputs()) to features.GOLDEN under it"
        )
    got = compute(golden_inputs())
    want = torch.tensor(expected, dtype=torch.float32)
    if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-6, atol=_GOLDEN_ATOL):
        return (
            f"features.compute() no longer gives the golden vector of feature spec {SPEC_HASH}: "
            "if the arithmetic changed on purpose, bump features.SPEC_VERSION, pin the new "
            "vector in features.GOLDEN and retrain the models"
        )
    return None


def fill_template(
    query: str, namespaces: list[str] | tuple[str, ...], deployments: list[str] | tuple[str, ...]
) -> str:
    """A query template with ``$namespace``/``$deployment`` filled by one or more names (a
    regex alternation; names are escaped for the regex and for the PromQL string)."""

    def alt(names):
        return "|".join(sorted({_escape(n) for n in names}))

    return query.replace("$namespace", alt(namespaces)).replace("$deployment", alt(deployments))


def _escape(name: str) -> str:
    # Kubernetes names are DNS labels/subdomains ([a-z0-9.-]); escape the dot for the regex and
    # the backslash for the PromQL string literal.
    return name.replace(".", "\\\\.")
