import dataclasses

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


def test_scale_down_removes_starting_pods_first():
    params = sim.make_params(ramp_bank(), 1, seed=0, config=fixed_config())
    state, _ = sim.reset(params)
    ready0 = float(state.ready[0])
    state, *_ = sim.step_replicas(state, state.replicas + 3, params)
    assert float(state.pending.sum()) == 3.0
    state, *_ = sim.step_replicas(state, state.replicas - 2, params)
    assert float(state.pending.sum()) == 1.0
    assert float(state.ready[0]) == ready0


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


def test_features_are_scale_free():
    """The same service at 10x the traffic with 10x the pods reads the same observation."""

    def obs_for(k):
        x = features.FeatureInputs(
            utilization=torch.tensor([0.6]),
            target_utilization=torch.tensor([0.7]),
            p95_s=torch.tensor([0.3]),
            slo_s=torch.tensor([0.6]),
            rate_now=torch.tensor([120.0 * k]),
            rate_short_ago=torch.tensor([100.0 * k]),
            rate_long_ago=torch.tensor([80.0 * k]),
            replicas=torch.tensor([4.0]),
            ready_replicas=torch.tensor([3.0]),
            min_replicas=torch.tensor([1.0]),
            max_replicas=torch.tensor([10.0]),
            since_scale_up_s=torch.tensor([30.0]),
            since_scale_down_s=torch.tensor([float("inf")]),
        )
        return features.compute(x)

    torch.testing.assert_close(obs_for(1.0), obs_for(1000.0))
    assert obs_for(1.0)[0, features.FEATURE_NAMES.index("since_scale_down")] == 1.0


def test_spec_hash_is_stable_and_sensitive():
    assert features._spec_hash() == features.SPEC_HASH
    assert len(features.SPEC_HASH) == 16
    original = features.FEATURES
    try:
        features.FEATURES = (*original[:-1], dataclasses.replace(original[-1], hi=2.0))
        assert features._spec_hash() != features.SPEC_HASH
    finally:
        features.FEATURES = original


@pytest.mark.parametrize(
    ("replicas", "action", "expected"),
    [
        (5, "hold", 5),
        (5, "minus_1", 4),
        (5, "plus_1", 6),
        (5, "times_0.75", 3),
        (2, "times_0.75", 1),
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
    assert steps.min() in (1, 2) and steps.max() == 8  # ceil(delay / 15 s) over 15-120 s


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
