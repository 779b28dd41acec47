"""`tumorcam ... --help` as a user expects it: boolean options are plain flags (no `<bool>` type),
list options and arguments show their metavar (`--image FILE`, `SRC`), not a Python type."""

from __future__ import annotations

import pytest

from conftest import run_cli

COMMANDS = [[], ["run"], ["train"], ["explain"], ["evaluate"], ["report"], ["data"], ["data", "download"],
            ["data", "synth"], ["data", "prepare"]]


def help_text(command: list[str], capsys) -> str:
    code, out, err = run_cli([*command, "--help"], capsys)
    assert code in (0, None), err
    return out


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "tumorcam")
def test_help_has_flags_and_metavars_not_python_types(command, capsys):
    text = help_text(command, capsys)
    assert "Usage: tumorcam" in text
    for python_type in ("<bool>", "BOOLEAN", "list["):
        assert python_type not in text, f"tumorcam {' '.join(command)} --help shows {python_type}"


def test_flags_and_file_metavar(capsys):
    assert "--force " in help_text(["run"], capsys)
    explain = help_text(["explain"], capsys)
    assert "--image FILE" in explain and "--untrained " in explain
    assert "SRC" in help_text(["data", "prepare"], capsys)


def test_a_flag_takes_no_value(capsys):
    code, _, err = run_cli(["--debug", "yes"], capsys)
    assert code == 2 and "yes" in err
