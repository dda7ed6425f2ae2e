"""Dataclass -> argparse: typed options, clear errors, every field documented."""

from __future__ import annotations

import dataclasses

import pytest

from qscale.policy.cli_args import field_docs
from qscale.policy.train import TrainConfig, parse_config


def _error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    with pytest.raises(SystemExit) as e:
        parse_config(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    return err.strip().splitlines()[-1]


def test_every_config_field_has_a_docstring() -> None:
    docs = field_docs(TrainConfig)
    missing = [f.name for f in dataclasses.fields(TrainConfig) if not docs.get(f.name)]
    assert missing == []


def test_typed_values_parse() -> None:
    cfg = parse_config(
        [
            "--lr",
            "1e-3",
            "--n-envs",
            "64",
            "--hidden-sizes",
            "64,32",
            "--no-progress",
            "--prioritized",
            "--traces",
            "a.csv",
            "b.csv",
            "--checkpoint",
            "none",
            "--device",
            "cpu",
        ]
    )
    assert cfg.lr == 1e-3 and cfg.n_envs == 64
    assert cfg.hidden_sizes == (64, 32)
    assert cfg.progress is False and cfg.prioritized is True
    assert cfg.traces == ["a.csv", "b.csv"]
    assert cfg.checkpoint is None


def test_defaults_match_the_dataclass() -> None:
    assert parse_config([]) == TrainConfig()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--lr", "fast"], "argument --lr: expected a number, got 'fast'"),
        (["--n-envs", "2.5"], "argument --n-envs: expected an integer, got '2.5'"),
        (["--hidden-sizes", "64,x"], "argument --hidden-sizes: expected comma-separated integers"),
        (["--n-envs", "0"], "n_envs must be >= 1, got 0"),
        (["--gamma", "1.5"], "gamma must be in (0, 1], got 1.5"),
        (["--train-split", "tain"], "train_split must be one of train, val, test, all"),
        (["--device", "tpu"], "device must be auto, cpu, cuda or cuda:N"),
        (["--no-such-option", "1"], "unrecognized arguments: --no-such-option 1"),
    ],
)
def test_bad_values_exit_with_one_clear_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    assert expected in _error(capsys, argv)


def test_resume_from_missing_checkpoint_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert "no such checkpoint" in _error(capsys, ["--resume", "/nonexistent/ckpt.pt"])


def test_help_prints_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    # argparse %-formats help: a docstring with a literal "%" ("+-25 % of this") once made
    # `qscale train --help` crash with a TypeError.
    with pytest.raises(SystemExit) as e:
        parse_config(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "+-25 % of this" in out
    assert all(f"--{f.name.replace('_', '-')}" in out for f in dataclasses.fields(TrainConfig))
