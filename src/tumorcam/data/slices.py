"""Reading the slices found by `tumorcam.data.sources`, by a process pool: each one read (`mat.py`,
`png.py`), checked, its image clipped at 0 and divided by its maximum (the seed's normalization),
resized to `size` x `size` (image bilinear, mask nearest, with Pillow), stored float16 in [0, 1];
mask bool. A bad slice comes back as (name, reason).
"""

from __future__ import annotations

import multiprocessing
import os
import zipfile
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from tumorcam.data.mat import read_mat
from tumorcam.data.png import SliceInfo, read_png_pair
from tumorcam.data.sources import Task
from tumorcam.errors import TumorcamError

SERIAL_BELOW = 32  # fewer slices than this are read in-process: a pool costs more than it saves


@dataclass(frozen=True)
class Row:
    file_id: int
    pid: str
    label: int
    image: np.ndarray  # (S, S) float16 in [0, 1]
    mask: np.ndarray  # (S, S) bool
    original_shape: tuple[int, int]


def read_slices(tasks: list[Task], size: int, skip_bad: bool, workers: int | None) -> tuple[list[Row], list[dict[str, str]]]:
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
            raise TumorcamError(f"workers {workers}: must be at least 1", param="workers")
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
        return Row(task.file_id, pid, label, normalize(image, size, task.name), resize_mask(mask, size), image.shape)
    except TumorcamError as exc:
        return task.name, str(exc)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        return task.name, f"{task.name}: unreadable zip member ({exc})"


def normalize(image: np.ndarray, size: int, name: str) -> np.ndarray:
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
