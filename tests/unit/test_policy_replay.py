"""n-step windows and the replay buffer, checked against a brute-force reference."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qscale.policy.replay import NStepWindow, ReplayBuffer, Transitions


def _reference(
    rewards: list[float], dones: list[bool], terms: list[bool], n: int, gamma: float
) -> list[tuple[float, int, int, bool]]:
    """For each step t: (n-step return, k, index of the step it bootstraps after, bootstrap)."""
    out = []
    for t in range(len(rewards)):
        ret, k = 0.0, 0
        for j in range(n):
            if t + j >= len(rewards):
                break
            ret += gamma**j * rewards[t + j]
            k += 1
            if dones[t + j]:
                break
        last = t + k - 1
        out.append((ret, k, last, not terms[last]))
    return out


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 5),
    steps=st.lists(st.tuples(st.floats(-5, 5), st.integers(0, 5)), min_size=1, max_size=30),
)
def test_nstep_matches_reference(n: int, steps: list[tuple[float, int]]) -> None:
    gamma = 0.9
    rewards = [r for r, _ in steps]
    # 0: continue, 1: truncated, 2: terminated (rarer by construction of the draw)
    kinds = [0 if c >= 2 else c + 1 for _, c in steps]
    dones = [k > 0 for k in kinds]
    terms = [k == 2 for k in kinds]
    win = NStepWindow(n, n_envs=1, obs_dim=1, device="cpu")
    emitted: list[Transitions] = []
    for t, r in enumerate(rewards):
        # obs encodes the step index, next_obs encodes "after step t" as t + 0.5
        win.push(
            torch.tensor([[float(t)]]),
            torch.tensor([t % 3]),
            torch.tensor([r]),
            torch.tensor([[t + 0.5]]),
            torch.tensor([dones[t]]),
            torch.tensor([terms[t]]),
        )
        if win.full:
            emitted.append(win.oldest(gamma))
    ref = _reference(rewards, dones, terms, n, gamma)
    # A transition is emitted once n steps have followed it, so the last n-1 stay pending.
    assert len(emitted) == max(0, len(rewards) - n + 1)
    for t, tr in enumerate(emitted):
        ret, k, last, boot = ref[t]
        assert tr.obs.item() == t
        assert tr.action.item() == t % 3
        assert tr.ret.item() == pytest.approx(ret, rel=1e-5, abs=1e-5)
        assert tr.discount.item() == pytest.approx(gamma**k)
        assert tr.next_obs.item() == last + 0.5
        assert tr.bootstrap.item() == float(boot)


def test_truncation_bootstraps_from_final_obs_per_env() -> None:
    """Two envs, one truncates mid-window: its return stops there and bootstraps from the
    pre-reset observation; the other env's return runs the full n steps."""
    win = NStepWindow(3, n_envs=2, obs_dim=1, device="cpu")
    final_obs = 99.0
    rows = [  # (reward, next_obs, done) per env
        ((1.0, 10.0, False), (1.0, 10.0, False)),
        ((2.0, final_obs, True), (2.0, 20.0, False)),
        ((4.0, 30.0, False), (4.0, 30.0, False)),
    ]
    for t, row in enumerate(rows):
        win.push(
            torch.full((2, 1), float(t)),
            torch.zeros(2, dtype=torch.int64),
            torch.tensor([r for r, _, _ in row]),
            torch.tensor([[o] for _, o, _ in row]),
            torch.tensor([d for _, _, d in row]),
            torch.zeros(2, dtype=torch.bool),
        )
    tr = win.oldest(0.5)
    assert tr.ret.tolist() == [1.0 + 0.5 * 2.0, 1.0 + 0.5 * 2.0 + 0.25 * 4.0]
    assert tr.next_obs[:, 0].tolist() == [final_obs, 30.0]
    assert tr.discount.tolist() == [0.25, 0.125]
    assert tr.bootstrap.tolist() == [1.0, 1.0]


def _transitions(b: int, offset: float = 0.0) -> Transitions:
    x = torch.arange(b, dtype=torch.float32)[:, None] + offset
    return Transitions(
        obs=x.expand(b, 3).clone(),
        action=torch.arange(b) % 6,
        ret=x[:, 0].clone(),
        next_obs=x.expand(b, 3) + 0.5,
        discount=torch.full((b,), 0.9),
        bootstrap=torch.ones(b),
    )


def test_buffer_wraps_around() -> None:
    rb = ReplayBuffer(10, obs_dim=3, device="cpu")
    rb.add(_transitions(6))
    rb.add(_transitions(6, offset=100.0))
    assert rb.size == 10 and rb.pos == 2
    assert rb.ret.tolist() == [104, 105, 2, 3, 4, 5, 100, 101, 102, 103]
    batch = rb.sample(32)
    assert torch.equal(batch.data.obs[:, 0], batch.data.ret)
    assert torch.equal(batch.weights, torch.ones(32))


def test_prioritized_sampling_follows_priorities() -> None:
    torch.manual_seed(0)
    rb = ReplayBuffer(8, obs_dim=3, device="cpu", prioritized=True, alpha=1.0, priority_eps=0.0)
    rb.add(_transitions(8))
    td = torch.zeros(8)
    td[3] = 1.0
    td[5] = 3.0
    rb.update_priorities(torch.arange(8), td)
    batch = rb.sample(4000, beta=1.0)
    counts = torch.bincount(batch.index, minlength=8).float() / 4000
    assert counts[3] == pytest.approx(0.25, abs=0.03)
    assert counts[5] == pytest.approx(0.75, abs=0.03)
    assert counts[[0, 1, 2, 4, 6, 7]].sum() == 0
    # Importance weights undo the sampling bias: the rarer row weighs more.
    w3 = batch.weights[batch.index == 3][0]
    w5 = batch.weights[batch.index == 5][0]
    assert w5.item() == pytest.approx(w3.item() / 3.0, rel=1e-5)
    # New transitions enter with the highest priority seen, so they are replayed soon.
    rb.add(_transitions(1))
    assert rb.priority[0].item() == pytest.approx(3.0)


def test_buffer_state_roundtrip() -> None:
    rb = ReplayBuffer(10, obs_dim=3, device="cpu", prioritized=True)
    rb.add(_transitions(4))
    rb.update_priorities(torch.tensor([1]), torch.tensor([2.0]))
    other = ReplayBuffer(10, obs_dim=3, device="cpu", prioritized=True)
    other.load_state_dict(rb.state_dict())
    assert (other.pos, other.size) == (rb.pos, rb.size)
    assert torch.equal(other.priority, rb.priority)
    assert torch.equal(other.next_obs, rb.next_obs)
