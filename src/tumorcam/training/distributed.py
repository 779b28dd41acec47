"""Several GPUs: PyTorch DDP under `torchrun`, detected from its environment (WORLD_SIZE > 1).

    torchrun --standalone --nproc_per_node=NGPU --no-python tumorcam train --data DIR --out RUN

Every rank holds the whole prepared split on its own device and takes its share of one
shared permutation per epoch (see `data.epoch_batches`); gradients are averaged by DDP;
only rank 0 writes files. NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from tumorcam.device import resolve_device


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def start(device_name: str, timeout: datetime.timedelta | None = None) -> tuple[Distributed, torch.device]:
    """Join the torchrun process group when WORLD_SIZE > 1; the device of this rank. `timeout`: how
    long a collective (a barrier) waits for the slowest rank (None: torch's default, 10 min on NCCL)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed(), resolve_device(device_name)
    device = resolve_device(device_name)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout)
    return Distributed(dist.get_rank(), dist.get_world_size(), local_rank), device


def stop(info: Distributed) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, info: Distributed, device: torch.device) -> nn.Module:
    """DDP around `model` when distributed, else the model itself."""
    if not info.enabled:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def sum_all(value: torch.Tensor, info: Distributed) -> torch.Tensor:
    """Sum of a tensor over ranks (itself when not distributed)."""
    if info.enabled:
        value = value.clone()
        dist.all_reduce(value)
    return value


def broadcast_flag(flag: bool, info: Distributed, device: torch.device) -> bool:
    """Rank 0's boolean, on every rank."""
    if not info.enabled:
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.broadcast(t, 0)
    return bool(t.item())


def barrier(info: Distributed) -> None:
    """Wait for every rank (nothing when not distributed)."""
    if info.enabled:
        dist.barrier()


def gather_to_main(items: list, info: Distributed) -> list | None:
    """Every rank's list of picklable `items`, concatenated in rank order on rank 0; None on the
    other ranks. Not distributed: the list itself."""
    if not info.enabled:
        return list(items)
    gathered: list | None = [None] * info.world_size if info.is_main else None
    dist.gather_object(list(items), gathered, dst=0)
    return None if gathered is None else [item for part in gathered for item in part]


def refuse_under_torchrun(command: str) -> None:
    """One clear error when `command` (one that runs in one process) is started by torchrun with
    WORLD_SIZE > 1: every rank would redo the same work and write the same files."""
    from tumorcam.errors import TumorcamError

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1:
        raise TumorcamError(f"torchrun: `tumorcam {command}` runs in one process ({world_size} were started); "
                            "torchrun shards training, the explain and evaluate stages of slices, and runs on volumes")


def refuse_several_machines(command: str) -> None:
    """One clear error when torchrun spans several machines: `command` shares files between its ranks
    through one local folder (LOCAL_WORLD_SIZE must equal WORLD_SIZE)."""
    from tumorcam.errors import TumorcamError

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
    if local != world_size:
        raise TumorcamError(f"torchrun: `tumorcam {command}` runs on one machine ({local} of {world_size} processes "
                            "are local); start it with torchrun on one machine (standalone, N processes per node)")
