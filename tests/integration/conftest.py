"""Fixtures of the operator's cluster tests: one stack per module (an operator, an emulator,
a real Prometheus on the session's control plane), and per test its cleanup and the operator's
log when the test failed."""

from __future__ import annotations

import os

import pytest
from opstack import Stack, start_stack, stop_stack


@pytest.fixture(scope="module")
def stack(cluster, tmp_path_factory):
    s = start_stack(cluster, tmp_path_factory.mktemp("opstack"))
    yield s
    stop_stack(s)


@pytest.fixture
def st(stack: Stack, request):
    failed = request.session.testsfailed
    log = stack.operator.log_path
    start = log.stat().st_size if log.exists() else 0
    yield stack
    if request.session.testsfailed > failed or os.environ.get("QSCALE_TEST_SHOW_LOG"):
        # What the operator wrote during this test: its (re)starts, the first lines after
        # each, and the last lines, so that a CI excerpt shows the test's own story.
        with log.open("rb") as f:
            f.seek(start)
            lines = f.read().decode(errors="replace").splitlines()
        starts = [i for i, ln in enumerate(lines) if ln.startswith("=== start")]
        keep = sorted({j for i in starts for j in range(i, min(i + 8, len(lines)))})
        keep += [j for j in range(max(0, len(lines) - 40), len(lines)) if j not in keep]
        print(f"--- operator log during this test ({len(lines)} lines, these kept) ---")
        print("\n".join(lines[j] for j in sorted(set(keep))))
    stack.cleanup()
