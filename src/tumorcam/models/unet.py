"""The segmentation network: smp's U-Net with a ResNet34 encoder, fed grey slices in [0, 1].

`GrayUnet` is `segmentation_models_pytorch.Unet` with the seed's input handling folded into
`forward`: a grey slice (B,1,H,W) in [0, 1] is repeated to 3 channels and normalised with the
ImageNet mean and std. Module names stay smp's (`encoder.layer4`, `decoder.blocks.4`, ...) and the
state_dict is a plain smp U-Net state_dict, so perturbations (Deletion/Insertion baselines) and
explanations work in image space, where 0 is black.
"""

from __future__ import annotations

import re
import urllib.error
from pathlib import Path

import segmentation_models_pytorch as smp
import torch
from torch import nn

from tumorcam.config import ModelConfig
from tumorcam.errors import TumorcamError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHTS_FILE = "unet_trained.pth"
BEST_WEIGHTS_FILE = "unet_best.pth"
CHECKPOINTS = {"last": WEIGHTS_FILE, "best": BEST_WEIGHTS_FILE}


class GrayUnet(smp.Unet):
    """smp U-Net whose input is a grey slice in [0, 1]: x -> (repeat(x, 3) - mean) / std -> U-Net."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return super().forward((x - self.pixel_mean) / self.pixel_std)


def build_model(cfg: ModelConfig) -> GrayUnet:
    """A fresh U-Net; encoder weights from ImageNet (smp's loader), none, or a local file."""
    if cfg.architecture != "Unet":
        raise TumorcamError(f"model.architecture: only Unet is supported, got {cfg.architecture!r}")
    weights = cfg.encoder_weights
    if weights in ("none", "", None):
        return GrayUnet(cfg.encoder, encoder_weights=None, classes=cfg.classes)
    if weights == "imagenet":
        try:
            return GrayUnet(cfg.encoder, encoder_weights="imagenet", classes=cfg.classes)
        except (urllib.error.URLError, OSError, RuntimeError, ValueError) as exc:
            raise TumorcamError(
                f"model.encoder_weights imagenet: could not load ImageNet weights for {cfg.encoder} "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); offline, use "
                "none, or the PATH of a local encoder state_dict or safetensors file", param="model.encoder_weights"
            ) from None
    model = GrayUnet(cfg.encoder, encoder_weights=None, classes=cfg.classes)
    _load_encoder_file(model, Path(weights))
    return model


def _load_encoder_file(model: GrayUnet, path: Path) -> None:
    state = read_state_dict(path, param="model.encoder_weights")
    state = {k.removeprefix("encoder."): v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = model.encoder.load_state_dict(state, strict=False)
    if unexpected or len(missing) == len(model.encoder.state_dict()):
        raise TumorcamError(f"model.encoder_weights {path}: not a {model.name} encoder state_dict "
                            f"({len(unexpected)} unexpected keys, {len(missing)} missing)", param="model.encoder_weights")


def read_state_dict(path: Path, param: str | None = None) -> dict[str, torch.Tensor]:
    """Read a state_dict without unpickling code: safetensors, or torch.load(weights_only=True); errors
    name `param` (the parameter that gave `path`), else the checkpoint."""
    option = param or "checkpoint"
    if not path.is_file():
        raise TumorcamError(f"{option} {path}: no such file", param=param)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to read is a bad file
        pickled = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if pickled:
            raise TumorcamError(f"{option} {path}: holds a pickled {pickled.group(1)}, which torch.load(weights_only="
                                "True) refuses; save model.state_dict() with torch.save, or a .safetensors file",
                                param=param) from None
        raise TumorcamError(f"{option} {path}: not a readable weights file ({type(exc).__name__})",
                            param=param) from None
    if not isinstance(state, dict):
        raise TumorcamError(f"{option} {path}: holds a {type(state).__name__}, not a state_dict", param=param)
    return state


def save_weights(model: nn.Module, path: str | Path) -> None:
    """Save a plain state_dict atomically (loads with torch.load(weights_only=True))."""
    from tumorcam.io import atomic_path

    model = getattr(model, "_orig_mod", model)  # unwrap torch.compile
    model = getattr(model, "module", model)  # unwrap DDP
    with atomic_path(path) as tmp:
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a checkpoint into `model`; one of another architecture fails with a clear message."""
    path = Path(path)
    state = read_state_dict(path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError:
        expected = set(model.state_dict())
        raise TumorcamError(
            f"{path}: checkpoint of another architecture ({len(set(state) - expected)} unexpected keys, "
            f"{len(expected - set(state))} missing, or shapes differ)"
        ) from None
    return model
