"""`LabelOutput`: an nnU-Net model's output for one label, as tumorcam's checks read it.

A class-based nnU-Net model's logits (B, K, *spatial) are read with a softmax, its label at one
channel: tumorcam's rule for C > 1. A region-based model (BraTS's whole tumour, tumour core, ...)
has one sigmoid channel per region, which tumorcam would read with a softmax: `LabelOutput` keeps
that region's channel alone, so tumorcam reads it with a sigmoid. Pass it, with its `channel`, to
`tumorcam.explain`, `faithfulness`, `localization`, `sanity` and `channels`:

    scored = LabelOutput(tumorcam.nnunet.load(folder), "whole tumour")
    maps = tumorcam.explain(scored, volumes, channel=scored.channel)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tumorcam.errors import TumorcamError


class LabelOutput(nn.Module):
    """An `NnunetModel`'s logits for one label: the region's channel alone (sigmoid) for a region-based
    model, every class (softmax, the label at `channel`) for a class-based one."""

    def __init__(self, model: nn.Module, label: str) -> None:
        super().__init__()
        self.model = model
        self.regions = bool(model.label_manager.has_regions)
        self.label_channel = model.channel(label)
        self.channel = 0 if self.regions else self.label_channel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, 1 or K, *spatial) of preprocessed volumes (B, C, *spatial)."""
        return self.pick(self.model(x))

    def pick(self, logits: torch.Tensor) -> torch.Tensor:
        """The label's part of the model's logits (B, K, *spatial)."""
        return logits[:, self.label_channel:self.label_channel + 1] if self.regions else logits

    def explain_tiles(self, images: torch.Tensor, **options: Any) -> tuple[torch.Tensor, str]:
        """The model's `explain_tiles` for this output (what `tumorcam.explain` runs for every non-control method)."""
        return self.model.explain_tiles(images, head=self.pick, **options)

    def tile_layer(self) -> str:
        """The model's default layer (`NnunetModel.tile_layer`)."""
        return self.model.tile_layer()

    def cascade_stages(self) -> list[str]:
        """The model's sanity cascade (`NnunetModel.cascade_stages`), under `model.`."""
        return [f"model.{stage}" for stage in self.model.cascade_stages()]


def first_label(model: nn.Module) -> str:
    """The first label of dataset.json that the model predicts (background and ignore left out)."""
    for name in model.dataset_json["labels"]:
        if name not in ("background", "ignore"):
            return name
    raise TumorcamError("label: dataset.json of the model has no foreground label", param="label")
