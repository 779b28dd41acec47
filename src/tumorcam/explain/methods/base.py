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

import contextlib
import difflib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from tumorcam.errors import TumorcamError
from tumorcam.explain.targets import TargetFn, check_channel, target_scores

Output = int | str | Callable[[Any], torch.Tensor] | None


def select_output(out: Any, output: Output) -> torch.Tensor:
    """The logits tensor in a model's output: the output itself (`output` None), `out[output]` (an index
    of a tuple or list, a key of a dict) or `output(out)` (a callable)."""
    if callable(output):
        picked = output(out)
    elif output is None:
        picked = out
        if isinstance(out, Mapping):
            raise TumorcamError(f"output: the model returns a dict with keys {', '.join(map(str, out))}; "
                                "choose the logits with output=KEY")
        if isinstance(out, (tuple, list)):
            raise TumorcamError(f"output: the model returns a {type(out).__name__} of {len(out)}; "
                                "choose the logits with output=INDEX")
    elif isinstance(out, Mapping):
        if output not in out:
            nearest = difflib.get_close_matches(str(output), [str(k) for k in out], n=1, cutoff=0.5)
            hint = f" (did you mean {nearest[0]}?)" if nearest else ""
            raise TumorcamError(f"output: the model's dict has no key {output!r}{hint}; keys: "
                                f"{', '.join(map(str, out))}")
        picked = out[output]
    elif isinstance(out, (tuple, list)) and isinstance(output, int):
        if not -len(out) <= output < len(out):
            raise TumorcamError(f"output: index {output} is out of range for the model's {type(out).__name__} "
                                f"of {len(out)}")
        picked = out[output]
    else:
        raise TumorcamError(f"output: cannot pick {output!r} from the model's {type(out).__name__} output")
    if not isinstance(picked, torch.Tensor):
        raise TumorcamError(f"output: the logits must be a tensor (B, C, *spatial), got {type(picked).__name__}")
    return picked


@contextlib.contextmanager
def explaining(model: nn.Module) -> Iterator[None]:
    """Eval mode, parameters frozen (only the layer and what follows it are recorded for backward);
    afterwards every module gets its own mode back and every parameter its own flag."""
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        for m, mode in modes:
            m.training = mode


class Logits(nn.Module):
    """The model with its logits picked: x (B, C_in, *spatial) -> z (B, C, *spatial)."""

    def __init__(self, model: nn.Module, output: Output = None) -> None:
        super().__init__()
        self.model = model
        self.output = output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = select_output(self.model(x), self.output)
        if logits.dim() != x.dim() or logits.shape[0] != x.shape[0]:
            raise TumorcamError(f"output: the logits must be (B, C, *spatial) like the images {tuple(x.shape)}, "
                                f"got {tuple(logits.shape)}")
        return logits


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
            raise TumorcamError(f"layer: {type(module).__name__} returns {type(output).__name__}, not one tensor")
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
        raise TumorcamError(f"layer: {type(layer).__name__} is not used in the forward pass")
    activations = saved["activations"]
    (gradients,) = torch.autograd.grad(scores.sum(), activations)
    return activations.detach().float(), gradients.float()
