"""The training section: the seed's training loop against tumorcam's (benchmarks/bench_train.py), eager,
and tumorcam's under torch.compile (the training_compiled step)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from gpu_proof.timebox import Recorder, peak_memory

GPU_SHAPE: dict[str, Any] = {"n": 1024, "stored": 256, "size": 224, "batch": 128, "steps": 50, "warmup": 8}
SMOKE_SHAPE: dict[str, Any] = {"n": 48, "stored": 64, "size": 32, "batch": 16, "steps": 2, "warmup": 1}


def measure(record: Recorder, shape: dict[str, Any], device: str, compiled: bool) -> None:
    """The training step (`seed_style`, `tumorcam`, `speedup`) or training_compiled (`tumorcam_compiled`).

    Args:
        record: the step's results.
        shape: GPU_SHAPE or SMOKE_SHAPE (slices, stored and trained size, batch, steps, warm-up steps).
        device: auto, cuda or cpu.
        compiled: time tumorcam's loop under torch.compile only.
    """
    from bench_train import _seed_loop, _tumorcam_loop, _write_random_prepared

    from tumorcam.device import resolve_device, setup_backend

    dev = resolve_device(device)
    setup_backend(dev, seed=0, deterministic=False)
    record.set("shape", shape)
    with tempfile.TemporaryDirectory() as tmp:
        root = _write_random_prepared(Path(tmp), shape["n"], shape["stored"])
        if compiled:
            peak = peak_memory(dev)
            start = time.perf_counter()
            result = _tumorcam_loop(root, shape, dev, compile_model=True)
            record.set("tumorcam_compiled", {**result, "peak_mib": peak(), "wall_s": round(time.perf_counter() - start, 1)})
            return
        peak = peak_memory(dev)
        seed = _seed_loop(root, shape, dev)
        record.set("seed_style", {**seed, "peak_mib": peak()})
        peak = peak_memory(dev)
        ours = _tumorcam_loop(root, shape, dev, compile_model=False)
        record.set("tumorcam", {**ours, "peak_mib": peak()})
        record.set("speedup", round(ours["img_per_s"] / seed["img_per_s"], 2))
