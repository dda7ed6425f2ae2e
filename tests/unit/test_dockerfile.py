"""What can be checked of the Dockerfile without a Docker daemon (the kind e2e test builds it)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMPILERS = ("gcc", "g++", "clang", "build-essential", "make", "cmake", "cargo", "rustc")


def stages() -> list[dict]:
    """Instructions per stage (continuation lines joined, comments dropped)."""
    text = (ROOT / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    out: list[dict] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        op, _, rest = line.partition(" ")
        op = op.upper()
        if op == "FROM":
            parts = rest.split()
            out.append({"from": parts[0], "name": parts[2] if len(parts) > 2 else None, "ins": []})
        elif out:
            out[-1]["ins"].append((op, rest.strip()))
    return out


@pytest.fixture(scope="module")
def st():
    return stages()


def test_multi_stage_on_a_slim_python_base(st):
    assert len(st) >= 2
    text = (ROOT / "Dockerfile").read_text()
    base = re.search(r"ARG PYTHON_IMAGE=(\S+)", text).group(1)
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", base)
    assert all(s["from"] == "${PYTHON_IMAGE}" for s in st)
    assert any(op == "COPY" and "--from=build" in arg for op, arg in st[-1]["ins"])


def test_torch_is_pinned_cpu_only(st):
    runs = " ".join(arg for s in st for op, arg in s["ins"] if op == "RUN")
    assert "torch==2.13.0" in runs
    assert "--index-url https://download.pytorch.org/whl/cpu" in runs
    installs = re.findall(r"pip install ([^&]*)", runs)
    named = [w for i in installs for w in i.split() if w.startswith("torch")]
    assert named == ["torch==2.13.0"], named


def test_the_default_model_is_installed_and_checked(st):
    build = st[0]
    copies = [arg for op, arg in build["ins"] if op == "COPY"]
    assert any(arg.split()[0] == "src" for arg in copies)  # src/qscale/data/default_model inside
    assert (ROOT / "src/qscale/data/default_model/manifest.json").is_file()
    runs = " ".join(arg for op, arg in build["ins"] if op == "RUN")
    assert "has_default_model" in runs
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert "!src/" in ignore


def test_final_stage_runs_as_non_root_with_no_build_tooling(st):
    final = st[-1]
    users = [arg for op, arg in final["ins"] if op == "USER"]
    assert users, "no USER in the final stage"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0") and user.isdigit(), "numeric, so runAsNonRoot can verify it"
    runs = " ".join(arg for op, arg in final["ins"] if op == "RUN")
    assert "pip install" not in runs and "apt-get install" not in runs
    for tool in COMPILERS:
        assert not re.search(rf"\b{re.escape(tool)}\b", runs), tool
    build_runs = " ".join(arg for op, arg in st[0]["ins"] if op == "RUN")
    assert "pip uninstall -y pip" in build_runs  # the copied environment cannot install


def test_entrypoint_is_qscale_operator_and_fits_a_read_only_root(st):
    final = st[-1]
    entry = [arg for op, arg in final["ins"] if op == "ENTRYPOINT"]
    assert entry and json.loads(entry[-1]) == ["qscale", "operator"]
    env = " ".join(arg for op, arg in final["ins"] if op == "ENV")
    pairs = dict(p.split("=", 1) for p in shlex.split(env) if "=" in p)
    assert pairs["PYTHONDONTWRITEBYTECODE"] == "1" and pairs["HOME"] == "/tmp"
    # Python's objects from glibc's malloc: its own arenas fragment under the tick's churn
    # and the operator's memory keeps growing (BENCHMARKS.md, "Where the growth is").
    assert pairs["PYTHONMALLOC"] == "malloc"
    build_runs = " ".join(arg for op, arg in st[0]["ins"] if op == "RUN")
    assert "compileall" in build_runs  # bytecode is in the image, never written at run time
    assert "qscale" in (ROOT / "pyproject.toml").read_text().split("[project.scripts]")[1]


def test_chart_runs_the_image_the_way_it_is_built():
    values = (ROOT / "charts/qscale/values.yaml").read_text()
    assert "runAsUser: 10001" in values and "readOnlyRootFilesystem: true" in values
    dep = (ROOT / "charts/qscale/templates/operator/deployment.yaml").read_text()
    assert "mountPath: /tmp" in dep
