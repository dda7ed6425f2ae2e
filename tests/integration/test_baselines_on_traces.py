"""Baselines on real traces (the shared catalog's test split, or the shipped excerpt)."""

import pytest
import torch

from qscale.simulator import frontier as fr
from qscale.simulator.baselines import HPAController, KedaController, OracleController
from qscale.simulator.evaluate import EvalProfile, build, run
from qscale.simulator.splits import packaged_trace, shared_trace_files
from qscale.simulator.tracebank import TraceBank

HORIZON = 4 * 240  # 4 hours


@pytest.fixture(scope="module")
def setup():
    files = shared_trace_files()
    paths = [f for f in files if f.stem in ("nasa_http_1995", "nyc_taxi", "twitter_volume_AAPL")]
    bank = TraceBank.from_files(paths or [packaged_trace()], split="test" if paths else "all")
    return build(bank, EvalProfile(), seeds=[0, 1], window_steps=HORIZON, horizon_steps=HORIZON)


def test_oracle_is_the_cost_lower_bound_and_meets_the_slo(setup):
    params, win = setup
    oracle = run(OracleController(), params, win)
    assert float(oracle.slo_violation_minutes.max()) == 0.0
    for ctrl in (HPAController(), KedaController()):
        other = run(ctrl, params, win)
        assert (oracle.cost_replica_hours < other.cost_replica_hours).all(), ctrl.name


def test_hpa_follows_load(setup):
    params, win = setup
    m = run(HPAController(), params, win, record=True)
    tl = m.timeline
    # Replicas track the load (a 10-minute mean of the rate, as the HPA's stabilization and the
    # pods' start-up smooth it): clear positive correlation over time in every env.
    smooth = torch.nn.functional.avg_pool1d(tl["rate"].T[:, None], 40, stride=1)[:, 0].T
    for i in range(params.n_envs):
        r = smooth[:, i]
        n = tl["replicas"][39:, i]
        c = torch.corrcoef(torch.stack([r, n]))[0, 1]
        assert c > 0.5, (i, float(c))


def test_a_lower_target_buys_fewer_slo_minutes_with_more_pods(setup):
    params, win = setup
    res = fr.run_rules(
        [fr.Rule("hpa", 0.5, 300.0, "legacy"), fr.Rule("hpa", 0.9, 300.0, "legacy")],
        params,
        win.triple(),
    )
    lo, hi = (res[fr.Rule("hpa", t, 300.0, "legacy")] for t in (0.5, 0.9))
    assert lo["cost_replica_hours"].sum() > hi["cost_replica_hours"].sum()
    assert lo["slo_violation_minutes"].sum() <= hi["slo_violation_minutes"].sum()
