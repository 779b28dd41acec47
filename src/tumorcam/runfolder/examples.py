"""The example slices of Figure 5 and their predicted masks, saved by the segmentation stage for the report.

`evaluate_segmentation` predicts the `example_rows` of the run's prepared data (one slice per class
first, then in order, up to `N_EXAMPLES`) with the evaluated checkpoint at the run's training size
(no autocast) and saves them to `RUN/figures_data/examples.npz`:

    file_ids   (N,) int64     the slices' file ids
    predicted  (N,S,S) uint8  the predicted masks (logit > 0) at the training size S
    size       ()    int64    S
    checkpoint ()    str      the checkpoint file that predicted them

The report reads this file and never runs the network. Only numpy here: no model, no torch.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tumorcam.data.arrays import PreparedData
from tumorcam.errors import TumorcamError
from tumorcam.io import save_npz

EXAMPLES_FILE = "figures_data/examples.npz"
EXAMPLES_COMMAND = "tumorcam evaluate RUN --segmentation"
N_EXAMPLES = 3


@dataclass
class Examples:
    file_ids: np.ndarray  # (N,) int64
    predicted: np.ndarray  # (N,S,S) bool
    size: int
    checkpoint: str


def example_rows(prepared: PreparedData, limit: int = N_EXAMPLES) -> np.ndarray:
    """Test-split rows to show (all rows without a test split): one per class first, then in order."""
    rows = prepared.indices("test")
    if len(rows) == 0:
        rows = prepared.indices("all")
    return rows[one_per_class_first(np.asarray(prepared.labels[rows]), limit)]


def one_per_class_first(labels: np.ndarray, limit: int) -> np.ndarray:
    """Positions to show: the first of each class (in class order), then the others in order, up to `limit`."""
    firsts = [int(np.flatnonzero(labels == c)[0]) for c in sorted(set(labels.tolist()))]
    chosen = set(firsts)
    rest = [i for i in range(len(labels)) if i not in chosen]
    return np.array((firsts + rest)[:limit], dtype=np.int64)


def save_examples(run: str | Path, file_ids: np.ndarray, predicted: np.ndarray, size: int, checkpoint: str) -> Path:
    """Write RUN/figures_data/examples.npz atomically; returns its path."""
    path = Path(run) / EXAMPLES_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    save_npz(path, file_ids=np.asarray(file_ids, dtype=np.int64), predicted=np.asarray(predicted, dtype=np.uint8),
             size=np.int64(size), checkpoint=np.array(checkpoint))
    return path


def load_examples(run: str | Path) -> Examples:
    """RUN/figures_data/examples.npz; a missing or unreadable file is a `TumorcamError` naming the command that writes it."""
    path = Path(run) / EXAMPLES_FILE
    if not path.is_file():
        raise TumorcamError(f"{EXAMPLES_FILE} is missing (written by `{EXAMPLES_COMMAND}`)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            file_ids = np.asarray(npz["file_ids"], dtype=np.int64)
            predicted = np.asarray(npz["predicted"]) > 0
            size, checkpoint = int(npz["size"]), str(npz["checkpoint"])
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise TumorcamError(f"{EXAMPLES_FILE} could not be read ({exc}); write it again with `{EXAMPLES_COMMAND}`") from None
    if predicted.ndim != 3 or len(predicted) != len(file_ids) or predicted.shape[-1] != size:
        raise TumorcamError(f"{EXAMPLES_FILE} does not have the documented shape; write it again with `{EXAMPLES_COMMAND}`")
    return Examples(file_ids, predicted, size, checkpoint)
