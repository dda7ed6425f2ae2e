"""Replay memory for the vectorized DQN: n-step windows per env and a device-resident buffer.

Everything here is batched over the ``B`` envs that step together and lives on the training
device as preallocated tensors, so one training iteration costs a fixed handful of tensor ops
whatever ``B`` is, and nothing is copied between devices.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Batch", "NStepWindow", "ReplayBuffer", "Transitions"]


@dataclass(frozen=True)
class Transitions:
    """``B`` n-step transitions: ``Q(obs, action) ~ ret + discount * bootstrap * V(next_obs)``."""

    obs: torch.Tensor
    """``[B, F]`` observation the action was taken in."""
    action: torch.Tensor
    """``[B]`` int64 action index."""
    ret: torch.Tensor
    """``[B]`` discounted sum of the (up to n) rewards that follow."""
    next_obs: torch.Tensor
    """``[B, F]`` observation to bootstrap from (pre-reset, for a truncated episode)."""
    discount: torch.Tensor
    """``[B]`` ``gamma ** k`` where ``k <= n`` is the number of rewards in ``ret``."""
    bootstrap: torch.Tensor
    """``[B]`` float 1.0 unless the episode *terminated* (truncation still bootstraps)."""


class NStepWindow:
    """The last ``n`` one-step transitions of every env, oldest folded into an n-step one.

    A ring of ``n`` slots per env. Once full, every push makes the oldest slot's transition
    complete: its return sums rewards only up to the first episode end inside the window, so a
    return never crosses into the next episode, and it bootstraps from the stored *true* next
    observation of its last step -- ``info["final_obs"]`` when that step was truncated. Steps
    near an episode's end therefore get shorter horizons (``k < n``), which is exact.
    """

    def __init__(self, n: int, n_envs: int, obs_dim: int, device: torch.device | str) -> None:
        if n < 1:
            raise ValueError(f"n-step window needs n >= 1, got {n}")
        self.n = n
        self.count = 0
        self.obs = torch.zeros(n, n_envs, obs_dim, device=device)
        self.action = torch.zeros(n, n_envs, dtype=torch.int64, device=device)
        self.reward = torch.zeros(n, n_envs, device=device)
        self.next_obs = torch.zeros(n, n_envs, obs_dim, device=device)
        self.done = torch.zeros(n, n_envs, dtype=torch.bool, device=device)
        self.terminated = torch.zeros(n, n_envs, dtype=torch.bool, device=device)
        self._env = torch.arange(n_envs, device=device)

    @property
    def full(self) -> bool:
        return self.count >= self.n

    def push(
        self,
        obs: torch.Tensor,
        action: torch.Tensor,
        reward: torch.Tensor,
        next_obs: torch.Tensor,
        done: torch.Tensor,
        terminated: torch.Tensor,
    ) -> None:
        """Store one step of every env; ``next_obs`` must be the pre-reset observation."""
        i = self.count % self.n
        self.obs[i] = obs
        self.action[i] = action
        self.reward[i] = reward
        self.next_obs[i] = next_obs
        self.done[i] = done
        self.terminated[i] = terminated
        self.count += 1

    def oldest(self, gamma: float) -> Transitions:
        """The n-step transition that starts at the oldest stored step of every env."""
        if not self.full:
            raise RuntimeError("n-step window is not full yet")
        n = self.n
        order = [(self.count + j) % n for j in range(n)]  # oldest first
        reward = self.reward[order]
        done = self.done[order]
        # alive[j] = 1 while no episode ended at steps 0..j-1 of the window.
        not_done = (~done[:-1]).to(reward.dtype)
        alive = torch.cat([torch.ones_like(reward[:1]), torch.cumprod(not_done, dim=0)], dim=0)
        powers = gamma ** torch.arange(n, device=reward.device, dtype=reward.dtype)
        ret = (alive * powers[:, None] * reward).sum(dim=0)
        k = alive.sum(dim=0).long()  # rewards included, 1..n
        last = torch.as_tensor(order, device=reward.device)[k - 1]
        first = order[0]
        return Transitions(
            obs=self.obs[first].clone(),  # a copy: the slot is overwritten by the next push
            action=self.action[first].clone(),
            ret=ret,
            next_obs=self.next_obs[last, self._env],
            discount=gamma ** k.to(reward.dtype),
            bootstrap=(~self.terminated[last, self._env]).to(reward.dtype),
        )

    def state_dict(self) -> dict[str, torch.Tensor | int]:
        return {
            "count": self.count,
            "obs": self.obs,
            "action": self.action,
            "reward": self.reward,
            "next_obs": self.next_obs,
            "done": self.done,
            "terminated": self.terminated,
        }

    def load_state_dict(self, state: dict) -> None:
        self.count = int(state["count"])
        for name in ("obs", "action", "reward", "next_obs", "done", "terminated"):
            getattr(self, name).copy_(state[name])


@dataclass(frozen=True)
class Batch:
    """A sampled minibatch; ``weights`` are importance weights (all 1 without priorities)."""

    index: torch.Tensor
    data: Transitions
    weights: torch.Tensor


class ReplayBuffer:
    """A ring of n-step transitions in preallocated device tensors.

    With ``prioritized=True`` it is proportional prioritized replay (Schaul et al. 2016) in its
    simplest tensor form: sample with ``torch.multinomial`` over ``priority ** alpha`` and
    correct the bias with importance weights ``(N P(i)) ** -beta`` normalized by the batch max.
    O(N) per sample instead of a sum tree's O(log N), but a single fused op on the device,
    which for buffers of ~10^6 beats a Python-level tree by far.
    """

    def __init__(
        self,
        capacity: int,
        obs_dim: int,
        device: torch.device | str,
        prioritized: bool = False,
        alpha: float = 0.6,
        priority_eps: float = 1e-3,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"replay capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.prioritized = prioritized
        self.alpha = alpha
        self.priority_eps = priority_eps
        self.pos = 0
        self.size = 0
        self.obs = torch.zeros(capacity, obs_dim, device=device)
        self.action = torch.zeros(capacity, dtype=torch.int64, device=device)
        self.ret = torch.zeros(capacity, device=device)
        self.next_obs = torch.zeros(capacity, obs_dim, device=device)
        self.discount = torch.zeros(capacity, device=device)
        self.bootstrap = torch.zeros(capacity, device=device)
        # Stored already raised to alpha, so sampling needs no extra pass over the buffer.
        self.priority = torch.zeros(capacity if prioritized else 0, device=device)
        self.max_priority = torch.ones((), device=device)

    def add(self, t: Transitions) -> None:
        b = t.action.shape[0]
        if b > self.capacity:
            raise ValueError(f"adding {b} transitions to a replay buffer of {self.capacity}")
        idx = (self.pos + torch.arange(b, device=self.obs.device)) % self.capacity
        self.obs[idx] = t.obs
        self.action[idx] = t.action
        self.ret[idx] = t.ret
        self.next_obs[idx] = t.next_obs
        self.discount[idx] = t.discount
        self.bootstrap[idx] = t.bootstrap
        if self.prioritized:
            self.priority[idx] = self.max_priority**self.alpha
        self.pos = (self.pos + b) % self.capacity
        self.size = min(self.size + b, self.capacity)

    def sample(self, batch_size: int, beta: float = 1.0) -> Batch:
        if self.size == 0:
            raise RuntimeError("sampling from an empty replay buffer")
        dev = self.obs.device
        if self.prioritized:
            p = self.priority[: self.size]
            idx = torch.multinomial(p, batch_size, replacement=True)
            prob = p[idx] / p.sum()
            w = (self.size * prob) ** (-beta)
            weights = w / w.max()
        else:
            idx = torch.randint(0, self.size, (batch_size,), device=dev)
            weights = torch.ones(batch_size, device=dev)
        data = Transitions(
            obs=self.obs[idx],
            action=self.action[idx],
            ret=self.ret[idx],
            next_obs=self.next_obs[idx],
            discount=self.discount[idx],
            bootstrap=self.bootstrap[idx],
        )
        return Batch(index=idx, data=data, weights=weights)

    def update_priorities(self, index: torch.Tensor, td_error: torch.Tensor) -> None:
        """New priorities ``|td| + eps`` for the sampled rows (no-op without priorities)."""
        if not self.prioritized:
            return
        p = td_error.detach().abs() + self.priority_eps
        self.priority[index] = p**self.alpha
        self.max_priority = torch.maximum(self.max_priority, p.max())

    def state_dict(self) -> dict[str, torch.Tensor | int]:
        """The filled part only, so a checkpoint early in training stays small."""
        n = self.size
        out: dict[str, torch.Tensor | int] = {"pos": self.pos, "size": n}
        for name in ("obs", "action", "ret", "next_obs", "discount", "bootstrap"):
            out[name] = getattr(self, name)[:n].clone()
        if self.prioritized:
            out["priority"] = self.priority[:n].clone()
            out["max_priority"] = self.max_priority.clone()
        return out

    def load_state_dict(self, state: dict) -> None:
        n = int(state["size"])
        if n > self.capacity:
            raise ValueError(
                f"checkpoint holds {n} transitions, buffer capacity is {self.capacity}"
            )
        for name in ("obs", "action", "ret", "next_obs", "discount", "bootstrap"):
            getattr(self, name)[:n] = state[name]
        if self.prioritized:
            if "priority" in state:
                self.priority[:n] = state["priority"]
                self.max_priority = state["max_priority"].to(self.priority.device)
            else:  # checkpoint from a run without priorities: start them all equal
                self.priority[:n] = 1.0
        self.pos = int(state["pos"])
        self.size = n
