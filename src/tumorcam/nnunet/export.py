"""A map on nnU-Net's preprocessed grid back on the raw case's grid, and into a NIfTI file.

nnU-Net preprocesses by transposing, cropping to the non-zero bounding box and resampling to the
configuration's spacing; its export (`convert_predicted_logits_to_segmentation_with_correct_shape`)
undoes this as resample (its `resampling_fn_probabilities`) -> put back into the uncropped volume
(`insert_crop_into_image`, zeros outside the box) -> transpose back. `map_to_raw` does the same to
a heatmap, treated as a 1-channel probability map. nnU-Net's NIfTI readers (SimpleITKIO, NibabelIO)
hold a volume in reversed axis order; `write_map` reverses it back to the file's voxel order and
writes it with the raw image's affine.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from torch import nn

from tumorcam.errors import TumorcamError


REVERSED_AXES_READERS = ("SimpleITKIO", "NibabelIO")


def map_to_raw(model: nn.Module, heatmap: np.ndarray, properties: dict[str, Any]) -> np.ndarray:
    """`heatmap` (*spatial) on the preprocessed grid -> float32 on the raw case's grid, in the axis
    order of nnU-Net's reader (the `properties` are those `model.preprocess` returned)."""
    from acvl_utils.cropping_and_padding.bounding_boxes import insert_crop_into_image

    plans, configuration = model.plans_manager, model.configuration_manager
    heatmap = np.asarray(heatmap, dtype=np.float32)
    cropped_shape = properties["shape_after_cropping_and_before_resampling"]
    if heatmap.ndim != len(cropped_shape):
        raise TumorcamError(f"heatmap: expected {len(cropped_shape)} dimensions, got shape {heatmap.shape}",
                            param="heatmap")
    raw_spacing = [properties["spacing"][i] for i in plans.transpose_forward]
    spacing = configuration.spacing if len(configuration.spacing) == len(cropped_shape) else \
        [raw_spacing[0], *configuration.spacing]
    resampled = configuration.resampling_fn_probabilities(heatmap[None], cropped_shape, spacing, raw_spacing)
    resampled = np.clip(np.asarray(resampled, dtype=np.float32)[0], 0.0, 1.0)
    full = np.zeros(properties["shape_before_cropping"], dtype=np.float32)
    full = insert_crop_into_image(full, resampled, properties["bbox_used_for_cropping"])
    return np.asarray(full).transpose(plans.transpose_backward)


def write_map(model: nn.Module, heatmap: np.ndarray, properties: dict[str, Any], reference: str | os.PathLike,
              out: str | os.PathLike) -> np.ndarray:
    """Write `heatmap` (preprocessed grid) as a float32 NIfTI on the grid and affine of `reference` (one
    of the case's raw channel files) at `out`; return the written volume (the file's voxel order)."""
    from tumorcam.data.nnunet import read_nifti, write_nifti

    reader = model.plans_manager.plans.get("image_reader_writer", "")
    if reader not in REVERSED_AXES_READERS:
        raise TumorcamError(f"model: maps are written for NIfTI read by {' or '.join(REVERSED_AXES_READERS)}; "
                            f"this model's plans use {reader!r}", param="model")
    volume = map_to_raw(model, heatmap, properties).transpose()
    image, affine, _ = read_nifti(reference)
    if volume.shape != image.shape:
        raise TumorcamError(f"reference: {reference} has shape {image.shape}, the map {volume.shape}",
                            param="reference")
    write_nifti(out, volume, affine)
    return volume
