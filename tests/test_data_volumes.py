"""3-D volumes: the synthetic nnU-Net raw set and its known signal, `prepare_volumes` (round trip,
geometry refusals, --skip-bad, region labels, splits), `load_volumes`, and the CLI."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tumorcam.cli import main
from tumorcam.data.nnunet import is_nnunet_raw, read_case, read_dataset, read_nifti
from tumorcam.data.synth_volumes import write_synthetic_volumes
from tumorcam.data.volumes import is_volume_folder, load_volumes, normalize_channel, prepare_volumes, split_cases
from tumorcam.errors import TumorcamError

CASES = [f"TCAM_{i:03d}" for i in range(6)]


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 synthetic cases of 16 x 20 x 12 voxels."""
    return write_synthetic_volumes(tmp_path_factory.mktemp("vol") / "raw", cases=6, size=16, seed=3)


@pytest.fixture(scope="module")
def prepared(raw: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("prep") / "out"
    return out, prepare_volumes(raw, out, size=16, workers=1)


def nearest_exact(volume: np.ndarray, size: int) -> np.ndarray:
    """The voxel whose centre is nearest: source index floor((i + 0.5) * n / size) per axis."""
    index = [np.floor((np.arange(size) + 0.5) * n / size).astype(int) for n in volume.shape]
    return volume[np.ix_(*index)]


def test_synthetic_layout_and_known_signal(raw: Path) -> None:
    assert is_nnunet_raw(raw)
    spec = json.loads((raw / "dataset.json").read_text())
    assert spec["channel_names"] == {"0": "T1", "1": "T1CE", "2": "T2", "3": "FLAIR"} and spec["numTraining"] == 6
    info = read_dataset(raw)
    assert info.cases == CASES and info.channels == ["T1", "T1CE", "T2", "FLAIR"] and info.label_values == [0, 1, 2]
    _, affine, spacing = read_nifti(raw / "imagesTr" / "TCAM_000_0000.nii.gz")
    assert np.allclose(spacing, (1.2, 1.0, 1.5)) and np.all(affine[:3, 3] != 0)
    for case_id in CASES:
        case = read_case(raw, case_id, info)
        assert case.images.shape == (4, 16, 20, 12) and case.label.dtype == np.int16
        head, lesion, core = case.images[0] > 0, case.label > 0, case.label == 2
        edema, brain = case.label == 1, head & ~lesion
        assert core.any() and edema.any()
        t1, t1ce, t2, flair = (case.images[c] for c in range(4))

        def contrast(image: np.ndarray, region: np.ndarray, brain: np.ndarray = brain) -> float:
            return float(image[region].mean() - image[brain].mean())

        assert contrast(flair, lesion) > 0.4 and contrast(flair, edema) > 0.4  # FLAIR: the whole lesion, brightly
        assert contrast(t1ce, core) > 0.5 and abs(contrast(t1ce, edema)) < 0.1  # T1CE: the core only
        assert 0.05 < contrast(t2, lesion) < 0.3  # T2: weakly
        assert abs(contrast(t1, lesion)) < 0.1  # T1: nothing
    again = read_case(write_synthetic_volumes(raw.parent / "again", cases=1, size=16, seed=3), "TCAM_000")
    first = read_case(raw, "TCAM_000", info)
    assert np.array_equal(again.images, first.images) and np.array_equal(again.label, first.label)


def test_roundtrip(raw: Path, prepared: tuple[Path, dict]) -> None:
    out, manifest = prepared
    data = load_volumes(out)
    assert is_volume_folder(out) and not is_volume_folder(raw)
    assert data.images.shape == (6, 4, 16, 16, 16) and data.images.dtype == np.float16
    assert data.masks.shape == (6, 16, 16, 16) and data.masks.dtype == bool
    assert data.channels == ["T1", "T1CE", "T2", "FLAIR"] and data.size == 16 and len(data) == 6
    images = np.asarray(data.images, dtype=np.float32)
    assert images.min() >= 0 and images.max() <= 1 and images.reshape(6, 4, -1).max(axis=2).min() > 0.9
    assert data.case_ids.tolist() == CASES
    for row, case_id in enumerate(CASES):
        written = nib.load(raw / "imagesTr" / f"{case_id}_0000.nii.gz")
        assert np.array_equal(data.affines[row], written.affine) and data.shapes[row].tolist() == [16, 20, 12]
        label = np.asarray(nib.load(raw / "labelsTr" / f"{case_id}.nii.gz").dataobj)
        assert np.array_equal(data.masks[row], nearest_exact(label > 0, 16))
    assert sorted(c for ids in data.splits.values() for c in ids) == CASES
    assert sorted(np.concatenate([data.indices(s) for s in ("train", "val", "test")]).tolist()) == list(range(6))
    assert [len(data.splits[s]) for s in ("train", "val", "test")] == [4, 1, 1]
    assert manifest["kind"] == "volumes" and manifest["format"] == "nnunet-raw" and manifest["count"] == manifest["cases"] == 6
    assert manifest["region"] == {"rule": "label > 0", "labels": [1, 2]} and manifest["skipped"] == []
    assert manifest["labels"] == {"background": 0, "edema": 1, "enhancing": 2} and manifest["size"] == 16
    assert json.loads((out / "manifest.json").read_text())["channels"] == data.channels
    x, m = data.tensors(data.indices("train"))
    assert tuple(x.shape) == (4, 4, 16, 16, 16) and tuple(m.shape) == (4, 1, 16, 16, 16) and str(x.dtype) == "torch.float32"
    flair = images[:, 3]
    assert flair[data.masks].mean() > flair[~data.masks & (flair > 0)].mean() + 0.3
    with pytest.raises(TumorcamError, match="split: unknown split 'dev'"):
        data.indices("dev")


def test_pool_matches_serial(raw: Path, prepared: tuple[Path, dict], tmp_path: Path) -> None:
    prepare_volumes(raw, tmp_path / "pool", size=16, workers=2)
    serial, pooled = load_volumes(prepared[0]), load_volumes(tmp_path / "pool")
    assert np.array_equal(serial.images, pooled.images) and np.array_equal(serial.masks, pooled.masks)
    assert serial.splits == pooled.splits


def test_normalization() -> None:
    channel = np.zeros((10, 10, 10), np.float32)
    channel[:, :, 5:] = np.arange(500, dtype=np.float32).reshape(10, 10, 5) + 1
    scaled = normalize_channel(channel, Path("x.nii.gz"))
    lo, hi = np.percentile(channel[channel != 0], (0.5, 99.5))
    assert scaled.min() == 0 and scaled.max() == 1 and np.all(scaled[:, :, :5] == 0)
    assert np.isclose(scaled[5, 5, 7], (channel[5, 5, 7] - lo) / (hi - lo)) and channel[5, 5, 7] == 278
    with pytest.raises(TumorcamError, match=r"^x.nii.gz: every voxel is 0"):
        normalize_channel(np.zeros((2, 2, 2), np.float32), Path("x.nii.gz"))


def test_splits() -> None:
    assert [len(split_cases([f"c{i}" for i in range(3)], 0)[s]) for s in ("train", "val", "test")] == [1, 1, 1]
    assert [len(split_cases([f"c{i}" for i in range(24)], 0)[s]) for s in ("train", "val", "test")] == [16, 4, 4]
    assert split_cases(["a", "b"], 0)["val"] == [] and split_cases(["a"], 0) == {"train": ["a"], "val": [], "test": []}
    assert split_cases(CASES, 1) == split_cases(list(reversed(CASES)), 1) != split_cases(CASES, 2)


def _save(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(array, affine), path)


def _rewrite(path: Path, change: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]) -> None:
    image = nib.load(path)
    array, affine = change(np.asarray(image.dataobj).copy(), image.affine.copy())
    _save(path, array, affine)


def _shift(affine: np.ndarray) -> np.ndarray:
    affine[:3, 3] += 2.0
    return affine


def _with_nan(array: np.ndarray) -> np.ndarray:
    array[0, 0, 0] = np.nan
    return array


def _label_seven(array: np.ndarray) -> np.ndarray:
    array[0, 0, 0] = 7
    return array


# (case, file under the raw folder, how it is broken, words in the message)
BREAKAGES = {
    "shape": ("TCAM_000", "imagesTr/TCAM_000_0002.nii.gz", lambda p: _rewrite(p, lambda a, f: (a[:, :, :-1], f)), "shape (16, 20, 11) differs"),
    "affine": ("TCAM_001", "imagesTr/TCAM_001_0001.nii.gz", lambda p: _rewrite(p, lambda a, f: (a, _shift(f))), "affine (origin/direction) differs"),
    "spacing": ("TCAM_002", "labelsTr/TCAM_002.nii.gz", lambda p: _rewrite(p, lambda a, f: (a, f @ np.diag([1.1, 1, 1, 1]))), "spacing (1.32, 1, 1.5) differs"),
    "channel": ("TCAM_003", "imagesTr/TCAM_003_0003.nii.gz", lambda p: p.unlink(), "missing channel 3 (FLAIR)"),
    "label": ("TCAM_004", "labelsTr/TCAM_004.nii.gz", lambda p: p.unlink(), "label missing"),
    "value": ("TCAM_005", "labelsTr/TCAM_005.nii.gz", lambda p: _rewrite(p, lambda a, f: (_label_seven(a), f)), "label values [7] are not in dataset.json"),
}
MORE_BREAKAGES = {
    "nan": ("TCAM_000", "imagesTr/TCAM_000_0001.nii.gz", lambda p: _rewrite(p, lambda a, f: (_with_nan(a), f)), "1 NaN or infinite values"),
    "not-3d": ("TCAM_000", "imagesTr/TCAM_000_0000.nii.gz", lambda p: _rewrite(p, lambda a, f: (np.stack([a, a], -1), f)), "not 3-D (shape (16, 20, 12, 2))"),
    "truncated": ("TCAM_000", "labelsTr/TCAM_000.nii.gz", lambda p: p.write_bytes(p.read_bytes()[:200]), "unreadable NIfTI file"),
}


def _broken_copy(raw: Path, where: Path, names: list[str], table: dict) -> Path:
    shutil.copytree(raw, where)
    for name in names:
        _, relative, breaker, _ = table[name]
        breaker(where / relative)
    return where


@pytest.mark.parametrize("name", [*BREAKAGES, *MORE_BREAKAGES])
def test_bad_case_is_one_line_naming_the_file(raw: Path, tmp_path: Path, name: str) -> None:
    table = BREAKAGES if name in BREAKAGES else MORE_BREAKAGES
    src = _broken_copy(raw, tmp_path / "raw", [name], table)
    _, relative, _, words = table[name]
    with pytest.raises(TumorcamError) as caught:
        prepare_volumes(src, tmp_path / "out", size=16, workers=1)
    message = str(caught.value)
    assert message.startswith(str(src / relative) + ": ") and words in message and "\n" not in message
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir()] == ["raw"]


def test_skip_bad_lists_each_case(raw: Path, tmp_path: Path) -> None:
    src = _broken_copy(raw, tmp_path / "raw", list(BREAKAGES)[1:], BREAKAGES)  # all but the first case broken
    _rewrite(src / "labelsTr" / "TCAM_000.nii.gz", lambda a, f: (np.zeros_like(a), f))  # and that one has no lesion
    manifest = prepare_volumes(src, tmp_path / "out", size=16, skip_bad=True, workers=1)
    assert manifest["count"] == 1 and manifest["empty_region"] == ["TCAM_000"] and load_volumes(tmp_path / "out").case_ids.tolist() == ["TCAM_000"]
    reasons = {item["case"]: item["reason"] for item in manifest["skipped"]}
    assert list(reasons) == CASES[1:]
    for case, relative, _, words in list(BREAKAGES.values())[1:]:
        assert reasons[case].startswith(str(src / relative)) and words in reasons[case]
    assert load_volumes(tmp_path / "out").images.shape == (1, 4, 16, 16, 16)
    assert json.loads((tmp_path / "out" / "splits.json").read_text()) == {"train": ["TCAM_000"], "val": [], "test": []}


def test_region_labels_and_refusals(raw: Path, tmp_path: Path) -> None:
    manifest = prepare_volumes(raw, tmp_path / "core", size=12, region_labels=[2], workers=1)
    data = load_volumes(tmp_path / "core")
    assert manifest["region"] == {"rule": "label in [2]", "labels": [2]}
    for row, case_id in enumerate(CASES):
        label = np.asarray(nib.load(raw / "labelsTr" / f"{case_id}.nii.gz").dataobj)
        assert np.array_equal(data.masks[row], nearest_exact(label == 2, 12))
    for labels, words in (([5], r"region_labels: \[5\] not in .*dataset.json labels \(background=0, edema=1, enhancing=2\)"),
                          ([0], "region_labels: 0 is the background")):
        with pytest.raises(TumorcamError, match=words):
            prepare_volumes(raw, tmp_path / "never", region_labels=labels, workers=1)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(TumorcamError, match="^out .*full: exists and is not empty"):
        prepare_volumes(raw, tmp_path / "full", workers=1)
    with pytest.raises(TumorcamError, match="^out .*full: exists and is not empty"):
        write_synthetic_volumes(tmp_path / "full")
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"] and not (tmp_path / "never").exists()
    (tmp_path / "core" / "splits.json").unlink()
    with pytest.raises(TumorcamError, match=r"^data .*core: not a prepared volume folder \(missing splits.json\)"):
        load_volumes(tmp_path / "core")


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["data", "synth", "--volumes", "--out", str(tmp_path / "raw"), "--cases", "3", "--size", "16", "--seed", "1"])
    main(["data", "prepare", str(tmp_path / "raw"), "--out", str(tmp_path / "out"), "--size", "12", "--region-labels", "1,2", "--workers", "1"])
    out = capsys.readouterr().out
    assert "wrote 3 synthetic volumes (T1, T1CE, T2, FLAIR + labels) in the nnU-Net raw layout" in out
    assert "prepared 3 volumes (T1, T1CE, T2, FLAIR) at 12x12x12" in out and "region: label in [1, 2]" in out
    assert "splits (seeded shuffle of the cases, seed 0, 70/15/15): train 1 cases, val 1 cases, test 1 cases" in out
    assert load_volumes(tmp_path / "out").images.shape == (3, 4, 12, 12, 12)
    (tmp_path / "raw" / "labelsTr" / "TCAM_001.nii.gz").unlink()
    bad = [
        (["data", "synth", "--out", str(tmp_path / "s"), "--cases", "3"], "error: --cases: only with --volumes"),
        (["data", "synth", "--volumes", "--out", str(tmp_path / "s"), "--patients", "3"], "error: --patients: only for slices"),
        (["data", "prepare", str(tmp_path / "raw"), "--out", str(tmp_path / "o"), "--region-labels", "a,b"], "error: --region-labels 'a,b': give label values"),
        (["data", "prepare", str(tmp_path / "raw"), "--out", str(tmp_path / "o"), "--workers", "1"],
         f"error: {tmp_path / 'raw' / 'labelsTr' / 'TCAM_001.nii.gz'}: label missing for case TCAM_001"),
        (["data", "prepare", str(tmp_path / "raw"), str(tmp_path / "raw"), "--out", str(tmp_path / "o")], "error: SRC: an nnU-Net raw folder is prepared on its own"),
    ]
    for args, line in bad:
        with pytest.raises(SystemExit) as stop:
            main(args)
        err = capsys.readouterr().err.strip().splitlines()
        assert stop.value.code == 2 and len(err) == 1 and err[0].startswith(line), (args, err)
    assert not (tmp_path / "s").exists() and not (tmp_path / "o").exists()
    main(["data", "prepare", str(tmp_path / "raw"), "--out", str(tmp_path / "o"), "--size", "12", "--skip-bad", "--workers", "1"])
    captured = capsys.readouterr()
    assert "prepared 2 volumes" in captured.out and "skipped 1 bad case(s)" in captured.err and "TCAM_001.nii.gz: label missing" in captured.err


def test_dataset_json_refusals(tmp_path: Path) -> None:
    root = tmp_path / "raw"
    (root / "imagesTr").mkdir(parents=True)
    (root / "imagesTr" / "A_0000.nii.gz").write_bytes(b"")
    good = {"channel_names": {"0": "T1"}, "labels": {"background": 0, "tumor": 1}, "numTraining": 1}
    for change, words in (
        ({"channel_names": {"0": "T1", "2": "T2"}}, "'channel_names' keys must be \"0\"..\"1\""),
        ({"labels": {"background": 0, "tumor": "one"}}, "label 'tumor' must be an integer"),
        ({"file_ending": ".mha"}, "'file_ending' '.mha': only NIfTI (.nii.gz, .nii) is read"),
    ):
        (root / "dataset.json").write_text(json.dumps({**good, **change}))
        with pytest.raises(TumorcamError) as caught:
            read_dataset(root)
        assert str(caught.value).startswith(f"{root / 'dataset.json'}: ") and words in str(caught.value)
    (root / "dataset.json").write_text("{not json")
    with pytest.raises(TumorcamError, match="dataset.json: not readable JSON"):
        read_dataset(root)
    (root / "dataset.json").write_text(json.dumps(good))
    (root / "imagesTr" / "B.nii.gz").write_bytes(b"")
    with pytest.raises(TumorcamError, match=r"imagesTr/B.nii.gz: not named CASE_XXXX.nii.gz"):
        read_dataset(root)
    with pytest.raises(TumorcamError, match="not an nnU-Net raw folder"):
        prepare_volumes(tmp_path, tmp_path / "out")


def _z_scored_raw(root: Path, tumours: dict[str, tuple[int, float]], background: float = -0.8) -> Path:
    """An nnU-Net raw folder like the user's BraTS cases: FLAIR and T1CE z-scored, a constant non-zero
    `background` outside a brain ball (radius 11 of a 32^3 volume, 17% of it), tissue N(0, 0.5) (so the
    background value lies inside the tissue's range), and per case a FLAIR-bright tumour ball of
    (radius, brightness) at the brain's centre; T1CE shows no tumour."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "FLAIR", "1": "T1CE"},
                                                   "labels": {"background": 0, "tumour": 1}, "numTraining": len(tumours),
                                                   "file_ending": ".nii.gz"}))
    grid = np.stack(np.meshgrid(*[np.arange(32)] * 3, indexing="ij"))
    distance = np.sqrt(((grid - 15.5) ** 2).sum(0))
    brain = distance < 11
    for index, (case, (radius, brightness)) in enumerate(tumours.items()):
        rng = np.random.default_rng(index)
        tumour = distance < radius
        for channel in range(2):
            volume = np.where(brain, rng.normal(0.0, 0.5, brain.shape), background).astype(np.float32)
            if channel == 0:
                volume[tumour] = rng.normal(brightness, 0.3, int(tumour.sum()))
            _save(root / "imagesTr" / f"{case}_{channel:04d}.nii.gz", volume, np.eye(4))
        _save(root / "labelsTr" / f"{case}.nii.gz", tumour.astype(np.uint8), np.eye(4))
    return root


def test_foreground_normalization_of_z_scored_cases(tmp_path: Path) -> None:
    """The background (-0.8, z-scored) is left out of the percentiles and maps to 0; a tumour of 4% of
    the volume (26% of the brain) clips at most 2% of its voxels, where the percentiles of every voxel
    (the old rule, since -0.8 is not 0) clipped a tenth of them; only the case with a tiny, very
    bright tumour is warned about."""
    from tumorcam.data.volumes import background_values, foreground_mask, normalize_case
    from tumorcam.errors import TumorcamWarning

    raw = _z_scored_raw(tmp_path / "raw", {"Z_000": (7, 2.0), "Z_001": (2, 6.0)})
    case = read_case(raw, "Z_000")
    brain = case.images[1] != np.float32(-0.8)
    tumour = case.label > 0
    assert 0.03 < tumour.mean() < 0.05 and background_values(case.images) == pytest.approx([-0.8, -0.8])
    assert np.array_equal(foreground_mask(case.images), brain)
    scaled, background, clipped = normalize_case(case.images, ["f0", "f1"], tumour)
    flair = case.images[0]
    lo, hi = np.percentile(flair[brain], (0.5, 99.5))
    assert np.all(scaled[:, ~brain] == 0) and scaled.min() == 0 and scaled.max() == 1
    np.testing.assert_allclose(scaled[0][brain], (np.clip(flair[brain], lo, hi) - lo) / (hi - lo), rtol=1e-6)
    assert clipped[0] == pytest.approx(float((flair[tumour] > hi).mean())) and clipped[0] <= 0.02
    old_hi = np.percentile(flair[flair != 0], 99.5)  # the old rule: every nonzero voxel, the background too
    assert (flair[tumour] > old_hi).mean() > 0.1

    with pytest.warns(TumorcamWarning) as caught:
        manifest = prepare_volumes(raw, tmp_path / "out", size=16, workers=1)
    messages = [str(w.message) for w in caught if issubclass(w.category, TumorcamWarning)]
    assert len(messages) == 1 and re.fullmatch(
        r"1 of 2 case\(s\) clip more than 10% of the tumour's voxels \(label > 0\) at 1 in some channel \(above the "
        r"99\.5th percentile of the case's foreground\): case Z_001 FLAIR \d+\.\d%; their contrast within the "
        r"tumour is lost \(every share: the manifest's \"clipped\"\)", messages[0]), messages[0]
    assert manifest["clipped"]["Z_000"]["FLAIR"] == pytest.approx(clipped[0], abs=1e-4)
    assert manifest["clipped"]["Z_001"]["FLAIR"] > 0.5 and manifest["clipped"]["Z_001"]["T1CE"] <= 0.02
    assert manifest["background"]["Z_000"] == pytest.approx([-0.8, -0.8])
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["clipped"] == manifest["clipped"]
    prepared = np.asarray(load_volumes(tmp_path / "out").images, dtype=np.float32)
    assert np.all(prepared[:, :, 0, 0, 0] == 0) and np.all(prepared[:, :, :2] == 0)  # far from the brain: 0


def test_foreground_falls_back_to_every_voxel() -> None:
    from tumorcam.data.volumes import background_values, foreground_mask, normalize_case

    rng = np.random.default_rng(0)
    noisy = rng.normal(size=(2, 8, 8, 8)).astype(np.float32)  # no constant background: every voxel counts
    assert background_values(noisy) == [None, None] and foreground_mask(noisy) is None
    scaled, background, clipped = normalize_case(noisy, ["a", "b"])
    lo, hi = np.percentile(noisy[0], (0.5, 99.5))
    np.testing.assert_allclose(scaled[0], (np.clip(noisy[0], lo, hi) - lo) / (hi - lo), rtol=1e-6)
    assert background == [None, None] and clipped == [0.0, 0.0]
    constant = np.full((1, 8, 8, 8), 3.0, np.float32)  # empty foreground: every voxel, constant, refused
    assert foreground_mask(constant) is None
    with pytest.raises(TumorcamError, match=r"^a: constant intensity 3 over its foreground voxels"):
        normalize_case(constant, ["a"])
    mixed = noisy.copy()
    mixed[1, :2] = 0.0  # one channel with a zero background, one without: no common background
    assert background_values(mixed)[0] is None and foreground_mask(mixed) is None
