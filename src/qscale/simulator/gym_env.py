"""A single-environment ``gymnasium.Env`` around the batched core.

For users who expect the standard API and for comparisons with RL libraries (Stable-Baselines3
and friends). It runs the very same ``reset``/``step`` functions with a batch of one, so it is
slow by construction: batched training should call :mod:`qscale.simulator.env` directly.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from qscale import actions, features
from qscale.simulator import env as sim
from qscale.simulator.splits import packaged_trace, shared_trace_files
from qscale.simulator.tracebank import TraceBank


class QScaleEnv(gym.Env):
    """One simulated service; each ``reset`` draws a new cluster and trace window.

    Observation: the :mod:`qscale.features` vector. Action: an index into
    :data:`qscale.actions.ACTIONS`, passed through the shield. Episodes end by truncation only.
    """

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012

    def __init__(
        self,
        traces: Sequence[str | os.PathLike] | None = None,
        split: str = "train",
        config: sim.SimConfig | None = None,
        bank: TraceBank | None = None,
    ) -> None:
        super().__init__()
        if bank is None:
            paths = list(traces) if traces else (shared_trace_files() or [packaged_trace()])
            bank = TraceBank.from_files(paths, split=split)
        self.bank = bank
        self.config = config or sim.SimConfig()
        lo = np.array([f.lo for f in features.FEATURES], dtype=np.float32)
        hi = np.array([f.hi for f in features.FEATURES], dtype=np.float32)
        self.observation_space = gym.spaces.Box(lo, hi, dtype=np.float32)
        self.action_space = gym.spaces.Discrete(actions.N_ACTIONS)
        self._params: sim.EnvParams | None = None
        self._state: sim.EnvState | None = None

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        cluster_seed = int(self.np_random.integers(0, 2**31 - 1))
        self._params = sim.make_params(self.bank, 1, seed=cluster_seed, config=self.config)
        self._state, obs = sim.reset(self._params)
        return obs[0].numpy(), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._state is None or self._params is None:
            raise RuntimeError("call reset() before step()")
        a = torch.tensor([int(action)], dtype=torch.int64)
        self._state, obs, reward, terminated, truncated, info = sim.step(
            self._state, a, self._params
        )
        done = bool(truncated[0])
        if done:
            obs = info["final_obs"]
        out = {
            "replicas": float(info["replicas"][0]),
            "p95_s": float(info["p95_s"][0]),
            "violation": bool(info["violation"][0]),
            "cost_pod_s": float(info["cost_pod_s"][0]),
        }
        return obs[0].numpy(), float(reward[0]), bool(terminated[0]), done, out
