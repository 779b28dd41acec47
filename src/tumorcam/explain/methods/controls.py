"""Control maps: what an explanation must beat to say more than the prediction or the image already do.

Each is a method (`control = True`, no layer, not rectified, computed once per target like `random`)
that reads the model's output for the explained class c (`channel`; resized (bi/tri)linearly to the
image when the sizes differ) or the image, and ignores the target and every gradient:

- `predicted-mask`: M = where the model predicts c: [z > 0] for one output channel (sigmoid > 0.5),
  [argmax_k z_k = c] for several (softmax), as the `predicted-region` target.
- `predicted-probability`: P = sigmoid(z), or softmax(z)_c.
- `dilated-mask`: M grown by a margin m = max(1, round(S / 32)) px, S the input width (last axis;
  7 px at 224, 3 at 96): a max-pool of side 2m+1 with stride 1, so a pixel is on when a predicted
  pixel lies within Chebyshev distance m of it.
- `edges`: |G| = sqrt(sum_a G_a^2), G_a the Sobel derivative of the image (mean over its channels)
  along axis a: [-1, 0, 1] along a, smoothed by [1, 2, 1] along every other axis (the 3x3 Sobel
  pair in 2-D), replicate padding, float32.

Like every map they are then min-max normalised per slice (maps.normalize): an empty mask, or one
covering the whole slice, gives an all-zero map.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tumorcam.errors import TumorcamError
from tumorcam.explain.methods.base import Method, Options, ScalarOutput
from tumorcam.explain.targets import predicted

SOBEL_DERIVATIVE = (-1.0, 0.0, 1.0)
SOBEL_SMOOTHING = (1.0, 2.0, 1.0)
_INTERPOLATION = {1: "linear", 2: "bilinear", 3: "trilinear"}
_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}


def dilation_margin(size: int) -> int:
    """m = max(1, round(size / 32)) px: 7 at 224, 3 at 96."""
    return max(1, round(size / 32))


def _spatial_dims(images: torch.Tensor, method: str) -> int:
    dims = images.dim() - 2
    if dims not in _CONV:
        raise TumorcamError(f"images: method {method!r} takes 1 to 3 spatial axes, got shape {tuple(images.shape)}")
    return dims


def _at_image_size(values: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    if values.shape[2:] == images.shape[2:]:
        return values
    mode = _INTERPOLATION[_spatial_dims(images, "predicted-mask")]
    return F.interpolate(values, size=tuple(images.shape[2:]), mode=mode, align_corners=False)


def predicted_mask(scalar: ScalarOutput, images: torch.Tensor) -> torch.Tensor:
    """M (B, 1, *spatial) float32: where the model predicts the explained class, at the images' size."""
    with torch.no_grad():
        logits = scalar.model(images).float()
    mask = predicted(logits, scalar.channel).unsqueeze(1).float()
    return (_at_image_size(mask, images) > 0.5).float()


def sobel_magnitude(images: torch.Tensor) -> torch.Tensor:
    """|G| (B, 1, *spatial) float32 of images (B, C, *spatial), 1 to 3 spatial axes (module docstring)."""
    dims = _spatial_dims(images, "edges")
    with torch.autocast(images.device.type, enabled=False):
        gray = images.detach().float().mean(dim=1, keepdim=True)
        padded = F.pad(gray, (1, 1) * dims, mode="replicate")
        derivative = torch.tensor(SOBEL_DERIVATIVE, device=images.device)
        smoothing = torch.tensor(SOBEL_SMOOTHING, device=images.device)
        total = torch.zeros_like(gray)
        for axis in range(dims):
            kernel = torch.ones((1,) * dims, device=images.device)
            for other in range(dims):
                factor = derivative if other == axis else smoothing
                kernel = kernel * factor.view((1,) * other + (3,) + (1,) * (dims - other - 1))
            total = total + _CONV[dims](padded, kernel.view(1, 1, *kernel.shape)) ** 2
        return total.sqrt()


class Control(Method):
    """A layer-free, unrectified control map."""

    uses_layer = False
    rectify = "none"
    control = True


class PredictedMask(Control):
    reads_channel = True
    name = "predicted-mask"

    def attribute(self, scalar: ScalarOutput, images: torch.Tensor, layer: nn.Module | None,
                  options: Options) -> torch.Tensor:
        return predicted_mask(scalar, images)


class PredictedProbability(Control):
    reads_channel = True
    name = "predicted-probability"

    def attribute(self, scalar: ScalarOutput, images: torch.Tensor, layer: nn.Module | None,
                  options: Options) -> torch.Tensor:
        return _at_image_size(scalar.probability(images), images)


class DilatedMask(Control):
    reads_channel = True
    name = "dilated-mask"

    def attribute(self, scalar: ScalarOutput, images: torch.Tensor, layer: nn.Module | None,
                  options: Options) -> torch.Tensor:
        mask = predicted_mask(scalar, images)
        margin = dilation_margin(int(images.shape[-1]))
        return _MAX_POOL[images.dim() - 2](mask, kernel_size=2 * margin + 1, stride=1, padding=margin)


class Edges(Control):
    name = "edges"

    def attribute(self, scalar: ScalarOutput, images: torch.Tensor, layer: nn.Module | None,
                  options: Options) -> torch.Tensor:
        return sobel_magnitude(images)
