"""Guards on what the library is given: one place for the refusals and warnings of every entry point.

`tumorcam.explain`, `explain_components`, `faithfulness` and `channels` (and `sanity`, through
`explain`) call these checks before any work, instead of each keeping a copy.

Refused, with a `TumorcamError` whose message starts with the parameter at fault:

- `images` that are not a tensor (B, C, H, W) or (B, C, D, H, W), or that hold NaN or inf;
- `images` whose channel count the model's first convolution (the first `nn.Conv1d/2d/3d` in
  `model.modules()` order) does not take, when the model fails on them:
  `images: images has 1 channel; the model's first convolution takes 4`;
- `images` of a spatial size the model cannot take (a U-Net's skip connections need sizes divisible
  by its downsampling): `images: spatial size (155, 240, 240) is not divisible by 32, which the
  encoder needs; pad or resize (e.g. to (160, 256, 256))`. The divisor is the smp encoder's
  `output_stride`, else the smallest power of two (2 .. 64) whose padded size the model takes;
- `channel` None (the default) for a model with more than one output channel: the class to explain
  must be chosen (`channel_of`); with one output channel it is 0.

The model's failure is read from one forward of the first image (`check_model`), in eval mode
without gradients; any other failure is raised as it is.

Warned, as a `TumorcamWarning` (a `UserWarning`), attributed to the caller's line outside tumorcam:
Python's default filter shows each distinct message once per calling line, so the messages
are stable (they hold counts and names, never values that change from call to call):

- outputs that look like probabilities: every value of the first forward in [0, 1], or the model's
  last module a `Sigmoid`/`Softmax`/`Softmax2d` (`check_model`);
- flat maps (every pixel equal) from `explain` (`warn_flat_maps`), and `explain`'s fallback from a
  `layer=None` choice whose Grad-CAM-family maps are all flat to the next block up
  (`warn_layer_fallback`);
- images whose predicted region is empty in `faithfulness` (`warn_empty_regions`): their curves
  are NaN and they leave the statistics;
- a slice from outside the data set (`tumorcam explain RUN --image FILE`) whose intensities, after
  the run's preparation, lie far from those of the run's prepared training slices
  (`warn_intensity`, rule in its docstring).

The command line prints a `TumorcamWarning` as one line `warning: ...` (`tumorcam.cli.main`).
"""

from __future__ import annotations

import math
import numbers
import re
import sys
import warnings
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tumorcam.errors import TumorcamError, TumorcamWarning
from tumorcam.logits import Logits, Output, explaining

_PACKAGE = str(Path(__file__).resolve().parent)
PROBABILITY_MODULES = (nn.Sigmoid, nn.Softmax, nn.Softmax2d)
# torch's and smp's messages when a U-Net's skip connections do not fit the input's size
_SIZE_ERROR = re.compile(r"Sizes of tensors must match|Expected size \d+ but got size \d+|Wrong input shape|"
                         r"divisible by|must match the size of tensor", re.IGNORECASE)
DIVISORS = (2, 4, 8, 16, 32, 64)
INTENSITY_MARGIN = 0.5  # warn_intensity: the allowed excess, as a share of the training range ...
INTENSITY_FLOOR = 0.25  # ... and at least this much of the unit range
# check_model: per model, the kinds of input already checked and the model's output channels for them
_CHECKED: weakref.WeakKeyDictionary[nn.Module, dict[tuple, int]] = weakref.WeakKeyDictionary()



def check_positive_int(name: str, value: object) -> None:
    """One TumorcamError naming `name` unless `value` is an integer >= 1 (a bool is not)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise TumorcamError(f"{name}: must be an integer >= 1, got {value!r}", param=name)

def warn(message: str) -> None:
    """Warn `message` as a TumorcamWarning, attributed to the first calling frame outside tumorcam."""
    frame, level = sys._getframe(0), 1
    while frame is not None and str(Path(frame.f_code.co_filename).resolve()).startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, TumorcamWarning, stacklevel=level)


def check_images(images: Any) -> None:
    """`images` must be a tensor (B, C, H, W) or (B, C, D, H, W) with finite values; else one error naming `images`."""
    if not isinstance(images, torch.Tensor) or images.dim() not in (4, 5):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise TumorcamError(f"images: expected a tensor (B, C, H, W) or (B, C, D, H, W), got {shape}")
    if images.is_floating_point() or images.is_complex():
        finite = torch.isfinite(images.flatten(1)).all(dim=1) if images.numel() else torch.ones(0, dtype=torch.bool)
        bad = int((~finite).sum())
        if bad:
            raise TumorcamError(f"images: {bad} of {len(images)} images hold NaN or inf values; "
                                "tumorcam needs finite intensities")


def first_convolution(model: nn.Module) -> nn.Module | None:
    """The model's first convolution (nn.Conv1d/2d/3d, transposed ones included) in `model.modules()` order."""
    from torch.nn.modules.conv import _ConvNd

    return next((m for m in model.modules() if isinstance(m, _ConvNd)), None)


def input_channels(model: nn.Module) -> int | None:
    """C_in of the model's first convolution; None without one (or a lazy one not yet built)."""
    conv = first_convolution(model)
    channels = getattr(conv, "in_channels", 0)
    return int(channels) if channels else None


def channel_of(channel: Any, classes: int | None, *, required: bool = True) -> int:
    """The explained class: `channel` checked against the model's `classes` output channels (None:
    unknown, an empty batch); `channel` None is 0 for one output channel and refused for several
    (unless not `required`: a callable target picks its own class)."""
    if channel is None:
        if required and classes is not None and classes > 1:
            raise TumorcamError(f"channel: the model has {classes} output channels (classes); choose the one to "
                                f"explain, 0..{classes - 1}", param="channel")
        return 0
    if isinstance(channel, bool) or not isinstance(channel, (int, np.integer)):
        raise TumorcamError(f"channel: expected an integer class index, got {channel!r}", param="channel")
    channel = int(channel)
    if classes is not None and not 0 <= channel < classes:
        raise TumorcamError(f"channel: the model has {classes} output channel(s) (0..{classes - 1}), got {channel}",
                            param="channel")
    return channel


def check_model(model: nn.Module, images: torch.Tensor, *, output: Output = None, channel: Any = None,
                required: bool = True) -> int:
    """The checks that need the model, from one forward of the first image (eval mode, no gradients):
    the refusals of channel count and spatial size when the model fails on the images, the
    probability warning, and the explained class (`channel_of`, with `required`), which is returned.
    The forward runs once per model and kind of input (per-image shape, dtype, device, `output`):
    a model explained batch after batch, or method after method, is checked on its first call only.

    Call `check_images` first."""
    if len(images) == 0:
        return channel_of(channel, None, required=required)
    key = (tuple(images.shape[1:]), images.dtype, images.device.type,
           output if isinstance(output, (int, str, type(None))) else id(output))
    classes = _CHECKED.setdefault(model, {}).get(key)
    if classes is None:
        logits_of = Logits(model, output)
        with explaining(model), torch.no_grad():
            try:
                logits = logits_of(images[:1])
            except TumorcamError:
                raise
            except Exception as exc:
                refusal = _failure(model, logits_of, images, exc)
                if refusal is None:
                    raise
                raise refusal from exc
        _warn_probabilities(model, logits)
        classes = _CHECKED[model][key] = int(logits.shape[1])
    return channel_of(channel, classes, required=required)


def _failure(model: nn.Module, logits_of: nn.Module, images: torch.Tensor, exc: Exception) -> TumorcamError | None:
    """The refusal that explains the model's failure on `images`: their channel count, or their
    spatial size; None when it is neither."""
    expected, given = input_channels(model), int(images.shape[1])
    if expected is not None and given != expected:
        return TumorcamError(f"images: images has {given} channel{'s' if given != 1 else ''}; the model's first "
                             f"convolution takes {expected}")
    if not isinstance(exc, RuntimeError) or not _SIZE_ERROR.search(str(exc)):
        return None
    spatial = tuple(int(s) for s in images.shape[2:])
    stride = getattr(getattr(model, "encoder", None), "output_stride", None)
    if isinstance(stride, int) and stride > 1 and any(s % stride for s in spatial):
        divisor, who = stride, "encoder"
    else:
        divisor, who = smallest_multiple(logits_of, images), "model"
    if divisor is None:
        line = (str(exc).strip().splitlines() or [""])[0]
        return TumorcamError(f"images: the model fails on spatial size {spatial} ({line}); pad or resize the "
                             "images to a size it takes")
    return TumorcamError(f"images: spatial size {spatial} is not divisible by {divisor}, which the {who} needs; "
                         f"pad or resize (e.g. to {padded_shape(spatial, divisor)})")


def padded_shape(shape: Any, multiple: int) -> tuple[int, ...]:
    """Each axis of `shape` rounded up to a multiple of `multiple`."""
    return tuple(multiple * math.ceil(int(n) / multiple) for n in shape)


def smallest_multiple(logits_of: nn.Module, images: torch.Tensor) -> int | None:
    """The smallest power of two d (`DIVISORS`) such that `logits_of` takes zeros of the images' size
    padded up to multiples of d and returns logits on that padded grid; None when none does."""
    spatial = tuple(images.shape[2:])
    for d in DIVISORS:
        padded = padded_shape(spatial, d)
        if padded == spatial:
            continue  # this size failed already
        try:
            logits = logits_of(images.new_zeros((1, images.shape[1], *padded)))
        except Exception:  # noqa: BLE001 - any failure: not this divisor
            continue
        if tuple(logits.shape[2:]) == padded:
            return d
    return None


def _warn_probabilities(model: nn.Module, logits: torch.Tensor) -> None:
    """Warn when the logits look like probabilities: the model's last module is a Sigmoid or a Softmax,
    or every value of this forward lies in [0, 1]."""
    last = None
    for last in model.modules():
        pass
    if isinstance(last, PROBABILITY_MODULES):
        warn(f"output: the model's outputs look like probabilities (its last module is a {type(last).__name__}); "
             "tumorcam expects logits")
    elif logits.numel() and bool(logits.min() >= 0) and bool(logits.max() <= 1):
        warn("output: the model's outputs look like probabilities (all in [0, 1]); tumorcam expects logits")


def flat_maps(maps: torch.Tensor) -> torch.Tensor:
    """Per map of (B, *spatial), True where every pixel is equal (an all-zero map included)."""
    if maps.numel() == 0:
        return torch.zeros(len(maps), dtype=torch.bool, device=maps.device)
    flat = maps.flatten(1)
    return flat.amax(dim=1) == flat.amin(dim=1)


def count_flat(maps: Any) -> int:
    """How many of the maps (N, *spatial) (a tensor or an array) are flat (`flat_maps`)."""
    return int(flat_maps(torch.as_tensor(maps)).sum())


def warn_flat_maps(maps: torch.Tensor, method: str, layer: str) -> None:
    """Warn `maps: N of B <method> maps at layer <layer> are flat (all equal)` when some are."""
    flat = int(flat_maps(maps).sum())
    if flat:
        where = "" if layer == "input" else f" at layer {layer}"
        warn(f"maps: {flat} of {len(maps)} {method} maps{where} are flat (all equal)")


def warn_layer_fallback(tried: list[str], used: str) -> None:
    """Warn that `layer=None`'s choice (and the blocks after it in `tried`) gave flat maps and `used` is explained."""
    warn(f"layer=None: {', '.join(tried)} gave flat Grad-CAM maps; using {used}")


def warn_empty_regions(empty: int, total: int) -> None:
    """Warn that `empty` of `total` images have no predicted pixel of the scored class (NaN curves)."""
    if empty:
        warn(f"images: {empty} of {total} images have an empty predicted region: their deletion/insertion AUCs "
             "are NaN and they leave the statistics")


def intensity_statistic(images: np.ndarray) -> np.ndarray:
    """Per image of (N, *spatial) in [0, 1], the 99th percentile of its intensities: the top of its range
    that a few hot pixels do not set (after the run's preparation, x / max(x), the maximum is always 1)."""
    flat = np.asarray(images, dtype=np.float32).reshape(len(images), -1)
    return np.percentile(flat, 99, axis=1)


def warn_intensity(image: np.ndarray, training: np.ndarray, source: str) -> None:
    """Warn when `image` (a prepared slice) lies far from the prepared training slices `training` (N, *spatial).

    Rule: s = `intensity_statistic`; with lo, hi the least and greatest s of the training slices,
    warn when the image's s lies outside [lo - m, hi + m], m = max(0.5 (hi - lo), 0.25)
    (`INTENSITY_MARGIN`, `INTENSITY_FLOOR`): half the training range beyond either end, and at least
    a quarter of the unit range, so that a narrow training set does not flag every other slice.
    `source` names the image (its path).
    """
    if len(training) == 0:
        return
    value = float(intensity_statistic(np.asarray(image)[None])[0])
    stats = intensity_statistic(training)
    low, high = float(stats.min()), float(stats.max())
    margin = max(INTENSITY_MARGIN * (high - low), INTENSITY_FLOOR)
    if not low - margin <= value <= high + margin:
        warn(f"{source}: its intensities after preparation lie far from the training data's (99th percentile "
             f"{value:.2f}; the run's prepared training slices: {low:.2f} to {high:.2f}); the model has not "
             "seen images like it, so its prediction and map may mean little")
