"""tumorcam.nnunet on nnU-Net's 2d configuration: a 2-D network explained slice by slice over a volume.

The session fixture `nnunet_model_2d` (tests/conftest.py) trains the 2d configuration's network on the
plans and preprocessed cases that `nnunet_model` shares (`train_model(root, "2d")` of
tests/nnunet_model.py: one fingerprint, both configurations preprocessed in one child process). nnU-Net
tiles a 3-D volume (C, Z, X, Y) for a 2-D patch slice by slice; tumorcam's forward, explanation, export
and run must do the same. These tests run on one CPU thread (a tiny 2-D tile: threads only contend).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("nnunetv2")

from nnunet_model import CHANNELS, DATASET, TRAIN_STEPS_2D, TRAINER_FOLDER_2D, load_with_big_case  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread for this module (a 32x28 tile runs ~15x faster than with two contending)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def loaded_2d(nnunet_model_2d):
    """tumorcam's 2d model, the big case preprocessed (several slices, several tiles per slice), its properties."""
    return load_with_big_case(nnunet_model_2d)


@pytest.fixture(scope="module")
def explained_2d(loaded_2d):
    """Grad-CAM of edema on the big case's volume."""
    model, volume, _ = loaded_2d
    return model.explain(volume, "edema")


def _predictor(folder, mirroring: bool):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirroring,
                                perform_everything_on_device=False, device=torch.device("cpu"), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(folder), (0,), "checkpoint_final.pth")
    return predictor


def _small_case(folder) -> list[str]:
    """The channel files of training case TCAM_000 of the raw dataset (one tile per slice)."""
    images = folder.parents[2] / "raw" / DATASET / "imagesTr"
    return [str(images / f"TCAM_000_{channel:04d}.nii.gz") for channel in range(CHANNELS)]


def test_2d_model_loads_with_its_plans_and_mirroring_axes(nnunet_model_2d, loaded_2d, capsys):
    from tumorcam.nnunet.sliding import tiles

    folder, _, timings = nnunet_model_2d
    model, volume, _ = loaded_2d
    with capsys.disabled():
        print(f"\nnnU-Net 2d fixture: train {TRAIN_STEPS_2D} steps {timings['train_s']:.1f} s "
              f"(plan+preprocess of both configurations {timings['plan_and_preprocess_s']:.1f} s, shared)")
    assert folder.name == TRAINER_FOLDER_2D
    assert model.configuration == "2d" and len(model.patch_size) == 2 and model.mirror_axes == (0, 1)
    assert volume.ndim == 4 and volume.shape[0] == CHANNELS
    slicers = tiles(volume.shape[1:], model.patch_size)
    assert {s[1] for s in slicers} == set(range(volume.shape[1]))  # every slice, by its integer index
    assert len(slicers) > volume.shape[1], "the big case must need several tiles per slice"


def test_stitched_forward_segments_as_nnunets_predictor(nnunet_model_2d, loaded_2d):
    from tumorcam.nnunet.sliding import stitch

    folder, _, _ = nnunet_model_2d
    model, volume, _ = loaded_2d
    theirs = _predictor(folder, mirroring=False).predict_sliding_window_return_logits(torch.from_numpy(volume))
    with torch.no_grad():
        ours = model(torch.from_numpy(volume)[None])[0]
    assert ours.shape == theirs.shape == (3, *volume.shape[1:])
    segmentation = model.segmentation(ours)
    assert (segmentation == 1).sum() > 0 and (segmentation == 2).sum() > 0, "the trained 2d model segments nothing"
    assert np.mean(segmentation == model.segmentation(theirs)) > 0.9999
    assert torch.allclose(ours, theirs.float(), atol=0.05, rtol=0.01)  # nnU-Net accumulates in fp16
    with torch.no_grad():  # SLICE_BATCH tiles per network call: the sums of one tile per call
        one_by_one = stitch(torch.from_numpy(volume), model.patch_size, model.networks[0], batch=1)
    torch.testing.assert_close(ours, one_by_one, atol=1e-4, rtol=1e-4)


def test_mirrored_forward_segments_as_nnunets_mirrored_predictor(nnunet_model_2d):
    import tumorcam.nnunet

    folder, _, _ = nnunet_model_2d
    model = tumorcam.nnunet.load(folder, mirror=True)
    volume, _ = model.preprocess(_small_case(folder))
    theirs = _predictor(folder, mirroring=True).predict_sliding_window_return_logits(torch.from_numpy(volume))
    with torch.no_grad():
        ours = model(torch.from_numpy(volume)[None])[0]
    assert np.mean(model.segmentation(ours) == model.segmentation(theirs)) > 0.999
    assert torch.allclose(ours, theirs.float(), atol=0.05, rtol=0.01)


def test_slice_map_equals_explaining_that_slice_alone(loaded_2d, explained_2d):
    from tumorcam.explain.maps import normalize

    model, volume, _ = loaded_2d
    result = explained_2d
    assert result.heatmap.shape == volume.shape[1:] and result.layer.startswith("decoder.stages.")
    assert result.heatmap.max() == pytest.approx(1.0)
    slice_max = result.heatmap.reshape(len(result.heatmap), -1).max(1)
    assert slice_max.min() < 0.9, "one normalisation over the volume, not one per slice"
    edema = (model.segmentation(result.logits) == 1).reshape(len(result.heatmap), -1).sum(1)
    for k in (int(np.argmax(edema)), int(np.argmax(edema > 0))):  # the most edema, and its first slice
        alone = model.explain(volume[:, k:k + 1], "edema")
        assert alone.heatmap.shape == (1, *volume.shape[2:]) and alone.layer == result.layer
        assert alone.heatmap.max() == pytest.approx(1.0)
        torch.testing.assert_close(alone.logits[:, 0], result.logits[:, k], atol=1e-5, rtol=1e-5)
        expected = normalize(torch.from_numpy(result.fold_maps[0][k][None]))[0].numpy()
        np.testing.assert_allclose(alone.heatmap[0], expected, atol=1e-5)


def test_map_on_the_raw_grid_has_the_raw_shape_and_affine(nnunet_model_2d, loaded_2d, explained_2d, tmp_path):
    import nibabel as nib
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

    import tumorcam.nnunet

    _, files, _ = nnunet_model_2d
    model, volume, properties = loaded_2d
    raw = nib.load(files[0])
    written = tumorcam.nnunet.write_map(model, explained_2d.heatmap, properties, files[0], tmp_path / "map.nii.gz")
    image = nib.load(tmp_path / "map.nii.gz")
    assert image.shape == raw.shape == written.shape and image.shape != volume.shape[1:]
    np.testing.assert_allclose(image.affine, raw.affine, atol=1e-5)
    assert 0.0 <= written.min() and written.max() <= 1.0 and written.max() > 0.5
    # the predicted edema mask as a map lands where nnU-Net's own export puts the edema label
    mask = (model.segmentation(explained_2d.logits) == 1).astype(np.float32)
    exported = model.export_map(mask, properties).transpose()  # the file's voxel order
    seg = convert_predicted_logits_to_segmentation_with_correct_shape(
        explained_2d.logits, model.plans_manager, model.configuration_manager, model.label_manager, properties)
    theirs = np.asarray(seg).transpose() == 1
    assert theirs.shape == raw.shape and theirs.sum() > 0
    dice = 2 * np.sum((exported > 0.5) & theirs) / (np.sum(exported > 0.5) + theirs.sum())
    assert dice > 0.9, dice


def test_cli_explains_the_2d_model(nnunet_model_2d, tmp_path, capsys):
    import nibabel as nib
    from conftest import run_cli

    folder, _, _ = nnunet_model_2d
    files = _small_case(folder)
    args = ["explain", "--nnunet", str(folder), "--label", "enhancing", "--out", str(tmp_path), "--device", "cpu"]
    code, out, err = run_cli([*args, *(item for f in files for item in ("--image", f))], capsys)
    assert code in (0, None), err
    assert "gradcam of enhancing (channel 2), fold(s) 0, at layer decoder.stages." in out and "nnUNetTrainer 2d" in out
    written = nib.load(tmp_path / "TCAM_000_gradcam_enhancing.nii.gz")
    raw = nib.load(files[0])
    assert written.shape == raw.shape and np.allclose(written.affine, raw.affine)
    values = np.asarray(written.dataobj)
    assert 0.0 <= values.min() and values.max() == pytest.approx(1.0, abs=0.05)


def test_run_nnunet_on_the_2d_model_writes_finite_aucs(nnunet_model_2d, tmp_path):
    import nibabel as nib

    from tumorcam.config import preset
    from tumorcam.nnunet.run import run_nnunet

    folder, _, _ = nnunet_model_2d
    raw = folder.parents[2] / "raw" / DATASET
    settings = preset("own-model").replace({"explain.methods": ["gradcam"], "evaluate.steps": 3,
                                            "evaluate.baselines": ["zero"], "evaluate.bootstrap": 50,
                                            "evaluate.batch_size": 4})
    report = run_nnunet(tmp_path, raw, folder, label="edema", cases=2, settings=settings, device="cpu",
                        log=lambda line: None)
    assert report == tmp_path / "report.html"
    faithfulness = json.loads((tmp_path / "faithfulness.json").read_text())
    rows = {row["method"]: row for row in faithfulness["results"]}
    assert set(rows) == {"gradcam", "random", "predicted-mask"} and faithfulness["n_cases"] == 2
    for row in rows.values():
        for curve in ("deletion", "insertion"):
            values = np.asarray(row["per_case"][curve])
            assert values.shape == (2,) and np.isfinite(values).all() and (values >= 0).all(), (row["method"], curve)
    assert rows["gradcam"]["layer"].startswith("decoder.stages.")
    segmentation = json.loads((tmp_path / "segmentation.json").read_text())
    assert min(segmentation["per_case"]["dice"]) > 0.5
    channels = json.loads((tmp_path / "channels.json").read_text())
    assert channels["n_cases"] == 2
    run = json.loads((tmp_path / "nnunet_run.json").read_text())
    assert run["model"] == str(folder)
    for case in ("TCAM_000", "TCAM_001"):
        written = nib.load(tmp_path / "explanations" / "nifti" / f"{case}_gradcam.nii.gz")
        image = nib.load(raw / "imagesTr" / f"{case}_0000.nii.gz")
        assert written.shape == image.shape and np.allclose(written.affine, image.affine, atol=1e-5)
