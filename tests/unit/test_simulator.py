import dataclasses
import math

import numpy as np
import pytest
import torch

from qscale import actions, features
from qscale.simulator import env as sim
from qscale.simulator.tracebank import TraceBank


def ramp_bank(device="cpu"):
    t = np.arange(2000)
    rates = [100.0 + 80.0 * np.sin(t / 50.0), np.full(2000, 40.0), np.linspace(5.0, 400.0, 2000)]
    return TraceBank.from_arrays(["sine", "flat", "ramp"], rates, device=device)


def fixed_config(**domain):
    base = dict(
        capacity_rps=(50.0, 50.0),
        service_time_s=(0.1, 0.1),
        startup_delay_s=(45.0, 45.0),
        slo_factor=(2.0, 2.0),
        peak_replicas=(10.0, 10.0),
        amplitude_jitter=0.0,
    )
    base.update(domain)
    return sim.SimConfig(domain=sim.DomainConfig(**base), episode_steps=200)


def run(params, n, policy, step=sim.step):
    state, obs = sim.reset(params)
    infos = []
    for _ in range(n):
        state, obs, rew, _, trunc, info = step(state, policy(state), params)
        infos.append((state, obs, rew, trunc, info))
    return infos


def test_conservation_served_backlog_dropped_equal_arrivals():
    params = sim.make_params(ramp_bank(), 64, seed=3)
    state, _ = sim.reset(params)
    gen = torch.Generator().manual_seed(0)
    for _ in range(300):
        a = torch.randint(0, actions.N_ACTIONS, (64,), generator=gen)
        before = state.backlog
        state, _, _, _, _, info = sim.step(state, a, params)
        arrivals = info["rate"] * params.config.dt
        lhs = info["served"] + info["backlog"] + info["dropped"]
        torch.testing.assert_close(lhs, arrivals + before, rtol=1e-5, atol=1e-3)
        assert (info["served"] >= 0).all() and (info["dropped"] >= 0).all()
        assert (info["utilization"] <= 1.0 + 1e-6).all()


def test_startup_delay_respected():
    # 45 s at 15 s steps = 3 steps; scale up once, then hold.
    params = sim.make_params(ramp_bank(), 1, seed=0, config=fixed_config())
    state, _ = sim.reset(params)
    r0 = float(state.replicas[0])
    state, _, _, _, _, info = sim.step(state, torch.tensor([2]), params)  # +1 pod
    assert float(info["replicas"][0]) == r0 + 1
    readies = [float(info["ready"][0])]
    for _ in range(4):
        state, _, _, _, _, info = sim.step(state, torch.tensor([actions.HOLD]), params)
        readies.append(float(info["ready"][0]))
    # Requested at step 0: ready when serving step 3, not before.
    assert readies[:3] == [r0, r0, r0]
    assert readies[3:] == [r0 + 1, r0 + 1]


def test_scale_down_removes_the_youngest_pods_first():
    params = sim.make_params(ramp_bank(), 1, seed=0, config=fixed_config())
    state, _ = sim.reset(params)
    ready0 = float(sim.ready_pods(state, params)[0])
    state, *_ = sim.step_replicas(state, state.replicas + 3, params)
    assert float(state.replicas[0] - sim.ready_pods(state, params)[0]) == 3.0
    state, *_ = sim.step_replicas(state, state.replicas - 2, params)
    assert float(state.replicas[0] - sim.ready_pods(state, params)[0]) == 1.0
    assert float(sim.ready_pods(state, params)[0]) == ready0


def test_deterministic_under_seed_and_seed_matters():
    def trajectory(seed):
        params = sim.make_params(ramp_bank(), 16, seed=seed)
        out = run(params, 250, lambda s: (s.t % actions.N_ACTIONS).long())
        return torch.stack([o[2] for o in out]), torch.stack([o[1] for o in out])

    r1, o1 = trajectory(7)
    r2, o2 = trajectory(7)
    r3, _ = trajectory(8)
    assert torch.equal(r1, r2) and torch.equal(o1, o2)
    assert not torch.equal(r1, r3)


def test_truncation_and_auto_reset():
    params = sim.make_params(ramp_bank(), 4, seed=1, config=fixed_config())
    out = run(params, 201, lambda s: torch.zeros(4, dtype=torch.long))
    truncs = torch.stack([o[3] for o in out])
    assert truncs[199].all() and not truncs[:199].any()
    state = out[199][0]
    assert (state.t == 0).all() and (state.episode == 1).all()
    assert "final_obs" in out[199][4]


def test_observation_matches_spec():
    params = sim.make_params(ramp_bank(), 32, seed=2)
    state, obs = sim.reset(params)
    assert obs.shape == (32, features.N_FEATURES)
    lo = torch.tensor([f.lo for f in features.FEATURES])
    hi = torch.tensor([f.hi for f in features.FEATURES])
    for _ in range(50):
        state, obs, *_ = sim.step(state, torch.full((32,), 5), params)
        assert torch.isfinite(obs).all()
        assert (obs >= lo).all() and (obs <= hi).all()


def test_the_forecast_is_the_features_function_of_the_range_querys_points():
    """``measure()`` forecasts with :func:`qscale.features.rate_forecast` from the same 31
    points (lagged like every rate) the peaks are read from, as the operator's rows do; on a
    rising trace it is above the rate now."""
    params = sim.make_params(ramp_bank(), 8, seed=3)
    state, _ = sim.reset(params)
    for _ in range(120):
        state, *_ = sim.step(state, torch.full((8,), actions.HOLD), params)
    seen = sim.measure(state, params)
    *_, points = sim._rate_queries(state.rate_hist, params.scrape_lag, params.config)
    assert points.shape[1] == 31
    assert torch.equal(seen.rate_forecast, features.rate_forecast(points))
    assert torch.equal(seen.rate_peak_30m, points.amax(dim=1))
    rising = points[:, -1] > points[:, -5] * 1.01
    assert rising.any()
    assert (seen.rate_forecast[rising] > points[rising, -1]).all()


def test_features_are_scale_free():
    """The same service at 1000x the traffic reads the same observation (rates enter only as
    ratios; replicas only through log_replicas and min/replicas)."""

    def obs_for(k):
        x = features.FeatureInputs(
            cpu_utilization=torch.tensor([0.6]),
            cpu_limit_ratio=torch.tensor([2.0]),
            p95_s=torch.tensor([0.3]),
            slo_s=torch.tensor([0.6]),
            rate_now=torch.tensor([120.0 * k]),
            rate_1m=torch.tensor([100.0 * k]),
            rate_5m=torch.tensor([80.0 * k]),
            rate_15m=torch.tensor([60.0 * k]),
            rate_peak_15m=torch.tensor([150.0 * k]),
            rate_peak_30m=torch.tensor([200.0 * k]),
            busy_peak_30m=torch.tensor([1.5]),
            rate_forecast=torch.tensor([140.0 * k]),
            replicas=torch.tensor([4.0]),
            ready_replicas=torch.tensor([3.0]),
            min_replicas=torch.tensor([1.0]),
            since_scale_up_s=torch.tensor([30.0]),
            since_scale_down_s=torch.tensor([float("inf")]),
        )
        return features.compute(x)

    torch.testing.assert_close(obs_for(1.0), obs_for(1000.0))
    assert obs_for(1.0)[0, features.FEATURE_NAMES.index("since_scale_down")] == 1.0
    assert obs_for(1.0)[0, features.FEATURE_NAMES.index("cpu_busy")] == pytest.approx(0.3)


def test_spec_hash_is_stable_and_sensitive():
    assert features._spec_hash() == features.SPEC_HASH
    assert len(features.SPEC_HASH) == 16
    original = features.FEATURES
    try:
        wider = dataclasses.replace(original[-1], hi=original[-1].hi + 1.0)
        features.FEATURES = (*original[:-1], wider)
        assert features._spec_hash() != features.SPEC_HASH
    finally:
        features.FEATURES = original


@pytest.mark.parametrize(
    ("replicas", "action", "expected"),
    [
        (5, "hold", 5),
        (5, "minus_1", 4),
        (5, "plus_1", 6),
        (1, "times_1.5", 2),
        (5, "times_1.5", 8),
        (5, "times_2", 10),
    ],
)
def test_actions(replicas, action, expected):
    idx = torch.tensor([actions.ACTION_NAMES.index(action)])
    assert float(actions.apply(torch.tensor([float(replicas)]), idx)[0]) == expected


def test_domain_randomization_spans_sizes():
    params = sim.make_params(ramp_bank(), 2048, seed=0)
    peak = params.peak_replicas
    assert peak.min() < 1.5 and peak.max() > 70
    assert (params.max_replicas >= params.min_replicas + 2).all()
    steps = params.delay_steps
    assert steps.min() in (1, 2) and steps.max() == 16  # ceil(delay / 15 s) over 15-240 s
    ratio = params.max_replicas / params.peak_replicas
    assert ratio.min() < 2.0 and ratio.max() > 8.0  # a safety cap, 1.5-10x the size
    assert params.ingress.any() and (~params.ingress).any()
    assert params.cpu_limit_ratio.min() < 1.2 and params.cpu_limit_ratio.max() > 3.5


@pytest.mark.gpu
def test_cpu_and_cuda_agree():
    def trajectory(device):
        params = sim.make_params(ramp_bank(device), 64, seed=5, device=device)
        out = run(params, 200, lambda s: (s.t % actions.N_ACTIONS).long())
        return torch.stack([o[2] for o in out]).cpu(), torch.stack([o[1] for o in out]).cpu()

    r_cpu, o_cpu = trajectory("cpu")
    r_gpu, o_gpu = trajectory("cuda")
    torch.testing.assert_close(r_cpu, r_gpu, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(o_cpu, o_gpu, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("busy", "target", "expected"),
    [
        (6.0, "busy_at_50", 12),
        (6.0, "busy_at_65", 10),
        (6.0, "busy_at_80", 8),
        (0.0, "busy_at_80", 0),
    ],
)
def test_target_actions_size_by_busy_pods(busy, target, expected):
    idx = torch.tensor([actions.ACTION_NAMES.index(target)])
    got = actions.apply(torch.tensor([5.0]), idx, torch.tensor([busy]))
    assert float(got[0]) == expected


# --- what a controller sees: causal, lagged, quantized ---------------------------------------


def _observations(rates, cut_step=None, steps=120, seed=4, n=8):
    """Observations of a fixed action sequence on one trace; ``ref_rates`` fixed so that the
    trace's scale cannot move with its future."""
    bank = TraceBank.from_arrays(["x"], [rates], ref_rates=[100.0])
    params = sim.make_params(bank, n, seed=seed)
    state, obs = sim.reset_fixed(
        params,
        torch.zeros(n, dtype=torch.long),
        torch.zeros(n, dtype=torch.long),
        torch.full((n,), steps, dtype=torch.long),
    )
    out = [obs]
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps - 1):
        a = torch.randint(0, actions.N_ACTIONS, (n,), generator=gen)
        state, obs, *_ = sim.step(state, a, params)
        out.append(obs)
    return torch.stack(out)


def test_no_observation_at_time_t_depends_on_the_trace_after_t():
    rng = np.random.default_rng(3)
    rates = rng.exponential(80.0, size=400).astype(np.float32)
    base = _observations(rates)
    for cut in (10, 40, 90):
        changed = rates.copy()
        changed[cut:] = changed[cut:] * 5.0 + 50.0
        other = _observations(changed)
        # The observation made at the start of step t has seen steps < t only.
        torch.testing.assert_close(base[: cut + 1], other[: cut + 1], rtol=0, atol=0)
        assert not torch.equal(base, other)


def test_no_observation_reads_max_replicas():
    rates = np.linspace(10.0, 300.0, 300).astype(np.float32)
    bank = TraceBank.from_arrays(["x"], [rates], ref_rates=[300.0])
    params = sim.make_params(bank, 4, seed=1)
    windows = (
        torch.zeros(4, dtype=torch.long),
        torch.zeros(4, dtype=torch.long),
        torch.full((4,), 200),
    )
    big = dataclasses.replace(params, max_replicas=params.max_replicas * 10.0)
    _s1, o1 = sim.reset_fixed(params, *windows)
    _s2, o2 = sim.reset_fixed(big, *windows)
    torch.testing.assert_close(o1, o2)


def test_the_trace_scale_is_the_series_reference_not_the_window():
    rates = np.concatenate([np.full(100, 10.0), np.full(100, 100.0)]).astype(np.float32)
    bank = TraceBank.from_arrays(["x"], [rates])
    params = sim.make_params(bank, 2, seed=0, config=fixed_config())
    s, _ = sim.reset_fixed(
        params, torch.tensor([0, 0]), torch.tensor([0, 100]), torch.tensor([50, 50])
    )
    assert s.scale[0] == s.scale[1]  # a quiet window is not blown up to the service's size
    assert float(bank.ref_rate[0]) == pytest.approx(100.0)


def test_metrics_lag_and_the_counter_kind():
    """A step in load reaches the rate signal only after the scrape lag and the 1 m window;
    a served-requests counter flattens at capacity, an ingress counter does not."""
    rates = np.concatenate([np.full(60, 20.0), np.full(60, 2000.0)]).astype(np.float32)
    bank = TraceBank.from_arrays(["x"], [rates], ref_rates=[20.0])
    cfg = fixed_config(peak_replicas=(2.0, 2.0), scrape_lag_s=(15.0, 15.0))
    cfg = dataclasses.replace(cfg, noise=False)
    params = sim.make_params(bank, 2, seed=0, config=cfg)
    params = dataclasses.replace(params, ingress=torch.tensor([True, False]))
    state, _ = sim.reset_fixed(
        params, torch.tensor([0, 0]), torch.tensor([0, 0]), torch.tensor([100, 100])
    )
    seen = []
    for _t in range(70):
        seen.append(sim.signals(state, params).inputs.rate_now.clone())
        state, *_ = sim.step(state, torch.zeros(2, dtype=torch.long), params)
    seen = torch.stack(seen)
    w = params.config.rate_window
    assert torch.allclose(seen[: 60 + 1], seen[0].expand(61, 2))  # nothing before lag + 1 step
    assert seen[60 + 1 + w, 0] > 10 * seen[0, 0]  # ingress sees the arrivals
    assert seen[60 + 1 + w, 1] < 3 * seen[0, 1]  # the app's counter is capped by capacity


def test_observed_p95_comes_from_the_histogram():
    """histogram_quantile over the exported buckets: close to, not equal to, the truth."""
    rates = np.full(200, 150.0, dtype=np.float32)
    bank = TraceBank.from_arrays(["x"], [rates], ref_rates=[150.0])
    cfg = dataclasses.replace(fixed_config(), noise=False)
    params = sim.make_params(bank, 1, seed=0, config=cfg)
    state, _ = sim.reset_fixed(params, torch.tensor([0]), torch.tensor([0]), torch.tensor([100]))
    for _ in range(10):
        state, *_ = sim.step(state, torch.zeros(1, dtype=torch.long), params)
    seen = float(sim.signals(state, params).inputs.p95_s[0])
    true = float(state.p95_s[0])
    assert seen != true and 0.5 * true < seen < 2.0 * true


def test_hpa_view_sets_pods_aside_as_the_controller_does():
    rates = np.full(300, 100.0, dtype=np.float32)
    bank = TraceBank.from_arrays(["x"], [rates], ref_rates=[100.0])
    cfg = fixed_config(cpu_window_s=(30.0, 30.0), cpu_lag_s=(15.0, 15.0))
    params = sim.make_params(bank, 1, seed=0, config=cfg)  # delay 45 s = 3 steps
    state, _ = sim.reset_fixed(params, torch.tensor([0]), torch.tensor([0]), torch.tensor([200]))
    old = float(state.replicas[0])
    state, *_ = sim.step_replicas(state, state.replicas + 4, params)
    views = []
    for _ in range(12):
        v = sim.hpa_view(state, params)
        views.append((float(v.ready[0]), float(v.unready[0]), float(v.missing[0])))
        state, *_ = sim.step_replicas(state, state.replicas, params)
    # Age 1: no metric yet (window 2 steps) -> missing; ages 2: not Ready -> unready;
    # Ready at age 3, but counted only once ready for lag + window = 3 steps (age 6).
    assert views[0] == (old, 0.0, 4.0)
    assert views[1] == (old, 4.0, 0.0)
    assert views[4] == (old, 4.0, 0.0)
    assert views[5] == (old + 4, 0.0, 0.0)


def test_a_declared_capacity_reaches_the_features_and_the_rate_actions():
    """Per env, the policy declares its pods' true capacity or none (drawn); undeclared envs
    read load_per_pod = -1 and never play a rate action; the draw leaves every other parameter
    as it was without it."""
    half = sim.make_params(ramp_bank(), 64, seed=5)
    assert 0 < int(half.capacity_declared.sum()) < 64
    none = sim.SimConfig(domain=sim.DomainConfig(capacity_declared_probability=0.0))
    never = sim.make_params(ramp_bank(), 64, seed=5, config=none)
    assert not never.capacity_declared.any()
    for f in dataclasses.fields(sim.EnvParams):
        if f.name not in ("capacity_declared", "bank", "config"):
            assert torch.equal(getattr(half, f.name), getattr(never, f.name)), f.name
    state, obs = sim.reset(half)
    x = sim.measure(state, half)
    declared = half.capacity_declared
    assert torch.isnan(x.capacity_rps[~declared]).all()
    assert torch.equal(x.capacity_rps[declared], half.capacity[declared])
    assert torch.equal(features.capacity_declared(obs), declared)
    load = obs[declared, features.LOAD_PER_POD]
    want = x.rate_now[declared] / (half.capacity[declared] * state.replicas[declared])
    assert torch.allclose(load, torch.clamp(want, max=4.0).float(), rtol=1e-5)
    q = torch.zeros(64, actions.N_ACTIONS)
    q[:, actions.ACTION_NAMES.index("rate_peak_at_70")] = 1.0
    _, _, _, _, _, info = sim.step_greedy(state, q, half)
    played_rate = info["action"] == actions.ACTION_NAMES.index("rate_peak_at_70")
    assert torch.equal(played_rate, declared)


def test_an_estimated_capacity_stands_in_where_none_is_declared():
    """With the estimate on, an env that declares no capacity sizes with rate over busy pods
    (median over 30 minutes): close to the true capacity once the points are there, none
    before; declared envs keep theirs; with it off nothing changes."""
    rates = (80 + 40 * np.sin(np.arange(400) / 30.0)).astype(np.float32)
    bank = TraceBank.from_arrays(["x"], [rates], ref_rates=[120.0])
    base = fixed_config(peak_replicas=(3.0, 3.0))
    on = dataclasses.replace(
        base,
        domain=dataclasses.replace(
            base.domain, capacity_declared_probability=0.5, capacity_estimated=True
        ),
    )
    n = 16
    params = sim.make_params(bank, n, seed=3, config=on)
    declared = params.capacity_declared
    assert 0 < int(declared.sum()) < n
    zero = torch.zeros(n, dtype=torch.long)
    state, _ = sim.reset_fixed(params, zero, zero, torch.full((n,), 300))
    x = sim.signals(state, params).inputs  # a flat history at the first rate: every point
    assert torch.equal(x.capacity_rps[declared], params.capacity[declared])
    est = x.capacity_rps[~declared] / params.capacity[~declared]
    assert ((est - 1).abs() < 0.05).all(), est
    for _ in range(150):
        state, *_ = sim.step(state, zero, params)
    x = sim.signals(state, params).inputs
    est = x.capacity_rps[~declared] / params.capacity[~declared]
    assert ((est - 1).abs() < 0.1).all(), est
    off = sim.make_params(bank, n, seed=3, config=base)
    state, _ = sim.reset_fixed(off, zero, zero, torch.full((n,), 300))
    x = sim.signals(state, off).inputs
    assert torch.isnan(x.capacity_rps[~off.capacity_declared]).all()


def test_the_capacity_estimate_takes_the_median_of_the_points_it_can_trust():
    cap = 50.0
    busy = torch.tensor([[2.0] * 31, [0.2] * 31, [2.0] * 9 + [0.1] * 22, [3.0] * 31])
    rate = busy * cap
    rate[0, :10] *= 3.0  # a step the CPU has not caught up with yet: outvoted
    rate[3] = rate[3] * 2.0  # saturated: above 90 % of the 3 pods ready, not used
    ready = torch.tensor([4.0, 4.0, 4.0, 3.0])
    est = features.estimate_capacity(rate, busy, ready)
    assert est[0] == pytest.approx(cap)
    assert torch.isnan(est[1:]).all()  # too little work; too few points; saturated
    rate[0, 20] = math.nan
    assert features.estimate_capacity(rate, busy, ready)[0] == pytest.approx(cap)


def _busy_peak_by_hand(state, params, env: int) -> float:
    """``busy_peak_30m`` of one env from its busy-pod history, loop by loop: points 60 s apart
    over 30 minutes, each the mean over the env's CPU window ending its CPU lag before it."""
    hist = state.busy_hist[env].tolist()
    n, w, lag = len(hist), int(params.cpu_window[env]), int(params.cpu_lag[env])
    points = []
    for o in params.config.long_peak_offsets:
        end = n - lag - o  # exclusive
        points.append(sum(hist[end - w : end]) / w)
    return max(points)


def test_the_30_minute_peaks_hold_a_burst_for_30_minutes_then_let_it_go():
    """A 2-minute burst in a flat load: ``rate_peak_30m`` and ``busy_peak_30m`` (the CPU hold's
    input) read it for 30 minutes after it, ``rate_peak_15m`` for 15; each env's CPU peak equals
    the one computed by hand from its history (its own CPU window and lag)."""
    rates = np.concatenate([np.full(140, 20.0), np.full(8, 60.0), np.full(220, 20.0)])
    bank = TraceBank.from_arrays(["x"], [rates.astype(np.float32)], ref_rates=[20.0])
    cfg = dataclasses.replace(fixed_config(peak_replicas=(2.0, 2.0)), noise=False)
    n = 8
    params = sim.make_params(bank, n, seed=5, config=cfg)
    assert len(set(params.cpu_window.tolist())) > 1 and len(set(params.cpu_lag.tolist())) > 1
    zero = torch.zeros(n, dtype=torch.long)
    state, _ = sim.reset_fixed(params, zero, zero, torch.full((n,), 360))
    seen = []
    for _t in range(360):
        x = sim.signals(state, params).inputs
        seen.append((x.rate_peak_15m.clone(), x.rate_peak_30m.clone(), x.busy_peak_30m.clone()))
        for env in range(n):
            assert float(x.busy_peak_30m[env]) == pytest.approx(
                _busy_peak_by_hand(state, params, env), rel=1e-5
            )
        state, *_ = sim.step(state, zero, params)  # hold: the pods stay as they are
    p15, p30, b30 = (torch.stack(s) for s in zip(*seen, strict=True))
    base_rate, base_busy = p30[100], b30[100]
    after = 140 + 8 + 10  # the burst is in every window by now
    assert (p15[after] > 1.5 * base_rate).all() and (p30[after] > 1.5 * base_rate).all()
    assert (b30[after] > 1.4 * base_busy).all()
    at_20 = 140 + 8 + 80  # 20 minutes on: gone from the 15-minute peak, held by the 30-minute
    assert torch.allclose(p15[at_20], base_rate, rtol=0.05)
    assert (p30[at_20] > 1.5 * base_rate).all() and (b30[at_20] > 1.4 * base_busy).all()
    at_35 = 140 + 8 + 140  # 35 minutes on: let go
    assert torch.allclose(p30[at_35], base_rate, rtol=0.05)
    assert torch.allclose(b30[at_35], base_busy, rtol=0.05)


def test_the_slo_priority_weighs_the_slo_term_and_reaches_the_features():
    """Per env the policy's SLO priority (drawn log-uniformly, last, so every other parameter
    is what it was without it) multiplies the reward's SLO weight and reaches the features as
    its log2; rollouts score the return at priority 1 whatever the env's priority."""
    from qscale.simulator.rollout import rollout

    base = sim.make_params(ramp_bank(), 64, seed=5)
    cfg = sim.SimConfig(domain=sim.DomainConfig(slo_priority=(0.25, 4.0)))
    drawn = sim.make_params(ramp_bank(), 64, seed=5, config=cfg)
    for f in dataclasses.fields(sim.EnvParams):
        if f.name not in ("slo_priority", "bank", "config"):
            assert torch.equal(getattr(base, f.name), getattr(drawn, f.name)), f.name
    assert torch.equal(base.slo_priority, torch.ones(64))
    p = drawn.slo_priority
    assert bool((p >= 0.25).all() and (p <= 4.0).all()) and p.min() < 0.5 and p.max() > 2.0
    col = features.FEATURE_NAMES.index("slo_priority")
    (s0, obs0), (s1, obs1) = sim.reset(base), sim.reset(drawn)
    assert torch.equal(obs0[:, col], torch.zeros(64))
    assert torch.allclose(obs1[:, col], torch.log2(p), atol=1e-6)
    others = [i for i in range(features.N_FEATURES) if i != col]
    assert torch.equal(obs0[:, others], obs1[:, others])
    # one pod each under the ramp's load: the same world, some envs over their SLO
    one = torch.ones(64)
    _, _, r0, _, _, i0 = sim.step_replicas(s0, one, base)
    _, _, r1, _, _, i1 = sim.step_replicas(s1, one, drawn)
    viol = i0["violation"]
    assert torch.equal(viol, i1["violation"]) and 0 < int(viol.sum()) < 64
    w = cfg.reward.slo
    assert torch.allclose(r1 - r0, -w * (p - 1.0) * viol.to(r0.dtype), atol=1e-5)

    class Hold:
        name, uses_shield = "hold", True

        def reset(self, state, params):
            pass

        def act(self, state, obs, params):
            return torch.zeros(params.n_envs, actions.N_ACTIONS)

    runs = []
    for params in (base, drawn):
        state, obs = sim.reset_fixed(
            params, torch.zeros(64, dtype=torch.long), torch.arange(64) * 20, torch.full((64,), 40)
        )
        runs.append(rollout(Hold(), params, state, obs))
    assert runs[0].slo_violation_minutes.sum() > 0
    assert torch.equal(runs[0].slo_violation_minutes, runs[1].slo_violation_minutes)
    assert torch.allclose(runs[0].episode_return, runs[1].episode_return, rtol=1e-6)


def test_a_priority_outside_its_range_is_refused():
    with pytest.raises(ValueError, match="slo_priority"):
        sim.DomainConfig(slo_priority=(0.0, 1.0))
    with pytest.raises(ValueError, match="slo_priority"):
        sim.DomainConfig(slo_priority=(2.0, 1.0))
