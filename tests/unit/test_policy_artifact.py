"""Artifacts: what is exported loads back identically, and anything altered is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from qscale import features
from qscale.policy.artifact import (
    MANIFEST,
    MODEL_FILE,
    STATE_DICT_FILE,
    ArtifactError,
    export,
    load_policy,
    read_manifest,
    update_evaluation,
)
from qscale.policy.network import QNetwork
from qscale.simulator.splits import packaged_trace


@pytest.fixture
def network() -> QNetwork:
    torch.manual_seed(3)
    mean = torch.linspace(0.0, 0.5, features.N_FEATURES)
    std = torch.linspace(1.0, 2.0, features.N_FEATURES)
    return QNetwork(hidden_sizes=(32, 16), obs_mean=mean, obs_std=std).eval()


@pytest.fixture
def exported(tmp_path: Path, network: QNetwork) -> Path:
    return export(
        network,
        tmp_path / "model",
        train_config={"seed": 1, "hidden_sizes": (32, 16)},
        trace_files=[packaged_trace()],
    )


def _obs(n: int = 256) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    lo = torch.tensor([f.lo for f in features.FEATURES])
    hi = torch.tensor([f.hi for f in features.FEATURES])
    return lo + torch.rand(n, features.N_FEATURES, generator=g) * (hi - lo)


@pytest.mark.parametrize("prefer", ["torchscript", "eager"])
def test_roundtrip_gives_same_q_values(exported: Path, network: QNetwork, prefer: str) -> None:
    loaded = load_policy(exported, prefer=prefer)  # type: ignore[arg-type]
    assert loaded.kind == prefer
    x = _obs()
    with torch.no_grad():
        expected, got = network(x), loaded.module(x)
    if prefer == "eager":
        assert torch.equal(got, expected)
    else:  # the optimized graph may reorder float ops (addmm -> matmul + add)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        assert torch.equal(got.argmax(1), expected.argmax(1))


def test_manifest_contents(exported: Path, network: QNetwork) -> None:
    m = read_manifest(exported)
    assert m["spec_hash"] == features.SPEC_HASH
    assert m["feature_names"] == list(features.FEATURE_NAMES)
    assert m["network"]["hidden_sizes"] == [32, 16]
    assert m["observation_normalization"]["mean"] == pytest.approx(network.obs_mean.tolist())
    assert m["training_config"] == {"seed": 1, "hidden_sizes": [32, 16]}
    assert m["trace_files"][0]["name"] == "nasa_excerpt"
    assert len(m["trace_files"][0]["sha256"]) == 64
    assert m["evaluation"] == {}
    assert m["created_at"].endswith("+00:00")


def test_tampered_model_refused(exported: Path) -> None:
    with open(exported / MODEL_FILE, "ab") as f:
        f.write(b"\0")
    with pytest.raises(ArtifactError, match="sha256"):
        load_policy(exported)


def test_swapped_weights_refused(exported: Path, tmp_path: Path) -> None:
    torch.save(QNetwork(hidden_sizes=(32, 16)).state_dict(), exported / STATE_DICT_FILE)
    with pytest.raises(ArtifactError, match="sha256"):
        load_policy(exported, prefer="eager")


def test_other_feature_spec_refused(exported: Path) -> None:
    m = json.loads((exported / MANIFEST).read_text())
    m["spec_hash"] = "0123456789abcdef"
    (exported / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="feature spec"):
        load_policy(exported)


@pytest.mark.parametrize("name", [MODEL_FILE, STATE_DICT_FILE, MANIFEST])
def test_missing_file_refused(exported: Path, name: str) -> None:
    (exported / name).unlink()
    with pytest.raises(ArtifactError, match="missing"):
        load_policy(exported)


def test_missing_directory_and_garbage_manifest(tmp_path: Path, exported: Path) -> None:
    with pytest.raises(ArtifactError, match="no such model directory"):
        load_policy(tmp_path / "nope")
    (exported / MANIFEST).write_text("{not json")
    with pytest.raises(ArtifactError, match="unreadable manifest"):
        load_policy(exported)


def test_error_is_one_line(exported: Path) -> None:
    (exported / MODEL_FILE).unlink()
    with pytest.raises(ArtifactError) as e:
        load_policy(exported)
    assert "\n" not in str(e.value)


def test_update_evaluation_keeps_model_valid(exported: Path) -> None:
    before = read_manifest(exported)
    table = {"dqn": {"cost_replica_hours": 1.5, "slo_violation_minutes": torch.tensor(2.0)}}
    update_evaluation(exported, table)
    after = read_manifest(exported)
    assert after["evaluation"] == {"dqn": {"cost_replica_hours": 1.5, "slo_violation_minutes": 2.0}}
    for key in ("model_sha256", "state_dict_sha256", "spec_hash", "created_at"):
        assert after[key] == before[key]
    load_policy(exported)  # still verifies


def test_unoptimized_export_is_bit_identical(tmp_path: Path, network: QNetwork) -> None:
    path = export(network, tmp_path / "plain", optimize=False)
    loaded = load_policy(path)
    x = _obs()
    with torch.no_grad():
        assert torch.equal(loaded.module(x), network(x))
