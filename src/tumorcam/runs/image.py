"""Slices from outside the dataset: `explain_image` explains one with a run's model (an overlay PNG of
slice, predicted mask and heatmap); `explain_files` explains several with any network (a map
.npy and an overlay PNG each), the `tumorcam explain --image FILE --model MODULE:FACTORY` path.

Readers: PNG/JPEG/BMP/TIFF through Pillow; DICOM (`.dcm`) through pydicom and NIfTI (`.nii`,
`.nii.gz`) through nibabel, the optional extras `pip install tumorcam[medical]`, imported only when
needed. A 3-D NIfTI volume gives its middle slice along the last axis, rotated to display
orientation. The slice is normalised as `data prepare` does (negatives clipped, divided by its
maximum, resized bilinear to config.train.size), and compared with the run's prepared training
slices (`training_sample`): intensities far from theirs are warned (`tumorcam.guards.warn_intensity`). A 3-D network's input, the NIfTI volumes of one
case, is read by `tumorcam.runs.volume_files`.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tumorcam import guards
from tumorcam.errors import TumorcamError
from tumorcam.explain.layers import INPUT_LAYER
from tumorcam.explain.methods import Method
from tumorcam.explain.methods.base import Output
from tumorcam.guards import first_convolution, warn_intensity
from tumorcam.models.user import first_line

PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
TRAINING_SAMPLE = 256  # training slices that an outside slice's intensities are compared with


def optional_import(module: str, what: str, path: str | Path) -> ModuleType:
    """`module` imported; a missing one is an error naming the image `path` and the `medical` extra."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise TumorcamError(f"image {path}: reading {what} needs {module}; install it with "
                            "`pip install 'tumorcam[medical]'`", param="image") from None


def read_slice(path: str | Path) -> np.ndarray:
    """A 2-D float32 array of the slice's raw intensities."""
    path = Path(path)
    option = f"image {path}"
    if not path.is_file():
        raise TumorcamError(f"{option}: no such file", param="image")
    name = path.name.lower()
    try:
        if name.endswith(".dcm"):
            pydicom = optional_import("pydicom", "DICOM", path)
            try:
                from pydicom.pixels import apply_modality_lut
            except ImportError:  # pydicom 2.x
                from pydicom.pixel_data_handlers.util import apply_modality_lut
            ds = pydicom.dcmread(path)
            pixels = apply_modality_lut(ds.pixel_array, ds)
        elif name.endswith((".nii", ".nii.gz")):
            nibabel = optional_import("nibabel", "NIfTI", path)
            volume = np.asanyarray(nibabel.load(path).dataobj)
            volume = np.squeeze(volume)
            if volume.ndim == 3:
                volume = volume[..., volume.shape[-1] // 2]
            pixels = np.rot90(volume) if volume.ndim == 2 else volume
        elif name.endswith(PIL_SUFFIXES):
            from PIL import Image

            with Image.open(path) as img:
                pixels = np.asarray(img.convert("L") if img.mode not in ("L", "I", "I;16", "F") else img)
        else:
            raise TumorcamError(f"{option}: unknown image type (PNG, JPEG, BMP, TIFF, DICOM .dcm or NIfTI .nii/.nii.gz)",
                                param="image")
    except TumorcamError:
        raise
    except Exception as exc:  # noqa: BLE001 - any reader failure is an unreadable file
        raise TumorcamError(f"{option}: not a readable image ({type(exc).__name__}: {exc})", param="image") from None
    pixels = np.asarray(pixels, dtype=np.float32)
    if pixels.ndim != 2:
        raise TumorcamError(f"{option}: expected one 2-D slice, got an array of shape {pixels.shape}", param="image")
    return pixels


def explain_image(
    run: str | Path,
    image: str | Path,
    out: str | Path | None = None,
    method: str | None = None,
    target: str | None = None,
    layer: str | None = None,
    untrained: bool = False,
) -> Path:
    """Explain one slice with the run's model; write the overlay PNG to `out`
    (default RUN/explanations/<image name>.png) and return its path. Method, target and layer
    default to the first of config.explain's."""
    from tumorcam.data.slices import normalize
    from tumorcam.explain import compute_maps, get_method, get_target
    from tumorcam.runs.explain import explain_model
    from tumorcam.runfolder.folder import as_run

    run, image = as_run(run), Path(image)
    config = run.config
    method = method or config.explain.methods[0]
    target = target or config.explain.targets[0]
    layer = layer or config.explain.layers[0]
    get_method(method)
    if get_target(target).needs_masks:
        raise TumorcamError(f"target {target}: needs a ground-truth mask, and an image file gives none", param="target")
    pixels = read_slice(image)
    size = config.train.size
    slice_ = normalize(pixels, size, str(image)).astype(np.float32)
    training = training_sample(run)
    if training is not None:
        warn_intensity(slice_, training, str(image))

    device = run.device
    model = explain_model(run, untrained)
    x = torch.from_numpy(slice_)[None, None].to(device)
    with torch.no_grad():
        predicted = (model(x) > 0)[0, 0].cpu().numpy()
    heatmap = compute_maps(model, x, method=method, target=target, layer=layer, amp=config.explain.amp)[0].cpu().numpy()
    shown_layer = layer if get_method(method).uses_layer else INPUT_LAYER
    out = Path(out) if out else run.explanations_folder / f"{image_stem(image)}.png"
    write_overlay(out, slice_, predicted, heatmap, title=f"{image.name}: {method}, {target}, {shown_layer}")
    return out


def training_sample(run: Any, count: int = TRAINING_SAMPLE) -> np.ndarray | None:
    """Up to `count` prepared slices (N, S, S) float32 in [0, 1] of the run's train split, evenly spaced
    over it: what `warn_intensity` compares an outside slice with; None when the run has no
    prepared data at hand."""
    try:
        prepared = run.prepared()
        rows = prepared.indices("train")
    except (TumorcamError, OSError):
        return None
    if len(rows) == 0:
        return None
    picked = rows[np.unique(np.linspace(0, len(rows) - 1, min(count, len(rows))).round().astype(int))]
    return np.asarray(prepared.images_float(picked), dtype=np.float32)


def write_overlay(out: Path, slice_: np.ndarray, predicted: np.ndarray, heatmap: np.ndarray, title: str) -> None:
    """Three panels: the slice; the slice with the predicted mask; the slice with the heatmap."""
    from matplotlib.figure import Figure

    from tumorcam.io import atomic_path

    fig = Figure(figsize=(10.5, 3.8), layout="constrained")
    axes = fig.subplots(1, 3)
    axes[0].imshow(slice_, cmap="gray", vmin=0, vmax=1)
    axes[0].set_title("slice")
    axes[1].imshow(slice_, cmap="gray", vmin=0, vmax=1)
    axes[1].imshow(np.ma.masked_where(~predicted, predicted), cmap="autumn", alpha=0.45, vmin=0, vmax=1)
    if predicted.any():
        axes[1].contour(predicted, levels=[0.5], colors="red", linewidths=0.8)
    axes[1].set_title(f"predicted mask ({100 * predicted.mean():.1f}% of pixels)")
    axes[2].imshow(slice_, cmap="gray", vmin=0, vmax=1)
    shown = axes[2].imshow(heatmap, cmap="jet", alpha=0.5, vmin=0, vmax=1)
    axes[2].set_title("heatmap")
    fig.colorbar(shown, ax=axes[2], fraction=0.046)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def image_stem(path: Path) -> str:
    """The file name without its image suffix (`.nii.gz` counts as one): the name of the files written for it."""
    name = path.name
    return name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else path.stem


def unit_range(pixels: np.ndarray, name: str) -> np.ndarray:
    """x = max(pixels, 0) / max(pixels), float32 in [0, 1], at the image's own size."""
    x = np.clip(np.asarray(pixels, dtype=np.float32), 0, None)
    peak = float(x.max()) if x.size else 0.0
    if not np.isfinite(peak) or peak <= 0:
        raise TumorcamError(f"{name}: the image has no positive values to scale by")
    return x / peak


def input_channels(model: nn.Module) -> int:
    """C_in of the model's first convolution (in `model.modules()` order, `guards.input_channels`); 1 for
    a model without one."""
    return guards.input_channels(model) or 1


def model_input(slice_: np.ndarray, channels: int, imagenet: bool = False) -> torch.Tensor:
    """The slice x in [0, 1] (H, W) as a batch of one (1, C_in, H, W): x repeated to the C_in channels;
    with `imagenet`, each channel c then becomes (x - mean_c) / std_c with ImageNet's mean and std."""
    from tumorcam.models.unet import IMAGENET_MEAN, IMAGENET_STD

    x = torch.from_numpy(np.ascontiguousarray(slice_, dtype=np.float32))[None, None].repeat(1, channels, 1, 1)
    if imagenet:
        if channels != 3:
            raise TumorcamError(f"imagenet: ImageNet's mean and std are for 3 input channels; "
                                f"the model takes {channels}", param="imagenet")
        x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return x


def spatial_dims(model: nn.Module) -> int:
    """The spatial dimensions of the model's first convolution (in `model.modules()` order): 3 for a
    Conv3d, 2 for a Conv2d; 2 for a model without one."""
    conv = first_convolution(model)
    return 2 if conv is None else len(conv.kernel_size)


def checked_method(method: str, target: str) -> Method:
    """The method `method`, once `method` and `target` are known names and the target is one an image
    file can serve: not one that needs a ground-truth mask, not `component` (one map per lesion)."""
    from tumorcam.explain import get_method, get_target

    chosen = get_method(method)
    spec = get_target(target)
    if spec.needs_masks:
        raise TumorcamError(f"target {target}: needs a ground-truth mask, and an image file gives none", param="target")
    if spec.per_lesion:
        raise TumorcamError(f"target {target}: gives one map per lesion; use tumorcam.explain_components",
                            param="target")
    return chosen


def explain_input(
    model: nn.Module,
    x: torch.Tensor,
    *,
    method: str,
    target: str,
    layer: str | None,
    channel: int | None,
    output: Output,
    model_name: str,
    source: str,
) -> tuple[np.ndarray, np.ndarray, str]:
    """One model input x (1, C_in, *spatial) on the model's device: its heatmap (*spatial) float32 in
    [0, 1]; where the model predicts class `channel` (targets.predicted), (*spatial) bool, resized
    (nearest) from the logits' grid to x's; and the layer explained (`input` for a layer-free method,
    `layer=None`'s choice, after `explain`'s fallback from flat maps, for `layer=None`).

    A failure of the network is one TumorcamError naming `model_name`, `source` (the files x was
    made of) and x's shape; the library's errors name their parameter.
    """
    from tumorcam.explain import explain_at, explaining, get_method
    from tumorcam.explain.methods.base import Logits
    from tumorcam.explain.targets import predicted

    uses_layer = get_method(method).uses_layer
    with explaining(model):
        try:
            with torch.no_grad():
                logits = Logits(model, output)(x)
        except TumorcamError:
            raise
        except Exception as exc:  # noqa: BLE001 - the user's network failed on this input
            raise TumorcamError(f"{model_name}: the network failed on {source} given as a tensor "
                                f"{tuple(x.shape)} ({first_line(exc)})") from None
        channel = guards.channel_of(channel, int(logits.shape[1]))
        region = predicted(logits.float(), channel)
    heatmaps, name = explain_at(model, x, method=method, target=target, layer=layer if uses_layer else None,
                                channel=channel, output=output, batch_size=1)
    heatmap = heatmaps[0]
    spatial = tuple(x.shape[2:])
    if tuple(region.shape[1:]) != spatial:
        region = F.interpolate(region[:, None].float(), size=spatial, mode="nearest")[:, 0] > 0.5
    return heatmap.cpu().numpy(), region[0].cpu().numpy(), name


@dataclass(frozen=True)
class WrittenMaps:
    """What was explained and written: the layer (`input` for layer-free methods), the model's input
    channels, and per image (`explain_files`: its map .npy) or case (`explain_volume_files`: its map
    .nii.gz) the map and the overlay .png."""

    layer: str
    channels: int
    files: list[tuple[Path, Path]]


def explain_files(
    model: nn.Module,
    images: Sequence[str | Path],
    out: str | Path,
    *,
    model_name: str,
    method: str = "gradcam",
    target: str = "predicted-region",
    layer: str | None = None,
    channel: int | None = None,
    output: Output = None,
    imagenet: bool = False,
    device: torch.device | str = "cpu",
) -> WrittenMaps:
    """Explain each image file with `model` (named `model_name` in errors, e.g. `model pkg:make`)
    and write `out`/<name>.npy, the heatmap (H, W) float32 in [0, 1] at the image's size, and
    `out`/<name>.png, the overlay.

    Each image is read by `read_slice`, scaled by `unit_range` (no resizing) and made the model's
    input by `model_input` with C_in = `input_channels(model)`. The overlay's predicted mask is
    where the model predicts class `channel` (targets.predicted), resized (nearest) to the image.
    Targets that need ground-truth masks, and `component` (one map per lesion), are refused.
    """
    from tumorcam.io import save_npy

    paths = [Path(image) for image in images]
    if not paths:
        raise TumorcamError("images: give at least one image file", param="images")
    by_stem: dict[str, Path] = {}
    for path in paths:
        other = by_stem.setdefault(image_stem(path), path)
        if other != path:
            raise TumorcamError(f"images: {other} and {path} would both write {image_stem(path)}.npy in the out folder",
                                param="images")
    checked_method(method, target)
    device = torch.device(device)
    model = model.to(device)
    channels = input_channels(model)
    out = Path(out)
    files = []
    for path in paths:
        slice_ = unit_range(read_slice(path), str(path))
        x = model_input(slice_, channels, imagenet).to(device)
        heatmap, region, layer = explain_input(model, x, method=method, target=target, layer=layer,
                                               channel=channel, output=output, model_name=model_name,
                                               source=str(path))
        stem = image_stem(path)
        npy, png = out / f"{stem}.npy", out / f"{stem}.png"
        save_npy(npy, heatmap)
        write_overlay(png, slice_, region, heatmap, title=f"{path.name}: {method}, {target}, channel {channel}, {layer}")
        files.append((npy, png))
    return WrittenMaps(layer=str(layer), channels=channels, files=files)
