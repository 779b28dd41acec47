"""Finding the slices of SRC: folders of figshare `.mat` files, zips of them (read in place; a
zip nested in a zip, as in the figshare article zip, is first copied to a scratch file), single
`.mat` files, or a PNG folder (`images/` + `masks/`, optional `metadata.csv`); and the official
folds when the source has them (`cvind.mat` beside the files or in a zip, or a `fold` column).
"""

from __future__ import annotations

import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tumorcam.data.mat import file_id_of, read_cvind
from tumorcam.data.png import SliceInfo, is_png_folder, read_metadata
from tumorcam.errors import TumorcamError


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


def renumber(source: Source) -> bool:
    """Number the slices 1..N in name order when some have no file number or two share one
    (then the folds no longer apply); True when it did. Two files naming the same number are an error."""
    ids = [t.file_id for t in source.tasks]
    if None not in ids and len(set(ids)) == len(ids):
        return False
    _refuse_duplicate_ids(source.tasks)
    source.tasks = [_with_id(t, i) for i, t in enumerate(sorted(source.tasks, key=lambda t: t.name), start=1)]
    source.folds = None
    return True


def _with_id(task: Task, file_id: int) -> Task:
    return Task(task.kind, task.name, task.path, task.member, file_id, task.info)


def _refuse_duplicate_ids(tasks: list[Task]) -> None:
    seen: dict[int, str] = {}
    for task in tasks:
        if task.file_id is not None and task.file_id in seen:
            raise TumorcamError(f"{task.name}: file number {task.file_id} also comes from {seen[task.file_id]}; give each slice once")
        if task.file_id is not None:
            seen[task.file_id] = task.name
