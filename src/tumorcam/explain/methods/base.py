"""The common base of every method: a model made to return one scalar per image, and one pass.

`Logits` picks the logits (B, C, *spatial) out of the model's output (a tensor, or through
`output` an item of a tuple, list or dict, or a callable's result). `ScalarOutput` wraps them so
that the model returns s_b = sum_cx w_bcx * z_bcx (B,), which is what Captum attributes. Every
method turns a batch of B images (B, C_in, *spatial) into raw maps (B, 1, *spatial') with one
forward and one backward (integrated gradients: one per path step), and declares how its raw map
is rectified (maps.rectify).

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
from tumorcam.explain.targets import TargetFn, check_channel, target_scores
from tumorcam.logits import Logits, Output, explaining, select_output  # noqa: F401 - where methods import them from


class ScalarOutput(nn.Module):
    """model -> (B,) scores of a target. `model` is the `Logits` of the wrapped model; `channel` the
    explained class. `weights`, when given to `forward`, fix the target's pixel weights (integrated
    gradients fixes them from the unperturbed image); else they come from the detached logits of
    this forward and the ground-truth `masks`."""

    def __init__(self, model: nn.Module, target: TargetFn, masks: torch.Tensor | None = None, *,
                 output: Output = None, channel: int = 0) -> None:
        super().__init__()
        self.model = Logits(model, output)
        self.target = target
        self.masks = masks
        self.channel = channel

    def forward(self, x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        logits = self.model(x)
        if weights is None:
            weights = self.target(logits.detach(), self.masks)
        return target_scores(logits, weights)

    def fixed_weights(self, x: torch.Tensor) -> torch.Tensor:
        """The target's pixel weights for `x`, from one forward without gradients."""
        with torch.no_grad():
            logits = self.model(x)
        return self.target(logits, self.masks)

    def probability(self, x: torch.Tensor) -> torch.Tensor:
        """P(class `channel`) (B, 1, *spatial) without gradients: sigmoid(z) for one output channel,
        softmax(z)[channel] for C > 1."""
        with torch.no_grad():
            logits = self.model(x).float()
        check_channel(logits, self.channel)
        if logits.shape[1] == 1:
            return torch.sigmoid(logits)
        return torch.softmax(logits, dim=1)[:, self.channel:self.channel + 1]


@dataclass(frozen=True)
class Options:
    """Method settings: integrated-gradients path steps; random-map seed (one for the batch, one per image,
    or a generator that the batches of one call draw from in turn)."""

    ig_steps: int = 32
    seed: int | Sequence[int] | torch.Generator = 0


class Method(ABC):
    """One explanation method: raw maps (B, 1, *spatial') of a batch, and how to rectify them."""

    name: ClassVar[str]
    uses_layer: ClassVar[bool] = True
    rectify: ClassVar[str] = "relu"
    reads_channel: ClassVar[bool] = False  # reads the class `channel` itself (not only through the target)
    control: ClassVar[bool] = False  # a control (random map, the model's own output), not an explanation

    @abstractmethod
    def attribute(self, scalar: ScalarOutput, images: torch.Tensor, layer: nn.Module | None,
                  options: Options) -> torch.Tensor:
        """Raw maps (B, 1, *spatial') for `images` (B, C_in, *spatial)."""


def layer_activations_and_gradients(scalar: ScalarOutput, images: torch.Tensor,
                                    layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Activations A (B, K, *spatial') of `layer` and ds_b/dA_b, from one forward and one backward of sum_b s_b."""
    saved: dict[str, torch.Tensor] = {}

    def keep_output(module: nn.Module, inputs: object, output: object) -> torch.Tensor:
        if not isinstance(output, torch.Tensor):
            raise TumorcamError(f"layer: {type(module).__name__} returns {type(output).__name__}, not one tensor",
                                param="layer")
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
        raise TumorcamError(f"layer: {type(layer).__name__} is not used in the forward pass", param="layer")
    activations = saved["activations"]
    (gradients,) = torch.autograd.grad(scores.sum(), activations)
    return activations.detach().float(), gradients.float()
