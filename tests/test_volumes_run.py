"""`tumorcam run` on volumes: synthetic cases in nnU-Net's layout, a network whose answer is known
(it reads FLAIR only), every file of the run folder, and the same files under `torchrun`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tumorcam.cli import main
from tumorcam.data.synth_volumes import write_synthetic_volumes
from tumorcam.data.volumes import load_volumes
from tumorcam.errors import TumorcamWarning
from tumorcam.runs.volumes import resolve_split

FLAIR_ONLY = '''
import torch
from torch import nn


class FlairOnly(nn.Module):
    """Logits 10 * FLAIR - 5 through a 3x3x3 convolution that reads input channel 3 only."""

    def __init__(self):
        super().__init__()
        self.features = nn.Conv3d(4, 2, 3, padding=1)
        self.head = nn.Conv3d(2, 1, 1)
        with torch.no_grad():
            self.features.weight.zero_()
            self.features.bias.zero_()
            self.features.weight[0, 3, 1, 1, 1] = 4.0
            self.features.weight[1, 3, 1, 1, 1] = 6.0
            self.head.weight.fill_(1.0)
            self.head.bias.fill_(-5.0)

    def forward(self, x):
        return self.head(torch.relu(self.features(x)))


def make():
    return FlairOnly()


def three_sequences():
    return nn.Conv3d(3, 1, 1)
'''

FILES = ("faithfulness.json", "localization.json", "channels.json", "segmentation.json", "sanity.json",
         "volume_config.json", "explanations/index.json")


@pytest.fixture
def dataset(volume_run: tuple[Path, Path]) -> Path:
    """6 synthetic cases in DATASET/raw and the FLAIR-only network (conftest's `volume_run`)."""
    return volume_run[0]


def _run(dataset: Path, out: Path, *extra: str) -> None:
    cwd = os.getcwd()
    os.chdir(dataset)  # the model's module is found in the working directory
    try:
        main(["run", "--data", str(dataset / "raw"), "--model", "flair_only:make", "--out", str(out),
              "--prepare-size", "16", "--device", "cpu", "--methods", "gradcam,saliency", "--baselines", "zero,blur",
              "--split", "all", *extra])  # every case (a later --split in `extra` replaces it)
    finally:
        os.chdir(cwd)


@pytest.fixture
def run(volume_run: tuple[Path, Path]) -> Path:
    """`_run` of the dataset into DATASET/run, once per session (conftest's `volume_run`)."""
    return volume_run[1]


def test_the_split_defaults_to_test_and_every_file_records_it(run: Path) -> None:
    prepared = load_volumes(run / "prepared")
    assert resolve_split(prepared, None) == "test" and resolve_split(prepared, "test") == "test"
    with pytest.warns(TumorcamWarning, match="split 'train' mixes 4 training cases"):
        assert resolve_split(prepared, "train") == "train"
    with pytest.warns(TumorcamWarning, match="split 'all' mixes 1 training case into"):
        resolve_split(prepared, "all", cases=3)  # TCAM_000 (val), 001 (test), 002 (train): the cases evaluated
    no_test = type(prepared)(**{**prepared.__dict__, "splits": {**prepared.splits, "test": []}})
    assert resolve_split(no_test, None) == "all"
    for name in FILES:
        document = json.loads((run / name).read_text())
        assert (document["explain"] if name == "volume_config.json" else document)["split"] == "all", name


def test_the_command_line_warns_of_training_cases_in_the_split(run: Path, dataset: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    cwd = os.getcwd()
    os.chdir(dataset)
    try:  # the warning comes before the model's check, which then stops the run at once
        with pytest.raises(SystemExit):
            main(["run", "--data", str(run / "prepared"), "--model", "flair_only:three_sequences", "--split", "all",
                  "--out", str(dataset / "warned"), "--device", "cpu"])
    finally:
        os.chdir(cwd)
    assert capsys.readouterr().err.splitlines()[0] == \
        "warning: split 'all' mixes 4 training cases into the Dice and the verdicts; the test split has 1 case"


def test_channels_name_the_sequence_the_model_reads(run: Path) -> None:
    summary = json.loads((run / "channels.json").read_text())["summary"]
    per_channel = summary["channels"]
    assert summary["top_channel"] == "FLAIR"
    assert per_channel["FLAIR"]["share"]["mean"] == pytest.approx(1.0)
    for name in ("T1", "T1CE", "T2"):
        assert per_channel[name]["share"]["mean"] == pytest.approx(0.0, abs=1e-12)
        assert per_channel[name]["dice_drop"]["mean"] == pytest.approx(0.0, abs=1e-12)
    # zeroing FLAIR leaves logits of -5 everywhere: no voxel predicted, Dice 0 with the prediction
    assert per_channel["FLAIR"]["dice_drop"]["mean"] == pytest.approx(1.0)
    tests = {t["channel"]: t for t in summary["tests"] if t["kind"] == "dice_drop_vs_zero"}
    # every drop is 0 in all 6 cases: no difference to test, p = 1, "no drop shown" (not "undetermined")
    assert (tests["T1"]["verdict"], tests["T1"]["p_value"]) == ("no drop shown", 1.0)
    assert tests["FLAIR"]["n_pairs"] == 6 and tests["FLAIR"]["p_value"] == pytest.approx(2 / 2**6)


def test_faithfulness_rows_count_cases_as_patients(run: Path) -> None:
    faith = json.loads((run / "faithfulness.json").read_text())
    assert faith["n_cases"] == 6 and len(faith["case_ids"]) == 6
    methods = ["gradcam", "saliency", "random", "predicted-mask"]
    assert [(r["baseline"], r["method"]) for r in faith["results"]] == \
        [(b, m) for b in ("zero", "blur") for m in methods]
    primary = [r for r in faith["results"] if r["deletion"].get("vs_random")
               and r["deletion"]["vs_random"]["family"] == "primary"]
    assert [(r["method"], r["baseline"], r["layer"]) for r in primary] == [("gradcam", "zero", "features")]
    for row in faith["results"]:
        for curve in ("deletion", "insertion"):
            assert row[curve]["n_patients"] == 6 and row[curve]["unit"] == "patient"
            assert len(row["per_case"][curve]) == 6
            mean = np.mean([v for v in row["per_case"][curve] if v is not None])
            assert row[curve]["mean"] == pytest.approx(mean)
    random_row = next(r for r in faith["results"] if r["method"] == "random")
    assert random_row["deletion"]["vs_random"] is None


def test_maps_go_out_on_each_case_grid(run: Path, dataset: Path) -> None:
    index = json.loads((run / "explanations" / "index.json").read_text())
    assert index["case_ids"] == [f"TCAM_{i:03d}" for i in range(6)]
    maps = np.load(run / "explanations" / "gradcam.npy")
    assert maps.shape == (6, 16, 16, 16) and maps.dtype == np.float32
    for case in index["case_ids"]:
        original = nib.load(dataset / "raw" / "imagesTr" / f"{case}_0000.nii.gz")
        written = nib.load(run / "explanations" / "nifti" / f"{case}_gradcam.nii.gz")
        assert written.shape == original.shape
        np.testing.assert_allclose(written.affine, original.affine, atol=1e-5)
        values = np.asarray(written.dataobj)
        assert values.min() >= 0 and values.max() <= 1
    assert not (run / "explanations" / "nifti" / "TCAM_000_random.nii.gz").exists()


def test_segmentation_and_sanity(run: Path) -> None:
    segmentation = json.loads((run / "segmentation.json").read_text())
    dice = [v for v in segmentation["per_case"]["dice"]]
    assert len(dice) == 6 and segmentation["dice"]["mean"] == pytest.approx(np.mean(dice))
    sanity = json.loads((run / "sanity.json").read_text())
    assert sanity["stages"] == ["head", "features"] and sanity["n_cases"] == 6  # sanity_cases null: every case
    [row] = sanity["results"]
    assert row["verdict"] == sanity["verdict"] in ("passes", "fails", "undetermined") and row["n_patients"] <= 6
    assert len(row["final_mean_abs_spearman_ci"]) == len(row["final_ssim_ci"]) == 2 and row["min_patients"] == 5
    assert (row["reason"] is None) == (row["verdict"] != "undetermined")
    report = (run / "report.html").read_text()
    assert "FLAIR" in report and "Primary" in report


def test_model_without_volumes_is_refused(dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--data", str(dataset / "flair_only.py"), "--model", "flair_only:make"])
    assert exit_info.value.code == 2
    assert "flair_only.py: not a folder, .zip or .mat file" in capsys.readouterr().err


def test_a_model_that_does_not_fit_the_volumes_is_one_error(dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = dataset / "misfit"
    cwd = os.getcwd()
    os.chdir(dataset)
    try:
        with pytest.raises(SystemExit) as exit_info:
            main(["run", "--data", str(dataset / "run" / "prepared"), "--model", "flair_only:three_sequences",
                  "--out", str(out), "--device", "cpu"])
    finally:
        os.chdir(cwd)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: --model flair_only:three_sequences: fails on the volumes")
    assert "(4, 16, 16, 16)" in error[0]
    assert not (out / "explanations").exists()


def test_torchrun_writes_the_same_files(dataset: Path) -> None:
    single, sharded = dataset / "single", dataset / "sharded"
    arguments = ["run", "--data", str(dataset / "raw"), "--model", "flair_only:make", "--prepare-size", "16",
                 "--device", "cpu", "--methods", "gradcam", "--baselines", "zero", "--cases", "5", "--split", "all"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # CPU reductions depend on the thread count: the same in both
    subprocess.run([sys.executable, "-m", "tumorcam.cli", *arguments, "--out", str(single)], cwd=dataset, env=env,
                   check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                    "tumorcam.cli", *arguments, "--out", str(sharded)], cwd=dataset, env=env, check=True,
                   capture_output=True)
    for name in FILES:
        assert (single / name).read_bytes() == (sharded / name).read_bytes(), name
    for method in ("gradcam", "random", "predicted-mask"):
        path = Path("explanations") / f"{method}.npy"
        np.testing.assert_array_equal(np.load(single / path), np.load(sharded / path))
    written = sorted(p.name for p in (single / "explanations" / "nifti").iterdir())
    assert written == [f"TCAM_{i:03d}_gradcam.nii.gz" for i in range(5)]
    for name in written:  # each rank wrote its own cases' files
        assert (single / "explanations" / "nifti" / name).read_bytes() == \
            (sharded / "explanations" / "nifti" / name).read_bytes()
    assert json.loads((sharded / "timings.json").read_text())["processes"] == 2


def test_a_second_run_replaces_the_first_and_keeps_its_data(dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = dataset / "again"
    _run(dataset, out, "--cases", "2")
    assert (out / "explanations" / "saliency.npy").exists()
    _run(dataset, out, "--cases", "2", "--methods", "gradcam")  # the flag after _run's own replaces it
    assert not (out / "explanations" / "saliency.npy").exists()
    assert not list((out / "explanations").glob(".*partial"))
    assert [r["method"] for r in json.loads((out / "faithfulness.json").read_text())["results"]][:3] == \
        ["gradcam", "random", "predicted-mask"]
    other = dataset / "other-raw"
    write_synthetic_volumes(other, cases=3, size=16, seed=9)
    cwd = os.getcwd()
    os.chdir(dataset)
    try:
        with pytest.raises(SystemExit) as exit_info:
            main(["run", "--data", str(other), "--model", "flair_only:make", "--out", str(out), "--prepare-size", "16"])
    finally:
        os.chdir(cwd)
    assert exit_info.value.code == 2
    assert f"--data {other}: {out / 'prepared'} was prepared from" in capsys.readouterr().err
    assert (out / "faithfulness.json").exists()  # the refused run removed nothing
