"""The operator's own metrics (prometheus-client), on their own registry.

Labels stay low-cardinality (no per-policy labels: 1,000 policies must not mean 1,000 series
per metric); per-policy detail lives in each AutoscalePolicy's status and Events.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["Metrics"]

_FAST = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
_SLOW = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.decisions = Counter(
            "qscale_decisions",
            "Decisions taken, by action, mode, reason code and model (name@sha256 prefix; "
            "hpa-rule: the HPA rule decided; none: no model)",
            ["action", "mode", "reason", "model"],
            registry=r,
        )
        self.inference = Histogram(
            "qscale_inference_seconds",
            "One forward pass of a model over every policy due in a tick",
            ["model"],
            buckets=_FAST,
            registry=r,
        )
        self.decide = Histogram(
            "qscale_decide_seconds",
            "features + forward pass + shield for every policy due in a tick",
            buckets=_FAST,
            registry=r,
        )
        self.tick = Histogram(
            "qscale_tick_seconds",
            "Wall time of one tick, to its scale writes done and its statuses handed over",
            buckets=_SLOW,
            registry=r,
        )
        self.tick_scale = Histogram(
            "qscale_tick_scale_writes_seconds",
            "Tick start to its last scale write done (ticks with scale writes)",
            buckets=_SLOW,
            registry=r,
        )
        self.tick_status = Histogram(
            "qscale_tick_status_writes_seconds",
            "Tick start to its last status patch done (ticks with status patches)",
            buckets=_SLOW,
            registry=r,
        )
        self.status_backlog = Gauge(
            "qscale_status_backlog",
            "Policies whose status from an earlier tick was not yet written when the last tick "
            "started",
            registry=r,
        )
        self.ticks = Counter("qscale_ticks", "Ticks run (with at least one policy due)", registry=r)
        self.due = Counter(
            "qscale_policies_due",
            "Policies due, summed over ticks: the decisions owed (qscale_decisions: made)",
            registry=r,
        )
        self.tick_policies = Gauge(
            "qscale_tick_policies", "Policies decided in the last tick", registry=r
        )
        self.interventions = Counter(
            "qscale_shield_interventions",
            "Decisions the shield changed, by reason code and model",
            ["reason", "model"],
            registry=r,
        )
        self.outcomes = Counter(
            "qscale_action_outcomes",
            "Model decisions by what followed: at the policy's next tick the measured p95 was "
            "within the SLO (slo_held) or over it (slo_missed)",
            ["model", "outcome"],
            registry=r,
        )
        self.q_value = Histogram(
            "qscale_q_value",
            "The Q-value of the action a model chose (reward units x the model's reward_scale), "
            "per decision that stood",
            ["model"],
            buckets=(-100.0, -50.0, -25.0, -10.0, -5.0, -2.5, -1.0, -0.5, 0.0, 1.0),
            registry=r,
        )
        self.td_error = Histogram(
            "qscale_td_error",
            "|r + gamma max Q(s') - Q(s, a)| of each logged transition (an Enforce model "
            "decision and the next tick's): how well the model predicts what follows its choices "
            "on this cluster (the reward of its training)",
            ["model"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=r,
        )
        self.fallbacks = Counter(
            "qscale_fallbacks", "Policies that went over to the HPA rule", registry=r
        )
        self.fallback_active = Gauge(
            "qscale_fallback_active", "Policies currently decided by the HPA rule", registry=r
        )
        self.query = Histogram(
            "qscale_prometheus_query_seconds",
            "Prometheus query latency, by template",
            ["template"],
            buckets=_SLOW,
            registry=r,
        )
        self.queries = Counter(
            "qscale_prometheus_queries",
            "Prometheus queries sent, by template",
            ["template"],
            registry=r,
        )
        self.query_errors = Counter(
            "qscale_prometheus_query_errors",
            "Prometheus queries that failed, by template",
            ["template"],
            registry=r,
        )
        self.writes = Counter(
            "qscale_api_writes",
            "Kubernetes API writes, by kind (scale, status, event) and result",
            ["kind", "result"],
            registry=r,
        )
        self.conflicts = Counter(
            "qscale_scale_conflicts",
            "409s on scale writes (each re-reads the scale; a step is never applied twice)",
            registry=r,
        )
        self.model_info = Gauge(
            "qscale_model_info",
            "Models loaded (1), with their version as labels",
            ["name", "sha256", "spec_hash"],
            registry=r,
        )
        self.policies = Gauge(
            "qscale_policies", "AutoscalePolicies known to the operator", registry=r
        )
        self._safety(r)
        self.leader = Gauge(
            "qscale_leader", "1 while this replica holds the Lease and acts", registry=r
        )
        self.startup = Gauge(
            "qscale_startup_seconds",
            "Process start to the first decision for every known policy (before its writes)",
            registry=r,
        )
        self.startup_written = Gauge(
            "qscale_startup_written_seconds",
            "Process start to the last status write of the first tick that decided every "
            "known policy",
            registry=r,
        )

    def _safety(self, r: CollectorRegistry) -> None:
        """The kill switch, the decision log and the shadow scores."""
        self.kill_switch = Gauge(
            "qscale_kill_switch",
            "1 while the operator-wide kill switch is engaged in this mode (HPA or Off)",
            ["scope", "mode"],
            registry=r,
        )
        self.killed = Gauge(
            "qscale_kill_switch_policies",
            "Policies a kill switch holds (operator-wide or their namespace's)",
            registry=r,
        )
        self.log_records = Counter(
            "qscale_decision_log_records_total", "Decisions written to the decision log", registry=r
        )
        self.log_dropped = Counter(
            "qscale_decision_log_dropped_total",
            "Decisions not logged because the log's queue was full",
            registry=r,
        )
        self.log_errors = Counter(
            "qscale_decision_log_errors_total",
            "Decision log batches lost to a write error (e.g. ENOSPC: disk full)",
            ["error"],
            registry=r,
        )
        self.log_degraded = Gauge(
            "qscale_decision_log_degraded",
            "1 while the decision log's last write failed (scaling goes on)",
            registry=r,
        )
        self.canary_policies = Gauge(
            "qscale_canary_policies",
            "Enforce policies with a canary, by its state",
            ["state"],
            registry=r,
        )
        self.rollouts = Gauge(
            "qscale_rollouts",
            "ModelRollouts (group canaries) by state (Invalid: a spec the operator refuses)",
            ["state"],
            registry=r,
        )
        self.canary_rollbacks = Counter(
            "qscale_canary_rollbacks", "Canaries rolled back to the incumbent", registry=r
        )
        self.canary_promotions = Counter(
            "qscale_canary_promotions", "Canaries promoted over the incumbent", registry=r
        )
        self.canary_seconds = Counter(
            "qscale_canary_arm_seconds",
            "Seconds each canary arm was in charge",
            ["arm"],
            registry=r,
        )
        self.canary_violation_seconds = Counter(
            "qscale_canary_arm_slo_violation_seconds",
            "Seconds each canary arm was in charge with p95 over the SLO",
            ["arm"],
            registry=r,
        )
        self.canary_decisions = Counter(
            "qscale_canary_arm_decisions", "Decisions by each canary arm", ["arm"], registry=r
        )
        self.canary_interventions = Counter(
            "qscale_canary_arm_interventions",
            "Decisions of each canary arm the shield limited",
            ["arm"],
            registry=r,
        )
        self.shadow_policies = Gauge(
            "qscale_shadow_policies",
            "Policies in Shadow mode by the verdict of their shadow score (status.shadow)",
            ["verdict"],
            registry=r,
        )
        self.shadow_replica_hours = Gauge(
            "qscale_shadow_replica_hours",
            "Replica-hours over the Shadow policies' score windows, summed: the model's "
            "(candidate) and the controller's in charge (incumbent)",
            ["arm"],
            registry=r,
        )
        self.shadow_slo_minutes = Gauge(
            "qscale_shadow_slo_minutes",
            "SLO-violation minutes over the Shadow policies' score windows, summed: estimated "
            "for both arms, and the incumbent's as measured",
            ["arm"],
            registry=r,
        )
        self.drift_policies = Gauge(
            "qscale_drift_policies",
            "Policies by the drift judgement of their model's inputs (status.drift.state)",
            ["state"],
            registry=r,
        )
        self.drift_psi = Gauge(
            "qscale_drift_psi",
            "Population stability index of each model input over its policies' drift windows "
            "against the model's training: the highest over the policies of each model "
            "(sha256 prefix of its manifest)",
            ["feature", "model"],
            registry=r,
        )

    def on_query(self, template: str, seconds: float, ok: bool) -> None:
        self.queries.labels(template).inc()
        self.query.labels(template).observe(seconds)
        if not ok:
            self.query_errors.labels(template).inc()
