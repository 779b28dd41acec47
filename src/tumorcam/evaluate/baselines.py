"""What a removed pixel (or voxel) becomes in the Deletion/Insertion game: the baselines.

Every baseline works on images (B, C, H, W) and volumes (B, C, D, H, W):

- `zero`: black (the seed's).
- `mean`: each image's mean intensity, per input channel.
- `blur`: RISE's Gaussian blur of the image (Petsiuk et al. 2018: an 11-pixel kernel with sigma 5
  at 224 px, scaled with the last axis), separable over every spatial axis with reflect padding,
  per input channel; in 2-D it is torchvision's `gaussian_blur`.
- `road`: ROAD's noisy linear imputation (Rong et al. 2022): every removed pixel is the weighted
  mean of its 3^n - 1 neighbours (`road_weights`: 1/6 edge and 1/12 diagonal in 2-D, ROAD's own;
  1/14 face, 1/28 edge and 1/56 corner in 3-D), solved jointly as a linear system, plus Gaussian
  noise; per input channel, the same removed pixels in every channel.
- `rise`: RISE's own pair, zero for deletion and blur for insertion.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from tumorcam.errors import TumorcamError

BASELINES = ("zero", "blur", "mean", "road", "rise")
# RISE's blur (Petsiuk et al. 2018): an 11-pixel kernel with sigma 5 at 224 px; scaled with the slice size.
RISE_KERNEL_AT_224 = 11
RISE_SIGMA_AT_224 = 5.0
RISE_PAIR = ("zero", "blur")  # the baselines of RISE's deletion and insertion
# ROAD's neighbour weights (Rong et al. 2022, `NoisyLinearImputer`): 1/6 edge, 1/12 diagonal neighbours.
ROAD_WEIGHTS = ((1 / 12, 1 / 6, 1 / 12), (1 / 6, 0.0, 1 / 6), (1 / 12, 1 / 6, 1 / 12))
CONVOLUTIONS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}  # ROAD's neighbour sums, by spatial dimensions


def check_baseline(baseline: object, name: str = "baseline") -> None:
    """`baseline` must be one of BASELINES; `name` is the parameter (or option) the caller calls it."""
    if baseline not in BASELINES:
        raise TumorcamError(f"{name}: unknown baseline {baseline!r} (choose from {', '.join(BASELINES)})")


def blur_kernel(size: int) -> tuple[int, float]:
    """RISE's blur at `size` px, s = size/224: kernel 2 floor(11 s / 2) + 1 (at least 3) and sigma 5 s."""
    scale = size / 224
    return max(3, 2 * math.floor(RISE_KERNEL_AT_224 * scale / 2) + 1), RISE_SIGMA_AT_224 * scale


def gaussian_kernel(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The 1-D Gaussian (size,) of torchvision's `gaussian_blur`: exp(-x^2 / (2 sigma^2)) at
    x = -(size-1)/2 .. (size-1)/2, normalised to sum 1."""
    half = (size - 1) * 0.5
    x = torch.linspace(-half, half, steps=size, dtype=dtype, device=device)
    pdf = torch.exp(-0.5 * (x / sigma).pow(2))
    return pdf / pdf.sum()


def blur_images(images: torch.Tensor) -> torch.Tensor:
    """RISE's blurred images (N, C, *spatial): the Gaussian of `blur_kernel` of the last axis along
    every spatial axis in turn (separable), reflect padding, each channel on its own; in 2-D
    torchvision's `gaussian_blur` (to float rounding). Every axis must be longer than half the kernel."""
    size, sigma = blur_kernel(images.shape[-1])
    pad = size // 2
    if min(images.shape[2:]) <= pad:
        raise TumorcamError(f"images: the blur baseline reflects {pad} pixels at each border, so every spatial "
                            f"axis needs more than {pad}; got {tuple(images.shape)}")
    dtype = images.dtype if images.is_floating_point() else torch.float32
    weights = gaussian_kernel(size, sigma, dtype, images.device).view(1, 1, size)
    out = images.to(dtype)
    for axis in range(2, images.dim()):
        moved = out.movedim(axis, -1)
        lines = F.pad(moved.reshape(-1, 1, moved.shape[-1]), (pad, pad), mode="reflect")
        out = F.conv1d(lines, weights).view(moved.shape).movedim(-1, axis)
    return out.contiguous()


def fixed_baseline(images: torch.Tensor, name: str) -> torch.Tensor:
    """The `zero`, `blur` or `mean` baseline of images (N, C, *spatial) (ROAD depends on the removed set)."""
    check_baseline(name)
    if name == "zero":
        return torch.zeros_like(images)
    if name == "mean":
        return images.mean(dim=tuple(range(2, images.dim())), keepdim=True).expand_as(images).contiguous()
    if name == "blur":
        return blur_images(images)
    raise TumorcamError(f"baseline: {name!r} is not a fixed image (choose zero, blur or mean)")


def curve_baselines(baseline: str) -> tuple[str, str]:
    """The baselines of the deletion and of the insertion curve: `rise` is (zero, blur), any other (b, b)."""
    return RISE_PAIR if baseline == "rise" else (baseline, baseline)


def road_weights(spatial_dims: int) -> torch.Tensor:
    """ROAD's neighbour weights (3,) * n float64 in n spatial dimensions: the neighbour at offset
    o in {-1, 0, 1}^n with k > 0 nonzero coordinates weighs a 2^-(k-1), a such that the weights sum
    to 1 (the centre 0). 2-D: 1/6 edge and 1/12 diagonal, ROAD's `ROAD_WEIGHTS`; 3-D: 1/14 face,
    1/28 edge, 1/56 corner."""
    nonzero = (np.indices((3,) * spatial_dims) != 1).sum(axis=0)
    raw = np.where(nonzero > 0, 2.0 ** (1 - nonzero.astype(np.float64)), 0.0)
    return torch.from_numpy(raw / raw.sum())


def road_impute(
    images: torch.Tensor,
    removed: torch.Tensor,
    *,
    noise: float = 0.01,
    generator: torch.Generator | None = None,
    tol: float = 1e-5,
    max_iter: int | None = None,
) -> torch.Tensor:
    """ROAD's noisy linear imputation of the `removed` pixels (B, 1, *spatial) bool of images
    (B, C, *spatial), 1 to 3 spatial dimensions.

    Each removed pixel i of each channel gets x_i = sum_j w_ij x_j / sum_j w_ij over its in-image
    neighbours j (`road_weights`: 8 in 2-D, 26 in 3-D), kept pixels fixed: the sparse system
    (diag(s) - W_uu) x_u = W_uk v_k of ROAD's `NoisyLinearImputer`, here solved for every image and
    channel at once by Jacobi-preconditioned conjugate gradients (the matrix is symmetric positive
    definite whenever some pixel is kept) to a relative residual `tol`, at most `max_iter`
    iterations (default 8 x the longest axis). An image with every pixel removed has no data: it
    imputes 0. Then N(0, noise^2) is added to the imputed pixels.
    """
    b, c, *spatial = images.shape
    n = len(spatial)
    if n not in CONVOLUTIONS:
        raise TumorcamError(f"images: ROAD imputes images with 1 to 3 spatial dimensions, got {tuple(images.shape)}")
    convolve = CONVOLUTIONS[n]
    dims = tuple(range(1, n + 2))  # a sum over each plane
    with torch.autocast(images.device.type, enabled=False):
        images = images.float()
        removed = removed.expand(b, c, *spatial)
        planes = images.reshape(b * c, 1, *spatial)  # each channel of each image is one plane to fill
        unknown = removed.reshape(b * c, 1, *spatial).to(planes.dtype)
        kernel = road_weights(n).to(dtype=planes.dtype, device=planes.device).view(1, 1, *(3,) * n)

        def neighbours(x: torch.Tensor) -> torch.Tensor:
            return convolve(x, kernel, padding=1)  # zero padding: no neighbour outside the image

        weight_sum = neighbours(torch.ones_like(planes))
        rhs = neighbours(planes * (1 - unknown)) * unknown

        def operator(x: torch.Tensor) -> torch.Tensor:
            return (weight_sum * x - neighbours(x)) * unknown

        kept = (1 - unknown).sum(dim=dims, keepdim=True)
        start = (planes * (1 - unknown)).sum(dim=dims, keepdim=True) / kept.clamp_min(1)
        x = start * unknown
        r = rhs - operator(x)
        z = r / weight_sum
        p = z.clone()
        rz = (r * z).sum(dim=dims, keepdim=True)
        limit = tol * rhs.flatten(1).norm(dim=1).clamp_min(1e-12)
        for it in range(max_iter or 8 * max(spatial)):
            ap = operator(p)
            pap = (p * ap).sum(dim=dims, keepdim=True)
            alpha = torch.where(pap > 0, rz / pap.clamp_min(1e-30), torch.zeros_like(pap))
            x = x + alpha * p
            r = r - alpha * ap
            if it % 16 == 15 and bool((r.flatten(1).norm(dim=1) <= limit).all()):
                break
            z = r / weight_sum
            rz_next = (r * z).sum(dim=dims, keepdim=True)
            beta = torch.where(rz > 0, rz_next / rz.clamp_min(1e-30), torch.zeros_like(rz))
            p = z + beta * p
            rz = rz_next
        if noise > 0:
            x = x + noise * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return torch.where(removed, x.view(b, c, *spatial), images)
