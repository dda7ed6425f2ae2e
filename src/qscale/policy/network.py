"""The Q-network: an MLP torso with a dueling head, carrying its own input normalization.

Dueling (``Q = V + A - mean(A)``) because most autoscaling states have one obviously right
order of magnitude of value (how bad the current load situation is) and only small differences
between actions (hold vs. +1 pod): learning ``V`` once and the advantages separately makes
those small differences easier to fit.

The observation normalization lives in the module as buffers (identity by default, since
:mod:`qscale.features` already clips and scales every feature) so a saved artifact carries
whatever transform it was trained with, and serving can never forget to apply it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from qscale import actions, features

__all__ = ["QNetwork"]


class QNetwork(nn.Module):
    """``obs [B, n_features] -> Q-values [B, n_actions]``; ``torch.jit.script``-able."""

    def __init__(
        self,
        n_features: int = features.N_FEATURES,
        n_actions: int = actions.N_ACTIONS,
        hidden_sizes: Sequence[int] = (128, 128),
        obs_mean: torch.Tensor | None = None,
        obs_std: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if n_features < 1 or n_actions < 1:
            raise ValueError(
                f"need n_features >= 1 and n_actions >= 1, got {n_features}, {n_actions}"
            )
        hidden = tuple(int(h) for h in hidden_sizes)
        if not hidden or any(h < 1 for h in hidden):
            raise ValueError(f"hidden_sizes must be non-empty positive ints, got {hidden_sizes!r}")
        self.n_features = int(n_features)
        self.n_actions = int(n_actions)
        self.hidden_sizes = list(hidden)
        layers: list[nn.Module] = []
        width = self.n_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.torso = nn.Sequential(*layers)
        self.value = nn.Linear(width, 1)
        self.advantage = nn.Linear(width, self.n_actions)
        self.register_buffer("obs_mean", torch.zeros(self.n_features))
        self.register_buffer("obs_std", torch.ones(self.n_features))
        self.set_normalization(obs_mean, obs_std)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        h = self.torso((obs - self.obs_mean) / self.obs_std)
        adv = self.advantage(h)
        return self.value(h) + adv - adv.mean(dim=1, keepdim=True)

    @torch.jit.unused
    def set_normalization(
        self, mean: torch.Tensor | None = None, std: torch.Tensor | None = None
    ) -> None:
        """Set the input transform ``(obs - mean) / std``; ``None`` keeps the current value.

        A zero or negative std would turn a constant feature into inf/NaN, so it is refused.
        """
        with torch.no_grad():
            if mean is not None:
                m = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
                if m.numel() != self.n_features or not bool(torch.isfinite(m).all()):
                    raise ValueError(f"obs_mean must be {self.n_features} finite numbers")
                self.obs_mean.copy_(m)
            if std is not None:
                s = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
                if s.numel() != self.n_features or not bool((torch.isfinite(s) & (s > 0)).all()):
                    raise ValueError(f"obs_std must be {self.n_features} finite numbers > 0")
                self.obs_std.copy_(s)

    @torch.jit.unused
    def config(self) -> dict[str, Any]:
        """Constructor arguments (without the normalization) to rebuild this network eagerly."""
        return {
            "n_features": self.n_features,
            "n_actions": self.n_actions,
            "hidden_sizes": list(self.hidden_sizes),
        }

    @torch.jit.unused
    def normalization(self) -> dict[str, list[float]]:
        """The input transform as plain lists (for the artifact manifest)."""
        return {"mean": self.obs_mean.tolist(), "std": self.obs_std.tolist()}
