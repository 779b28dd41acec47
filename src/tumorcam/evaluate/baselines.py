"""What a removed pixel becomes in the Deletion/Insertion game: the baselines.

- `zero`: black (the seed's).
- `mean`: each image's mean intensity, per input channel.
- `blur`: RISE's Gaussian blur of the image (Petsiuk et al. 2018: an 11-pixel kernel with sigma 5
  at 224 px, scaled with the width), per input channel.
- `road`: ROAD's noisy linear imputation (Rong et al. 2022): every removed pixel is the weighted
  mean of its 8 neighbours, 1/6 edge and 1/12 diagonal, solved jointly as a linear system, plus
  Gaussian noise; per input channel, the same removed pixels in every channel.
- `rise`: RISE's own pair, zero for deletion and blur for insertion.

`zero` and `mean` work for any number of spatial dimensions; `blur`, `road` and `rise` are 2-D
filters and refuse 3-D images (B, C, D, H, W) with an error naming `baseline`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.transforms.functional import gaussian_blur

from tumorcam.errors import TumorcamError

BASELINES = ("zero", "blur", "mean", "road", "rise")
ANY_DIMENSION = ("zero", "mean")  # the baselines that work on 3-D images too
# RISE's blur (Petsiuk et al. 2018): an 11-pixel kernel with sigma 5 at 224 px; scaled with the slice size.
RISE_KERNEL_AT_224 = 11
RISE_SIGMA_AT_224 = 5.0
RISE_PAIR = ("zero", "blur")  # the baselines of RISE's deletion and insertion
# ROAD's neighbour weights (Rong et al. 2022, `NoisyLinearImputer`): 1/6 edge, 1/12 diagonal neighbours.
ROAD_WEIGHTS = ((1 / 12, 1 / 6, 1 / 12), (1 / 6, 0.0, 1 / 6), (1 / 12, 1 / 6, 1 / 12))


def check_baseline(baseline: object, spatial_dims: int = 2, name: str = "baseline") -> None:
    """`baseline` must be one of BASELINES, and for images with 3 spatial dimensions one of
    ANY_DIMENSION; `name` is the parameter (or option) the caller calls it."""
    if baseline not in BASELINES:
        raise TumorcamError(f"{name}: unknown baseline {baseline!r} (choose from {', '.join(BASELINES)})")
    if spatial_dims != 2 and baseline not in ANY_DIMENSION:
        raise TumorcamError(f"{name}: {baseline!r} is a 2-D filter and the images have {spatial_dims} spatial "
                            f"dimensions; choose {' or '.join(map(repr, ANY_DIMENSION))}")


def blur_kernel(size: int) -> tuple[int, float]:
    """RISE's blur at `size` px, s = size/224: kernel 2 floor(11 s / 2) + 1 (at least 3) and sigma 5 s."""
    scale = size / 224
    return max(3, 2 * math.floor(RISE_KERNEL_AT_224 * scale / 2) + 1), RISE_SIGMA_AT_224 * scale


def blur_images(images: torch.Tensor) -> torch.Tensor:
    """RISE's blurred images (N, C, H, W): Gaussian, `blur_kernel` of the width, each channel on its own."""
    kernel, sigma = blur_kernel(images.shape[-1])
    return gaussian_blur(images, [kernel, kernel], [sigma, sigma])


def fixed_baseline(images: torch.Tensor, name: str) -> torch.Tensor:
    """The `zero`, `blur` or `mean` baseline of images (N, C, *spatial) (ROAD depends on the removed set)."""
    check_baseline(name, images.dim() - 2)
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


def road_impute(
    images: torch.Tensor,
    removed: torch.Tensor,
    *,
    noise: float = 0.01,
    generator: torch.Generator | None = None,
    tol: float = 1e-5,
    max_iter: int | None = None,
) -> torch.Tensor:
    """ROAD's noisy linear imputation of the `removed` pixels (B, 1, H, W) bool of images (B, C, H, W).

    Each removed pixel i of each channel gets x_i = sum_j w_ij x_j / sum_j w_ij over its in-image
    neighbours j (ROAD_WEIGHTS), kept pixels fixed: the sparse system (diag(s) - W_uu) x_u = W_uk v_k
    of ROAD's `NoisyLinearImputer`, here solved for every image and channel at once by
    Jacobi-preconditioned conjugate gradients (the matrix is symmetric positive definite whenever
    some pixel is kept) to a relative residual `tol`, at most `max_iter` iterations (default
    8 * max(H, W)). An image with every pixel removed has no data: it imputes 0. Then N(0, noise^2)
    is added to the imputed pixels.
    """
    check_baseline("road", images.dim() - 2)
    b, c, h, w = images.shape
    with torch.autocast(images.device.type, enabled=False):
        images = images.float()
        removed = removed.expand(b, c, h, w)
        planes = images.reshape(b * c, 1, h, w)  # each channel of each image is one plane to fill
        unknown = removed.reshape(b * c, 1, h, w).to(planes.dtype)
        kernel = torch.tensor(ROAD_WEIGHTS, dtype=planes.dtype, device=planes.device).view(1, 1, 3, 3)

        def neighbours(x: torch.Tensor) -> torch.Tensor:
            return F.conv2d(x, kernel, padding=1)  # zero padding: no neighbour outside the image

        weight_sum = neighbours(torch.ones_like(planes))
        rhs = neighbours(planes * (1 - unknown)) * unknown

        def operator(x: torch.Tensor) -> torch.Tensor:
            return (weight_sum * x - neighbours(x)) * unknown

        kept = (1 - unknown).sum(dim=(1, 2, 3), keepdim=True)
        start = (planes * (1 - unknown)).sum(dim=(1, 2, 3), keepdim=True) / kept.clamp_min(1)
        x = start * unknown
        r = rhs - operator(x)
        z = r / weight_sum
        p = z.clone()
        rz = (r * z).sum(dim=(1, 2, 3), keepdim=True)
        limit = tol * rhs.flatten(1).norm(dim=1).clamp_min(1e-12)
        for it in range(max_iter or 8 * max(h, w)):
            ap = operator(p)
            pap = (p * ap).sum(dim=(1, 2, 3), keepdim=True)
            alpha = torch.where(pap > 0, rz / pap.clamp_min(1e-30), torch.zeros_like(pap))
            x = x + alpha * p
            r = r - alpha * ap
            if it % 16 == 15 and bool((r.flatten(1).norm(dim=1) <= limit).all()):
                break
            z = r / weight_sum
            rz_next = (r * z).sum(dim=(1, 2, 3), keepdim=True)
            beta = torch.where(rz > 0, rz_next / rz.clamp_min(1e-30), torch.zeros_like(rz))
            p = z + beta * p
            rz = rz_next
        if noise > 0:
            x = x + noise * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return torch.where(removed, x.view(b, c, h, w), images)
