"""A 3-D network's map of one case given as NIfTI files, one per input channel: the
`tumorcam explain --image CASE_0000.nii.gz --image CASE_0001.nii.gz ... --model MODULE:FACTORY` path.

The files are the channels of one case in order, as nnU-Net names them (CASE_XXXX.nii.gz, XXXX the
channel index), read by `tumorcam.data.nnunet.read_nifti`. They must hold 3-D arrays with more than
one voxel on each axis, share the shape and the affine (np.allclose within nnU-Net's tolerance,
`data.nnunet.AFFINE_TOLERANCE`), and be as many as the network's input channels. Each channel v is
scaled to [0, 1] as `data.volumes.prepare_volumes` scales it (`normalize_case`), by the 0.5th and
99.5th percentiles (lo, hi) of the case's foreground voxels (where any channel differs from its
background, the most frequent value on the border): x = (clip(v, lo, hi) - lo) / (hi - lo), the
background set to 0. The volume goes to the network at its own shape, or resampled (trilinear,
align_corners=False) to a cube `size`^3; the map is then upsampled back to the case's shape
(trilinear) and min-max normalised again, and the predicted region resized (nearest).

A shape the network cannot take (a U-Net that halves each axis k times and concatenates the skip
connections needs multiples of 2^k: 155 slices fail inside it): when a no-grad forward of the volume
fails, or returns logits on another grid, zero volumes padded at the end of each axis to the next
multiple of 2, 4, ..., 64 are tried (`network_multiple`); the volume is padded with zeros (the
normalised background) to the first multiple that the network takes, explained, and its map and
region cropped back to the volume's grid and the map min-max normalised again, with a
`TumorcamWarning` saying so. When no multiple works, one error names `size`.

Written in `out`: CASE_<method>.nii.gz, the map (D, H, W) in [0, 1] stored as uint16 with
scl_slope (to 1/65535; read back as floats) with the case's shape
and affine, and CASE_<method>.png, axial, coronal and sagittal planes (`report.volumes`) through the
centre of mass of the predicted region (the map's maximum when nothing is predicted), the map over
channel 0 and the prediction outlined. CASE is the first file's name without `_XXXX` and `.nii.gz`.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tumorcam import guards
from tumorcam.data.nnunet import AFFINE_TOLERANCE, read_nifti, write_nifti
from tumorcam.data.volumes import normalize_case
from tumorcam.errors import TumorcamError
from tumorcam.runs.image import (
    WrittenMaps,
    checked_method,
    explain_input,
    image_stem,
    input_channels,
    optional_import,
    spatial_dims,
)
from tumorcam.explain.maps import normalize, upsample
from tumorcam.explain.methods.base import Output
from tumorcam.models.user import first_line

NIFTI_SUFFIXES = (".nii", ".nii.gz")
CHANNEL_FILE = re.compile(r"(?P<case>.+)_(?P<index>\d{4})")


def is_volume(array: np.ndarray) -> bool:
    """A 3-D array with more than one voxel on each axis; anything else is a slice or not an image."""
    return array.ndim == 3 and min(array.shape) > 1


def case_name(path: str | Path) -> str:
    """The case of a channel file: its name without `.nii.gz` (or `.nii`) and without nnU-Net's `_XXXX`."""
    stem = image_stem(Path(path))
    found = CHANNEL_FILE.fullmatch(stem)
    return found["case"] if found else stem


def read_channels(paths: Sequence[Path], channels: int) -> tuple[np.ndarray, np.ndarray]:
    """The case (C, D, H, W) float32 in [0, 1] and its affine (4, 4): the files checked to be `channels`
    NIfTI volumes of one shape and affine (`data.nnunet`'s tolerance), in nnU-Net's channel order when
    they are named CASE_XXXX, and scaled by `data.volumes.normalize_case` (the case's foreground), as
    `prepare_volumes` scales them."""
    if len(paths) != channels:
        raise TumorcamError(f"channel_paths: {len(paths)} file(s) given as the channels of one case; the network "
                            f"takes {channels} input channel(s) (give one NIfTI volume per channel, in order)",
                            param="channel_paths")
    for path in paths:
        if not path.name.lower().endswith(NIFTI_SUFFIXES):
            raise TumorcamError(f"image {path}: a 3-D network needs NIfTI volumes (.nii or .nii.gz), one "
                                "file per input channel", param="image")
        if not path.is_file():
            raise TumorcamError(f"image {path}: no such file", param="image")
    _check_names(paths)
    optional_import("nibabel", "NIfTI", paths[0])
    volumes, affine = [], None
    first = paths[0]
    for path in paths:
        with _as_image_error():
            array, file_affine, _ = read_nifti(path)
        if not is_volume(array):
            raise TumorcamError(f"image {path}: a 3-D network needs a volume (a 3-D array with more than one "
                                f"voxel on each axis), the file holds an array of shape {array.shape}", param="image")
        if volumes and array.shape != volumes[0].shape:
            raise TumorcamError(f"image {path}: shape {array.shape} differs from {first.name}'s "
                                f"{volumes[0].shape}; the files are the channels of one case", param="image")
        if affine is not None and not np.allclose(file_affine, affine, **AFFINE_TOLERANCE):
            raise TumorcamError(f"image {path}: its affine differs from {first.name}'s; the files are the "
                                "channels of one case, on one voxel grid", param="image")
        if not np.isfinite(array).all():
            raise TumorcamError(f"image {path}: {int((~np.isfinite(array)).sum())} NaN or infinite values", param="image")
        volumes.append(np.asarray(array, dtype=np.float32))
        affine = file_affine if affine is None else affine
    with _as_image_error():
        case, _, _ = normalize_case(np.stack(volumes), paths)
    return case, affine


def network_multiple(model: nn.Module, x: torch.Tensor, output: Output = None) -> tuple[int, str | None]:
    """(1, None) when a no-grad forward of x (1, C, *spatial) gives logits on x's grid (a
    `TumorcamError` of the output selection is left to the explanation); else (m, its failure), m
    the smallest multiple of `guards.DIVISORS` the network takes (`guards.smallest_multiple`), or 0
    when none does. The failure is the first line of the error, or the logits' shape on another grid."""
    from tumorcam.explain import explaining
    from tumorcam.explain.methods.base import Logits

    logits_of = Logits(model, output)
    with explaining(model), torch.no_grad():
        try:
            logits = logits_of(x)
        except TumorcamError:
            return 1, None
        except Exception as exc:  # noqa: BLE001 - the user's network failed on this shape
            failure = first_line(exc)
        else:
            if tuple(logits.shape[2:]) == tuple(x.shape[2:]):
                return 1, None
            failure = f"logits {tuple(logits.shape)} for input {tuple(x.shape)}"
        return guards.smallest_multiple(logits_of, x) or 0, failure


@contextlib.contextmanager
def _as_image_error() -> Iterator[None]:
    """The reader's errors (`FILE: ...`) named as errors of the image parameter (`image FILE: ...`)."""
    try:
        yield
    except TumorcamError as exc:
        raise TumorcamError(f"image {exc}", param="image") from None


def _check_names(paths: Sequence[Path]) -> None:
    """Files named CASE_XXXX (all of them) must be of one case, with XXXX = 0000, 0001, ... in order."""
    found = [CHANNEL_FILE.fullmatch(image_stem(path)) for path in paths]
    if not all(found):
        return
    for position, (path, match) in enumerate(zip(paths, found)):
        if match["case"] != found[0]["case"]:
            raise TumorcamError(f"image {path}: of case {match['case']}, not {found[0]['case']} as "
                                f"{paths[0].name}; the files are the channels of one case", param="image")
        if int(match["index"]) != position:
            raise TumorcamError(f"image {path}: channel {match['index']} given as channel {position}; give the "
                                "files in channel order (_0000, _0001, ...)", param="image")


def explain_volume_files(
    model: nn.Module,
    channel_paths: Sequence[str | Path],
    out: str | Path,
    *,
    model_name: str = "model",
    method: str = "gradcam",
    target: str = "predicted-region",
    layer: str | None = None,
    channel: int | None = None,
    output: Output = None,
    size: int | None = None,
    device: torch.device | str = "cpu",
) -> WrittenMaps:
    """Explain one case, the NIfTI files `channel_paths` (its input channels in order), with the 3-D
    network `model` (named `model_name` in errors) and write `out`/CASE_<method>.nii.gz and .png (the
    rules in the module docstring). `size`: resample the case to size^3 for the network (None: its
    own shape). Nothing is written when a check or the network fails. Returns the layer, the input
    channels and [(the .nii.gz, the .png)].
    """
    from tumorcam.report.figures import save_figure
    from tumorcam.report.volumes import draw_orthogonal_views

    paths = [Path(p) for p in channel_paths]
    checked_method(method, target)
    if size is not None and (not isinstance(size, int) or size < 2):
        raise TumorcamError(f"size {size}: the cube's side in voxels, an integer >= 2", param="size")
    device = torch.device(device)
    if spatial_dims(model) != 3:
        raise TumorcamError(f"{model_name}: not a 3-D network (its first convolution is not a Conv3d); NIfTI "
                            "volumes are for 3-D networks")
    model = model.to(device)
    channels = input_channels(model)
    case, affine = read_channels(paths, channels)
    shape = case.shape[1:]
    x = torch.from_numpy(case)[None].to(device)
    if size is not None:
        x = F.interpolate(x, size=(size,) * 3, mode="trilinear", align_corners=False)
    names = ", ".join(str(p) for p in paths)
    grid = tuple(x.shape[2:])  # the volume the network explains, before any padding
    multiple, failure = network_multiple(model, x, output)
    given = f"the case's shape {grid}" if size is None else f"the size {size} cube"
    if multiple == 0:
        raise TumorcamError(f"{model_name}: cannot take {given} ({failure}), nor that shape padded to a multiple of "
                            f"{', '.join(map(str, guards.DIVISORS))}; give a size N, a cube the network takes (e.g. "
                            "a multiple of 2^k for a U-Net that halves each axis k times)")
    if multiple > 1:
        target_shape = guards.padded_shape(grid, multiple)
        x = F.pad(x, [p for n, m in zip(reversed(grid), reversed(target_shape)) for p in (0, m - n)])
        guards.warn(f"{names}: {model_name} cannot take {given} ({failure}); padded it with zeros at the "
                    f"end of each axis to {target_shape}, a multiple of {multiple}, and cropped the map back to "
                    f"{grid}")
    heatmap, region, name = explain_input(model, x, method=method, target=target, layer=layer, channel=channel,
                                          output=output, model_name=model_name, source=names)
    if multiple > 1:
        crop = tuple(slice(0, n) for n in grid)
        heatmap = normalize(torch.from_numpy(np.ascontiguousarray(heatmap[crop]))[None])[0].numpy()
        region = np.ascontiguousarray(region[crop])
    if heatmap.shape != shape:
        heatmap = normalize(upsample(torch.from_numpy(heatmap)[None], shape))[0].numpy()
        region = F.interpolate(torch.from_numpy(region)[None, None].float(), size=shape,
                               mode="nearest")[0, 0].numpy() > 0.5
    centre = None
    if not region.any() and heatmap.max() > 0:
        centre = tuple(int(i) for i in np.unravel_index(int(np.argmax(heatmap)), shape))
    stem = f"{case_name(paths[0])}_{method}"
    nifti, png = Path(out) / f"{stem}.nii.gz", Path(out) / f"{stem}.png"
    figure = draw_orthogonal_views(case, {method: heatmap}, predicted=region, centre=centre,
                                   title=f"{case_name(paths[0])}: {method} of {target}, channel {channel}\n"
                                         f"layer {name}; image: {paths[0].name}")
    write_nifti(nifti, heatmap, affine, dtype=np.uint16)
    save_figure(figure, png)
    return WrittenMaps(layer=name, channels=channels, files=[(nifti, png)])
