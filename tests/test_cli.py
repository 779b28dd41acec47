"""The console script's root: usage errors and bad input end in a short message and exit 2, never a traceback."""

from __future__ import annotations

import pytest

from tumorcam import __version__
from tumorcam.cli import main


@pytest.mark.parametrize("args, message", [
    (["report"], "Missing argument"),
    (["train", "--bogus"], "No such option: --bogus"),
    (["evaluate", "RUN", "--steps", "x"], "Invalid value for '--steps'"),
])
def test_usage_errors_exit_2_with_typers_message(args: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as stop:
        main(args)
    err = capsys.readouterr().err
    assert stop.value.code == 2
    assert message in err and "Traceback" not in err


def test_bad_input_is_one_error_line(tmp_path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["explain", str(tmp_path / "no-run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2
    assert err == [f"error: {tmp_path / 'no-run'}: not a run folder (no config.json); train one with `tumorcam train`"]


def test_version(capsys: pytest.CaptureFixture) -> None:
    main(["--version"])
    assert capsys.readouterr().out.strip() == f"tumorcam {__version__}"
