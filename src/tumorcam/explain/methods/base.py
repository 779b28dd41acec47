"""The common base of every method: a model made to return one scalar per image, and one pass.

`ScalarOutput` wraps the segmentation model so that it returns s_b = sum_ij w_bij * z_bij (B,),
which is what Captum attributes. Every method turns a batch of B slices into raw maps
(B,1,h,w) with one forward and one backward (integrated gradients: one per path step), and
declares how its raw map is rectified (maps.rectify).

`layer_activations_and_gradients` is the hook path for the CAMs that Captum lacks (Grad-CAM++,
LayerCAM): one forward with a hook on the layer, one backward of sum_b s_b. It does what Captum's
`compute_layer_gradients_and_eval` does, with public PyTorch API only.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from tumorcam.errors import TumorcamError
from tumorcam.explain.targets import Target, target_scores


class ScalarOutput(nn.Module):
    """model -> (B,) scores of a target. `weights`, when given, fix the target's pixel weights
    (integrated gradients fixes them from the unperturbed image); else they come from the
    detached logits of this forward and the ground-truth `masks`."""

    def __init__(self, model: nn.Module, target: Target, masks: torch.Tensor | None = None) -> None:
        super().__init__()
        self.model = model
        self.target = target
        self.masks = masks

    def forward(self, x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        logits = self.model(x)
        if weights is None:
            weights = self.target.weights(logits.detach(), self.masks)
        return target_scores(logits, weights)

    def fixed_weights(self, x: torch.Tensor) -> torch.Tensor:
        """The target's pixel weights for `x`, from one forward without gradients."""
        with torch.no_grad():
            logits = self.model(x)
        return self.target.weights(logits, self.masks)


@dataclass(frozen=True)
class Options:
    """Method settings: integrated-gradients path steps; random-map seed (one for the batch, or one per image)."""

    ig_steps: int = 32
    seed: int | Sequence[int] = 0


class Method(ABC):
    """One explanation method: raw maps (B,1,h,w) of a batch, and how to rectify them."""

    name: ClassVar[str]
    uses_layer: ClassVar[bool] = True
    rectify: ClassVar[str] = "relu"

    @abstractmethod
    def attribute(self, scalar: ScalarOutput, images: torch.Tensor, layer: nn.Module | None,
                  options: Options) -> torch.Tensor:
        """Raw maps (B,1,h,w) for `images` (B,1,H,W)."""


def layer_activations_and_gradients(scalar: ScalarOutput, images: torch.Tensor,
                                    layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Activations A (B,C,h,w) of `layer` and ds_b/dA_b, from one forward and one backward of sum_b s_b."""
    saved: dict[str, torch.Tensor] = {}

    def keep_output(module: nn.Module, inputs: object, output: object) -> torch.Tensor:
        if not isinstance(output, torch.Tensor):
            raise TumorcamError(f"--layers: layer {type(module).__name__} returns {type(output).__name__}, not one tensor")
        if not output.requires_grad:
            output.requires_grad_()  # a leaf: nothing before the layer needs gradients
        saved["activations"] = output
        return output.clone()  # later in-place ops must not touch the saved activations

    handle = layer.register_forward_hook(keep_output)
    try:
        scores = scalar(images)
    finally:
        handle.remove()
    if "activations" not in saved:
        raise TumorcamError(f"--layers: layer {type(layer).__name__} is not used in the forward pass")
    activations = saved["activations"]
    (gradients,) = torch.autograd.grad(scores.sum(), activations)
    return activations.detach().float(), gradients.float()
