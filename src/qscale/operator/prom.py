"""Observations from Prometheus, batched: one query per metric template per tick.

Every policy due in a tick that uses the same Prometheus and the same four query templates is
served by the same five queries: :func:`qscale.features.fill_template` fills ``$namespace`` and
``$deployment`` with an alternation of every name, and the results (series labelled
``namespace`` and ``deployment``) are handed back per target. With the default queries that is
exactly 5 queries per tick however many policies are due (a policy with its own queries or its
own Prometheus adds a group of 5): the four templates and ``timestamp()`` of the rate's.

* ``request_rate`` is a range query over the last 30 minutes at a 1 m step: the rate now and 1,
  5 and 15 minutes ago (:data:`qscale.features.RATE_LAGS_S`) and the highest of its last 16 and
  of all 31 points (``rate_peak_15m``, ``rate_peak_30m``), all as of the series' newest point,
  whose age is the observation's ``age_s`` (a scrape that stopped, a Prometheus that lags:
  :func:`qscale.decision.decide` holds with ``METRICS_STALE`` past the operator's
  ``stale_after_s``). A history shorter than a look-back (a new Deployment, a Prometheus that
  just started) reads the oldest point there is:
  "no trend known" is a flat trend, as in the simulator, whose services have run at their first
  rate before an episode. The first point of a series that began inside the range is not
  used when there are others: its ``[1m]`` window was not whole (``rate()`` of a counter that
  existed for 20 of its 60 s reads a third of the traffic), and a trend read from it would be
  the series' birth, not the traffic's. A point missing *inside* the history (an outage of the
  scrape or of Prometheus) is a gap: the rate is missing until the window is whole again,
  never filled with another time's value (that would invent a trend).
* ``latency_p95``, ``cpu_utilization`` and ``cpu_peak`` (a subquery: the highest CPU in use,
  in cores, over 30 minutes) are instant queries. Of a ``cpu_peak`` that is one
  ``max_over_time(X)`` call (the default), ``X`` is asked instead and its points read
  (:func:`qscale.operator.promql.peak_points`): their highest is the peak (the same value), and
  with the rate's points at the same instants they give the per-pod capacity estimate
  (:func:`qscale.features.estimate_capacity`) for a policy that declares none. A ``NaN`` p95
  with no requests is a value (:func:`qscale.features.compute` reads it as idle); a ``NaN`` p95
  while requests flow is missing (a service that answers nothing must not look healthy).
* ``cpu_peak`` with no series while ``cpu_utilization`` has one is no history yet (its points
  fall on whole minutes; a Deployment that just started has none): the peak reads the CPU now,
  and the policy's ``MetricsAvailable`` says so. A failed ``cpu_peak`` query is missing data.
* A target with no series for a template, or a failed query, has that metric missing:
  :func:`qscale.decision.decide` then holds (``METRICS_MISSING``). An error is recorded as the
  template, the HTTP status and a fixed reason, never a reply's body. Each query has one
  deadline, whole (``QSCALE_QUERY_TIMEOUT_S``): a Prometheus that answers slowly, or trickles
  its reply, delays a tick by at most that, and fails only the policies of its group.

Queries are POSTed (form-encoded): an alternation of 1,000 names does not fit in a URL.
"""

from __future__ import annotations

import asyncio
import math
import time
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import overload

import httpx

from qscale import features
from qscale.operator import promql

__all__ = ["LOOKBACK_S", "Observation", "Points", "PromClient", "QueryGroup", "pick_lags"]

#: How far back the range query reaches (its start is the tick's time minus this).
LOOKBACK_S = max(*features.RATE_LAGS_S, features.RATE_PEAK_SPAN_S, features.LONG_PEAK_SPAN_S)
_STEP_S = features.RATE_PEAK_STEP_S


class Points(Sequence[tuple[float, float]]):
    """``(time, value)`` pairs, oldest first, held in one array of doubles: 16 bytes a point,
    where a tuple of two floats takes about 100 (1,000 policies keep two series of up to 31
    points each for a tick)."""

    __slots__ = ("_a",)

    def __init__(self, pairs: Iterable[tuple[float, float]] = ()) -> None:
        self._a = array("d")
        for t, v in pairs:
            self._a.append(t)
            self._a.append(v)

    def __len__(self) -> int:
        return len(self._a) // 2

    @overload
    def __getitem__(self, i: int) -> tuple[float, float]: ...
    @overload
    def __getitem__(self, i: slice) -> Points: ...
    def __getitem__(self, i: int | slice) -> tuple[float, float] | Points:
        if isinstance(i, slice):
            start, stop, step = i.indices(len(self))
            out = Points()
            if step == 1:
                out._a = self._a[2 * start : 2 * max(start, stop)]
            else:
                out = Points(self[j] for j in range(start, stop, step))
            return out
        n = len(self)
        if not -n <= i < n:
            raise IndexError("Points index out of range")
        i %= n
        return self._a[2 * i], self._a[2 * i + 1]

    def __iter__(self) -> Iterator[tuple[float, float]]:
        a = self._a
        return zip(a[0::2], a[1::2], strict=True)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Points):
            return self._a == other._a
        if isinstance(other, Sequence):
            return list(self) == [tuple(x) for x in other]
        return NotImplemented

    def __repr__(self) -> str:
        return f"Points({list(self)!r})"


@dataclass(slots=True)
class Observation:
    """What Prometheus says about one Deployment (NaN: no value)."""

    rate_now: float = math.nan
    rate_1m: float = math.nan
    rate_5m: float = math.nan
    rate_15m: float = math.nan
    rate_peak_15m: float = math.nan
    rate_peak_30m: float = math.nan
    p95_s: float = math.nan
    cpu_utilization: float = math.nan
    cpu_peak_cores: float = math.nan
    """The highest CPU in use of the last 30 minutes, cores (``cpu_peak``)."""
    rate_points: Sequence[tuple[float, float]] = field(default_factory=Points)
    """The request-rate range's points used (epoch seconds, req/s), oldest first."""
    cpu_points: Sequence[tuple[float, float]] = field(default_factory=Points)
    """The CPU in use behind ``cpu_peak`` (epoch seconds, cores), oldest first; empty when the
    template gives the peak alone."""
    age_s: float = 0.0
    """Age of the request rate at the time of the query, seconds: the older of its newest
    range point and its sample time. ``timestamp()`` of the rate query is the sample time of a
    series read as it is stored (a recording rule's, a federated one: the case where data lags
    while still being returned); of an expression (``rate()``, ``sum()``) it is the evaluation
    time, and then the range tells (a stopped scrape empties a ``rate()`` within its window)."""
    sampled_at: float = math.nan
    """``timestamp()`` of the request-rate query's series (epoch seconds; NaN: none)."""
    has_rate: bool = False
    has_latency: bool = False
    has_cpu: bool = False
    has_cpu_peak: bool = False
    errors: list[str] = field(default_factory=list)
    """Queries that failed (template, status, a fixed reason)."""
    gaps: list[str] = field(default_factory=list)
    """Data that came back but cannot be used (a gap in the range, a NaN p95 with traffic)."""
    refused: str = ""
    """Why the operator did not query at all for this policy (an address not allowed)."""

    @property
    def present(self) -> bool:
        return self.has_rate and self.has_latency and self.has_cpu and self.has_cpu_peak


@dataclass(frozen=True)
class QueryGroup:
    """Policies sharing a Prometheus and four templates, and their targets."""

    address: str
    request_rate: str
    latency_p95: str
    cpu_utilization: str
    cpu_peak: str
    targets: tuple[tuple[str, str], ...]
    """``(namespace, deployment)`` pairs."""


NO_CPU_PEAK = "cpu_peak: no series yet, the 30-minute CPU peak reads the CPU now"


class RangeGap(ValueError):
    """A look-back point is missing inside the history there is."""


def pick_lags(
    points: Sequence[tuple[float, float]], end: float
) -> tuple[float, float, float, float, float, float, float, list[tuple[float, float]]] | None:
    """``(now, 1m, 5m, 15m ago, peak, peak30, age_s, points)`` from a range result's points, as
    of its newest finite point (``age_s = end`` minus its time; ``points``: those used, oldest
    first); ``None`` without one. A look-back
    older than the first point reads the first point; one missing between points raises
    :class:`RangeGap`. ``peak`` is the highest point of the
    :data:`~qscale.features.RATE_PEAK_SPAN_S` up to the newest (``rate_peak_15m``), ``peak30``
    of the :data:`~qscale.features.LONG_PEAK_SPAN_S` (``rate_peak_30m``). A series that begins
    after the range's start (``end`` minus the look-back) loses the points whose rate window
    reaches back before its first point, as long as one is left (see the module docstring)."""
    pts = sorted((t, v) for t, v in points if math.isfinite(v) and t <= end + 0.5)
    if not pts:
        return None
    if pts[0][0] > end - LOOKBACK_S + 0.5:
        whole = [p for p in pts if p[0] >= pts[0][0] + features.RATE_WINDOW_S - 0.5]
        pts = whole or pts[-1:]
    by_t = {round(t): v for t, v in pts}
    newest, now = pts[-1]
    first_t, first = pts[0]
    out = [now]
    for lag in features.RATE_LAGS_S:
        at = newest - lag
        v = by_t.get(round(at))
        if v is None:
            if first_t < at - 0.5:
                raise RangeGap(f"no point {lag:g}s before the newest")
            v = first
        out.append(v)
    lo = newest - features.RATE_PEAK_SPAN_S - 0.5
    peak = max(v for t, v in pts if t >= lo)
    lo30 = newest - features.LONG_PEAK_SPAN_S - 0.5
    peak30 = max(v for t, v in pts if t >= lo30)
    used = [(t, v) for t, v in pts if t >= lo30]
    return out[0], out[1], out[2], out[3], peak, peak30, max(0.0, end - newest), used


def _pair(raw: object) -> tuple[object, object]:
    return (raw[0], raw[1]) if isinstance(raw, list | tuple) and len(raw) == 2 else (0, "NaN")


def _read_rate(obs: Observation, series: dict, end: float) -> None:
    points = []
    for raw in series.get("values") or []:
        t, v = _pair(raw)
        t = _value(t)
        if math.isfinite(t):
            points.append((t, _value(v)))
    try:
        lags = pick_lags(points, end)
    except RangeGap as e:
        obs.gaps.append(f"request_rate: gap in the range ({e})")
        return
    if lags is not None:
        (
            obs.rate_now,
            obs.rate_1m,
            obs.rate_5m,
            obs.rate_15m,
            obs.rate_peak_15m,
            obs.rate_peak_30m,
            obs.age_s,
            used,
        ) = lags
        obs.rate_points = Points(used)
        obs.has_rate = True


def _read_points(series: dict) -> Points:
    """A matrix series' finite points, oldest first."""
    out = []
    for raw in series.get("values") or []:
        t, v = (_value(x) for x in _pair(raw))
        if math.isfinite(t) and math.isfinite(v):
            out.append((t, v))
    return Points(sorted(out))


def _value(raw: object) -> float:
    try:
        return float(raw)
    except (TypeError, ValueError):
        return math.nan


class QueryError(Exception):
    pass


_ERROR_TYPES = frozenset(
    {"timeout", "canceled", "execution", "bad_data", "internal", "unavailable", "not_found"}
)
"""Prometheus' own error types: the only words of a reply that may reach a status."""


def _error_type(payload: object) -> str:
    kind = payload.get("errorType") if isinstance(payload, dict) else None
    return f" ({kind})" if kind in _ERROR_TYPES else ""


class PromClient:
    """Prometheus' HTTP API (``/api/v1/query``, ``/api/v1/query_range``)."""

    def __init__(self, timeout_s: float = 5.0, on_query=None, transport=None) -> None:
        self._client = httpx.AsyncClient(timeout=timeout_s, trust_env=False, transport=transport)
        self.timeout_s = timeout_s
        """The deadline of one query, whole: httpx's timeouts bound each read, so a reply that
        trickles in a byte at a time would otherwise hold the tick (every policy) for good."""
        self._on_query = on_query
        """``on_query(template, seconds, ok)`` for the operator's metrics."""

    async def close(self) -> None:
        await self._client.aclose()

    async def _post(self, template: str, url: str, form: dict[str, str]) -> list[dict]:
        """The result list of one query. Errors say the template, the status and a fixed
        reason: the reply's body never leaves this function (the address is the tenant's to
        pick among the allowed ones, the reply is not theirs to read)."""
        t0 = time.perf_counter()
        ok = False
        try:
            async with asyncio.timeout(self.timeout_s):
                r = await self._client.post(url, data=form)
            try:
                payload = r.json()
            except ValueError:
                payload = None
            if r.status_code != 200 or not isinstance(payload, dict):
                raise QueryError(f"{template}: HTTP {r.status_code}{_error_type(payload)}")
            if payload.get("status") != "success":
                raise QueryError(f"{template}: query failed{_error_type(payload)}")
            result = (payload.get("data") or {}).get("result")
            if not isinstance(result, list):
                raise QueryError(f"{template}: bad response")
            ok = True
            return [s for s in result if isinstance(s, dict)]
        except (TimeoutError, httpx.TimeoutException):
            raise QueryError(f"{template}: no answer within {self.timeout_s:g}s") from None
        except httpx.HTTPError as e:
            raise QueryError(f"{template}: {type(e).__name__}") from None
        except (AttributeError, TypeError):
            raise QueryError(f"{template}: bad response") from None
        finally:
            if self._on_query is not None:
                self._on_query(template, time.perf_counter() - t0, ok)

    async def instant(self, template: str, address: str, query: str, at: float) -> list[dict]:
        return await self._post(
            template, f"{address}/api/v1/query", {"query": query, "time": f"{at:.3f}"}
        )

    async def range(
        self, template: str, address: str, query: str, start: float, end: float, step: float
    ) -> list[dict]:
        form = {"query": query, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
        return await self._post(template, f"{address}/api/v1/query_range", form)

    async def fetch(
        self, groups: Iterable[QueryGroup], now: float
    ) -> dict[QueryGroup, dict[tuple[str, str], Observation]]:
        """Per group, Observations keyed by ``(namespace, deployment)`` for each of its targets
        (5 queries per group, all in flight at once). A result counts only for the group whose
        query produced it: two policies on one Deployment with different queries never read
        each other's data."""
        out: dict[QueryGroup, dict[tuple[str, str], Observation]] = {}
        jobs = []
        for g in groups:
            namespaces = sorted({ns for ns, _ in g.targets})
            names = sorted({d for _, d in g.targets})
            out[g] = {(ns, d): Observation() for ns, d in g.targets}
            rate = features.fill_template(g.request_rate, namespaces, names)
            # Align the range to the step so that the lags fall on points of the result.
            end = math.floor(now)
            start = end - LOOKBACK_S
            peak = promql.peak_points(g.cpu_peak) or g.cpu_peak
            instant = (
                ("latency_p95", features.fill_template(g.latency_p95, namespaces, names)),
                ("cpu_utilization", features.fill_template(g.cpu_utilization, namespaces, names)),
                ("cpu_peak", features.fill_template(peak, namespaces, names)),
                # The rate's own sample times (a recording rule or federation that lags).
                ("sample_time", f"timestamp({rate})"),
            )
            jobs.append(
                (
                    g,
                    "request_rate",
                    self.range("request_rate", g.address, rate, start, end, _STEP_S),
                    end,
                )
            )
            for name, query in instant:
                jobs.append((g, name, self.instant(name, g.address, query, now), now))
        results = await asyncio.gather(*(j[2] for j in jobs), return_exceptions=True)
        for (g, template, _, end), res in zip(jobs, results, strict=True):
            if isinstance(res, BaseException):
                msg = (
                    str(res) if isinstance(res, QueryError) else f"{template}: {type(res).__name__}"
                )
                for obs in out[g].values():
                    obs.errors.append(msg)
                continue
            for series in res:
                labels = series.get("metric")
                if not isinstance(labels, dict):
                    continue
                obs = out[g].get((labels.get("namespace", ""), labels.get("deployment", "")))
                if obs is None:
                    continue
                if template == "request_rate":
                    _read_rate(obs, series, end)
                    continue
                if template == "cpu_peak" and "values" in series:  # the points behind the peak
                    obs.cpu_points = _read_points(series)
                    if obs.cpu_points:
                        obs.cpu_peak_cores = max(v for _, v in obs.cpu_points)
                        obs.has_cpu_peak = True
                    continue
                v = _value(_pair(series.get("value"))[1])
                if template == "latency_p95":
                    obs.p95_s, obs.has_latency = v, True
                elif template == "sample_time":
                    obs.sampled_at = v
                elif template == "cpu_peak":
                    if math.isfinite(v):
                        obs.cpu_peak_cores, obs.has_cpu_peak = v, True
                elif math.isfinite(v):
                    obs.cpu_utilization, obs.has_cpu = v, True
        for obs in (o for per_target in out.values() for o in per_target.values()):
            if obs.has_rate and math.isfinite(obs.sampled_at):
                obs.age_s = max(obs.age_s, now - obs.sampled_at)
            if obs.has_latency and math.isnan(obs.p95_s) and obs.has_rate and obs.rate_now > 0:
                obs.has_latency = False
                obs.gaps.append("latency_p95: no value while requests flow")
            failed = any(e.startswith("cpu_peak:") for e in obs.errors)
            if obs.has_cpu and not obs.has_cpu_peak and not failed:
                # No CPU history at the subquery's minute points yet (a Deployment that just
                # started): as with a short rate range, no history reads flat.
                obs.has_cpu_peak = True
                obs.gaps.append(NO_CPU_PEAK)
        return out
