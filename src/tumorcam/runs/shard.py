"""Runs on slices under torchrun: the patients dealt to the ranks, their per-slice results gathered on rank 0.

    torchrun --standalone --nproc_per_node=N --no-python tumorcam explain RUN
    torchrun --standalone --nproc_per_node=N --no-python tumorcam evaluate RUN

With WORLD_SIZE > 1 (`tumorcam.training.distributed.start`: gloo on CPU, NCCL on CUDA with rank i
on cuda:LOCAL_RANK) the patients of the slices, in the order of their first slice, are dealt to the
ranks: patient j to rank j mod N (`Shard.rows`). Each rank computes its patients' slices;
`Shard.gather` puts the per-slice arrays back in the slices' order on rank 0, which alone computes
the statistics and writes the files; `Shard.share` hands rank 0's result to every rank. Every
random draw is seeded per file id or by the slice's place in the whole selection, never by the
rank, so the files equal those of one process. Without torchrun the shard is every slice and each
call returns its input.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from tumorcam.errors import TumorcamError
from tumorcam.training.distributed import Distributed, barrier, gather_to_main, refuse_several_machines, start

RANK_TIMEOUT = datetime.timedelta(hours=2)  # how long a rank waits for rank 0 (statistics, another stage)


@dataclass(frozen=True)
class Shard:
    """This rank's part of `count` slices: `rows` (ascending) are the slices of its patients."""

    info: Distributed
    rows: np.ndarray
    count: int

    @property
    def is_main(self) -> bool:
        return self.info.is_main

    def gather(self, arrays: dict[Any, np.ndarray]) -> dict[Any, np.ndarray] | None:
        """Every rank's `arrays` (this rank's rows first on each axis 0) as arrays of all `count`
        slices in their order, on rank 0; None on the other ranks."""
        parts = gather_to_main([(self.rows, arrays)], self.info)
        if parts is None:
            return None
        merged: dict[Any, np.ndarray] = {}
        for key in arrays:
            first = np.asarray(arrays[key])
            whole = np.empty((self.count, *first.shape[1:]), dtype=first.dtype)
            for rows, values in parts:
                whole[rows] = values[key]
            merged[key] = whole
        return merged

    def share(self, value: Any) -> Any:
        """Rank 0's picklable `value` on every rank (after rank 0 made it)."""
        if not self.info.enabled:
            return value
        box = [value if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def any(self, flag: bool) -> bool:
        """Whether `flag` holds on any rank (the same answer on every rank)."""
        if not self.info.enabled:
            return flag
        flags: list[Any] = [None] * self.info.world_size
        dist.all_gather_object(flags, bool(flag))
        return any(flags)

    def wait(self) -> None:
        """Wait for every rank (e.g. until rank 0 has written a file the others read)."""
        barrier(self.info)


def is_main_process() -> bool:
    """Whether this process is torchrun's rank 0 (or runs alone): the one that prints."""
    return int(os.environ.get("RANK", "0")) == 0


def join(device: torch.device, command: str) -> tuple[Distributed, torch.device]:
    """This process's place among torchrun's ranks (joining the process group once; `command`, the
    `tumorcam` command it serves, runs on one machine) and the device it computes on: `device`, or
    on CUDA the rank's cuda:LOCAL_RANK."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Distributed(), device
    refuse_several_machines(command)
    return start(device.type, timeout=RANK_TIMEOUT)


def patient_shard(patient_ids: np.ndarray, info: Distributed) -> Shard:
    """The rows of the slices whose patient is dealt to `info`'s rank: the patients in the order of
    their first slice, patient j to rank j mod world size."""
    ids = np.asarray(patient_ids).astype(str)
    _, first = np.unique(ids, return_index=True)
    order = ids[np.sort(first)]
    if len(order) < info.world_size:
        raise TumorcamError(f"patients: {len(order)} patient(s) for {info.world_size} torchrun processes; start at "
                            f"most {len(order)}, or select more patients", param="patients")
    mine = set(order[info.rank::info.world_size].tolist())
    rows = np.flatnonzero([pid in mine for pid in ids.tolist()]).astype(np.int64)
    return Shard(info=info, rows=rows, count=len(ids))
