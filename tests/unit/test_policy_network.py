"""The Q-network: dueling head, TorchScript, and the normalization it carries."""

from __future__ import annotations

import warnings

import pytest
import torch

from qscale import actions, features
from qscale.policy.network import QNetwork


def _script(net: QNetwork) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(net)


@pytest.mark.parametrize("hidden", [(16,), (128, 128), (32, 64, 16)])
@pytest.mark.parametrize("batch", [1, 7])
def test_shapes(hidden: tuple[int, ...], batch: int) -> None:
    net = QNetwork(hidden_sizes=hidden)
    q = net(torch.rand(batch, features.N_FEATURES))
    assert q.shape == (batch, actions.N_ACTIONS)
    assert net.config() == {
        "n_features": features.N_FEATURES,
        "n_actions": actions.N_ACTIONS,
        "hidden_sizes": list(hidden),
    }


def test_dueling_head_is_value_plus_centered_advantage() -> None:
    torch.manual_seed(0)
    net = QNetwork(hidden_sizes=(32, 32))
    x = torch.rand(10, features.N_FEATURES)
    h = net.torso(x)
    q = net(x)
    # The advantages are centred, so the mean over actions is exactly V.
    torch.testing.assert_close(q.mean(dim=1, keepdim=True), net.value(h))
    adv = net.advantage(h)
    torch.testing.assert_close(q - net.value(h), adv - adv.mean(dim=1, keepdim=True))


def test_scripted_network_matches_eager() -> None:
    torch.manual_seed(1)
    net = QNetwork().eval()
    scripted = _script(net)
    x = torch.randn(64, features.N_FEATURES)
    with torch.no_grad():
        assert torch.equal(scripted(x), net(x))


def test_normalization_is_applied_and_scripted() -> None:
    torch.manual_seed(2)
    mean = torch.linspace(-1.0, 1.0, features.N_FEATURES)
    std = torch.linspace(0.5, 2.0, features.N_FEATURES)
    net = QNetwork(hidden_sizes=(16,), obs_mean=mean, obs_std=std)
    plain = QNetwork(hidden_sizes=(16,))
    plain.load_state_dict(
        {k: v for k, v in net.state_dict().items() if not k.startswith("obs_")}, strict=False
    )
    x = torch.rand(5, features.N_FEATURES)
    with torch.no_grad():
        torch.testing.assert_close(net(x), plain((x - mean) / std))
        torch.testing.assert_close(_script(net)(x), net(x))
    assert net.normalization()["std"] == pytest.approx(std.tolist())


def test_default_normalization_is_identity() -> None:
    net = QNetwork()
    assert torch.equal(net.obs_mean, torch.zeros(features.N_FEATURES))
    assert torch.equal(net.obs_std, torch.ones(features.N_FEATURES))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"obs_std": torch.zeros(features.N_FEATURES)},
        {"obs_mean": torch.zeros(3)},
        {"obs_mean": torch.full((features.N_FEATURES,), float("nan"))},
        {"hidden_sizes": ()},
        {"hidden_sizes": (0,)},
    ],
)
def test_bad_arguments_rejected(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        QNetwork(**kwargs)
