"""`evaluate_segmentation` on a tiny trained run: its numbers match an independent computation,
the aggregates are consistent, other data folders and splits work, bad input is one clear error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import write_blob_prepared
from tumorcam.cli import main
from tumorcam.config import preset
from tumorcam.data.arrays import load_prepared
from tumorcam.errors import TumorcamError
from tumorcam.runs.segmentation import evaluate_segmentation
from tumorcam.runfolder.folder import load_run_model
from tumorcam.training import train


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("segeval")
    data = write_blob_prepared(root / "prepared")
    config = preset("demo")
    config.data = str(data)
    config.model.encoder, config.model.encoder_weights = "resnet18", "none"  # small: tests run it on CPU
    config.train.size, config.train.epochs, config.train.batch_size = 32, 2, 4
    config.train.augment, config.train.device, config.evaluate.bootstrap = False, "cpu", 50
    train(config, root / "run")
    return root / "run", data


def _numpy_dice(run: Path, data: Path, split: str) -> np.ndarray:
    """Dice computed here from scratch: model at 32 px, logits resized to the data's size."""
    model, config = load_run_model(run)
    prepared = load_prepared(data)
    rows = prepared.indices(split)
    images, masks = prepared.tensors(rows)
    with torch.no_grad():
        logits = model(F.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False).clamp(0, 1))
    pred = F.interpolate(logits, size=masks.shape[-2:], mode="bilinear", align_corners=False).numpy()[:, 0] > 0
    gt = masks.numpy()[:, 0] > 0.5
    dice = []
    for p, g in zip(pred, gt):
        total = p.sum() + g.sum()
        dice.append(1.0 if total == 0 else 2 * (p & g).sum() / total)
    return np.array(dice)


def test_metrics_match_an_independent_computation(tiny_run):
    run, data = tiny_run
    doc = evaluate_segmentation(run, split="val")
    assert json.loads((run / "metrics.json").read_text()) == json.loads(json.dumps(doc))
    expected = _numpy_dice(run, data, "val")
    got = np.array([s["dice"] for s in doc["per_slice"]])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert doc["overall"]["dice"]["mean"] == pytest.approx(expected.mean())
    assert doc["split"] == "val" and doc["checkpoint"] == "unet_trained.pth" and doc["input_size"] == 32


def test_aggregates_are_consistent(tiny_run):
    run, _ = tiny_run
    doc = evaluate_segmentation(run, split="all", checkpoint="best")
    slices = doc["per_slice"]
    assert doc["checkpoint"] == "unet_best.pth" and len(slices) == doc["overall"]["n"] == 24
    assert sum(c["n"] for c in doc["per_class"].values()) == 24
    assert set(doc["per_class"]) == {"meningioma", "glioma", "pituitary"}
    for name, label in (("meningioma", 1), ("glioma", 2), ("pituitary", 3)):
        values = [s["iou"] for s in slices if s["label"] == label]
        assert doc["per_class"][name]["iou"]["mean"] == pytest.approx(np.mean(values))
    patients = doc["per_patient"]["patients"]
    assert len(patients) == doc["per_patient"]["summary"]["n"] == 12
    assert doc["per_patient"]["summary"]["dice"]["mean"] == pytest.approx(np.mean([p["dice"] for p in patients]))
    for s in slices:
        assert 0 <= s["iou"] <= s["dice"] <= 1  # IoU = Dice / (2 - Dice) <= Dice


def test_other_data_folder_at_another_size(tiny_run, tmp_path):
    run, _ = tiny_run
    other = write_blob_prepared(tmp_path / "other", n=12, size=96, seed=3)
    doc = evaluate_segmentation(run, data=other, split="all")
    assert doc["size"] == 96 and doc["data"] == str(other) and doc["overall"]["n"] == 12
    np.testing.assert_allclose([s["dice"] for s in doc["per_slice"]], _numpy_dice(run, other, "all"), atol=1e-6)


def test_cli_evaluate_segmentation(tiny_run, capsys):
    run, _ = tiny_run
    main(["evaluate", str(run), "--segmentation", "--split", "test", "--device", "cpu"])
    line = capsys.readouterr().out
    assert line.startswith("segmentation (test, 4 slices): Dice ")
    assert json.loads((run / "metrics.json").read_text())["split"] == "test"


def test_bad_input(tiny_run, tmp_path):
    run, _ = tiny_run
    with pytest.raises(TumorcamError, match="not a run folder"):
        evaluate_segmentation(tmp_path)
    with pytest.raises(TumorcamError, match="unknown split 'dev'"):
        evaluate_segmentation(run, split="dev")
    with pytest.raises(TumorcamError, match="checkpoint: unknown checkpoint"):
        evaluate_segmentation(run, checkpoint="first")
    with pytest.raises(TumorcamError, match="not a prepared folder"):
        evaluate_segmentation(run, data=tmp_path)


def test_writes_figure_5_examples_as_the_report_once_predicted_them(tiny_run, tmp_path):
    """examples.npz: the report's example rows (one per class first), predicted by the last checkpoint
    at the training size without autocast, as the report did before it stopped running the network."""
    from tumorcam.runfolder.examples import EXAMPLES_FILE, N_EXAMPLES, example_rows, load_examples

    run, data = tiny_run
    (run / EXAMPLES_FILE).unlink(missing_ok=True)
    evaluate_segmentation(run, split="val")
    examples = load_examples(run)
    prepared = load_prepared(data)
    rows = example_rows(prepared, N_EXAMPLES)
    np.testing.assert_array_equal(examples.file_ids, np.asarray(prepared.file_ids[rows]))
    model, _ = load_run_model(run)
    images, _ = prepared.tensors(rows, 32)
    with torch.no_grad():
        expected = model(images).numpy()[:, 0] > 0
    assert examples.size == 32 and examples.checkpoint == "unet_trained.pth"
    np.testing.assert_array_equal(examples.predicted, expected)

    (run / EXAMPLES_FILE).unlink()
    evaluate_segmentation(run, data=data, split="val")  # another data folder than the run's: not written
    assert not (run / EXAMPLES_FILE).exists()
    evaluate_segmentation(run, split="val")
