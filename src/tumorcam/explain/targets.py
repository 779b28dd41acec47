"""Targets: turn the dense logits z (B, C, *spatial) into one scalar per image, s_b = sum_cx w_bcx * z_bcx.

A target is a rule for the pixel weights w (computed from the detached logits and, where needed,
the ground-truth masks m). Named targets weight only the explained class `channel` c, so
s_b = sum over a region R_b of z_bc, pytorch-grad-cam's `SemanticSegmentationTarget`. The model
predicts class c at a pixel where sigmoid(z) > 0.5 (one output channel, c = 0) or where
argmax_k z_k = c (C > 1 channels, softmax). Masks are the ground truth of the explained class:
(B, 1, *spatial) or (B, *spatial), > 0.5 counts as in, resized (nearest) to the logits.

- `mean-logits`: w = 1 / |spatial| on channel c, so s = the spatial mean of z_c.
- `predicted-region`: R = the pixels predicted as c (Seg-Grad-CAM).
- `gt-region`: R = the ground-truth mask; needs masks.
- `false-positive`: R = predicted and not in the ground truth; needs masks.
- `false-negative`: R = in the ground truth and not predicted; needs masks.
- `boundary`: R = a band around the border of the predicted region: dilation minus erosion of
  the predicted region by `boundary_width(spatial)` = max(1, round(min(spatial) / 64)) pixels of
  the logits grid (1 px at 64, 4 px at 224; the band is 2 widths wide), max-pool morphology with
  a (2w+1)^d cube; a region touching the image edge is not eroded there.
- `component`: each connected predicted lesion on its own (one map per lesion, face, edge and
  corner neighbours connect): `explain_components` computes it, `explain` refuses it.

The region is a constant of the backward pass. An empty region (no predicted pixel, no false
positive, an empty mask, ...) gives w = 0, s = 0 with zero gradient everywhere: an all-zero map,
never NaN. A callable target `(logits, masks) -> w` gets the detached logits (B, C, *spatial) and
the masks as given (or None), and returns weights broadcastable to the logits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F

from tumorcam.errors import TumorcamError, unknown_name

TargetFn = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


@dataclass(frozen=True)
class Target:
    """A named rule `weights(logits, masks, channel) -> w` with the shape of the logits."""

    name: str
    needs_masks: bool
    uses_prediction: bool
    weights: Callable[[torch.Tensor, torch.Tensor | None, int], torch.Tensor]
    per_lesion: bool = False


def check_channel(logits: torch.Tensor, channel: int) -> None:
    """`channel` must index one of the C output channels of the logits (B, C, *spatial)."""
    count = logits.shape[1]
    if not 0 <= channel < count:
        raise TumorcamError(f"channel: the model has {count} output channel(s) (0..{count - 1}), got {channel}",
                            param="channel")


def predicted(logits: torch.Tensor, channel: int) -> torch.Tensor:
    """Where the model predicts class `channel`, bool (B, *spatial): z_0 > 0 for one channel, argmax = c for C > 1."""
    check_channel(logits, channel)
    if logits.shape[1] == 1:
        return logits[:, 0] > 0
    return logits.argmax(dim=1) == channel


def mask_region(masks: torch.Tensor | None, logits: torch.Tensor, target: str) -> torch.Tensor:
    """The ground-truth masks as bool (B, *spatial) on the logits' grid (nearest); `target` names the asker."""
    if masks is None:
        raise TumorcamError(f"masks: target {target!r} needs ground-truth masks (B, 1, *spatial); none were given")
    spatial = logits.shape[2:]
    if masks.dim() == logits.dim() - 1:
        masks = masks.unsqueeze(1)
    if masks.dim() != logits.dim() or masks.shape[1] != 1:
        raise TumorcamError(f"masks: expected (B, 1, *spatial) or (B, *spatial) with {len(spatial)} spatial dims, "
                            f"got {tuple(masks.shape)}")
    if masks.shape[0] != logits.shape[0]:
        raise TumorcamError(f"masks: {masks.shape[0]} masks for {logits.shape[0]} images")
    masks = masks.to(device=logits.device, dtype=torch.float32)
    if masks.shape[2:] != spatial:
        masks = F.interpolate(masks, size=tuple(spatial), mode="nearest")
    return masks[:, 0] > 0.5


def in_channel(logits: torch.Tensor, region: torch.Tensor, channel: int) -> torch.Tensor:
    """Weights with `region` (B, *spatial) on channel `channel` and 0 on the other channels."""
    weights = torch.zeros_like(logits)
    weights[:, channel] = region.to(logits.dtype)
    return weights


def boundary_width(spatial: tuple[int, ...]) -> int:
    """The half-width w of the `boundary` band in pixels: max(1, round(min(spatial) / 64))."""
    return max(1, round(min(spatial) / 64))


def dilate(region: torch.Tensor, width: int) -> torch.Tensor:
    """Max-pool dilation of bool (B, *spatial) by a (2w+1)^d cube; d = 1, 2 or 3 spatial dims."""
    pool = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[region.dim() - 1]
    return pool(region.unsqueeze(1).float(), kernel_size=2 * width + 1, stride=1, padding=width)[:, 0] > 0.5


def erode(region: torch.Tensor, width: int) -> torch.Tensor:
    """Erosion = not dilate(not region): outside the image counts as inside the region."""
    return ~dilate(~region, width)


def band(region: torch.Tensor, width: int) -> torch.Tensor:
    """The band of half-width `width` around the border of `region`: dilation and not erosion."""
    return dilate(region, width) & ~erode(region, width)


def mean_logits_weights(logits: torch.Tensor, masks: torch.Tensor | None, channel: int) -> torch.Tensor:
    """w = 1/|spatial| on channel c: s = spatial mean of z_c."""
    check_channel(logits, channel)
    weights = torch.zeros_like(logits)
    weights[:, channel] = 1.0 / logits[0, 0].numel()
    return weights


def predicted_region_weights(logits: torch.Tensor, masks: torch.Tensor | None, channel: int) -> torch.Tensor:
    """R = predicted as c."""
    return in_channel(logits, predicted(logits, channel), channel)


def gt_region_weights(logits: torch.Tensor, masks: torch.Tensor | None, channel: int) -> torch.Tensor:
    """R = ground-truth mask."""
    check_channel(logits, channel)
    return in_channel(logits, mask_region(masks, logits, "gt-region"), channel)


def false_positive_weights(logits: torch.Tensor, masks: torch.Tensor | None, channel: int) -> torch.Tensor:
    """R = predicted and not in the ground truth."""
    region = predicted(logits, channel) & ~mask_region(masks, logits, "false-positive")
    return in_channel(logits, region, channel)


def false_negative_weights(logits: torch.Tensor, masks: torch.Tensor | None, channel: int) -> torch.Tensor:
    """R = in the ground truth and not predicted."""
    region = mask_region(masks, logits, "false-negative") & ~predicted(logits, channel)
    return in_channel(logits, region, channel)


def boundary_weights(logits: torch.Tensor, masks: torch.Tensor | None, channel: int) -> torch.Tensor:
    """R = band(predicted, boundary_width) around the predicted border."""
    region = predicted(logits, channel)
    return in_channel(logits, band(region, boundary_width(tuple(logits.shape[2:]))), channel)


def lesion_weights(logits: torch.Tensor, masks: torch.Tensor | None, channel: int) -> torch.Tensor:
    """R = the lesion's mask, one lesion per image row (given as `masks` by `explain_components`)."""
    check_channel(logits, channel)
    return in_channel(logits, mask_region(masks, logits, "component"), channel)


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("mean-logits", needs_masks=False, uses_prediction=False, weights=mean_logits_weights),
        Target("predicted-region", needs_masks=False, uses_prediction=True, weights=predicted_region_weights),
        Target("gt-region", needs_masks=True, uses_prediction=False, weights=gt_region_weights),
        Target("false-positive", needs_masks=True, uses_prediction=True, weights=false_positive_weights),
        Target("false-negative", needs_masks=True, uses_prediction=True, weights=false_negative_weights),
        Target("boundary", needs_masks=False, uses_prediction=True, weights=boundary_weights),
        Target("component", needs_masks=False, uses_prediction=True, weights=lesion_weights, per_lesion=True),
    )
}


def get_target(name: str) -> Target:
    """The registered target `name`, or a TumorcamError naming `target` and the valid ones."""
    if name not in TARGETS:
        raise unknown_name("target", name, TARGETS)
    return TARGETS[name]


def target_function(target: str | TargetFn, channel: int) -> TargetFn:
    """The weights rule `(logits, masks) -> w` of a target name (for class `channel`) or a callable.
    A per-lesion target (`component`) has no rule of one map per image: `explain_components` runs it."""
    if callable(target):
        return target
    if not isinstance(target, str):
        raise TumorcamError(f"target: expected a target name or a callable (logits, masks) -> weights, "
                            f"got {type(target).__name__}", param="target")
    spec = get_target(target)
    if spec.per_lesion:
        raise TumorcamError(f"target: {target!r} gives one map per lesion, not one per image; "
                            "use explain_components(model, images, ...)", param="target")
    return partial(spec.weights, channel=channel)


def target_scores(logits: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """s_b = sum_cx w_bcx * z_bcx, in float32 (B,); the weights must broadcast to the logits' shape."""
    fits = isinstance(weights, torch.Tensor)
    if fits:
        try:
            fits = torch.broadcast_shapes(weights.shape, logits.shape) == logits.shape
        except RuntimeError:
            fits = False
    if not fits:
        shape = tuple(weights.shape) if isinstance(weights, torch.Tensor) else type(weights).__name__
        raise TumorcamError(f"target: the weights {shape} do not broadcast to the logits {tuple(logits.shape)}",
                            param="target")
    return (logits.float() * weights.float()).flatten(1).sum(dim=1)
