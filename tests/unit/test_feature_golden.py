"""The golden feature vector: :data:`qscale.features.SPEC_HASH` covers the arithmetic of
:func:`qscale.features.compute`, not only the spec's prose."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from qscale import features
from qscale.policy import artifact
from qscale.policy.default import default_model_path
from qscale.policy.network import QNetwork


def test_compute_gives_the_golden_vector_of_this_spec():
    assert features.SPEC_HASH in features.GOLDEN
    want = torch.tensor(features.GOLDEN[features.SPEC_HASH])
    assert want.shape == (len(features.GOLDEN_INPUTS), features.N_FEATURES)
    assert features.golden_mismatch() is None


def test_golden_inputs_exercise_every_feature_inside_its_clips():
    # Each feature takes at least one value strictly inside its range, so a change to its
    # arithmetic cannot hide behind a clip.
    obs = features.compute(features.golden_inputs())
    for j, f in enumerate(features.FEATURES):
        inside = (obs[:, j] > f.lo) & (obs[:, j] < f.hi)
        assert inside.any(), f.name


def _perturbed_log_ratio(now, before):
    floor = 1e-2 * torch.maximum(now, before) + 1e-12  # 1e-3 in the spec
    return torch.log((now + floor) / (before + floor))


def _scaled_compute(original):
    def compute(x):
        out = original(x).clone()
        out[:, features.FEATURE_NAMES.index("pending_fraction")] *= 1.01
        return out

    return compute


@pytest.mark.parametrize(
    ("attr", "value"),
    [
        ("_log_ratio", _perturbed_log_ratio),
        ("SINCE_SCALE_HORIZON_S", 600.0),
        ("_LOG_SCALE", features._LOG_SCALE * 1.001),
        ("compute", _scaled_compute(features.compute)),
    ],
    ids=["log_ratio_floor", "since_horizon", "replicas_scale", "one_column"],
)
def test_a_change_to_the_arithmetic_is_detected(monkeypatch, attr, value):
    monkeypatch.setattr(features, attr, value)
    msg = features.golden_mismatch()
    assert msg is not None
    assert "bump features.SPEC_VERSION" in msg
    assert "\n" not in msg


def test_a_spec_without_a_pinned_vector_is_refused(monkeypatch):
    monkeypatch.setattr(features, "SPEC_HASH", "0123456789abcdef")
    msg = features.golden_mismatch()
    assert msg is not None and "no golden feature vector" in msg


def test_loading_refuses_while_the_arithmetic_differs(monkeypatch):
    path = default_model_path()
    artifact.load_policy(path)  # fine as shipped
    monkeypatch.setattr(features, "_log_ratio", _perturbed_log_ratio)
    with pytest.raises(artifact.ArtifactError, match="golden vector") as e:
        artifact.load_policy(path)
    assert str(Path(path)) in str(e.value)


def test_export_refuses_while_the_arithmetic_differs(monkeypatch, tmp_path):
    monkeypatch.setattr(features, "SINCE_SCALE_HORIZON_S", 600.0)
    with pytest.raises(artifact.ArtifactError, match="not exported"):
        artifact.export(QNetwork(), tmp_path / "m")
    assert not (tmp_path / "m").exists()
