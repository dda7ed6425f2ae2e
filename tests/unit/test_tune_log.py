"""qscale tune's load and service from an operator's decision log (qscale.policy.tune.from_log)."""

from __future__ import annotations

import json
import math

import pytest

from qscale.policy import tune as tn

CAP = 50.0


def records(n: int = 400, policy: str = "web", startup_ticks: int = 4) -> list[dict]:
    """A service of 50 req/s pods, its rate rising and falling; new pods ready 4 ticks later."""
    out, replicas, pending = [], 2, []
    for i in range(n):
        rate = 60.0 + 40.0 * math.sin(i / 40.0)
        want = max(1, math.ceil(rate / (0.7 * CAP)))
        if want > replicas:
            pending += [i + startup_ticks] * (want - replicas)
            replicas = want
        pending = [t for t in pending if t > i]
        ready = replicas - len(pending)
        busy = min(rate / CAP, ready)
        out.append({
            "ts": 1_800_000_000.0 + 15.0 * i, "uid": f"u-{policy}", "namespace": "shop",
            "policy": policy, "replicas": replicas, "desired": replicas,
            "features": [busy / replicas] + [0.0] * 10, "slo_s": 0.3, "interval_s": 15.0,
            "obs": {"rate_rps": rate, "p95_s": 0.05 * 3.0 / max(1e-3, 1 - rate / (ready * CAP)),
                    "ready": ready},
        })  # fmt: skip
    return out


def test_the_log_gives_the_load_and_the_service_it_was_served_by():
    recs = records() + records(policy="other")
    points, service = tn.from_log(recs, "shop/web")
    assert len(points) == 400 and points[0][1] == pytest.approx(60.0)
    assert service.capacity_rps == pytest.approx(CAP, rel=0.05)
    assert service.startup_s == pytest.approx(60.0, rel=0.35)  # 4 ticks of 15 s
    assert "shop/web" in service.source
    with pytest.raises(tn.TuneError, match="no records of policy shop/none"):
        tn.from_log(recs, "shop/none")


def test_train_from_log_is_the_tuning_path_and_says_when_the_log_is_too_short(tmp_path, capsys):
    from qscale.cli import main

    log = tmp_path / "decisions.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in records(200)))
    rc = main(["train", "--from-log", str(log), "--policy", "shop/web", "--out", str(tmp_path)])
    assert rc == 2
    assert "tuning needs at least" in capsys.readouterr().err
    assert main(["tune", "--from-log", str(log), "--out", str(tmp_path)]) == 2  # no --policy
