"""The batched simulator: pure ``reset``/``step`` functions over explicit state and params.

Modelled on gymnax: :class:`EnvParams` (what differs between simulated clusters and stays fixed:
pod capacity, start-up delay, SLO, size, how its metrics reach a controller) and
:class:`EnvState` (what changes every step) are frozen dataclasses of ``[B, ...]`` tensors;
``step`` builds a new state and never mutates the old one, auto-resets finished envs inside
itself and returns ``terminated`` and ``truncated`` separately. A trace running out is
truncation (the service would go on), so learners should bootstrap through it. The same code
runs on CPU and CUDA: all randomness inside ``reset`` and ``step`` comes from integer hashing and
a fixed noise table, never from a device RNG.

One step of ``dt`` seconds (default 15 s, the HPA's sync period):

1. the decision -- an action index through :func:`qscale.decision.decide` (features, actions and
   the shield: the very code the operator runs) or a replica count from a baseline -- sets the
   Deployment's replicas; a scale-down deletes the youngest pods first, as a ReplicaSet does;
2. pods are tracked by age: a pod serves once its age reaches the env's start-up delay;
3. arrivals come from the env's trace window, scaled, with optional Poisson noise;
4. :func:`qscale.service.serve` serves them; the step's latency distribution (a queue carried
   in drains flat out first) gives the exact p95 (scored) and the latency histogram (what the
   app exports);
5. cost (pod-seconds of every pod, starting ones included), SLO violation and the reward.

**What a controller sees** is what a cluster would show it at that moment, never the truth of
the step (:func:`signals`, :func:`hpa_view`): per env, CPU arrives through cAdvisor /
metrics-server averaged over a window and late by a lag, with noise, relative to the pods' CPU
request (a pod may use up to limit/request, e.g. 400 %); p95 comes from
``histogram_quantile`` over the histogram's last minute, after the scrape lag; the request rate
is a 1 m rate of either the app's served-requests counter (it flattens at capacity) or an
ingress counter (arrivals), drawn per env. The HPA additionally sets pods aside as the
controller does (start-up rules, pods with no metric yet).

Traffic is scaled per trace, not per window: the trace's reference rate (its 99th percentile
over the whole series, a fixed property of the service) needs ``peak_replicas`` pods. Nothing a
controller sees, nor ``maxReplicas``, depends on the future of the window being played.

Reward (weights in :class:`RewardWeights`), per step::

    r = -(w_cost * pods / norm + w_slo * priority * [p95 > SLO] + w_drop * dropped / arrivals
          + w_churn * [replicas changed])

``priority`` is the env's SLO priority (:attr:`DomainConfig.slo_priority`, 1: the default
trade-off), which the policy also sees as a feature: one model learns the trade-off each
service sets.

``norm`` is the env's size ``peak_replicas`` (``cost_norm="peak"``) or the pods the current
arrivals need, at least 1 (``"need"``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import ClassVar

import torch

from qscale import batching, decision, features, service
from qscale.actions import DECISION_INTERVAL_S
from qscale.decision import Signals
from qscale.guardrails import ShieldConfig, ShieldState, bound, record_scale
from qscale.hpa import CPU_INITIALIZATION_PERIOD_S
from qscale.service import latency_cdf, latency_model, latency_p95, serve, step_cdf
from qscale.simulator.tracebank import TraceBank

_MASK32 = 0xFFFFFFFF
_F64 = torch.float64


@dataclass(frozen=True)
class RewardWeights:
    """Weights of the reward's terms (see the module docstring)."""

    cost: float = 1.0
    """Per step, times pods / the normalizer (see ``cost_norm``)."""
    slo: float = 4.0
    """Per step whose p95 latency exceeds the SLO."""
    drop: float = 10.0
    """Times the fraction of the step's arrivals dropped by timeout."""
    churn: float = 0.05
    """Per step in which the replica count changed."""
    cost_norm: str = "peak"
    """What pods are divided by: ``peak`` (the env's size) or ``need`` (pods the current
    arrivals need at 100 % CPU, at least 1)."""

    def __post_init__(self) -> None:
        if self.cost_norm not in ("peak", "need"):
            raise ValueError(f"cost_norm must be 'peak' or 'need', got {self.cost_norm!r}")


@dataclass(frozen=True)
class DomainConfig:
    """Ranges the per-env parameters are drawn from (domain randomization).

    A pair ``(lo, hi)`` draws log-uniformly for scale-like quantities and uniformly for the rest;
    ``lo == hi`` fixes the value. Times are rounded to whole steps.
    """

    capacity_rps: tuple[float, float] = (20.0, 200.0)
    """Requests/s one pod serves at its CPU limit (log-uniform)."""
    service_time_s: tuple[float, float] = (0.02, 0.2)
    """Mean time to serve one request (log-uniform)."""
    startup_delay_s: tuple[float, float] = (15.0, 240.0)
    """Seconds from a scale-up until the new pods are ready."""
    startup_distribution: str = "uniform"
    """How start-up delays are drawn: ``uniform`` or ``loguniform`` over the range."""
    slo_factor: tuple[float, float] = (1.5, 3.0)
    """SLO as a multiple of the unloaded p95 latency (uniform)."""
    peak_replicas: tuple[float, float] = (1.0, 100.0)
    """Pods the trace's reference rate needs at 100 % CPU: the service's size (log-uniform)."""
    amplitude_jitter: float = 0.3
    """Each episode multiplies the traffic by exp(U(-j, j)) on top of the env's size."""
    max_replicas_factor: tuple[float, float] = (1.5, 10.0)
    """max replicas = ceil(peak_replicas x factor), at least min + 2 (log-uniform): a safety
    cap set by a user, independent of the traffic to come."""
    min_replicas: int = 1
    """Lower bound of every env."""
    cpu_limit_ratio: tuple[float, float] = (1.0, 4.0)
    """CPU limit / CPU request of the pods (log-uniform): CPU utilization, which is relative to
    the request, reads up to this ratio."""
    cpu_window_s: tuple[float, float] = (15.0, 60.0)
    """Window the CPU metric averages over (cAdvisor / metrics-server resolution)."""
    cpu_lag_s: tuple[float, float] = (0.0, 45.0)
    """Extra delay of the CPU metric behind the end of its window."""
    cpu_noise: tuple[float, float] = (0.0, 0.05)
    """Relative noise (std) of each CPU reading."""
    scrape_lag_s: tuple[float, float] = (0.0, 15.0)
    """Delay of the app's metrics (request rate, latency histogram) behind the truth."""
    ingress_probability: float = 0.5
    """Chance that the env's request-rate signal counts arrivals (an ingress counter) rather
    than served requests (the app's own counter)."""
    capacity_declared_probability: float = 0.5
    """Chance that the env's policy declares its per-pod capacity (``capacity_rps``, the true
    one, as a user who load-tested one pod would): the rate actions' input."""
    capacity_estimated: bool = False
    """Where none is declared, the capacity is estimated from the metrics
    (:func:`qscale.features.estimate_capacity`) and takes its place."""
    slo_priority: tuple[float, float] = (1.0, 1.0)
    """The SLO priority of the env's policy (log-uniform): the reward's SLO weight is
    multiplied by it, and the policy sees it (:attr:`qscale.features.FeatureInputs.slo_priority`).
    1 is the default trade-off."""

    def __post_init__(self) -> None:
        if self.startup_distribution not in ("uniform", "loguniform"):
            raise ValueError(
                f"startup_distribution must be 'uniform' or 'loguniform', "
                f"got {self.startup_distribution!r}"
            )
        lo, hi = self.slo_priority
        if not 0.0 < lo <= hi:
            raise ValueError(f"slo_priority must satisfy 0 < lo <= hi, got {self.slo_priority}")
        for name in ("ingress_probability", "capacity_declared_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")


@dataclass(frozen=True)
class SimConfig:
    """Static settings of a simulation (not per env)."""

    dt: float = DECISION_INTERVAL_S
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

    def steps(self, seconds: float) -> int:
        return max(0, round(seconds / self.dt))

    @property
    def rate_window(self) -> int:
        """Steps in the queries' 1 m rate window."""
        return max(1, self.steps(features.RATE_WINDOW_S))

    @property
    def rate_lags(self) -> tuple[int, ...]:
        return tuple(max(1, self.steps(s)) for s in features.RATE_LAGS_S)

    @property
    def rate_peak_offsets(self) -> torch.Tensor:
        """Steps back of the points ``rate_peak_15m`` takes the highest of."""
        return torch.tensor(self.peak_offsets)

    @property
    def peak_offsets(self) -> tuple[int, ...]:
        """:attr:`rate_peak_offsets` as Python ints."""
        step = max(1, self.steps(features.RATE_PEAK_STEP_S))
        n = round(features.RATE_PEAK_SPAN_S / features.RATE_PEAK_STEP_S)
        return tuple(j * step for j in range(n + 1))

    @property
    def long_peak_offsets(self) -> tuple[int, ...]:
        """Steps back of the points ``rate_peak_30m`` and ``busy_peak_30m`` take the highest
        of (31 points, 60 s apart)."""
        step = max(1, self.steps(features.RATE_PEAK_STEP_S))
        n = round(features.LONG_PEAK_SPAN_S / features.RATE_PEAK_STEP_S)
        return tuple(j * step for j in range(n + 1))

    @property
    def max_delay_steps(self) -> int:
        return math.ceil(self.domain.startup_delay_s[1] / self.dt - 1e-9)

    @property
    def max_scrape_lag(self) -> int:
        return self.steps(self.domain.scrape_lag_s[1])

    @property
    def cpu_history(self) -> int:
        return max(1, self.steps(self.domain.cpu_window_s[1])) + self.steps(
            self.domain.cpu_lag_s[1]
        )

    @property
    def busy_history(self) -> int:
        """Steps of busy pods kept: the 30-minute peak's points through the CPU pipeline."""
        return self.long_peak_offsets[-1] + self.cpu_history

    @property
    def rate_history(self) -> int:
        back = max(self.rate_lags[-1], self.long_peak_offsets[-1])
        return back + self.rate_window + self.max_scrape_lag

    @property
    def latency_history(self) -> int:
        return self.rate_window + self.max_scrape_lag

    @property
    def ages(self) -> int:
        """Age slots tracked one by one (pods older than this are all alike): the start-up
        delay and the HPA's CPU-initialization period must fit."""
        return max(self.max_delay_steps, math.ceil(CPU_INITIALIZATION_PERIOD_S / self.dt)) + 1


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
    cpu_limit_ratio: torch.Tensor
    cpu_window: torch.Tensor
    """Steps (>= 1), int64."""
    cpu_lag: torch.Tensor
    """Steps, int64."""
    cpu_noise: torch.Tensor
    scrape_lag: torch.Tensor
    """Steps, int64."""
    ingress: torch.Tensor
    """bool: the rate signal counts arrivals (else served requests)."""
    capacity_declared: torch.Tensor
    """bool: the policy declares its per-pod capacity (the features and rate actions see it)."""
    slo_priority: torch.Tensor
    """The policy's SLO priority: it multiplies the reward's SLO weight; the policy sees it."""
    key: torch.Tensor
    noise_offset: torch.Tensor
    bank: TraceBank
    config: SimConfig

    batch_shared: ClassVar[frozenset[str]] = frozenset({"bank", "config"})
    """Not per env: one bank and one config for the batch (see :mod:`qscale.batching`)."""

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
    pods: torch.Tensor
    """``[B, ages + 1]``: pods by age in steps (0 = created this step); the last slot holds all
    older ones. A pod serves once its age reaches ``delay_steps``."""
    backlog: torch.Tensor
    """Requests queued at the end of the last step."""
    rate_hist: torch.Tensor
    """``[B, rate_history]`` the true per-step rate the env's counter counts, oldest first."""
    cpu_all_hist: torch.Tensor
    """``[B, cpu_history]`` per step: CPU in use / CPU limit, averaged over all pods."""
    cpu_ready_hist: torch.Tensor
    """``[B, cpu_history]`` per step: the same over ready pods only (what each serving pod uses)."""
    busy_hist: torch.Tensor
    """``[B, busy_history]`` per step: pods' worth of CPU limit in use, all pods together (the
    CPU counter's cores over the CPU limit per pod)."""
    lat_hist: torch.Tensor
    """``[B, latency_history, K + 1]`` per step: requests per latency bucket (last: +Inf)."""
    utilization: torch.Tensor
    """True busy fraction of the ready pods in the last step."""
    p95_s: torch.Tensor
    """True p95 of the last step."""
    shield: ShieldState
    seen: features.FeatureInputs | None = None
    """What the metrics show now (:func:`measure` of this state), kept so that a step measures
    once: the decision and the next observation share it."""

    @property
    def replicas(self) -> torch.Tensor:
        """Pods the Deployment has, starting ones included (its ``spec.replicas``)."""
        return self.pods.sum(dim=1)


def _ready_mask(params: EnvParams, slots: int) -> torch.Tensor:
    age = torch.arange(slots, device=params.device)
    return age[None, :] >= params.delay_steps[:, None]


def ready_pods(state: EnvState, params: EnvParams) -> torch.Tensor:
    return (state.pods * _ready_mask(params, state.pods.shape[1])).sum(dim=1)


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
        torch.ceil(peak * _draw(gen, n_envs, dom.max_replicas_factor, log=True)), lo + 2.0
    )
    key = torch.randint(0, 2**31 - 1, (n_envs,), generator=gen)
    noise_offset = torch.randint(0, 2**31 - 1, (n_envs,), generator=gen)

    def steps(lo_hi: tuple[float, float], least: int = 0) -> torch.Tensor:
        s = _draw(gen, n_envs, lo_hi, log=False)
        return torch.clamp(torch.round(s / cfg.dt), min=least).long()

    t = {
        "capacity": capacity,
        "service_time_s": service_time,
        "delay_steps": delay_steps,
        "slo_s": slo,
        "peak_replicas": peak,
        "min_replicas": lo,
        "max_replicas": hi,
        "cpu_limit_ratio": _draw(gen, n_envs, dom.cpu_limit_ratio, log=True),
        "cpu_window": steps(dom.cpu_window_s, least=1),
        "cpu_lag": steps(dom.cpu_lag_s),
        "cpu_noise": _draw(gen, n_envs, dom.cpu_noise, log=False),
        "scrape_lag": steps(dom.scrape_lag_s),
        "ingress": torch.rand(n_envs, generator=gen) < dom.ingress_probability,
        # drawn last, so every draw before it is what it was before this parameter existed
        "capacity_declared": torch.rand(n_envs, generator=gen) < dom.capacity_declared_probability,
        "slo_priority": _draw(gen, n_envs, dom.slo_priority, log=True),
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


def _noise(params: EnvParams, pos: torch.Tensor, salt: int) -> torch.Tensor:
    """A standard normal per (env, bank position, salt) from the fixed table."""
    bank = params.bank
    idx = (params.noise_offset.view(-1, *([1] * (pos.dim() - 1))) * (2 * salt + 1) + pos) & (
        bank.noise.shape[0] - 1
    )
    return bank.noise[idx]


def _scale_for(params: EnvParams, trace: torch.Tensor) -> torch.Tensor:
    """Amplitude that makes the trace's reference rate need ``peak_replicas`` pods."""
    ref = params.bank.ref_rate[trace]
    need = params.peak_replicas * params.capacity
    return torch.where(ref > 0, need / torch.where(ref > 0, ref, 1.0), 1.0)


def _steady(params: EnvParams, rate0: torch.Tensor) -> dict[str, torch.Tensor]:
    """A service that has run at ``rate0`` for a while: its pods and its metrics' history."""
    cfg = params.config
    cap = params.capacity
    lo, hi = params.min_replicas, params.max_replicas
    ready = torch.clamp(torch.ceil(rate0 / (cap * cfg.init_utilization) - 1e-6), lo, hi)
    served = torch.minimum(rate0, ready * cap) * cfg.dt
    util = torch.where(ready > 0, served / torch.clamp(ready * cap * cfg.dt, min=1e-9), 0.0)
    m = latency_model(served, torch.zeros_like(served), ready, cap, params.service_time_s, cfg.dt)
    cdf = latency_cdf(m, params.bank.buckets, cfg.timeout_s)
    counts = torch.diff(cdf * served[:, None], dim=1, prepend=torch.zeros_like(served[:, None]))
    counts = torch.cat([counts, (served - cdf[:, -1] * served)[:, None]], dim=1)
    return {
        "ready": ready,
        "rate": rate0,
        "util": util,
        "p95": latency_p95(m, cfg.timeout_s),
        "counts": counts,
    }


def _fresh_values(
    params: EnvParams, pos0: torch.Tensor, length: torch.Tensor, scale: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """Per env, what a (re)start at ``pos0`` sets: ``(ep_len, pos, scale, ready pods, rate,
    utilization, p95, latency counts [B, K + 1])``; :func:`_fresh` makes a state of them."""
    s0 = _steady(params, params.bank.rates[pos0] * scale)
    return length, pos0, scale, s0["ready"], s0["rate"], s0["util"], s0["p95"], s0["counts"]


def _fresh(params: EnvParams, values: tuple[torch.Tensor, ...], episode: torch.Tensor) -> EnvState:
    """Every env (re)started (``values`` of :func:`_fresh_values`), as a service that has run
    at that rate for a while (``seen`` not measured yet). An auto-reset takes the rows it needs
    (:func:`_where_state`, :func:`_put_rows`)."""
    cfg = params.config
    length, pos0, scale, ready, rate, util, p95, counts = values
    b, dev = ready.shape[0], ready.device
    slots = torch.arange(cfg.ages + 1, device=dev)
    return EnvState(
        t=torch.zeros(b, dtype=torch.int64, device=dev),
        ep_len=length,
        pos=pos0,
        scale=scale,
        episode=episode,
        pods=torch.where(slots == cfg.ages, ready[:, None], 0.0),
        backlog=torch.zeros(b, device=dev),
        rate_hist=rate[:, None].expand(b, cfg.rate_history).contiguous(),
        cpu_all_hist=util[:, None].expand(b, cfg.cpu_history).contiguous(),
        cpu_ready_hist=util[:, None].expand(b, cfg.cpu_history).contiguous(),
        busy_hist=(util * ready)[:, None].expand(b, cfg.busy_history).contiguous(),
        lat_hist=counts[:, None, :].expand(-1, cfg.latency_history, -1).contiguous(),
        utilization=util,
        p95_s=p95,
        shield=ShieldState.init(b, dev),
    )


def _where_state(mask: torch.Tensor, new: EnvState, old: EnvState) -> EnvState:
    """``new`` for the envs in ``mask``, else ``old`` (``seen`` is dropped: measure again)."""

    def pick(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.where(mask.view(-1, *([1] * (a.dim() - 1))), a, b)

    return EnvState(
        **{k: pick(getattr(new, k), getattr(old, k)) for k in _STATE_TENSORS},
        shield=old.shield.reset_where(mask),
    )


def _put_rows(state: EnvState, ids: torch.Tensor, rows: EnvState, mask: torch.Tensor) -> EnvState:
    """``state`` with the envs ``ids`` (``mask``) replaced by ``rows`` (``[len(ids), ...]``)."""
    return EnvState(
        **{k: getattr(state, k).index_copy(0, ids, getattr(rows, k)) for k in _STATE_TENSORS},
        shield=state.shield.reset_where(mask),
    )


def _rows(params: EnvParams, ids: torch.Tensor) -> EnvParams:
    """The params of envs ``ids`` only."""
    return batching.select(params, ids)


_STATE_TENSORS: tuple[str, ...] = (
    "t",
    "ep_len",
    "pos",
    "scale",
    "episode",
    "pods",
    "backlog",
    "rate_hist",
    "cpu_all_hist",
    "cpu_ready_hist",
    "busy_hist",
    "lat_hist",
    "utilization",
    "p95_s",
)


def _episode_window(
    params: EnvParams, episode: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(pos0, length, scale)``: a random trace window and amplitude per env, a pure function
    of (env key, episode), so an auto-reset draws what a fresh env would."""
    bank = params.bank
    key = params.key
    k = torch.clamp((hash_u01(key, episode, 1) * bank.n_traces).long(), max=bank.n_traces - 1)
    tlen = bank.lengths[k]
    length = torch.clamp(tlen, max=params.config.episode_steps)
    start = (hash_u01(key, episode, 2) * (tlen - length + 1).double()).long()
    pos0 = bank.starts[k] + torch.minimum(start, tlen - length)
    jitter = params.config.domain.amplitude_jitter
    amp = torch.exp((2.0 * hash_u01(key, episode, 3) - 1.0) * jitter)
    return pos0, length, _scale_for(params, k) * amp


def _random_episodes(params: EnvParams, episode: torch.Tensor) -> EnvState:
    """Every env in a random trace window with a random amplitude (:func:`_episode_window`)."""
    return _fresh(params, _fresh_values(params, *_episode_window(params, episode)), episode)


def _auto_reset(
    nxt: EnvState, done: torch.Tensor, params: EnvParams, observe_next: bool
) -> tuple[EnvState, torch.Tensor | None]:
    """Envs in ``done`` begin their next episode (eager; see :func:`_auto_reset_graph` for the
    compiled step). The next episode is drawn for the ``done`` envs only: transcendental
    functions (``exp``) may round differently by batch position on CPU, so this keeps the
    batches the simulator always used and gives exactly its figures."""
    ids = done.nonzero().squeeze(1)
    rows = _random_episodes(_rows(params, ids), nxt.episode[ids] + 1)
    state = _put_rows(nxt, ids, rows, done)
    if not observe_next:
        return state, None
    state = _measured(state, params)
    return state, observe(state, params)


def _auto_reset_graph(
    nxt: EnvState, obs: torch.Tensor | None, done: torch.Tensor, params: EnvParams
) -> tuple[EnvState, torch.Tensor | None]:
    """:func:`_auto_reset` as one graph (gymnax style, no Python branch): the next episode's
    values for every env and the new measurement are computed under ``torch.cond`` (only
    when some env is done) and taken per env with ``torch.where``. Same numbers as eager up to
    the float rounding of a compiled step."""
    any_done = done.any()
    episode = nxt.episode + 1

    def draw(ep: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return _fresh_values(params, *_episode_window(params, ep))

    def skip(ep: torch.Tensor) -> tuple[torch.Tensor, ...]:
        z = torch.zeros_like(nxt.backlog)
        k = nxt.lat_hist.shape[2]
        zi = torch.zeros_like(ep)
        return (
            zi,
            zi.clone(),
            z,
            z.clone(),
            z.clone(),
            z.clone(),
            z.clone(),
            z[:, None].expand(-1, k).contiguous(),
        )

    values = torch.cond(any_done, draw, skip, (episode,))
    state = _where_state(done, _fresh(params, values, episode), nxt)
    if obs is None or nxt.seen is None:
        return state, None
    pre = nxt.seen

    def again(*xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        st = replace(state, **dict(zip(_STATE_TENSORS, xs, strict=True)))
        seen = measure(st, params)
        rates = torch.stack([seen.rate_now, seen.rate_1m, seen.rate_5m, seen.rate_15m], 1)
        fields = (seen.cpu_utilization, seen.p95_s, rates, seen.rate_peak_15m)
        fields += (seen.rate_peak_30m, seen.busy_peak_30m, seen.replicas, seen.ready_replicas)
        fields += (seen.declared_capacity(), seen.rate_forecast)
        return (*fields, observe(replace(st, seen=seen), params))

    # (The four rates are views of one tensor: a branch may not close over aliases.)
    kept = (pre.cpu_utilization, pre.p95_s)
    kept += (torch.stack([pre.rate_now, pre.rate_1m, pre.rate_5m, pre.rate_15m], 1),)
    kept += (pre.rate_peak_15m, pre.rate_peak_30m, pre.busy_peak_30m)
    kept += (pre.replicas, pre.ready_replicas, pre.declared_capacity(), pre.rate_forecast, obs)

    def keep(*xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(f.clone() for f in kept)

    xs = tuple(getattr(state, k) for k in _STATE_TENSORS)
    cpu, p95, rates, peak, peak30, busy30, replicas, ready, capacity, forecast, new_obs = (
        torch.cond(any_done, again, keep, xs)
    )
    seen = replace(
        pre,
        cpu_utilization=cpu,
        p95_s=p95,
        rate_now=rates[:, 0],
        rate_1m=rates[:, 1],
        rate_5m=rates[:, 2],
        rate_15m=rates[:, 3],
        rate_peak_15m=peak,
        rate_peak_30m=peak30,
        busy_peak_30m=busy30,
        replicas=replicas,
        ready_replicas=ready,
        capacity_rps=capacity,
        rate_forecast=forecast,
    )
    return replace(state, seen=seen), new_obs


def reset(params: EnvParams) -> tuple[EnvState, torch.Tensor]:
    """Start every env in a random window of the trace bank; returns (state, observation)."""
    zero = torch.zeros(params.n_envs, dtype=torch.int64, device=params.device)
    state = _measured(_random_episodes(params, zero), params)
    return state, observe(state, params)


def reset_fixed(
    params: EnvParams, trace_index: torch.Tensor, start: torch.Tensor, length: torch.Tensor
) -> tuple[EnvState, torch.Tensor]:
    """Start env i at step ``start[i]`` of trace ``trace_index[i]`` for ``length[i]`` steps, with
    no amplitude jitter (evaluation: every controller meets exactly the same traffic)."""
    bank = params.bank
    trace_index, start, length = (x.to(params.device).long() for x in (trace_index, start, length))
    if bool(((start < 0) | (length < 1) | (start + length > bank.lengths[trace_index])).any()):
        raise ValueError("window outside its trace (start < 0, length < 1, or past the end)")
    pos0 = bank.starts[trace_index] + start
    scale = _scale_for(params, trace_index)
    zero = torch.zeros_like(pos0)
    state = _measured(_fresh(params, _fresh_values(params, pos0, length, scale), zero), params)
    return state, observe(state, params)


# --- what a controller sees ------------------------------------------------------------------
#
# Every window a query reads ends ``lag`` steps back, with ``lag`` per env among a few values
# known from the config; each window is a slice of the history for each possible lag, and
# each env takes its own with ``torch.where``: a handful of whole-batch ops per step instead of
# a gather per window. The sums reduce exactly the values (and shapes) they always did, so
# every number is the same as a gather's.


def _cols(x: torch.Tensor, idx: list[int]) -> torch.Tensor:
    """``x[:, idx]`` for static ``idx``: a view when the columns are evenly spaced."""
    step = idx[1] - idx[0] if len(idx) > 1 else 1
    if step > 0 and all(b - a == step for a, b in itertools.pairwise(idx)):
        return x[:, idx[0] : idx[-1] + 1 : step]
    return x[:, torch.tensor(idx, device=x.device)]


def _by_lag(lag: torch.Tensor, lags: int, cols: Callable[[int], torch.Tensor]) -> torch.Tensor:
    """Per env ``cols(lag)`` for ``lag`` in ``0..lags``: ``cols(l)`` is a ``[B, ...]`` slice."""
    out = cols(0)
    for lo in range(1, lags + 1):
        out = torch.where(lag.view(-1, *([1] * (out.dim() - 1))) == lo, cols(lo), out)
    return out


def _cpu_window(hist: torch.Tensor, params: EnvParams) -> torch.Tensor:
    """Mean of ``hist[:, n-lag-window : n-lag]`` per env (oldest first; the env's CPU lag and
    window), summed over the widest window with the columns outside the env's own masked."""
    n = hist.shape[1]
    k = max(1, params.config.steps(params.config.domain.cpu_window_s[1]))
    vals = _by_lag(params.cpu_lag, n - k, lambda lo: hist[:, n - lo - k : n - lo])
    w = params.cpu_window
    m = torch.arange(k, device=hist.device)[None, :] >= (k - w)[:, None]
    return (vals * m).sum(dim=1) / torch.clamp(w, 1, k)


def observed_cpu(state: EnvState, params: EnvParams, ready_only: bool) -> torch.Tensor:
    """CPU utilization relative to the request, as cAdvisor/metrics-server report it."""
    hist = state.cpu_ready_hist if ready_only else state.cpu_all_hist
    busy = _cpu_window(hist, params)
    z = _noise(params, state.pos, salt=1)
    return torch.clamp(busy * (1.0 + params.cpu_noise * z), min=0.0) * params.cpu_limit_ratio


def signals(state: EnvState, params: EnvParams) -> Signals:
    """What the operator's three Prometheus queries and the Deployment's status would show."""
    seen = state.seen if state.seen is not None else measure(state, params)
    return Signals(
        inputs=seen,
        max_replicas=params.max_replicas,
        present=torch.ones_like(state.backlog, dtype=torch.bool),
        age_s=torch.zeros_like(state.backlog),
    )


def _measured(state: EnvState, params: EnvParams) -> EnvState:
    return replace(state, seen=measure(state, params))


#: Windows up to this many steps are summed column by column on CPU (a few ``[B]`` ops instead
#: of a reduction over a copied ``[B, K, w]`` block): torch's CPU sum adds up to 4 values in
#: order, along either dim, so the numbers are the same (``test_simulator_graph`` checks it).
_SEQUENTIAL_SUM_MAX = 4


def _sequential(hist: torch.Tensor, w: int) -> bool:
    return hist.device.type == "cpu" and w <= _SEQUENTIAL_SUM_MAX


def _window_sums(
    hist: torch.Tensor, lag: torch.Tensor, lmax: int, backs: tuple[int, ...], w: int
) -> list[torch.Tensor]:
    """Per env and per ``k`` in ``backs``: the sum over dim 1 of ``hist[:, n-lag-k-w : n-lag-k]``
    (``lag`` in ``0..lmax``), in the order ``torch.sum`` adds them (see :func:`_sequential`)."""
    n = hist.shape[1]
    out = []
    for k in backs:
        total = None
        for lo in range(lmax + 1):
            s = hist[:, n - lo - k - w]
            for i in range(1, w):
                s = s + hist[:, n - lo - k - w + i]
            cond = (lag == lo).view(-1, *([1] * (s.dim() - 1)))
            total = s if total is None else torch.where(cond, s, total)
        assert total is not None
        out.append(total)
    return out


def _rate_queries(
    hist: torch.Tensor, lag: torch.Tensor, cfg: SimConfig
) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
    """``4 x [B]`` the 1 m rate now, 1, 5 and 15 minutes back, ``[B]`` the range query's
    highest point over 15 and over 30 minutes, and ``[B, 31]`` its points over 30 minutes
    (oldest first), all ``lag`` steps late. The peaks' windows are
    differences of the history's cumulative sum (as a range query's points are differences of a
    counter)."""
    n = hist.shape[1]
    w = cfg.rate_window
    lmax = cfg.max_scrape_lag
    backs = (0, *cfg.rate_lags)
    if n - lmax - backs[-1] - w < 0:
        raise ValueError("rate history too short for the queries' windows")
    if _sequential(hist, w):
        rates = [s / w for s in _window_sums(hist, lag, lmax, backs, w)]
    else:
        wins = _by_lag(
            lag,
            lmax,
            lambda lo: torch.stack([hist[:, n - lo - k - w : n - lo - k] for k in backs], 1),
        )
        rates = list(wins.mean(dim=2).unbind(1))
    cs = torch.cat([torch.zeros_like(hist[:, :1]), hist.cumsum(dim=1)], dim=1)
    offsets = cfg.long_peak_offsets[::-1]

    def ends(lo: int) -> list[int]:
        return [max(n - lo - o, w) for o in offsets]

    hi = _by_lag(lag, lmax, lambda lo: _cols(cs, ends(lo)))
    low = _by_lag(lag, lmax, lambda lo: _cols(cs, [e - w for e in ends(lo)]))
    points = (hi - low) / w  # oldest first; the last len(peak_offsets) are the 15 minutes
    short = len(cfg.peak_offsets)
    return rates, points[:, -short:].amax(dim=1), points.amax(dim=1), points


def _busy_points(hist: torch.Tensor, params: EnvParams) -> torch.Tensor:
    """``[B, 31]`` the busy pods of the last 30 minutes: points 60 s apart, each the mean of
    ``hist`` over the env's CPU window ending its CPU lag before the point (the CPU pipeline of
    :func:`observed_cpu`, without the reading's noise: a range of a CPU counter)."""
    cfg = params.config
    n = hist.shape[1]
    k = max(1, cfg.steps(cfg.domain.cpu_window_s[1]))
    w = params.cpu_window
    # column c: the mean of the w steps ending at step c + k - 1
    total = hist[:, k - 1 :]
    for i in range(1, k):
        total = total + hist[:, k - 1 - i : n - i] * (w > i).to(hist.dtype)[:, None]
    mean = total / torch.clamp(w, 1, k).to(hist.dtype)[:, None]
    offsets = cfg.long_peak_offsets[::-1]
    points = _by_lag(
        params.cpu_lag,
        n - k - offsets[0],
        lambda lo: _cols(mean, [n - k - lo - o for o in offsets]),
    )
    return points


def measure(state: EnvState, params: EnvParams) -> features.FeatureInputs:
    """The feature inputs the metric pipelines deliver for this state (see :func:`signals`)."""
    cfg = params.config
    w = cfg.rate_window
    lag = params.scrape_lag
    rates, peak, peak30, rate_points = _rate_queries(state.rate_hist, lag, cfg)
    busy_points = _busy_points(state.busy_hist, params)
    ready = ready_pods(state, params)
    capacity = torch.where(params.capacity_declared, params.capacity, math.nan)
    if cfg.domain.capacity_estimated:
        est = features.estimate_capacity(rate_points, busy_points, ready)
        capacity = torch.where(params.capacity_declared, capacity, est)
    hist, lmax = state.lat_hist, cfg.max_scrape_lag
    if _sequential(hist, w):
        (lat,) = _window_sums(hist, lag, lmax, (0,), w)
    else:
        n = hist.shape[1]
        lat = _by_lag(lag, lmax, lambda lo: hist[:, n - lo - w : n - lo]).sum(dim=1)
    cum = torch.cumsum(lat, dim=1)
    p95 = service.histogram_quantile(0.95, cum, params.bank.buckets)
    z = torch.zeros_like(state.backlog)
    return features.FeatureInputs(
        cpu_utilization=observed_cpu(state, params, ready_only=False),
        cpu_limit_ratio=params.cpu_limit_ratio,
        p95_s=p95,
        slo_s=params.slo_s,
        rate_now=rates[0],
        rate_1m=rates[1],
        rate_5m=rates[2],
        rate_15m=rates[3],
        rate_peak_15m=peak,
        rate_peak_30m=peak30,
        busy_peak_30m=busy_points.amax(dim=1),
        replicas=state.replicas,
        ready_replicas=ready,
        min_replicas=params.min_replicas,
        since_scale_up_s=z,
        since_scale_down_s=z,
        capacity_rps=capacity,
        slo_priority=params.slo_priority,
        rate_forecast=features.rate_forecast(rate_points),
    )


@dataclass(frozen=True)
class HPAView:
    """What the HPA controller works from, per env (see :func:`hpa_view`)."""

    current: torch.Tensor
    ready: torch.Tensor
    """Pods with a metric that the controller counts."""
    unready: torch.Tensor
    """Pods it sets aside (not Ready, or Ready too recently within the initialization period)."""
    missing: torch.Tensor
    """Pods with no metric sample yet."""
    utilization: torch.Tensor
    """The counted pods' mean CPU use over their request (may exceed 1 up to limit/request)."""


def hpa_view(state: EnvState, params: EnvParams) -> HPAView:
    """The HPA controller's view: metrics-server's CPU of each pod (late by the CPU pipeline's
    lag and window) and ``groupPods``' rules for which pods count:

    * a pod younger than one metric window has no sample yet: *missing* (pods run from their
      creation, as kwok plays them; the controller would call a Pending pod unready);
    * a pod not Ready yet is *unready*;
    * within the CPU-initialization period (5 min from start) a Ready pod is *unready* until a
      sample whose window began after it turned Ready exists (ready for lag + window);
    * every other pod is counted, at the ready pods' utilization.
    """
    slots = state.pods.shape[1]
    age = torch.arange(slots, device=params.device)[None, :]
    old = age == slots - 1
    delay = params.delay_steps[:, None]
    missing = (age < params.cpu_window[:, None]) & ~old
    not_ready = age < delay
    in_init = (age * params.config.dt < CPU_INITIALIZATION_PERIOD_S) & ~old
    too_fresh = in_init & ((age - delay) < (params.cpu_lag + params.cpu_window)[:, None])
    unready = ~missing & (not_ready | too_fresh)
    counted = ~missing & ~unready
    pods = state.pods
    return HPAView(
        current=state.replicas,
        ready=(pods * counted).sum(dim=1),
        unready=(pods * unready).sum(dim=1),
        missing=(pods * missing).sum(dim=1),
        utilization=observed_cpu(state, params, ready_only=True),
    )


def observe(state: EnvState, params: EnvParams) -> torch.Tensor:
    """The observation of :mod:`qscale.features` for the current state."""
    now = state.t.to(_F64) * params.config.dt
    return decision.observe(signals(state, params), state.shield, now)


def arrival_rate(params: EnvParams, pos: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Arrivals (requests/s) at bank positions ``pos`` (``[B]`` or ``[B, K]``): the scaled trace
    plus Poisson noise (normal approximation, from the position-keyed noise table)."""
    bank = params.bank
    lam = bank.rates[pos] * scale * params.config.dt
    if params.config.noise:
        z = _noise(params, pos, salt=0)
        lam = torch.clamp(lam + torch.sqrt(lam) * z, min=0.0)
    return lam / params.config.dt


def step(
    state: EnvState, action: torch.Tensor, params: EnvParams
) -> tuple[EnvState, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    """Apply a scripted action ``[B]`` (int64) through :func:`qscale.decision.decide` (the
    operator's decision code, shield included) and advance one step."""
    return _decided(state, params, action=action)


def step_greedy(
    state: EnvState,
    q_values: torch.Tensor,
    params: EnvParams,
    explore: decision.Explore | None = None,
) -> tuple[EnvState, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    """Advance one step on a policy's Q-values ``[B, N_ACTIONS]``: :func:`qscale.decision.decide`
    takes the greedy action (``explore`` may replace it, in training) and shields it.
    ``info["action"]`` is the action played."""
    return _decided(state, params, q_values=q_values, explore=explore)


def _decided(state: EnvState, params: EnvParams, **choice):
    now = state.t.to(_F64) * params.config.dt
    d = decision.decide(signals(state, params), state.shield, now, params.config.shield, **choice)
    out = _transition(state, state.replicas, d.replicas, d.shield_state, d.reason, params)
    out[-1]["action"] = d.action
    return out


def step_replicas(
    state: EnvState, desired: torch.Tensor, params: EnvParams, observe_next: bool = True
) -> tuple[EnvState, torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    """Advance one step with a replica count chosen by a controller that brings its own rules
    (the baselines): only the shield's bounds stage applies (:func:`qscale.guardrails.bound`:
    ``[min, max]``; a non-finite count holds).

    ``observe_next=False`` skips the next observation (``None`` is returned; the metrics are
    then measured only if the controller asks :func:`signals`): for controllers that read
    their own signals, which is most of a baseline grid's cost otherwise."""
    cur = state.replicas
    now = state.t.to(_F64) * params.config.dt
    target, reason = bound(cur, desired, params.min_replicas, params.max_replicas)
    return _transition(
        state,
        cur,
        target,
        record_scale(state.shield, cur, target, now),
        reason,
        params,
        observe_next,
    )


def _transition(
    state: EnvState,
    cur: torch.Tensor,
    target: torch.Tensor,
    shield_state: ShieldState,
    reason: torch.Tensor,
    params: EnvParams,
    observe_next: bool = True,
) -> tuple[EnvState, torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    cfg = params.config
    w = cfg.reward
    dt = cfg.dt
    target = target.to(cur.dtype)

    # 1. Scale: delete the youngest pods first; add new ones at age 0.
    remove = torch.clamp(cur - target, min=0.0)
    cum = state.pods.cumsum(dim=1)
    left = torch.clamp(cum - remove[:, None], min=0.0)
    pods = torch.diff(left, dim=1, prepend=torch.zeros_like(left[:, :1]))
    pods[:, 0] += torch.clamp(target - cur, min=0.0)

    # 2. Pods that reached their start-up delay serve.
    ready = (pods * _ready_mask(params, pods.shape[1])).sum(dim=1)
    total = pods.sum(dim=1)

    # 3-4. Arrivals and service.
    rate = arrival_rate(params, state.pos, state.scale)
    arrivals = rate * dt
    f, m = serve(
        arrivals, state.backlog, ready, params.capacity, params.service_time_s, dt, cfg.timeout_s
    )
    cdf = step_cdf(m, params.bank.buckets, cfg.timeout_s)
    served_in = torch.diff(cdf * f.served[:, None], dim=1, prepend=torch.zeros_like(cdf[:, :1]))
    slow = torch.clamp(f.served - cdf[:, -1] * f.served, min=0.0) + f.dropped
    counts = torch.cat([served_in, slow[:, None]], dim=1)

    # What the metrics will show of this step.
    busy = f.served / (params.capacity * dt)  # pods' worth of CPU limit in use
    cpu_all = torch.where(total > 0, busy / torch.clamp(total, min=1e-9), 0.0)
    counter = torch.where(params.ingress, rate, f.served / dt)

    # 5. Cost, SLO and reward.
    violation = f.p95_s > params.slo_s
    changed = target != cur
    drop_frac = f.dropped / torch.clamp(arrivals + state.backlog, min=1e-9)
    if w.cost_norm == "need":
        norm = torch.clamp(rate / params.capacity, min=1.0)
    else:
        norm = params.peak_replicas
    reward = -(
        w.cost * target / norm
        + w.slo * params.slo_priority * violation.to(target.dtype)
        + w.drop * drop_frac
        + w.churn * changed.to(target.dtype)
    )

    # Age every pod by one step.
    aged = torch.cat([torch.zeros_like(pods[:, :1]), pods[:, :-1]], dim=1)
    aged[:, -1] += pods[:, -1]
    t = state.t + 1
    truncated = t >= state.ep_len
    nxt = EnvState(
        t=t,
        ep_len=state.ep_len,
        pos=state.pos + 1,
        scale=state.scale,
        episode=state.episode,
        pods=aged,
        backlog=f.backlog,
        rate_hist=_push(state.rate_hist, counter),
        cpu_all_hist=_push(state.cpu_all_hist, cpu_all),
        cpu_ready_hist=_push(state.cpu_ready_hist, f.utilization),
        busy_hist=_push(state.busy_hist, busy),
        lat_hist=_push(state.lat_hist, counts),
        utilization=f.utilization,
        p95_s=f.p95_s,
        shield=shield_state,
    )
    obs = None
    if observe_next:
        nxt = _measured(nxt, params)
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
        "arrivals": arrivals,
        "latency_counts": counts,
        # The observation the step ended on (before any auto-reset): what a learner
        # bootstraps a truncated episode from.
        "final_obs": obs,
    }
    # Compiled, the auto-reset is part of the graph (no break); eager, it is skipped when no
    # env needs it.
    if torch.compiler.is_compiling():
        nxt, obs = _auto_reset_graph(nxt, obs, truncated, params)
    elif bool(truncated.any()):
        nxt, obs = _auto_reset(nxt, truncated, params, observe_next)
    return nxt, obs, reward, torch.zeros_like(truncated), truncated, info


def _push(hist: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``hist`` (``[B, T, ...]``, oldest first) shifted by one step, ``value`` appended."""
    return torch.cat([hist[:, 1:], value[:, None]], dim=1)


def compiled_step() -> Callable[..., tuple]:
    """:func:`step` through ``torch.compile``: same results, faster on CPU at thousands of envs
    (the whole step, auto-reset included, is one graph, its kernels fused), at the price of
    compiling on first use."""
    return torch.compile(step, dynamic=False)
