"""Synthetic multi-sequence brain MRI volumes with a known signal, in nnU-Net v2's raw layout.

`write_synthetic_volumes(out, cases, size, seed)` writes::

    out/dataset.json                  channels T1, T1CE, T2, FLAIR; labels background 0, edema 1, enhancing 2
    out/imagesTr/TCAM_000_0000.nii.gz  one float32 NIfTI per channel (0 T1, 1 T1CE, 2 T2, 3 FLAIR)
    out/labelsTr/TCAM_000.nii.gz       uint8 label map

Each case is a grid of shape (S, S + S//4, S - S//4) (S = `size`) with spacing (1.2, 1.0, 1.5) mm and
a non-zero origin (a per-case shift), stored as the NIfTI affine (sform and qform).

Anatomy: a head-like ellipsoid (random semi-axes, 0.36-0.44 of each physical extent), exactly 0
outside it, inside a brain whose tissue contrast is a smooth random field (Gaussian-filtered noise,
the same field in every channel: T1 and T1CE show it as is, T2 and FLAIR inverted), a darker
ventricle-like ellipsoid at the centre, and independent Gaussian noise per channel.

Lesion: one per case at a random position inside the brain: an enhancing core (label 2, an
ellipsoid with radii 0.10-0.16 of the smallest physical extent) inside an edema shell (label 1,
the core's radii x 1.5-2.0), both clipped to the head.

KNOWN SIGNAL, added to the anatomy (tissue level about 0.5):

    channel  edema (label 1)  core (label 2)
    T1       +0               +0              no lesion information at all
    T1CE     +0               +0.7            the enhancing core only
    T2       +0.15            +0.15           the whole lesion, weakly
    FLAIR    +0.6             +0.6            the whole lesion, brightly

So a model that finds the whole tumor (label > 0) should rely on FLAIR (and a little T2), one
that finds the core (label 2) on T1CE, and neither on T1. Everything is deterministic from `seed`
(case i uses `numpy.random.default_rng([seed, i])`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from scipy import ndimage

from tumorcam.errors import TumorcamError
from tumorcam.io import atomic_dir, write_json

CHANNELS = ("T1", "T1CE", "T2", "FLAIR")
LABELS = {"background": 0, "edema": 1, "enhancing": 2}
SPACING = (1.2, 1.0, 1.5)
MIN_SIZE = 16
# Lesion contrast added per channel: (on the whole lesion, label > 0; extra on the core, label 2).
LESION_SIGNAL = {"T1": (0.0, 0.0), "T1CE": (0.0, 0.7), "T2": (0.15, 0.0), "FLAIR": (0.6, 0.0)}
TISSUE, TEXTURE, VENTRICLE, NOISE = 0.5, 0.12, 0.2, 0.03


def write_synthetic_volumes(out: str | os.PathLike, cases: int = 24, size: int = 32, seed: int = 0) -> Path:
    """Write `cases` synthetic cases TCAM_000, TCAM_001, ... into the new (or empty) folder `out`
    (built under a temporary name and renamed); return `out`."""
    import nibabel as nib

    out = Path(out)
    if cases < 1:
        raise TumorcamError(f"cases {cases}: must be at least 1", param="cases")
    if size < MIN_SIZE:
        raise TumorcamError(f"size {size}: must be at least {MIN_SIZE}", param="size")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TumorcamError(f"out {out}: exists and is not empty; choose a new folder", param="out")
    with atomic_dir(out) as tmp:
        (tmp / "imagesTr").mkdir()
        (tmp / "labelsTr").mkdir()
        for index in range(cases):
            case = f"TCAM_{index:03d}"
            rng = np.random.default_rng([seed, index])
            images, label = synthetic_case(size, rng)
            affine = case_affine(rng)
            for channel, image in enumerate(images):
                nib.save(nib.Nifti1Image(image, affine), tmp / "imagesTr" / f"{case}_{channel:04d}.nii.gz")
            nib.save(nib.Nifti1Image(label, affine), tmp / "labelsTr" / f"{case}.nii.gz")
        write_json(
            tmp / "dataset.json",
            {
                "name": "tumorcam-synthetic-volumes",
                "description": f"tumorcam synthetic multi-sequence brain volumes, {cases} cases, size {size}, seed {seed}",
                "channel_names": {str(i): name for i, name in enumerate(CHANNELS)},
                "labels": LABELS,
                "numTraining": cases,
                "file_ending": ".nii.gz",
            },
        )
    return out


def synthetic_case(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Images (4, D, H, W) float32 (T1, T1CE, T2, FLAIR) and label (D, H, W) uint8 of one case."""
    shape = (size, size + size // 4, size - size // 4)
    extent = np.array(shape) * np.array(SPACING)  # mm
    axes = [(np.arange(n) + 0.5) * s - e / 2 for n, s, e in zip(shape, SPACING, extent)]
    z, y, x = np.meshgrid(*axes, indexing="ij")  # mm from the centre
    head_axes = extent * rng.uniform(0.36, 0.44, 3)
    head = _ellipsoid(z, y, x, np.zeros(3), head_axes)
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=size / 12)
    field /= np.abs(field).max()
    ventricle = _ellipsoid(z, y, x, np.zeros(3), head_axes * rng.uniform(0.18, 0.25, 3))
    centre = head_axes * rng.uniform(-0.45, 0.45, 3)
    core_axes = extent.min() * rng.uniform(0.10, 0.16) * rng.uniform(0.8, 1.2, 3)
    core = _ellipsoid(z, y, x, centre, core_axes) & head
    lesion = _ellipsoid(z, y, x, centre, core_axes * rng.uniform(1.5, 2.0)) & head
    label = np.where(core, 2, np.where(lesion, 1, 0)).astype(np.uint8)
    images = np.zeros((len(CHANNELS), *shape), np.float32)
    for channel, name in enumerate(CHANNELS):
        contrast = 1.0 if name in ("T1", "T1CE") else -1.0
        tissue = TISSUE + contrast * TEXTURE * field - VENTRICLE * ventricle
        whole, core_extra = LESION_SIGNAL[name]
        tissue = tissue + whole * lesion + core_extra * core + NOISE * rng.standard_normal(shape)
        images[channel] = np.where(head, np.clip(tissue, 0.01, None), 0.0)
    return images, label


def case_affine(rng: np.random.Generator) -> np.ndarray:
    """Voxel -> world (mm): spacing (1.2, 1.0, 1.5) on the diagonal, a non-zero origin shifted per case."""
    affine = np.diag([*SPACING, 1.0])
    affine[:3, 3] = np.array([-90.0, -126.0, -72.0]) + rng.uniform(-5, 5, 3).round(2)
    return affine


def _ellipsoid(z: np.ndarray, y: np.ndarray, x: np.ndarray, centre: np.ndarray, axes: np.ndarray) -> np.ndarray:
    return ((z - centre[0]) / axes[0]) ** 2 + ((y - centre[1]) / axes[1]) ** 2 + ((x - centre[2]) / axes[2]) ** 2 <= 1.0
