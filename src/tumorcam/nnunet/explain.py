"""Explaining an nnU-Net model tile by tile, stitched as nnU-Net stitches its logits.

For each fold's network and each sliding-window tile, tumorcam's method (`tumorcam.explain`'s
engine: `Method.attribute` on a `ScalarOutput`, then rectify and upsample to the tile) explains the
target s = sum of z_c over the tile's voxels predicted as `label`: z_c > 0 (sigmoid > 0.5) for a
region-based model, argmax_k z_k = c (softmax) for a class-based one, as nnU-Net's label manager
reads its outputs. The raw tile maps and the tile logits are stitched with the same Gaussian
weights (`sliding.stitch`; with the model's `mirror`, each tile's logits and map are the mean over
its flips, flipped back); each fold's stitched map is then min-max normalised once for the whole
volume (normalising per tile would put seams at the tile borders) and the folds' maps and logits
are averaged.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from torch import nn

from tumorcam.errors import TumorcamError
from tumorcam.explain import get_method
from tumorcam.explain.layers import default_layer, resolve_layer
from tumorcam.explain.maps import normalize, rectify, upsample
from tumorcam.explain.methods import Method, Options, ScalarOutput
from tumorcam.explain.targets import TargetFn
from tumorcam.logits import explaining
from tumorcam.nnunet.sliding import stitch



@dataclass(frozen=True)
class NnunetExplanation:
    """The explanation of one preprocessed volume.

    Attributes:
        heatmap: (*spatial) float32 in [0, 1] on the preprocessed grid, the mean of `fold_maps`.
        fold_maps: (F, *spatial) float32, each fold's stitched map normalised to [0, 1].
        logits: (K, *spatial) float32, the stitched logits averaged over the folds.
        label: the explained label's name; channel: its output channel.
        layer: the explained layer's module path in each fold's network (`input` for a layer-free method).
    """

    heatmap: np.ndarray
    fold_maps: np.ndarray
    logits: torch.Tensor
    label: str
    channel: int
    layer: str


def predicted_region(logits: torch.Tensor, masks: torch.Tensor | None, *, channel: int,
                     regions: bool) -> torch.Tensor:
    """Target weights: 1 on channel `channel` where it is predicted (z > 0 for a region, argmax for a
    class), 0 elsewhere; the tumorcam target callable `(logits, masks) -> weights`."""
    where = logits[:, channel] > 0 if regions else logits.argmax(dim=1) == channel
    weights = torch.zeros_like(logits)
    weights[:, channel] = where.to(logits.dtype)
    return weights


def explain_volume(model: nn.Module, volume: np.ndarray | torch.Tensor, label: str, *, method: str = "gradcam",
                   layer: str | None = None, ig_steps: int = 32, seed: int = 0) -> NnunetExplanation:
    """Explain `label` (a name of dataset.json's labels) in a preprocessed `volume` (C, *spatial), as
    `model.preprocess` returns it. `method`: a name of `tumorcam.METHODS`; `layer`: a module path in
    the network (None: tumorcam's default, the last convolution block before the head)."""
    chosen = get_method(method)
    channel = model.channel(label)
    volume = torch.as_tensor(volume, dtype=torch.float32).to(next(model.parameters()).device)
    spatial_dims = len(model.patch_size)
    if volume.dim() not in (spatial_dims + 1, 4):
        raise TumorcamError(f"volume: expected a preprocessed volume (C, *spatial), got shape {tuple(volume.shape)}",
                            param="volume")
    target = partial(predicted_region, channel=channel, regions=model.label_manager.has_regions)
    fold_maps, fold_logits, names = [], [], set()
    for network in model.networks:
        module, name = _layer(network, volume, model.patch_size, chosen, layer)
        names.add(name)
        run = model.per_tile(partial(tile_explanation, network, chosen, target, module, channel=channel,
                                     options=Options(ig_steps=ig_steps, seed=seed)))
        with explaining(network), torch.enable_grad():
            stitched = stitch(volume, model.patch_size, run, model.tile_step)
        fold_logits.append(stitched[:-1])
        fold_maps.append(normalize(stitched[-1:])[0])
    maps = torch.stack(fold_maps).cpu()
    return NnunetExplanation(heatmap=maps.mean(0).numpy(), fold_maps=maps.numpy(),
                             logits=torch.stack(fold_logits).mean(0).cpu(), label=label, channel=channel,
                             layer=names.pop())


def tile_explanation(network: nn.Module, chosen: Method, target: TargetFn, module: nn.Module | None,
                     tile: torch.Tensor, *, channel: int, options: Options) -> torch.Tensor:
    """One tile (1, C, *patch) -> (1, K + 1, *patch): its logits and, last, its raw map (rectified,
    upsampled to the patch, not normalised)."""
    seen: list[torch.Tensor] = []

    def recording(logits: torch.Tensor, masks: torch.Tensor | None) -> torch.Tensor:
        seen.append(logits)
        return target(logits, masks)

    raw = chosen.attribute(ScalarOutput(network, recording, channel=channel), tile, module, options)
    heat = upsample(rectify(raw.detach().float(), chosen.rectify), tuple(tile.shape[2:]))
    if not seen:  # a method that never ran the network (the random map)
        with torch.no_grad():
            seen.append(network(tile))
    return torch.cat([seen[0].detach().float(), heat[:, None]], dim=1)


def _layer(network: nn.Module, volume: torch.Tensor, patch_size: tuple[int, ...], chosen: Method,
           layer: str | None) -> tuple[nn.Module | None, str]:
    """The module explained in `network` and its path: `layer`, or tumorcam's default found on one tile."""
    if not chosen.uses_layer:
        return None, "input"
    if layer is None:
        example = torch.zeros((1, volume.shape[0], *patch_size), device=volume.device)
        with explaining(network):
            layer = default_layer(network, example)
    return resolve_layer(network, layer), layer
