"""nnU-Net's sliding window, with gradients: the tiles of a volume and their Gaussian weights.

The tiling is nnU-Net's (`nnUNetPredictor._internal_get_sliding_window_slicers`): the volume
(C, *spatial) is zero-padded up to the patch size where smaller (`pad_nd_image`, undone at the
end), tile origins come from `compute_steps_for_sliding_window` (step 0.5 of the patch by default),
and a 2-D configuration on a 3-D volume tiles each slice. Each tile's output is weighted by
nnU-Net's Gaussian importance map (`compute_gaussian`, sigma = patch / 8, peak 10) and the sums
divided by the summed weights; tiles may run in batches (the slices of a 2-D configuration: one network
call per batch instead of per tile, the same sums). `mirrored` is nnU-Net's test-time mirroring of tiles. Unlike nnU-Net's predictor (under `torch.inference_mode`, fp16
accumulators), everything here is float32 and differentiable.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import torch

Slicer = tuple[slice | int, ...]
TILE_STEP = 0.5


def padded(volume: torch.Tensor, patch_size: Sequence[int]) -> tuple[torch.Tensor, Slicer]:
    """`volume` (C, *spatial) zero-padded to at least the patch size, and the slicer that undoes it."""
    from acvl_utils.cropping_and_padding.padding import pad_nd_image

    data, revert = pad_nd_image(volume, list(patch_size), "constant", {"value": 0}, True, None)
    return data, tuple(revert)


def tiles(image_size: Sequence[int], patch_size: Sequence[int], step: float = TILE_STEP) -> list[Slicer]:
    """The slicers of the tiles of a (C, *image_size) volume, nnU-Net's order: `(slice(None), *tile)`,
    with one integer slice index first for a 2-D patch on a 3-D volume."""
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

    patch_size = list(patch_size)
    image_size = list(image_size)
    leading = image_size[:len(image_size) - len(patch_size)]
    steps = compute_steps_for_sliding_window(image_size[len(leading):], patch_size, step)
    grids = torch.cartesian_prod(*[torch.tensor(s) for s in steps]).reshape(-1, len(steps)).tolist()
    windows = [tuple(slice(o, o + p) for o, p in zip(origin, patch_size)) for origin in grids]
    if leading:
        return [(slice(None), d, *window) for d in range(leading[0]) for window in windows]
    return [(slice(None), *window) for window in windows]


def gaussian(patch_size: Sequence[int], device: torch.device | str = "cpu") -> torch.Tensor:
    """nnU-Net's Gaussian importance map of a patch, float32."""
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian

    return compute_gaussian(tuple(patch_size), sigma_scale=1.0 / 8, value_scaling_factor=10,
                            dtype=torch.float32, device=torch.device(device)).clone()


def stitch(volume: torch.Tensor, patch_size: Sequence[int], run: Callable[[torch.Tensor], torch.Tensor],
           step: float = TILE_STEP, batch: int = 1) -> torch.Tensor:
    """sum_t g * run(tile_t) / sum_t g over the tiles of `volume` (C, *spatial), cropped back to its size.

    `run` maps tiles (B, C, *patch) to outputs (B, K, *patch) (logits, or a 1-channel map), called on
    `batch` consecutive tiles at a time (the last call on the rest); the result is (K, *spatial)
    float32, differentiable through `run`."""
    data, revert = padded(volume, patch_size)
    weight = gaussian(patch_size, data.device)
    total = torch.zeros(data.shape[1:], device=data.device)
    out: torch.Tensor | None = None
    slicers = tiles(data.shape[1:], patch_size, step)
    for first in range(0, len(slicers), max(1, batch)):
        group = slicers[first:first + max(1, batch)]
        results = run(torch.stack([data[slicer] for slicer in group])).float() * weight
        if out is None:
            out = torch.zeros((results.shape[1], *data.shape[1:]), device=data.device)
        for slicer, result in zip(group, results):
            out[slicer] += result
            total[slicer[1:]] += weight
    return (out / total)[(slice(None), *revert[1:])]


def mirrored(run: Callable[[torch.Tensor], torch.Tensor], axes: Sequence[int], tile: torch.Tensor) -> torch.Tensor:
    """nnU-Net's test-time mirroring (`_internal_maybe_mirror_and_predict`) of `run` on tiles
    (B, C, *patch): the mean of run(tile) and of run on the tile flipped along every non-empty
    combination of the spatial `axes`, each flipped back."""
    dims = [axis + 2 for axis in axes]
    flips = [c for count in range(1, len(dims) + 1) for c in itertools.combinations(dims, count)]
    out = run(tile)
    for flip in flips:
        out = out + torch.flip(run(torch.flip(tile, flip)), flip)
    return out / (len(flips) + 1)


def whole(volume: torch.Tensor, divisors: Sequence[int], run: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """`run` on the whole `volume` (C, *spatial) at once, zero-padded at the end of each axis to a
    multiple of `divisors` (the network's total stride per axis) and cropped back: (K, *spatial). A
    2-D network (fewer `divisors` than spatial axes) gets the volume's slices as one batch."""
    spatial = tuple(volume.shape[1:])
    leading = len(spatial) - len(divisors)
    padding: list[int] = []
    for size, divisor in zip(reversed(spatial[leading:]), reversed(list(divisors))):
        padding += [0, (-size) % int(divisor)]
    data = torch.nn.functional.pad(volume, padding)
    out = run(data.movedim(1, 0) if leading else data[None]).float()
    out = out.movedim(0, 1) if leading else out[0]
    return out[(slice(None), *(slice(0, size) for size in spatial))]
