"""One optimisation step, the same code on CPU and GPU: augment, forward (bf16 autocast on
CUDA), loss in fp32, backward, optimiser step. The loss comes back as a tensor on the device,
so a loop that does not print it never waits for the GPU."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from tumorcam.training.augment import augment
from tumorcam.device import autocast


def make_optimizer(model: nn.Module, lr: float, device: torch.device) -> torch.optim.Adam:
    """Adam; the fused kernel on CUDA."""
    return torch.optim.Adam(model.parameters(), lr=lr, fused=device.type == "cuda" or None)


class TrainStep:
    """Callable (images, masks) -> detached loss, for (B,1,S,S) float32 batches on `device`."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], device: torch.device,
                 *, amp: bool = True, channels_last: bool = True, augment: bool = False,
                 generator: torch.Generator | None = None) -> None:
        self.model, self.optimizer, self.loss_fn, self.device = model, optimizer, loss_fn, device
        self.amp = amp
        self.channels_last = channels_last and device.type == "cuda"
        self.augment = augment
        self.generator = generator

    def __call__(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        if self.augment:
            images, masks = augment(images, masks, self.generator)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.amp):
            logits = self.model(images)
        loss = self.loss_fn(logits.float(), masks)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()
