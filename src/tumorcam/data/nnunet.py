"""Reading nnU-Net v2's raw dataset layout (NIfTI, with nibabel).

Layout::

    ROOT/dataset.json          {"channel_names": {"0": "T1", "1": "T1CE", ...}, "labels": {"background": 0, ...},
                                "numTraining": N, "file_ending": ".nii.gz"}
    ROOT/imagesTr/CASE_XXXX<file_ending>   one file per channel, XXXX = the channel's 4-digit index
    ROOT/labelsTr/CASE<file_ending>        the label map (integer values listed in dataset.json's "labels")

The cases are the identifiers found in `imagesTr/` (sorted). Channels are in the order of
`channel_names`' keys "0", "1", ... (the legacy key "modality" is read the same way); `file_ending`
defaults to ".nii.gz" (".nii" is read too; nnU-Net's other formats, e.g. ".mha", are not). A label entry may be a list of values (nnU-Net's region-based labels);
its values count as known. `imagesTs/` (no labels) and dataset.json's explicit "dataset" file
lists are not read.

Geometry check of a case (nnU-Net's `verify_dataset_integrity` / `check_cases`): channel 0 is the
reference; every other channel and the label must have exactly its shape, its spacing within
`np.allclose` (rtol 1e-5, atol 1e-8, nnU-Net's own test) and its affine (origin and direction)
within `np.allclose(rtol=1e-5, atol=1e-4)`. nnU-Net only warns about a differing affine; here it
is refused, because the mask is overlaid on the images voxel for voxel. Every problem is one
`TumorcamError` line that names the file.
"""

from __future__ import annotations

import glob
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tumorcam.errors import TumorcamError
from tumorcam.io import read_json_object

DEFAULT_FILE_ENDING = ".nii.gz"
NIFTI_ENDINGS = (".nii.gz", ".nii")
SPACING_TOLERANCE = {"rtol": 1e-5, "atol": 1e-8}
AFFINE_TOLERANCE = {"rtol": 1e-5, "atol": 1e-4}


@dataclass(frozen=True)
class DatasetInfo:
    """dataset.json of an nnU-Net raw folder and the cases found in imagesTr/."""

    root: Path
    channels: list[str]
    labels: dict[str, int | list[int]]
    file_ending: str
    cases: list[str]

    @property
    def label_values(self) -> list[int]:
        """Every label value dataset.json declares (region entries expanded), sorted."""
        values: set[int] = set()
        for value in self.labels.values():
            values.update(value if isinstance(value, list) else [value])
        return sorted(values)

    def image_path(self, case: str, channel: int) -> Path:
        return self.root / "imagesTr" / f"{case}_{channel:04d}{self.file_ending}"

    def label_path(self, case: str) -> Path:
        return self.root / "labelsTr" / f"{case}{self.file_ending}"


@dataclass(frozen=True)
class Case:
    """One case: images (C, D, H, W) float32 in the files' voxel order, label (D, H, W) int16 or None,
    and the geometry of channel 0: affine (4, 4) voxel -> world (mm), spacing (3,) mm."""

    case_id: str
    images: np.ndarray
    label: np.ndarray | None
    affine: np.ndarray
    spacing: np.ndarray


def is_nnunet_raw(path: str | Path) -> bool:
    """True for a folder holding dataset.json and imagesTr/."""
    path = Path(path)
    return (path / "dataset.json").is_file() and (path / "imagesTr").is_dir()


def read_dataset(root: str | Path) -> DatasetInfo:
    """Read and check dataset.json and list the cases of imagesTr/ (each a one-line error naming the file)."""
    root = Path(root)
    where = root / "dataset.json"
    if not is_nnunet_raw(root):
        raise TumorcamError(f"SRC {root}: not an nnU-Net raw folder (needs dataset.json and imagesTr/)")
    spec = read_json_object(where)
    if "dataset" in spec:
        raise TumorcamError(f"{where}: the 'dataset' key (explicit file lists) is not supported; use imagesTr/ and labelsTr/")
    names = spec.get("channel_names", spec.get("modality"))
    if not isinstance(names, dict) or not names:
        raise TumorcamError(f"{where}: 'channel_names' must map \"0\", \"1\", ... to channel names")
    if sorted(names) != sorted(str(i) for i in range(len(names))):
        raise TumorcamError(f"{where}: 'channel_names' keys must be \"0\"..\"{len(names) - 1}\", found {sorted(names)}")
    channels = [str(names[str(i)]) for i in range(len(names))]
    labels = spec.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise TumorcamError(f"{where}: 'labels' must map label names to integer values")
    for name, value in labels.items():
        values = value if isinstance(value, list) else [value]
        if not values or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise TumorcamError(f"{where}: label {name!r} must be an integer (or a list of integers), found {value!r}")
    file_ending = spec.get("file_ending", DEFAULT_FILE_ENDING)
    if file_ending not in NIFTI_ENDINGS:
        raise TumorcamError(f"{where}: 'file_ending' {file_ending!r}: only NIfTI ({', '.join(NIFTI_ENDINGS)}) is read")
    pattern = re.compile(rf"^(.+)_\d{{4}}{re.escape(file_ending)}$")
    cases: set[str] = set()
    for path in sorted((root / "imagesTr").iterdir()):
        if path.name.startswith(".") or not path.name.endswith(file_ending):
            continue
        match = pattern.match(path.name)
        if match is None:
            raise TumorcamError(f"{path}: not named CASE_XXXX{file_ending} (XXXX: the 4-digit channel index)")
        cases.add(match.group(1))
    if not cases:
        raise TumorcamError(f"{root / 'imagesTr'}: no CASE_XXXX{file_ending} files")
    return DatasetInfo(root=root, channels=channels, labels=dict(labels), file_ending=file_ending, cases=sorted(cases))


def read_case(root: str | Path, case: str, dataset: DatasetInfo | None = None, require_label: bool = True) -> Case:
    """Read one case's channels and label and check them against channel 0 (shape, spacing, affine),
    for NaN/infinite values, and the label's values against dataset.json. Without a label file the
    case fails, or, when `require_label` is False, comes back with `label=None`. `dataset` (the
    folder's `read_dataset`, when already read) saves reading dataset.json again."""
    info = dataset if dataset is not None else read_dataset(root)
    label_file = info.label_path(case)
    if require_label and not label_file.is_file():
        raise TumorcamError(f"{label_file}: label missing for case {case}")
    found = set((info.root / "imagesTr").glob(f"{glob.escape(case)}_[0-9][0-9][0-9][0-9]{glob.escape(info.file_ending)}"))
    expected = [info.image_path(case, c) for c in range(len(info.channels))]
    for channel, path in enumerate(expected):
        if not path.is_file():
            raise TumorcamError(f"{path}: missing channel {channel} ({info.channels[channel]}) of case {case}")
    extra = sorted(found - set(expected))
    if extra:
        raise TumorcamError(f"{extra[0]}: channel index beyond the {len(info.channels)} channels of dataset.json")
    affine = spacing = None
    images = []
    for path in expected:
        array, file_affine, file_spacing = read_nifti(path)
        _check_finite(array, path)
        if affine is None:
            affine, spacing = file_affine, file_spacing
        else:
            _check_geometry(path, array.shape, file_affine, file_spacing, expected[0], images[0].shape, affine, spacing)
        images.append(array)
    label = None
    if label_file.is_file():
        values, label_affine, label_spacing = read_nifti(label_file)
        _check_finite(values, label_file)
        _check_geometry(label_file, values.shape, label_affine, label_spacing, expected[0], images[0].shape, affine, spacing)
        label = _label_values(values, label_file, info.label_values)
    return Case(case_id=case, images=np.stack(images), label=label, affine=affine, spacing=spacing)


def read_nifti(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(array float32 (D, H, W) in the file's voxel order, affine (4, 4) float64, spacing (3,) mm) of a
    3-D NIfTI file (a trailing axis of length 1 is dropped); a bad file is a one-line error naming it."""
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise TumorcamError(f"{path}: no such file")
    try:
        image = nib.load(path)
        array = np.asarray(image.get_fdata(dtype=np.float32))
        affine = np.asarray(image.affine, dtype=np.float64)
        zooms = image.header.get_zooms()
    except Exception as exc:  # nibabel and gzip raise many types for a damaged file
        raise TumorcamError(f"{path}: unreadable NIfTI file ({type(exc).__name__}: {_one_line(exc)})") from None
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise TumorcamError(f"{path}: not 3-D (shape {tuple(array.shape)})")
    return array, affine, np.asarray(zooms[:3], dtype=np.float64)


def write_nifti(path: str | Path, volume: np.ndarray, affine: np.ndarray, dtype: Any = np.float32) -> None:
    """`volume` (D, H, W) as NIfTI-1 stored as `dtype` with `affine` (sform) and mm units,
    gzip-compressed (level 1: a map compresses little more at 9, at several times the cost), written
    atomically. An integer `dtype` stores the values quantised with the header's scl_slope and
    scl_inter (nibabel's scaling; readers get them back as floats): uint16 keeps a map in [0, 1] to
    1/65535, finer than float16, in half the bytes of float32 (NIfTI-1 has no float16)."""
    import gzip

    import nibabel

    from tumorcam.io import write_bytes

    image = nibabel.Nifti1Image(np.asarray(volume, dtype=np.float32), np.asarray(affine, dtype=np.float64))
    image.set_data_dtype(dtype)
    image.header.set_xyzt_units("mm")
    write_bytes(path, gzip.compress(image.to_bytes(), compresslevel=1, mtime=0))


def _check_finite(array: np.ndarray, path: Path) -> None:
    if not np.isfinite(array).all():
        raise TumorcamError(f"{path}: {int((~np.isfinite(array)).sum())} NaN or infinite values")


def _check_geometry(
    path: Path,
    shape: tuple[int, ...],
    affine: np.ndarray,
    spacing: np.ndarray,
    reference: Path,
    reference_shape: tuple[int, ...],
    reference_affine: np.ndarray,
    reference_spacing: np.ndarray,
) -> None:
    """`path`'s grid against channel 0's (`reference`): shape exactly, spacing and affine within tolerance."""
    if tuple(shape) != tuple(reference_shape):
        raise TumorcamError(f"{path}: shape {tuple(shape)} differs from {reference.name} {tuple(reference_shape)}")
    if not np.allclose(spacing, reference_spacing, **SPACING_TOLERANCE):
        raise TumorcamError(f"{path}: spacing {_numbers(spacing)} differs from {reference.name} {_numbers(reference_spacing)}")
    if not np.allclose(affine, reference_affine, **AFFINE_TOLERANCE):
        worst = float(np.abs(affine - reference_affine).max())
        raise TumorcamError(f"{path}: affine (origin/direction) differs from {reference.name} (by up to {worst:.4g})")


def _label_values(values: np.ndarray, path: Path, known: list[int]) -> np.ndarray:
    """The label map as int16, refusing non-integer values and values dataset.json does not declare."""
    if not np.array_equal(values, np.round(values)):
        raise TumorcamError(f"{path}: non-integer label values")
    found = np.unique(values).astype(np.int64)
    unknown = sorted(set(found.tolist()) - set(known))
    if unknown:
        raise TumorcamError(f"{path}: label values {unknown} are not in dataset.json's labels {known}")
    return values.astype(np.int16)


def _numbers(values: np.ndarray) -> str:
    return "(" + ", ".join(f"{float(v):.6g}" for v in values) + ")"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
