"""The default model shipped inside the package, so the demo (and later the operator) work out
of the box with no download. It is built by ``make model`` (:mod:`qscale.policy.release`)."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def default_model_path() -> Path:
    """Directory of the shipped artifact (it may be absent in a source tree before
    ``make model`` has run once)."""
    return Path(str(files("qscale") / "data" / "default_model"))


def has_default_model() -> bool:
    return (default_model_path() / "manifest.json").is_file()
