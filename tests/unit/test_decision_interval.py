"""The 15 s decision interval is one constant (:data:`qscale.actions.DECISION_INTERVAL_S`);
the CRD cannot import it, so its default is checked against it here."""

from __future__ import annotations

from crds import CHART_CRD, CRD, spec_schemas

from qscale.actions import DECISION_INTERVAL_S
from qscale.operator.spec import parse_duration, parse_spec
from qscale.policy.train import TrainConfig
from qscale.simulator import env as sim
from qscale.simulator import traces
from qscale.simulator.evaluate import EvalProfile


def _interval_defaults(path) -> list[str]:
    return [spec["properties"]["interval"]["default"] for spec in spec_schemas(path)]


def test_crd_default_interval_is_the_constant():
    defaults = _interval_defaults(CRD)
    assert defaults
    for d in defaults:
        assert parse_duration(d, "default") == DECISION_INTERVAL_S, (CRD, d)


def test_chart_crd_default_interval_is_the_constant():
    defaults = _interval_defaults(CHART_CRD)  # the chart's copy, a Helm template
    assert defaults
    for d in defaults:
        assert parse_duration(d, "default") == DECISION_INTERVAL_S, (CHART_CRD, d)


def test_every_python_default_is_the_constant():
    spec = parse_spec(
        {"targetRef": {"kind": "Deployment", "name": "web"}, "maxReplicas": 10,
         "slo": {"latencyP95": "250ms"}}
    )  # fmt: skip
    assert spec.interval_s == DECISION_INTERVAL_S
    assert sim.SimConfig().dt == DECISION_INTERVAL_S
    assert traces.DEFAULT_DT == DECISION_INTERVAL_S
    assert TrainConfig().dt == DECISION_INTERVAL_S
    assert EvalProfile().dt == DECISION_INTERVAL_S
