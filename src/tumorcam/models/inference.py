"""Batched inference for validation and evaluation: logits of (N,1,S,S) images, on one device.

`score`: the Dice and IoU of those masks with the ground truth (`tumorcam.evaluate.metrics.dice_iou`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tumorcam.device import autocast
from tumorcam.evaluate.metrics import dice_iou


@torch.no_grad()
def predict_masks(model: nn.Module, images: torch.Tensor, batch_size: int, device: torch.device,
                  amp: bool = True, out_size: int | None = None) -> torch.Tensor:
    """Binary masks (N,1,S',S') bool (logit > 0, i.e. sigmoid > 0.5) of float images in [0, 1].

    `images` may live anywhere; each batch goes to `device`. With `out_size`, logits are resized
    bilinearly to it before thresholding (evaluation at the prepared resolution).
    """
    was_training = model.training
    model.eval()
    preds = []
    for start in range(0, images.shape[0], batch_size):
        x = images[start:start + batch_size].to(device, non_blocking=True).float()
        with autocast(device, amp):
            logits = model(x)
        logits = logits.float()
        if out_size is not None and out_size != logits.shape[-1]:
            logits = F.interpolate(logits, size=(out_size, out_size), mode="bilinear", align_corners=False)
        preds.append(logits > 0)
    model.train(was_training)
    return torch.cat(preds)


def score(model: nn.Module, images: torch.Tensor, masks: torch.Tensor, batch_size: int,
          device: torch.device, amp: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-slice Dice and IoU (CPU float32 tensors) of the model's masks against `masks`;
    predictions are made at the images' size and compared at the masks' size."""
    pred = predict_masks(model, images, batch_size, device, amp, out_size=masks.shape[-1])
    dice, iou = dice_iou(pred, masks.to(pred.device))
    return dice.cpu(), iou.cpu()
