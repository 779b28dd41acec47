"""Read a PNG image/mask pair and the optional `metadata.csv` of a PNG dataset folder.

Layout: `images/N.png` (8- or 16-bit grey), `masks/N.png`
(0/255 or 0/1) and optionally `metadata.csv` with a `file_id` column and any of `pid`,
`label`, `fold`. Images are already in display orientation.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tumorcam.errors import TumorcamError


@dataclass(frozen=True)
class SliceInfo:
    """What `metadata.csv` says about one slice (None where the column is absent)."""

    pid: str | None
    label: int | None
    fold: int | None


def is_png_folder(root: Path) -> bool:
    return (root / "images").is_dir() and (root / "masks").is_dir()


def read_png_pair(image_path: str | Path, mask_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(image as stored, mask bool); a missing, unreadable, non-binary or mismatched file fails naming it."""
    image = _read_png(Path(image_path))
    mask = _read_png(Path(mask_path))
    if mask.ndim == 3:
        mask = mask[..., 0]
    if image.ndim == 3:
        image = image[..., :3].mean(axis=2)
    if image.shape != mask.shape:
        raise TumorcamError(f"{image_path}: image/mask shape mismatch: image {image.shape}, mask {mask_path} {mask.shape}")
    values = np.unique(mask)
    if values.size > 2 or (values.size == 2 and values[0] != 0):
        shown = ", ".join(str(v) for v in values[:5])
        raise TumorcamError(f"{mask_path}: mask is not binary (values {shown}{', ...' if values.size > 5 else ''})")
    if image.min() == image.max():
        raise TumorcamError(f"{image_path}: image is constant ({image.flat[0]}): nothing to learn from")
    return image, mask > 0


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as picture:
            return np.asarray(picture)
    except FileNotFoundError:
        raise TumorcamError(f"{path}: missing") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise TumorcamError(f"{path}: not a readable image ({exc})") from None


def read_metadata(path: Path) -> dict[int, SliceInfo]:
    """`metadata.csv` rows by file id; needs a `file_id` column, uses `pid`, `label`, `fold` when present."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise TumorcamError(f"{path}: cannot read ({exc})") from None
    if not rows or "file_id" not in rows[0]:
        raise TumorcamError(f"{path}: needs a header with a `file_id` column (and optionally pid, label, fold)")
    info: dict[int, SliceInfo] = {}
    for line, row in enumerate(rows, start=2):
        try:
            file_id = int(row["file_id"])
            label = int(float(row["label"])) if row.get("label") not in (None, "") else None
            fold = int(float(row["fold"])) if row.get("fold") not in (None, "") else None
        except ValueError as exc:
            raise TumorcamError(f"{path}: line {line}: {exc}") from None
        if label is not None and label not in (1, 2, 3):
            raise TumorcamError(f"{path}: line {line}: label {label}, expected 1, 2 or 3")
        pid = row.get("pid") or None
        info[file_id] = SliceInfo(pid=pid.strip() if pid else None, label=label, fold=fold)
    return info
