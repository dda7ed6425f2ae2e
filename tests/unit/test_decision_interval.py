"""The 15 s decision interval is one constant (:data:`qscale.actions.DECISION_INTERVAL_S`);
the CRD cannot import it, so its default is checked against it here."""

from __future__ import annotations

from pathlib import Path

import yaml

from qscale.actions import DECISION_INTERVAL_S
from qscale.operator.spec import parse_duration, parse_spec
from qscale.policy.train import TrainConfig
from qscale.simulator import env as sim
from qscale.simulator import traces
from qscale.simulator.evaluate import EvalProfile

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "deploy" / "crds" / "qscale.io_autoscalepolicies.yaml"
CHART_CRD = ROOT / "charts" / "qscale" / "templates" / "crds" / CRD.name


def _interval_defaults(doc: dict) -> list[str]:
    assert doc["kind"] == "CustomResourceDefinition"
    out = []
    for version in doc["spec"]["versions"]:
        spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
        out.append(spec["properties"]["interval"]["default"])
    return out


def test_crd_default_interval_is_the_constant():
    defaults = _interval_defaults(yaml.safe_load(CRD.read_text()))
    assert defaults
    for d in defaults:
        assert parse_duration(d, "default") == DECISION_INTERVAL_S, (CRD, d)


def test_chart_crd_default_interval_is_the_constant():
    # The chart's copy is a Helm template: drop the template lines, the rest is the CRD.
    text = "\n".join(line for line in CHART_CRD.read_text().splitlines() if "{{" not in line)
    defaults = _interval_defaults(yaml.safe_load(text))
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
