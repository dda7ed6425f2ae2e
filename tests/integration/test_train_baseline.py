"""The tuned-HPA reference a training run logs beside its evaluations."""

import pytest

from qscale.policy.train import TrainConfig, make_baseline, validation_set
from qscale.simulator import frontier as fr
from qscale.simulator.splits import packaged_trace


def test_tuned_hpa_reference_on_validation_windows():
    cfg = TrainConfig(traces=[str(packaged_trace())], eval_envs=4, eval_steps=120)
    hook = make_baseline(cfg)
    out = hook(*validation_set(cfg))
    for prefix in ("hpa", "hpa_tuned"):
        assert out[f"{prefix}_cost_replica_hours"] > 0
        assert out[f"{prefix}_slo_violation_minutes"] >= 0
        assert out[f"{prefix}_score"] < 0
    assert out["hpa_tuned_target"] in fr.HPA_TARGETS
    assert out["hpa_tuned_window_s"] in fr.HPA_WINDOWS_S
    assert make_baseline(TrainConfig(traces=cfg.traces, baseline="none")) is None


def test_unknown_baseline_refused():
    with pytest.raises(ValueError, match="baseline must be"):
        TrainConfig(baseline="magic")


def test_a_run_that_would_never_learn_is_refused():
    with pytest.raises(ValueError, match="no gradient update would run"):
        TrainConfig(total_env_steps=50_000, learning_starts=100_000)
