"""Targets: turn the dense logit map (B,1,H,W) into one scalar per image, s_b = sum_ij w_bij * z_bij.

Each target is a rule for the pixel weights w (computed from the detached logits z and, where
needed, the ground-truth masks m):

- `mean-logits`: w = 1 / (C*H*W), so s = mean(z), the seed's SegmentationWrapper.
- `predicted-region`: w = [z > 0] (sigmoid(z) > 0.5), Seg-Grad-CAM's sum over the pixels the
  model predicts as tumour. The region is a constant of the backward pass. An image with no
  predicted tumour pixel has w = 0, so s = 0 with zero gradient everywhere: its map is all zero
  (there is nothing to explain), never NaN.
- `gt-region`: w = m (resized nearest to the logits), the sum over the ground-truth tumour;
  needs masks, and an image whose mask is empty gets an all-zero map likewise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tumorcam.errors import TumorcamError


@dataclass(frozen=True)
class Target:
    """A named rule `weights(logits, masks) -> w` with the same shape as the logits."""

    name: str
    needs_masks: bool
    uses_prediction: bool
    weights: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


def mean_logits_weights(logits: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
    """w = 1/(C*H*W): s = spatial mean of the logits."""
    return torch.full_like(logits, 1.0 / logits[0].numel())


def predicted_region_weights(logits: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
    """w = [z > 0], i.e. sigmoid(z) > 0.5."""
    return (logits > 0).to(logits.dtype)


def gt_region_weights(logits: torch.Tensor, masks: torch.Tensor | None) -> torch.Tensor:
    """w = ground-truth mask, resized (nearest) to the logits."""
    if masks is None:
        raise TumorcamError("--targets gt-region: needs ground-truth masks, and none were given")
    masks = masks.to(device=logits.device, dtype=logits.dtype)
    if masks.dim() == 3:
        masks = masks.unsqueeze(1)
    if masks.shape[0] != logits.shape[0]:
        raise ValueError(f"masks hold {masks.shape[0]} images, the batch {logits.shape[0]}")
    if masks.shape[-2:] != logits.shape[-2:]:
        masks = F.interpolate(masks, size=logits.shape[-2:], mode="nearest")
    return (masks > 0.5).to(logits.dtype).expand_as(logits)


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("mean-logits", needs_masks=False, uses_prediction=False, weights=mean_logits_weights),
        Target("predicted-region", needs_masks=False, uses_prediction=True, weights=predicted_region_weights),
        Target("gt-region", needs_masks=True, uses_prediction=False, weights=gt_region_weights),
    )
}


def target_scores(logits: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """s_b = sum_ij w_bij * z_bij, in float32 (B,)."""
    return (logits.float() * weights.float()).flatten(1).sum(dim=1)
