"""Segmentation metrics of a trained run: `evaluate_segmentation(run, data=None, split="test")`.

The model sees each slice at its training size; its logits are resized bilinearly to the
prepared folder's size and thresholded at 0 (sigmoid 0.5), and Dice/IoU are computed there
against the prepared masks (`tumorcam.evaluate.metrics`). Writes `RUN/metrics.json`:

    {"split", "data", "checkpoint", "size", "input_size", "threshold", "empty_mask_convention",
     "overall": {"n", "dice": CI, "iou": CI},
     "per_class": {"meningioma"|"glioma"|"pituitary": {"n", "dice": CI, "iou": CI}},
     "per_patient": {"summary": {"n", "dice": CI, "iou": CI},
                     "patients": [{"pid", "label", "n", "dice", "iou"}]},
     "per_slice": [{"file_id", "pid", "label", "dice", "iou"}]}

where CI = {"mean", "ci_low", "ci_high", "n"} (95% percentile bootstrap of the mean).

With the run's own data (`data=None`) it also writes `RUN/figures_data/examples.npz`, the predicted
masks of Figure 5's example slices (`tumorcam.runfolder.examples`), so that the report never runs
the network.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tumorcam.errors import TumorcamError
from tumorcam.data.arrays import CHUNK, PreparedData
from tumorcam.io import write_json
from tumorcam.runfolder.examples import N_EXAMPLES, example_rows, save_examples
from tumorcam.evaluate.metrics import EMPTY_MASK_CONVENTION, summarize
from tumorcam.models.unet import CHECKPOINTS
from tumorcam.runfolder.folder import Run, as_run
from tumorcam.models.inference import predict_masks, score


def evaluate_segmentation(run: str | Path | Run, data: str | Path | None = None, split: str = "test", *,
                          checkpoint: str = "last", device: str | torch.device | None = None) -> dict[str, Any]:
    """Dice and IoU of the run's model on `split` of `data` (default: the folder it trained on).

    `checkpoint`: `last` (unet_trained.pth) or `best` (unet_best.pth); `device` defaults to the run's
    (config.train.device). Writes and returns the metrics.json document (module docstring).
    """
    if checkpoint not in CHECKPOINTS:
        raise TumorcamError(f"checkpoint: unknown checkpoint {checkpoint!r} (choose last or best)", param="checkpoint")
    run = as_run(run, device)
    model, config, device = run.model(checkpoint), run.config, run.device
    prepared = run.prepared(data)
    rows = run.split(split, data)

    size, tc = config.train.size, config.train
    dice, iou = [], []
    for start in range(0, len(rows), CHUNK):
        images, masks = prepared.tensors(rows[start:start + CHUNK])
        images = images.to(device)
        if size != images.shape[-1]:
            images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False).clamp_(0, 1)
        d, i = score(model, images, masks.to(device), tc.eval_batch_size, device, tc.amp)
        dice.append(d)
        iou.append(i)
    dice_np, iou_np = torch.cat(dice).numpy(), torch.cat(iou).numpy()
    labels, pids = np.asarray(prepared.labels[rows]), np.asarray(prepared.pids[rows]).astype(str)
    file_ids = np.asarray(prepared.file_ids[rows])

    doc: dict[str, Any] = {
        "split": split,
        "data": str(prepared.root),
        "checkpoint": CHECKPOINTS[checkpoint],
        "size": prepared.size,
        "input_size": size,
        "threshold": 0.5,
        "empty_mask_convention": EMPTY_MASK_CONVENTION,
    }
    doc.update(summarize(dice_np, iou_np, labels, pids, n_resamples=config.evaluate.bootstrap,
                         seed=config.evaluate.seed))
    doc["per_slice"] = [{"file_id": int(f), "pid": str(p), "label": int(lab), "dice": float(d), "iou": float(i)}
                        for f, p, lab, d, i in zip(file_ids, pids, labels, dice_np, iou_np)]
    write_json(run.path / "metrics.json", doc)
    if data is None:
        write_examples(run.path, model, prepared, size, device, CHECKPOINTS[checkpoint])
    return doc


def write_examples(run: str | Path, model: nn.Module, prepared: PreparedData, size: int, device: torch.device,
                   checkpoint: str) -> Path:
    """Predict Figure 5's example slices (`example_rows`) at the training size `size`, without
    autocast, and save them to RUN/figures_data/examples.npz (`tumorcam.runfolder.examples`)."""
    rows = example_rows(prepared, N_EXAMPLES)
    if len(rows) == 0:
        raise TumorcamError(f"{prepared.root}: no slice to show in Figure 5")
    images, _ = prepared.tensors(rows, size)
    predicted = predict_masks(model, images, len(rows), device, amp=False).cpu()
    return save_examples(run, prepared.file_ids[rows], predicted[:, 0].numpy(), size, checkpoint)
