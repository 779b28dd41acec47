"""tumorcam.nnunet on a real nnU-Net v2 model folder, planned, preprocessed and (briefly) trained here.

The session fixture `nnunet_model` (tests/conftest.py; `make_model_folder` of tests/nnunet_model.py)
writes tumorcam's synthetic raw dataset (8 cases, size 32), runs nnU-Net's fingerprint / plan / preprocess steps for 3d_fullres in a child process (nnU-Net reads its folders
from the environment at import time; its worker pools run as threads there, and the fingerprint
samples 1e5 foreground voxels instead of 1e8, to keep this ~20 s), builds the network with
nnU-Net's trainer class from the plans, trains it 40 steps with plain PyTorch on random 16^3 crops of
the preprocessed cases (one CPU thread: fastest on a shared machine) and saves it in nnU-Net's
checkpoint format under results/Dataset987_TumorcamSynth/nnUNetTrainer__nnUNetPlans__3d_fullres/fold_0/.
"""

from __future__ import annotations

import re
import shutil
import types

import numpy as np
import pytest
import torch

pytest.importorskip("nnunetv2")

from nnunet_model import CHANNELS, DATASET, TRAIN_STEPS, TRAINER_FOLDER, load_with_big_case  # noqa: E402


@pytest.fixture(scope="session")
def loaded(nnunet_model):
    """tumorcam's model (weights-only loading), the big case preprocessed, and its properties."""
    return load_with_big_case(nnunet_model)


@pytest.mark.parametrize("image_size,patch_size", [((40, 70, 33), (20, 32, 28)), ((5, 50, 61), (32, 28)),
                                                    ((20, 32, 28), (20, 32, 28))])
def test_tiles_are_nnunets(image_size, patch_size):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian

    from tumorcam.nnunet.sliding import gaussian, tiles

    predictor = types.SimpleNamespace(configuration_manager=types.SimpleNamespace(patch_size=list(patch_size)),
                                      tile_step_size=0.5, verbose=False)
    assert tiles(image_size, patch_size) == nnUNetPredictor._internal_get_sliding_window_slicers(predictor, image_size)
    theirs = compute_gaussian(tuple(patch_size), 1.0 / 8, 10, dtype=torch.float32, device=torch.device("cpu"))
    assert torch.equal(gaussian(patch_size), theirs)


def test_label_channels_follow_the_label_manager(loaded):
    from tumorcam.errors import TumorcamError
    from tumorcam.nnunet import NnunetModel
    from tumorcam.nnunet.explain import predicted_region

    model = loaded[0]
    assert (model.channel("edema"), model.channel("enhancing")) == (1, 2)
    regions = {**model.dataset_json, "labels": {"background": 0, "whole": [1, 2], "core": 2},
               "regions_class_order": [1, 2]}
    region_model = NnunetModel([], (0,), model.plans_manager.plans, regions, "3d_fullres", "nnUNetTrainer", None)
    assert region_model.label_manager.has_regions
    assert (region_model.channel("whole"), region_model.channel("core")) == (0, 1)
    with pytest.raises(TumorcamError, match="label: unknown label 'tumor'"):
        region_model.channel("tumor")
    logits = torch.tensor([[-1.0, 2.0], [3.0, 1.0]]).view(1, 2, 2)  # channel 0: z = (-1, 2); channel 1: (3, 1)
    assert predicted_region(logits, None, channel=0, regions=True)[0, 0].tolist() == [0.0, 1.0]
    assert predicted_region(logits, None, channel=0, regions=False)[0, 0].tolist() == [0.0, 1.0]
    assert predicted_region(logits, None, channel=1, regions=True)[0, 1].tolist() == [1.0, 1.0]
    assert predicted_region(logits, None, channel=1, regions=False)[0, 1].tolist() == [1.0, 0.0]


def test_plan_and_train_timings(nnunet_model, capsys):
    _, _, timings = nnunet_model
    with capsys.disabled():
        print(f"\nnnU-Net fixture: plan+preprocess {timings['plan_and_preprocess_s']:.1f} s, "
              f"train {TRAIN_STEPS} steps {timings['train_s']:.1f} s")
    assert timings["plan_and_preprocess_s"] < 120


def test_safe_loading_reads_the_real_checkpoint_weights_only(nnunet_model, loaded):
    from tumorcam.nnunet.checkpoint import read_checkpoint

    folder, _, _ = nnunet_model
    with pytest.raises(Exception):  # noqa: B017 - plain weights-only loading refuses numpy scalars
        torch.load(folder / "fold_0" / "checkpoint_final.pth", weights_only=True)
    checkpoint = read_checkpoint(folder / "fold_0" / "checkpoint_final.pth")
    assert isinstance(checkpoint["_best_ema"], np.float64)
    model = loaded[0]
    assert model.trainer_name == "nnUNetTrainer" and model.configuration == "3d_fullres"
    assert model.mirror_axes == (0, 1, 2) and len(model.networks) == 1
    for name, value in model.networks[0].state_dict().items():
        assert torch.equal(value, checkpoint["network_weights"][name])


def test_unexpected_pickled_object_is_refused_naming_trust_checkpoint(nnunet_model, tmp_path):
    import tumorcam.nnunet
    from tumorcam.errors import TumorcamError

    folder, _, _ = nnunet_model
    other = tmp_path / TRAINER_FOLDER
    shutil.copytree(folder, other)
    checkpoint = torch.load(folder / "fold_0" / "checkpoint_final.pth", weights_only=False)
    checkpoint["init_args"]["callback"] = types.SimpleNamespace(note="pickled object")
    torch.save(checkpoint, other / "fold_0" / "checkpoint_final.pth")
    with pytest.raises(TumorcamError, match="trust_checkpoint") as refused:
        tumorcam.nnunet.load(other)
    assert refused.value.param == "trust_checkpoint" and "types.SimpleNamespace" in str(refused.value)
    assert len(tumorcam.nnunet.load(other, trust_checkpoint=True).networks) == 1


def test_stitched_forward_segments_as_nnunets_predictor(nnunet_model, loaded):
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    folder, files, _ = nnunet_model
    model, volume, properties = loaded
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                perform_everything_on_device=False, device=torch.device("cpu"), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(folder), (0,), "checkpoint_final.pth")
    image, image_properties = SimpleITKIO().read_images(files)
    theirs = predictor.predict_single_npy_array(image, image_properties)
    with torch.no_grad():
        logits = model(torch.from_numpy(volume)[None])[0]
    assert len(model.networks) == 1 and volume.shape[1:] != model.patch_size
    ours = convert_predicted_logits_to_segmentation_with_correct_shape(
        logits, model.plans_manager, model.configuration_manager, model.label_manager, properties)
    assert theirs.shape == ours.shape == image.shape[1:]
    assert (theirs > 0).sum() > 0, "the trained model segments nothing"
    assert np.mean(theirs == ours) > 0.9999


def test_mirrored_forward_segments_as_nnunets_mirrored_predictor(nnunet_model):
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    import tumorcam.nnunet

    folder, _, _ = nnunet_model
    model = tumorcam.nnunet.load(folder, mirror=True)
    volume, properties = model.preprocess(_small_case(folder))
    predictor = nnUNetPredictor(use_mirroring=True, perform_everything_on_device=False, device=torch.device("cpu"),
                                allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(folder), (0,), "checkpoint_final.pth")
    theirs = predictor.predict_logits_from_preprocessed_data(torch.from_numpy(volume)).float()
    with torch.no_grad():
        ours = model(torch.from_numpy(volume)[None])[0]
    segmentations = [convert_predicted_logits_to_segmentation_with_correct_shape(
        logits, model.plans_manager, model.configuration_manager, model.label_manager, properties)
        for logits in (theirs, ours)]
    assert np.mean(segmentations[0] == segmentations[1]) > 0.999  # nnU-Net accumulates its logits in fp16
    result = model.explain(volume, "edema")
    assert result.heatmap.shape == volume.shape[1:] and result.heatmap.max() == pytest.approx(1.0)


def test_gradcam_on_one_tile_equals_captum(loaded):
    from captum.attr import LayerGradCam

    from tumorcam.explain.maps import normalize, upsample
    from tumorcam.explain.methods import METHODS, Options
    from tumorcam.nnunet.explain import predicted_region, tile_explanation

    model, volume, _ = loaded
    network, channel = model.networks[0], model.channel("edema")
    tile = torch.from_numpy(volume[(slice(None), *(slice(0, p) for p in model.patch_size))])[None]
    layer = network.decoder.stages[-1]
    target = lambda logits, masks: predicted_region(logits, masks, channel=channel, regions=False)  # noqa: E731
    ours = tile_explanation(network, METHODS["gradcam"], target, layer, tile, channel=channel, options=Options())

    def scalar(x):
        logits = network(x)
        return (predicted_region(logits.detach(), None, channel=channel, regions=False) * logits).flatten(1).sum(1)

    direct = LayerGradCam(scalar, layer).attribute(tile, relu_attributions=True)
    with torch.no_grad():
        logits = network(tile)
    assert torch.allclose(ours[:, :-1], logits, atol=1e-5)
    expected = normalize(upsample(direct.detach(), model.patch_size))
    assert expected.max() > 0
    assert torch.allclose(normalize(ours[:, -1]), expected, atol=1e-4)


def test_stitched_map_has_no_tile_seams(loaded):
    import tumorcam
    from tumorcam.nnunet.explain import predicted_region
    from tumorcam.nnunet.sliding import tiles

    model, volume, _ = loaded
    result = model.explain(volume, "edema")
    assert result.heatmap.shape == volume.shape[1:] and result.label == "edema"
    assert result.layer.startswith("decoder.stages.1") and result.heatmap.max() == pytest.approx(1.0)
    borders = [set() for _ in model.patch_size]
    for slicer in tiles(volume.shape[1:], model.patch_size):
        for axis, window in enumerate(slicer[1:]):
            borders[axis].update({window.start - 1, window.stop - 1} - {-1, volume.shape[1 + axis] - 1})
    assert all(borders), "the case must span several tiles in every axis"
    for axis, planes in enumerate(borders):  # the mean |step| across a tile border vs across its neighbours
        steps = np.abs(np.diff(result.heatmap, axis=axis)).mean(axis=tuple(a for a in range(3) if a != axis))
        for k in sorted(planes):
            assert steps[k] <= 2 * max(steps[k - 1], steps[min(k + 1, len(steps) - 1)]) + 1e-3, (axis, k, steps)
    network = model.networks[0]
    assert model.stride == (4, 4, 4)
    multiple = [int(np.ceil(s / 4) * 4) for s in volume.shape[1:]]
    padding = [p for s, m in zip(reversed(volume.shape[1:]), reversed(multiple)) for p in (0, m - s)]
    whole = torch.nn.functional.pad(torch.from_numpy(volume)[None], padding)
    channel = model.channel("edema")
    one_pass = tumorcam.explain(
        network, whole, layer=result.layer, channel=channel,
        target=lambda logits, masks: predicted_region(logits, masks, channel=channel, regions=False),
    )[0][tuple(slice(0, s) for s in volume.shape[1:])].numpy()
    model.one_pass = True  # the model's own one pass is that: the network on the padded volume, cropped
    try:
        own = model.explain(volume, "edema", layer=result.layer)
        with torch.no_grad():
            np.testing.assert_allclose(model(torch.from_numpy(volume)[None])[0].numpy(),
                                       network(whole)[0][(slice(None), *(slice(0, s) for s in volume.shape[1:]))],
                                       atol=1e-4)
    finally:
        model.one_pass = False
    np.testing.assert_allclose(own.heatmap, one_pass, atol=1e-4)
    correlation = np.corrcoef(result.heatmap.ravel(), one_pass.ravel())[0, 1]
    print(f"stitched vs one-pass correlation {correlation:.3f}")
    assert correlation > 0.8, correlation


def test_map_on_the_raw_grid_has_the_raw_shape_and_affine(nnunet_model, loaded, tmp_path):
    import nibabel as nib

    import tumorcam.nnunet

    _, files, _ = nnunet_model
    model, volume, properties = loaded
    heatmap = np.exp(-sum((np.indices(volume.shape[1:])[a] - volume.shape[1 + a] / 2) ** 2 for a in range(3)) / 20)
    raw = nib.load(files[0])
    written = tumorcam.nnunet.write_map(model, heatmap, properties, files[0], tmp_path / "map.nii.gz")
    image = nib.load(tmp_path / "map.nii.gz")
    assert image.shape == raw.shape == written.shape
    np.testing.assert_allclose(image.affine, raw.affine, atol=1e-5)
    assert 0.0 <= written.min() and written.max() <= 1.0
    peak = np.unravel_index(np.argmax(written), written.shape)
    centre_world = raw.affine @ [*peak, 1]
    brain = np.argwhere(np.asarray(raw.dataobj) > 0)  # the blob's centre is the centre of the cropped head
    box_centre = raw.affine @ [*((brain.min(0) + brain.max(0)) / 2), 1]
    assert np.linalg.norm(centre_world[:3] - box_centre[:3]) < 3.0  # mm


def _small_case(folder) -> list[str]:
    """The channel files of training case TCAM_000 of the raw dataset (one tile)."""
    images = folder.parents[2] / "raw" / DATASET / "imagesTr"
    return [str(images / f"TCAM_000_{channel:04d}.nii.gz") for channel in range(CHANNELS)]


def test_cli_writes_the_map_on_the_raw_grid(nnunet_model, tmp_path, capsys):
    import nibabel as nib
    from conftest import run_cli

    folder, _, _ = nnunet_model
    files = _small_case(folder)
    args = ["explain", "--nnunet", str(folder), "--label", "enhancing", "--out", str(tmp_path), "--device", "cpu"]
    code, out, err = run_cli([*args, *(item for f in files for item in ("--image", f))], capsys)
    assert code in (0, None), err
    assert "gradcam of enhancing (channel 2), fold(s) 0, at layer decoder.stages.1" in out
    written = nib.load(tmp_path / "TCAM_000_gradcam_enhancing.nii.gz")
    raw = nib.load(files[0])
    assert written.shape == raw.shape and np.allclose(written.affine, raw.affine)
    tiled = np.asarray(written.dataobj)
    code, out, err = run_cli([*args, "--mirror", "--one-pass", "--per-fold",
                              *(item for f in files for item in ("--image", f))], capsys)
    assert code in (0, None), err
    assert "tile by tile" not in out and "mirrored, one pass" in out and "_fold0.nii.gz" in out
    other = np.asarray(nib.load(tmp_path / "TCAM_000_gradcam_enhancing.nii.gz").dataobj)
    assert other.shape == raw.shape and not np.allclose(other, tiled)  # another computation, same grid
    fold = np.asarray(nib.load(tmp_path / "TCAM_000_gradcam_enhancing_fold0.nii.gz").dataobj)
    np.testing.assert_allclose(fold, other, atol=1e-6)  # one fold: its map is the mean
    code, _, err = run_cli(["explain", "--mirror", "--out", str(tmp_path)], capsys)
    assert code == 2 and "--nnunet:" in err and "mirror" in err


def test_cli_errors_name_the_flags(nnunet_model, tmp_path, capsys):
    from conftest import run_cli

    folder, _, _ = nnunet_model
    files = _small_case(folder)
    images = [item for f in files for item in ("--image", f)]
    other = tmp_path / TRAINER_FOLDER
    shutil.copytree(folder, other)
    checkpoint = torch.load(folder / "fold_0" / "checkpoint_final.pth", weights_only=False)
    checkpoint["trainer_name"] = types.SimpleNamespace(name="nnUNetTrainer")
    torch.save(checkpoint, other / "fold_0" / "checkpoint_final.pth")
    code, _, err = run_cli(["explain", "--nnunet", str(other), *images, "--out", str(tmp_path)], capsys)
    assert code == 2 and "--trust-checkpoint:" in err
    code, _, err = run_cli(["explain", "--nnunet", str(folder), *images, "--out", str(tmp_path), "--label", "tumour"],
                           capsys)
    assert code == 2 and "--label: unknown label 'tumour'" in err
    code, _, err = run_cli(["explain", "--nnunet", str(tmp_path), *images, "--out", str(tmp_path)], capsys)
    assert code == 2 and "--nnunet: " in err and "plans.json" in err
    code, _, err = run_cli(["explain", "--label", "edema", *images, "--out", str(tmp_path)], capsys)
    assert code == 2 and "--nnunet" in err


def test_docs_options_are_the_commands(capsys):
    from pathlib import Path

    from conftest import run_cli

    doc = (Path(__file__).resolve().parents[1] / "docs" / "nnunet.md").read_text()
    code, help_text, _ = run_cli(["explain", "--help"], capsys)
    assert code in (0, None)
    others = {"--verify_dataset_integrity", "--standalone", "--nproc_per_node", "--no-python"}  # nnU-Net's, torchrun's
    for option in sorted(set(re.findall(r"--[a-z][a-z_-]+", doc)) - others):
        assert option in help_text, option


def test_tumorcam_explain_runs_an_nnunet_model_tile_by_tile(loaded):
    import tumorcam
    from tumorcam.errors import TumorcamError
    from tumorcam.nnunet import LabelOutput

    model, volume, _ = loaded
    small = np.ascontiguousarray(volume[:, :20, :44, :28])  # two tiles along the second axis
    scored = LabelOutput(model, "edema")
    x = torch.from_numpy(small)[None]
    maps, layer = tumorcam.explain.explain_at(scored, x, channel=scored.channel)
    result = model.explain(small, "edema")
    assert layer == result.layer  # not the last tile's hook on the whole forward: the stitched tile maps
    np.testing.assert_allclose(maps[0].numpy(), result.heatmap, atol=1e-6)
    # ground-truth masks travel with the tiles: the stitched prediction as the mask gives (almost) the same map
    region = torch.from_numpy(model.segmentation(result.logits) == model.label_manager.all_labels[result.channel])
    masked = tumorcam.explain(scored, x, target="gt-region", masks=region[None, None], channel=scored.channel)
    assert np.corrcoef(masked[0].numpy().ravel(), result.heatmap.ravel())[0, 1] > 0.95
    with pytest.raises(TumorcamError, match="once per tile"):
        tumorcam.explain_components(scored, x, channel=scored.channel)


def test_sanity_cascade_randomises_every_fold_and_every_parameter(nnunet_model):
    import tumorcam.nnunet
    from tumorcam.evaluate.sanity import cascade_stages, stage_modules

    model = tumorcam.nnunet.load(nnunet_model[0], folds=(0, 0))
    stages = cascade_stages(model)
    assert stages[0] == "networks.*.decoder.seg_layers" and stages[-1] == "networks.*.encoder.stages.0"
    covered = set()
    for stage in stages:
        modules = stage_modules(model, stage)
        assert len(modules) == 2 and modules[0] is not modules[1], stage  # one per fold
        covered |= {id(p) for module in modules for p in module.parameters()}
    assert covered == {id(p) for p in model.parameters()}  # full randomisation leaves nothing intact
    assert stage_modules(model, "networks.0.decoder.seg_layers") == [model.networks[0].decoder.seg_layers]
    assert stage_modules(model, "networks.*.no_such_layer") == []


def test_one_pass_pads_to_the_stride_and_runs_a_2d_network_on_the_slices():
    from tumorcam.nnunet.sliding import whole

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(2, 3, 3, padding=1)
    volume = torch.randn(2, 5, 10, 7)  # (C, Z, X, Y): a 2-D network's input is one slice
    calls = []

    def run(x):
        calls.append(tuple(x.shape))
        return conv(x)

    with torch.no_grad():
        out = whole(volume, (4, 4), run)
        padded = torch.nn.functional.pad(volume, (0, 1, 0, 2))  # 10 -> 12, 7 -> 8
        expected = torch.stack([conv(padded[:, z][None])[0] for z in range(5)], dim=1)[:, :, :10, :7]
    assert calls == [(5, 2, 12, 8)] and out.shape == (3, 5, 10, 7)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_a_cascade_stage_is_refused_naming_it(nnunet_model, tmp_path):
    import json

    import tumorcam.nnunet
    from tumorcam.errors import TumorcamError

    other = tmp_path / "nnUNetTrainer__nnUNetPlans__3d_cascade_fullres"
    shutil.copytree(nnunet_model[0], other)
    plans = json.loads((other / "plans.json").read_text())
    plans["configurations"]["3d_lowres"] = {"inherits_from": "3d_fullres", "next_stage": "3d_cascade_fullres"}
    plans["configurations"]["3d_cascade_fullres"] = {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}
    (other / "plans.json").write_text(json.dumps(plans))
    checkpoint = torch.load(other / "fold_0" / "checkpoint_final.pth", weights_only=False)
    checkpoint["init_args"]["configuration"] = "3d_cascade_fullres"
    torch.save(checkpoint, other / "fold_0" / "checkpoint_final.pth")
    with pytest.raises(TumorcamError, match="3d_cascade_fullres is a cascade stage .* 3d_lowres") as error:
        tumorcam.nnunet.load(other)
    assert error.value.param == "folder"
