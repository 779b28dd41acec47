"""The random baseline: uniform noise per pixel from a seeded generator (one seed, or one per image)."""

from __future__ import annotations

import torch
from torch import nn

from tumorcam.explain.methods.base import Method, Options, ScalarOutput


class RandomMap(Method):
    name = "random"
    uses_layer = False
    rectify = "none"

    def attribute(self, scalar: ScalarOutput, images: torch.Tensor, layer: nn.Module | None,
                  options: Options) -> torch.Tensor:
        b, _, h, w = images.shape
        if isinstance(options.seed, int):
            maps = torch.rand((b, 1, h, w), generator=torch.Generator().manual_seed(options.seed))
        else:
            if len(options.seed) != b:
                raise ValueError(f"random: {len(options.seed)} seeds for {b} images")
            maps = torch.stack([torch.rand((1, h, w), generator=torch.Generator().manual_seed(int(s)))
                                for s in options.seed])
        return maps.to(images.device)
