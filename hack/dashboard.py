"""Generate the Grafana dashboard (``charts/qscale/files/qscale-dashboard.json``).

Panels, per AutoscalePolicy chosen by the ``namespace``/``deployment`` variables where the series
carry those labels: load vs replicas vs desired, p95 against the SLO, latency p50/p95/p99, the
decisions by action and by reason, shield interventions, Q-values, fallbacks, inference and tick
latency, and the operator's health. Series come from the operator (``qscale_*``), the app and
kube-state-metrics (the default queries of ``qscale.features.PROMQL``), and kube-state-metrics'
custom-resource metrics of the AutoscalePolicy status (``qscale_autoscalepolicy_*``, from the
chart's ``kube-state-metrics`` config: desired replicas, Q-values, reason). ``--check`` exits 1
when the committed file differs.
"""

# ruff: noqa: E501  (PromQL reads better unwrapped)
from __future__ import annotations

import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "charts" / "qscale" / "files" / "qscale-dashboard.json"
DS = {"type": "prometheus", "uid": "${datasource}"}
POD = "(.+)-[a-z0-9]+-[a-z0-9]{5}"
SEL = 'namespace=~"$namespace", pod=~"($deployment)-[a-z0-9]+-[a-z0-9]{5}"'


def per_dep(expr: str) -> str:
    return f'sum by (namespace, deployment) (label_replace({expr}, "deployment", "$1", "pod", "{POD}"))'


def target(expr: str, legend: str, ref: str) -> dict:
    return {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref}


def panel(pid, title, x, y, w, h, targets, unit="short", desc="", kind="timeseries", **extra):
    p = {
        "id": pid,
        "type": kind,
        "title": title,
        "description": desc,
        "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "targets": [target(e, leg, chr(65 + i)) for i, (e, leg) in enumerate(targets)],
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
    }
    p.update(extra)
    return p


def lat(q: float) -> str:
    return (
        f"histogram_quantile({q}, sum by (namespace, deployment, le) (label_replace("
        f'rate(http_request_duration_seconds_bucket{{{SEL}}}[1m]), "deployment", "$1", "pod", "{POD}")))'
    )


def dashboard() -> dict:
    ksm = 'namespace=~"$namespace", target=~"$deployment"'
    panels = [
        panel(
            1,
            "Load vs replicas vs desired",
            0,
            0,
            16,
            9,
            [
                (per_dep(f"rate(http_requests_total{{{SEL}}}[1m])"), "{{deployment}} req/s"),
                (
                    'kube_deployment_spec_replicas{namespace=~"$namespace", deployment=~"$deployment"}',
                    "{{deployment}} replicas",
                ),
                (
                    'kube_deployment_status_replicas_ready{namespace=~"$namespace", deployment=~"$deployment"}',
                    "{{deployment}} ready",
                ),
                (f"qscale_autoscalepolicy_desired_replicas{{{ksm}}}", "{{target}} desired"),
            ],
            desc="Request rate (the default request_rate query), the Deployment's replicas and ready "
            "pods (kube-state-metrics), and the count the policy decided (status.desiredReplicas)",
        ),
        panel(
            2,
            "p95 latency vs SLO",
            16,
            0,
            8,
            9,
            [
                (lat(0.95), "{{deployment}} p95"),
                ("$slo_ms / 1000", "SLO"),
            ],
            unit="s",
            desc="The default latency_p95 query; the SLO line is the slo_ms variable",
        ),
        panel(
            3,
            "Latency p50 / p95 / p99",
            0,
            9,
            8,
            8,
            [
                (lat(0.5), "{{deployment}} p50"),
                (lat(0.95), "{{deployment}} p95"),
                (lat(0.99), "{{deployment}} p99"),
            ],
            unit="s",
        ),
        panel(
            4,
            "Decisions by action",
            8,
            9,
            8,
            8,
            [
                (
                    'sum by (action) (rate(qscale_decisions_total{mode=~"$mode"}[5m])) * 60',
                    "{{action}}",
                ),
            ],
            unit="short",
            desc="Decisions per minute, by the action taken (all policies of the operator)",
            fieldConfig={
                "defaults": {
                    "unit": "short",
                    "custom": {"stacking": {"mode": "normal"}, "fillOpacity": 30},
                },
                "overrides": [],
            },
        ),
        panel(
            5,
            "Decisions by reason",
            16,
            9,
            8,
            8,
            [
                (
                    'sum by (reason) (rate(qscale_decisions_total{mode=~"$mode"}[5m])) * 60',
                    "{{reason}}",
                ),
            ],
            desc="Reason codes: OK, the shield's limits (STABILIZED, COOLDOWN_*, STEP_LIMIT_*, AT_MIN/MAX), "
            "METRICS_MISSING/STALE, FALLBACK_ACTIVE, MODEL_REFUSED",
        ),
        panel(
            6,
            "Q-values of the latest decision",
            0,
            17,
            8,
            8,
            [
                (f"qscale_autoscalepolicy_q_value{{{ksm}}}", "{{target}} {{action}}"),
            ],
            desc="status.lastAction.qValues (kube-state-metrics custom-resource metrics)",
        ),
        panel(
            7,
            "Shield interventions",
            8,
            17,
            8,
            8,
            [
                (
                    "sum by (reason) (rate(qscale_shield_interventions_total[5m])) * 60",
                    "{{reason}}",
                ),
            ],
            desc="Decisions per minute that the shield changed, by reason",
        ),
        panel(
            8,
            "Fallbacks",
            16,
            17,
            8,
            8,
            [
                ("sum(qscale_fallback_active)", "policies on the HPA rule"),
                ("sum(increase(qscale_fallbacks_total[1h]))", "went over in the last hour"),
                (f"qscale_autoscalepolicy_fallback_active{{{ksm}}}", "{{target}} active"),
            ],
        ),
        panel(
            9,
            "Inference latency p50 / p95 / p99",
            0,
            25,
            8,
            8,
            [
                (
                    "histogram_quantile(0.5, sum by (le) (rate(qscale_inference_seconds_bucket[5m])))",
                    "p50",
                ),
                (
                    "histogram_quantile(0.95, sum by (le) (rate(qscale_inference_seconds_bucket[5m])))",
                    "p95",
                ),
                (
                    "histogram_quantile(0.99, sum by (le) (rate(qscale_inference_seconds_bucket[5m])))",
                    "p99",
                ),
            ],
            unit="s",
            desc="One forward pass over every policy due in a tick",
        ),
        panel(
            10,
            "Tick latency p50 / p99",
            8,
            25,
            8,
            8,
            [
                (
                    "histogram_quantile(0.5, sum by (le) (rate(qscale_tick_seconds_bucket[5m])))",
                    "p50",
                ),
                (
                    "histogram_quantile(0.99, sum by (le) (rate(qscale_tick_seconds_bucket[5m])))",
                    "p99",
                ),
                (
                    "histogram_quantile(0.99, sum by (le, template) (rate(qscale_prometheus_query_seconds_bucket[5m])))",
                    "query p99 {{template}}",
                ),
            ],
            unit="s",
        ),
        panel(
            11,
            "Operator",
            16,
            25,
            8,
            8,
            [
                ("sum(qscale_leader)", "leaders"),
                ("max(qscale_policies)", "policies"),
                ("sum(rate(qscale_prometheus_query_errors_total[5m])) * 60", "query errors/min"),
                (
                    'sum by (kind) (rate(qscale_api_writes_total{result!="ok"}[5m])) * 60',
                    "failed {{kind}} writes/min",
                ),
                ("max(qscale_kill_switch_policies)", "held by a kill switch"),
                ("max(qscale_fallback_active)", "on the HPA fallback"),
                ("max(qscale_decision_log_degraded)", "decision log degraded"),
            ],
            desc="Leaders, policies, errors; policies a kill switch holds or the fallback "
            "decides (alerts QScaleKillSwitchEngaged, QScaleFallbackActive); the decision log",
        ),
        panel(
            14,
            "Model versions",
            0,
            49,
            24,
            8,
            [
                (
                    "1000 * sum by (model) (rate(qscale_shield_interventions_total[30m]))"
                    ' / sum by (model) (rate(qscale_decisions_total{model!~"hpa-rule|none"}[30m]))',
                    "interventions per 1,000 decisions {{model}}",
                ),
                (
                    'sum by (model) (rate(qscale_action_outcomes_total{outcome="slo_held"}[30m]))'
                    " / sum by (model) (rate(qscale_action_outcomes_total[30m]))",
                    "SLO held after a decision {{model}}",
                ),
                (
                    "histogram_quantile(0.95, sum by (le, model) "
                    "(rate(qscale_inference_seconds_bucket[5m])))",
                    "inference p95 {{model}}",
                ),
            ],
            desc="Per model version (name@sha256 prefix): how often the shield limits its "
            "decisions, how often the SLO held at the tick after one of its decisions, and "
            "its forward pass's p95",
        ),
        panel(
            15,
            "Model drift",
            0,
            57,
            24,
            8,
            [
                ("max by (state) (qscale_drift_policies)", "policies {{state}}"),
                (
                    "max by (feature, model) (qscale_drift_psi)",
                    "PSI {{feature}} {{model}}",
                ),
            ],
            desc="Policies by the drift judgement of their model's inputs (alert QScaleModelDrift), "
            "and per model version the highest PSI of each input over its policies' windows; "
            "thresholds depend on the window and input (docs/drift.md): per policy, "
            "kubectl get asp -o wide and status.drift",
        ),
        panel(
            16,
            "Q-values and TD error",
            0,
            65,
            24,
            8,
            [
                (
                    "histogram_quantile(0.5, sum by (le, model) (rate(qscale_q_value_bucket[30m])))",
                    "chosen Q p50 {{model}}",
                ),
                (
                    "sum by (model) (rate(qscale_td_error_sum[30m]))"
                    " / sum by (model) (rate(qscale_td_error_count[30m]))",
                    "mean |TD error| {{model}}",
                ),
            ],
            desc="Per model version: the Q-value of the actions it chose, and how far the "
            "outcome of each Enforce decision (the reward of its training, then the next "
            "state's value) was from that Q-value; a TD error growing on a cluster says the "
            "model predicts it worse than what it trained on",
        ),
        panel(
            13,
            "Canaries",
            0,
            41,
            24,
            8,
            [
                ("max by (state) (qscale_canary_policies)", "policies {{state}}"),
                ("max by (state) (qscale_rollouts)", "ModelRollouts {{state}}"),
                ("sum(increase(qscale_canary_rollbacks_total[1h]))", "rollbacks/h"),
                ("sum(increase(qscale_canary_promotions_total[1h]))", "promotions/h"),
                (
                    "sum by (arm) (rate(qscale_canary_arm_slo_violation_seconds_total[30m]))"
                    " / sum by (arm) (rate(qscale_canary_arm_seconds_total[30m]))",
                    "SLO-violating share {{arm}}",
                ),
                (
                    "sum by (arm) (rate(qscale_canary_arm_interventions_total[30m]))"
                    " / sum by (arm) (rate(qscale_canary_arm_decisions_total[30m]))",
                    "shield interventions per decision {{arm}}",
                ),
            ],
            desc="Canaries and ModelRollouts (group canaries) by state (alert "
            "QScaleCanaryRolledBack), and per arm, over all canaries and rollouts: the share of time with p95 over the SLO and of decisions the shield "
            "limited (docs/canary.md)",
        ),
        panel(
            12,
            "Shadow scores",
            0,
            33,
            24,
            8,
            [
                ("max by (verdict) (qscale_shadow_policies)", "policies {{verdict}}"),
                ("max by (arm) (qscale_shadow_replica_hours)", "replica-h {{arm}}"),
                ("max by (arm) (qscale_shadow_slo_minutes)", "SLO min {{arm}}"),
            ],
            desc="Shadow policies by verdict; over their windows, summed: the model's (candidate) "
            "and the controller's in charge (incumbent) replica-hours and SLO minutes, estimated "
            "from the observed load (docs/shadow.md); per policy: kubectl get asp -o wide",
        ),
    ]
    var = lambda name, query, multi=True: {  # noqa: E731
        "name": name,
        "type": "query",
        "datasource": DS,
        "query": query,
        "refresh": 2,
        "includeAll": multi,
        "multi": multi,
        "allValue": ".*",
        "current": {},
    }
    return {
        "uid": "qscale-operator",
        "title": "qscale",
        "description": "qscale: the DQN autoscaler's decisions, the shield, fallbacks and the operator",
        "tags": ["qscale", "autoscaling"],
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "time": {"from": "now-3h", "to": "now"},
        "refresh": "30s",
        "templating": {
            "list": [
                {"name": "datasource", "type": "datasource", "query": "prometheus", "current": {}},
                var("namespace", "label_values(qscale_autoscalepolicy_info, namespace)"),
                var(
                    "deployment",
                    'label_values(qscale_autoscalepolicy_info{namespace=~"$namespace"}, target)',
                ),
                {
                    "name": "mode",
                    "type": "custom",
                    "query": "Enforce,Shadow",
                    "includeAll": True,
                    "multi": True,
                    "allValue": ".*",
                    "current": {},
                },
                {
                    "name": "slo_ms",
                    "type": "textbox",
                    "query": "250",
                    "label": "SLO (ms)",
                    "current": {"text": "250", "value": "250"},
                },
            ]
        },
        "panels": panels,
    }


def main(argv: list[str]) -> int:
    text = json.dumps(dashboard(), indent=1, sort_keys=True) + "\n"
    if "--check" in argv:
        if not OUT.is_file() or OUT.read_text() != text:
            print(f"{OUT} is not what hack/dashboard.py generates; run `make chart-dashboard`")
            return 1
        return 0
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
