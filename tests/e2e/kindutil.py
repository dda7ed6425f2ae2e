"""What the kind e2e tests share: whether a Docker daemon answers."""

from __future__ import annotations

import shutil
import subprocess


def docker_running() -> bool:
    """``docker info`` succeeds (a CLI without a daemon does not count)."""
    if not shutil.which("docker"):
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False
