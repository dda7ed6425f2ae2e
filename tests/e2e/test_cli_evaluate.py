"""`qscale evaluate` / `qscale simulate` end to end, as a user runs them (a subprocess)."""

import json
import os
import subprocess
import sys

import pytest

from qscale.simulator.splits import packaged_trace


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """No shared traces (tuning uses the evaluated traces' own training split) and one cache
    for the module, as a user's would be."""
    e = dict(os.environ)
    e["QSCALE_TRACES_DIR"] = str(tmp_path_factory.mktemp("no-shared"))
    e["QSCALE_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    return e


@pytest.fixture
def qscale(env):
    def run(*args, check=True, extra_env=None):
        proc = subprocess.run(
            [sys.executable, "-m", "qscale", *args],
            capture_output=True,
            text=True,
            timeout=600,
            env={**env, **(extra_env or {})},
            stdin=subprocess.DEVNULL,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    return run


@pytest.fixture
def small_trace(tmp_path):
    """The first 8 hours of the shipped excerpt, as a user's own file."""
    lines = packaged_trace().read_text().splitlines()[: 1 + 480]
    path = tmp_path / "mine.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_evaluate_baselines_end_to_end(tmp_path, small_trace, qscale):
    out = tmp_path / "eval"
    args = ["evaluate", "--traces", str(small_trace), "--seeds", "2", "--window-hours", "4"]
    args += ["--out", str(out), "--no-progress", "--model", "none"]
    proc = qscale(*args)
    names = {"hpa", "hpa-tuned", "rule-tuned", "keda", "predictive", "oracle"}
    for name in names:
        assert name in proc.stdout
    assert "cost (replica-h)" in proc.stdout and "frontier" in proc.stdout
    # A user's own trace, split "all": the tuned rule saw these windows; the table says so.
    assert "rule-tuned: IN SAMPLE" in proc.stdout
    data = json.loads((out / "evaluation.json").read_text())
    rows = {(r["family"], r["controller"]): r for r in data["summary"]}
    assert {c for _, c in rows} == names
    assert data["meta"]["frontier"]["kind"] == "ex_post"  # no held-out choice on split "all"
    assert rows[("mine", "hpa")]["windows"] == 2  # 8 h in two 4 h windows
    oracle = rows[("mine", "oracle")]["cost"]
    for ctrl in ("hpa", "hpa-tuned", "keda"):
        assert oracle < rows[("mine", ctrl)]["cost"]
        r = rows[("mine", ctrl)]["ratio"]  # rules lie on or above the hull, or outside it
        assert r is None or r >= 1.0 - 1e-9
    # Settings are plain JSON, not Python reprs.
    assert isinstance(data["controllers"]["hpa"], dict) and "rule" in data["controllers"]["hpa"]
    assert data["frontier"]["mine"]["frontier"]
    assert (out / "frontier_mine.png").is_file() and (out / "timeline_mine.png").is_file()
    csv_lines = (out / "evaluation.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + len(names) * 2 * 2
    # A non-terminal gets no progress-bar spill on stderr.
    assert "\r" not in proc.stderr
    # The second run reuses the cached grids.
    again = qscale(*args)
    assert again.stdout.split("table and rows")[0] == proc.stdout.split("table and rows")[0]


def test_evaluate_a_model_directory(tmp_path, small_trace, qscale):
    """Any exported artifact evaluates as 'dqn' beside the baselines it is asked for."""
    from qscale.policy.artifact import export
    from qscale.policy.network import QNetwork

    model = export(QNetwork(), tmp_path / "model")
    out = tmp_path / "eval"
    args = ["evaluate", "--traces", str(small_trace), "--seeds", "2", "--out", str(out)]
    proc = qscale(*args, "--model", str(model), "--controllers", "dqn,keda", "--no-frontier")
    assert "dqn" in proc.stdout
    data = json.loads((out / "evaluation.json").read_text())
    assert {r["controller"] for r in data["summary"]} == {"dqn", "keda"}
    assert data["meta"]["model"]["spec_hash"]
    (model / "model.pt").write_bytes(b"tampered")
    proc = qscale("evaluate", "--traces", str(small_trace), "--model", str(model), check=False)
    assert proc.returncode == 2 and "sha256" in proc.stderr and "Traceback" not in proc.stderr


def test_baselines_alone_load_no_model(tmp_path, small_trace, qscale):
    """--controllers without dqn never reads the model: one that would be refused (here a
    tampered artifact; after a feature-spec change, the shipped one) does not stop it."""
    from qscale.policy.artifact import export
    from qscale.policy.network import QNetwork

    model = export(QNetwork(), tmp_path / "model")
    (model / "model.pt").write_bytes(b"tampered")
    out = tmp_path / "eval"
    proc = qscale("evaluate", "--traces", str(small_trace), "--seeds", "1", "--out", str(out),
                  "--model", str(model), "--controllers", "hpa,keda", "--no-frontier")  # fmt: skip
    data = json.loads((out / "evaluation.json").read_text())
    assert {r["controller"] for r in data["summary"]} == {"hpa", "keda"}
    assert data["meta"].get("model") is None and "sha256" not in proc.stderr


def test_demo_default_evaluates_the_shipped_model(tmp_path, small_trace, qscale):
    out = tmp_path / "demo"
    proc = qscale("evaluate", "--traces", str(small_trace), "--seeds", "1", "--out", str(out),
                  "--controllers", "dqn,hpa", "--no-frontier")  # fmt: skip
    data = json.loads((out / "evaluation.json").read_text())
    assert {r["controller"] for r in data["summary"]} == {"dqn", "hpa"}
    assert data["meta"]["model"]["path"].endswith("default_model")
    assert "dqn" in proc.stdout


@pytest.mark.parametrize("controller", ["keda", "dqn"])
def test_simulate_writes_timeline(tmp_path, small_trace, qscale, controller):
    out = tmp_path / "timeline.csv"
    proc = qscale("simulate", "--trace", str(small_trace), "--controller", controller,
                  "--out", str(out), "--no-progress")  # fmt: skip
    totals = json.loads(proc.stdout)
    assert totals["controller"] == controller and totals["cost_replica_hours"] > 0
    lines = out.read_text().splitlines()
    assert lines[0] == "t_s,rate_rps,replicas,ready,p95_s,slo_s"
    assert len(lines) == 1 + 8 * 240


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("t,value\n0,1.0\n60,abc\n", "bad.csv:3"),
        ("time,rate\n0,1\n", "bad.csv"),
        ("t,value\n0,1.0\n60,-2\n", "bad.csv:3"),
        ("", "bad.csv"),
        ("t,value\n0,1.0\n", "at least 2 rows"),
        ("t,value\n0,1.0\n60,1e30\n120,1.0\n", "bad.csv:3"),
    ],
)
def test_bad_trace_is_one_clear_line(tmp_path, content, message, qscale):
    bad = tmp_path / "bad.csv"
    bad.write_text(content)
    proc = qscale("evaluate", "--traces", str(bad), "--out", str(tmp_path / "o"), check=False)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--controllers", "hpa,magic"], "--controllers: unknown controller 'magic'"),
        (["--traces", "nope.csv"], "--traces nope.csv: file not found"),
        (["--horizon-hours", "0"], "--horizon-hours must be > 0"),
        (["--slo-factor", "1"], "--slo-factor must be > 1"),
        (["--window-hours", "-2"], "--window-hours must be > 0"),
        (["--seeds", "0"], "--seeds must be >= 1"),
        (["--startup-delay", "90,30"], "--startup-delay takes"),
        (["--cpu-limit-ratio", "0.5"], "--cpu-limit-ratio"),
        (["--threads", "0"], "--threads must be >= 1"),
    ],
)
def test_flag_errors_name_the_flag(tmp_path, args, message, qscale):
    proc = qscale("evaluate", "--out", str(tmp_path / "o"), *args, check=False)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()


def test_output_paths_are_checked_before_the_work(tmp_path, small_trace, qscale):
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    proc = qscale("evaluate", "--traces", str(small_trace), "--out", str(a_file), check=False)
    assert proc.returncode == 2 and "is a file" in proc.stderr and proc.stdout == ""
    proc = qscale("evaluate", "--traces", str(tmp_path), check=False)
    assert proc.returncode == 2 and "is a directory" in proc.stderr
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user who can write anywhere")
        proc = qscale(
            "evaluate", "--traces", str(small_trace), "--out", str(locked / "o"), check=False
        )
        assert proc.returncode == 2 and "not writable" in proc.stderr and proc.stdout == ""
    finally:
        locked.chmod(0o700)
