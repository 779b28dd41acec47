"""`explain_image`: one slice from outside the dataset -> an overlay PNG of slice, predicted mask and heatmap.

Readers: PNG/JPEG/BMP/TIFF through Pillow; DICOM (`.dcm`) through pydicom and NIfTI (`.nii`,
`.nii.gz`) through nibabel, the optional extras `pip install tumorcam[medical]`, imported only when
needed. A 3-D NIfTI volume gives its middle slice along the last axis, rotated to display
orientation. The slice is normalised as `data prepare` does (negatives clipped, divided by its
maximum, resized bilinear to config.train.size).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

from tumorcam.config import Config
from tumorcam.errors import TumorcamError
from tumorcam.explain.layers import INPUT_LAYER

PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def _optional(module: str, what: str, option: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise TumorcamError(f"{option}: reading {what} needs {module}; install it with "
                            "`pip install 'tumorcam[medical]'`") from None


def read_slice(path: str | Path) -> np.ndarray:
    """A 2-D float32 array of the slice's raw intensities."""
    path = Path(path)
    option = f"--image {path}"
    if not path.is_file():
        raise TumorcamError(f"{option}: no such file")
    name = path.name.lower()
    try:
        if name.endswith(".dcm"):
            pydicom = _optional("pydicom", "DICOM", option)
            try:
                from pydicom.pixels import apply_modality_lut
            except ImportError:  # pydicom 2.x
                from pydicom.pixel_data_handlers.util import apply_modality_lut
            ds = pydicom.dcmread(path)
            pixels = apply_modality_lut(ds.pixel_array, ds)
        elif name.endswith((".nii", ".nii.gz")):
            nibabel = _optional("nibabel", "NIfTI", option)
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
            raise TumorcamError(f"{option}: unknown image type (PNG, JPEG, BMP, TIFF, DICOM .dcm or NIfTI .nii/.nii.gz)")
    except TumorcamError:
        raise
    except Exception as exc:  # noqa: BLE001 - any reader failure is an unreadable file
        raise TumorcamError(f"{option}: not a readable image ({type(exc).__name__}: {exc})") from None
    pixels = np.asarray(pixels, dtype=np.float32)
    if pixels.ndim != 2:
        raise TumorcamError(f"{option}: expected one 2-D slice, got an array of shape {pixels.shape}")
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
    from tumorcam.data.prepare import normalise
    from tumorcam.explain import compute_maps, get_method, get_target
    from tumorcam.explain.run import load_explain_model
    from tumorcam.training.device import resolve_device

    run, image = Path(run), Path(image)
    if not (run / "config.json").is_file():
        raise TumorcamError(f"{run}: not a run folder (no config.json); train one with `tumorcam train`")
    config = Config.load(run / "config.json")
    method = method or config.explain.methods[0]
    target = target or config.explain.targets[0]
    layer = layer or config.explain.layers[0]
    get_method(method)
    if get_target(target).needs_masks:
        raise TumorcamError(f"--targets {target}: needs a ground-truth mask, and --image gives none")
    pixels = read_slice(image)
    size = config.train.size
    slice_ = normalise(pixels, size, f"--image {image}").astype(np.float32)

    device = resolve_device(config.train.device)
    model = load_explain_model(run, config, device, untrained)
    x = torch.from_numpy(slice_)[None, None].to(device)
    with torch.no_grad():
        predicted = (model(x) > 0)[0, 0].cpu().numpy()
    heatmap = compute_maps(model, x, method=method, target=target, layer=layer, amp=config.train.amp)[0].cpu().numpy()
    shown_layer = layer if get_method(method).uses_layer else INPUT_LAYER
    out = Path(out) if out else run / "explanations" / f"{image.name.split('.')[0]}.png"
    write_overlay(out, slice_, predicted, heatmap, title=f"{image.name}: {method}, {target}, {shown_layer}")
    return out


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
