"""`prepare`: real PNGs (../shared/data), synthetic .mat files, zips (nested too), splits, skip-bad, refusals."""

from __future__ import annotations

import csv
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tumorcam.cli import main
from tumorcam.data.arrays import load_prepared
from tumorcam.data.mat import read_mat
from tumorcam.data.prepare import prepare
from tumorcam.data.synth import write_synthetic
from tumorcam.errors import TumorcamError


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """9 synthetic patients (3 per class) x 2 slices, with cvind.mat."""
    root = tmp_path_factory.mktemp("synth") / "mat"
    write_synthetic(root, patients=9, slices_per_patient=2, seed=1)
    return root


def patients_by_split(data) -> dict[str, set[str]]:
    return {name: {str(data.pids[i]) for i in data.indices(name)} for name in ("train", "val", "test")}


def assert_patient_disjoint(data) -> None:
    groups = patients_by_split(data)
    assert not (groups["train"] & groups["val"]) and not (groups["train"] & groups["test"]) and not (groups["val"] & groups["test"])
    assert sum(len(v) for v in data.splits.values()) == len(data)


def test_png256_official_folds(shared_data: Path, tmp_path: Path) -> None:
    src = shared_data / "figshare-png256"
    manifest = prepare(src, tmp_path / "out", size=256, workers=2)
    data = load_prepared(tmp_path / "out")
    assert len(data) == 2400 and manifest["count"] == 2400
    assert len(set(data.pids.tolist())) == 186 == manifest["patients"]
    assert data.images.dtype == np.float16 and data.images.shape == (2400, 256, 256) and data.masks.dtype == bool
    assert_patient_disjoint(data)
    with open(src / "metadata.csv", newline="") as f:
        rows = {int(r["file_id"]): r for r in csv.DictReader(f)}
    expected = {"train": sorted(i for i, r in rows.items() if r["fold"] in "123"), "val": sorted(i for i, r in rows.items() if r["fold"] == "4"), "test": []}
    assert data.splits == expected
    assert "official folds" in manifest["splits"]["method"]
    assert [int(x) for x in data.labels[:5]] == [int(rows[int(f)]["label"]) for f in data.file_ids[:5]]
    # per-slice max normalisation, display orientation kept: row 0 is the PNG / its max
    first = int(data.file_ids[0])
    png = np.asarray(Image.open(src / "images" / f"{first}.png"), dtype=np.float32)
    assert np.allclose(data.images[0].astype(np.float32), png / png.max(), atol=1e-3)
    assert np.array_equal(data.masks[0], np.asarray(Image.open(src / "masks" / f"{first}.png")) > 0)
    assert np.all(np.asarray(data.images).reshape(2400, -1).max(axis=1) == 1)
    assert sum(c["slices"] for c in manifest["per_class"].values()) == 2400
    assert sum(p["slices"] for p in manifest["per_patient"].values()) == 2400


def test_synthetic_roundtrip(synth_dir: Path, tmp_path: Path) -> None:
    manifest = prepare(synth_dir, tmp_path / "out", size=64, workers=1)
    data = load_prepared(tmp_path / "out")
    assert len(data) == 18 and data.size == 64
    for row, file_id in enumerate(data.file_ids):
        mat = read_mat(synth_dir / f"{file_id}.mat")
        assert int(data.labels[row]) == mat.label and str(data.pids[row]) == mat.pid
        assert data.masks[row].any()
        # the tumour is where the mask says: bright in the prepared image too
        image = data.images[row].astype(np.float32)
        assert image[data.masks[row]].mean() > image[~data.masks[row]].mean() + 0.3
    assert "cvind.mat" in manifest["splits"]["method"]
    assert_patient_disjoint(data)
    assert manifest["per_class"]["glioma"] == {"label": 2, "slices": 6, "patients": 3}
    assert manifest["original_sizes"] == {"256x256": 18}


def test_stratified_split_without_folds(synth_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "no-folds"
    src.mkdir()
    for path in synth_dir.glob("[0-9]*.mat"):
        (src / path.name).symlink_to(path)
    manifest = prepare(src, tmp_path / "out", size=32, seed=4)
    data = load_prepared(tmp_path / "out")
    assert manifest["splits"]["method"].startswith("stratified")
    assert_patient_disjoint(data)
    for label in (1, 2, 3):  # 3 patients per class: round(2.1) = 2 train, round(0.45) = 0 val, 1 test
        rows = np.flatnonzero(data.labels == label)
        split_of = {name: set(data.indices(name).tolist()) for name in ("train", "val", "test")}
        assert sum(r in split_of["train"] for r in rows) == 4 and sum(r in split_of["test"] for r in rows) == 2
    again = prepare(src, tmp_path / "again", size=32, seed=4)
    assert json.loads((tmp_path / "again" / "splits.json").read_text()) == data.splits and again["count"] == 18


def test_zip_and_nested_article_zip_match_folder(synth_dir: Path, tmp_path: Path) -> None:
    prepare(synth_dir, tmp_path / "from-folder", size=32)
    files = sorted(synth_dir.glob("*.mat"), key=lambda p: p.name)
    half = len(files) // 2
    with zipfile.ZipFile(tmp_path / "one.zip", "w", zipfile.ZIP_DEFLATED) as z:
        for f in files:
            z.write(f, f"data/{f.name}")
    parts = []
    for i, chunk in enumerate((files[:half], files[half:])):
        parts.append(tmp_path / f"part{i}.zip")
        with zipfile.ZipFile(parts[-1], "w") as z:
            for f in chunk:
                if f.name != "cvind.mat":
                    z.write(f, f.name)
    with zipfile.ZipFile(tmp_path / "article.zip", "w") as z:
        for part in parts:
            z.write(part, part.name)
        z.write(synth_dir / "cvind.mat", "cvind.mat")
    reference = load_prepared(tmp_path / "from-folder")
    for name, src in (("one", tmp_path / "one.zip"), ("article", tmp_path / "article.zip")):
        manifest = prepare(src, tmp_path / f"from-{name}", size=32)
        data = load_prepared(tmp_path / f"from-{name}")
        assert np.array_equal(data.images, reference.images) and np.array_equal(data.masks, reference.masks)
        assert np.array_equal(data.file_ids, reference.file_ids) and data.splits == reference.splits
        assert "cvind.mat" in manifest["splits"]["method"]
    assert not list(tmp_path.glob(".from-article.nested*"))  # the nested copies are gone


def test_several_zips_as_sources(synth_dir: Path, tmp_path: Path) -> None:
    files = sorted(synth_dir.glob("[0-9]*.mat"))
    zips = []
    for i, chunk in enumerate((files[:9], files[9:])):
        zips.append(tmp_path / f"z{i}.zip")
        with zipfile.ZipFile(zips[-1], "w") as z:
            for f in chunk:
                z.write(f, f.name)
    manifest = prepare(zips, tmp_path / "out", size=32)
    assert manifest["count"] == 18 and manifest["splits"]["method"].startswith("stratified")


def test_skip_bad_lists_reasons(synth_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for path in synth_dir.glob("*.mat"):
        (src / path.name).write_bytes(path.read_bytes())
    (src / "5.mat").write_bytes((src / "5.mat").read_bytes()[:3000])
    (src / "7.mat").write_text("hello")
    with pytest.raises(TumorcamError, match="5.mat: truncated"):
        prepare(src, tmp_path / "strict", size=32)
    assert not (tmp_path / "strict").exists()
    manifest = prepare(src, tmp_path / "out", size=32, skip_bad=True)
    assert manifest["count"] == 16
    skipped = {Path(s["file"]).name: s["reason"] for s in manifest["skipped"]}
    assert set(skipped) == {"5.mat", "7.mat"} and "truncated" in skipped["5.mat"] and "not a MATLAB" in skipped["7.mat"]
    on_disk = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert on_disk["skipped"] == manifest["skipped"]
    assert 5 not in load_prepared(tmp_path / "out").file_ids.tolist()


def test_cli_skip_bad_and_refusal(synth_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for path in list(synth_dir.glob("[0-9]*.mat"))[:4]:
        (src / path.name).symlink_to(path)
    (src / "99.mat").write_text("junk")
    main(["data", "prepare", str(src), "--out", str(tmp_path / "out"), "--size", "32", "--skip-bad"])
    captured = capsys.readouterr()
    assert "prepared 4 slices" in captured.out and "99.mat" in captured.err
    before = (tmp_path / "out" / "images.npy").read_bytes()
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "prepare", str(src), "--out", str(tmp_path / "out"), "--size", "32", "--skip-bad"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --out") and "not empty" in err[0]
    assert (tmp_path / "out" / "images.npy").read_bytes() == before


def test_cli_synth_then_prepare(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["data", "synth", "--out", str(tmp_path / "mat"), "--patients", "3", "--slices-per-patient", "2", "--seed", "2"])
    main(["data", "prepare", str(tmp_path / "mat"), "--out", str(tmp_path / "out"), "--size", "48"])
    out = capsys.readouterr().out
    assert "wrote 6 slices of 3 patients" in out and "prepared 6 slices of 3 patients at 48x48" in out
    assert load_prepared(tmp_path / "out").images.shape == (6, 48, 48)


def test_png_folder_checks(tmp_path: Path) -> None:
    src = tmp_path / "png"
    (src / "images").mkdir(parents=True)
    (src / "masks").mkdir()
    image = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) % 200
    Image.fromarray(image.astype(np.uint8)).save(src / "images" / "1.png")
    Image.fromarray(((image > 150) * 255).astype(np.uint8)).save(src / "masks" / "1.png")
    Image.fromarray(image.astype(np.uint8)).save(src / "images" / "2.png")
    Image.fromarray((image % 3 * 100).astype(np.uint8)).save(src / "masks" / "2.png")  # values 0, 100, 200
    with pytest.raises(TumorcamError, match=r"masks/2.png: mask is not binary"):
        prepare(src, tmp_path / "out", size=32)
    manifest = prepare(src, tmp_path / "out", size=32, skip_bad=True)
    assert manifest["count"] == 1 and manifest["per_class"] == {"unknown": {"label": 0, "slices": 1, "patients": 1}}


def test_refusals(tmp_path: Path) -> None:
    with pytest.raises(TumorcamError, match="no such file or folder"):
        prepare(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TumorcamError, match="no .mat files"):
        prepare(tmp_path / "empty", tmp_path / "out")
    (tmp_path / "bad.zip").write_bytes(b"PK not really")
    with pytest.raises(TumorcamError, match="bad.zip: not a readable zip"):
        prepare(tmp_path / "bad.zip", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_download_folder_prefers_extracted_files(synth_dir: Path, tmp_path: Path) -> None:
    """A download folder holds the zips, cvind.mat and the extracted .mat files: each slice is read once."""
    dest = tmp_path / "dest"
    (dest / "mat").mkdir(parents=True)
    with zipfile.ZipFile(dest / "brainTumorDataPublic_1-18.zip", "w") as z:
        for f in synth_dir.glob("[0-9]*.mat"):
            z.write(f, f.name)
            (dest / "mat" / f.name).symlink_to(f)
    (dest / "cvind.mat").symlink_to(synth_dir / "cvind.mat")
    manifest = prepare(dest, tmp_path / "out", size=32)
    assert manifest["count"] == 18 and manifest["source"]["kind"] == "mat-folder" and "cvind.mat" in manifest["splits"]["method"]
    for f in (dest / "mat").iterdir():
        f.unlink()
    manifest = prepare(dest, tmp_path / "out-zips", size=32)
    assert manifest["count"] == 18 and manifest["source"]["kind"] == "zip-folder" and "cvind.mat" in manifest["splits"]["method"]
