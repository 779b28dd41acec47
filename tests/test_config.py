"""Config: every section checks the names, types and values of config.json; one line names the field."""

from __future__ import annotations

import json

import pytest

from tumorcam.cli import main
from tumorcam.config import Config, preset
from tumorcam.errors import TumorcamError


def test_presets_round_trip_through_json() -> None:
    for name in ("paper-2d", "demo-2d", "demo-3d", "own-model", "paper", "demo"):
        config = preset(name)
        assert Config.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.parametrize("data, param, message", [
    ({"explain": {"methods": "gradcam"}}, "methods",
     r"methods: expected list\[str\], got str 'gradcam' \(in config\.explain\.methods\)"),
    ({"train": {"epochs": "10"}}, "epochs", r"epochs: expected int, got str '10' \(in config\.train\.epochs\)"),
    ({"train": {"amp": 1}}, "amp", r"amp: expected bool, got int 1"),
    ({"train": {"lr": True}}, "lr", r"lr: expected float, got bool True"),
    ({"explain": {"targets": ["predicted-region", 3]}}, "targets", r"targets: expected list\[str\], got list"),
    ({"explain": {"methods": ["gradcam", "bogus"]}}, "methods", r"methods: must be method names"),
    ({"evaluate": {"alpha": 2}}, "alpha", r"alpha: must be in \(0, 1\), got 2 \(in config\.evaluate\.alpha\)"),
    ({"evaluate": {"schedule": "linear"}}, "schedule", r"schedule: must be log or uniform, got 'linear'"),
    ({"evaluate": {"primary": {"baseline": None}}}, "baseline", r"baseline: expected str, got NoneType None "
                                                                r"\(in config\.evaluate\.primary\.baseline\)"),
    ({"evaluate": {"steps": 0}}, "steps", r"steps: must be >= 1, got 0"),
    ({"train": {"size": 50}}, "size", r"size: must be a multiple of 32"),
    ({"model": []}, "model", r"model: expected an object, got list \(in config\.model\)"),
    ({"explain": {"bogus": 1}}, "bogus", r"bogus: unknown setting\(s\) bogus \(known: split, "),
])
def test_wrong_field_is_one_error_naming_it(data: dict, param: str, message: str) -> None:
    with pytest.raises(TumorcamError, match=message) as error:
        Config.from_dict(data, source="config")
    assert error.value.param == param


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
    assert err == [f"error: --epochs: expected int, got str '10' (in {run / 'config.json'}.train.epochs)"]


def test_aliases_and_names_of_earlier_files() -> None:
    assert preset("demo") == preset("demo-2d") and preset("paper") == preset("paper-2d")
    assert preset("demo").preset == "demo-2d"
    assert Config.from_dict({"evaluate": {"sanity_slices": 3}}).evaluate.sanity == 3
    with pytest.raises(TumorcamError, match="preset: unknown preset 'tiny'") as error:
        preset("tiny")
    assert error.value.param == "preset"


def test_replace_sets_paths_and_checks_them() -> None:
    settings = preset("demo-3d").replace({"evaluate.steps": 4, "explain.methods": ("saliency",), "explain.split": None})
    assert settings.evaluate.steps == 4 and settings.explain.methods == ["saliency"]
    assert settings.explain.split == "test"  # None leaves a setting as it is
    with pytest.raises(TumorcamError, match="steps: must be >= 1, got 0") as error:
        preset("demo-3d").replace({"evaluate.steps": 0})
    assert error.value.param == "steps"


def test_a_flat_volume_config_of_earlier_versions_reads_as_the_sections(tmp_path) -> None:
    from tumorcam.runs.volume_settings import load_run_settings

    path = tmp_path / "volume_config.json"
    path.write_text(json.dumps({"split": "all", "cases": 3, "methods": ["gradcam"], "target": "mean-logits",
                                "layer": "features", "steps": 7, "sanity_cases": 0, "seed": 2,
                                "model": "flair_only:make", "weights": None, "weights_sha256": None, "data": "prepared"}))
    settings = load_run_settings(path)
    assert (settings.explain.split, settings.explain.patients, settings.explain.targets, settings.explain.layers) == \
        ("all", 3, ["mean-logits"], ["features"])
    assert (settings.evaluate.steps, settings.evaluate.sanity, settings.evaluate.seed, settings.explain.seed) == (7, 0, 2, 2)
    assert settings.model.network == "flair_only:make" and settings.data == "prepared"
    path.write_text(json.dumps({"sanity_slices": 1}))
    with pytest.raises(TumorcamError, match="sanity_slices: unknown setting"):
        load_run_settings(path)
