"""Grad-CAM (Selvaraju et al. 2017) through Captum `LayerGradCam`, as the seed does.

L = ReLU(sum_k alpha_k A_k), alpha_k = mean_ij ds/dA_k(ij). Captum runs one forward with a hook on
the layer and one `autograd.grad` over the B scores, so a batch costs one forward and one backward.
"""

from __future__ import annotations

import torch
from captum.attr import LayerGradCam
from torch import nn

from tumorcam.explain.methods.base import Method, Options, ScalarOutput


class GradCAM(Method):
    name = "gradcam"

    def attribute(self, scalar: ScalarOutput, images: torch.Tensor, layer: nn.Module | None,
                  options: Options) -> torch.Tensor:
        return LayerGradCam(scalar, layer).attribute(images, relu_attributions=False).float()
