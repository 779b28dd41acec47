"""The prepared-arrays folder: the contract between `data prepare` and every later stage.

Layout: `images.npy` (N,S,S) float16 in [0,1] or uint8; `masks.npy`
(N,S,S) bool; `labels.npy` int8 (1 meningioma, 2 glioma, 3 pituitary); `pids.npy` unicode;
`file_ids.npy` int64; `manifest.json`; `splits.json` ({"train": [file ids], "val": [...],
"test": [...]}). Loading memory-maps the arrays and never unpickles.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tumorcam.errors import TumorcamError

if TYPE_CHECKING:
    import torch

ARRAY_FILES = ("images.npy", "masks.npy", "labels.npy", "pids.npy", "file_ids.npy")
CLASS_NAMES = {1: "meningioma", 2: "glioma", 3: "pituitary"}
SPLITS = ("train", "val", "test")
CHUNK = 256  # rows of a prepared folder moved to a device and resized at a time


def rows_of_split(splits: dict[str, list], split: str, keys: np.ndarray) -> np.ndarray:
    """Row indices of the rows whose key (file id or case id) `splits[split]` lists, in row order;
    `all`: every row. An unknown split is an error naming `split`."""
    if split == "all":
        return np.arange(len(keys))
    if split not in splits:
        raise TumorcamError(f"split: unknown split {split!r} (choose {', '.join(SPLITS)} or all)", param="split")
    wanted = {str(key) for key in splits[split]}
    return np.flatnonzero([str(key) in wanted for key in keys])


def warn_training_split(splits: dict[str, list], split: str, keys: np.ndarray, rows: np.ndarray, unit: str) -> None:
    """Warn (`TumorcamWarning`) when the `rows` evaluated under `split` (`train` or `all`) hold training
    `unit`s (slices, cases) while a test split exists: the Dice and the verdicts then include data a
    model trained on the split has seen. Says how many, and how large the test split is."""
    from tumorcam.guards import warn

    test = list(splits.get("test") or [])
    if split not in ("train", "all") or not test:
        return
    training = {str(key) for key in splits.get("train") or []}
    mixed = sum(str(keys[row]) in training for row in np.asarray(rows, dtype=np.int64))
    if mixed:
        warn(f"split {split!r} mixes {mixed} training {unit}{'' if mixed == 1 else 's'} into the Dice and the "
             f"verdicts; the test split has {len(test)} {unit}{'' if len(test) == 1 else 's'}")


@dataclass
class PreparedData:
    """The arrays of a prepared folder (memory-mapped) with its manifest and splits; a
    `tumorcam.data.prepared.Prepared` whose unit is the patient."""

    root: Path
    images: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    pids: np.ndarray
    file_ids: np.ndarray
    manifest: dict[str, Any]
    splits: dict[str, list[int]]

    unit = "patient"

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def size(self) -> int:
        return int(self.images.shape[-1])

    @property
    def unit_ids(self) -> np.ndarray:
        """The patient id of each slice."""
        return self.pids

    def indices(self, split: str) -> np.ndarray:
        """Row indices of a split (`train`, `val`, `test`) or of everything (`all`)."""
        return rows_of_split(self.splits, split, self.file_ids)

    def images_float(self, rows: np.ndarray) -> np.ndarray:
        """Images of `rows` as float32 in [0, 1], whatever the stored dtype."""
        images = np.asarray(self.images[rows])
        if images.dtype == np.uint8:
            return images.astype(np.float32) / 255.0
        return images.astype(np.float32)

    def tensors(self, rows: np.ndarray, size: int | None = None) -> tuple["torch.Tensor", "torch.Tensor"]:
        """Images (N,1,S,S) float32 in [0,1] and masks (N,1,S,S) float32 {0,1} of `rows`,
        resized to `size` (images bilinear, masks nearest) when it differs from the stored size."""
        import torch
        import torch.nn.functional as F

        images = torch.from_numpy(self.images_float(rows)).unsqueeze(1)
        masks = torch.from_numpy(np.asarray(self.masks[rows], dtype=np.float32)).unsqueeze(1)
        if size is not None and size != images.shape[-1]:
            images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False).clamp_(0, 1)
            masks = F.interpolate(masks, size=(size, size), mode="nearest")
        return images, masks


def read_folder(root: Path, names: tuple[str, ...], kind: str,
                source: str) -> tuple[dict[str, np.ndarray], Any, Any]:
    """The memory-mapped arrays `names` (never unpickled), manifest.json and splits.json of a prepared
    folder; what is missing or unreadable is one error naming it and the `data prepare` command
    (`kind` says what the folder should be, `source` what prepare reads)."""
    missing = [name for name in (*names, "manifest.json", "splits.json") if not (root / name).is_file()]
    if missing:
        raise TumorcamError(f"data {root}: not a {kind} (missing {', '.join(missing)}); "
                            f"prepare {source} into it first (`tumorcam data prepare`)", param="data")
    arrays = {}
    for name in names:
        try:
            arrays[name] = np.load(root / name, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise TumorcamError(f"{root / name}: not a readable .npy array ({exc})") from None
    try:
        manifest = json.loads((root / "manifest.json").read_text())
        splits = json.loads((root / "splits.json").read_text())
    except ValueError as exc:
        raise TumorcamError(f"{root}: manifest.json or splits.json is not valid JSON ({exc})") from None
    return arrays, manifest, splits


def load_prepared(root: str | Path) -> PreparedData:
    """Open a prepared folder; a folder that is not one fails with a message naming what is missing."""
    root = Path(root)
    if not root.is_dir():
        raise TumorcamError(f"data {root}: no such folder", param="data")
    arrays, manifest, splits = read_folder(root, ARRAY_FILES, "prepared folder", "SRC")
    n = arrays["images.npy"].shape[0]
    for name, array in arrays.items():
        if array.shape[0] != n:
            raise TumorcamError(f"{root / name}: {array.shape[0]} rows, images.npy has {n}")
    if arrays["masks.npy"].shape != arrays["images.npy"].shape:
        raise TumorcamError(f"{root}: masks.npy shape {arrays['masks.npy'].shape} != images.npy shape {arrays['images.npy'].shape}")
    return PreparedData(
        root=root,
        images=arrays["images.npy"],
        masks=arrays["masks.npy"],
        labels=arrays["labels.npy"],
        pids=arrays["pids.npy"],
        file_ids=arrays["file_ids.npy"],
        manifest=manifest,
        splits={k: [int(i) for i in v] for k, v in splits.items()},
    )
