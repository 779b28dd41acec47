"""The prepared volume folder: `prepare_volumes` turns an nnU-Net raw folder into it, `load_volumes` reads it.

Layout (every array `np.load`-able without pickle, memory-mapped on load)::

    volumes.npy   (N, C, S, S, S) float16 in [0, 1]
    masks.npy     (N, S, S, S) bool: the explained region
    case_ids.npy  (N,) unicode: the case (= the patient)
    affines.npy   (N, 4, 4) float64: each case's original affine (channel 0's)
    shapes.npy    (N, 3) int64: each case's original spatial shape
    manifest.json {"kind": "volumes", "format": "nnunet-raw", "source", "channels", "labels", "region",
                   "size", "count", "cases", "skipped", "normalization", "resampling", "splits", "seconds", ...}
    splits.json   {"train": [case ids], "val": [...], "test": [...]}

Per case (rows in sorted case-id order):

1. read and check it (`tumorcam.data.nnunet.read_case`: geometry, NaN, label values);
2. normalize each channel from the case's foreground (nnU-Net's `use_mask_for_norm`): the
   background value of a channel is the most frequent value on the volume's border (its six faces)
   when it covers at least a quarter of them (else the channel has no constant background); the
   foreground is the voxels where any channel differs from its background value (all voxels when
   that is none or every voxel). lo, hi = the channel's 0.5th and 99.5th percentiles over the
   foreground; x -> (clip(x, lo, hi) - lo) / (hi - lo), and the background voxels are set to 0. So a
   zero background and a constant non-zero one (z-scored volumes) both map to 0 and stay out of the
   percentiles. A channel that clips more than 2 % of the region's voxels at 1 is warned about
   (`TumorcamWarning`), and every case's clipped shares are in the manifest's "clipped";
3. resample to the cube S x S x S with `torch.nn.functional.interpolate`: images trilinear
   (align_corners=False), masks nearest-exact (the source voxel whose centre is nearest, consistent
   with the images' half-voxel-centred grid). Each axis is stretched independently: the cube is in
   voxel space, the physical geometry stays in affines.npy and shapes.npy;
4. region: mask = label > 0 (the whole tumor) by default, or label in `region_labels` (values that
   dataset.json declares). A dataset.json "ignore" label (nnU-Net's unannotated voxels) is left out
   of the default region. Cases whose mask is empty after resampling are listed in the manifest's
   "empty_region".

Splits: the cases shuffled with `seed`, then cut 70/15/15 (val and test at least one case each
when there are 3 or more cases; with 2 cases, train 1 and test 1; with 1, train only).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from tumorcam.data.arrays import read_folder, rows_of_split
from tumorcam.data.nnunet import Case, DatasetInfo, read_case, read_dataset
from tumorcam.data.slices import _worker_count
from tumorcam.data.splits import STRATIFIED_FRACTIONS, software_versions
from tumorcam.errors import TumorcamError
from tumorcam.io import atomic_dir, save_npy, write_json

if TYPE_CHECKING:
    import torch

ARRAY_FILES = ("volumes.npy", "masks.npy", "case_ids.npy", "affines.npy", "shapes.npy")
NORMALIZATION = (
    "per case and channel: clip to the 0.5th..99.5th percentile of the foreground voxels (where any channel "
    "differs from its background, the most frequent value on the volume's border), then (x - lo) / (hi - lo) "
    "into [0, 1]; the background set to 0"
)
RESAMPLING = {"images": "trilinear (align_corners=False)", "masks": "nearest-exact"}
PERCENTILES = (0.5, 99.5)
BACKGROUND_BORDER_SHARE = 0.25  # the border's most frequent value is the background when it covers this much of the border
# warn when more than this share of a case's region voxels clip at 1 in some channel. The 99.5th
# percentile clips 0.5% of the foreground by definition: a tumour that is the brightest 5% of the
# foreground loses up to 10% of its voxels to it (the synthetic demo: 2-8%); a background inside the
# percentiles clipped 20-59% of a BraTS tumour's FLAIR voxels. 10% separates the two.
CLIPPED_WARNING = 0.10
MIN_SIZE = 8
SERIAL_BELOW_BYTES = 100 * 2**20  # imagesTr/ smaller than this is read in-process unless `workers` is given


@dataclass
class PreparedVolumes:
    """The arrays of a prepared volume folder (memory-mapped) with its manifest and splits; a
    `tumorcam.data.prepared.Prepared` whose unit is the case."""

    root: Path
    images: np.ndarray
    masks: np.ndarray
    case_ids: np.ndarray
    affines: np.ndarray
    shapes: np.ndarray
    manifest: dict[str, Any]
    splits: dict[str, list[str]]

    unit = "case"

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def unit_ids(self) -> np.ndarray:
        """The case id of each volume."""
        return self.case_ids

    @property
    def channels(self) -> list[str]:
        return list(self.manifest["channels"])

    @property
    def size(self) -> int:
        return int(self.images.shape[-1])

    def indices(self, split: str) -> np.ndarray:
        """Row indices of a split (`train`, `val`, `test`) or of every case (`all`)."""
        return rows_of_split(self.splits, split, self.case_ids)

    def tensors(self, rows: np.ndarray | Sequence[int]) -> tuple["torch.Tensor", "torch.Tensor"]:
        """Images (n, C, S, S, S) float32 in [0, 1] and masks (n, 1, S, S, S) float32 {0, 1} of `rows`."""
        import torch

        rows = np.asarray(rows, dtype=np.int64)
        images = torch.from_numpy(np.asarray(self.images[rows], dtype=np.float32))
        masks = torch.from_numpy(np.asarray(self.masks[rows], dtype=np.float32)).unsqueeze(1)
        return images, masks


def is_volume_folder(path: str | Path) -> bool:
    """True for a folder that is (or claims to be) a prepared volume folder: volumes.npy, or a manifest of kind "volumes"."""
    path = Path(path)
    if (path / "volumes.npy").is_file():
        return True
    try:
        return json.loads((path / "manifest.json").read_text()).get("kind") == "volumes"
    except (OSError, ValueError, AttributeError):
        return False


def load_volumes(root: str | Path) -> PreparedVolumes:
    """Open a prepared volume folder; a folder that is not one fails with a message naming what is missing."""
    root = Path(root)
    if not root.is_dir():
        raise TumorcamError(f"data {root}: no such folder", param="data")
    arrays, manifest, splits = read_folder(root, ARRAY_FILES, "prepared volume folder", "NNUNET_RAW")
    if not isinstance(manifest, dict) or manifest.get("kind") != "volumes":
        raise TumorcamError(f"{root / 'manifest.json'}: not a volume manifest (kind is not \"volumes\")")
    images = arrays["volumes.npy"]
    n = images.shape[0]
    if images.ndim != 5 or images.shape[2:] != (images.shape[-1],) * 3 or images.shape[1] != len(manifest.get("channels", [])):
        raise TumorcamError(f"{root / 'volumes.npy'}: shape {images.shape} is not (N, C, S, S, S) with C = the manifest's channels")
    expected = {"masks.npy": (n, *images.shape[2:]), "case_ids.npy": (n,), "affines.npy": (n, 4, 4), "shapes.npy": (n, 3)}
    for name, shape in expected.items():
        if arrays[name].shape != shape:
            raise TumorcamError(f"{root / name}: shape {arrays[name].shape}, expected {shape} (volumes.npy has {n} cases)")
    return PreparedVolumes(
        root=root,
        images=images,
        masks=arrays["masks.npy"],
        case_ids=arrays["case_ids.npy"],
        affines=arrays["affines.npy"],
        shapes=arrays["shapes.npy"],
        manifest=manifest,
        splits={k: [str(c) for c in v] for k, v in splits.items()},
    )


def prepare_volumes(
    src: str | os.PathLike,
    out: str | os.PathLike,
    size: int = 64,
    skip_bad: bool = False,
    seed: int = 0,
    region_labels: Sequence[int] | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """Prepare the nnU-Net raw folder `src` into the new (or empty) folder `out`; return the manifest.

    `out` is built under a temporary name and renamed, so a failure leaves nothing. A bad case fails
    the run with one line naming the file, unless `skip_bad`, which skips it and lists it (case and
    reason) in the manifest. Cases are read by `workers` processes (default: the CPUs available,
    at most 16, or in-process when imagesTr/ holds less than 100 MiB or there is one case).
    """
    started = time.perf_counter()
    src, out = Path(src), Path(out)
    if size < MIN_SIZE:
        raise TumorcamError(f"size {size}: must be at least {MIN_SIZE}", param="size")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TumorcamError(f"out {out}: exists and is not empty; prepare never overwrites, choose a new folder or remove it",
                            param="out")
    if not src.exists():
        raise TumorcamError(f"SRC {src}: no such file or folder")
    info = read_dataset(src)
    region = _region(info, region_labels)
    if workers is None and sum(p.stat().st_size for p in (src / "imagesTr").iterdir() if p.is_file()) < SERIAL_BELOW_BYTES:
        workers = 1  # a pool's start-up (each worker imports torch) costs more than it saves
    workers = _worker_count(workers)
    n_all, channels = len(info.cases), len(info.channels)
    kept: list[str] = []
    affines: list[np.ndarray] = []
    shapes: list[tuple[int, int, int]] = []
    skipped: list[dict[str, str]] = []
    empty: list[str] = []
    clipped: dict[str, dict[str, float]] = {}
    backgrounds: dict[str, list[float | None]] = {}
    with atomic_dir(out) as tmp:
        staging = np.lib.format.open_memmap(tmp / ".volumes.staging.npy", mode="w+", dtype=np.float16, shape=(n_all, channels, size, size, size))
        masks = np.zeros((n_all, size, size, size), dtype=bool)
        with ExitStack() as stack:
            jobs = [(info, case, size, region["labels"]) for case in info.cases]
            if workers > 1 and len(jobs) > 1:
                methods = multiprocessing.get_all_start_methods()
                context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
                pool = stack.enter_context(ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=context, initializer=_single_thread))
                stack.callback(pool.shutdown, wait=True, cancel_futures=True)  # a failure does not wait for the remaining cases
                results = pool.map(_prepare_one, jobs)
            else:
                results = map(_prepare_one, jobs)
            progress = stack.enter_context(tqdm(total=len(jobs), desc="prepare", unit="case", dynamic_ncols=True, disable=None))
            for case, result in zip(info.cases, results):
                progress.update()
                if isinstance(result, str):
                    if not skip_bad:
                        raise TumorcamError(result)
                    skipped.append({"case": case, "reason": result})
                    continue
                row = len(kept)
                staging[row], masks[row] = result.images, result.mask
                kept.append(case)
                affines.append(result.affine)
                shapes.append(result.shape)
                if not result.mask.any():
                    empty.append(case)
                clipped[case] = {name: round(share, 4) for name, share in zip(info.channels, result.clipped)}
                backgrounds[case] = list(result.background)
        if not kept:
            raise TumorcamError(f"SRC {src}: every case was bad; nothing to prepare")
        if len(kept) == n_all:
            staging.flush()
            del staging
            os.replace(tmp / ".volumes.staging.npy", tmp / "volumes.npy")
        else:
            _write_rows(tmp / "volumes.npy", staging, len(kept))
            del staging
            (tmp / ".volumes.staging.npy").unlink()
        save_npy(tmp / "masks.npy", masks[: len(kept)])
        save_npy(tmp / "case_ids.npy", np.array(kept, dtype=str))
        save_npy(tmp / "affines.npy", np.stack(affines).astype(np.float64))
        save_npy(tmp / "shapes.npy", np.array(shapes, dtype=np.int64))
        splits = split_cases(kept, seed)
        write_json(tmp / "splits.json", splits)
        manifest = _manifest(src, info, region, size, kept, skipped, empty, splits, seed)
        manifest["clipped"] = clipped
        manifest["background"] = backgrounds
        manifest["seconds"] = round(time.perf_counter() - started, 2)
        write_json(tmp / "manifest.json", manifest)
    warn_clipped(clipped, region["rule"])  # after the folder is complete, so that warnings as errors leave it whole
    return manifest


def split_cases(cases: Sequence[str], seed: int) -> dict[str, list[str]]:
    """{"train", "val", "test"}: the cases shuffled with `seed` and cut 70/15/15 (each list sorted).
    val and test get round(0.15 N) cases, at least one each when N >= 3 (test one when N == 2)."""
    n = len(cases)
    order = np.random.default_rng(seed).permutation(sorted(cases))
    n_val = max(1, round(STRATIFIED_FRACTIONS[1] * n)) if n >= 3 else 0
    n_test = max(1, round(STRATIFIED_FRACTIONS[2] * n)) if n >= 2 else 0
    n_train = n - n_val - n_test
    return {
        "train": sorted(str(c) for c in order[:n_train]),
        "val": sorted(str(c) for c in order[n_train : n_train + n_val]),
        "test": sorted(str(c) for c in order[n_train + n_val :]),
    }


def background_values(images: np.ndarray) -> list[float | None]:
    """Per channel of a case (C, D, H, W): its background value, the most frequent value on the
    volume's border (the six faces) when it covers at least `BACKGROUND_BORDER_SHARE` of the border
    voxels; None for a channel with no constant background (e.g. noise in the air)."""
    values: list[float | None] = []
    for channel in images:
        border = np.concatenate([channel[[0, -1]].ravel(), channel[:, [0, -1]].ravel(), channel[:, :, [0, -1]].ravel()])
        found, counts = np.unique(border, return_counts=True)
        top = int(np.argmax(counts))
        values.append(float(found[top]) if counts[top] >= BACKGROUND_BORDER_SHARE * border.size else None)
    return values


def foreground_mask(images: np.ndarray, background: Sequence[float | None] | None = None) -> np.ndarray | None:
    """The foreground (D, H, W) bool of a case (C, D, H, W): the voxels where any channel differs from
    its `background` value (default `background_values`); None (use every voxel) when some channel
    has no constant background, or the foreground is empty or every voxel."""
    background = background_values(images) if background is None else background
    if any(value is None for value in background):
        return None
    mask = np.zeros(images.shape[1:], dtype=bool)
    for channel, value in zip(images, background):
        mask |= channel != np.asarray(value, dtype=channel.dtype)
    return mask if mask.any() and not mask.all() else None


def channel_range(channel: np.ndarray, path: Path, foreground: np.ndarray | None) -> tuple[np.float64, np.float64]:
    """lo, hi: the 0.5th and 99.5th percentiles of the channel over `foreground` (None: every voxel)."""
    if not channel.any():
        raise TumorcamError(f"{path}: every voxel is 0; nothing to normalize")
    lo, hi = np.percentile(channel if foreground is None else channel[foreground], PERCENTILES)
    if hi <= lo:
        raise TumorcamError(f"{path}: constant intensity {float(lo):.6g} over its foreground voxels; nothing to normalize")
    return np.float64(lo), np.float64(hi)  # float64 scalars: the scaling is computed in float64, then stored float32


def normalize_channel(channel: np.ndarray, path: Path) -> np.ndarray:
    """One channel (D, H, W) as `normalize_case` scales it on its own: clipped to the 0.5th..99.5th
    percentile of its foreground voxels, scaled to [0, 1] (float32), the background set to 0."""
    return normalize_case(channel[None], [path])[0][0]


def normalize_case(images: np.ndarray, paths: Sequence[Path], region: np.ndarray | None = None
                   ) -> tuple[np.ndarray, list[float | None], list[float]]:
    """A case (C, D, H, W) normalized channel by channel from its common foreground (`foreground_mask`):
    each channel clipped to the 0.5th..99.5th percentile of the foreground voxels, scaled to [0, 1]
    and its background set to 0. Returns (images (C, D, H, W) float32 in [0, 1], the background value per channel,
    the share of the `region`'s voxels (D, H, W) bool above hi per channel, i.e. clipped at 1; 0 for
    an empty or absent region)."""
    background = background_values(images)
    foreground = foreground_mask(images, background)
    if foreground is None:
        background = [None] * len(images)  # every voxel is foreground: nothing is background
    out = np.empty(images.shape, dtype=np.float32)
    clipped: list[float] = []
    count = 0 if region is None else int(region.sum())
    for index, (channel, path) in enumerate(zip(images, paths)):
        lo, hi = channel_range(channel, path, foreground)
        out[index] = (np.clip(channel, lo, hi) - lo) / (hi - lo)
        if foreground is not None:
            out[index][~foreground] = 0
        clipped.append(float((channel[region] > hi).sum() / count) if count else 0.0)
    return out, background, clipped


def warn_clipped(clipped: dict[str, dict[str, float]], region: str = "label > 0", shown: int = 5) -> str | None:
    """One `TumorcamWarning` (returned too; None when there is none) for the cases of `clipped` (case ->
    channel -> share of the region's voxels clipped at 1) with a channel above `CLIPPED_WARNING`:
    the count and the `shown` largest (case, channel, share)."""
    over = sorted(((share, case, channel) for case, shares in clipped.items() for channel, share in shares.items()
                   if share > CLIPPED_WARNING), key=lambda item: (-item[0], item[1], item[2]))
    if not over:
        return None
    cases = len({case for _, case, _ in over})
    worst = ", ".join(f"case {case} {channel} {share:.1%}" for share, case, channel in over[:shown])
    more = f", and {len(over) - shown} more" if len(over) > shown else ""
    message = (f"{cases} of {len(clipped)} case(s) clip more than {CLIPPED_WARNING:.0%} of the tumour's voxels "
               f"({region}) at 1 in some channel (above the 99.5th percentile of the case's foreground): {worst}{more}; "
               "their contrast within the tumour is lost (every share: the manifest's \"clipped\")")
    from tumorcam.guards import warn

    warn(message)
    return message


def resample(images: np.ndarray, label_mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Images (C, D, H, W) trilinear and a bool mask (D, H, W) nearest-exact to the cube `size`:
    ((C, S, S, S) float16 in [0, 1], (S, S, S) bool)."""
    import torch
    import torch.nn.functional as F

    cube = (size, size, size)
    with torch.no_grad():
        resized = F.interpolate(torch.from_numpy(images)[None], size=cube, mode="trilinear", align_corners=False)[0]
        mask = F.interpolate(torch.from_numpy(label_mask.astype(np.float32))[None, None], size=cube, mode="nearest-exact")[0, 0]
    return resized.clamp_(0, 1).numpy().astype(np.float16), mask.numpy() > 0.5


@dataclass(frozen=True)
class _Prepared:
    images: np.ndarray  # (C, S, S, S) float16
    mask: np.ndarray  # (S, S, S) bool
    affine: np.ndarray
    shape: tuple[int, int, int]
    clipped: tuple[float, ...] = ()  # per channel: the share of the region's voxels clipped at 1
    background: tuple[float | None, ...] = ()  # per channel: the background value (None: every voxel is foreground)


def _prepare_one(job: tuple[DatasetInfo, str, int, list[int]]) -> _Prepared | str:
    """Read, check, normalize, resample one case; a bad case comes back as its one-line reason."""
    info, case_id, size, region_labels = job
    try:
        case: Case = read_case(info.root, case_id, info)
        assert case.label is not None
        region = np.isin(case.label, region_labels)
        paths = [info.image_path(case_id, i) for i in range(len(case.images))]
        images, background, clipped = normalize_case(case.images, paths, region)
        images, mask = resample(images, region, size)
    except TumorcamError as exc:
        return str(exc)
    return _Prepared(images, mask, case.affine, tuple(int(n) for n in case.images.shape[1:]), tuple(clipped),
                     tuple(background))


def _single_thread() -> None:
    """Pool workers: one torch thread each, so that the workers do not compete for the cores."""
    import torch

    torch.set_num_threads(1)


def _region(info: DatasetInfo, region_labels: Sequence[int] | None) -> dict[str, Any]:
    """The manifest's "region": its rule and the label values it covers (checked against dataset.json)."""
    known = info.label_values
    if region_labels is None:
        ignore = info.labels.get("ignore")
        if isinstance(ignore, int):  # nnU-Net's "ignore" label marks unannotated voxels, not tumor
            return {"rule": f"label > 0, except ignore = {ignore}", "labels": [v for v in known if v > 0 and v != ignore]}
        return {"rule": "label > 0", "labels": [v for v in known if v > 0]}
    wanted = sorted({int(v) for v in region_labels})
    if not wanted:
        raise TumorcamError("region_labels: give at least one label value", param="region_labels")
    if 0 in wanted:
        raise TumorcamError("region_labels: 0 is the background, not a region", param="region_labels")
    unknown = [v for v in wanted if v not in known]
    if unknown:
        names = ", ".join(f"{name}={value}" for name, value in info.labels.items())
        raise TumorcamError(f"region_labels: {unknown} not in {info.root / 'dataset.json'} labels ({names})",
                            param="region_labels")
    return {"rule": f"label in {wanted}", "labels": wanted}


def _write_rows(path: Path, staging: np.ndarray, rows: int) -> None:
    """Copy the first `rows` rows of `staging` into a new .npy file, one row at a time."""
    target = np.lib.format.open_memmap(path, mode="w+", dtype=staging.dtype, shape=(rows, *staging.shape[1:]))
    for row in range(rows):
        target[row] = staging[row]
    target.flush()
    del target


def _manifest(
    src: Path,
    info: DatasetInfo,
    region: dict[str, Any],
    size: int,
    kept: list[str],
    skipped: list[dict[str, str]],
    empty: list[str],
    splits: dict[str, list[str]],
    seed: int,
) -> dict[str, Any]:
    import nibabel
    import torch

    return {
        "kind": "volumes",
        "format": "nnunet-raw",
        "source": str(src.absolute()),
        "channels": info.channels,
        "labels": info.labels,
        "region": region,
        "size": size,
        "count": len(kept),
        "cases": len(kept),
        "skipped": skipped,
        "empty_region": empty,
        "normalization": NORMALIZATION,
        "resampling": RESAMPLING,
        "splits": {
            "method": f"seeded shuffle of the cases, seed {seed}, 70/15/15",
            "seed": seed,
            "counts": {name: len(ids) for name, ids in splits.items()},
        },
        "software": {**software_versions(), "nibabel": nibabel.__version__, "torch": torch.__version__},
    }
