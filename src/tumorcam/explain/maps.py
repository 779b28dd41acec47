"""Raw attributions -> heatmaps: rectify, upsample to the input, min-max normalise per map.

For a raw map a (B,1,h,w): r = ReLU(a) (CAMs, integrated gradients) or |a| (saliency),
u = bilinear(r, H x W) (align_corners=False), m = (u - min u) / (max u - min u) per map.
A flat map (max - min <= 1e-6 * max|u|, e.g. all zero) stays 0, never NaN; non-finite values
count as 0. Grad-CAM x GT is m * mask, the mask resized to H x W with nearest.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

FLAT_RTOL = 1e-6


def rectify(raw: torch.Tensor, how: str) -> torch.Tensor:
    """`relu`: max(a, 0); `abs`: |a|; `none`: a."""
    if how == "relu":
        return raw.clamp_min(0)
    if how == "abs":
        return raw.abs()
    if how == "none":
        return raw
    raise ValueError(f"rectify: unknown mode {how!r} (relu, abs or none)")


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B,1,h,w) or (B,h,w) -> (B,H,W), bilinear, only when the size differs."""
    if maps.dim() == 3:
        maps = maps.unsqueeze(1)
    if tuple(maps.shape[-2:]) != tuple(size):
        maps = F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=False)
    return maps[:, 0]


def normalise(maps: torch.Tensor) -> torch.Tensor:
    """Per-map min-max to [0, 1] of (B,H,W) float32; a flat map is all 0."""
    maps = torch.nan_to_num(maps.float(), nan=0.0, posinf=0.0, neginf=0.0)
    flat = maps.flatten(1)
    low = flat.min(dim=1).values
    high = flat.max(dim=1).values
    span = high - low
    scale = torch.maximum(high.abs(), low.abs())
    ok = span > FLAT_RTOL * scale
    span = torch.where(ok, span, torch.ones_like(span))
    out = (maps - low[:, None, None]) / span[:, None, None]
    return torch.where(ok[:, None, None], out, torch.zeros_like(out)).clamp_(0.0, 1.0)


def times_mask(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Grad-CAM x GT: maps (B,H,W) times the ground-truth masks ((B,1,h,w) or (B,h,w), nearest-resized)."""
    masks = masks.to(device=maps.device, dtype=torch.float32)
    if masks.dim() == 3:
        masks = masks.unsqueeze(1)
    if tuple(masks.shape[-2:]) != tuple(maps.shape[-2:]):
        masks = F.interpolate(masks, size=tuple(maps.shape[-2:]), mode="nearest")
    return maps * (masks[:, 0] > 0.5).to(maps.dtype)
