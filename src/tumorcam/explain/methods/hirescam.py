"""HiResCAM (Draelos & Carin 2020) through Captum `LayerGradientXActivation`.

L = ReLU(sum_k g_k ⊙ A_k): the element-wise gradient times activation, not its spatial mean, so
the map is faithful to the layer's contribution (for mean-logits behind a linear head it is exact).
"""

from __future__ import annotations

import torch
from captum.attr import LayerGradientXActivation
from torch import nn

from tumorcam.explain.methods.base import Method, Options, ScalarOutput


class HiResCAM(Method):
    name = "hirescam"

    def attribute(self, scalar: ScalarOutput, images: torch.Tensor, layer: nn.Module | None,
                  options: Options) -> torch.Tensor:
        attributions = LayerGradientXActivation(scalar, layer).attribute(images)
        return attributions.float().sum(dim=1, keepdim=True)
