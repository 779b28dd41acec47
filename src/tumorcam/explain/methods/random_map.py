"""The random baseline: uniform noise per pixel from a seeded generator (one seed or generator for the
batch, or one seed per image); a control."""

from __future__ import annotations

import torch
from torch import nn

from tumorcam.errors import TumorcamError
from tumorcam.explain.methods.base import Method, Options, ScalarOutput


class RandomMap(Method):
    name = "random"
    uses_layer = False
    rectify = "none"
    control = True

    def attribute(self, scalar: ScalarOutput, images: torch.Tensor, layer: nn.Module | None,
                  options: Options) -> torch.Tensor:
        b, spatial = images.shape[0], tuple(images.shape[2:])
        seed = options.seed
        if isinstance(seed, (int, torch.Generator)):
            generator = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(seed)
            maps = torch.rand((b, 1, *spatial), generator=generator)
        else:
            if len(seed) != b:
                raise TumorcamError(f"seed: {len(seed)} seeds for {b} images")
            maps = torch.stack([torch.rand((1, *spatial), generator=torch.Generator().manual_seed(int(s)))
                                for s in seed])
        return maps.to(images.device)
