"""LayerCAM (Jiang et al. 2021), on the hook path (Captum has no LayerCAM).

L = ReLU(sum_k ReLU(g_k) ⊙ A_k): positive gradients weight each location separately, which keeps
fine detail at shallow layers.
"""

from __future__ import annotations

import torch
from torch import nn

from tumorcam.explain.methods.base import (
    Method,
    Options,
    ScalarOutput,
    layer_activations_and_gradients,
)


class LayerCAM(Method):
    name = "layercam"

    def attribute(self, scalar: ScalarOutput, images: torch.Tensor, layer: nn.Module | None,
                  options: Options) -> torch.Tensor:
        activations, grads = layer_activations_and_gradients(scalar, images, layer)
        return (grads.clamp_min(0) * activations).sum(dim=1, keepdim=True)
