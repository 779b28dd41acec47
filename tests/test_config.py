"""Config: every section checks the names, types and values of config.json; one line names the field."""

from __future__ import annotations

import json

import pytest

from tumorcam.cli import main
from tumorcam.config import Config, preset
from tumorcam.errors import TumorcamError


def test_presets_round_trip_through_json() -> None:
    for name in ("paper", "demo"):
        config = preset(name)
        assert Config.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.parametrize("data, message", [
    ({"explain": {"methods": "gradcam"}}, r"config\.explain\.methods: expected list\[str\], got str 'gradcam'"),
    ({"train": {"epochs": "10"}}, r"config\.train\.epochs: expected int, got str '10'"),
    ({"train": {"amp": 1}}, r"config\.train\.amp: expected bool, got int 1"),
    ({"train": {"lr": True}}, r"config\.train\.lr: expected float, got bool True"),
    ({"explain": {"targets": ["predicted-region", 3]}}, r"config\.explain\.targets\[1\]: expected str, got int 3"),
    ({"evaluate": {"alpha": 2}}, r"config\.evaluate\.alpha: must be in \(0, 1\), got 2"),
    ({"evaluate": {"schedule": "linear"}}, r"config\.evaluate\.schedule: must be log or uniform, got 'linear'"),
    ({"evaluate": {"primary": {"baseline": None}}}, r"config\.evaluate\.primary\.baseline: must not be null"),
    ({"train": {"size": 50}}, r"config\.train\.size: must be a multiple of 32"),
    ({"model": []}, r"config\.model: expected an object, got list"),
    ({"explain": {"bogus": 1}}, r"config\.explain: unknown setting\(s\) bogus"),
])
def test_wrong_field_is_one_error_naming_it(data: dict, message: str) -> None:
    with pytest.raises(TumorcamError, match=message):
        Config.from_dict(data)


def test_valid_values_are_kept() -> None:
    config = Config.from_dict({"train": {"lr": 1, "epochs": 3}, "explain": {"patients": None, "slices_per_patient": 2}})
    assert config.train.lr == 1 and config.train.epochs == 3
    assert config.explain.patients is None and config.explain.slices_per_patient == 2


def test_cli_wrong_config_json_exits_2_with_one_line(tmp_path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"train": {"epochs": "10"}}))
    with pytest.raises(SystemExit) as stop:
        main(["explain", str(run)])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2
    assert err == [f"error: {run / 'config.json'}.train.epochs: expected int, got str '10'"]
