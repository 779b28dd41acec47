"""Explaining an nnU-Net model tile by tile, stitched as nnU-Net stitches its logits.

For each fold's network and each sliding-window tile, tumorcam's method (`tumorcam.explain`'s
engine: `Method.attribute` on a `ScalarOutput`, then rectify and upsample to the tile) explains the
target s = sum of z_c over the tile's voxels predicted as `label`: z_c > 0 (sigmoid > 0.5) for a
region-based model, argmax_k z_k = c (softmax) for a class-based one, as nnU-Net's label manager
reads its outputs. The raw tile maps and the tile logits are stitched with the same Gaussian
weights (`sliding.stitch`; with the model's `mirror`, each tile's logits and map are the mean over
its flips, flipped back); each fold's stitched map is then min-max normalised once for the whole
volume (normalising per tile would put seams at the tile borders) and the folds' maps and logits
are averaged. With the model's `one_pass`, the whole volume is the one tile (`NnunetModel.window`).

`explain_tiles` is the same for any tumorcam target callable and ground-truth masks (the masks
travel with the volume as one more channel, so each tile, mirrored or not, carries its part):
`tumorcam.explain` runs it for a layer method on an nnU-Net model, whose layers run once per tile
(a hook on the whole sliding-window forward would see only the last tile).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn

from tumorcam.errors import TumorcamError
from tumorcam.explain import get_method
from tumorcam.explain.layers import resolve_layer
from tumorcam.explain.maps import normalize, rectify, upsample
from tumorcam.explain.methods import Method, Options, ScalarOutput
from tumorcam.explain.targets import TargetFn
from tumorcam.logits import explaining


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
    volume = _checked_volume(model, volume)
    target = partial(predicted_region, channel=channel, regions=model.label_manager.has_regions)
    fold_maps, logits, name = stitched_explanation(model, volume, chosen, target, channel=channel, layer=layer,
                                                   options=Options(ig_steps=ig_steps, seed=seed))
    return NnunetExplanation(heatmap=fold_maps.mean(0).numpy(), fold_maps=fold_maps.numpy(), logits=logits,
                             label=label, channel=channel, layer=name)


def explain_tiles(model: nn.Module, images: torch.Tensor, *, method: str, target: TargetFn, layer: str | None,
                  channel: int, masks: torch.Tensor | None = None, ig_steps: int = 32, seed: Any = 0,
                  head: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[torch.Tensor, str]:
    """What `tumorcam.explain` runs for a layer method on an nnU-Net model: each volume of `images`
    (B, C, *spatial) explained tile by tile (`stitched_explanation`) for the tumorcam `target`
    callable on output `channel`, evaluated on each tile with the tile's part of `masks` (B, 1,
    *spatial); `head` maps a network's logits to the explained output (e.g. one region's channel).
    Returns the maps (B, *spatial) in [0, 1] (fold mean) and the layer's path in each network."""
    chosen = get_method(method)
    seeds = list(seed) if isinstance(seed, (list, tuple)) else [seed] * len(images)
    maps, name = [], "input"
    for index, volume in enumerate(images):
        mask = None if masks is None else torch.as_tensor(masks[index]).to(volume.device)
        fold_maps, _, name = stitched_explanation(
            model, _checked_volume(model, volume), chosen, target, channel=channel, layer=layer, masks=mask,
            head=head, options=Options(ig_steps=ig_steps, seed=seeds[index]))
        maps.append(fold_maps.mean(0))
    return torch.stack(maps).to(images.device), name


def stitched_explanation(model: nn.Module, volume: torch.Tensor, chosen: Method, target: TargetFn, *, channel: int,
                         layer: str | None, options: Options, masks: torch.Tensor | None = None,
                         head: Callable[[torch.Tensor], torch.Tensor] | None = None,
                         ) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Each fold's map of `volume` (C, *spatial), stitched over its tiles and normalised, (F, *spatial)
    on the CPU; the folds' mean stitched logits (K, *spatial); the layer's path. `masks` (1, *spatial)
    travels with the volume as one more channel, so that each tile (mirrored too) carries its part."""
    stacked = volume if masks is None else torch.cat([volume, masks.to(volume.dtype).reshape(1, *volume.shape[1:])])
    if chosen.uses_layer and layer is None:
        layer = model.tile_layer()
    fold_maps, fold_logits = [], []
    for network in model.networks:
        module = resolve_layer(network, layer) if chosen.uses_layer else None
        run = model.per_tile(partial(tile_explanation, network, chosen, target, module, channel=channel,
                                     options=options, with_masks=masks is not None, head=head))
        with explaining(network), torch.enable_grad():
            stitched = model.window(stacked, run)
        fold_logits.append(stitched[:-1])
        fold_maps.append(normalize(stitched[-1:])[0])
    return torch.stack(fold_maps).cpu(), torch.stack(fold_logits).mean(0).cpu(), layer if chosen.uses_layer else "input"


class _TileOutput(nn.Module):
    """A network's tile logits through `head`, keeping the network's own logits of the last call."""

    def __init__(self, network: nn.Module, head: Callable[[torch.Tensor], torch.Tensor] | None) -> None:
        super().__init__()
        self.network = network
        self.head = head
        self.logits: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.network(x)
        if self.logits is None:
            self.logits = logits.detach()
        return logits if self.head is None else self.head(logits)


def tile_explanation(network: nn.Module, chosen: Method, target: TargetFn, module: nn.Module | None,
                     tile: torch.Tensor, *, channel: int, options: Options, with_masks: bool = False,
                     head: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """One tile (1, C, *patch) -> (1, K + 1, *patch): its logits and, last, its raw map (rectified,
    upsampled to the patch, not normalised). `with_masks`: the tile's last channel is its mask."""
    tile, masks = (tile[:, :-1], tile[:, -1:]) if with_masks else (tile, None)
    output = _TileOutput(network, head)
    raw = chosen.attribute(ScalarOutput(output, target, masks, channel=channel), tile, module, options)
    heat = upsample(rectify(raw.detach().float(), chosen.rectify), tuple(tile.shape[2:]))
    if output.logits is None:  # a method that never ran the network (the random map)
        with torch.no_grad():
            output(tile)
    return torch.cat([output.logits.float(), heat[:, None]], dim=1)


def _checked_volume(model: nn.Module, volume: np.ndarray | torch.Tensor) -> torch.Tensor:
    """`volume` as float32 on the model's device, checked to be (C, *spatial) for the model's patch."""
    volume = torch.as_tensor(volume, dtype=torch.float32).to(next(model.parameters()).device)
    if volume.dim() not in (len(model.patch_size) + 1, 4):
        raise TumorcamError(f"volume: expected a preprocessed volume (C, *spatial), got shape {tuple(volume.shape)}",
                            param="volume")
    return volume
