"""The request-rate forecast of feature spec v7 (:func:`qscale.features.rate_forecast`): Holt's
level and trend over the range query's points, the same function for the simulator's
``measure()`` and the operator's rows, causal by construction."""

from __future__ import annotations

import math

import pytest
import torch

from qscale import features

NAN = math.nan
REACH = features.FORECAST_REACH_S / features.RATE_PEAK_STEP_S  # points past the newest


def holt(points: list[float]) -> float:
    """Holt's linear method written out plainly (first point starts the level, flat trend)."""
    a, b = features.FORECAST_ALPHA, features.FORECAST_BETA
    level, trend = points[0], 0.0
    for x in points[1:]:
        prev = level
        level = a * x + (1 - a) * (level + trend)
        trend = b * (level - prev) + (1 - b) * trend
    return max(0.0, level + REACH * trend)


def fc(*rows: list[float]) -> list[float]:
    return features.rate_forecast(torch.tensor(rows, dtype=torch.float64)).tolist()


def test_holt_by_hand_and_its_extremes():
    pts = [10.0, 20.0, 30.0, 40.0]
    assert fc(pts)[0] == pytest.approx(holt(pts))
    assert fc(pts)[0] == pytest.approx(55.30312, abs=1e-4)  # 39.5524 + 2 x 7.8752
    assert fc([7.0] * 31)[0] == pytest.approx(7.0)  # a flat rate forecasts itself
    ramp = [100.0 + 10.0 * k for k in range(31)]  # a steady ramp: the trend is learned
    assert fc(ramp)[0] == pytest.approx(ramp[-1] + 10.0 * REACH, rel=1e-3)
    assert fc([400.0, 300.0, 200.0, 100.0, 0.0])[0] == 0.0  # a fall is never below 0


def test_a_missing_point_is_predicted_and_a_short_history_starts_where_it_starts():
    # a point missing inside the history: the level moves by the trend, the trend is kept
    a, b = features.FORECAST_ALPHA, features.FORECAST_BETA
    l1 = a * 20.0 + (1 - a) * 10.0
    t1 = b * (l1 - 10.0)
    l2, t2 = l1 + t1, t1  # the gap
    l3 = a * 40.0 + (1 - a) * (l2 + t2)
    t3 = b * (l3 - l2) + (1 - b) * t2
    assert fc([10.0, 20.0, NAN, 40.0])[0] == pytest.approx(l3 + REACH * t3)
    # NaN in front is no history yet: the same as the points there are
    assert fc([NAN, NAN, 5.0, 9.0])[0] == pytest.approx(holt([5.0, 9.0]))
    assert math.isnan(fc([NAN, NAN, NAN])[0])  # nothing to forecast from


def test_the_forecast_is_causal_and_batched_row_by_row():
    rows = [[1.0, 2.0, 4.0, 8.0], [8.0, 4.0, 2.0, 1.0], [3.0, 3.0, 3.0, 3.0]]
    together = fc(*rows)
    assert together == [pytest.approx(fc(r)[0]) for r in rows]
    # only the past enters: a row's forecast from its first k points is that of the k points
    assert fc([1.0, 2.0, 4.0])[0] == pytest.approx(holt([1.0, 2.0, 4.0]))


def test_the_feature_and_the_actions_read_the_forecast():
    x = features.golden_inputs()
    obs = features.compute(x)
    j = features.FEATURE_NAMES.index("rate_forecast")
    # 130 against 100 req/s now: ln(1.3); missing: 0; past the clip: 2
    assert obs[0, j].item() == pytest.approx(math.log(1.3), abs=1e-3)
    assert obs[3, j].item() == 0.0 and obs[2, j].item() == 2.0
    want = torch.maximum(x.rate_forecast, torch.maximum(x.rate_peak_30m, x.rate_now))
    got = features.forecast_rate(x)
    assert torch.equal(torch.isnan(got), torch.isnan(x.rate_forecast))
    ok = ~torch.isnan(got)
    assert torch.equal(got[ok], want[ok])
