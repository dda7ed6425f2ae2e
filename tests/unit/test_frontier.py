"""The frontier computation: Pareto points, interpolation, domination, bootstrap, cache."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from qscale.simulator import env as sim
from qscale.simulator import frontier as fr
from qscale.simulator.tracebank import TraceBank

PTS = [(0.0, 100.0), (5.0, 80.0), (5.0, 90.0), (10.0, 85.0), (20.0, 50.0), (30.0, 60.0)]


def test_pareto_keeps_only_undominated_points_by_rising_slo():
    front = fr.pareto(PTS)
    assert [(s, c) for s, c, _ in front] == [(0.0, 100.0), (5.0, 80.0), (20.0, 50.0)]
    assert [i for *_, i in front] == [0, 1, 4]


def test_the_hull_drops_a_pareto_point_that_mixing_two_others_beats():
    # (5, 80) lies below the segment (0, 100) -> (20, 50) (87.5 at 5 minutes): a vertex
    assert [i for *_, i in fr.lower_hull(PTS)] == [0, 1, 4]
    pts = [(0.0, 100.0), (10.0, 80.0), (20.0, 50.0)]  # (10, 80) is above the segment's 75
    assert [i for *_, i in fr.lower_hull(pts)] == [0, 2]
    assert fr.frontier_cost(fr.lower_hull(pts), 10.0) == pytest.approx(75.0)
    assert fr.frontier_cost(fr.pareto(pts), 10.0) == pytest.approx(80.0)  # the staircase's


@pytest.mark.parametrize(
    ("slo", "expected"),
    [(-1.0, math.nan), (0.0, 100.0), (2.5, 90.0), (5.0, 80.0), (12.5, 65.0), (20.0, 50.0),
     (20.5, 50.0), (99.0, 50.0)],
)  # fmt: skip
def test_frontier_cost_is_linear_on_the_hull_flat_after_and_undefined_before(slo, expected):
    got = fr.frontier_cost(fr.lower_hull(PTS), slo)
    assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected)


@pytest.mark.parametrize(
    ("controller", "expected"),
    [
        ((5.0, 80.0), False),
        ((5.0, 81.0), True),
        ((6.0, 80.0), True),
        ((4.0, 85.0), False),
        ((-1, 1e9), False),
        ((5.0, 80.0, 0.0), False),  # the same point with no more drops
        ((25.0, 55.0, 0.0), False),  # (20, 50) drops 10: not no-worse on drops
        ((25.0, 55.0, 10.0), True),
    ],
)
def test_dominated_counts_slo_cost_and_dropped_requests(controller, expected):
    pts = [(*p, 10.0 if p == (20.0, 50.0) else 0.0) for p in PTS]
    assert fr.dominated(pts, *controller) is expected


def test_a_ratio_only_inside_the_hull_and_a_position_outside():
    pts = [fr.FrontierPoint(s, c, str(i)) for i, (s, c) in enumerate(PTS)]
    ff = fr.family_frontiers(
        {p.label: _cell_units(p.slo, p.cost) for p in pts}, np.array([0]), ["x"]
    )["x"]
    r = ff.place(12.5, 52.0)
    assert r["ratio"] == pytest.approx(52.0 / 65.0) and r["position"] == "inside"
    assert not r["dominated"]
    assert ff.place(0.0, 120.0)["dominated"]  # the (0, 100) setting is cheaper at 0 minutes
    # Always one pod: more SLO minutes than every setting and far cheaper -- no number at all.
    one_pod = ff.place(500.0, 5.0)
    assert one_pod["ratio"] is None and one_pod["position"] == "right"
    assert not one_pod["dominated"]
    # Right of the hull and dearer than the cheapest setting: a ratio, never a passing one.
    late = ff.place(25.0, 55.0)
    assert late["ratio"] == pytest.approx(1.1) and late["position"] == "right"
    left = ff.place(-1.0, 120.0)
    assert left["ratio"] is None and left["position"] == "left"


def _cell_units(slo, cost, dropped=0.0, n=1):
    return {
        "cost_replica_hours": np.full(n, cost, float),
        "slo_violation_minutes": np.full(n, slo, float),
        "dropped_requests": np.full(n, dropped, float),
    }


@settings(max_examples=300, deadline=None)
@example(  # found by hypothesis once: an SLO axis of tiny values (the hull's old tolerance)
    points=[(0.0, 3.0), (5.675479319235473e-68, 1.0), (1.3973123000522355e-225, 2.0)],
    extra=(0.0, 1.0),
    controller=(2.058299470585915e-122, 1.0),
)
@given(
    st.lists(st.tuples(st.floats(0, 1e4), st.floats(1, 1e4)), min_size=1, max_size=12),
    st.tuples(st.floats(0, 1e4), st.floats(1, 1e4)),
    st.tuples(st.floats(0, 1e4), st.floats(1, 1e4)),
)
def test_adding_a_setting_never_lowers_a_ratio(points, extra, controller):
    def ratio(pts):
        return fr._ratio(fr.lower_hull(pts), *controller)[0]

    before, after = ratio(points), ratio([*points, extra])
    if before is not None:  # a ratio can rise, or stop passing; it never falls
        assert after is None or after >= before * (1 - 1e-9)
        assert after is not None or before < 1.0
    # and the hull is never above the Pareto staircase's linear interpolation
    stair = fr.pareto(points)
    s = controller[0]
    if stair[0][0] <= s <= stair[-1][0]:
        lin = np.interp(s, [p[0] for p in stair], [p[1] for p in stair])
        assert fr.frontier_cost(fr.lower_hull(points), s) <= lin * (1 + 1e-9) + 1e-9


def _cells(values: np.ndarray) -> np.ndarray:
    """[3, U, S] from [U, S, 3]."""
    return np.moveaxis(values, 2, 0)


def test_verdicts_resample_seeds_so_one_window_gets_an_interval():
    rng = np.random.default_rng(0)
    seeds = 5
    fam = np.array([0])  # one family of one window
    rules = {
        "safe": _cells(np.stack([np.full((1, seeds), 0.0), np.full((1, seeds), 30.0),
                                 np.zeros((1, seeds))], axis=2)),
        "cheap": _cells(np.stack([np.full((1, seeds), 40.0), np.full((1, seeds), 10.0),
                                  np.zeros((1, seeds))], axis=2)),
    }  # fmt: skip
    noisy = np.stack(
        [rng.uniform(10, 30, (1, seeds)), rng.uniform(12, 28, (1, seeds)), np.zeros((1, seeds))],
        axis=2,
    )
    v = fr.verdicts(rules, _cells(noisy), fam, ["x"], n=300)["x"]
    assert v.ratio_ci is not None and v.ratio_ci[1] - v.ratio_ci[0] > 0.05
    assert v.dominated_by is None


def test_verdicts_name_a_setting_that_dominates_beyond_the_intervals():
    fam = np.array([0, 0, 0, 1, 1])
    seeds = 3
    rng = np.random.default_rng(1)

    def cell(slo, cost):
        base = np.stack([np.full((5, seeds), slo), np.full((5, seeds), cost),
                         np.zeros((5, seeds))], axis=2)  # fmt: skip
        return _cells(base * rng.uniform(0.97, 1.03, base.shape))

    rules = {"better": cell(10.0, 20.0), "worse": cell(30.0, 40.0)}
    v = fr.verdicts(rules, cell(15.0, 25.0), fam, ["a", "b"], n=200)
    assert all(v[f].dominated_by == "better" for f in ("a", "b", "ALL"))
    assert v["ALL"].dominated_share == 1.0 and v["ALL"].dominated_seeds == (3, 3)
    # A close call (the setting is better by about the noise) is not "beyond the intervals".
    close = fr.verdicts({"close": cell(14.9, 24.9)}, cell(15.0, 25.0), fam, ["a", "b"], n=200)
    assert close["ALL"].dominated_by is None and 0.0 < close["ALL"].dominated_share < 1.0


def test_validation_choice_restricts_the_settings_on_the_frontier():
    fam = np.array([0])
    per_rule = {"a": _cell_units(0.0, 100.0), "b": _cell_units(10.0, 10.0)}
    every = fr.family_frontiers(per_rule, fam, ["x"])["x"].place(5.0, 60.0)
    only_a = fr.family_frontiers(per_rule, fam, ["x"], chosen={"x": ["a"]})["x"].place(0.0, 60.0)
    assert every["ratio"] == pytest.approx(60.0 / 55.0)
    assert only_a["ratio"] == pytest.approx(60.0 / 100.0)
    assert fr.pareto_labels(fr.family_frontiers(per_rule, fam, ["x"])) == {
        "x": ["a", "b"], "ALL": ["a", "b"],
    }  # fmt: skip


def test_the_reward_best_rule_is_any_hpa_or_rate_setting():
    res = {
        fr.Rule("hpa", 0.6, 0.0, "legacy"): {"episode_return": np.array([-10.0, -12.0])},
        fr.Rule("rate", 0.9, 0.0): {"episode_return": np.array([-5.0, -5.0])},
        fr.Rule("predictive", 0.7, 300.0): {"episode_return": np.array([0.0, 0.0])},
    }
    assert fr.pick_reward_best(res) == fr.Rule("rate", 0.9, 0.0)


def test_the_cache_round_trips_and_depends_on_the_code(tmp_path, monkeypatch):
    monkeypatch.setenv("QSCALE_CACHE_DIR", str(tmp_path))
    rules = [fr.Rule("rate", 0.7, 60.0), fr.Rule("hpa", 0.5, 0.0, "legacy")]
    res = {r: {k: np.arange(3.0) + i for k in fr.STORED_KEYS} for i, r in enumerate(rules)}
    key = fr.cache_key({"x": 1})
    assert fr.save_cached(key, rules, res) is not None
    back = fr.load_cached(key, rules)
    assert all(np.array_equal(back[r][k], res[r][k]) for r in rules for k in fr.STORED_KEYS)
    monkeypatch.setattr(fr, "code_fingerprint", lambda: "changed")
    assert fr.cache_key({"x": 1}) != key


def test_run_rules_batches_the_grid_exactly_as_one_by_one():
    rates = np.concatenate([np.full(80, 40.0), np.full(80, 160.0), np.full(80, 60.0)]).astype(
        np.float32
    )
    bank = TraceBank.from_arrays(["x"], [rates], ref_rates=[160.0])
    params = sim.make_params(bank, 3, seed=2)
    windows = (
        torch.zeros(3, dtype=torch.long),
        torch.zeros(3, dtype=torch.long),
        torch.full((3,), 240),
    )
    rules = [
        fr.Rule("hpa", 0.5, 60.0, "legacy"),
        fr.Rule("hpa", 0.8, 60.0, "legacy"),
        fr.Rule("rate", 0.6, 0.0),
        fr.Rule("rate", 0.9, 300.0),
        fr.Rule("predictive", 0.7, 300.0),
    ]
    together = fr.run_rules(rules, params, windows)
    for r in rules:
        alone = fr.run_rules([r], params, windows)[r]
        for k in fr.METRIC_KEYS:
            np.testing.assert_allclose(together[r][k], alone[k], rtol=1e-9)
    # The targets do matter: the lower one costs more.
    lo, hi = (together[rules[i]]["cost_replica_hours"].sum() for i in (0, 1))
    assert lo > hi


def test_the_tuned_rule_takes_the_highest_training_return():
    res = {
        fr.Rule("hpa", 0.6, 0.0, "legacy"): {"episode_return": np.array([-10.0, -12.0])},
        fr.Rule("hpa", 0.8, 300.0, "legacy"): {"episode_return": np.array([-9.0, -11.0])},
        fr.Rule("rate", 0.9, 0.0): {"episode_return": np.array([0.0, 0.0])},  # not an HPA
    }
    assert fr.pick_tuned(res) == fr.Rule("hpa", 0.8, 300.0, "legacy")


def test_predictive_sizes_ahead_of_a_ramp():
    """On a steady ramp the forecast sizes for the rate a start-up delay ahead: never fewer
    pods than the same rule without a forecast, and more during the ramp."""
    rates = np.linspace(20.0, 400.0, 400).astype(np.float32)
    bank = TraceBank.from_arrays(["ramp"], [rates], ref_rates=[400.0])
    cfg = sim.SimConfig(noise=False, domain=sim.DomainConfig(startup_delay_s=(90.0, 90.0)))
    params = sim.make_params(bank, 1, seed=0, config=cfg)
    w = (torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long), torch.full((1,), 400))

    def pods(ctrl):
        state, obs = sim.reset_fixed(params, *w)
        ctrl.reset(state, params)
        out = []
        for _ in range(300):
            d = ctrl.act(state, obs, params)
            state, obs, *_ = sim.step_replicas(state, d, params, observe_next=False)
            out.append(float(state.replicas[0]))
        return np.array(out)

    ahead = pods(fr.make_controller(fr.Rule("predictive", 0.7, 300.0)))
    now = pods(
        fr.make_controller(fr.Rule("predictive", 0.7, 300.0)).__class__(
            target_fraction=0.7, beta=0.0, alpha=1.0
        )
    )
    assert (ahead[50:] >= now[50:]).all() and ahead[100:250].mean() > now[100:250].mean()
    assert not math.isnan(ahead.sum())


def test_no_rule_reads_whether_the_policy_declares_its_capacity():
    """The rule grid's cache is shared by evaluations with and without a declared capacity
    (``rules_profile`` drops it from the key): that holds only if every rule kind gives the
    same results either way."""
    from dataclasses import replace

    from qscale.simulator.evaluate import EvalProfile, build, rules_profile

    rates = np.concatenate([np.full(80, 40.0), np.full(80, 160.0), np.full(80, 60.0)])
    bank = TraceBank.from_arrays(["x"], [rates.astype(np.float32)], ref_rates=[160.0])
    rules = [
        fr.Rule("hpa", 0.7, 300.0, "legacy"),
        fr.Rule("hpa", 0.5, 0.0, "fast"),
        fr.Rule("rate", 0.8, 900.0),
        fr.Rule("predictive", 0.7, 300.0),
    ]
    declared = EvalProfile(capacity_declared=True)
    results = []
    for profile in (declared, replace(declared, capacity_declared=False)):
        params, win = build(bank, profile, [0, 1], window_steps=200)
        assert bool(params.capacity_declared.all()) == profile.capacity_declared
        results.append(fr.run_rules(rules, params, win.triple()))
    for r in rules:
        for k in fr.METRIC_KEYS:
            np.testing.assert_array_equal(results[0][r][k], results[1][r][k])
    assert rules_profile(declared) == rules_profile(replace(declared, capacity_declared=False))
    estimated = replace(declared, capacity_declared=False, capacity_estimated=True)
    assert rules_profile(declared) == rules_profile(estimated)
    assert "capacity_estimated" not in rules_profile(declared)["metrics"]  # the old caches' key
    assert rules_profile(declared) != rules_profile(replace(declared, startup_delay_s=(1.0, 2.0)))


def test_the_rule_grid_is_the_same_at_every_slo_priority():
    """The priority is the model's input and returns are scored at priority 1, so a rule's
    every figure, its return included, is the same whatever priority the profile sets, and
    the grid's cache key does not hold it."""
    from dataclasses import replace

    from qscale.simulator.evaluate import EvalProfile, build, rules_profile

    rates = np.concatenate([np.full(80, 40.0), np.full(80, 200.0), np.full(80, 60.0)])
    bank = TraceBank.from_arrays(["x"], [rates.astype(np.float32)], ref_rates=[160.0])
    rules = [fr.Rule("hpa", 0.9, 0.0, "fast"), fr.Rule("rate", 0.9, 0.0)]
    results = []
    for p in (1.0, 4.0):
        params, win = build(bank, EvalProfile(slo_priority=p), [0, 1], window_steps=200)
        assert torch.equal(params.slo_priority, torch.full((params.n_envs,), p))
        results.append(fr.run_rules(rules, params, win.triple()))
    assert any(results[0][r]["slo_violation_minutes"].sum() > 0 for r in rules)
    for r in rules:
        for k in fr.METRIC_KEYS:
            # the return up to float32 rounding of each step's reward (taken back per step)
            tol = 1e-6 if k == "episode_return" else 0.0
            np.testing.assert_allclose(results[0][r][k], results[1][r][k], rtol=tol)
    assert rules_profile(EvalProfile()) == rules_profile(replace(EvalProfile(), slo_priority=2.0))
    assert "slo_priority" not in rules_profile(EvalProfile())


def _qscale_imports(path):
    """The qscale modules ``path`` imports (``qscale.x.y``), at any depth of the file."""
    import ast

    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("qscale"):
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("qscale"))
    return out


def test_the_cache_key_covers_every_module_the_simulator_runs_on():
    """A grid result depends on the simulator and on every qscale module it imports, to the
    last one (the service model moved out of ``simulator/`` once and the key kept cached grids
    of the old model): walk the imports and find each file in the fingerprint."""
    import qscale

    root = Path(qscale.__file__).parent
    covered = set(fr.fingerprint_files())
    todo = [p for p in covered if p.parent.name in ("simulator", "baselines")]
    seen = set()
    while todo:
        for mod in _qscale_imports(todo.pop()):
            parts = mod.split(".")[1:]
            if not parts:
                continue
            rel = Path(*parts)
            for f in (root / rel.with_suffix(".py"), root / rel / "__init__.py"):
                if f.is_file() and f not in seen and f.name not in ("plots.py", "__init__.py"):
                    seen.add(f)
                    todo.append(f)
    missing = sorted(str(f.relative_to(root)) for f in seen - covered)
    assert not missing, f"grid results depend on these, the cache key does not: {missing}"
    assert root / "service.py" in covered


def test_the_code_fingerprint_is_read_once_per_process(tmp_path, monkeypatch):
    fr.code_fingerprint.cache_clear()
    first = fr.code_fingerprint()
    calls = []
    monkeypatch.setattr(fr, "fingerprint_files", lambda: calls.append(1) or [])
    assert fr.code_fingerprint() == first and not calls
    fr.code_fingerprint.cache_clear()
    assert fr.code_fingerprint() != first and calls  # read again only after a clear
    fr.code_fingerprint.cache_clear()
