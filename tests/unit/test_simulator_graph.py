"""The step as one graph: no Python branch on tensor values, auto-reset per env."""

import dataclasses

import numpy as np
import pytest
import torch

from qscale import actions
from qscale.simulator import env as sim
from qscale.simulator.tracebank import TraceBank


def bank():
    t = np.arange(600)
    return TraceBank.from_arrays(
        ["sine", "ramp"], [100.0 + 80.0 * np.sin(t / 30.0), np.linspace(5.0, 300.0, 600)]
    )


def test_step_has_no_graph_break():
    dynamo = pytest.importorskip("torch._dynamo")
    params = sim.make_params(bank(), 8, seed=0, config=sim.SimConfig(episode_steps=5))
    state, _ = sim.reset(params)
    action = torch.full((8,), actions.HOLD, dtype=torch.int64)
    dynamo.reset()
    try:
        explained = dynamo.explain(sim.step)(state, action, params)
    finally:
        dynamo.reset()
    assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]
    assert explained.graph_count == 1


def test_final_obs_is_the_last_observation_before_the_reset():
    params = sim.make_params(bank(), 6, seed=1, config=sim.SimConfig(episode_steps=40))
    length = torch.tensor([3, 5, 40, 3, 7, 40])
    state, _ = sim.reset_fixed(params, torch.tensor([0, 1, 0, 1, 0, 1]), length * 0, length)
    for i in range(8):
        prev = state
        action = torch.full((6,), actions.HOLD, dtype=torch.int64)
        state, obs, _, _, trunc, info = sim.step(prev, action, params)
        assert torch.equal(trunc, (prev.t + 1) >= prev.ep_len)
        # Always there; the real last observation where truncated, the observation elsewhere.
        assert torch.equal(info["final_obs"][~trunc], obs[~trunc])
        if i == 2:
            assert trunc.tolist() == [True, False, False, True, False, False]
            assert (state.t[trunc] == 0).all() and (state.episode[trunc] == 1).all()
            assert not torch.equal(info["final_obs"][trunc], obs[trunc])


def test_an_auto_reset_starts_the_next_episode_as_a_fresh_env_would():
    """The reset rows are the ones ``reset`` draws for that episode, and envs that did not
    finish are untouched (they step on exactly as in a batch where nobody resets)."""
    params = sim.make_params(bank(), 5, seed=2, config=sim.SimConfig(episode_steps=4))
    state, _ = sim.reset(params)
    action = torch.full((5,), actions.HOLD, dtype=torch.int64)
    other = dataclasses.replace(state, ep_len=state.ep_len + 100)  # the same, never truncated
    for _ in range(4):
        state, obs, _, _, trunc, info = sim.step(state, action, params)
        other, obs_o, *_ = sim.step(other, action, params)
    assert trunc.all()
    assert torch.equal(info["final_obs"], obs_o)
    fresh = sim._measured(sim._random_episodes(params, torch.ones(5, dtype=torch.int64)), params)
    for k in ("pos", "ep_len", "scale", "pods", "rate_hist", "lat_hist", "cpu_all_hist"):
        assert torch.equal(getattr(state, k), getattr(fresh, k)), k
    assert torch.equal(obs, sim.observe(fresh, params))


@pytest.mark.parametrize("w", [1, 2, 3, 4])
def test_torch_sums_up_to_four_values_in_order(w):
    """What ``env._window_sums`` relies on to give the numbers a ``torch.sum`` gave."""
    assert w <= sim._SEQUENTIAL_SUM_MAX
    gen = torch.Generator().manual_seed(w)
    inner = torch.rand(4096, 9, generator=gen) * 1000.0
    outer = torch.rand(4096, 9, 15, generator=gen) * 1000.0
    s_in, s_out = inner[:, 2], outer[:, 2]
    for i in range(1, w):
        s_in, s_out = s_in + inner[:, 2 + i], s_out + outer[:, 2 + i]
    assert torch.equal(inner[:, 2 : 2 + w].contiguous().mean(dim=1), s_in / w)
    assert torch.equal(inner[:, 2 : 2 + w].mean(dim=1), s_in / w)
    assert torch.equal(outer[:, 2 : 2 + w].contiguous().sum(dim=1), s_out)
    assert torch.equal(outer[:, 2 : 2 + w].sum(dim=1), s_out)
