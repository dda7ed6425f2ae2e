"""The history floor: its arithmetic, that it only reads the past, and that decide() applies it
before the shield (the same function in the simulator and the operator)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from test_decision import signals

from qscale import actions, history
from qscale.decision import decide
from qscale.guardrails import Reason, ShieldConfig, ShieldState
from qscale.simulator import env as sim
from qscale.simulator.tracebank import TraceBank, history_series

CFG = ShieldConfig(down_stabilization_s=0.0, down_cooldown_s=0.0, max_step_up_percent=1000.0)
HOLD = torch.tensor([actions.HOLD])
NAN = math.nan
DT = 15.0
DAY = round(history.LOOKBACK_S / DT)


def t(*v):
    return torch.tensor(v, dtype=torch.float32)


def test_floor_is_busy_pods_per_request_times_the_history_rate_at_the_target():
    # 8 busy pods serve 100 req/s now; yesterday's next 5 min peaked at 150 req/s: 12 busy
    # pods' worth, at 80 % -> 15 pods.
    got = history.floor_pods(t(8.0), t(100.0), t(150.0), 0.8)
    assert got.tolist() == [15.0]


@pytest.mark.parametrize(
    "busy,rate,past,target",
    [(8.0, 100.0, NAN, 0.8), (8.0, 0.0, 150.0, 0.8), (NAN, 100.0, 150.0, 0.8),
     (8.0, 100.0, 150.0, NAN), (8.0, 100.0, 150.0, 0.0), (8.0, 100.0, -1.0, 0.8)],
)  # fmt: skip
def test_no_floor_without_a_past_traffic_now_a_busy_count_or_a_target(busy, rate, past, target):
    assert math.isnan(history.floor_pods(t(busy), t(rate), t(past), target).item())


def test_the_range_window_lies_a_lookback_back_and_never_reaches_now():
    start, end = history.range_window(1_000_000.0)
    assert (start, end) == (1_000_000.0 - 86400 + 60, 1_000_000.0 - 86400 + 300)
    with pytest.raises(ValueError, match="lookback must exceed"):
        history.range_window(1_000_000.0, lookback_s=history.AHEAD_S)


def _reference(a: np.ndarray, i: int) -> float:
    """The history point set of step ``i`` by hand: the 1 m means ending 1..5 min after the
    same time yesterday (a decision at step i sees steps up to i - 1)."""
    vals = []
    for k in range(1, 6):
        end = i - 1 - (DAY - 4 * k)  # the last step of the minute
        if end - 3 < 0:
            return NAN
        vals.append(a[end - 3 : end + 1].mean())
    return max(vals)


def test_history_series_matches_the_points_by_hand():
    rng = np.random.default_rng(0)
    a = rng.gamma(2.0, 50.0, size=DAY + 400)
    h = history_series(a, DT)
    for i in [0, DAY - 1, DAY, DAY + 1, DAY + 17, DAY + 399]:
        want = _reference(a, i)
        if math.isnan(want):
            assert math.isnan(h[i])
        else:
            assert h[i] == pytest.approx(want, rel=1e-5)
    assert np.isnan(h[:DAY]).all() and np.isfinite(h[DAY:]).all()


def test_history_series_never_reads_the_future():
    # Changing the series from any step m on changes no history value up to m + (a day - 5 min).
    rng = np.random.default_rng(1)
    a = rng.gamma(2.0, 50.0, size=DAY + 300)
    h = history_series(a, DT)
    for m in (DAY - 30, DAY + 50, DAY + 250):
        b = a.copy()
        b[m:] *= 10.0
        hb = history_series(b, DT)
        keep = m + DAY - 20
        np.testing.assert_array_equal(hb[: keep + 1], h[: keep + 1])


def test_the_bank_keeps_the_past_before_the_split(tmp_path):
    # A 3-day user trace: its validation split (60-80 %) has the day before it in the bank.
    n = 3 * DAY
    rates = 50.0 + 40.0 * np.sin(np.arange(n) * 2 * np.pi / DAY)
    path = tmp_path / "mine.csv"
    path.write_text("t,value\n" + "".join(f"{i * DT},{r}\n" for i, r in enumerate(rates)))
    whole = TraceBank.from_files([path], split="all")
    val = TraceBank.from_files([path], split="val")
    assert val.history is not None and whole.history is not None
    assert bool(torch.isfinite(val.history).all())
    lo = round(0.6 * n)
    torch.testing.assert_close(val.history, whole.history[lo : lo + val.history.shape[0]])
    # A daily sine: yesterday's next 5 min is close to today's next 5 min.
    i = lo + 100
    assert abs(float(val.history[100]) - rates[i : i + 20].max()) < 2.0


def test_from_arrays_without_histories_reads_its_own_past_and_checks_lengths():
    a = np.full(DAY + 10, 7.0, dtype=np.float32)
    bank = TraceBank.from_arrays(["x"], [a])
    assert bank.history is not None and float(bank.history[-1]) == pytest.approx(7.0)
    with pytest.raises(ValueError, match="as long as its trace"):
        TraceBank.from_arrays(["x"], [a], histories=[a[:-1]])


def _decide(sig, floor_target, cfg=CFG, action=HOLD):
    return decide(sig, ShieldState.init(1), 1000.0, cfg, action=action,
                  floor_target=floor_target)  # fmt: skip


def test_decide_raises_a_proposal_below_the_floor_and_says_so():
    # 10 pods at 50 % CPU = 5 busy pods for 100 req/s; yesterday peaked at 300 -> 15 busy -> 19.
    sig = replace(signals(cpu=0.5, replicas=10.0, rate=100.0), history_rate=t(300.0))
    d = _decide(sig, 0.8)
    assert d.replicas.tolist() == [19.0]
    assert Reason(int(d.reason)) is Reason.HISTORY_FLOOR
    assert d.floor is not None and d.floor.tolist() == [19.0]
    assert d.proposal.tolist() == [10.0]  # the action's own proposal stays visible


def test_a_proposal_above_the_floor_stands():
    sig = replace(signals(cpu=0.5, replicas=10.0, rate=100.0), history_rate=t(50.0))
    d = _decide(sig, 0.8, action=torch.tensor([actions.ACTION_NAMES.index("plus_1")]))
    assert d.replicas.tolist() == [11.0] and Reason(int(d.reason)) is Reason.OK


def test_no_floor_asked_or_no_past_changes_nothing():
    base = signals(cpu=0.5, replicas=10.0, rate=100.0)
    for sig, target in ((replace(base, history_rate=t(300.0)), None),
                        (replace(base, history_rate=t(NAN)), 0.8), (base, 0.8)):  # fmt: skip
        d = _decide(sig, target)
        assert d.replicas.tolist() == [10.0] and Reason(int(d.reason)) is Reason.OK


def test_the_shield_still_bounds_the_floor():
    sig = replace(signals(cpu=0.5, replicas=10.0, rate=100.0, max_r=12.0), history_rate=t(300.0))
    d = _decide(sig, 0.8)
    assert d.replicas.tolist() == [12.0] and Reason(int(d.reason)) is Reason.AT_MAX


def test_missing_metrics_hold_whatever_yesterday_says():
    sig = replace(signals(present=False), history_rate=t(1000.0))
    d = _decide(sig, 0.8)
    assert d.replicas.tolist() == [10.0] and Reason(int(d.reason)) is Reason.METRICS_MISSING


def test_the_simulator_shows_the_trace_past_scaled_like_its_rates():
    a = (100.0 + 50.0 * np.sin(np.arange(DAY + 600) * 2 * np.pi / DAY)).astype(np.float32)
    bank = TraceBank.from_arrays(["d"], [a])
    params = sim.make_params(bank, 2, seed=0)
    state, _ = sim.reset_fixed(params, torch.tensor([0, 0]), torch.tensor([DAY + 10, 100]),
                               torch.tensor([50, 50]))  # fmt: skip
    sig = sim.signals(state, params)
    assert sig.history_rate is not None
    want = bank.history[state.pos] * state.scale
    torch.testing.assert_close(sig.history_rate, want, equal_nan=True)
    assert math.isfinite(float(sig.history_rate[0])) and math.isnan(float(sig.history_rate[1]))
