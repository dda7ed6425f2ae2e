"""The batched simulator: pure ``reset``/``step`` functions over explicit state and params.

Modelled on gymnax: :class:`EnvParams` (what differs between simulated clusters and stays fixed:
pod capacity, start-up delay, SLO, size) and :class:`EnvState` (what changes every step) are
frozen dataclasses of ``[B, ...]`` tensors; ``step`` builds a new state and never mutates the
old one, auto-resets finished envs inside itself and returns ``terminated`` and ``truncated``
separately. A trace running out is truncation (the service would go on), so learners should
bootstrap through it. The same code runs on CPU and CUDA: all randomness inside ``reset`` and
``step`` comes from integer hashing and a fixed noise table, never from a device RNG.

One step of ``dt`` seconds (default 15 s, the HPA's sync period):

1. the decision (an action index through :mod:`qscale.actions` and :mod:`qscale.guardrails`, or
   a replica count from a baseline) sets the Deployment's replicas; a scale-down deletes
   starting pods first (newest first), as a ReplicaSet does, then ready ones;
2. new pods enter a start-up pipeline and serve only ``delay`` steps later;
3. arrivals come from the env's trace window, scaled, with optional Poisson noise;
4. :func:`qscale.simulator.service.flow` serves them and yields utilization and p95 latency;
5. cost (pod-seconds of every pod, starting ones included), SLO violation and the reward.

Reward (weights in :class:`RewardWeights`), per step::

    r = -(w_cost * pods / peak_pods + w_slo * [p95 > SLO] + w_drop * dropped / arrivals
          + w_churn * [replicas changed])

``peak_pods`` is the env's reference size (pods its traffic needs at its 99th percentile), so the
cost term is scale-free and a policy is not pushed to care more about large services.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from qscale import actions, features
from qscale.guardrails import Reason, ShieldConfig, ShieldState, record_scale, shield
from qscale.simulator.service import flow, p95_no_backlog
from qscale.simulator.tracebank import TraceBank

_MASK32 = 0xFFFFFFFF


@dataclass(frozen=True)
class RewardWeights:
    """Weights of the reward's terms (see the module docstring)."""

    cost: float = 1.0
    """Per step, times pods / the env's peak pods."""
    slo: float = 4.0
    """Per step whose p95 latency exceeds the SLO."""
    drop: float = 10.0
    """Times the fraction of the step's arrivals dropped by timeout."""
    churn: float = 0.05
    """Per step in which the replica count changed."""


@dataclass(frozen=True)
class DomainConfig:
    """Ranges the per-env parameters are drawn from (domain randomization).

    A pair ``(lo, hi)`` draws log-uniformly for scale-like quantities and uniformly for the rest;
    ``lo == hi`` fixes the value.
    """

    capacity_rps: tuple[float, float] = (20.0, 200.0)
    """Requests/s one pod serves at 100% CPU (log-uniform)."""
    service_time_s: tuple[float, float] = (0.02, 0.2)
    """Mean time to serve one request (log-uniform)."""
    startup_delay_s: tuple[float, float] = (15.0, 120.0)
    """Seconds from a scale-up until the new pods are ready."""
    startup_distribution: str = "uniform"
    """How start-up delays are drawn: ``uniform`` or ``loguniform`` over the range."""
    slo_factor: tuple[float, float] = (1.5, 3.0)
    """SLO as a multiple of the unloaded p95 latency (uniform)."""
    peak_replicas: tuple[float, float] = (1.0, 100.0)
    """Pods the traffic needs at its 99th percentile at 100% CPU (log-uniform)."""
    amplitude_jitter: float = 0.3
    """Each episode multiplies the traffic by exp(U(-j, j)) on top of the env's size."""
    max_replicas_factor: tuple[float, float] = (1.5, 3.0)
    """max replicas = ceil(peak_replicas x factor), at least min + 2."""
    min_replicas: int = 1
    """Lower bound of every env."""
    target_utilization: float = 0.7
    """The target CPU utilization the ``cpu_vs_target`` feature is relative to."""

    def __post_init__(self) -> None:
        if self.startup_distribution not in ("uniform", "loguniform"):
            raise ValueError(
                f"startup_distribution must be 'uniform' or 'loguniform', "
                f"got {self.startup_distribution!r}"
            )


@dataclass(frozen=True)
class SimConfig:
    """Static settings of a simulation (not per env)."""

    dt: float = 15.0
    """Decision interval in seconds."""
    episode_steps: int = 480
    """Steps per episode (480 x 15 s = 2 h); a trace shorter than that ends it sooner."""
    timeout_s: float = 30.0
    """Requests queued longer than this are dropped."""
    noise: bool = True
    """Poisson arrival noise around the trace's rate."""
    init_utilization: float = 0.6
    """An episode starts with enough ready pods for this utilization."""
    reward: RewardWeights = field(default_factory=RewardWeights)
    shield: ShieldConfig = field(default_factory=ShieldConfig)
    domain: DomainConfig = field(default_factory=DomainConfig)

    @property
    def lag_short(self) -> int:
        return max(1, round(features.RATE_LAG_SHORT_S / self.dt))

    @property
    def lag_long(self) -> int:
        return max(self.lag_short + 1, round(features.RATE_LAG_LONG_S / self.dt))

    @property
    def max_delay_steps(self) -> int:
        return math.ceil(self.domain.startup_delay_s[1] / self.dt - 1e-9)


@dataclass(frozen=True)
class EnvParams:
    """Per-env constants (``[B]`` tensors) plus the shared trace bank and static config."""

    capacity: torch.Tensor
    service_time_s: torch.Tensor
    delay_steps: torch.Tensor
    slo_s: torch.Tensor
    peak_replicas: torch.Tensor
    min_replicas: torch.Tensor
    max_replicas: torch.Tensor
    target_utilization: torch.Tensor
    key: torch.Tensor
    noise_offset: torch.Tensor
    bank: TraceBank
    config: SimConfig

    @property
    def n_envs(self) -> int:
        return self.capacity.shape[0]

    @property
    def device(self) -> torch.device:
        return self.capacity.device


@dataclass(frozen=True)
class EnvState:
    t: torch.Tensor
    """Steps into the episode, int64."""
    ep_len: torch.Tensor
    """Steps this episode lasts, int64."""
    pos: torch.Tensor
    """Index of the current step in ``bank.rates``, int64."""
    scale: torch.Tensor
    """Amplitude factor on the trace's rates."""
    episode: torch.Tensor
    """Episodes begun by this env (feeds the reset hash), int64."""
    ready: torch.Tensor
    """Ready pods."""
    pending: torch.Tensor
    """``[B, max_delay + 1]``: slot i holds pods that become ready i steps from now."""
    backlog: torch.Tensor
    """Requests queued at the end of the last step."""
    rate_hist: torch.Tensor
    """``[B, lag_long + 1]`` observed request rates, oldest first."""
    utilization: torch.Tensor
    p95_s: torch.Tensor
    shield: ShieldState

    @property
    def replicas(self) -> torch.Tensor:
        """Pods the Deployment has, starting ones included (its ``spec.replicas``)."""
        return self.ready + self.pending.sum(dim=1)


def _draw(gen: torch.Generator, n: int, lo_hi: tuple[float, float], log: bool) -> torch.Tensor:
    lo, hi = lo_hi
    if not (0 < lo <= hi) and log:
        raise ValueError(f"log-uniform range needs 0 < lo <= hi, got {lo_hi}")
    if lo > hi:
        raise ValueError(f"range needs lo <= hi, got {lo_hi}")
    u = torch.rand(n, generator=gen, dtype=torch.float64)
    if log:
        return torch.exp(math.log(lo) + u * (math.log(hi) - math.log(lo))).float()
    return (lo + u * (hi - lo)).float()


def make_params(
    bank: TraceBank,
    n_envs: int,
    seed: int = 0,
    config: SimConfig | None = None,
    device: torch.device | str | None = None,
) -> EnvParams:
    """Draw ``n_envs`` simulated clusters. Drawn on the CPU from ``seed``, then moved: the same
    seed gives the same clusters on every device."""
    cfg = config or SimConfig()
    dom = cfg.domain
    device = device if device is not None else bank.rates.device
    gen = torch.Generator().manual_seed(seed)
    capacity = _draw(gen, n_envs, dom.capacity_rps, log=True)
    service_time = _draw(gen, n_envs, dom.service_time_s, log=True)
    delay_s = _draw(gen, n_envs, dom.startup_delay_s, log=dom.startup_distribution == "loguniform")
    delay_steps = torch.ceil(delay_s / cfg.dt - 1e-6).clamp(0, cfg.max_delay_steps).long()
    slo = _draw(gen, n_envs, dom.slo_factor, log=False) * service_time * math.log(20.0)
    peak = _draw(gen, n_envs, dom.peak_replicas, log=True)
    lo = torch.full((n_envs,), float(dom.min_replicas))
    hi = torch.maximum(
        torch.ceil(peak * _draw(gen, n_envs, dom.max_replicas_factor, log=False)), lo + 2.0
    )
    key = torch.randint(0, 2**31 - 1, (n_envs,), generator=gen)
    noise_offset = torch.randint(0, 2**31 - 1, (n_envs,), generator=gen)
    target = torch.full((n_envs,), dom.target_utilization)
    t = {
        "capacity": capacity,
        "service_time_s": service_time,
        "delay_steps": delay_steps,
        "slo_s": slo,
        "peak_replicas": peak,
        "min_replicas": lo,
        "max_replicas": hi,
        "target_utilization": target,
        "key": key,
        "noise_offset": noise_offset,
    }
    return EnvParams(**{k: v.to(device) for k, v in t.items()}, bank=bank.to(device), config=cfg)


def hash_u01(*parts: torch.Tensor | int) -> torch.Tensor:
    """A uniform in (0, 1) that is a pure function of integer ``parts`` (same on every device).

    A 32-bit integer hash kept inside int64 so that no multiplication overflows.
    """
    x: torch.Tensor | None = None
    for p in parts:
        v = torch.as_tensor(p, dtype=torch.int64) if not isinstance(p, torch.Tensor) else p.long()
        x = v & _MASK32 if x is None else (x ^ (v & _MASK32))
        for _ in range(2):
            x = x ^ (x >> 16)
            x = (x * 0x45D9F3B) & _MASK32
        x = x ^ (x >> 16)
    assert x is not None
    return ((x.double() + 0.5) / 2.0**32).float()


def _window_scale(params: EnvParams, ids: torch.Tensor, pos0: torch.Tensor, length: torch.Tensor):
    """Amplitude that makes the window's 99th-percentile rate need ``peak_replicas`` pods."""
    tmax = int(length.max().item())
    offs = torch.arange(tmax, device=pos0.device)
    idx = pos0[:, None] + torch.minimum(offs[None, :], (length - 1)[:, None])
    window = params.bank.rates[idx]
    k = max(1, math.ceil(0.99 * tmax))
    p99 = torch.kthvalue(window, k, dim=1).values
    peak_rate = torch.where(p99 > 0, p99, window.amax(dim=1))
    need = params.peak_replicas[ids] * params.capacity[ids]
    return torch.where(peak_rate > 0, need / torch.where(peak_rate > 0, peak_rate, 1.0), 1.0)


def _fresh(
    state: EnvState | None,
    params: EnvParams,
    ids: torch.Tensor,
    pos0: torch.Tensor,
    length: torch.Tensor,
    scale: torch.Tensor,
    episode: torch.Tensor,
) -> EnvState:
    """State with envs ``ids`` (re)started at ``pos0`` (others copied from ``state``)."""
    cfg = params.config
    cap = params.capacity[ids]
    lo, hi = params.min_replicas[ids], params.max_replicas[ids]
    rate0 = params.bank.rates[pos0] * scale
    ready = torch.clamp(torch.ceil(rate0 / (cap * cfg.init_utilization) - 1e-6), lo, hi)
    util = torch.clamp(rate0 / (ready * cap), max=1.0)
    p95 = p95_no_backlog(rate0, ready, cap, params.service_time_s[ids])
    p95 = torch.clamp(p95, max=cfg.timeout_s)
    n_hist = cfg.lag_long + 1
    if state is None:
        b, dev = params.n_envs, params.device
        z = torch.zeros(b, device=dev)
        state = EnvState(
            t=torch.zeros(b, dtype=torch.int64, device=dev),
            ep_len=torch.ones(b, dtype=torch.int64, device=dev),
            pos=torch.zeros(b, dtype=torch.int64, device=dev),
            scale=z,
            episode=torch.zeros(b, dtype=torch.int64, device=dev),
            ready=z,
            pending=torch.zeros(b, cfg.max_delay_steps + 1, device=dev),
            backlog=z,
            rate_hist=torch.zeros(b, n_hist, device=dev),
            utilization=z,
            p95_s=z,
            shield=ShieldState.init(b, cfg.shield, dev),
        )

    def put(x: torch.Tensor, v: torch.Tensor | float) -> torch.Tensor:
        v = torch.as_tensor(v, dtype=x.dtype, device=x.device)
        return x.index_copy(0, ids, v.expand((len(ids), *x.shape[1:])).contiguous())

    mask = torch.zeros(params.n_envs, dtype=torch.bool, device=params.device)
    mask[ids] = True
    return EnvState(
        t=put(state.t, 0),
        ep_len=put(state.ep_len, length),
        pos=put(state.pos, pos0),
        scale=put(state.scale, scale),
        episode=put(state.episode, episode),
        ready=put(state.ready, ready),
        pending=put(state.pending, 0.0),
        backlog=put(state.backlog, 0.0),
        rate_hist=put(state.rate_hist, rate0[:, None].expand(-1, n_hist)),
        utilization=put(state.utilization, util),
        p95_s=put(state.p95_s, p95),
        shield=state.shield.reset_where(mask),
    )


@torch.compiler.disable
def _random_episodes(
    state: EnvState | None, params: EnvParams, ids: torch.Tensor, episode: torch.Tensor
) -> EnvState:
    """Restart ``ids`` in a random trace window with a random amplitude (hash of key, episode)."""
    bank = params.bank
    key = params.key[ids]
    k = torch.clamp((hash_u01(key, episode, 1) * bank.n_traces).long(), max=bank.n_traces - 1)
    tlen = bank.lengths[k]
    length = torch.clamp(tlen, max=params.config.episode_steps)
    start = (hash_u01(key, episode, 2) * (tlen - length + 1).double()).long()
    pos0 = bank.starts[k] + torch.minimum(start, tlen - length)
    jitter = params.config.domain.amplitude_jitter
    amp = torch.exp((2.0 * hash_u01(key, episode, 3) - 1.0) * jitter)
    scale = _window_scale(params, ids, pos0, length) * amp
    return _fresh(state, params, ids, pos0, length, scale, episode)


def reset(params: EnvParams) -> tuple[EnvState, torch.Tensor]:
    """Start every env in a random window of the trace bank; returns (state, observation)."""
    ids = torch.arange(params.n_envs, device=params.device)
    state = _random_episodes(None, params, ids, torch.zeros_like(ids))
    return state, observe(state, params)


def reset_fixed(
    params: EnvParams, trace_index: torch.Tensor, start: torch.Tensor, length: torch.Tensor
) -> tuple[EnvState, torch.Tensor]:
    """Start env i at step ``start[i]`` of trace ``trace_index[i]`` for ``length[i]`` steps, with
    no amplitude jitter (evaluation: every controller meets exactly the same traffic)."""
    ids = torch.arange(params.n_envs, device=params.device)
    bank = params.bank
    trace_index, start, length = (x.to(params.device).long() for x in (trace_index, start, length))
    if bool(((start < 0) | (length < 1) | (start + length > bank.lengths[trace_index])).any()):
        raise ValueError("reset_fixed: window outside its trace")
    pos0 = bank.starts[trace_index] + start
    scale = _window_scale(params, ids, pos0, length)
    state = _fresh(None, params, ids, pos0, length, scale, torch.zeros_like(ids))
    return state, observe(state, params)


def observe(state: EnvState, params: EnvParams) -> torch.Tensor:
    """The observation of :mod:`qscale.features` for the current state."""
    cfg = params.config
    now = state.t.to(state.ready.dtype) * cfg.dt
    hist = state.rate_hist
    return features.compute(
        features.FeatureInputs(
            utilization=state.utilization,
            target_utilization=params.target_utilization,
            p95_s=state.p95_s,
            slo_s=params.slo_s,
            rate_now=hist[:, -1],
            rate_short_ago=hist[:, -1 - cfg.lag_short],
            rate_long_ago=hist[:, 0],
            replicas=state.replicas,
            ready_replicas=state.ready,
            min_replicas=params.min_replicas,
            max_replicas=params.max_replicas,
            since_scale_up_s=now - state.shield.last_up_s,
            since_scale_down_s=now - state.shield.last_down_s,
        )
    )


def arrival_rate(params: EnvParams, pos: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Arrivals (requests/s) at bank positions ``pos`` (``[B]`` or ``[B, K]``): the scaled trace
    plus Poisson noise (normal approximation, from the position-keyed noise table)."""
    bank = params.bank
    lam = bank.rates[pos] * scale * params.config.dt
    if params.config.noise:
        offset = params.noise_offset.view(-1, *([1] * (pos.dim() - 1)))
        z = bank.noise[(offset + pos) & (bank.noise.shape[0] - 1)]
        lam = torch.clamp(lam + torch.sqrt(lam) * z, min=0.0)
    return lam / params.config.dt


def step(
    state: EnvState, action: torch.Tensor, params: EnvParams
) -> tuple[EnvState, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    """Apply discrete ``action`` ``[B]`` (int64) through the shield and advance one step."""
    cur = state.replicas
    now = state.t.to(cur.dtype) * params.config.dt
    desired = actions.apply(cur, action)
    res = shield(
        cur,
        desired,
        state.shield,
        now,
        params.config.shield,
        params.min_replicas,
        params.max_replicas,
    )
    return _transition(state, cur, res.replicas, res.state, res.reason, params)


def step_replicas(
    state: EnvState, desired: torch.Tensor, params: EnvParams
) -> tuple[EnvState, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    """Advance one step with a replica count chosen by a controller that brings its own rules
    (the baselines): only ``[min, max]`` is enforced; a non-finite count holds."""
    cur = state.replicas
    now = state.t.to(cur.dtype) * params.config.dt
    d = torch.where(torch.isfinite(desired), torch.round(torch.nan_to_num(desired)), cur)
    target = torch.minimum(torch.maximum(d, params.min_replicas), params.max_replicas)
    reason = torch.where(
        target > d, int(Reason.AT_MIN), torch.where(target < d, int(Reason.AT_MAX), 0)
    )
    return _transition(
        state, cur, target, record_scale(state.shield, cur, target, now), reason, params
    )


def _transition(
    state: EnvState,
    cur: torch.Tensor,
    target: torch.Tensor,
    shield_state: ShieldState,
    reason: torch.Tensor,
    params: EnvParams,
) -> tuple[EnvState, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    cfg = params.config
    w = cfg.reward
    dt = cfg.dt

    # 1. Scale: delete starting pods first (newest first), then ready ones; add new ones.
    delta = target - cur
    remove = torch.clamp(-delta, min=0.0)
    rev_cum = state.pending.flip(1).cumsum(1)
    left = torch.clamp(rev_cum - remove[:, None], min=0.0)
    pending = torch.diff(left, dim=1, prepend=torch.zeros_like(left[:, :1])).flip(1)
    ready = state.ready - (remove - torch.minimum(remove, rev_cum[:, -1]))
    add = torch.clamp(delta, min=0.0)
    pending = pending.scatter_add(1, params.delay_steps[:, None], add[:, None])

    # 2. Start-up pipeline: slot 0 becomes ready, the rest move one step closer.
    ready = ready + pending[:, 0]
    pending = torch.cat([pending[:, 1:], torch.zeros_like(pending[:, :1])], dim=1)

    # 3-4. Arrivals and service.
    rate = arrival_rate(params, state.pos, state.scale)
    arrivals = rate * dt
    f = flow(
        arrivals, state.backlog, ready, params.capacity, params.service_time_s, dt, cfg.timeout_s
    )

    # 5. Cost, SLO and reward.
    violation = f.p95_s > params.slo_s
    changed = target != cur
    drop_frac = f.dropped / torch.clamp(arrivals + state.backlog, min=1e-9)
    reward = -(
        w.cost * target / params.peak_replicas
        + w.slo * violation.to(target.dtype)
        + w.drop * drop_frac
        + w.churn * changed.to(target.dtype)
    )

    t = state.t + 1
    truncated = t >= state.ep_len
    terminated = torch.zeros_like(truncated)
    nxt = EnvState(
        t=t,
        ep_len=state.ep_len,
        pos=state.pos + 1,
        scale=state.scale,
        episode=state.episode,
        ready=ready,
        pending=pending,
        backlog=f.backlog,
        rate_hist=torch.cat([state.rate_hist[:, 1:], rate[:, None]], dim=1),
        utilization=f.utilization,
        p95_s=f.p95_s,
        shield=shield_state,
    )
    obs = observe(nxt, params)
    info = {
        "replicas": target,
        "ready": ready,
        "rate": rate,
        "served": f.served,
        "dropped": f.dropped,
        "backlog": f.backlog,
        "utilization": f.utilization,
        "p95_s": f.p95_s,
        "violation": violation,
        "changed": changed,
        "reason": reason,
        "cost_pod_s": target * dt,
    }
    if bool(truncated.any()):
        ids = truncated.nonzero().squeeze(1)
        info["final_obs"] = obs
        nxt = _random_episodes(nxt, params, ids, nxt.episode[ids] + 1)
        obs = observe(nxt, params)
    return nxt, obs, reward, terminated, truncated, info


def compiled_step() -> Callable[..., tuple]:
    """:func:`step` through ``torch.compile``: same results, about 3x the throughput on CPU at
    thousands of envs (kernels fused), at the price of ~20 s of compiling on first use. The
    auto-reset branch stays eager (its batch size varies)."""
    return torch.compile(step, dynamic=False)


def replace_config(params: EnvParams, **changes) -> EnvParams:
    """Params with some static config fields changed (e.g. ``noise=False`` for a test)."""
    return replace(params, config=replace(params.config, **changes))
