"""The environment section: GPU, driver, torch, CUDA and library versions, git commit, bf16 matmul speed."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import time

from gpu_proof.timebox import ROOT, Recorder


def measure(record: Recorder, smoke: bool) -> None:
    """The environment step (the first; where CUDA fails in a forked child, the run switches to spawn).

    Args:
        record: the step's results.
        smoke: CPU only, even where CUDA is available.
    """
    from importlib import metadata

    import torch

    versions = {}
    for name in ("torch", "torchvision", "segmentation-models-pytorch", "captum", "timm", "huggingface-hub", "numpy",
                 "scipy", "pillow", "typer", "safetensors", "triton"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    record.set("python", platform.python_version())
    record.set("platform", platform.platform())
    record.set("cpus", len(os.sched_getaffinity(0)))
    record.set("versions", versions)
    record.set("numpy_config_threads", os.environ.get("OMP_NUM_THREADS"))
    record.set("git_commit", _git("rev-parse", "HEAD"))
    record.set("git_dirty_files", len((_git("status", "--porcelain") or "").splitlines()) if _git("rev-parse", "HEAD") else None)
    cuda = torch.cuda.is_available() and not smoke
    record.set("cuda_available", torch.cuda.is_available())
    record.set("device", "cuda" if cuda else "cpu")
    if cuda:
        props = torch.cuda.get_device_properties(0)
        record.set("gpu", {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                           "multiprocessors": props.multi_processor_count, "capability": f"{props.major}.{props.minor}",
                           "count": torch.cuda.device_count(), "bf16_supported": torch.cuda.is_bf16_supported()})
        record.set("cuda", torch.version.cuda)
        record.set("cudnn", torch.backends.cudnn.version())
        record.set("nvidia_smi", _nvidia_smi())
        a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
        for _ in range(3):
            a @ a
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(10):
            a @ a
        torch.cuda.synchronize()
        record.set("bf16_matmul_tflops", round(10 * 2 * 8192**3 / (time.perf_counter() - start) / 1e12, 1))


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(ROOT), *args], check=False, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _nvidia_smi() -> dict[str, str] | None:
    fields = "name,driver_version,memory.total,clocks.max.sm,clocks.sm,power.limit,temperature.gpu"
    try:
        done = subprocess.run(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"],
                              check=False, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0 or not done.stdout.strip():
        return None
    return dict(zip(fields.split(","), (v.strip() for v in done.stdout.splitlines()[0].split(","))))
