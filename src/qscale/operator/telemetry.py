"""What each decision tells the metrics, with its model version as a label: the decision and
its shield intervention, whether the SLO held at the next tick (action success), the Q-value
of the action taken and the TD error of the last transition (:class:`Telemetry`, called once per
decided row after its write)."""

from __future__ import annotations

import math

import torch

from qscale import actions
from qscale.operator.metrics import Metrics
from qscale.operator.rows import Row, busy_pods
from qscale.operator.status import LIMIT_REASONS

__all__ = ["Telemetry", "model_label"]

#: The actions a policy may take, with and without a declared capacity (computed once, not per
#: policy per tick).
_ALLOWED = {
    declared: actions.available(torch.tensor([declared]))[0].tolist() for declared in (False, True)
}


class Telemetry:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def observe(self, r: Row) -> None:
        """A row decided this tick (not in mode Off), after its write."""
        v, model, m = r.verdict, model_label(r), self.metrics
        m.decisions.labels(v.action or "none", r.spec.mode, v.reason or "NONE", model).inc()
        if v.reason in LIMIT_REASONS:
            m.interventions.labels(v.reason, model).inc()
        self._judge_outcome(r, model)

    def _judge_outcome(self, r: Row, model: str) -> None:
        """The last model decision's outcome (the SLO at this tick), then this one's to judge."""
        rt, o = r.runtime, r.obs
        if rt.judged_by and math.isfinite(o.p95_s) and o.has_rate and o.rate_now > 0:
            held = o.p95_s <= r.spec.slo_s
            self.metrics.outcomes.labels(rt.judged_by, "slo_held" if held else "slo_missed").inc()
        decided = r.verdict.model_decided and not r.verdict.by_fallback
        rt.judged_by = model if decided and r.spec.mode == "Enforce" else ""
        self._td_error(r, model, decided)

    def _td_error(self, r: Row, model: str, decided: bool) -> None:
        """The TD error of the last Enforce model decision (``Runtime.transition``), now that
        its outcome and the next state's Q-values are known, with the reward of the model's
        training (cost per pod over the recent peak, SLO, churn; dropped requests are not
        observed live and count 0)."""
        rt, o, v = r.runtime, r.obs, r.verdict
        prev, rt.transition = rt.transition, None
        busy = busy_pods(r)
        decay = math.exp(-r.spec.interval_s / 86400.0)
        rt.peak_busy = max(busy if math.isfinite(busy) else 0.0, rt.peak_busy * decay)
        if not decided or not v.q_values or r.model is None:
            return
        # the best action the policy could take here: the rate actions need a declared capacity
        allowed = _ALLOWED[r.spec.capacity_rps is not None or math.isfinite(r.capacity_estimate)]
        q_max = max(q for q, ok in zip(v.q_values, allowed, strict=True) if ok)
        chosen = actions.ACTION_NAMES.index(v.action) if v.action in actions.ACTION_NAMES else -1
        q_sa_now = v.q_values[chosen] if chosen >= 0 else q_max
        self.metrics.q_value.labels(model).observe(q_sa_now)
        tc = r.model.manifest.get("training_config") or {}
        if prev is not None and prev[0] == model and math.isfinite(o.p95_s) and tc:
            _, q_sa, replicas, changed = prev
            norm = max(busy if tc.get("reward_cost_norm") == "need" else rt.peak_busy, 1.0)
            reward = -(
                float(tc.get("reward_cost", 1.0)) * replicas / norm
                + float(tc.get("reward_slo", 4.0)) * (o.p95_s > r.spec.slo_s)
                + float(tc.get("reward_churn", 0.05)) * changed
            )
            scale, gamma = float(tc.get("reward_scale", 0.1)), float(tc.get("gamma", 0.99))
            self.metrics.td_error.labels(model).observe(abs(scale * reward + gamma * q_max - q_sa))
        if r.spec.mode == "Enforce" and v.desired is not None:
            rt.transition = (model, q_sa_now, v.desired, v.desired != r.before)


def model_label(r: Row) -> str:
    """The metrics' ``model`` label of a row's decision: ``name@sha256[:12]``, ``hpa-rule`` when
    the HPA rule decided, ``none`` without a model."""
    if r.verdict.by_fallback:
        return "hpa-rule"
    if r.model is None:
        return "none"
    return f"{r.model.name}@{r.model.digest[:12]}"
