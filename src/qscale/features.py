"""The one definition of the observation vector.

The simulator builds observations with :func:`compute` today and the operator will build them
from Prometheus and the Deployment's status with the same function later, so a model can never
see features in training that serving computes differently. Every feature is scale-free (no
absolute requests per second, no absolute replica counts): a policy trained on a service that
needs 3 pods must read the same numbers on one that needs 80.

Changing a name, the order, a transform or a clip range changes :data:`SPEC_HASH`; model
artifacts record the hash and refuse to load against another spec.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import torch

SPEC_VERSION = 1

#: Seconds a scale event keeps influencing the "time since" features; beyond it they read 1.
SINCE_SCALE_HORIZON_S = 300.0
#: Look-back windows of the request-rate trend features, in seconds.
RATE_LAG_SHORT_S = 60.0
RATE_LAG_LONG_S = 300.0


@dataclass(frozen=True)
class Feature:
    """One entry of the observation vector: how it is computed and where it is clipped."""

    name: str
    formula: str
    lo: float
    hi: float


FEATURES: tuple[Feature, ...] = (
    Feature("cpu_vs_target", "mean CPU utilization of ready pods / target utilization", 0.0, 4.0),
    Feature("log2_p95_vs_slo", "log2(p95 latency / SLO)", -4.0, 4.0),
    Feature("rate_trend_1m", "ln(request rate now / request rate 60 s ago)", -2.0, 2.0),
    Feature("rate_trend_5m", "ln(request rate now / request rate 300 s ago)", -2.0, 2.0),
    Feature("replicas_in_range", "(replicas - min) / (max - min)", 0.0, 1.0),
    Feature("log_replicas_vs_max", "ln(1 + replicas) / ln(1 + max)", 0.0, 1.0),
    Feature("pending_fraction", "(replicas - ready replicas) / replicas", 0.0, 1.0),
    Feature("since_scale_up", "seconds since last scale-up / 300", 0.0, 1.0),
    Feature("since_scale_down", "seconds since last scale-down / 300", 0.0, 1.0),
)

FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)
N_FEATURES = len(FEATURES)


def _spec_hash() -> str:
    spec = {
        "version": SPEC_VERSION,
        "features": [[f.name, f.formula, f.lo, f.hi] for f in FEATURES],
        "since_horizon_s": SINCE_SCALE_HORIZON_S,
        "rate_lags_s": [RATE_LAG_SHORT_S, RATE_LAG_LONG_S],
    }
    blob = json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


#: Stable fingerprint of names, order and normalization; artifacts store it.
SPEC_HASH: str = _spec_hash()

_LO = torch.tensor([f.lo for f in FEATURES])
_HI = torch.tensor([f.hi for f in FEATURES])


@dataclass(frozen=True)
class FeatureInputs:
    """Raw signals for a batch of services; each field is a tensor of shape ``[B]``.

    All of them exist in production: utilization and request rates from Prometheus, p95 from a
    latency histogram, replica counts from the Deployment's status, scale times from our own
    shield state. Rates may be in any unit as long as the three share it.
    """

    utilization: torch.Tensor
    target_utilization: torch.Tensor
    p95_s: torch.Tensor
    slo_s: torch.Tensor
    rate_now: torch.Tensor
    rate_short_ago: torch.Tensor
    rate_long_ago: torch.Tensor
    replicas: torch.Tensor
    ready_replicas: torch.Tensor
    min_replicas: torch.Tensor
    max_replicas: torch.Tensor
    since_scale_up_s: torch.Tensor
    since_scale_down_s: torch.Tensor


def _log_ratio(now: torch.Tensor, before: torch.Tensor) -> torch.Tensor:
    """ln(now/before), with a floor relative to the larger rate so that idle periods read 0."""
    floor = 1e-3 * torch.maximum(now, before) + 1e-12
    return torch.log((now + floor) / (before + floor))


def compute(x: FeatureInputs) -> torch.Tensor:
    """Observation tensor ``[B, N_FEATURES]`` (float32), clipped to each feature's range.

    Non-finite inputs never reach the network: they become 0 after clipping (a missing-metric
    policy belongs to the decision code, which sees the raw inputs).
    """
    replicas = torch.clamp(x.replicas, min=1.0)
    span = torch.clamp(x.max_replicas - x.min_replicas, min=1.0)
    cols = (
        x.utilization / torch.clamp(x.target_utilization, min=1e-6),
        torch.log2(torch.clamp(x.p95_s, min=1e-9) / torch.clamp(x.slo_s, min=1e-9)),
        _log_ratio(x.rate_now, x.rate_short_ago),
        _log_ratio(x.rate_now, x.rate_long_ago),
        (x.replicas - x.min_replicas) / span,
        torch.log1p(x.replicas) / torch.log1p(torch.clamp(x.max_replicas, min=1.0)),
        (x.replicas - x.ready_replicas) / replicas,
        x.since_scale_up_s / SINCE_SCALE_HORIZON_S,
        x.since_scale_down_s / SINCE_SCALE_HORIZON_S,
    )
    obs = torch.stack(cols, dim=-1).to(torch.float32)
    obs = torch.nan_to_num(obs, nan=0.0, posinf=1e9, neginf=-1e9)
    return torch.minimum(torch.maximum(obs, _LO.to(obs.device)), _HI.to(obs.device))
