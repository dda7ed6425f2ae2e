"""One helper batches every frozen tensor dataclass: cat, select and split round-trip, nested
dataclasses and shared fields included."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

from qscale import batching, features
from qscale.decision import Signals
from qscale.guardrails import ShieldState
from qscale.simulator import env as sim
from qscale.simulator.splits import packaged_trace
from qscale.simulator.tracebank import TraceBank


def _signals(b: int, base: float) -> Signals:
    names = [f.name for f in features.FeatureInputs.__dataclass_fields__.values()]
    inputs = features.FeatureInputs(
        **{n: base + i + torch.arange(b, dtype=torch.float32) for i, n in enumerate(names)}
    )
    return Signals(inputs, torch.full((b,), base), torch.ones(b, dtype=torch.bool), torch.zeros(b))


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(torch.nan_to_num(a), torch.nan_to_num(b))
    return all(_equal(getattr(a, k), getattr(b, k)) for k in a.__dataclass_fields__)


def test_cat_select_split_round_trip_nested():
    a, b = _signals(2, 0.0), _signals(3, 100.0)
    both = batching.cat([a, b])
    assert both.inputs.replicas.shape == (5,) and both.max_replicas.tolist()[2:] == [100.0] * 3
    assert _equal(batching.select(both, torch.tensor([2, 3, 4])), b)
    rows = batching.split(both)
    assert len(rows) == 5 and rows[1].inputs.replicas.shape == (1,)
    assert _equal(batching.cat(rows), both)


def test_shield_state_2d_fields():
    s = ShieldState.init(3)
    s = ShieldState(s.last_up_s + torch.arange(3.0), *list(s.__dict__.values())[1:])
    rows = batching.split(s)
    assert rows[2].bucket_max.shape == (1, s.bucket_max.shape[1])
    assert _equal(batching.cat(rows), s)
    mask = torch.tensor([True, False, True])
    assert batching.select(s, mask).last_up_s.tolist() == [float("-inf")] * 2


def test_shared_fields_are_taken_once_and_must_agree():
    bank = TraceBank.from_files([packaged_trace()])
    p1 = sim.make_params(bank, 4, seed=0)
    p2 = sim.make_params(bank, 2, seed=1)
    both = batching.cat([p1, p2])
    assert both.n_envs == 6 and both.bank is p1.bank and both.config is p1.config
    assert torch.equal(both.capacity[4:], p2.capacity)
    other = sim.make_params(TraceBank.from_arrays(["x"], [torch.ones(400)]), 2, seed=1)
    with pytest.raises(ValueError, match="bank differs"):
        batching.cat([p1, other])


def test_a_class_without_batched_fields_is_refused():
    @dataclass(frozen=True)
    class Only:
        name: str
        batch_shared: ClassVar[frozenset[str]] = frozenset({"name"})

    with pytest.raises(ValueError, match="no batched field"):
        batching.split(Only("x"))
    with pytest.raises(ValueError, match="at least one"):
        batching.cat([])
