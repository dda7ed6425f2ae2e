"""One device rule for every command (:func:`qscale.simulator.device.resolve_device`)."""

from __future__ import annotations

import pytest
import torch

from qscale import cli
from qscale.simulator.device import resolve_device


def test_auto_is_cuda_when_there_is_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


def test_names_taken_as_given(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda:1")


@pytest.mark.parametrize("name", ["cuda", "cuda:0"])
def test_cuda_without_a_device_is_refused(monkeypatch, name):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=f"device '{name}': no CUDA device is available"):
        resolve_device(name)


@pytest.mark.parametrize("name", ["tpu", "CUDA", "cuda:", "cuda:x", ""])
def test_unknown_names_are_refused(name):
    with pytest.raises(ValueError, match="device must be auto, cpu, cuda or cuda:N"):
        resolve_device(name)


def test_the_cli_reports_the_flag(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(cli.UsageError, match=r"^--device 'cuda': no CUDA device is available$"):
        cli._device("cuda")
    assert cli._device("auto") == torch.device("cpu")
