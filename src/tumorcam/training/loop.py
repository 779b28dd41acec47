"""Fine-tune the U-Net on a prepared folder: `train(config, out, resume=False) -> dict`.

Every epoch: shuffled batches of the training split (held on the device, resized once),
optional augmentation on the device, bf16 autocast on CUDA, Adam (fused on CUDA); then Dice
and IoU on the patient-wise validation split at the training size. Files in the run folder
(rank 0 only, all atomic): `config.json`, `provenance.json`, `train_state.pth` (resume),
`unet_trained.pth` (last epoch), `unet_best.pth` (best validation Dice), `history.json`,
`history.csv`. The test split is not touched here (`tumorcam train` and a run's segmentation stage score it).
A non-finite epoch loss stops training with a clear message; the files of the last good
epoch stay as they were. The command for several GPUs is in `tumorcam.training.distributed`.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from tumorcam import __version__
from tumorcam.config import Config
from tumorcam.data.arrays import PreparedData, load_prepared
from tumorcam.errors import TumorcamError
from tumorcam.models.inference import score
from tumorcam.io import atomic_path, write_json, write_text
from tumorcam.models.unet import BEST_WEIGHTS_FILE, WEIGHTS_FILE, build_model, save_weights
from tumorcam.training import distributed
from tumorcam.training.data import DeviceSplit, epoch_batches, load_split, steps_per_epoch
from tumorcam.device import setup_backend
from tumorcam.training.losses import make_loss
from tumorcam.training.state import STATE_FILE, load_state, save_state, unwrap
from tumorcam.training.step import TrainStep, make_optimizer

HISTORY_FIELDS = ("epoch", "loss", "val_dice", "val_iou", "seconds", "img_per_s", "val_seconds", "lr")


def train(config: Config, out: str | Path, resume: bool = False) -> dict[str, Any]:
    """Train `config.model` on the prepared folder `config.data`, writing the run folder `out`.

    Args:
        config: the run's settings (model, data, train).
        out: the run folder.
        resume: continue from `out/train_state.pth` (model, optimiser, epoch) up to `config.train.epochs`.

    Returns:
        {"run", "epochs", "best_epoch", "best_val_dice", "history"}.

    Raises:
        TumorcamError: for no config.data, a train.size that is not a multiple of 32 (at least 32),
            train.epochs or train.batch_size < 1, a train.lr that is not positive, an unknown
            train.schedule, an empty train split, an `out` that already holds a training run (without
            `resume`), or a non-finite epoch loss.
    """
    out = Path(out)
    _check_config(config)
    info, device = distributed.start(config.train.device)
    try:
        return _train(config, out, resume, info, device)
    finally:
        distributed.stop(info)


def epoch_lr(lr: float, schedule: str, epoch: int, epochs: int) -> float:
    """Learning rate of `epoch` (1-based): constant, or cosine lr * (1 + cos(pi (epoch-1) / epochs)) / 2."""
    if schedule == "constant":
        return lr
    if schedule == "cosine":
        return lr * 0.5 * (1 + math.cos(math.pi * (epoch - 1) / epochs))
    raise TumorcamError(f"train.schedule: unknown schedule {schedule!r} (choose constant or cosine)")


def _check_config(config: Config) -> None:
    tc = config.train
    if not config.data:
        raise TumorcamError("data: no prepared folder given", param="data")
    if tc.size < 32 or tc.size % 32:
        raise TumorcamError(f"train.size {tc.size}: the U-Net needs a multiple of 32 (e.g. 96, 224, 256)",
                            param="train.size")
    if tc.epochs < 1:
        raise TumorcamError(f"train.epochs {tc.epochs}: must be at least 1", param="train.epochs")
    if tc.batch_size < 1 or tc.eval_batch_size < 1:
        raise TumorcamError(f"train.batch_size {tc.batch_size}: must be at least 1", param="train.batch_size")
    if not (tc.lr > 0):
        raise TumorcamError(f"train.lr {tc.lr}: must be positive", param="train.lr")
    make_loss(tc.loss)
    epoch_lr(tc.lr, tc.schedule, 1, tc.epochs)


def _train(config: Config, out: Path, resume: bool, info: distributed.Distributed,
           device: torch.device) -> dict[str, Any]:
    tc = config.train
    data = load_prepared(config.data)
    train_rows, val_rows = data.indices("train"), data.indices("val")
    if len(train_rows) == 0:
        raise TumorcamError(f"data {data.root}: the train split is empty (splits.json)", param="data")
    if not resume and ((out / STATE_FILE).exists() or (out / WEIGHTS_FILE).exists()):
        raise TumorcamError(f"out {out}: already holds a training run; resume it "
                            "or choose another folder", param="out")
    state = load_state(out / STATE_FILE) if resume else None
    if state is not None and state.epoch >= tc.epochs:
        raise TumorcamError(f"resume: {out} has already trained {state.epoch} epoch(s); "
                            f"give more than {state.epoch} epochs to continue", param="resume")

    setup_backend(device, tc.seed, tc.deterministic, tc.num_threads)
    model_cfg = config.model if state is None else dataclasses.replace(config.model, encoder_weights="none")
    model = build_model(model_cfg)
    if state is not None:
        _load_model_state(model, state.model, out / STATE_FILE)
    model.to(device)
    if tc.channels_last and device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, tc.lr, device)
    if state is not None:
        optimizer.load_state_dict(state.optimizer)
        _match_param_layout(optimizer)

    train_split = load_split(data, train_rows, tc.size, device)
    val_split = load_split(data, val_rows, tc.size, device) if len(val_rows) else None
    start_epoch = state.epoch if state else 0
    best_dice = state.best_val_dice if state else None
    best_epoch = state.best_epoch if state else None
    history = _read_history(out, start_epoch) if state else []
    provenance = _provenance(data, device, info)

    net = distributed.wrap(model, info, device)
    step_net = torch.compile(net) if tc.compile else net
    generator = torch.Generator(device=device)
    step = TrainStep(step_net, optimizer, make_loss(tc.loss), device, amp=tc.amp,
                     channels_last=tc.channels_last, augment=tc.augment, generator=generator)
    n_steps = steps_per_epoch(len(train_split), tc.batch_size, info.world_size)

    for epoch in range(start_epoch + 1, tc.epochs + 1):
        generator.manual_seed(tc.seed * 1_000_003 + epoch * 1_009 + info.rank)
        lr = epoch_lr(tc.lr, tc.schedule, epoch, tc.epochs)
        for group in optimizer.param_groups:
            group["lr"] = lr  # from the config given now, also over a resumed optimiser's saved value
        row = _run_epoch(step, train_split, epoch, n_steps, tc.batch_size, tc.seed, device, info,
                         desc=f"train epoch {epoch}/{tc.epochs}")
        if not math.isfinite(row["loss"]):
            last = (f"the last good checkpoint (epoch {epoch - 1}) is {out / WEIGHTS_FILE}" if epoch > 1
                    else "no checkpoint was written")
            raise TumorcamError(f"training stopped: the loss became {row['loss']} in epoch {epoch}; {last}; "
                                "lower the learning rate (or check the data) and resume")
        row.update(_validate(model, val_split, tc.eval_batch_size, device, tc.amp))
        row["lr"] = lr
        history.append(row)
        improved = row["val_dice"] is not None and (best_dice is None or row["val_dice"] > best_dice)
        if improved or val_split is None:
            best_dice, best_epoch = row["val_dice"], epoch
        if info.is_main:
            config.save(out / "config.json")  # with the first checkpoint of this session, not before
            write_json(out / "provenance.json", provenance)
            save_state(out / STATE_FILE, model, optimizer, epoch, best_dice, best_epoch)
            save_weights(model, out / WEIGHTS_FILE)
            if improved or val_split is None:
                _publish_copy(out / WEIGHTS_FILE, out / BEST_WEIGHTS_FILE)
            _write_history(out, history, best_epoch, best_dice)
            tqdm.write(_epoch_line(row, tc.epochs), file=sys.stderr)

    return {"run": str(out), "epochs": tc.epochs, "best_epoch": best_epoch, "best_val_dice": best_dice,
            "history": history}


def _match_param_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give each loaded moment its parameter's memory layout (channels_last on CUDA): fused and
    foreach Adam walk parameter, gradient and moments in storage order."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            for key, value in optimizer.state.get(param, {}).items():
                if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                    optimizer.state[param][key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def _publish_copy(src: Path, dst: Path) -> None:
    """Make `dst` a copy of `src` atomically: a hard link renamed onto `dst` (no second write of
    the weights), or a plain copy where the filesystem has no hard links."""
    with atomic_path(dst) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)


def _load_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError:
        raise TumorcamError(f"resume: {path} is a checkpoint of another architecture than "
                            f"model {model.name!r} in the config", param="resume") from None


def _run_epoch(step: TrainStep, split: DeviceSplit, epoch: int, n_steps: int, batch_size: int, seed: int,
               device: torch.device, info: distributed.Distributed, desc: str) -> dict[str, Any]:
    """One pass over this rank's share of the training split; mean loss over all ranks."""
    step.model.train()
    loss_sum = torch.zeros((), device=device)
    seen = 0
    start = time.perf_counter()
    with tqdm(total=n_steps, desc=desc, unit="batch", leave=False, disable=not info.is_main) as bar:
        for index in epoch_batches(len(split), batch_size, seed, epoch, device, info.rank, info.world_size):
            images, masks = split.batch(index)
            loss_sum += step(images, masks)
            seen += len(index)
            bar.update(1)
        totals = distributed.sum_all(torch.stack([loss_sum, torch.tensor(float(n_steps), device=device),
                                                  torch.tensor(float(seen), device=device)]), info)
        loss = float(totals[0] / totals[1])  # waits for the device
        seconds = time.perf_counter() - start
        bar.set_postfix(loss=f"{loss:.4f}")
    return {"epoch": epoch, "loss": loss, "seconds": round(seconds, 3),
            "img_per_s": round(float(totals[2]) / seconds, 1)}


def _validate(model: torch.nn.Module, split: DeviceSplit | None, batch_size: int, device: torch.device,
              amp: bool) -> dict[str, Any]:
    """Mean per-slice Dice and IoU on the validation split (every rank computes the same)."""
    if split is None:
        return {"val_dice": None, "val_iou": None, "val_seconds": 0.0}
    start = time.perf_counter()
    dice, iou = score(unwrap(model), split.images, split.masks, batch_size, device, amp)
    return {"val_dice": float(dice.mean()), "val_iou": float(iou.mean()),
            "val_seconds": round(time.perf_counter() - start, 3)}


def _epoch_line(row: dict[str, Any], epochs: int) -> str:
    val = "" if row["val_dice"] is None else f"  val Dice {row['val_dice']:.4f}  val IoU {row['val_iou']:.4f}"
    return (f"epoch {row['epoch']}/{epochs}  loss {row['loss']:.4f}{val}  "
            f"{row['seconds']:.1f} s  {row['img_per_s']:.0f} img/s")


def _read_history(out: Path, epochs_done: int) -> list[dict[str, Any]]:
    path = out / "history.json"
    if not path.is_file():
        return []
    try:
        rows = json.loads(path.read_text())["epochs"]
    except (ValueError, KeyError, TypeError):
        raise TumorcamError(f"resume: {path} is not a tumorcam history file", param="resume") from None
    return [r for r in rows if r["epoch"] <= epochs_done]


def _write_history(out: Path, rows: list[dict[str, Any]], best_epoch: int | None, best_dice: float | None) -> None:
    write_json(out / "history.json", {"best_epoch": best_epoch, "best_val_dice": best_dice, "epochs": rows})
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if r.get(k) is None else r.get(k)) for k in HISTORY_FIELDS} for r in rows)
    write_text(out / "history.csv", buffer.getvalue())


def _provenance(data: PreparedData, device: torch.device, info: distributed.Distributed) -> dict[str, Any]:
    """Software versions, device and a hash of the data's manifest and splits."""
    import segmentation_models_pytorch as smp

    digest = hashlib.sha256()
    for name in ("manifest.json", "splits.json"):
        digest.update((data.root / name).read_bytes())
    return {
        "software": {"tumorcam": __version__, "python": platform.python_version(), "torch": torch.__version__,
                     "segmentation_models_pytorch": smp.__version__, "numpy": np.__version__,
                     "cuda": torch.version.cuda},
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "world_size": info.world_size,
        "cpu_threads": torch.get_num_threads(),
        "data": {"path": str(data.root.resolve()), "manifest_sha256": digest.hexdigest(),
                 "size": data.size, "counts": {s: int(len(data.indices(s))) for s in ("train", "val", "test")}},
        "argv": sys.argv,
    }
