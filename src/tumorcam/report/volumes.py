"""Figures of 3-D cases: orthogonal views of a volume with its maps, and each channel's share of the
attribution. matplotlib on an Agg canvas (no pyplot state), in the house style of `report.figures`:
the image in grey, maps in `inferno`, the ground truth outlined solid yellow, the prediction dashed
cyan, both with a dark halo.

Axis convention (array order, not RAS): a volume (D, H, W) has array axes (axis0, axis1, axis2) as
nibabel reads a NIfTI's voxel axes (i, j, k). The planes are named for scans stored near RAS/LAS,
as BraTS, the Medical Segmentation Decathlon and nnU-Net's raw data are, where k runs from inferior
to superior, j from posterior to anterior and i across the head:

- axial = axis2 fixed (the (axis0, axis1) plane, e.g. the 155 slices of a 240 x 240 x 155 BraTS scan),
- coronal = axis1 fixed (the (axis0, axis2) plane),
- sagittal = axis0 fixed (the (axis1, axis2) plane).

Each plane is drawn transposed with the origin at the bottom left, so its first remaining axis runs
left to right and its second bottom to top. The affine is not read: in a scan stored in another
orientation the names are nominal and the panels are still the three array planes at the indices
shown on each panel.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from scipy import ndimage

from tumorcam.report.figures import (
    GT_STYLE,
    HEATMAP_CMAP,
    PANEL_INCHES,
    PRED_STYLE,
    _new_figure,
    _outline,
)

PLANES = (("axial", 2), ("coronal", 1), ("sagittal", 0))  # (name, the array axis held fixed)
MAP_ALPHA = 0.55
SHARE_COLOR, DROP_COLOR = "#4d7fb3", "#c9753d"

Centre = tuple[int, int, int]


def centre_of_mass(region: np.ndarray | None) -> Centre | None:
    """The voxel nearest the centre of mass of a bool region (D, H, W) (rounded, inside the volume);
    None for a missing or empty region."""
    if region is None:
        return None
    region = np.asarray(region, dtype=bool)
    if not region.any():
        return None
    centre = np.rint(ndimage.center_of_mass(region)).astype(int)
    return tuple(int(np.clip(c, 0, n - 1)) for c, n in zip(centre, region.shape))  # type: ignore[return-value]


def view_centre(shape: tuple[int, ...], mask: np.ndarray | None = None,
                predicted: np.ndarray | None = None) -> Centre:
    """Where the three planes cross: the centre of mass of `mask`, else of `predicted`, else the
    volume's centre (n // 2 on each axis)."""
    found = centre_of_mass(mask) or centre_of_mass(predicted)
    return found if found is not None else tuple(int(n) // 2 for n in shape[-3:])  # type: ignore[return-value]


def plane(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """The 2-D plane of `volume` (D, H, W) at `index` along `axis`, transposed for display with
    origin="lower" (the first remaining axis horizontal, the second vertical)."""
    return np.take(volume, index, axis=axis).T


def _spatial(name: str, array: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray | None:
    if array is None:
        return None
    array = np.asarray(array)
    if array.shape != shape:
        raise ValueError(f"{name}: expected the volume's spatial shape {shape}, got {array.shape}")
    return array


def draw_orthogonal_views(
    volume: np.ndarray,
    maps: Mapping[str, np.ndarray],
    mask: np.ndarray | None = None,
    predicted: np.ndarray | None = None,
    *,
    channel_index: int = 0,
    channel_name: str | None = None,
    title: str = "",
    centre: Centre | None = None,
) -> Figure:
    """Axial, coronal and sagittal planes (columns) of a case: the image, then each map over it (rows).

    `volume`: (C, D, H, W) or (D, H, W) float in [0, 1]; channel `channel_index` is shown, labelled
    `channel_name` when given.
    `maps`: name -> (D, H, W) in [0, 1] (non-finite values drawn as 0). `mask` (the ground truth,
    solid outline) and `predicted` (dashed outline): (D, H, W) bool or None. The planes cross at
    `centre` when given, else at `view_centre(shape, mask, predicted)`. Planes and axes are in
    array order (module docstring); each panel is labelled with its plane and index, e.g.
    "axial: axis2 = 12". A colorbar of the maps' scale follows when there is a map.
    """
    volume = np.asarray(volume, dtype=np.float32)
    image_row = "image"
    if volume.ndim == 4:
        if not 0 <= channel_index < volume.shape[0]:
            raise ValueError(f"channel_index: the volume has {volume.shape[0]} channel(s), got {channel_index}")
        volume = volume[channel_index]
        image_row = f"image ({channel_name or f'channel {channel_index}'})"
    if volume.ndim != 3:
        raise ValueError(f"volume: expected (C, D, H, W) or (D, H, W), got shape {volume.shape}")
    shape = volume.shape
    mask = _spatial("mask", mask, shape)
    predicted = _spatial("predicted", predicted, shape)
    layers = {name: np.nan_to_num(_spatial(f"maps[{name!r}]", heatmap, shape).astype(np.float32),
                                  nan=0.0, posinf=0.0, neginf=0.0) for name, heatmap in maps.items()}
    at = centre if centre is not None else view_centre(shape, mask, predicted)
    rows = [image_row, *layers]
    fig, axes = _new_figure(len(rows), len(PLANES), width=len(PLANES) * PANEL_INCHES + (0.9 if layers else 0.0))
    shown = None
    for r, row in enumerate(rows):
        for c, (name, axis) in enumerate(PLANES):
            ax = axes[r, c]
            index = at[axis]
            ax.imshow(plane(volume, axis, index), cmap="gray", vmin=0.0, vmax=1.0, origin="lower",
                      interpolation="bilinear")
            if r > 0:
                shown = ax.imshow(plane(layers[row], axis, index), cmap=HEATMAP_CMAP, vmin=0.0, vmax=1.0,
                                  alpha=MAP_ALPHA, origin="lower", interpolation="bilinear")
            for region, style in ((mask, GT_STYLE), (predicted, PRED_STYLE)):
                if region is not None:
                    _outline(ax, plane(region.astype(bool), axis, index), style)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(f"{name}: axis{axis} = {index}", fontsize=8)
            if r == 0:
                ax.set_title(name, fontsize=10)
        axes[r, 0].set_ylabel(row, fontsize=9)
    if shown is not None:
        bar = fig.colorbar(shown, ax=axes.ravel().tolist(), shrink=0.6, pad=0.01)
        bar.set_label("relevance (0 to 1)")
    outlines = [text for region, text in ((mask, "solid: ground truth"), (predicted, "dashed: prediction"))
                if region is not None]
    fig.suptitle("\n".join(part for part in (title, ", ".join(outlines)) if part), fontsize=9)
    return fig


def _interval(stats: Mapping[str, Any] | None) -> tuple[float, float, float]:
    """(mean, distance down to ci_low, distance up to ci_high); NaN for a missing mean, 0 for a missing bound."""
    if not stats or stats.get("mean") is None or not np.isfinite(stats["mean"]):
        return float("nan"), 0.0, 0.0
    mean = float(stats["mean"])
    low, high = stats.get("ci_low"), stats.get("ci_high")
    down = mean - float(low) if low is not None and np.isfinite(low) else 0.0
    up = float(high) - mean if high is not None and np.isfinite(high) else 0.0
    return mean, max(down, 0.0), max(up, 0.0)


def draw_channel_shares(summary: Mapping[str, Any], *, title: str = "") -> Figure:
    """Two bar charts over the input channels (sequences): the mean share of the attribution that falls
    on each channel, and the mean Dice drop when the channel is ablated, each with its CI as error bars.

    `summary`: `ChannelResult.summary()` (tumorcam.evaluate.channels): "channels" maps each channel name
    to {"share": {"mean", "ci_low", "ci_high", ...}, "dice_drop": {...}}; "channel_names" gives the
    order (default: that of "channels"), "level" the CI's level and "unit" the unit averaged over
    (patient means, or slices). A statistic missing or null is drawn as no bar, marked n/a.
    """
    channels = summary.get("channels") or {}
    if not channels:
        raise ValueError("summary: no channel to draw (summary['channels'] is empty)")
    names = list(summary.get("channel_names") or channels)
    level, unit = summary.get("level", 0.95), summary.get("unit", "patient")
    positions = np.arange(len(names))
    fig, axes = _new_figure(1, 2, width=max(7.0, 1.3 * len(names) + 4.5), height=3.4)
    panels = (("share", "share of the attribution", "mean share", SHARE_COLOR),
              ("dice_drop", "Dice drop when ablated", "mean Dice drop", DROP_COLOR))
    for ax, (key, label, heading, color) in zip(axes[0], panels):
        stats = np.array([_interval(channels[name].get(key)) for name in names])
        ax.bar(positions, np.nan_to_num(stats[:, 0], nan=0.0), color=color, edgecolor="black", linewidth=0.6,
               yerr=stats[:, 1:].T, capsize=4, error_kw={"elinewidth": 1.0})
        for x, value in zip(positions, stats[:, 0]):
            if not np.isfinite(value):
                ax.text(x, 0, "n/a", ha="center", va="bottom", fontsize=8, color="0.3")
        ax.set_xticks(positions, names, fontsize=9)
        ax.set_ylabel(label)
        ax.set_title(f"{heading}, {unit} level ({100 * level:g}% CI)", fontsize=10)
        ax.axhline(0.0, color="0.4", linewidth=0.8)
        ax.grid(axis="y", alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig
