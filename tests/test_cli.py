"""The console script's root: usage errors and bad input end in a short message and exit 2, never a traceback."""

from __future__ import annotations

import pytest

from tumorcam import __version__
from tumorcam.cli import main


@pytest.mark.parametrize("args, message", [
    (["report"], "Missing argument 'RUN' (see `tumorcam report --help`)"),
    (["train"], "Missing option '--out' (see `tumorcam train --help`)"),
    (["train", "--bogus"], "No such option: --bogus"),
    (["evaluate", "RUN", "--steps", "x"], "Invalid value for '--steps'"),
    (["explain", "--split"], "Option '--split' requires an argument"),
    (["--debug", "yes"], "No such command 'yes'"),
    (["data", "nope"], "No such command 'nope'"),
])
def test_usage_errors_are_one_error_line_exit_2(args: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as stop:
        main(args)
    captured = capsys.readouterr()
    assert stop.value.code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], captured.err
    assert captured.out == ""


def test_no_command_shows_the_help(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main([])
    assert "Usage: tumorcam" in capsys.readouterr().err


def test_bad_input_is_one_error_line(tmp_path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["explain", str(tmp_path / "no-run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2
    assert err == [f"error: {tmp_path / 'no-run'}: not a run folder (no config.json); train one with `tumorcam train`"]


def test_version(capsys: pytest.CaptureFixture) -> None:
    main(["--version"])
    assert capsys.readouterr().out.strip() == f"tumorcam {__version__}"
