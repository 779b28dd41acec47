"""`tumorcam ... --help` as a user expects it: boolean options are plain flags (no `<bool>` type),
list options and arguments show their metavar (`--image FILE`, `SRC`), not a Python type."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import run_cli

SRC = Path(__file__).resolve().parents[1] / "src" / "tumorcam"
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


def names_in(text: str) -> str:
    """The help on one line, with the words that the formatter broke at a hyphen joined again."""
    return re.sub(r"-\s+", "-", " ".join(text.split()))


def listed(name: str, text: str) -> bool:
    return re.search(rf"(?<![\w+-]){re.escape(name)}(?![\w+-])", text) is not None


def test_explain_and_evaluate_help_list_the_registries(capsys):
    from tumorcam.evaluate.baselines import BASELINES
    from tumorcam.explain import METHODS, TARGETS

    explain = names_in(help_text(["explain"], capsys))
    for name in [*METHODS, *TARGETS]:
        assert listed(name, explain), name
    evaluate = names_in(help_text(["evaluate"], capsys))
    for name in BASELINES:
        assert listed(name, evaluate), name
    assert "{" not in explain and "{methods}" not in evaluate


def test_registry_names_are_not_typed_by_hand():
    source = "".join((SRC / "cli" / name).read_text() for name in ("explain.py", "evaluate.py"))
    for typed in ("integrated-gradients", "predicted-probability", "false-negative", "road, rise"):
        assert typed not in source
