"""`explain_run`, the slice sample, the weights hash, `load_inputs`' refusal of maps of other slices,
`explain_image` and `tumorcam explain` on a tiny run folder (64x64 blobs, ResNet18 U-Net)."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from tumorcam.cli import main
from tumorcam.config import Config, ExplainConfig, ModelConfig, TrainConfig
from tumorcam.data.arrays import load_prepared
from tumorcam.errors import TumorcamError
from tumorcam.runs.inputs import check_maps, explain_again, load_inputs
from tumorcam.runs.image import explain_image, read_slice
from tumorcam.runs.explain import explain_run, model_sha256, sample_rows
from tumorcam.models.unet import WEIGHTS_FILE, build_model, save_weights

TEST_IDS = [11, 12, 23, 24]  # the blob fixture's test split (patients P010, P011)


@pytest.fixture
def run(tmp_path: Path, blob_prepared: Path) -> Path:
    """A run folder: config.json (64 px, blob data, small explain settings) and a fresh U-Net's weights."""
    folder = tmp_path / "run"
    config = Config(
        preset="demo",
        data=str(blob_prepared),
        model=ModelConfig(encoder="resnet18", encoder_weights="none"),
        train=TrainConfig(size=64, device="cpu", seed=0),
        explain=ExplainConfig(limit=4, methods=["gradcam", "saliency", "random"],
                              targets=["mean-logits", "predicted-region"], batch_size=3, ig_steps=2),
    )
    config.save(folder / "config.json")
    torch.manual_seed(1)  # not train.seed: the "untrained" network must differ from this one
    save_weights(build_model(config.model), folder / WEIGHTS_FILE)
    return folder


def _index(run: Path) -> dict:
    return json.loads((run / "explanations" / "index.json").read_text())


def _maps(run: Path, entry: dict) -> tuple[np.ndarray, np.ndarray]:
    with np.load(run / "explanations" / entry["file"], allow_pickle=False) as npz:
        return npz["maps"], npz["file_ids"]


def _entry(index: dict, **match) -> dict:
    found = [e for e in index["entries"] if all(e[k] == v for k, v in match.items())]
    assert len(found) == 1, (match, index["entries"])
    return found[0]


def test_explain_run_writes_the_index_and_one_npz_per_entry(run: Path, blob_prepared: Path):
    folder = explain_run(run)
    assert folder == run / "explanations"
    index = _index(run)
    assert index["split"] == "test" and index["size"] == 64
    keys = {(e["method"], e["target"], e["layer"], e["model"], e["times_gt"]) for e in index["entries"]}
    assert keys == {
        (method, target, layer, "trained", times_gt)
        for target in ("mean-logits", "predicted-region")
        for method, layer, times_gt in (("gradcam", "decoder.blocks.4", False), ("gradcam", "decoder.blocks.4", True),
                                        ("saliency", "input", False), ("random", "input", False))
    }
    for entry in index["entries"]:
        maps, file_ids = _maps(run, entry)
        assert maps.dtype == np.float16 and maps.shape == (4, 64, 64)
        assert file_ids.dtype == np.int64 and file_ids.tolist() == TEST_IDS
        assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1

    data = load_prepared(blob_prepared)
    rows = [int(np.flatnonzero(data.file_ids == i)[0]) for i in TEST_IDS]
    masks = np.asarray(data.masks[rows])
    plain, _ = _maps(run, _entry(index, method="gradcam", target="mean-logits", times_gt=False))
    times_gt, _ = _maps(run, _entry(index, method="gradcam", target="mean-logits", times_gt=True))
    assert (times_gt[~masks] == 0).all()
    np.testing.assert_array_equal(times_gt[masks], plain[masks])
    assert plain[~masks].max() > 0  # the plain map is not zero outside the mask


def test_a_later_call_keeps_entries_of_the_same_slices_and_drops_others(run: Path):
    explain_run(run)
    random_before, _ = _maps(run, _entry(_index(run), method="random", target="mean-logits"))
    explain_run(run, methods=["random"], batch_size=1)  # same slices: the index keeps the other 6 entries
    index = _index(run)
    assert len(index["entries"]) == 8
    random_after, _ = _maps(run, _entry(index, method="random", target="mean-logits"))
    np.testing.assert_array_equal(random_after, random_before)  # seeded per file id, not per batch

    explain_run(run, ids=[23, 11], methods=["layercam"], targets=["gt-region"], layers=["decoder.blocks.3"])
    index = _index(run)
    assert [(e["method"], e["target"], e["layer"]) for e in index["entries"]] == [("layercam", "gt-region", "decoder.blocks.3")]
    maps, file_ids = _maps(run, index["entries"][0])
    assert file_ids.tolist() == [23, 11] and maps.shape == (2, 64, 64) and maps.max() == 1


def test_untrained_explains_the_seeded_network_before_fine_tuning(run: Path):
    explain_run(run, methods=["gradcam"], targets=["mean-logits"])
    explain_run(run, methods=["gradcam"], targets=["mean-logits"], untrained=True)
    index = _index(run)
    untrained = _entry(index, model="untrained", times_gt=False)
    first, _ = _maps(run, untrained)
    trained, _ = _maps(run, _entry(index, model="trained", times_gt=False))
    assert np.abs(first.astype(np.float32) - trained).max() > 0.1
    explain_run(run, methods=["gradcam"], targets=["mean-logits"], untrained=True)
    again, _ = _maps(run, _entry(_index(run), model="untrained", times_gt=False))
    np.testing.assert_array_equal(first, again)


@pytest.fixture
def many(tmp_path: Path):
    """96 slices: 12 patients of 8 slices, one class each (classes 1, 2, 3 cycle); train holds
    P000..P007 (3 meningioma, 3 glioma, 2 pituitary)."""
    from conftest import write_blob_prepared

    return load_prepared(write_blob_prepared(tmp_path / "many", n=96, size=16))


def _sample(data, **options) -> tuple[list[int], list[str]]:
    rows = sample_rows(data, "train", **{"patients": None, "slices_per_patient": None, **options})
    return np.asarray(data.file_ids[rows]).tolist(), np.asarray(data.pids[rows]).astype(str).tolist()


def _class(pid: str) -> int:
    return 1 + int(pid[1:]) % 3


def test_the_sample_takes_k_evenly_spaced_slices_of_every_patient(many):
    ids, pids = _sample(many, slices_per_patient=3)
    assert ids == sorted(ids) and Counter(pids) == {f"P{p:03d}": 3 for p in range(8)}
    # P000's slices are file ids 1, 13, ..., 85; of 8, K = 3 takes positions floor((2i+1) 8 / 6) = 1, 4, 6
    assert [i for i, p in zip(ids, pids) if p == "P000"] == [13, 49, 73]
    ids, pids = _sample(many, slices_per_patient=2)
    assert [i for i, p in zip(ids, pids) if p == "P003"] == [4 + 2 * 12, 4 + 6 * 12]  # never a patient's first
    ids, _ = _sample(many, slices_per_patient=20)
    assert ids == np.asarray(many.file_ids[many.indices("train")]).tolist()  # K >= n: every slice


def test_the_patients_spread_over_classes_and_the_seed_chooses_them(many):
    chosen = {}
    for seed in range(12):
        _, pids = _sample(many, patients=3, slices_per_patient=1, seed=seed)
        assert len(pids) == 3 and sorted(_class(p) for p in pids) == [1, 2, 3], seed
        chosen[seed] = tuple(sorted(pids))
    assert len(set(chosen.values())) > 3  # not "the first N": the seed picks other patients
    _, pids = _sample(many, patients=6, slices_per_patient=2, seed=1)
    assert Counter(_class(p) for p in set(pids)) == {1: 2, 2: 2, 3: 2} and len(pids) == 12
    _, pids = _sample(many, patients=7, seed=2)  # pituitary has 2 patients: its turn passes to the next class
    assert sorted(Counter(_class(p) for p in set(pids)).values()) == [2, 2, 3] and len(pids) == 7 * 8
    assert len(set(_sample(many, patients=30)[1])) == 8


def test_the_same_seed_gives_the_same_slices_and_another_seed_others(many):
    first = _sample(many, patients=4, slices_per_patient=2, seed=7)
    assert _sample(many, patients=4, slices_per_patient=2, seed=7) == first
    assert any(_sample(many, patients=4, slices_per_patient=2, seed=s) != first for s in (8, 9, 10))


def test_a_limit_keeps_as_many_patients_as_it_can(many):
    ids, pids = _sample(many, slices_per_patient=4, limit=8)
    assert len(ids) == 8 and len(set(pids)) == 8
    assert [i for i, p in zip(ids, pids) if p == "P000"] == [13]  # the first of K = 4 picks: position 1
    _, pids = _sample(many, slices_per_patient=4, limit=12)
    assert sorted(Counter(pids).values()) == [1] * 4 + [2] * 4


def test_the_index_records_the_sample_control_flags_and_the_weights(run: Path):
    explain_run(run, methods=["gradcam", "random", "predicted-mask", "edges"], targets=["predicted-region"],
                patients=1, slices_per_patient=2)
    index = _index(run)
    sha = hashlib.sha256((run / WEIGHTS_FILE).read_bytes()).hexdigest()
    assert index["weights_sha256"] == sha and index["selection"] == "sample"
    assert (index["patients"], index["slices_per_patient"], index["n_patients"], index["n_slices"]) == (1, 2, 1, 2)
    flags = {(e["method"], e["times_gt"]): e["control"] for e in index["entries"]}
    assert flags == {("gradcam", False): False, ("gradcam", True): False, ("random", False): True,
                     ("predicted-mask", False): True, ("edges", False): True}
    assert {e["weights_sha256"] for e in index["entries"]} == {sha}
    _, file_ids = _maps(run, index["entries"][0])
    assert file_ids.tolist() in ([11, 23], [12, 24])  # both slices of one test patient

    explain_run(run, methods=["gradcam"], targets=["predicted-region"], untrained=True, patients=1,
                slices_per_patient=2)
    index = _index(run)
    torch.manual_seed(0)
    untrained_sha = model_sha256(build_model(Config.load(run / "config.json").model))
    assert untrained_sha != sha and index["weights_sha256"] == sha
    assert {e["weights_sha256"] for e in index["entries"] if e["model"] == "untrained"} == {untrained_sha}
    assert len(index["entries"]) == 7  # the trained entries are kept: same slices, same weights

    torch.manual_seed(2)  # "retrained": the trained maps are stale, the untrained ones still hold
    save_weights(build_model(Config.load(run / "config.json").model), run / WEIGHTS_FILE)
    explain_run(run, methods=["random"], targets=["predicted-region"], patients=1, slices_per_patient=2)
    index = _index(run)
    new_sha = hashlib.sha256((run / WEIGHTS_FILE).read_bytes()).hexdigest()
    assert index["weights_sha256"] == new_sha
    assert sorted((e["model"], e["method"], e["times_gt"]) for e in index["entries"]) == [
        ("trained", "random", False), ("untrained", "gradcam", False), ("untrained", "gradcam", True)]


def test_load_inputs_refuses_other_slices_until_explained_again(run: Path, capsys):
    explain_run(run, methods=["random"], targets=["mean-logits"])
    with pytest.raises(TumorcamError, match=r"explain other slices than patients=1 slices_per_patient=1 selects; "
                                            r"make them with `explain_run\(.*patients=1, slices_per_patient=1\)` first"):
        load_inputs(run, device="cpu", with_model=False, patients=1, slices_per_patient=1)
    assert len(_index(run)["entries"]) == 1 and _index(run)["patients"] is None  # loading made nothing
    check = check_maps(run, patients=1, slices_per_patient=1)
    assert check.remake == [{"untrained": False, "methods": ["random"], "targets": ["mean-logits"], "layers": None,
                             "split": "test", "patients": 1, "slices_per_patient": 1}]
    explain_again(run, check)
    inputs = load_inputs(run, device="cpu", with_model=False, patients=1, slices_per_patient=1)
    assert len(inputs.file_ids) == 1 and _index(run)["patients"] == 1
    assert "note:" not in capsys.readouterr().err
    (run / WEIGHTS_FILE).unlink()
    with pytest.raises(TumorcamError, match=r"explain other slices than patients=2 selects, and there is no "
                                            r"trained model \(unet_trained.pth\) to remake them"):
        load_inputs(run, device="cpu", with_model=False, patients=2)
    with pytest.raises(TumorcamError, match="are of the test split, not val, and there is no trained model"):
        load_inputs(run, device="cpu", with_model=False, split="val")
    assert len(load_inputs(run, device="cpu", with_model=False).file_ids) == 1  # no request: the maps as they are


def test_load_inputs_takes_maps_without_a_hash_as_they_are(run: Path, capsys):
    explain_run(run, methods=["random"], targets=["mean-logits"])
    path = run / "explanations" / "index.json"
    index = _index(run)
    for entry in index["entries"]:
        del entry["weights_sha256"], entry["control"]
    path.write_text(json.dumps(index))
    inputs = load_inputs(run, device="cpu", with_model=False)
    assert "record no weights_sha256" in capsys.readouterr().err
    assert [e.control for e in inputs.entries] == [True] and _index(run) == index


def test_bad_requests_fail_with_a_clear_message(run: Path, tmp_path: Path):
    from conftest import write_blob_prepared

    with pytest.raises(TumorcamError, match="limit: not with ids"):
        explain_run(run, limit=2, ids=[11])
    with pytest.raises(TumorcamError, match="patients: not with ids"):
        explain_run(run, patients=1, ids=[11])
    with pytest.raises(TumorcamError, match="slices_per_patient 0: must be at least 1"):
        explain_run(run, slices_per_patient=0)
    with pytest.raises(TumorcamError, match=r"ids: file id\(s\) 1 not in the test split"):
        explain_run(run, ids=[11, 1])
    with pytest.raises(TumorcamError, match="split: unknown split 'tset'"):
        explain_run(run, split="tset")
    no_masks = write_blob_prepared(tmp_path / "no-masks")
    np.save(no_masks / "masks.npy", np.zeros((24, 64, 64), bool), allow_pickle=False)
    with pytest.raises(TumorcamError, match="gt-region: the selected slices of .* have no tumour mask pixels"):
        explain_run(run, data=no_masks, targets=["gt-region"])
    (run / WEIGHTS_FILE).unlink()
    with pytest.raises(TumorcamError, match="no trained model"):
        explain_run(run)
    assert not (run / "explanations").exists()


def _cli(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


@pytest.mark.parametrize(("args", "message"), [
    (["--methods", "gradcm"], "--methods: unknown method 'gradcm' (did you mean gradcam?)"),
    (["--targets", "gt"], "--targets: unknown target 'gt'"),
    (["--layers", "decoder.block.4"], "nearest: decoder.blocks.4"),
    (["--ids", "1,x"], "--ids 1,x: expected comma-separated file ids"),
    (["--data", "nowhere"], "--data nowhere: no such folder"),
    (["--out", "x.png"], "--out: only with --image"),
])
def test_cli_bad_input_gives_one_error_line_and_exit_2(run: Path, capsys, args, message):
    code, out, err = _cli(["explain", str(run), *args], capsys)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err


def test_cli_run_without_a_model_and_unreadable_image(run: Path, tmp_path: Path, capsys):
    bad = tmp_path / "slice.png"
    bad.write_bytes(b"not a png")
    code, _, err = _cli(["explain", str(run), "--image", str(bad)], capsys)
    assert code == 2 and err.startswith(f"error: --image {bad}: not a readable image") and err.count("\n") == 1
    (run / WEIGHTS_FILE).unlink()
    code, _, err = _cli(["explain", str(run)], capsys)
    assert code == 2 and "no trained model" in err and err.count("\n") == 1


def test_cli_writes_maps_and_prints_a_summary(run: Path, capsys):
    main(["explain", str(run), "--methods", "random,hirescam", "--targets", "predicted-region", "--limit", "2"])
    out = capsys.readouterr().out
    assert "2 map file(s) of 2 slice(s) from 2 patient(s) of the test split at 64px" in out
    assert {e["method"] for e in _index(run)["entries"]} == {"random", "hirescam"}
    main(["explain", str(run), "--methods", "random", "--targets", "predicted-region", "--patients", "1",
          "--slices-per-patient", "1"])
    assert "1 map file(s) of 1 slice(s) from 1 patient(s)" in capsys.readouterr().out
    index = _index(run)
    assert (index["patients"], index["slices_per_patient"], index["limit"], index["n_slices"]) == (1, 1, 4, 1)


@pytest.mark.parametrize(("args", "message"), [
    (["--patients", "0"], "--patients 0: must be at least 1"),
    (["--slices-per-patient", "-1"], "--slices-per-patient -1: must be at least 1"),
    (["--ids", "11", "--slices-per-patient", "2"], "--slices-per-patient: not with ids (ids picks exact slices)"),
])
def test_cli_bad_sample_options(run: Path, capsys, args, message):
    code, _, err = _cli(["explain", str(run), *args], capsys)
    assert code == 2 and message in err and err.count("\n") == 1, err


def test_cli_evaluate_passes_the_sample_options_to_the_stages(run: Path, capsys, monkeypatch):
    import tumorcam.cli.evaluate as evaluate_cli

    seen = {}

    def stage(run_dir, data, split, options):
        seen.update(options, split=split)
        return "stub stage"

    monkeypatch.setitem(evaluate_cli.STAGES, "localization", stage)
    main(["evaluate", str(run), "--localization", "--patients", "3", "--slices-per-patient", "2", "--device", "cpu"])
    captured = capsys.readouterr()
    assert "stub stage" in captured.out
    assert "(no index.json); running `tumorcam explain` first" in captured.err  # the maps are made first
    assert (_index(run)["patients"], _index(run)["slices_per_patient"]) == (3, 2)
    assert (seen["patients"], seen["slices_per_patient"], seen["split"]) == (3, 2, "test")
    main(["evaluate", str(run), "--localization", "--device", "cpu"])
    assert seen["patients"] is None and seen["slices_per_patient"] is None


def _write_png(path: Path) -> np.ndarray:
    from PIL import Image

    yy, xx = np.mgrid[:96, :96]
    pixels = (60 + 150 * (((yy - 40) ** 2 + (xx - 55) ** 2) < 150)).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


def test_explain_image_writes_an_overlay_png(run: Path, tmp_path: Path, capsys):
    from PIL import Image

    source = tmp_path / "outside.png"
    pixels = _write_png(source)
    np.testing.assert_array_equal(read_slice(source), pixels)
    out = explain_image(run, source)
    assert out == run / "explanations" / "outside.png"
    with Image.open(out) as img:
        assert img.format == "PNG" and img.width > 600 and img.height > 250
    main(["explain", str(run), "--image", str(source), "--methods", "saliency", "--out", str(tmp_path / "o.png")])
    assert (tmp_path / "o.png").is_file() and "wrote" in capsys.readouterr().out
    with pytest.raises(TumorcamError, match="gt-region: needs a ground-truth mask"):
        explain_image(run, source, target="gt-region")


def test_medical_readers_and_the_message_when_the_extra_is_missing(tmp_path: Path, monkeypatch):
    import tumorcam.runs.image as image_module

    real_import = image_module.importlib.import_module

    def no_medical(name, *args):
        if name in ("pydicom", "nibabel"):
            raise ImportError(name)
        return real_import(name, *args)

    (tmp_path / "a.dcm").write_bytes(b"x")
    (tmp_path / "a.nii.gz").write_bytes(b"x")
    monkeypatch.setattr(image_module.importlib, "import_module", no_medical)
    with pytest.raises(TumorcamError, match=r"DICOM needs pydicom; install it with `pip install 'tumorcam\[medical\]'`"):
        read_slice(tmp_path / "a.dcm")
    with pytest.raises(TumorcamError, match="NIfTI needs nibabel"):
        read_slice(tmp_path / "a.nii.gz")
    with pytest.raises(TumorcamError, match="unknown image type"):
        (tmp_path / "a.txt").write_text("x")
        read_slice(tmp_path / "a.txt")


def test_dicom_slice(tmp_path: Path):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    pixels = np.arange(32 * 48, dtype=np.uint16).reshape(32, 48)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 32, 48, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = 2, 10
    ds.PixelData = pixels.tobytes()
    path = tmp_path / "slice.dcm"
    try:
        ds.save_as(path, enforce_file_format=True)
    except TypeError:  # pydicom 2.x
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.save_as(path, write_like_original=False)
    np.testing.assert_array_equal(read_slice(path), pixels.astype(np.float32) * 2 + 10)
    assert pydicom  # the reader imported it lazily


def test_nifti_volume_gives_its_middle_slice(tmp_path: Path):
    nibabel = pytest.importorskip("nibabel")
    volume = np.random.default_rng(0).random((20, 30, 5)).astype(np.float32)
    path = tmp_path / "vol.nii.gz"
    nibabel.Nifti1Image(volume, np.eye(4)).to_filename(path)
    np.testing.assert_allclose(read_slice(path), np.rot90(volume[..., 2]))
