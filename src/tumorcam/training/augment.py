"""Light augmentation on the training device, one batched call per step.

Per slice: a left-right flip with probability 1/2, a rotation by an angle uniform in
[-max_degrees, max_degrees], and an intensity change x -> clamp(gain * x ** gamma, 0, 1) with
gain uniform in [0.9, 1.1] and gamma log-uniform in [0.8, 1.25]. Flip and rotation are one affine
grid shared by image and mask (a single `grid_sample`); the mask is resampled bilinearly and
thresholded at 0.5. Up-down flips are left out: brain slices have a fixed up and down.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MAX_DEGREES = 10.0
GAIN_RANGE = (0.9, 1.1)
GAMMA_RANGE = (0.8, 1.25)


def augment(images: torch.Tensor, masks: torch.Tensor, generator: torch.Generator,
            max_degrees: float = MAX_DEGREES) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip, rotate and change the intensity of (B,1,S,S) images and masks, on their device."""
    b, device = images.shape[0], images.device
    u = torch.rand((b, 4), generator=generator, device=device)
    angle = (2 * u[:, 0] - 1) * math.radians(max_degrees)
    flip = torch.where(u[:, 1] < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros((b, 2, 3), device=device)
    theta[:, 0, 0], theta[:, 0, 1] = cos * flip, -sin
    theta[:, 1, 0], theta[:, 1, 1] = sin * flip, cos
    both = torch.cat([images, masks], dim=1)
    grid = F.affine_grid(theta, list(both.shape), align_corners=False)
    both = F.grid_sample(both, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    images, masks = both[:, :1], (both[:, 1:] > 0.5).to(masks.dtype)
    gain = GAIN_RANGE[0] + (GAIN_RANGE[1] - GAIN_RANGE[0]) * u[:, 2]
    log_lo, log_hi = math.log(GAMMA_RANGE[0]), math.log(GAMMA_RANGE[1])
    gamma = torch.exp(log_lo + (log_hi - log_lo) * u[:, 3])
    images = (gain.view(b, 1, 1, 1) * images.clamp_min(0).pow(gamma.view(b, 1, 1, 1))).clamp_(0, 1)
    return images, masks
