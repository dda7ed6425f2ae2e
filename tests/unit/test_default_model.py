"""The model shipped in the package loads, matches the feature spec and records its numbers."""

from qscale import actions, features
from qscale.policy.artifact import load_policy
from qscale.policy.default import default_model_path, has_default_model
from qscale.simulator.evaluate import BASELINES


def test_shipped_default_model_is_valid_and_small():
    assert has_default_model(), "run `make model` to build src/qscale/data/default_model"
    root = default_model_path()
    size = sum(p.stat().st_size for p in root.iterdir())
    assert size < 1_000_000
    policy = load_policy(root)
    m = policy.manifest
    assert m["spec_hash"] == features.SPEC_HASH
    assert m["action_names"] == list(actions.ACTION_NAMES)
    assert m["serving"]["interval_s"] == 15.0 and "down_stabilization_s" in m["serving"]["shield"]
    ev = m["evaluation"]
    # `make model` records the package's model as `--model default`, wherever the checkout is
    assert ev["command"].startswith("qscale evaluate --model default ")
    controllers = {s["controller"] for s in ev["summary"]}
    assert controllers == {"dqn", *BASELINES}  # what `make model` evaluates it beside
    assert "frontier" in ev["table"] and "cost (replica-h)" in ev["table"]
    assert {s["family"] for s in ev["summary"]} >= {"nasa_http_1995", "nyc_taxi", "ALL"}
    assert ev["training"]["global_step"] > 0 and ev["training"]["gradient_updates"] > 0
