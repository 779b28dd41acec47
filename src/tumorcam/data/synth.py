"""The embedded synthetic dataset: procedural T1 contrast-enhanced-looking slices written in
exactly the figshare MATLAB v7.3 layout, so that `prepare` reads them by the real files' path.

Each slice (256x256 int16): scalp (bright fat), skull (dark bone), a thin CSF rim, a brain with
a grey-matter cortex over brighter white matter and dark sulci, dark lateral ventricles and a
falx, a smooth multiplicative bias field and Rician noise (|signal + complex Gaussian|). One
enhancing tumour per slice, whose look and place follow the patient's class:

- meningioma (1): extra-axial, a round homogeneous bright mass sitting on the dura, with a thin
  CSF cleft between it and the brain;
- glioma (2): intra-axial, irregular, a bright enhancing rim around a dark necrotic core, in a
  hypointense oedema halo;
- pituitary (3): small, homogeneous, on the midline in the sellar region.

A patient has several slices through the same anatomy and tumour (the tumour's cross-section
shrinks away from its centre). Everything is deterministic from `seed`. `cvind.mat` beside the
slices holds a patient-wise 5-fold assignment stratified by class, as Cheng's official one does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from tumorcam.errors import TumorcamError
from tumorcam.io import atomic_dir, atomic_path, write_text

SIZE = 256
MATLAB_HEADER = (
    b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Thu Jan 01 00:00:00 1970 HDF5 schema 1.00 ."
).ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM"
BORDER_POINTS = 24
FOLDS = 5

# Tissue intensities before bias field and noise (tumours are clearly brighter than any tissue).
SCALP, BONE, MARROW, CSF, GRAY, WHITE = 0.72, 0.06, 0.22, 0.10, 0.40, 0.62
ENHANCING, NECROSIS, OEDEMA_FACTOR = 1.0, 0.20, 0.72


@dataclass(frozen=True)
class Head:
    """Patient anatomy: head ellipse centre (cy, cx), semi-axes (ry, rx) in pixels, rotation (radians)."""

    cy: float
    cx: float
    ry: float
    rx: float
    angle: float


@dataclass(frozen=True)
class Tumor:
    """Patient tumour: class, centre in head coordinates (u, v in [-1, 1]), radius in pixels, shape harmonics."""

    label: int
    u: float
    v: float
    radius: float
    harmonics: np.ndarray  # (n, 2): amplitude, phase of radius(theta) = r (1 + sum a_k cos(k theta + p_k))


def write_synthetic(out: str | os.PathLike, patients: int = 60, slices_per_patient: int = 4, seed: int = 0) -> list[Path]:
    """Write `patients * slices_per_patient` slices `1.mat ... N.mat` and `cvind.mat` into `out`.

    `out` must not exist or be empty; it is built under a temporary name and renamed. Returns the
    paths of the slice files in file-number order.
    """
    out = Path(out)
    for name, value in (("patients", patients), ("slices_per_patient", slices_per_patient)):
        if value < 1:
            raise TumorcamError(f"{name} {value}: must be at least 1", param=name)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TumorcamError(f"out {out}: exists and is not empty; choose a new folder", param="out")
    folds = patient_folds(patients, seed)
    file_folds: list[int] = []
    with atomic_dir(out) as tmp:
        file_id = 0
        for patient in range(patients):
            rng = np.random.default_rng([seed, patient])
            head = _random_head(rng)
            tumor = _random_tumor(rng, label=label_of_patient(patient))
            pid = f"SYN{seed:03d}{patient:04d}"
            for z in np.linspace(-1.0, 1.0, slices_per_patient) if slices_per_patient > 1 else [0.0]:
                file_id += 1
                image, mask = render_slice(head, tumor, float(z), np.random.default_rng([seed, patient, file_id]))
                write_figshare_mat(tmp / f"{file_id}.mat", image=image, mask=mask, label=tumor.label, pid=pid, border=mask_border(mask))
                file_folds.append(folds[patient])
        write_cvind(tmp / "cvind.mat", np.array(file_folds, dtype=np.float64))
        write_text(
            tmp / "README.txt",
            f"tumorcam synthetic brain tumour dataset: {patients} patients x {slices_per_patient} slices, seed {seed}.\n"
            "Layout as figshare article 1512427 (MATLAB v7.3, struct cjdata); cvind.mat: patient-wise folds 1-5.\n",
        )
    return [out / f"{i}.mat" for i in range(1, file_id + 1)]


def label_of_patient(patient: int) -> int:
    """Classes cycle meningioma, glioma, pituitary over the patients."""
    return 1 + patient % 3


def patient_folds(patients: int, seed: int) -> list[int]:
    """Fold 1-5 of each patient: each class's patients dealt round-robin in a seeded order."""
    rng = np.random.default_rng([seed, 5])
    folds = [0] * patients
    for label in (1, 2, 3):
        members = [p for p in range(patients) if label_of_patient(p) == label]
        offset = int(rng.integers(FOLDS))
        for rank, p in enumerate(rng.permutation(members)):
            folds[int(p)] = 1 + (rank + offset) % FOLDS
    return folds


def _random_head(rng: np.random.Generator) -> Head:
    return Head(
        cy=SIZE / 2 + rng.uniform(-6, 6),
        cx=SIZE / 2 + rng.uniform(-5, 5),
        ry=rng.uniform(104, 116),
        rx=rng.uniform(84, 96),
        angle=rng.uniform(-0.12, 0.12),
    )


def _random_tumor(rng: np.random.Generator, label: int) -> Tumor:
    if label == 1:  # meningioma: on the dura, round, homogeneous
        theta = rng.uniform(0, 2 * np.pi)
        return Tumor(label, np.cos(theta), np.sin(theta), rng.uniform(15, 26), _harmonics(rng, 3, 0.06))
    if label == 2:  # glioma: in the hemispheres, irregular
        theta, rho = rng.uniform(0, 2 * np.pi), rng.uniform(0.25, 0.55)
        return Tumor(label, rho * np.cos(theta), rho * np.sin(theta), rng.uniform(16, 28), _harmonics(rng, 5, 0.14))
    # pituitary: small, midline, sellar (anterior to the centre in display orientation)
    return Tumor(label, rng.uniform(-0.02, 0.02), rng.uniform(-0.40, -0.32), rng.uniform(9, 13), _harmonics(rng, 2, 0.05))


def _harmonics(rng: np.random.Generator, n: int, amplitude: float) -> np.ndarray:
    return np.stack([rng.uniform(0, amplitude, n) / np.arange(1, n + 1) ** 0.5, rng.uniform(0, 2 * np.pi, n)], axis=1)


def _smooth_noise(rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Gaussian-smoothed white noise rescaled to unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal((SIZE, SIZE)), sigma, mode="wrap")
    return field / field.std()


def render_slice(head: Head, tumor: Tumor, z: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One slice at height `z` in [-1, 1] through the patient: (image int16, tumour mask bool)."""
    yy, xx = np.mgrid[:SIZE, :SIZE].astype(np.float64)
    cos, sin = np.cos(head.angle), np.sin(head.angle)
    shrink = np.sqrt(1 - 0.12 * z**2)  # the head narrows away from the middle slice
    u = ((xx - head.cx) * cos + (yy - head.cy) * sin) / (head.rx * shrink)
    v = (-(xx - head.cx) * sin + (yy - head.cy) * cos) / (head.ry * shrink)
    depth = (1 - np.sqrt(u**2 + v**2)) * 0.5 * (head.rx + head.ry) * shrink  # ~pixels inside the head outline

    coarse, fine, texture = _smooth_noise(rng, 6), _smooth_noise(rng, 2.5), _smooth_noise(rng, 1.2)
    image = np.zeros((SIZE, SIZE))
    head_mask = depth > 0
    image[head_mask] = SCALP * (1 + 0.06 * texture[head_mask])
    skull = depth > 6 + 0.8 * coarse
    image[skull] = BONE
    image[skull & (np.abs(depth - 9.5) < 1.3)] = MARROW
    intracranial = depth > 12.5 + 0.5 * coarse
    image[intracranial] = CSF
    brain_depth = depth - 14.5 - 1.2 * coarse
    brain = brain_depth > 0
    image[brain] = GRAY * (1 + 0.05 * texture[brain])
    white = brain_depth > 5 + 2.5 * fine
    image[white] = WHITE * (1 + 0.04 * texture[white])
    sulci = brain & ~white & (np.abs(fine) < 0.12)
    image[sulci] = CSF + 0.1
    # falx on the midline, ventricles either side of it
    pix_u = u * head.rx * shrink
    image[brain & (np.abs(pix_u) < 0.9) & (np.abs(v) > 0.42)] = CSF + 0.08
    ventricle_scale = 1 - 0.5 * abs(z)
    for side in (-1, 1):
        vx, vy = pix_u - side * 9, v * head.ry * shrink + 6
        a = side * 0.35
        ru = (vx * np.cos(a) + vy * np.sin(a)) / (7 * ventricle_scale)
        rv = (-vx * np.sin(a) + vy * np.cos(a)) / (22 * ventricle_scale)
        image[brain & (ru**2 + rv**2 + 0.15 * fine < 1)] = CSF + 0.02

    mask = _add_tumor(image, tumor, head, shrink, z, intracranial, texture, rng)
    image = ndimage.gaussian_filter(image, 0.6)  # partial-volume blur
    image *= _bias_field(rng, xx, yy)
    scale = rng.uniform(700, 1100)
    sigma = 0.025 * scale
    signal = image * scale
    image = np.hypot(signal + sigma * rng.standard_normal(signal.shape), sigma * rng.standard_normal(signal.shape))
    return np.clip(np.rint(image), 0, np.iinfo(np.int16).max).astype(np.int16), mask


def _add_tumor(
    image: np.ndarray,
    tumor: Tumor,
    head: Head,
    shrink: float,
    z: float,
    intracranial: np.ndarray,
    texture: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Paint the tumour into `image` in place; return its mask."""
    cos, sin = np.cos(head.angle), np.sin(head.angle)
    rho_scale = 0.86 if tumor.label == 1 else 1.0  # meningioma centre sits on the dura
    du, dv = tumor.u * rho_scale * head.rx * shrink, tumor.v * rho_scale * head.ry * shrink
    cx = head.cx + du * cos - dv * sin
    cy = head.cy + du * sin + dv * cos
    radius = tumor.radius * np.sqrt(1 - 0.55 * z**2)  # cross-section of a ball, never vanishing
    yy, xx = np.mgrid[:SIZE, :SIZE].astype(np.float64)
    theta = np.arctan2(yy - cy, xx - cx)
    wobble = 1 + sum(a * np.cos((k + 1) * theta + p) for k, (a, p) in enumerate(tumor.harmonics))
    r = np.hypot(yy - cy, xx - cx) / (radius * wobble)  # < 1 inside the tumour
    if tumor.label == 1:
        mask = (r < 1) & intracranial
        cleft = (r < 1.12) & ~mask & intracranial
        image[cleft] = CSF + 0.05
        image[mask] = ENHANCING * (1 + 0.04 * texture[mask])
    elif tumor.label == 2:
        mask = r < 1
        halo = (r < 1.7 + 0.2 * texture) & ~mask & (image > GRAY * 0.8)
        image[halo] *= OEDEMA_FACTOR
        core = r < 0.62 + 0.08 * texture
        image[mask] = ENHANCING * (1 + 0.08 * texture[mask])
        image[core & mask] = NECROSIS * (1 + 0.1 * texture[core & mask])
    else:
        mask = r < 1
        image[mask] = 0.95 * ENHANCING * (1 + 0.05 * texture[mask])
    return mask


def _bias_field(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Smooth multiplicative field 1 + a x + b y + c x y + d x^2 + e y^2 on [-1, 1]^2, within about +-20%."""
    x, y = xx / (SIZE / 2) - 1, yy / (SIZE / 2) - 1
    a, b, c, d, e = rng.uniform(-0.08, 0.08, 5)
    return 1 + a * x + b * y + c * x * y + d * x**2 + e * y**2


def mask_border(mask: np.ndarray, points: int = BORDER_POINTS) -> np.ndarray:
    """Border points of a mask as figshare stores them: (x = column, y = row), MATLAB 1-based.

    Rays from the mask's centroid at `points` angles; each point is the last mask pixel before
    the ray first leaves the mask (so a pixel with an outside 8-neighbour).
    """
    rows, cols = np.nonzero(mask)
    cy, cx = rows.mean(), cols.mean()
    angles = np.linspace(0, 2 * np.pi, points, endpoint=False)
    steps = np.arange(0, 2 * SIZE, 0.5)
    ry = np.rint(cy + np.sin(angles)[:, None] * steps).astype(int)
    rx = np.rint(cx + np.cos(angles)[:, None] * steps).astype(int)
    inside = (ry >= 0) & (ry < mask.shape[0]) & (rx >= 0) & (rx < mask.shape[1])
    inside[inside] = mask[ry[inside], rx[inside]]
    inside[:, 0] = True  # the centroid counts as inside even for a non-convex mask
    last = np.argmin(inside, axis=1) - 1  # index before the first step outside
    picks = np.arange(points)
    return np.stack([rx[picks, last] + 1.0, ry[picks, last] + 1.0], axis=1)


def write_figshare_mat(path: str | os.PathLike, *, image: np.ndarray, mask: np.ndarray, label: int, pid: str, border: np.ndarray) -> None:
    """Write one slice exactly as figshare stores it (MATLAB v7.3).

    512-byte MATLAB header; struct `cjdata`; matrices stored transposed (h5py shows them
    transposed, as MATLAB writes column-major); `PID` as uint16 codes (h5py shape (n, 1));
    `label` (1, 1) double; `tumorBorder` (1, 2k) double; `tumorMask` uint8 tagged `logical`.
    """
    import h5py

    def tagged(group: h5py.Group, name: str, data: np.ndarray, matlab_class: str, int_decode: int | None = None, compress: bool = False) -> None:
        options = {"compression": "gzip", "compression_opts": 3, "chunks": True} if compress else {}
        dataset = group.create_dataset(name, data=data, **options)
        dataset.attrs["MATLAB_class"] = np.bytes_(matlab_class)
        if int_decode is not None:
            dataset.attrs["MATLAB_int_decode"] = np.int32(int_decode)

    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w", userblock_size=512, libver="earliest") as f:
            group = f.create_group("cjdata")
            group.attrs["MATLAB_class"] = np.bytes_("struct")
            tagged(group, "PID", np.array([[ord(c)] for c in pid], dtype=np.uint16), "char", int_decode=2)
            tagged(group, "image", np.ascontiguousarray(image.astype(np.int16).T), "int16", compress=True)
            tagged(group, "label", np.array([[float(label)]]), "double")
            tagged(group, "tumorBorder", np.asarray(border, dtype=np.float64).reshape(1, -1), "double")
            tagged(group, "tumorMask", np.ascontiguousarray(mask.astype(np.uint8).T), "logical", int_decode=1, compress=True)
        _write_header(tmp)


def write_cvind(path: str | os.PathLike, folds: np.ndarray) -> None:
    """`cvind.mat` as in the figshare article: MATLAB v7.3, variable `cvind` (h5py shape (1, N)) of fold numbers."""
    import h5py

    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w", userblock_size=512, libver="earliest") as f:
            dataset = f.create_dataset("cvind", data=np.asarray(folds, dtype=np.float64).reshape(1, -1))
            dataset.attrs["MATLAB_class"] = np.bytes_("double")
        _write_header(tmp)


def _write_header(path: Path) -> None:
    with open(path, "r+b") as f:
        f.write(MATLAB_HEADER)
