"""The trainer's pieces that know about the rule floor: DQfD's large-margin loss, exploration
and the Double-DQN target restricted to the available actions, the demonstrations' settings."""

from __future__ import annotations

import pytest
import torch

from qscale import actions, features
from qscale.policy.replay import Transitions
from qscale.policy.train import (
    TrainConfig,
    demonstrated,
    double_dqn_target,
    epsilon_greedy,
    gather_demonstrations,
    margin_loss,
)
from qscale.simulator.splits import packaged_trace
from qscale.simulator.tracebank import TraceBank

RATE = [i for i, a in enumerate(actions.ACTIONS) if a.kind in actions.RATE_KINDS]


def test_margin_loss_is_zero_only_when_the_rule_leads_by_the_margin():
    q = torch.tensor([[1.0, 0.5, 0.0], [1.0, 0.95, 0.0], [0.0, 2.0, 0.0]])
    rule = torch.tensor([0, 0, 0])
    per_row = [float(margin_loss(q[i : i + 1], rule[i : i + 1], 0.1)) for i in range(3)]
    assert per_row[0] == 0.0  # leads by 0.5 > 0.1
    assert per_row[1] == pytest.approx(0.05)  # 0.95 + 0.1 - 1.0
    assert per_row[2] == pytest.approx(2.1)  # 2.0 + 0.1 - 0.0
    assert float(margin_loss(q, rule, 0.1)) == pytest.approx(sum(per_row) / 3)
    # its gradient lifts the rule's Q and lowers the offending action's
    q.requires_grad_(True)
    margin_loss(q[2:], rule[2:], 0.1).backward()
    assert q.grad[2].tolist() == [-1.0, 1.0, 0.0]


def test_exploration_draws_only_available_actions():
    torch.manual_seed(0)
    n = 4000
    avail = actions.available(torch.arange(n) % 2 == 0)
    greedy = torch.zeros(n, dtype=torch.int64)
    out = epsilon_greedy(greedy, avail, epsilon=1.0)
    assert avail[torch.arange(n), out].all()
    assert set(out[0::2].tolist()) == set(range(actions.N_ACTIONS))
    assert set(out[1::2].tolist()) == set(range(actions.N_ACTIONS)) - set(RATE)
    assert torch.equal(epsilon_greedy(greedy, avail, epsilon=0.0), greedy)


def test_double_dqn_target_bootstraps_from_an_available_action():
    """Where the next state declares no capacity, the next action is not a rate action even if
    the online network ranks one highest."""

    class Net(torch.nn.Module):
        def forward(self, obs):
            q = torch.zeros(obs.shape[0], actions.N_ACTIONS)
            q[:, RATE[0]] = 10.0
            q[:, 0] = 1.0
            return q

    class Target(torch.nn.Module):
        def forward(self, obs):
            return torch.arange(actions.N_ACTIONS, dtype=torch.float32).repeat(obs.shape[0], 1)

    next_obs = torch.zeros(2, features.N_FEATURES)
    next_obs[0, features.LOAD_PER_POD] = 0.5  # declared
    next_obs[1, features.LOAD_PER_POD] = -1.0  # none declared
    data = Transitions(
        obs=torch.zeros(2, features.N_FEATURES), action=torch.zeros(2, dtype=torch.int64),
        ret=torch.zeros(2), next_obs=next_obs, discount=torch.ones(2), bootstrap=torch.ones(2),
    )  # fmt: skip
    assert double_dqn_target(Net(), Target(), data).tolist() == [float(RATE[0]), 0.0]


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"demo_action": "rate_peak_at_99"}, "demo_action"),
        ({"demo_env_steps": 10}, "demo_env_steps"),
        ({"demo_action_cpu": "rate_peak_at_70"}, "demo_action_cpu"),
        ({"demo_action_cpu": "nope"}, "demo_action_cpu"),
        ({"demo_batch_fraction": 1.0}, "demo_batch_fraction"),
        ({"demo_margin": -0.1}, "demo_margin"),
        ({"demo_weight": -1.0}, "demo_weight"),
        ({"demo_pretrain_updates": -1}, "demo_pretrain_updates"),
        ({"demo_target_per_doubling": -0.1}, "demo_target_per_doubling"),
    ],
)
def test_bad_demonstration_settings_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kw)
    TrainConfig(demo_action="none", demo_env_steps=10)  # no demonstrations: nothing to check


@pytest.mark.parametrize("cpu_rule", ["peak_at_80", "busy_at_65", "none"])
def test_demonstrations_play_the_rule_each_cluster_can_play(cpu_rule):
    """The rate rule where a capacity is declared, the CPU rule where none is; with no CPU rule
    every demonstration cluster declares its capacity, so all of them show the rate rule. With
    the priority slope off each is the named action everywhere."""
    cfg = TrainConfig(traces=[str(packaged_trace())], n_envs=32, demo_env_steps=640,
                      demo_action_cpu=cpu_rule, device="cpu",
                      demo_target_per_doubling=0.0)  # fmt: skip
    bank = TraceBank.from_files(cfg.traces, cfg.train_split, cfg.dt)
    rb = gather_demonstrations(cfg, bank, torch.device("cpu"))
    assert rb.size >= cfg.demo_env_steps
    obs, act = rb.obs[: rb.size], rb.action[: rb.size]
    declared = features.capacity_declared(obs)
    rate = actions.ACTION_NAMES.index(cfg.demo_action)
    assert bool((act[declared] == rate).all())
    if cpu_rule == "none":
        assert bool(declared.all())
    else:
        assert 0 < int(declared.sum()) < rb.size
        assert bool((act[~declared] == actions.ACTION_NAMES.index(cpu_rule)).all())


def test_the_demonstrated_rule_follows_each_clusters_slo_priority():
    """By default the demonstrated target falls 10 points per doubling of the priority (the
    rules' reward-best 30-minute setting at each priority on validation), nearest action of
    the same kind; every demonstrated transition shows its cluster's own."""
    p = torch.tensor([0.25, 0.5, 0.75, 1.0, 1.4, 2.0, 3.0, 4.0, 8.0, 16.0, 32.0])
    want = (90, 90, 80, 80, 80, 70, 60, 60, 50, 40, 30)
    names = [
        actions.ACTION_NAMES[i] for i in demonstrated("rate_holt30_at_80", -0.1 * torch.log2(p))
    ]
    assert names == [f"rate_holt30_at_{t}" for t in want]
    cpu = [actions.ACTION_NAMES[i] for i in demonstrated("cpu_peak30_at_80", -0.1 * torch.log2(p))]
    assert cpu == [f"cpu_peak30_at_{t}" for t in want]
    assert demonstrated("hold", torch.ones(3)).tolist() == [actions.HOLD] * 3
    cfg = TrainConfig(traces=[str(packaged_trace())], n_envs=32, demo_env_steps=640, device="cpu")
    bank = TraceBank.from_files(cfg.traces, cfg.train_split, cfg.dt)
    rb = gather_demonstrations(cfg, bank, torch.device("cpu"))
    obs, act = rb.obs[: rb.size], rb.action[: rb.size]
    log2p = obs[:, features.FEATURE_NAMES.index("slo_priority")]
    declared = features.capacity_declared(obs)
    want = torch.where(
        declared,
        demonstrated(cfg.demo_action, -0.1 * log2p),
        demonstrated(cfg.demo_action_cpu, -0.1 * log2p),
    )
    assert torch.equal(act, want)
    assert len(set(act.tolist())) >= 4  # several priorities, both kinds


def test_training_draws_slo_priorities_and_validates_at_the_default():
    """Each training cluster's policy sets a priority from the configured range; validation
    (the best-model choice) scores the default trade-off only; a range the feature cannot
    show is refused."""
    from qscale.policy.train import sim_config, validation_set

    cfg = TrainConfig(traces=[str(packaged_trace())], eval_envs=8, eval_steps=40)
    assert sim_config(cfg).domain.slo_priority == features.SLO_PRIORITY_RANGE
    params, _ = validation_set(cfg)
    assert torch.equal(params.slo_priority, torch.ones(8))
    fixed = TrainConfig(slo_priority_min=1.0, slo_priority_max=1.0)
    assert sim_config(fixed).domain.slo_priority == (1.0, 1.0)
    for lo, hi in ((0.1, 1.0), (1.0, 64.0), (2.0, 1.0)):
        with pytest.raises(ValueError, match="slo_priority"):
            TrainConfig(slo_priority_min=lo, slo_priority_max=hi)
