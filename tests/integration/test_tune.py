"""qscale tune: a service's history from real Prometheus (backfilled with promtool), and the
whole path from a trace to a verdict on held-back hours."""

from __future__ import annotations

import json
import math
import shutil
import subprocess

import pytest

from qscale.policy import tune as tn

DAY = 86400.0


def rate_at(t: float) -> float:
    """The target's request rate: a daily wave between 5 and 15 req/s."""
    return 10.0 + 5.0 * math.sin(2 * math.pi * t / DAY)


@pytest.fixture(scope="module")
def history_prometheus(tmp_path_factory):
    """Real Prometheus over 1.5 days of backfilled counters (15 s apart): the target ``web`` in
    namespace ``shop``, a neighbour ``web-admin`` and the same name in another namespace."""
    from qscale.dev.prom import LocalPrometheus, PrometheusUnavailable, find_prometheus

    promtool = shutil.which("promtool")
    try:
        binary = find_prometheus()
    except PrometheusUnavailable as e:
        pytest.skip(str(e))
    if promtool is None:
        pytest.skip("promtool not installed")
    work = tmp_path_factory.mktemp("prom")
    end = math.floor(1_790_000_000 / 900) * 900.0
    start = end - 1.5 * DAY
    series = {
        ("shop", "web-6d9f7c8b4-x2k9p"): 1.0,
        ("shop", "web-admin-5c4b-q8w7e"): 3.0,
        ("other", "web-6d9f7c8b4-zz9zz"): 7.0,
    }
    lines = ["# TYPE http_requests_total counter"]
    for (ns, pod), scale in series.items():
        total, t = 0.0, start
        while t <= end:
            total += scale * rate_at(t) * 15.0
            lines.append(f'http_requests_total{{namespace="{ns}",pod="{pod}"}} {total:.3f} {t:.0f}')
            t += 15.0
    lines.append("# EOF")
    om = work / "history.om"
    om.write_text("\n".join(lines) + "\n")
    data = work / "data"
    subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics", str(om), str(data)],
                   check=True, capture_output=True)  # fmt: skip
    prom = LocalPrometheus({}, binary=binary, workdir=work, retention="3650d").start()
    yield prom, start, end
    prom.stop()


def test_the_history_of_one_deployment_is_read_from_prometheus(history_prometheus):
    prom, _, end = history_prometheus
    points = tn.from_prometheus(prom.url, "shop/web", 1.0, now=end)
    assert len(points) >= 1400  # a day at 60 s (minus the edges)
    assert points[0][0] >= end - DAY - 60 and points[-1][0] <= end
    # This Deployment's rate only: not web-admin's (3x), not the other namespace's (7x).
    errs = [abs(v - rate_at(t)) for t, v in points]
    assert max(errs) < 0.5, max(errs)
    # More days than Prometheus holds: what there is, no error.
    assert len(tn.from_prometheus(prom.url, "shop/web", 30.0, now=end)) >= 2000


def test_what_prometheus_cannot_give_is_a_clear_error(history_prometheus):
    prom, _, end = history_prometheus
    with pytest.raises(tn.TuneError, match="no request rate of shop/nothing"):
        tn.from_prometheus(prom.url, "shop/nothing", 1.0, now=end)
    with pytest.raises(tn.TuneError, match="NAMESPACE/DEPLOYMENT"):
        tn.from_prometheus(prom.url, "web", 1.0, now=end)
    with pytest.raises(tn.TuneError, match=r"Prometheus at http://127\.0\.0\.1:9"):
        tn.from_prometheus("http://127.0.0.1:9", "shop/web", 1.0, now=end)


@pytest.mark.slow
def test_tune_on_a_trace_judges_on_held_back_hours_and_publishes_nothing_unless_better(
    tmp_path, capsys
):
    from qscale.cli import main
    from qscale.simulator.splits import packaged_trace

    # 8 h of the packaged NASA trace: 6 h of history, 2 h held back.
    rows = packaged_trace().read_text().splitlines()
    trace = tmp_path / "svc.csv"
    trace.write_text("\n".join(rows[: 1 + 8 * 60]) + "\n")
    out = tmp_path / "out"
    rc = main(["tune", "--trace", str(trace), "--steps", "3000", "--seeds", "0",
               "--holdout", "0.25", "--out", str(out), "--capacity", "0.05"])  # fmt: skip
    text = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert rc == (0 if report["better"] else 1)
    assert report["history_steps"] == 1440 and report["holdout_steps"] == 480
    assert set(report["results"]) == {"tuned", "base", "hpa"}
    assert all(len(v) == 2 and v[0] <= v[1] for v in report["gain"].values())
    # Nothing of the held-back hours reached training.
    assert len((out / "history.csv").read_text().splitlines()) == 1 + 1440
    if not report["better"]:
        assert "does not beat" in text and "nothing published" in text
    from qscale.policy.artifact import load_policy, read_manifest

    load_policy(report["model"])  # a servable artifact
    manifest = read_manifest(report["model"])
    assert manifest["tuning"]["better"] == report["better"]
    assert manifest["training_config"]["init_model"].endswith("default_model")
    assert "drift" in manifest  # its reference is this service's history


def test_tune_refuses_a_series_too_short_to_judge(tmp_path):
    from qscale.cli import main
    from qscale.simulator.splits import packaged_trace

    rows = packaged_trace().read_text().splitlines()
    trace = tmp_path / "short.csv"
    trace.write_text("\n".join(rows[: 1 + 3 * 60]) + "\n")
    assert main(["tune", "--trace", str(trace), "--out", str(tmp_path / "o")]) == 2
    assert main(["tune", "--out", str(tmp_path / "o")]) == 2  # no source
