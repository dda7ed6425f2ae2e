"""The trained policy as a rollout :class:`~qscale.simulator.rollout.Controller`.

It wraps any callable ``obs -> Q`` (the eager :class:`~qscale.policy.network.QNetwork` during
training, the TorchScript artifact in evaluation and serving), so the numbers an evaluation
reports come from exactly the module that ships.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch

from qscale.policy.artifact import LoadedPolicy
from qscale.simulator import env as sim

__all__ = ["DQNController", "policy_row"]


class DQNController:
    """The network's Q-values, batched over envs; :func:`qscale.decision.decide` takes their
    greedy action and shields it."""

    uses_shield = True

    def __init__(
        self,
        module: Callable[[torch.Tensor], torch.Tensor],
        name: str = "dqn",
        device: torch.device | str | None = None,
    ) -> None:
        self.module = module
        self.name = name
        self.device = torch.device(device) if device is not None else None

    def reset(self, state: sim.EnvState, params: sim.EnvParams) -> None:
        """Stateless: a decision needs only the current observation."""

    def act(self, state: sim.EnvState, obs: torch.Tensor, params: sim.EnvParams) -> torch.Tensor:
        x = obs if self.device is None else obs.to(self.device)
        with torch.no_grad():
            return self.module(x).to(device=obs.device, dtype=torch.float32)


def policy_row(policy: LoadedPolicy) -> tuple[Callable[[], DQNController], dict]:
    """A loaded artifact as the ``dqn`` row of :func:`qscale.simulator.evaluate.compare`: the
    controller factory and the model's record in the evaluation's settings."""
    model = {
        "path": str(policy.path),
        "kind": policy.kind,
        "model_sha256": policy.manifest.get("model_sha256"),
        "spec_hash": policy.manifest.get("spec_hash"),
    }
    return partial(DQNController, policy.module, name="dqn"), model
