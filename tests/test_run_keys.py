"""`tumorcam run` on slices and on volumes writes every JSON field it wrote before the settings were
unified: the key paths of a tiny run of each kind against tests/data/run_keys.json (generated from
the code before the change)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_cli
from run_keys import SKIPPED, key_paths
from test_volumes_run import FLAIR_ONLY
from tumorcam.config import preset
from tumorcam.data.synth_volumes import write_synthetic_volumes

EXPECTED = json.loads((Path(__file__).parent / "data" / "run_keys.json").read_text())
# A run on volumes counts cases, not slices (n_cases, per_case), and names the prepared folder beside
# the data as given: the only changes of its fields since the list was made.
RENAMED_FOR_VOLUMES = {"n_slices": "n_cases", "per_slice": "per_case"}
ADDED_FOR_VOLUMES = "prepared"


def volume_fields(paths: list[str]) -> list[str]:
    """The expected key paths of a volume run's file: renamed, and `prepared` beside `data`."""
    renamed = {".".join(RENAMED_FOR_VOLUMES.get(part, part) for part in path.split(".")) for path in paths}
    if "data" in renamed:
        renamed.add(ADDED_FOR_VOLUMES)
    return sorted(renamed)


def run_keys(run: Path) -> dict[str, list[str]]:
    return {str(p.relative_to(run)): key_paths(json.loads(p.read_text())) for p in sorted(run.rglob("*.json"))
            if p.name not in SKIPPED and not {"prepared", "synthetic"} & set(p.relative_to(run).parts)}


def test_a_slice_run_keeps_every_field(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    settings = preset("demo").replace({
        "model.encoder": "resnet18", "train.size": 64, "train.epochs": 1, "train.device": "cpu", "explain.limit": 3,
        "explain.batch_size": 3, "explain.methods": ["gradcam", "saliency", "random", "predicted-mask"],
        "evaluate.steps": 4, "evaluate.baselines": ["zero"], "evaluate.bootstrap": 20, "evaluate.sanity": 1})
    settings.save(tmp_path / "tiny.json")
    code, _, err = run_cli(["run", "--config", str(tmp_path / "tiny.json"), "--out", str(tmp_path / "run"),
                            "--synthetic-patients", "15", "--synthetic-slices", "2", "--prepare-size", "64"], capsys)
    assert code in (0, None), err
    assert run_keys(tmp_path / "run") == EXPECTED["slices"]


def test_a_volume_run_keeps_every_field(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch) -> None:
    write_synthetic_volumes(tmp_path / "raw", cases=6, size=16, seed=3)
    (tmp_path / "flair_only.py").write_text(FLAIR_ONLY)
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["run", "--data", str(tmp_path / "raw"), "--model", "flair_only:make", "--out",
                            str(tmp_path / "run"), "--prepare-size", "16", "--device", "cpu", "--methods",
                            "gradcam,saliency", "--baselines", "zero,blur", "--split", "all"], capsys)
    assert code in (0, None), err
    assert run_keys(tmp_path / "run") == {name: volume_fields(paths) for name, paths in EXPECTED["volumes"].items()}
    settings = json.loads((tmp_path / "run" / "volume_config.json").read_text())
    assert settings["model"]["network"] == "flair_only:make" and settings["explain"]["layers"] == ["features"]
