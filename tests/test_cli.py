"""The command's entry point: every subcommand is listed, and each imports only its own module."""

from __future__ import annotations

import subprocess
import sys

import pytest

from image_ancestry import cli


def test_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in cli.SUBCOMMANDS:
        assert f"    {command} " in out


def test_compute_imports_neither_kopf_nor_the_operator() -> None:
    """`compute` in CI pays only for what it uses, and cannot be broken by the rest."""
    probe = (
        "import sys; from image_ancestry import cli; cli.build_parser('compute'); "
        "print(sorted(m for m in sys.modules if m == 'kopf' or m.startswith("
        "('image_ancestry.operator', 'image_ancestry.webhook', 'kubernetes'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["no-such-command"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
