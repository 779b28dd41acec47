"""Library errors and warnings name parameters, never a command-line flag; the CLI writes the
parameter as the command's flag (`error: --steps: ...`, exit 2)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from conftest import run_cli
from test_faithfulness import make_run

from tumorcam.cli import flag_message
from tumorcam.errors import TumorcamError

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "tumorcam"
PENDING: list[str] = []
FLAG = re.compile(r"--[a-z]")


def _call_name(call: ast.Call) -> str:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def _flags_in_messages(path: Path) -> list[str]:
    """`line: text` of each string part inside a TumorcamError(...) or warn(...) call that holds a flag."""
    found = []
    for call in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(call, ast.Call) and _call_name(call) in ("TumorcamError", "warn"):
            for node in ast.walk(call):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and FLAG.search(node.value):
                    found.append(f"{node.lineno}: {node.value}")
    return found


def test_library_messages_name_no_flag() -> None:
    files = [path for path in sorted(PACKAGE.rglob("*.py")) if "cli" not in path.relative_to(PACKAGE).parts
             and path.relative_to(PACKAGE).as_posix() not in PENDING]
    assert len(files) > 50
    found = {str(path.relative_to(PACKAGE)): flags for path in files if (flags := _flags_in_messages(path))}
    assert found == {}


def test_the_check_sees_a_flag_in_an_fstring(tmp_path: Path) -> None:
    source = tmp_path / "bad.py"
    source.write_text('def f(x):\n    raise TumorcamError(f"x {x}: pass --force")\n'
                      'def g():\n    warnings.warn("use --size", TumorcamWarning)\n')
    assert _flags_in_messages(source) == ["2: : pass --force", "4: use --size"]


@pytest.mark.parametrize(("param", "command", "flag"), [
    ("steps", None, "--steps"), ("slices_per_patient", None, "--slices-per-patient"), ("method", None, "--methods"),
    ("method", "explain", "--method"), ("size", "run", "--prepare-size"), ("size", "data", "--size"),
    ("train.lr", "train", "--lr"),
])
def test_flag_message_writes_the_commands_flag(param: str, command: str | None, flag: str) -> None:
    assert flag_message(TumorcamError(f"{param} 3: bad", param=param), command) == f"{flag} 3: bad"


def test_flag_message_without_a_param_is_the_message() -> None:
    assert flag_message(TumorcamError("a.png: no such file")) == "a.png: no such file"
    assert flag_message(TumorcamError("not the name first", param="out"), "run") == "--out: not the name first"


def test_cli_steps_0_names_the_flag(tmp_path: Path, blob_prepared: Path, capsys: pytest.CaptureFixture) -> None:
    run = make_run(tmp_path, blob_prepared)
    code, out, err = run_cli(["evaluate", str(run), "--faithfulness", "--steps", "0"], capsys)
    assert (code, out, err) == (2, "", "error: --steps: K must be an integer >= 1, got 0\n")


def test_cli_unknown_method_names_the_flag(tmp_path: Path, blob_prepared: Path, capsys: pytest.CaptureFixture) -> None:
    run = make_run(tmp_path, blob_prepared)
    code, _, err = run_cli(["explain", str(run), "--methods", "gradcm"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("error: --methods: unknown method 'gradcm' (did you mean gradcam?); choose from gradcam, ")


def test_cli_missing_data_names_the_flag(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "nowhere"
    code, _, err = run_cli(["train", "--preset", "demo", "--data", str(missing), "--out", str(tmp_path / "run")],
                           capsys)
    assert (code, err) == (2, f"error: --data {missing}: no such folder\n")


def test_cli_names_the_flag_of_its_command(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, _, err = run_cli(["data", "synth", "--out", str(tmp_path / "s"), "--slices-per-patient", "0"], capsys)
    assert (code, err) == (2, "error: --slices-per-patient 0: must be at least 1\n")
