"""Fixtures of the unit tests."""

from __future__ import annotations

import pytest
from opfakes import busy_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A model that always plays busy_at_65 (2 pods at 100 % CPU -> 4)."""
    return busy_model(tmp_path_factory.mktemp("m") / "busy65")
