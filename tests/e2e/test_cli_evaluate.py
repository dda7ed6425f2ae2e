"""`qscale evaluate` / `qscale simulate` end to end, as a user runs them (a subprocess)."""

import json
import subprocess
import sys

import pytest

from qscale.simulator.splits import packaged_trace


def qscale(*args, check=True):
    proc = subprocess.run(
        [sys.executable, "-m", "qscale", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def small_trace(tmp_path):
    """The first 4 hours of the shipped excerpt, as a user's own file."""
    lines = packaged_trace().read_text().splitlines()[: 1 + 240]
    path = tmp_path / "mine.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_evaluate_baselines_end_to_end(tmp_path, small_trace):
    out = tmp_path / "eval"
    proc = qscale(
        "evaluate",
        "--traces",
        str(small_trace),
        "--seeds",
        "2",
        "--out",
        str(out),
        "--tune-hours",
        "1",
        "--no-progress",
        "--model",
        "none",
    )
    for name in ("hpa", "hpa-tuned", "keda", "oracle"):
        assert name in proc.stdout
    assert "cost (replica-h)" in proc.stdout
    data = json.loads((out / "evaluation.json").read_text())
    rows = data["rows"]
    assert len(rows) == 4 * 2
    assert {r["controller"] for r in rows} == {"hpa", "hpa-tuned", "keda", "oracle"}
    assert all(r["steps"] == 4 * 60 * 4 for r in rows)
    summary = {(s["controller"], s["trace"]): s for s in data["summary"]}
    oracle = summary[("oracle", "mine")]["cost_replica_hours"]["mean"]
    for ctrl in ("hpa", "hpa-tuned", "keda"):
        assert oracle < summary[(ctrl, "mine")]["cost_replica_hours"]["mean"]
    assert data["meta"]["hpa_tuned"]["grid"], "the tuning grid is recorded"
    png = (out / "mine.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    csv_lines = (out / "evaluation.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + 8


def test_demo_default_shows_the_shipped_model_beside_the_baselines(tmp_path, small_trace):
    out = tmp_path / "demo"
    proc = qscale(
        "evaluate",
        "--traces",
        str(small_trace),
        "--seeds",
        "1",
        "--out",
        str(out),
        "--tune-hours",
        "1",
        "--no-progress",
    )
    data = json.loads((out / "evaluation.json").read_text())
    assert {r["controller"] for r in data["rows"]} == {"dqn", "hpa", "hpa-tuned", "keda", "oracle"}
    assert data["meta"]["model"]["path"].endswith("default_model")
    assert "dqn" in proc.stdout


def test_evaluate_a_model_directory(tmp_path, small_trace):
    """Any exported artifact evaluates as 'dqn' beside the baselines it is asked for."""
    from qscale.policy.artifact import export
    from qscale.policy.network import QNetwork

    model = export(QNetwork(), tmp_path / "model")
    out = tmp_path / "eval"
    proc = qscale(
        "evaluate",
        "--traces",
        str(small_trace),
        "--seeds",
        "2",
        "--out",
        str(out),
        "--model",
        str(model),
        "--controllers",
        "dqn,keda",
        "--no-progress",
    )
    assert "dqn" in proc.stdout
    data = json.loads((out / "evaluation.json").read_text())
    assert {r["controller"] for r in data["rows"]} == {"dqn", "keda"}
    assert data["meta"]["model"]["spec_hash"]
    (model / "model.pt").write_bytes(b"tampered")
    proc = qscale("evaluate", "--traces", str(small_trace), "--model", str(model), check=False)
    assert proc.returncode == 2 and "sha256" in proc.stderr and "Traceback" not in proc.stderr


def test_simulate_writes_timeline(tmp_path, small_trace):
    out = tmp_path / "timeline.csv"
    proc = qscale(
        "simulate",
        "--trace",
        str(small_trace),
        "--controller",
        "keda",
        "--out",
        str(out),
        "--no-progress",
    )
    totals = json.loads(proc.stdout)
    assert totals["controller"] == "keda" and totals["cost_replica_hours"] > 0
    lines = out.read_text().splitlines()
    assert lines[0] == "t_s,rate_rps,replicas,ready,p95_s,slo_s"
    assert len(lines) == 1 + 960


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("t,value\n0,1.0\n60,abc\n", "bad.csv:3"),
        ("time,rate\n0,1\n", "bad.csv"),
        ("t,value\n0,1.0\n60,-2\n", "bad.csv:3"),
        ("", "bad.csv"),
    ],
)
def test_bad_trace_is_one_clear_line(tmp_path, content, message):
    bad = tmp_path / "bad.csv"
    bad.write_text(content)
    proc = qscale("evaluate", "--traces", str(bad), "--out", str(tmp_path / "o"), check=False)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()


def test_unknown_controller_and_missing_file(tmp_path):
    proc = qscale("evaluate", "--controllers", "hpa,magic", check=False)
    assert proc.returncode == 2 and "unknown controller 'magic'" in proc.stderr
    proc = qscale("evaluate", "--traces", str(tmp_path / "nope.csv"), check=False)
    assert proc.returncode == 2 and "not found" in proc.stderr
