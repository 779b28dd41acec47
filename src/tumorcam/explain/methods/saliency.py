"""Vanilla gradient saliency (Simonyan et al. 2014) through Captum `Saliency`: max_c |ds/dx_c|.

The maximum over the input channels c is Simonyan et al.'s rule for colour images; a one-channel
image keeps |ds/dx|.
"""

from __future__ import annotations

import torch
from captum.attr import Saliency as CaptumSaliency
from torch import nn

from tumorcam.explain.methods.base import Method, Options, ScalarOutput


class Saliency(Method):
    name = "saliency"
    uses_layer = False
    rectify = "abs"

    def attribute(self, scalar: ScalarOutput, images: torch.Tensor, layer: nn.Module | None,
                  options: Options) -> torch.Tensor:
        inputs = images.detach().requires_grad_()  # leave the caller's tensor as it was
        gradients = CaptumSaliency(scalar).attribute(inputs, abs=True).float()
        return gradients.amax(dim=1, keepdim=True)
