"""The headroom benchmark's own parts: the selectors' choices and the clairvoyant rule's
foresight (its figures are only as good as these)."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import bench_headroom as bh
from qscale.simulator import env as sim
from qscale.simulator import frontier as fr
from qscale.simulator.evaluate import EvalProfile, Windows
from qscale.simulator.tracebank import TraceBank


def _rules(cost: list[list[float]], slo: list[list[float]]) -> dict[str, dict[str, np.ndarray]]:
    return {
        f"r{i}": {
            "cost_replica_hours": np.array(c, float),
            "slo_violation_minutes": np.array(s, float),
        }
        for i, (c, s) in enumerate(zip(cost, slo, strict=True))
    }


def test_hindsight_takes_each_windows_best_and_causal_takes_yesterdays():
    # one series of three windows; r0 is best on window 0, r1 on windows 1 and 2
    rules = _rules(cost=[[1, 9, 9], [5, 1, 1]], slo=[[0, 0, 0], [0, 0, 0]])
    fam = np.zeros(3, int)
    hind = bh.selector_points(rules, fam, ["a"], causal=False)
    causal = bh.selector_points(rules, fam, ["a"], causal=True)
    assert hind["a"][0] == (0.0, 3.0)  # 1 + 1 + 1
    # window 0 has no yesterday and no other series: the first setting; then yesterday's best
    # (r0 on window 1, r1 on window 2)
    assert causal["a"][0] == (0.0, 1 + 9 + 1)
    assert causal["ALL"] == causal["a"]


def test_a_series_first_window_takes_the_best_of_the_other_series():
    rules = _rules(cost=[[1, 9], [5, 2]], slo=[[0, 0], [0, 0]])
    fam = np.array([0, 1])  # two series of one window each
    causal = bh.selector_points(rules, fam, ["a", "b"], causal=True)
    assert causal["a"][0] == (0.0, 5.0)  # r1, the best on series b
    assert causal["b"][0] == (0.0, 9.0)  # r0, the best on series a


def test_lambda_trades_slo_minutes_for_cost():
    rules = _rules(cost=[[10.0], [1.0]], slo=[[0.0], [5.0]])
    pts = bh.selector_points(rules, np.zeros(1, int), ["a"], causal=False)["a"]
    assert pts[0] == (5.0, 1.0) and pts[-1] == (0.0, 10.0)
    assert bh.at(pts, 2.5) == pytest.approx(5.5)
    assert bh.at(pts, 6.0) is None


def test_the_clairvoyant_rule_sees_rises_the_keda_rule_does_not():
    torch.set_num_threads(1)
    # load steps up 4x and back twice: the rule sizing from the observed rate is late each time
    low, high = np.full(120, 40.0), np.full(120, 160.0)
    rates = np.concatenate([low, high, low, high, low]).astype(np.float32)
    bank = TraceBank.from_arrays(["steps"], [rates], ref_rates=[160.0])
    params = sim.make_params(bank, 4, seed=3, config=EvalProfile().sim_config())
    win = Windows.fixed(
        torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long), torch.full((4,), 600), 3
    )
    clair = bh.run_clairvoyant(params, win)
    keda = fr.run_rules([fr.Rule("rate", 0.8, 300.0)], params, win.triple())
    k = next(iter(keda.values()))
    c = clair["clairvoyant 80% w300"]
    assert k["slo_violation_minutes"].sum() > 0
    # sized for the rate a start-up delay ahead, every rise is met (knowing only the arrivals
    # of the moment, without the metric's lag, leaves 40 % of the rule's minutes)
    assert c["slo_violation_minutes"].sum() < 0.1 * k["slo_violation_minutes"].sum()
    assert c["cost_replica_hours"].sum() >= k["cost_replica_hours"].sum()


def test_the_forecast_twin_extrapolates_a_rise_from_the_observed_rate_only():
    rates = np.full(200, 40.0, dtype=np.float32)
    bank = TraceBank.from_arrays(["flat"], [rates], ref_rates=[160.0])
    params = sim.make_params(bank, 2, seed=1, config=EvalProfile().sim_config())
    state, _ = sim.reset_fixed(
        params,
        torch.zeros(2, dtype=torch.long),
        torch.zeros(2, dtype=torch.long),
        torch.full((2,), 200),
    )
    ctrl = bh.ForecastRate(target_fraction=0.8, cooldown_s=300.0)
    ctrl.reset(state, params)
    for i in range(30):  # a steady rise of 2 req/s a step, as the cluster shows it
        observed = torch.full((2,), 40.0 + 2.0 * i)
        ahead = ctrl.ahead(replace(state, t=state.t + i + 1), params, observed)
    # the trace itself is flat: what the twin sizes for comes from the observed rise alone
    assert torch.all(ahead > observed + 2.0)
    clair = bh.ClairvoyantRate(target_fraction=0.8, cooldown_s=300.0)
    clair.reset(state, params)
    # the clairvoyant rule reads the trace (scaled to the service, noise included) and not the
    # observed rate
    assert torch.allclose(clair.ahead(state, params, observed), 40.0 * state.scale, rtol=0.15)
