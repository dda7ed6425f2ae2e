"""The one serving core, table-driven: what decide() does with good, missing, stale or unknown
inputs, and that the simulator's step is exactly decide()."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import pytest
import torch

from qscale import actions, features
from qscale.decision import Signals, decide, greedy
from qscale.guardrails import Reason, ShieldConfig, ShieldState

CFG = ShieldConfig(down_stabilization_s=0.0, down_cooldown_s=0.0)
A = {name: i for i, name in enumerate(actions.ACTION_NAMES)}
NAN = math.nan


def signals(b=1, *, cpu=0.5, ratio=1.0, replicas=10.0, ready=10.0, p95=0.2, rate=100.0,
            present=True, age=0.0, min_r=1.0, max_r=50.0) -> Signals:  # fmt: skip
    def t(v):
        return torch.full((b,), float(v))

    inputs = features.FeatureInputs(
        cpu_utilization=t(cpu), cpu_limit_ratio=t(ratio), p95_s=t(p95), slo_s=t(0.5),
        rate_now=t(rate), rate_1m=t(rate), rate_5m=t(rate), rate_15m=t(rate),
        rate_peak_15m=t(rate), rate_peak_30m=t(rate), busy_peak_30m=t(0.0),
        replicas=t(replicas), ready_replicas=t(ready), min_replicas=t(min_r),
        since_scale_up_s=t(0.0), since_scale_down_s=t(0.0),
    )  # fmt: skip
    return Signals(inputs, t(max_r), torch.full((b,), present), t(age))


class Fixed(torch.nn.Module):
    """A 'network' that always prefers one action (and records what it was shown)."""

    def __init__(self, action: int):
        super().__init__()
        self.action = action
        self.seen: torch.Tensor | None = None

    def forward(self, obs):
        self.seen = obs
        q = torch.zeros(obs.shape[0], actions.N_ACTIONS)
        q[:, self.action] = 1.0
        return q


@dataclass(frozen=True)
class Case:
    name: str
    action: str
    expected: float
    reason: Reason
    kw: dict


CASES = [
    Case("hold holds", "hold", 10, Reason.OK, {}),
    Case("+1", "plus_1", 11, Reason.OK, {}),
    Case("x2 is step-limited to +100 %", "times_2", 20, Reason.OK, {}),
    Case("busy 5 pods at 50 % -> 10", "busy_at_50", 10, Reason.OK, {"cpu": 0.5}),
    Case("busy 9 pods at 65 % -> 14", "busy_at_65", 14, Reason.OK, {"cpu": 0.9}),
    Case("the limit ratio: 200 % of request at limit 4x is half busy", "busy_at_50", 10,
         Reason.OK, {"cpu": 2.0, "ratio": 4.0}),
    Case("busy 1 pod at 80 % -> 2, step limit 50 % -> 5", "busy_at_80", 5,
         Reason.STEP_LIMIT_DOWN, {"cpu": 0.1}),
    Case("missing metrics hold", "busy_at_80", 10, Reason.METRICS_MISSING,
         {"present": False, "cpu": 0.0}),
    Case("a missing CPU metric never reads as idle", "busy_at_80", 10,
         Reason.METRICS_MISSING, {"present": False, "cpu": NAN}),
    Case("stale metrics hold", "times_2", 10, Reason.METRICS_STALE, {"age": 120.0}),
    Case("missing metrics still respect the bounds", "hold", 50, Reason.AT_MAX,
         {"present": False, "replicas": 70.0, "ready": 70.0}),
    Case("unknown replicas: no decision", "plus_1", NAN, Reason.REPLICAS_UNKNOWN,
         {"replicas": NAN}),
    Case("at max", "times_2", 50, Reason.AT_MAX, {"replicas": 40.0, "ready": 40.0}),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_decide_table(case):
    net = Fixed(A[case.action])
    d = decide(signals(**case.kw), ShieldState.init(1), 1000.0, CFG, model=net, stale_after_s=60.0)
    got = float(d.replicas[0])
    assert (math.isnan(got) and math.isnan(case.expected)) or got == case.expected
    assert Reason(int(d.reason[0])) == case.reason
    if case.reason in (Reason.METRICS_MISSING, Reason.METRICS_STALE):
        assert torch.isnan(d.q_values).all() and torch.isnan(d.proposal).all()
    else:
        assert int(d.action[0]) == A[case.action]


def test_given_action_skips_the_network_and_matches_it():
    sig = signals(b=3, cpu=0.7)
    st = ShieldState.init(3)
    a = torch.tensor([A["plus_1"], A["busy_at_50"], A["hold"]])
    given = decide(sig, st, 0.0, CFG, action=a)
    assert given.observation is None and torch.isnan(given.q_values).all()
    for i in range(3):
        via_model = decide(sig, st, 0.0, CFG, model=Fixed(int(a[i])))
        assert via_model.replicas[i] == given.replicas[i]


def test_q_values_give_what_the_model_gives():
    sig = signals(b=2, cpu=0.7)
    st = ShieldState.init(2)
    net = Fixed(A["busy_at_50"])
    via_model = decide(sig, st, 0.0, CFG, model=net)
    via_q = decide(sig, st, 0.0, CFG, q_values=net(via_model.observation))
    assert torch.equal(via_q.replicas, via_model.replicas)
    assert torch.equal(via_q.action, via_model.action) and via_q.usable.all()


def test_exploration_replaces_the_greedy_action_before_the_shield():
    sig = signals(b=2, cpu=0.7, replicas=10.0)
    q = torch.zeros(2, actions.N_ACTIONS)
    q[:, A["hold"]] = 1.0
    seen = []

    def explore(greedy_action, available):
        seen.append(greedy_action.clone())
        assert available.shape == (2, actions.N_ACTIONS)
        return torch.tensor([A["hold"], A["times_2"]])

    d = decide(sig, ShieldState.init(2), 0.0, CFG, q_values=q, explore=explore)
    assert seen[0].tolist() == [A["hold"]] * 2
    assert d.action.tolist() == [A["hold"], A["times_2"]]
    assert d.replicas.tolist() == [10.0, 20.0]


def test_exactly_one_source_of_the_action():
    sig = signals()
    st = ShieldState.init(1)
    with pytest.raises(ValueError, match="exactly one"):
        decide(sig, st, 0.0, CFG)
    with pytest.raises(ValueError, match="exactly one"):
        decide(sig, st, 0.0, CFG, action=torch.tensor([0]), q_values=torch.zeros(1, 3))


def test_the_network_sees_the_feature_spec_with_time_since_from_the_shield():
    net = Fixed(A["hold"])
    st = ShieldState.init(1)
    st = replace(st, last_up_s=torch.tensor([940.0], dtype=torch.float64))
    decide(signals(), st, 1000.0, CFG, model=net)
    assert net.seen.shape == (1, features.N_FEATURES)
    up = features.FEATURE_NAMES.index("since_scale_up")
    assert net.seen[0, up].item() == pytest.approx(60.0 / features.SINCE_SCALE_HORIZON_S)


def test_greedy_is_argmax():
    q = torch.tensor([[0.1, 0.9, 0.3], [2.0, -1.0, 1.0]])
    assert greedy(q).tolist() == [1, 0]


def test_no_traffic_p95_nan_is_not_missing():
    net = Fixed(A["busy_at_80"])
    d = decide(signals(p95=NAN, rate=0.0, cpu=0.0), ShieldState.init(1), 0.0, CFG, model=net)
    assert Reason(int(d.reason[0])) != Reason.METRICS_MISSING
    p95 = features.FEATURE_NAMES.index("log2_p95_vs_slo")
    assert net.seen[0, p95].item() == features.FEATURES[p95].lo


def test_peak_actions_size_for_the_recent_peak():
    sig = signals(cpu=0.5, rate=100.0)
    sig = Signals(
        replace(sig.inputs, rate_peak_15m=torch.tensor([200.0])),
        sig.max_replicas,
        sig.present,
        sig.age_s,
    )
    d = decide(sig, ShieldState.init(1), 0.0, CFG, model=Fixed(A["peak_at_80"]))
    # busy 5 pods now, 10 at the peak rate; at 80 %: 13 pods.
    assert float(d.replicas[0]) == 13.0


def test_a_network_that_answers_nan_is_not_followed():
    """A broken or tampered model: its argmax would still pick an action; decide() holds."""

    class Broken(torch.nn.Module):
        def forward(self, obs):
            q = torch.zeros(obs.shape[0], actions.N_ACTIONS)
            q[:, A["times_2"]] = math.nan
            q[1:, A["plus_1"]] = math.inf
            return q

    d = decide(signals(b=2, replicas=10.0), ShieldState.init(2), 0.0, CFG, model=Broken())
    assert d.replicas.tolist() == [10.0, 10.0] and not d.usable.any()
    assert [Reason(int(r)) for r in d.reason] == [Reason.MODEL_OUTPUT_INVALID] * 2
    # exploration (training) plays whatever it plays: the check is for serving
    sane = decide(signals(), ShieldState.init(1), 0.0, CFG, model=Fixed(A["plus_1"]))
    assert Reason(int(sane.reason[0])) == Reason.OK


def _with_capacity(sig: Signals, capacity: list[float], peak: float | None = None) -> Signals:
    x = replace(sig.inputs, capacity_rps=torch.tensor(capacity))
    if peak is not None:
        x = replace(x, rate_peak_15m=torch.full_like(x.rate_now, peak))
    return Signals(x, sig.max_replicas, sig.present, sig.age_s)


def test_rate_actions_size_from_the_declared_capacity():
    # 100 req/s now, 160 at the 15-min peak, 10 req/s per pod declared
    sig = _with_capacity(signals(b=1, rate=100.0, replicas=10.0), [10.0], peak=160.0)
    now = decide(sig, ShieldState.init(1), 0.0, CFG, model=Fixed(A["rate_at_70"]))
    assert float(now.replicas[0]) == 15.0  # ceil(100 / (10 x 0.7)) = ceil(14.29)
    held = decide(sig, ShieldState.init(1), 0.0, CFG, model=Fixed(A["rate_peak_at_80"]))
    assert float(held.replicas[0]) == 20.0  # ceil(160 / (10 x 0.8))
    assert Reason(int(held.reason[0])) == Reason.OK


def test_rate_actions_are_unavailable_without_a_declared_capacity():
    """No capacity (NaN, or none at all, or a non-positive one): the argmax skips the rate
    actions, whatever their Q-values, and takes the best of the rest."""
    q = torch.zeros(4, actions.N_ACTIONS)
    q[:, A["rate_peak_at_70"]] = 5.0
    q[:, A["plus_1"]] = 1.0
    sig = _with_capacity(signals(b=4, rate=100.0, replicas=10.0), [10.0, NAN, 0.0, -3.0])
    d = decide(sig, ShieldState.init(4), 0.0, CFG, q_values=q)
    assert d.action.tolist() == [A["rate_peak_at_70"], A["plus_1"], A["plus_1"], A["plus_1"]]
    assert d.replicas.tolist() == [15.0, 11.0, 11.0, 11.0]
    none = decide(signals(b=1), ShieldState.init(1), 0.0, CFG, q_values=q[:1])
    assert none.action.tolist() == [A["plus_1"]]
    # what exploration is offered follows the same rule
    offered = []
    decide(sig, ShieldState.init(4), 0.0, CFG, q_values=q,
           explore=lambda g, avail: offered.append(avail) or g)  # fmt: skip
    rate = [i for i, a in enumerate(actions.ACTIONS) if a.kind in actions.RATE_KINDS]
    assert len(rate) == 18 and A["rate_peak30_at_80"] in rate and A["rate_holt30_at_30"] in rate
    assert offered[0][:, rate].tolist() == [[True] * 18] + [[False] * 18] * 3
    assert offered[0][:, : A["cpu_peak30_at_90"] + 1].all()


def test_30_minute_holds_size_for_the_highest_of_30_minutes():
    """``cpu_peak30_at_80``: the highest busy pods of 30 minutes (never below the busy pods now)
    at 80 %; ``rate_peak30_at_80``: the highest rate of 30 minutes at 80 % of the declared
    capacity, unavailable without one."""
    sig = signals(b=3, cpu=0.5, rate=100.0, replicas=10.0)  # busy now: 5 pods
    x = replace(
        sig.inputs,
        busy_peak_30m=torch.tensor([8.0, 2.0, NAN]),
        rate_peak_30m=torch.tensor([400.0, 50.0, 400.0]),
        capacity_rps=torch.tensor([50.0, 50.0, NAN]),
    )
    sig = Signals(x, sig.max_replicas, sig.present, sig.age_s)
    cpu = decide(sig, ShieldState.init(3), 0.0, CFG, model=Fixed(A["cpu_peak30_at_80"]))
    # ceil(8 / 0.8) = 10; the peak below the busy pods now: ceil(5 / 0.8) = 7; no peak: hold
    assert cpu.replicas.tolist() == [10.0, 7.0, 10.0]
    assert Reason(int(cpu.reason[2])) != Reason.OK
    free = replace(CFG, max_step_down_percent=100.0)  # no step limit in the way
    rate = decide(sig, ShieldState.init(3), 0.0, free, model=Fixed(A["rate_peak30_at_80"]))
    # ceil(400 / (50 x 0.8)) = 10; the peak below the rate now: ceil(100 / 40) = 3
    assert rate.replicas[:2].tolist() == [10.0, 3.0]
    assert rate.action.tolist()[:2] == [A["rate_peak30_at_80"]] * 2
    assert rate.action.tolist()[2] != A["rate_peak30_at_80"]  # no capacity: not available


def test_the_forecast_floor_sizes_for_the_highest_of_forecast_peak_and_now():
    """``rate_holt30_at_80``: ceil(max(forecast, 30-minute peak, rate now) / (capacity x 0.8));
    without a forecast it holds (the shield's reason says why), without a capacity it is not
    available."""
    sig = signals(b=4, cpu=0.5, rate=100.0, replicas=10.0)
    x = replace(
        sig.inputs,
        rate_peak_30m=torch.tensor([200.0, 200.0, 200.0, 200.0]),
        rate_forecast=torch.tensor([600.0, 150.0, NAN, 600.0]),
        capacity_rps=torch.tensor([50.0, 50.0, 50.0, NAN]),
    )
    sig = Signals(x, sig.max_replicas, sig.present, sig.age_s)
    free = replace(CFG, max_step_up_pods=100, max_step_up_percent=1000.0,
                   max_step_down_pods=100, max_step_down_percent=100.0)  # fmt: skip
    d = decide(sig, ShieldState.init(4), 0.0, free, model=Fixed(A["rate_holt30_at_80"]))
    # ceil(600 / 40) = 15; the forecast below the 30-minute peak: ceil(200 / 40) = 5; no
    # forecast: hold
    assert d.replicas[:3].tolist() == [15.0, 5.0, 10.0]
    assert Reason(int(d.reason[2])) != Reason.OK
    assert d.action.tolist()[:3] == [A["rate_holt30_at_80"]] * 3
    assert d.action.tolist()[3] != A["rate_holt30_at_80"]  # no capacity: not available


def test_greedy_among_available():
    q = torch.tensor([[0.0, 3.0, 1.0], [0.0, 3.0, 1.0]])
    avail = torch.tensor([[True, True, True], [True, False, True]])
    assert greedy(q, avail).tolist() == [1, 2]


def test_evaluate_no_capacity_flag_tells_the_model_nothing():
    from qscale import cli

    args = cli.parser().parse_args(["evaluate", "--no-capacity"])
    assert cli._profile(args).capacity_declared is False
    assert cli._profile(cli.parser().parse_args(["evaluate"])).capacity_declared is True
    assert cli._profile(args).sim_config().domain.capacity_declared_probability == 0.0
