"""The slices of the paper run: `pack` a PNG slice folder small enough to carry, `unpack` it checked,
or write tiny synthetic ones (smoke mode); `data_step` is the paper_run/data step."""

from __future__ import annotations

import csv
import hashlib
import json
import multiprocessing
import os
import shutil
import time
from pathlib import Path
from typing import Any

from gpu_proof.timebox import Recorder

PACK_FILE = "pack.json"


def pixel_digest(array: Any) -> str:
    """sha256 of an image's dtype, shape and pixel bytes."""
    import numpy as np

    array = np.ascontiguousarray(array)
    return hashlib.sha256(f"{array.dtype.str}{array.shape}".encode() + array.tobytes()).hexdigest()


def _pack_one(job: tuple[Path, Path]) -> tuple[str, str]:
    import numpy as np
    from PIL import Image

    src, dest = job
    with Image.open(src) as picture:
        pixels = np.asarray(picture)
    Image.fromarray(pixels).save(dest, format="JPEG2000")  # OpenJPEG's default: reversible 5/3 wavelet, lossless
    return src.stem, pixel_digest(pixels)


def pack(src: Path, dest: Path) -> dict[str, Any]:
    """Copy a PNG slice folder with the images as lossless JPEG 2000 and their digests in pack.json:
    the 2400 figshare-png256 slices take 58 MB instead of 67, small enough to carry to the GPU machine.

    Args:
        src: the folder (`images/N.png`, `masks/N.png`, `metadata.csv`).
        dest: a new or empty folder; it gets `images/N.j2k`, the masks, the metadata and pack.json
            (each image's `pixel_digest`).

    Returns:
        The content of pack.json: count, source, codec, digests, bytes before and after.
    """
    src, dest = Path(src), Path(dest)
    images = sorted((src / "images").glob("*.png"), key=lambda p: (len(p.stem), p.stem))
    if not images or not (src / "masks").is_dir():
        raise SystemExit(f"pack: {src} has no images/*.png and masks/")
    if dest.exists() and any(dest.iterdir()):
        raise SystemExit(f"pack: {dest} exists and is not empty")
    (dest / "images").mkdir(parents=True, exist_ok=True)
    shutil.copytree(src / "masks", dest / "masks")
    if (src / "metadata.csv").is_file():
        shutil.copyfile(src / "metadata.csv", dest / "metadata.csv")
    jobs = [(path, dest / "images" / f"{path.stem}.j2k") for path in images]
    with multiprocessing.get_context("fork").Pool(max(1, min(8, os.cpu_count() or 1))) as pool:
        digests = dict(pool.map(_pack_one, jobs, chunksize=16))
    info = {"format": "gpu_proof pack 1", "source": str(src), "codec": "JPEG 2000, lossless (OpenJPEG via Pillow)",
            "count": len(images), "images": digests,
            "source_bytes": sum(p.stat().st_size for p in images),
            "bytes": sum(p.stat().st_size for p in (dest / "images").iterdir())}
    (dest / PACK_FILE).write_text(json.dumps(info))
    return info


def is_pack(folder: Path) -> bool:
    """Whether `folder` was written by `pack`."""
    return (Path(folder) / PACK_FILE).is_file()


def _read_j2k(path: Path) -> Any:
    """Decode a JPEG 2000 file with Pillow, or OpenCV where Pillow has no OpenJPEG."""
    import numpy as np
    from PIL import Image, features

    if features.check("jpg_2000"):
        with Image.open(path) as picture:
            return np.asarray(picture)
    import cv2

    pixels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise ValueError(f"{path}: neither Pillow (no OpenJPEG) nor OpenCV could decode it")
    return pixels


def _unpack_one(job: tuple[Path, Path, str]) -> str | None:
    from PIL import Image

    src, dest, digest = job
    pixels = _read_j2k(src)
    if pixel_digest(pixels) != digest:
        return src.name
    Image.fromarray(pixels).save(dest, format="PNG", compress_level=1)
    return None


def unpack(packed: Path, dest: Path) -> dict[str, Any]:
    """Restore the PNG folder of a `pack`, checking every image against its digest.

    Args:
        packed: a folder written by `pack`.
        dest: the PNG folder to write.

    Returns:
        Source, count, codec and `pixels_verified`; a ValueError when an image differs from its digest.
    """
    info = json.loads((packed / PACK_FILE).read_text())
    (dest / "images").mkdir(parents=True, exist_ok=True)
    shutil.copytree(packed / "masks", dest / "masks")
    if (packed / "metadata.csv").is_file():
        shutil.copyfile(packed / "metadata.csv", dest / "metadata.csv")
    jobs = [(packed / "images" / f"{stem}.j2k", dest / "images" / f"{stem}.png", digest)
            for stem, digest in info["images"].items()]
    with multiprocessing.get_context("fork").Pool(max(1, min(16, os.cpu_count() or 1))) as pool:
        bad = [name for name in pool.map(_unpack_one, jobs, chunksize=16) if name]
    if bad:
        raise ValueError(f"{len(bad)} image(s) differ from the packed digests, e.g. {bad[0]}")
    return {"source": info["source"], "count": len(jobs), "pixels_verified": True, "codec": info["codec"]}


def write_smoke_pngs(root: Path, patients_per_fold: int = 2, slices: int = 2, size: int = 64) -> dict[str, Any]:
    """A tiny PNG slice folder in the figshare-png256 layout: bright discs on a textured background,
    folds 1-4 (1-3 train, 4 val), classes cycling.

    Args:
        root: the folder to write (images/, masks/, metadata.csv).
        patients_per_fold: patients in each of the 4 folds.
        slices: slices per patient.
        size: image side in pixels.

    Returns:
        Source, count and size of the slices.
    """
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rows, file_id = [], 0
    for fold in (1, 2, 3, 4):
        for p in range(patients_per_fold):
            pid, label = f"{fold}{p:02d}", 1 + (fold + p) % 3
            for _ in range(slices):
                file_id += 1
                cy, cx = rng.uniform(0.3, 0.7, 2) * size
                mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= (rng.uniform(0.08, 0.16) * size) ** 2
                image = np.clip(0.3 + 0.1 * rng.standard_normal((size, size)) + 0.5 * mask, 0, 1)
                Image.fromarray((image * 255).astype(np.uint8)).save(root / "images" / f"{file_id}.png")
                Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / f"{file_id}.png")
                rows.append({"file_id": file_id, "pid": pid, "label": label, "fold": fold})
    with open(root / "metadata.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file_id", "pid", "label", "fold"])
        writer.writeheader()
        writer.writerows(rows)
    return {"source": "synthetic discs (smoke)", "count": file_id, "size": size}



def data_step(record: Recorder, source: Path | None, dest: Path) -> None:
    """The paper_run/data step: `dest` gets the slices of the pack `source`, or smoke slices when it is None.

    Args:
        record: the step's results (`info`: what `unpack` or `write_smoke_pngs` returned, and seconds).
        source: a `pack` folder, or None.
        dest: the PNG folder to write.
    """
    start = time.perf_counter()
    info = write_smoke_pngs(dest) if source is None else unpack(source, dest)
    record.set("info", {**info, "seconds": round(time.perf_counter() - start, 1)})
