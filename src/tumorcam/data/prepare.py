"""`prepare`: turn figshare `.mat` files, zips of them, or PNG image/mask pairs into the prepared
arrays (`tumorcam.data.arrays` documents and reads them).

The steps, one module each: find the slices (`sources`), read them (`slices`: clipped at 0,
divided by the maximum, resized; a process pool), split them patient-wise and describe them
(`splits`: official folds when known, else stratified 70/15/15; the manifest). Rows are in
file-number order.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from tumorcam.data.slices import read_slices
from tumorcam.data.sources import collect, renumber
from tumorcam.data.splits import build_manifest, make_splits
from tumorcam.errors import TumorcamError
from tumorcam.io import atomic_dir, save_npy, write_json


def prepare(
    src: str | os.PathLike | Sequence[str | os.PathLike],
    out: str | os.PathLike,
    size: int = 256,
    skip_bad: bool = False,
    seed: int = 0,
    workers: int | None = None,
) -> dict[str, Any]:
    """Prepare SRC (one path or several) into the folder `out`; return the manifest.

    `out` is built under a temporary name and renamed, so a failure leaves nothing. Rows are in
    file-number order; the splits are patient-wise (official folds when known, else stratified
    70/15/15).

    Args:
        src: figshare `.mat` files' folder, zips of them, or PNG image/mask pairs; one path or several.
        out: the prepared folder; must not exist or be empty.
        size: the side the slices are resized to (at least 8).
        skip_bad: skip a bad slice and list it with the reason in the manifest, instead of failing the
            whole run naming the file.
        seed: seeds the splits.
        workers: processes reading the slices (None: the CPUs available, at most 16).

    Returns:
        The manifest (also written as manifest.json).

    Raises:
        TumorcamError: for no source, a size below 8, workers < 1, an `out` that exists and is not empty (prepare
            never overwrites), sources without slices, a bad slice (without `skip_bad`), or every
            slice bad.
    """
    started = time.perf_counter()
    paths = [Path(src)] if isinstance(src, (str, os.PathLike)) else [Path(p) for p in src]
    out = Path(out)
    if not paths:
        raise TumorcamError("SRC: give at least one folder or zip")
    if size < 8:
        raise TumorcamError(f"size {size}: must be at least 8", param="size")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TumorcamError(f"out {out}: exists and is not empty; prepare never overwrites, choose a new folder or remove it",
                            param="out")
    with ExitStack() as stack:

        def scratch() -> Path:
            """A fresh temporary folder beside `out` for a nested zip, removed when prepare ends."""
            return Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f".{out.name}.nested.", dir=_existing_parent(out))))

        source = collect(paths, scratch)
        if not source.tasks:
            raise TumorcamError(f"SRC {', '.join(map(str, paths))}: no .mat files, figshare zips or images/ + masks/ PNG pairs found")
        renumbered = renumber(source)
        rows, skipped = read_slices(source.tasks, size, skip_bad, workers)
    if not rows:
        raise TumorcamError(f"SRC {', '.join(map(str, paths))}: every slice was bad; nothing to prepare")
    rows.sort(key=lambda r: r.file_id)
    file_ids = np.array([r.file_id for r in rows], dtype=np.int64)
    pids = np.array([r.pid for r in rows], dtype=str)
    labels = np.array([r.label for r in rows], dtype=np.int8)
    splits, split_method = make_splits(file_ids, pids, labels, source.folds, seed, source.folds_from)
    manifest = build_manifest(paths, source, size, rows, splits, split_method, skipped, renumbered, seed)
    with atomic_dir(out) as tmp:
        save_npy(tmp / "images.npy", np.stack([r.image for r in rows]))
        save_npy(tmp / "masks.npy", np.stack([r.mask for r in rows]))
        save_npy(tmp / "labels.npy", labels)
        save_npy(tmp / "pids.npy", pids)
        save_npy(tmp / "file_ids.npy", file_ids)
        write_json(tmp / "splits.json", splits)
        manifest["seconds"] = round(time.perf_counter() - started, 2)
        write_json(tmp / "manifest.json", manifest)
    return manifest


def _existing_parent(out: Path) -> Path:
    parent = out.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    return parent
