"""Raw attributions -> heatmaps: rectify, upsample to the input, min-max normalise per map.

For a raw map a (B, 1, *spatial'): r = ReLU(a) (CAMs, integrated gradients) or |a| (saliency),
u = linear interpolation of r to the input's spatial size (bilinear in 2D, trilinear in 3D,
align_corners=False), m = (u - min u) / (max u - min u) per map. A flat map
(max - min <= 1e-6 * max|u|, e.g. all zero) stays 0, never NaN; non-finite values count as 0.
Grad-CAM x GT is m * mask, the mask resized to the map's size with nearest.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

FLAT_RTOL = 1e-6
INTERPOLATION = {1: "linear", 2: "bilinear", 3: "trilinear"}


def rectify(raw: torch.Tensor, how: str) -> torch.Tensor:
    """`relu`: max(a, 0); `abs`: |a|; `none`: a."""
    if how == "relu":
        return raw.clamp_min(0)
    if how == "abs":
        return raw.abs()
    if how == "none":
        return raw
    raise ValueError(f"rectify: unknown mode {how!r} (relu, abs or none)")


def _with_channel(maps: torch.Tensor, spatial_dims: int) -> torch.Tensor:
    """(B, *spatial) -> (B, 1, *spatial); (B, 1, *spatial) unchanged."""
    return maps.unsqueeze(1) if maps.dim() == spatial_dims + 1 else maps


def upsample(maps: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """(B, 1, *spatial') or (B, *spatial') -> (B, *size), (bi/tri)linear, only when the size differs."""
    maps = _with_channel(maps, len(size))
    if tuple(maps.shape[2:]) != tuple(size):
        maps = F.interpolate(maps, size=tuple(size), mode=INTERPOLATION[len(size)], align_corners=False)
    return maps[:, 0]


def normalize(maps: torch.Tensor) -> torch.Tensor:
    """Per-map min-max to [0, 1] of (B, *spatial) float32; a flat map is all 0."""
    maps = torch.nan_to_num(maps.float(), nan=0.0, posinf=0.0, neginf=0.0)
    flat = maps.flatten(1)
    low = flat.min(dim=1).values
    high = flat.max(dim=1).values
    span = high - low
    scale = torch.maximum(high.abs(), low.abs())
    ok = span > FLAT_RTOL * scale
    span = torch.where(ok, span, torch.ones_like(span))
    per_map = (-1,) + (1,) * (maps.dim() - 1)
    out = (maps - low.view(per_map)) / span.view(per_map)
    return torch.where(ok.view(per_map), out, torch.zeros_like(out)).clamp_(0.0, 1.0)


def times_mask(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Grad-CAM x GT: maps (B, *spatial) times the ground-truth masks ((B, 1, *s) or (B, *s), nearest-resized)."""
    spatial = tuple(maps.shape[1:])
    masks = _with_channel(masks.to(device=maps.device, dtype=torch.float32), len(spatial))
    if tuple(masks.shape[2:]) != spatial:
        masks = F.interpolate(masks, size=spatial, mode="nearest")
    return maps * (masks[:, 0] > 0.5).to(maps.dtype)
