"""Read one slice of Cheng's figshare brain tumour dataset from its `.mat` file.

The figshare files are MATLAB v7.3 (HDF5 after a 512-byte MATLAB header) holding a struct
`cjdata` with `label` (1x1 double: 1 meningioma, 2 glioma, 3 pituitary), `PID` (uint16
character codes), `image` (int16), `tumorBorder` (x, y pairs: x = column, y = row) and
`tumorMask` (logical). h5py shows every matrix transposed, so the reader transposes back to
display orientation. Older MAT v5 files are read with `scipy.io.loadmat`, which already gives
display orientation. Every failure is a `TumorcamError` whose message names the file.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tumorcam.errors import TumorcamError

FIELDS = ("label", "PID", "image", "tumorBorder", "tumorMask")
LABELS = (1, 2, 3)
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
MAT_HEADER_BYTES = 128
USERBLOCK_BYTES = 512


@dataclass(frozen=True)
class MatSlice:
    """One slice in display orientation.

    `image` keeps the stored dtype (int16 in the figshare files); `mask` is bool of the same
    shape; `border` is (k, 2) float64 of (x = column, y = row) points as stored (MATLAB's
    1-based pixel coordinates); `file_id` is the figshare file number (the file's stem) or None.
    """

    image: np.ndarray
    mask: np.ndarray
    label: int
    pid: str
    border: np.ndarray
    file_id: int | None


def file_id_of(name: str) -> int | None:
    """The figshare file number of `1234.mat` (or `dir/1234.mat`), None when the stem is not a number."""
    stem = Path(name).stem
    return int(stem) if stem.isdigit() else None


def read_mat(source: str | os.PathLike | bytes, name: str | None = None) -> MatSlice:
    """Read and check one figshare slice from a path or from the file's bytes.

    `name` is what error messages call the file (default: the path); its stem gives `file_id`.
    """
    data, name = _read_bytes(source, name)
    if data[:8] == HDF5_SIGNATURE or data[USERBLOCK_BYTES : USERBLOCK_BYTES + 8] == HDF5_SIGNATURE:
        fields = _read_v73(data, name)
    elif data.startswith(b"MATLAB 5.0") or (len(data) >= MAT_HEADER_BYTES and data[124:128] in (b"\x00\x01IM", b"\x01\x00MI")):
        fields = _read_v5(data, name)
    elif data.startswith(b"MATLAB 7.3"):
        raise TumorcamError(f"{name}: truncated MATLAB v7.3 file ({len(data)} bytes, no HDF5 data after the header)")
    else:
        raise TumorcamError(f"{name}: not a MATLAB .mat file (no MATLAB v5 or v7.3 header)")
    return _check(fields, name)


def _read_v73(data: bytes, name: str) -> dict[str, Any]:
    import h5py

    try:
        with h5py.File(io.BytesIO(data), "r") as f:
            if "cjdata" not in f or not isinstance(f["cjdata"], h5py.Group):
                raise TumorcamError(f"{name}: no `cjdata` struct (found {', '.join(f.keys()) or 'nothing'})")
            group = f["cjdata"]
            _require_fields(set(group.keys()), name)
            pid = group["PID"]
            return {
                "label": np.asarray(group["label"][()]),
                "PID": "" if "MATLAB_empty" in pid.attrs else _decode_pid(np.asarray(pid[()]), name),
                "image": np.asarray(group["image"][()]).T,
                "tumorBorder": np.asarray(group["tumorBorder"][()]),
                "tumorMask": np.asarray(group["tumorMask"][()]).T,
            }
    except TumorcamError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise TumorcamError(f"{name}: truncated or corrupt MATLAB v7.3 file ({exc})") from None


def _read_v5(data: bytes, name: str) -> dict[str, Any]:
    import scipy.io

    try:
        contents = scipy.io.loadmat(io.BytesIO(data), simplify_cells=True)
    except Exception as exc:  # scipy raises many types (ValueError, TypeError, MatReadError, ...) on bad bytes
        raise TumorcamError(f"{name}: truncated or corrupt MATLAB v5 file ({type(exc).__name__}: {exc})") from None
    cjdata = contents.get("cjdata")
    if not isinstance(cjdata, dict):
        found = ", ".join(k for k in contents if not k.startswith("__")) or "nothing"
        raise TumorcamError(f"{name}: no `cjdata` struct (found {found})")
    _require_fields(set(cjdata), name)
    pid = cjdata["PID"]
    return {
        "label": np.asarray(cjdata["label"]),
        "PID": pid if isinstance(pid, str) else _decode_pid(np.asarray(pid), name),
        "image": np.asarray(cjdata["image"]),
        "tumorBorder": np.asarray(cjdata["tumorBorder"]),
        "tumorMask": np.asarray(cjdata["tumorMask"]),
    }


def _require_fields(present: set[str], name: str) -> None:
    missing = [field for field in FIELDS if field not in present]
    if missing:
        raise TumorcamError(f"{name}: `cjdata` lacks field(s) {', '.join(missing)}")


def _decode_pid(codes: np.ndarray, name: str) -> str:
    """MATLAB char arrays are stored as uint16 UTF-16 code units."""
    if codes.dtype.kind not in "ui":
        raise TumorcamError(f"{name}: `cjdata.PID` is {codes.dtype}, expected uint16 character codes")
    return "".join(chr(int(c)) for c in codes.ravel()).strip()


def _check(fields: dict[str, Any], name: str) -> MatSlice:
    image, mask = fields["image"], fields["tumorMask"]
    if image.ndim != 2 or min(image.shape) < 2:
        raise TumorcamError(f"{name}: `cjdata.image` has shape {image.shape}, expected a 2-D slice")
    if mask.shape != image.shape:
        raise TumorcamError(f"{name}: image/mask shape mismatch: image {image.shape}, tumorMask {mask.shape}")
    if mask.dtype != bool and np.count_nonzero((mask != 0) & (mask != 1)):
        values = np.unique(mask)
        shown = ", ".join(str(v) for v in values[:5])
        raise TumorcamError(f"{name}: tumorMask is not binary (values {shown}{', ...' if values.size > 5 else ''})")
    if image.dtype.kind not in "uif":
        raise TumorcamError(f"{name}: `cjdata.image` has dtype {image.dtype}, expected numbers")
    if image.dtype.kind == "f" and not np.isfinite(image).all():
        raise TumorcamError(f"{name}: image contains NaN or infinite values")
    if image.min() == image.max():
        raise TumorcamError(f"{name}: image is constant ({image.flat[0]}): nothing to learn from")
    label_values = np.asarray(fields["label"]).ravel()
    if label_values.size != 1 or not np.isfinite(label_values[0]) or int(label_values[0]) not in LABELS or label_values[0] != int(label_values[0]):
        raise TumorcamError(f"{name}: `cjdata.label` is {label_values.tolist()}, expected one of 1, 2, 3")
    border = np.asarray(fields["tumorBorder"], dtype=np.float64).ravel()
    if border.size % 2:
        raise TumorcamError(f"{name}: `cjdata.tumorBorder` has {border.size} numbers, expected (x, y) pairs")
    return MatSlice(
        image=np.ascontiguousarray(image),
        mask=np.ascontiguousarray(mask.astype(bool)),
        label=int(label_values[0]),
        pid=str(fields["PID"]),
        border=border.reshape(-1, 2),
        file_id=file_id_of(name),
    )


def read_cvind(source: str | os.PathLike | bytes, name: str | None = None) -> np.ndarray:
    """Cheng's fold file `cvind.mat` (variable `cvind`, v7.3 or v5): fold 1-5 of each file number, as int array
    (entry i is the fold of file `i + 1`)."""
    data, name = _read_bytes(source, name)
    try:
        if data[:8] == HDF5_SIGNATURE or data[USERBLOCK_BYTES : USERBLOCK_BYTES + 8] == HDF5_SIGNATURE:
            import h5py

            with h5py.File(io.BytesIO(data), "r") as f:
                folds = np.asarray(f["cvind"][()]) if "cvind" in f else None
        else:
            import scipy.io

            folds = scipy.io.loadmat(io.BytesIO(data)).get("cvind")
    except Exception as exc:  # h5py/scipy raise many types on bad bytes
        raise TumorcamError(f"{name}: not a readable cvind.mat ({type(exc).__name__}: {exc})") from None
    if folds is None:
        raise TumorcamError(f"{name}: no `cvind` variable")
    folds = np.asarray(folds, dtype=np.float64).ravel()
    if not np.isin(folds, (1, 2, 3, 4, 5)).all():
        raise TumorcamError(f"{name}: `cvind` must hold folds 1-5, found {sorted(set(folds.tolist()))[:6]}")
    return folds.astype(np.int64)


def _read_bytes(source: str | os.PathLike | bytes, name: str | None) -> tuple[bytes, str]:
    """The bytes of a file (or the bytes given) and the name messages use for them."""
    if isinstance(source, (bytes, bytearray)):
        return bytes(source), name or "<bytes>"
    name = name or str(source)
    try:
        return Path(source).read_bytes(), name
    except OSError as exc:
        raise TumorcamError(f"{name}: cannot read ({exc.strerror or exc})") from None
