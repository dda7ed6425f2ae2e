"""The one serving core: raw signals -> features -> Q-values -> action -> shield -> replicas.

:func:`decide` is pure (no I/O, the clock passed in) and batched over targets. The simulator's
``step`` calls it for every env and the operator calls it for every AutoscalePolicy due in a
tick, so training, evaluation and serving take exactly the same decision from the same inputs.
The rules around the network, each with its own reason code:

* a current replica count that is unknown (NaN) means no decision and no write
  (``REPLICAS_UNKNOWN``);
* a signal that is missing (``signals.present`` false: no series, a failed query) holds the
  current count (``METRICS_MISSING``); one older than ``stale_after_s`` holds too
  (``METRICS_STALE``). Never scale on data we do not have: in particular a missing CPU metric
  must never read as "idle". The bounds still apply (a count outside [min, max] moves to the
  bound, as the HPA does without metrics);
* Q-values that are not all finite (a broken or tampered network) are not followed: hold
  (``MODEL_OUTPUT_INVALID``);
* otherwise the greedy action of the Q-values (from ``model``, or given as ``q_values``) among
  the available ones (the rate actions need a declared per-pod capacity) -- or, in training,
  what ``explore`` makes of it, or a scripted ``action`` -- is turned into a proposal by
  :mod:`qscale.actions` and bounded by :mod:`qscale.guardrails`.

:func:`greedy` is the one argmax over Q-values in the project: the simulator, the trainer
(its exploration wraps the greedy choice; its Double-DQN target) and the operator all reach it
through here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from qscale import actions, features
from qscale.guardrails import Reason, ShieldConfig, ShieldResult, ShieldState, shield

__all__ = ["Decision", "Explore", "Signals", "decide", "greedy", "observe"]

QFunction = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Signals:
    """Raw signals for ``B`` targets (``[B]`` tensors): the :class:`~qscale.features.FeatureInputs`
    plus the shield's bounds and what is known about the metrics' freshness."""

    inputs: features.FeatureInputs
    """The feature inputs; ``since_scale_*`` are filled in from the shield state by
    :func:`observe`, whatever they hold here."""
    max_replicas: torch.Tensor
    present: torch.Tensor
    """bool: every metric the features need is there."""
    age_s: torch.Tensor
    """Age of the newest metric sample, seconds (0 in the simulator)."""

    @property
    def replicas(self) -> torch.Tensor:
        return self.inputs.replicas


@dataclass(frozen=True)
class Decision:
    replicas: torch.Tensor
    """Count to apply (whole numbers in ``[min, max]``); NaN: write nothing."""
    action: torch.Tensor
    """int64 action index chosen (greedy, explored or given)."""
    reason: torch.Tensor
    """int64 :class:`~qscale.guardrails.Reason`."""
    proposal: torch.Tensor
    """What the action proposed before the shield (NaN when held for missing metrics)."""
    q_values: torch.Tensor
    """``[B, N_ACTIONS]``; NaN rows where the network was not asked or its say did not count."""
    observation: torch.Tensor | None
    """``[B, N_FEATURES]`` the network's input (``None`` unless ``model`` was given)."""
    usable: torch.Tensor
    """bool ``[B]``: the metrics were there and fresh and the Q-values finite, so the action
    had its say."""
    shield_state: ShieldState


Explore = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""Training's exploration: the greedy actions ``[B]`` and the available ones ``[B, N_ACTIONS]``
in, the actions to play out (e.g. epsilon-greedy replacing some by random available ones). It
sits between the argmax and the shield, nowhere else."""


def greedy(q_values: torch.Tensor, available: torch.Tensor | None = None) -> torch.Tensor:
    """The greedy action of each row among its ``available`` actions (all when ``None``): the
    one argmax of the project."""
    if available is not None:
        q_values = q_values.masked_fill(~available, -math.inf)
    return q_values.argmax(dim=-1).to(torch.int64)


def observe(
    signals: Signals, shield_state: ShieldState, now_s: torch.Tensor | float
) -> torch.Tensor:
    """The observation for ``signals``, with the time-since features from the shield's memory."""
    x = signals.inputs
    now = torch.as_tensor(now_s, dtype=torch.float64, device=x.replicas.device)
    since_up = (now - shield_state.last_up_s).to(x.replicas.dtype)
    since_down = (now - shield_state.last_down_s).to(x.replicas.dtype)
    return features.compute(
        features.FeatureInputs(
            **{
                **{k: getattr(x, k) for k in x.__dataclass_fields__},
                "since_scale_up_s": since_up,
                "since_scale_down_s": since_down,
            }
        )
    )


def decide(
    signals: Signals,
    shield_state: ShieldState,
    now_s: torch.Tensor | float,
    config: ShieldConfig,
    *,
    model: QFunction | None = None,
    q_values: torch.Tensor | None = None,
    action: torch.Tensor | None = None,
    explore: Explore | None = None,
    stale_after_s: float = math.inf,
    commit: torch.Tensor | bool = True,
) -> Decision:
    """One decision for every target. Give one of ``model`` (obs -> Q; the forward pass runs
    here), ``q_values`` (``[B, N_ACTIONS]``, when the caller batches several models' forward
    passes) or ``action`` (scripted indices: tests, a replayed log).

    ``explore`` (training only) turns the greedy actions into the ones played. ``commit`` is
    passed to the shield (False in Shadow mode: report, do not record a scale).
    """
    if sum(v is not None for v in (model, q_values, action)) != 1:
        raise ValueError("decide() needs exactly one of model, q_values or action")
    x = signals.inputs
    cur = x.replicas
    obs = None
    if model is not None:
        obs = observe(signals, shield_state, now_s)
        with torch.no_grad():
            q_values = model(obs.to(next(_params(model), obs).device)).to(cur.device).float()
    sane = torch.ones_like(signals.present)
    cap = x.declared_capacity()
    if q_values is not None:
        allowed = actions.available(~torch.isnan(cap))
        action = greedy(q_values, allowed)
        if explore is not None:
            action = explore(action, allowed)
        else:  # a network that answers NaN/inf is not followed (exploration plays anyway)
            sane = torch.isfinite(q_values).all(dim=-1)
    else:
        q_values = torch.full((cur.shape[0], actions.N_ACTIONS), math.nan, device=cur.device)
    busy = features.busy_pods(x.cpu_utilization, x.cpu_limit_ratio, cur)
    rate_pods = x.rate_now / cap
    peak_rate_pods = torch.maximum(x.rate_peak_15m, x.rate_now) / cap
    peak30_rate_pods = torch.maximum(x.rate_peak_30m, x.rate_now) / cap
    proposal = actions.apply(
        cur,
        action,
        busy,
        features.peak_busy_pods(x, busy),
        rate_pods,
        peak_rate_pods,
        features.peak30_busy_pods(x, busy),
        peak30_rate_pods,
        features.forecast_rate(x) / cap,
    )
    stale = signals.present & (signals.age_s > stale_after_s)
    usable = signals.present & ~stale & sane
    desired = torch.where(usable, proposal, cur)
    res: ShieldResult = shield(
        cur, desired, shield_state, now_s, config, x.min_replicas, signals.max_replicas, commit
    )
    reason = res.reason
    held = (reason == int(Reason.OK)) | (reason == int(Reason.INVALID_INPUT))
    reason = torch.where(held & ~sane, int(Reason.MODEL_OUTPUT_INVALID), reason)
    reason = torch.where(held & ~signals.present, int(Reason.METRICS_MISSING), reason)
    reason = torch.where(held & stale, int(Reason.METRICS_STALE), reason)
    return Decision(
        replicas=res.replicas,
        action=action,
        reason=reason,
        proposal=torch.where(usable, proposal, math.nan),
        q_values=torch.where(usable[:, None], q_values, math.nan),
        observation=obs,
        usable=usable,
        shield_state=res.state,
    )


def _params(model: QFunction):
    params = getattr(model, "parameters", None)
    return iter(params()) if callable(params) else iter(())
