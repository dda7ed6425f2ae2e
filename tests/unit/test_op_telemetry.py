"""Per-model telemetry through the tick: the chosen action's Q-value and the TD error of each
logged transition (an Enforce model decision and the tick after it)."""

from __future__ import annotations

import pytest
from opfakes import SPEC, T0, world

from qscale.policy.default import default_model_path

pytestmark = pytest.mark.asyncio


def sample(w, name: str, suffix: str, **labels) -> float:
    return w.engine.metrics.registry.get_sample_value(name + suffix, labels) or 0.0


async def test_q_values_and_td_errors_are_exported_per_model():
    w = world(default_model_path())
    w.deployment("a", "web", 3)
    for i in range(8):
        w.prom.set("a", "web", cpu=0.5, rate=60.0, p95=0.1 if i % 2 else 0.5)
        w.sync_from_kube()
        w.policy("a", "web", SPEC)
        await w.tick(T0 + 15 * i)
    label = next(iter(s.labels["model"] for m in w.engine.metrics.q_value.collect()
                      for s in m.samples if s.name.endswith("_count")))  # fmt: skip
    assert label.startswith("default@")
    assert sample(w, "qscale_q_value", "_count", model=label) == 8
    # Every decision but the first closes a transition.
    assert sample(w, "qscale_td_error", "_count", model=label) == 7
    mean = sample(w, "qscale_td_error", "_sum", model=label) / 7
    # an error, not a Q-value: positive and below the largest |Q| seen (the histogram has no
    # _sum with negative buckets: every Q-value lies above the last bucket that holds none)
    bounds = [-100.0, -50.0, -25.0, -10.0, -5.0, -2.5, -1.0, -0.5, 0.0]
    counts = [sample(w, "qscale_q_value", "_bucket", model=label, le=str(b)) for b in bounds]
    floor = max(b for b, n in zip(bounds, counts, strict=True) if n == 0)
    assert 0.0 < mean < abs(floor), (mean, floor)


async def test_no_td_error_without_a_model_decision_or_outside_enforce():
    w = world(default_model_path())
    w.deployment("a", "web", 3)
    for i in range(4):
        w.prom.set("a", "web", cpu=0.5, rate=60.0, p95=0.1)
        w.policy("a", "web", {**SPEC, "mode": "Shadow"})
        await w.tick(T0 + 15 * i)
    w.prom.down = True
    for i in range(4, 8):
        w.policy("a", "web", SPEC)
        await w.tick(T0 + 15 * i)
    assert not any(
        s.value for m in w.engine.metrics.td_error.collect() for s in m.samples
        if s.name.endswith("_count")
    )  # fmt: skip
