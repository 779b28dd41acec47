"""The figshare `.mat` reader: the real layout (../shared/data), MAT v5, and every bad input."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
from scipy import ndimage

from tumorcam.cli import main
from tumorcam.data.mat import read_cvind, read_mat
from tumorcam.data.synth import mask_border, write_figshare_mat
from tumorcam.errors import TumorcamError


def border_distances(mask: np.ndarray, border: np.ndarray) -> np.ndarray:
    """Distance (pixels) from each 1-based (x = column, y = row) border point to the mask's edge."""
    edge = mask & ~ndimage.binary_erosion(mask)
    to_edge = ndimage.distance_transform_edt(~edge)
    rows = np.clip(np.rint(border[:, 1] - 1).astype(int), 0, mask.shape[0] - 1)
    cols = np.clip(np.rint(border[:, 0] - 1).astype(int), 0, mask.shape[1] - 1)
    return to_edge[rows, cols]


def real_metadata(shared: Path) -> dict[int, dict[str, str]]:
    with open(shared / "metadata_3064.csv", newline="") as f:
        return {int(row["file_id"]): row for row in csv.DictReader(f)}


def test_real_files_pid_label_size_against_metadata(shared_data: Path) -> None:
    metadata = real_metadata(shared_data)
    files = sorted((shared_data / "figshare-mat-layout").glob("*.mat"))
    assert len(files) == 8
    for file in files:
        mat = read_mat(file)
        row = metadata[mat.file_id]
        assert mat.file_id == int(file.stem)
        assert mat.pid == row["pid"]
        assert mat.label == int(row["label"])
        assert mat.image.shape == (int(row["height"]), int(row["width"]))
        assert mat.image.dtype == np.int16
        assert mat.mask.dtype == bool and mat.mask.shape == mat.image.shape
        assert int(mat.mask.sum()) == int(row["mask_pixels"])
    assert read_mat(shared_data / "figshare-mat-layout" / "2500.mat").pid == "MR026175E"
    assert read_mat(shared_data / "figshare-mat-layout" / "1.mat").pid == "100360"


def test_real_256_originals(shared_data: Path) -> None:
    sizes = {f.stem: read_mat(f).image.shape for f in (shared_data / "figshare-mat-layout").glob("*.mat")}
    assert sorted(k for k, s in sizes.items() if s == (256, 256)) == ["1203", "955"]
    assert all(s == (512, 512) for k, s in sizes.items() if k not in ("1203", "955"))


def test_real_orientation_border_on_mask_edge(shared_data: Path) -> None:
    """In display orientation the tumorBorder points (x = column, y = row) lie on the mask's edge;
    in the untransposed (h5py) orientation they would not."""
    for file in sorted((shared_data / "figshare-mat-layout").glob("*.mat")):
        mat = read_mat(file)
        assert mat.border.shape[1] == 2 and len(mat.border) >= 5
        near = border_distances(mat.mask, mat.border)
        assert near.max() <= 2.0, (file.name, near)
        swapped = border_distances(mat.mask, mat.border[:, ::-1])
        assert swapped.mean() > 5 * max(near.mean(), 1.0), file.name


def test_real_cvind(shared_data: Path) -> None:
    folds = read_cvind(shared_data / "cvind.mat")
    metadata = real_metadata(shared_data)
    assert folds.shape == (3064,)
    assert set(folds.tolist()) == {1, 2, 3, 4, 5}
    assert all(folds[i - 1] == int(row["cvind_fold"]) for i, row in metadata.items())


def make_slice(seed: int = 0, size: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """A small int16 image with a bright off-centre, non-symmetric rectangle as its tumour."""
    rng = np.random.default_rng(seed)
    image = rng.integers(100, 400, (size, size)).astype(np.int16)
    mask = np.zeros((size, size), bool)
    mask[5:15, 20:34] = True
    image[mask] += 600
    return image, mask


def test_v73_writer_roundtrip_is_display_oriented(tmp_path: Path) -> None:
    image, mask = make_slice()
    write_figshare_mat(tmp_path / "17.mat", image=image, mask=mask, label=2, pid="MR0042", border=mask_border(mask))
    with h5py.File(tmp_path / "17.mat") as f:  # stored transposed, as MATLAB writes
        assert np.array_equal(f["cjdata/image"][()], image.T)
    mat = read_mat(tmp_path / "17.mat")
    assert np.array_equal(mat.image, image) and np.array_equal(mat.mask, mask)
    assert (mat.label, mat.pid, mat.file_id) == (2, "MR0042", 17)
    assert border_distances(mask, mat.border).max() == 0


def test_v5_file(tmp_path: Path) -> None:
    image, mask = make_slice(1)
    cjdata = {"label": 3.0, "PID": "P77", "image": image, "tumorBorder": mask_border(mask).reshape(1, -1), "tumorMask": mask}
    scipy.io.savemat(tmp_path / "5.mat", {"cjdata": cjdata}, format="5")
    mat = read_mat(tmp_path / "5.mat")
    assert np.array_equal(mat.image, image) and np.array_equal(mat.mask, mask)
    assert (mat.label, mat.pid, mat.file_id) == (3, "P77", 5)


def _good(path: Path, **change) -> Path:
    image, mask = make_slice()
    fields = {"image": image, "mask": mask, "label": 1, "pid": "P1", "border": mask_border(mask)} | change
    write_figshare_mat(path, **fields)
    return path


def _truncated(path: Path) -> Path:
    data = _good(path).read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _header_only(path: Path) -> Path:
    path.write_bytes(_good(path).read_bytes()[:512])
    return path


def _not_mat(path: Path) -> Path:
    path.write_text("this is not a MATLAB file\n")
    return path


def _missing_field(path: Path) -> Path:
    with h5py.File(_good(path), "r+") as f:
        del f["cjdata/tumorMask"]
    return path


def _no_cjdata(path: Path) -> Path:
    scipy.io.savemat(path, {"other": np.ones(3)})
    return path


def _mask_shape(path: Path) -> Path:
    return _good(path, mask=np.zeros((20, 40), bool))


def _mask_values(path: Path) -> Path:
    image, mask = make_slice()
    scipy.io.savemat(path, {"cjdata": {"label": 1.0, "PID": "P1", "image": image, "tumorBorder": np.ones((1, 4)), "tumorMask": mask.astype(np.uint8) * 7}})
    return path


def _nan_image(path: Path) -> Path:
    image, mask = make_slice()
    image = image.astype(np.float64)
    image[3, 3] = np.nan
    scipy.io.savemat(path, {"cjdata": {"label": 1.0, "PID": "P1", "image": image, "tumorBorder": np.ones((1, 4)), "tumorMask": mask}})
    return path


def _constant_image(path: Path) -> Path:
    return _good(path, image=np.full((40, 40), 5, np.int16))


def _bad_label(path: Path) -> Path:
    return _good(path, label=4)


BAD = {
    "truncated": (_truncated, "truncated"),
    "header only": (_header_only, "truncated"),
    "not a MAT file": (_not_mat, "not a MATLAB .mat file"),
    "missing field": (_missing_field, "lacks field(s) tumorMask"),
    "no cjdata": (_no_cjdata, "no `cjdata` struct"),
    "shape mismatch": (_mask_shape, "image/mask shape mismatch"),
    "non-binary mask": (_mask_values, "not binary"),
    "NaN image": (_nan_image, "NaN"),
    "constant image": (_constant_image, "constant"),
    "bad label": (_bad_label, "expected one of 1, 2, 3"),
}


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_file_names_the_file(tmp_path: Path, kind: str) -> None:
    make, expected = BAD[kind]
    path = make(tmp_path / "123.mat")
    with pytest.raises(TumorcamError) as caught:
        read_mat(path)
    message = str(caught.value)
    assert str(path) in message and expected in message and "\n" not in message


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_file_via_cli_is_one_error_line(tmp_path: Path, kind: str, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _good(src / "1.mat")
    bad = BAD[kind][0](src / "2.mat")
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "prepare", str(src), "--out", str(tmp_path / "out"), "--size", "32"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(bad) in err[0] and BAD[kind][1] in err[0]
    assert not (tmp_path / "out").exists()


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TumorcamError, match="nothing.mat: cannot read"):
        read_mat(tmp_path / "nothing.mat")


def test_real_file_copied_reads_the_same(shared_data: Path, tmp_path: Path) -> None:
    """Reading from bytes (the zip path) gives what reading from the file gives."""
    original = shared_data / "figshare-mat-layout" / "955.mat"
    shutil.copy(original, tmp_path / "955.mat")
    a, b = read_mat(tmp_path / "955.mat"), read_mat(original.read_bytes(), name="archive.zip/955.mat")
    assert np.array_equal(a.image, b.image) and a.pid == b.pid and b.file_id == 955
