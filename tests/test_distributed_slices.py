"""Slices under torchrun (`tumorcam.runs.shard`): explain, faithfulness, localization and sanity with 2 ranks
on CPU (gloo, 1 thread each) write the files of one process. The driver each process runs, the run
folder and the comparison of the files are benchmarks/bench_shard.py's; the CPU time of the two is
printed, not asserted (a timed test fails with the machine's load): the benchmark compares it."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_shard import differences, make_run, one_process, ranks  # noqa: E402 - the benchmark's driver and run


def test_patients_are_dealt_to_the_ranks_in_the_order_of_their_first_slice() -> None:
    from tumorcam.errors import TumorcamError
    from tumorcam.runs.shard import patient_shard
    from tumorcam.training.distributed import Distributed

    ids = np.array(["B", "A", "B", "C", "A", "D"])
    assert patient_shard(ids, Distributed(0, 2)).rows.tolist() == [0, 2, 3]  # B, C
    assert patient_shard(ids, Distributed(1, 2)).rows.tolist() == [1, 4, 5]  # A, D
    assert patient_shard(ids, Distributed()).rows.tolist() == list(range(6))
    with pytest.raises(TumorcamError, match="^patients: 4 patient") as caught:
        patient_shard(ids, Distributed(0, 5))
    assert caught.value.param == "patients"


def test_two_ranks_write_the_files_of_one_process(tmp_path: Path, blob_prepared: Path) -> None:
    one = make_run(tmp_path / "one", blob_prepared, patients=4, slices=2, size=32, steps=4, sanity=4)
    two = tmp_path / "two"
    shutil.copytree(one, two)
    single = one_process(one, tmp_path / "t1.json")
    several = ranks(two, tmp_path / "t2.json", 2)
    print(f"CPU s, stages: 1 process {single['stages_cpu_s']:.2f}, 2 ranks {several['stages_cpu_s']:.2f}; "
          f"all processes: {single['all_cpu_s']:.2f}, {several['all_cpu_s']:.2f} (torchrun's agent included)")

    index = json.loads((one / "explanations" / "index.json").read_text())
    assert index["n_patients"] == 4 and index["n_slices"] == 8
    assert differences(one, two) == []
