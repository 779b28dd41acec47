"""The one contract of prepared data, slices and volumes alike: a 2-D slice is a volume of depth one
in everything but its reader (nnU-Net's `(c, 1, x, y)` idea), so the stages take either.

    prepared.indices("test")          # rows of a split
    images, masks = prepared.tensors(rows)   # (n, C, *spatial) float32 in [0, 1], (n, 1, *spatial) {0, 1}
    prepared.unit_ids[rows]           # the statistics' unit of each row: patient ids, or case ids
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    import torch


@runtime_checkable
class Prepared(Protocol):
    """Prepared slices (`tumorcam.data.arrays.PreparedData`) or volumes (`tumorcam.data.volumes.PreparedVolumes`).

    Attributes:
        root: the prepared folder.
        manifest: its manifest.json.
        splits: split name -> the ids of its units.
        unit: what one unit of the statistics is: "patient" (slices) or "case" (volumes; one case is one patient).
    """

    root: Path
    manifest: dict[str, Any]
    unit: str

    def __len__(self) -> int: ...

    @property
    def size(self) -> int:
        """The side of the stored slices or volumes."""

    @property
    def unit_ids(self) -> np.ndarray:
        """The unit of each row (N,): patient ids, or case ids."""

    def indices(self, split: str) -> np.ndarray:
        """Row indices of a split (`train`, `val`, `test`) or of everything (`all`)."""

    def tensors(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (n, C, *spatial) float32 in [0, 1] and masks (n, 1, *spatial) float32 {0, 1} of `rows`."""
