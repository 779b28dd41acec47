"""Grad-CAM++ (Chattopadhyay et al. 2018), on the hook path (Captum has no Grad-CAM++).

alpha_kij = g^2 / (2 g^2 + sum_ab A_kab * g^3 + eps), g = ds/dA_k(ij) (0 where g = 0);
w_k = sum_ij alpha_kij * ReLU(g); L = ReLU(sum_k w_k A_k), sums over every spatial dim (2D or 3D). The closed form assumes exp(s),
as pytorch-grad-cam's GradCAMPlusPlus does (eps = 1e-6 likewise).
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

EPS = 1e-6


class GradCAMPlusPlus(Method):
    name = "gradcam++"

    def attribute(self, scalar: ScalarOutput, images: torch.Tensor, layer: nn.Module | None,
                  options: Options) -> torch.Tensor:
        activations, grads = layer_activations_and_gradients(scalar, images, layer)
        spatial = tuple(range(2, activations.dim()))
        grads2 = grads.pow(2)
        sum_activations = activations.sum(dim=spatial, keepdim=True)
        alpha = grads2 / (2 * grads2 + sum_activations * grads2 * grads + EPS)
        alpha = torch.where(grads != 0, alpha, torch.zeros_like(alpha))
        weights = (alpha * grads.clamp_min(0)).sum(dim=spatial, keepdim=True)
        return (weights * activations).sum(dim=1, keepdim=True)
