"""Every stage on every run: `tumorcam evaluate` on a run on volumes gives the files the run wrote,
`tumorcam channels` on runs on volumes and on slices, and the volume files count cases."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import write_blob_prepared
from test_volumes_run import FLAIR_ONLY
from tumorcam.cli import main
from tumorcam.config import preset
from tumorcam.data.synth_volumes import write_synthetic_volumes
from tumorcam.training import train

STAGE_FILES = ("faithfulness.json", "localization.json", "sanity.json", "segmentation.json")


@pytest.fixture(scope="module")
def volume_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("stages")
    write_synthetic_volumes(root / "raw", cases=3, size=16, seed=3)
    (root / "flair_only.py").write_text(FLAIR_ONLY)
    cwd = os.getcwd()
    os.chdir(root)  # the model's module is found in the working directory
    try:
        main(["run", "--data", str(root / "raw"), "--model", "flair_only:make", "--out", str(root / "run"),
              "--prepare-size", "16", "--device", "cpu", "--methods", "gradcam", "--baselines", "zero",
              "--split", "all"])
    finally:
        os.chdir(cwd)
    return root


def _numbers_equal(a: object, b: object, where: str = "") -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            _numbers_equal(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _numbers_equal(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and isinstance(b, (int, float)):
        assert b == pytest.approx(a, abs=1e-6), where
    else:
        assert a == b, where


def test_evaluate_a_volume_run_gives_the_run_s_files(volume_run: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    shutil.copytree(volume_run / "run", run)
    written = {name: json.loads((run / name).read_text()) for name in STAGE_FILES}
    for name in STAGE_FILES:
        (run / name).unlink()
    cwd = os.getcwd()
    os.chdir(volume_run)
    try:
        main(["evaluate", str(run), "--threads", "1"])
        out = capsys.readouterr().out.splitlines()
        assert out[-2].startswith("headline: ") and out[0].startswith("segmentation (all, 3 cases)")
        for name in STAGE_FILES:
            _numbers_equal(written[name], json.loads((run / name).read_text()), name)
        main(["evaluate", str(run), "--faithfulness", "--steps", "4", "--baselines", "blur"])
    finally:
        os.chdir(cwd)
    faith = json.loads((run / "faithfulness.json").read_text())
    assert faith["steps"] == 4 and faith["baselines"] == ["blur"] and len(faith["fractions"]) == 5
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["evaluate", str(run), "--patients", "2"])
    assert capsys.readouterr().err.startswith("error: --patients: a run on volumes")


def test_volume_files_count_cases_and_name_the_data(volume_run: Path) -> None:
    run = volume_run / "run"

    def keys(doc: object) -> set[str]:
        if isinstance(doc, dict):
            return set(doc) | {k for v in doc.values() for k in keys(v)}
        return {k for v in doc for k in keys(v)} if isinstance(doc, list) else set()

    for name in (*STAGE_FILES, "channels.json", "explanations/index.json"):
        doc = json.loads((run / name).read_text())
        assert not keys(doc) & {"n_slices", "per_slice"}, name
        assert doc["data"] == str((volume_run / "raw").resolve()) and doc["prepared"] == "prepared", name
    assert "per_case" in json.loads((run / "channels.json").read_text())["summary"]
    assert "1 cases" not in (run / "report.html").read_text()


def test_channels_of_a_volume_run(volume_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    shutil.copytree(volume_run / "run", run)
    written = json.loads((run / "channels.json").read_text())
    (run / "channels.json").unlink()
    cwd = os.getcwd()
    os.chdir(volume_run)
    try:
        main(["channels", str(run), "--threads", "1"])
    finally:
        os.chdir(cwd)
    _numbers_equal(written, json.loads((run / "channels.json").read_text()))
    out = capsys.readouterr().out
    assert "FLAIR" in out and "top sequence: FLAIR" in out


def test_nifti_maps_are_quantised_and_match_the_saved_maps(volume_run: Path) -> None:
    run = volume_run / "run"
    maps = np.load(run / "explanations" / "gradcam.npy")
    image = nib.load(run / "explanations" / "nifti" / "TCAM_000_gradcam.nii.gz")
    assert image.get_data_dtype() == np.uint16
    stored = image.get_fdata()
    resampled = F.interpolate(torch.from_numpy(maps[:1, None]), size=stored.shape, mode="trilinear",
                              align_corners=False)[0, 0].numpy()  # the float32 map on the case's grid
    np.testing.assert_allclose(stored, resampled, rtol=0, atol=2 ** -11)  # float16's step below 1, and finer


def test_channels_of_a_slice_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = preset("demo")
    config.data = str(write_blob_prepared(tmp_path / "prepared", n=12, size=32))
    config.model.encoder, config.model.encoder_weights = "resnet18", "none"
    config.train.size, config.train.epochs, config.train.batch_size = 32, 1, 4
    config.train.augment, config.train.device, config.evaluate.bootstrap = False, "cpu", 50
    config.explain.ig_steps, config.explain.slices_per_patient = 4, 1
    train(config, tmp_path / "run")
    main(["channels", str(tmp_path / "run"), "--threads", "1"])
    doc = json.loads((tmp_path / "run" / "channels.json").read_text())
    assert doc["channels"] == ["channel_0"] and doc["n_slices"] == doc["n_patients"] >= 1
    assert set(doc) >= {"data", "split", "size", "method", "ablation_baseline", "summary"}
    share = doc["summary"]["channels"]["channel_0"]["share"]["mean"]
    assert share is None or share == pytest.approx(1.0)  # one channel carries all the attribution
    assert "channel_0" in capsys.readouterr().out
