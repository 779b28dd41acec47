"""`explain_run`, `explain_image` and `tumorcam explain` on a tiny run folder (64x64 blobs, ResNet18 U-Net)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tumorcam.cli import main
from tumorcam.config import Config, ExplainConfig, ModelConfig, TrainConfig
from tumorcam.data.arrays import load_prepared
from tumorcam.errors import TumorcamError
from tumorcam.explain.image import explain_image, read_slice
from tumorcam.explain.run import explain_run
from tumorcam.model import WEIGHTS_FILE, build_model, save_weights

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


def test_bad_requests_fail_with_a_clear_message(run: Path, tmp_path: Path):
    from conftest import write_blob_prepared

    with pytest.raises(TumorcamError, match="--limit and --ids"):
        explain_run(run, limit=2, ids=[11])
    with pytest.raises(TumorcamError, match=r"--ids: file id\(s\) 1 not in the test split"):
        explain_run(run, ids=[11, 1])
    with pytest.raises(TumorcamError, match="--split: unknown split 'tset'"):
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
    assert "2 map file(s) of the test split at 64px" in out
    assert {e["method"] for e in _index(run)["entries"]} == {"random", "hirescam"}


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
    import tumorcam.explain.image as image_module

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
