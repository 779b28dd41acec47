"""Training losses on logits: the seed's BCEWithLogitsLoss, or Dice + BCE (smp's soft Dice)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from segmentation_models_pytorch.losses import DiceLoss
from torch import nn

from tumorcam.errors import TumorcamError

LOSSES = ("bce", "dice+bce")


def make_loss(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """`bce`: BCEWithLogits; `dice+bce`: BCEWithLogits + (1 - soft Dice over the batch)."""
    bce = nn.BCEWithLogitsLoss()
    if name == "bce":
        return bce
    if name == "dice+bce":
        dice = DiceLoss(mode="binary", from_logits=True)
        return lambda logits, target: bce(logits, target) + dice(logits, target)
    raise TumorcamError(f"train.loss: unknown loss {name!r} (choose {' or '.join(LOSSES)})", param="train.loss")
