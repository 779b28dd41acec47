"""Prepared slices and prepared volumes keep one contract (`tumorcam.data.prepared.Prepared`): rows
of a split, tensors (n, C, *spatial) and (n, 1, *spatial), and the statistics' unit of each row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tumorcam.data.arrays import load_prepared
from tumorcam.data.prepared import Prepared
from tumorcam.data.synth_volumes import write_synthetic_volumes
from tumorcam.data.volumes import load_volumes, prepare_volumes


@pytest.fixture(params=["slices", "volumes"])
def prepared(request, tmp_path: Path, blob_prepared: Path) -> Prepared:
    if request.param == "slices":
        return load_prepared(blob_prepared)
    write_synthetic_volumes(tmp_path / "raw", cases=6, size=16, seed=1)
    prepare_volumes(tmp_path / "raw", tmp_path / "volumes", size=12, workers=1)
    return load_volumes(tmp_path / "volumes")


def test_both_keep_the_contract(prepared: Prepared) -> None:
    assert isinstance(prepared, Prepared)
    rows = prepared.indices("all")
    assert sorted(rows.tolist()) == list(range(len(prepared)))
    images, masks = prepared.tensors(rows[:2])
    dims = 2 if prepared.unit == "patient" else 3
    assert images.dim() == 2 + dims and tuple(masks.shape) == (2, 1, *images.shape[2:])
    assert images.shape[-1] == prepared.size
    assert float(images.min()) >= 0 and float(images.max()) <= 1 and set(masks.unique().tolist()) <= {0.0, 1.0}
    assert prepared.unit_ids.shape == (len(prepared),)


def test_the_splits_partition_the_units(prepared: Prepared) -> None:
    units = {split: set(np.asarray(prepared.unit_ids[prepared.indices(split)]).astype(str).tolist())
             for split in ("train", "val", "test")}
    assert units["train"].isdisjoint(units["val"]) and units["train"].isdisjoint(units["test"])
    assert units["val"].isdisjoint(units["test"])
    assert set().union(*units.values()) == set(np.asarray(prepared.unit_ids).astype(str).tolist())
