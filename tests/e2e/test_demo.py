"""``qscale demo`` on the real local control plane, shortened: both sides scale, a summary and
a PNG come out, and nothing it started is left running -- also after Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.cluster

# The ramp of the launch morning (08:00-09:10, 2x), quickly: 70 trace minutes in 80 s.
SHORT = ["--start-hour", "32", "--hours", "1.17", "--minutes", "1.33", "--startup-delay", "5"]


def _left_behind(root: str) -> list[str]:
    """Processes whose command line or environment mentions the demo's work directory."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        for part in ("cmdline", "environ"):
            try:
                data = Path(f"/proc/{pid}/{part}").read_bytes()
            except OSError:
                continue
            if root.encode() in data:
                found.append(f"{pid}: {Path(f'/proc/{pid}/cmdline').read_bytes()[:120]!r}")
                break
    return found


def _workdir(output: str) -> str:
    m = re.search(r"work directory \(removed at the end\): (\S+)", output)
    assert m, output
    return m.group(1)


def test_short_demo_scales_both_sides_and_leaves_nothing(k8s_bin, prometheus_bin, tmp_path):
    from qscale.demo.run import DemoConfig, run_demo

    class Out:
        text = ""

        def write(self, s):
            self.text += s
            sys.stdout.write(s)

        def flush(self):
            pass

    out = Out()
    cfg = DemoConfig(
        out=tmp_path / "demo", start_h=32.0, hours=1.17, play_s=80.0, startup_delay_s=5.0
    )
    t0 = time.monotonic()
    res = run_demo(cfg, stream=out)
    took = time.monotonic() - t0
    s = res.summary
    q, h = s["sides"]["qscale"], s["sides"]["HPA"]
    assert q["scale_actions"] >= 1 and h["scale_actions"] >= 1, s
    assert q["peak_pods"] > 4 and h["peak_pods"] > 4  # both followed the ramp (4 pods to start)
    assert q["pod_minutes"] > 0 and h["pod_minutes"] > 0
    for k in ("summary", "timeline", "png"):
        assert res.files[k].is_file() and res.files[k].stat().st_size > 100
    assert res.files["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "AutoscalePolicy" in out.text and "HorizontalPodAutoscaler" in out.text
    assert "08:00-09:10 EDT" in out.text  # says which stretch and how fast
    # live lines: both sides' pods, the operator's action and reason, the HPA's reason
    assert re.search(r"\d:\d\d  \d\d:\d\d +\d+ \|", out.text)
    assert not res.workdir.exists()
    assert _left_behind(str(res.workdir)) == []
    assert took < 240, f"the short demo took {took:.0f} s"


def test_ctrl_c_stops_everything(k8s_bin, prometheus_bin, tmp_path):
    # As a terminal does it: SIGINT to the whole foreground process group.
    p = subprocess.Popen(
        [sys.executable, "-m", "qscale.entry", "demo", "--out", str(tmp_path / "d"), *SHORT],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    seen = ""
    try:
        deadline = time.monotonic() + 180
        while "warming up" not in seen and time.monotonic() < deadline:
            line = p.stdout.readline()
            if not line:
                break
            seen += line
        assert "warming up" in seen, seen
        root = _workdir(seen)
        assert _left_behind(root), "nothing running yet?"
        os.killpg(p.pid, signal.SIGINT)
        rest, _ = p.communicate(timeout=120)
        seen += rest
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    assert p.returncode == 130, seen
    assert "interrupted" in seen
    assert not Path(root).exists()
    deadline = time.monotonic() + 10
    while _left_behind(root) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _left_behind(root) == []
