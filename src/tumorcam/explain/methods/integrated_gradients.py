"""Integrated Gradients (Sundararajan et al. 2017) through Captum `IntegratedGradients`.

IG(x) = x * mean over alpha in (0, 1] of ds/dx(alpha x), baseline black (0, where the deletion game
puts removed pixels), Gauss-Legendre with `ig_steps` points, summed over the input channels; the
map is its positive part. The target's pixel weights are fixed from the unperturbed image (one
extra forward), and each path point is one batched forward and backward of the B images
(internal_batch_size = B).
"""

from __future__ import annotations

import torch
from captum.attr import IntegratedGradients as CaptumIntegratedGradients
from torch import nn

from tumorcam.errors import TumorcamError
from tumorcam.explain.methods.base import Method, Options, ScalarOutput


class IntegratedGradients(Method):
    name = "integrated-gradients"
    uses_layer = False

    def attribute(self, scalar: ScalarOutput, images: torch.Tensor, layer: nn.Module | None,
                  options: Options) -> torch.Tensor:
        if options.ig_steps < 1:
            raise TumorcamError(f"ig_steps: must be >= 1, got {options.ig_steps}")
        weights = scalar.fixed_weights(images)
        ig = CaptumIntegratedGradients(scalar)
        attributions = ig.attribute(images, baselines=0.0, additional_forward_args=(weights,),
                                    n_steps=options.ig_steps, internal_batch_size=images.shape[0])
        return attributions.float().sum(dim=1, keepdim=True)
