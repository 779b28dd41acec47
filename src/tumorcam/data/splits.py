"""Patient-wise splits and the manifest of a prepared folder.

Cheng's official folds when every file number has one (folds 1-3 train, 4 val, 5 test),
otherwise stratified by class at patient level, seeded, 70/15/15.
"""

from __future__ import annotations

import platform
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from tumorcam import __version__
from tumorcam.data.arrays import CLASS_NAMES, SPLITS
from tumorcam.data.slices import Row
from tumorcam.data.sources import Source
from tumorcam.errors import TumorcamError

SPLIT_OF_FOLD = {1: "train", 2: "train", 3: "train", 4: "val", 5: "test"}
STRATIFIED_FRACTIONS = (0.70, 0.15, 0.15)


def make_splits(
    file_ids: np.ndarray, pids: np.ndarray, labels: np.ndarray, folds: dict[int, int] | None, seed: int, folds_from: str | None
) -> tuple[dict[str, list[int]], str]:
    """Patient-wise train/val/test lists of file ids, and how they were made.

    Official folds when every file number has one (1-3 train, 4 val, 5 test); otherwise each
    class's patients (a patient's class: its most common slice label) are shuffled with `seed`
    and cut 70/15/15.
    """
    if folds is not None and all(int(f) in folds for f in file_ids):
        split_of = {int(f): SPLIT_OF_FOLD.get(folds[int(f)]) for f in file_ids}
        bad = sorted({folds[f] for f, s in split_of.items() if s is None})
        if bad:
            raise TumorcamError(f"{folds_from}: folds must be 1-5, found {bad}")
        method = f"official folds from {folds_from}: 1-3 train, 4 val, 5 test"
    else:
        patient_label: dict[str, int] = {}
        for pid in sorted(set(pids.tolist())):
            patient_label[pid] = Counter(labels[pids == pid].tolist()).most_common(1)[0][0]
        rng = np.random.default_rng(seed)
        split_of_pid: dict[str, str] = {}
        for label in sorted(set(patient_label.values())):
            members = rng.permutation(sorted(p for p, l in patient_label.items() if l == label))
            n_train = round(STRATIFIED_FRACTIONS[0] * len(members))
            n_val = round(STRATIFIED_FRACTIONS[1] * len(members))
            for rank, pid in enumerate(members):
                split_of_pid[str(pid)] = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
        split_of = {int(f): split_of_pid[str(p)] for f, p in zip(file_ids, pids)}
        method = f"stratified by class at patient level, seed {seed}, 70/15/15"
        if folds is not None:
            method += f" ({folds_from} does not cover every file number)"
    splits: dict[str, list[int]] = {name: [] for name in SPLITS}
    for f in file_ids:
        splits[split_of[int(f)]].append(int(f))
    where: dict[str, set[str]] = {}
    for f, p in zip(file_ids, pids):
        where.setdefault(str(p), set()).add(split_of[int(f)])
    shared = sorted(p for p, s in where.items() if len(s) > 1)
    if shared:
        raise TumorcamError(f"{folds_from}: the folds put patient {shared[0]} in {' and '.join(sorted(where[shared[0]]))}; splits must be patient-wise")
    return splits, method


def build_manifest(
    paths: list[Path],
    source: Source,
    size: int,
    rows: list[Row],
    splits: dict[str, list[int]],
    split_method: str,
    skipped: list[dict[str, str]],
    renumbered: bool,
    seed: int,
) -> dict[str, Any]:
    """The manifest.json of a prepared folder (schema in docs/data.md)."""
    per_patient: dict[str, dict[str, Any]] = {}
    split_of = {f: name for name, ids in splits.items() for f in ids}
    for r in rows:
        entry = per_patient.setdefault(r.pid, {"slices": 0, "label": r.label, "split": split_of[r.file_id]})
        entry["slices"] += 1
    per_class: dict[str, dict[str, int]] = {}
    for label in sorted({r.label for r in rows}):
        name = CLASS_NAMES.get(label, "unknown")
        per_class[name] = {
            "label": label,
            "slices": sum(r.label == label for r in rows),
            "patients": len({r.pid for r in rows if r.label == label}),
        }
    pids_of = {name: {r.pid for r in rows if split_of[r.file_id] == name} for name in splits}
    return {
        "format": "tumorcam-prepared/1",
        "source": {"paths": [str(p.absolute()) for p in paths], "kind": source.kind, "folds_from": source.folds_from},
        "size": size,
        "count": len(rows),
        "patients": len(per_patient),
        "image": {"dtype": "float16", "range": [0, 1], "normalisation": "per-slice: clip at 0, divide by the maximum", "resize": "bilinear (Pillow)"},
        "mask": {"dtype": "bool", "resize": "nearest"},
        "original_sizes": {f"{h}x{w}": n for (h, w), n in sorted(Counter(r.original_shape for r in rows).items())},
        "per_class": per_class,
        "per_patient": per_patient,
        "splits": {
            "method": split_method,
            "seed": seed,
            "counts": {name: {"slices": len(ids), "patients": len(pids_of[name])} for name, ids in splits.items()},
        },
        "renumbered": renumbered,
        "skipped": skipped,
        "software": software_versions(),
    }


def software_versions() -> dict[str, str]:
    import PIL
    import h5py
    import scipy

    return {
        "tumorcam": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "h5py": h5py.__version__,
        "pillow": PIL.__version__,
    }
