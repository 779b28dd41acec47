"""Pick the torch device from a `device` value and set the process up for it."""

from __future__ import annotations

import contextlib
import os
import re

import torch

from tumorcam.errors import TumorcamError

DEMO_THREADS = 1  # the demos' CPU threads (`demo-2d` preset, volume demo): fixed, so their figures never follow the load


def resolve_device(name: str) -> torch.device:
    """`auto` (CUDA when present, else CPU), `cpu`, `cuda` or `cuda:N`; anything else is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if re.fullmatch(r"cuda(:\d+)?", name or ""):
        if not torch.cuda.is_available():
            raise TumorcamError(f"device {name}: CUDA is not available here (use cpu or auto)", param="device")
        device = torch.device(name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise TumorcamError(f"device {name}: only {torch.cuda.device_count()} CUDA device(s) here", param="device")
        return device
    raise TumorcamError(f"device {name!r}: unknown device (choose auto, cpu, cuda or cuda:N)", param="device")


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when `enabled`; a no-op elsewhere (CPU runs fp32)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()




def demo_threads() -> int:
    """The volume demo's CPU threads: OMP_NUM_THREADS when set (the user's choice; torchrun sets 1),
    else `DEMO_THREADS`, whatever the machine's load.

    The thread count changes the order of floating-point reductions (convolutions, matmuls), so a
    count picked from the load average would make the demo's figures differ from run to run."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else DEMO_THREADS


def cpu_threads(requested: int) -> int:
    """Threads for CPU work: `requested` when > 0; else torch's default (or OMP_NUM_THREADS when
    set), lowered to the cores the 1-minute load average leaves idle, at least 1.

    On a busy machine, more threads than idle cores make every step wait on the slowest thread:
    measured here, a 96 px U-Net step on 2 shared cores ran 5x slower with 2 threads than with 1.
    The count changes the last digits of the results (reduction order); the `demo` preset fixes it
    (`DEMO_THREADS`) so that its figures are the same on every run.
    """
    if requested > 0:
        return requested
    default = torch.get_num_threads()
    if "OMP_NUM_THREADS" in os.environ or not hasattr(os, "getloadavg"):
        return default
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or default)
    idle = cores - int(os.getloadavg()[0])
    return max(1, min(default, idle))


def setup_backend(device: torch.device, seed: int, deterministic: bool, num_threads: int = 0) -> None:
    """Seed every generator; CPU threads (`cpu_threads`); TF32 and cuDNN autotuning on CUDA
    unless `deterministic`."""
    if device.type == "cpu" or num_threads > 0:
        torch.set_num_threads(cpu_threads(num_threads))
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cuda.matmul.allow_tf32 = not deterministic
        torch.backends.cudnn.allow_tf32 = not deterministic
