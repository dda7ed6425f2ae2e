"""The AutoscalePolicy CRD as the unit tests read it: both copies (``deploy/crds`` and the
chart's template), and the ``spec`` schema of each served version. The CRD cannot import the
Python constants it mirrors, so tests hold them equal through this."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "deploy" / "crds" / "qscale.io_autoscalepolicies.yaml"
CHART_CRD = ROOT / "charts" / "qscale" / "templates" / "crds" / CRD.name


def spec_schemas(path: Path) -> list[dict]:
    """The ``spec`` property's schema of every version of the CRD at ``path`` (a chart template's
    lines with ``{{`` dropped: the rest is the CRD)."""
    text = "\n".join(line for line in path.read_text().splitlines() if "{{" not in line)
    doc = yaml.safe_load(text)
    assert doc["kind"] == "CustomResourceDefinition"
    return [v["schema"]["openAPIV3Schema"]["properties"]["spec"] for v in doc["spec"]["versions"]]
