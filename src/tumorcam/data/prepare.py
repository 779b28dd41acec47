"""`prepare`: turn figshare `.mat` files, zips of them, or PNG image/mask pairs into the prepared
arrays (`tumorcam.data.arrays` documents and reads them).

Per slice: image clipped at 0 and divided by its maximum (the seed's normalisation), resized to
`size` x `size` (image bilinear, mask nearest, with Pillow), stored float16 in [0, 1]; mask bool.
Rows are in file-number order. Splits are patient-wise: Cheng's official folds when known
(`cvind.mat` beside the files or in a zip, or a `fold` column in `metadata.csv`: folds 1-3
train, 4 val, 5 test), otherwise stratified by class at patient level, seeded, 70/15/15.
Slices are read by a process pool. Zips are read in place (a zip nested in a zip, as in the
figshare article zip, is first copied to a temporary file beside the output, then read in place).
"""

from __future__ import annotations

import multiprocessing
import os
import platform
import shutil
import sys
import tempfile
import time
import zipfile
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from tumorcam import __version__
from tumorcam.data.arrays import CLASS_NAMES, SPLITS
from tumorcam.data.mat import file_id_of, read_cvind, read_mat
from tumorcam.data.png import SliceInfo, is_png_folder, read_metadata, read_png_pair
from tumorcam.errors import TumorcamError
from tumorcam.io import atomic_dir, save_npy, write_json

SPLIT_OF_FOLD = {1: "train", 2: "train", 3: "train", 4: "val", 5: "test"}
STRATIFIED_FRACTIONS = (0.70, 0.15, 0.15)
SERIAL_BELOW = 32  # fewer slices than this are read in-process: a pool costs more than it saves


@dataclass(frozen=True)
class Task:
    """Where one slice lives: `kind` "mat" (path), "zip" (zip path + member) or "png" (image + mask paths)."""

    kind: str
    name: str  # what messages call it
    path: str
    member: str = ""
    file_id: int | None = None
    info: SliceInfo | None = None


@dataclass
class Source:
    """All the slices found under SRC, with the fold of each file number when the source has them."""

    kind: str
    tasks: list[Task] = field(default_factory=list)
    folds: dict[int, int] | None = None
    folds_from: str | None = None


@dataclass(frozen=True)
class Row:
    file_id: int
    pid: str
    label: int
    image: np.ndarray  # (S, S) float16 in [0, 1]
    mask: np.ndarray  # (S, S) bool
    original_shape: tuple[int, int]


def prepare(
    src: str | os.PathLike | Sequence[str | os.PathLike],
    out: str | os.PathLike,
    size: int = 256,
    skip_bad: bool = False,
    seed: int = 0,
    workers: int | None = None,
) -> dict[str, Any]:
    """Prepare SRC (one path or several) into the folder `out`; return the manifest.

    `out` must not exist or be empty; it is built under a temporary name and renamed, so a failure
    leaves nothing. A bad slice fails the whole run naming the file, unless `skip_bad`, which
    skips it and lists it with the reason in the manifest.
    """
    started = time.perf_counter()
    paths = [Path(src)] if isinstance(src, (str, os.PathLike)) else [Path(p) for p in src]
    out = Path(out)
    if not paths:
        raise TumorcamError("SRC: give at least one folder or zip")
    if size < 8:
        raise TumorcamError(f"--size {size}: must be at least 8")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TumorcamError(f"--out {out}: exists and is not empty; prepare never overwrites, choose a new folder or remove it")
    with ExitStack() as stack:

        def scratch() -> Path:
            """A fresh temporary folder beside `out` for a nested zip, removed when prepare ends."""
            return Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f".{out.name}.nested.", dir=_existing_parent(out))))

        source = collect(paths, scratch)
        if not source.tasks:
            raise TumorcamError(f"SRC {', '.join(map(str, paths))}: no .mat files, figshare zips or images/ + masks/ PNG pairs found")
        ids = [t.file_id for t in source.tasks]
        renumbered = None in ids or len(set(ids)) != len(ids)
        if renumbered:
            _refuse_duplicate_ids(source.tasks)
            source.tasks = [_with_id(t, i) for i, t in enumerate(sorted(source.tasks, key=lambda t: t.name), start=1)]
            source.folds = None
        rows, skipped = _load_all(source.tasks, size, skip_bad, workers)
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


def _with_id(task: Task, file_id: int) -> Task:
    return Task(task.kind, task.name, task.path, task.member, file_id, task.info)


def _refuse_duplicate_ids(tasks: list[Task]) -> None:
    seen: dict[int, str] = {}
    for task in tasks:
        if task.file_id is not None and task.file_id in seen:
            raise TumorcamError(f"{task.name}: file number {task.file_id} also comes from {seen[task.file_id]}; give each slice once")
        if task.file_id is not None:
            seen[task.file_id] = task.name


# ---------------------------------------------------------------- finding the slices


def collect(paths: list[Path], scratch: Callable[[], Path]) -> Source:
    """Every slice under `paths` (folders of .mat files, zips, or one PNG folder) and any fold file."""
    source = Source(kind="")
    kinds = []
    for path in paths:
        if not path.exists():
            raise TumorcamError(f"SRC {path}: no such file or folder")
        if path.is_dir() and is_png_folder(path):
            kinds.append("png-folder")
            _collect_png(path, source)
        elif path.is_dir():
            # the .mat files anywhere below; the zips only where nothing is extracted yet
            files = sorted(path.rglob("*"))
            mats = [f for f in files if f.suffix.lower() == ".mat"]
            slices = [f for f in mats if f.name.lower() != "cvind.mat"]
            kinds.append("mat-folder" if slices else "zip-folder")
            for file in mats:
                _add_mat_file(file, source)
            for file in [] if slices else [f for f in files if f.suffix.lower() == ".zip"]:
                _collect_zip(file, str(file), source, scratch)
        elif path.suffix.lower() == ".zip":
            kinds.append("zip")
            _collect_zip(path, str(path), source, scratch)
        elif path.suffix.lower() == ".mat":
            kinds.append("mat-file")
            _add_mat_file(path, source)
        else:
            raise TumorcamError(f"SRC {path}: not a folder, .zip or .mat file")
    source.kind = "+".join(sorted(set(kinds)))
    return source


def _add_mat_file(file: Path, source: Source) -> None:
    if file.name.lower() == "cvind.mat":
        _set_folds(source, read_cvind(file), str(file))
    else:
        source.tasks.append(Task("mat", str(file), str(file), file_id=file_id_of(file.name)))


def _collect_zip(path: Path, display: str, source: Source, scratch: Callable[[], Path]) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.infolist():
                base = member.filename.rsplit("/", 1)[-1]
                if member.is_dir() or base.startswith("._") or member.filename.startswith("__MACOSX/"):
                    continue
                name = f"{display}/{member.filename}"
                if base.lower() == "cvind.mat":
                    _set_folds(source, read_cvind(archive.read(member), name), name)
                elif base.lower().endswith(".mat"):
                    source.tasks.append(Task("zip", name, str(path), member.filename, file_id_of(base)))
                elif base.lower().endswith(".zip"):
                    nested = scratch() / "nested.zip"
                    with archive.open(member) as inner, open(nested, "wb") as copy:
                        shutil.copyfileobj(inner, copy, 1 << 20)
                    _collect_zip(nested, name, source, scratch)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise TumorcamError(f"{display}: not a readable zip ({exc})") from None


def _collect_png(root: Path, source: Source) -> None:
    metadata_file = root / "metadata.csv"
    metadata = read_metadata(metadata_file) if metadata_file.is_file() else {}
    folds: dict[int, int] = {}
    for image in sorted((root / "images").glob("*.png")):
        file_id = file_id_of(image.name)
        info = metadata.get(file_id) if file_id is not None else None
        if metadata and info is None:
            raise TumorcamError(f"{metadata_file}: no row for {image.name}")
        if info is not None and info.fold is not None:
            folds[file_id] = info.fold
        source.tasks.append(Task("png", str(image), str(image), str(root / "masks" / image.name), file_id, info))
    if folds and len(folds) == len(source.tasks):
        _set_folds(source, folds, f"{metadata_file} (fold column)")


def _set_folds(source: Source, folds: np.ndarray | dict[int, int], where: str) -> None:
    """Record the fold of each file number; a second, identical copy (a cvind.mat beside the zips and in one) is fine."""
    found = folds if isinstance(folds, dict) else {i: int(f) for i, f in enumerate(folds, start=1)}
    if source.folds is not None and source.folds != found:
        raise TumorcamError(f"{where}: a second, different fold assignment (the first came from {source.folds_from})")
    if source.folds is None:
        source.folds, source.folds_from = found, where


# ---------------------------------------------------------------- reading the slices


def _load_all(tasks: list[Task], size: int, skip_bad: bool, workers: int | None) -> tuple[list[Row], list[dict[str, str]]]:
    workers = _worker_count(workers)
    jobs = [(task, size) for task in tasks]
    rows: list[Row] = []
    skipped: list[dict[str, str]] = []
    progress = tqdm(total=len(jobs), desc="prepare", unit="slice", dynamic_ncols=True, disable=None)
    with ExitStack() as stack:
        if workers > 1 and len(jobs) >= SERIAL_BELOW:
            methods = multiprocessing.get_all_start_methods()
            context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
            pool = stack.enter_context(ProcessPoolExecutor(max_workers=workers, mp_context=context))
            results = pool.map(_load_one, jobs, chunksize=max(1, len(jobs) // (workers * 16)))
        else:
            results = map(_load_one, jobs)
        for result in results:
            progress.update()
            if isinstance(result, Row):
                rows.append(result)
            elif skip_bad:
                skipped.append({"file": result[0], "reason": result[1]})
            else:
                progress.close()
                raise TumorcamError(result[1] if result[1].startswith(result[0]) else f"{result[0]}: {result[1]}")
    progress.close()
    while _OPEN_ZIPS:  # zips opened in this process by the serial path
        _OPEN_ZIPS.popitem()[1].close()
    return rows, skipped


def _worker_count(workers: int | None) -> int:
    if workers is not None:
        if workers < 1:
            raise TumorcamError(f"--workers {workers}: must be at least 1")
        return workers
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(available, 16))


_OPEN_ZIPS: dict[str, zipfile.ZipFile] = {}


def _load_one(job: tuple[Task, int]) -> Row | tuple[str, str]:
    """Read, check, normalise and resize one slice; a bad one comes back as (name, reason)."""
    task, size = job
    try:
        if task.kind == "png":
            image, mask = read_png_pair(task.path, task.member)
            info = task.info or SliceInfo(None, None, None)
            pid, label = info.pid or Path(task.name).stem, info.label or 0
        else:
            if task.kind == "zip":
                archive = _OPEN_ZIPS.get(task.path) or _OPEN_ZIPS.setdefault(task.path, zipfile.ZipFile(task.path))
                mat = read_mat(archive.read(task.member), task.name)
            else:
                mat = read_mat(task.path, task.name)
            image, mask, pid, label = mat.image, mat.mask, mat.pid, mat.label
        assert task.file_id is not None
        return Row(task.file_id, pid, label, normalise(image, size, task.name), resize_mask(mask, size), image.shape)
    except TumorcamError as exc:
        return task.name, str(exc)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        return task.name, f"{task.name}: unreadable zip member ({exc})"


def normalise(image: np.ndarray, size: int, name: str) -> np.ndarray:
    """image / max(image) (negatives clipped to 0), resized bilinear to (size, size), float16 in [0, 1]."""
    from PIL import Image

    pixels = np.clip(np.asarray(image, dtype=np.float32), 0, None)
    peak = float(pixels.max())
    if not np.isfinite(peak) or peak <= 0:
        raise TumorcamError(f"{name}: image has no positive values to normalise by")
    pixels /= peak
    if pixels.shape != (size, size):
        pixels = np.asarray(Image.fromarray(pixels, mode="F").resize((size, size), Image.Resampling.BILINEAR))
    return np.clip(pixels, 0, 1).astype(np.float16)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize of a bool mask to (size, size)."""
    from PIL import Image

    if mask.shape == (size, size):
        return mask.astype(bool)
    picture = Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.Resampling.NEAREST)
    return np.asarray(picture) > 127


# ---------------------------------------------------------------- splits and manifest


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
