"""The synthetic generator: exact figshare v7.3 layout, round trip through the reader, class look and place."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from scipy import ndimage

from tumorcam.data.mat import read_cvind, read_mat
from tumorcam.data.synth import write_synthetic
from tumorcam.errors import TumorcamError


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """6 patients (2 of each class) x 3 slices."""
    return write_synthetic(tmp_path_factory.mktemp("synth") / "mat", patients=6, slices_per_patient=3, seed=3)


def test_exact_figshare_layout(synth: list[Path]) -> None:
    assert [p.name for p in synth] == [f"{i}.mat" for i in range(1, 19)]
    for path in synth:
        header = path.read_bytes()[:512]
        assert header.startswith(b"MATLAB 7.3 MAT-file")
        assert header[124:128] == b"\x00\x02IM" and header[128:] == bytes(384)
        with h5py.File(path) as f:
            assert f.userblock_size == 512 and list(f) == ["cjdata"]
            group = f["cjdata"]
            assert sorted(group) == ["PID", "image", "label", "tumorBorder", "tumorMask"]
            assert group.attrs["MATLAB_class"] == b"struct"
            assert group["PID"].dtype == np.uint16 and group["PID"].shape[1] == 1 and group["PID"].attrs["MATLAB_class"] == b"char"
            assert group["label"].shape == (1, 1) and group["label"].dtype == np.float64
            assert group["image"].shape == (256, 256) and group["image"].dtype == np.int16
            assert group["tumorBorder"].shape[0] == 1 and group["tumorBorder"].shape[1] % 2 == 0
            assert group["tumorMask"].dtype == np.uint8 and group["tumorMask"].attrs["MATLAB_class"] == b"logical"
            stored_mask = group["tumorMask"][()]
        assert np.array_equal(read_mat(path).mask, stored_mask.T.astype(bool))  # stored transposed


def test_roundtrip_patients_labels_border(synth: list[Path]) -> None:
    slices = [read_mat(p) for p in synth]
    assert [s.label for s in slices] == [1] * 3 + [2] * 3 + [3] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    assert [s.file_id for s in slices] == list(range(1, 19))
    pids = [s.pid for s in slices]
    assert len(set(pids)) == 6 and all(len(set(pids[i : i + 3])) == 1 for i in range(0, 18, 3))
    for s in slices:
        assert s.image.dtype == np.int16 and s.image.shape == (256, 256)
        assert s.mask.sum() > 50
        assert ndimage.label(s.mask)[1] == 1  # one tumour
        edge = s.mask & ~ndimage.binary_erosion(s.mask, structure=np.ones((3, 3)))  # an outside 8-neighbour
        rows, cols = np.rint(s.border[:, 1] - 1).astype(int), np.rint(s.border[:, 0] - 1).astype(int)
        assert edge[rows, cols].all()


def test_cvind_is_patient_wise(synth: list[Path]) -> None:
    folds = read_cvind(synth[0].parent / "cvind.mat")
    assert folds.shape == (18,)
    assert all(len(set(folds[i : i + 3].tolist())) == 1 for i in range(0, 18, 3))
    assert set(folds.tolist()) <= {1, 2, 3, 4, 5}


def test_tumor_is_brighter_than_all_tissue(synth: list[Path]) -> None:
    """Learnable: the enhancing tumour stands out above (nearly) every non-tumour pixel."""
    for s in (read_mat(p) for p in synth):
        image = s.image.astype(np.float64)
        assert np.percentile(image[s.mask], 90) > np.percentile(image[~s.mask], 99.5)


def test_class_look_and_place(synth: list[Path]) -> None:
    for s in (read_mat(p) for p in synth):
        image = s.image.astype(np.float64)
        head = ndimage.binary_fill_holes(ndimage.gaussian_filter(image, 2) > 0.3 * np.percentile(image, 99))
        head_rows, head_cols = np.nonzero(head)
        center = np.array([head_rows.mean(), head_cols.mean()])
        head_radius = np.sqrt(head.sum() / np.pi)
        rows, cols = np.nonzero(s.mask)
        offset = np.array([rows.mean(), cols.mean()]) - center
        area = s.mask.sum()
        if s.label == 1:  # extra-axial: near the skull
            assert np.hypot(*offset) > 0.6 * head_radius
        elif s.label == 2:  # intra-axial, necrotic core darker than the rim
            assert np.hypot(*offset) < 0.7 * head_radius
            core = ndimage.binary_erosion(s.mask, iterations=int(np.sqrt(area / np.pi) * 0.6))
            rim = s.mask & ~ndimage.binary_erosion(s.mask, iterations=3)
            assert image[core].mean() < 0.5 * image[rim].mean()
        else:  # pituitary: small, on the midline, anterior
            assert area < 700 and abs(offset[1]) < 0.1 * head_radius and offset[0] < 0


def test_deterministic_from_seed(tmp_path: Path) -> None:
    a = write_synthetic(tmp_path / "a", patients=2, slices_per_patient=2, seed=7)
    b = write_synthetic(tmp_path / "b", patients=2, slices_per_patient=2, seed=7)
    c = write_synthetic(tmp_path / "c", patients=2, slices_per_patient=2, seed=8)
    for pa, pb, pc in zip(a, b, c):
        assert np.array_equal(read_mat(pa).image, read_mat(pb).image)
        assert not np.array_equal(read_mat(pa).image, read_mat(pc).image)


def test_refuses_non_empty_out(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(TumorcamError, match="not empty"):
        write_synthetic(tmp_path, patients=1, slices_per_patient=1)
    assert (tmp_path / "keep.txt").read_text() == "mine"
