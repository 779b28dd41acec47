"""Slices under torchrun (`tumorcam.runs.shard`): explain, faithfulness, localization and sanity with 2 ranks
on CPU (gloo, 1 thread each) write the files of one process. The CPU time of the two is printed, not
asserted (a timed test fails with the machine's load): benchmarks/bench_shard.py compares it.

Run as a script, this file is the driver each process runs: `python THIS RUN TIMES` (one process)
or `torchrun --standalone --nproc_per_node=2 THIS RUN TIMES`; it runs the four stages on RUN and
writes TIMES(.RANK).json, its CPU seconds in the stages (interpreter start-up and imports left out:
a fixed cost per process, whatever the run's size)."""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve()
SRC = HERE.parents[1] / "src"
TORCHRUN = Path(sys.executable).with_name("torchrun")
FILES = ("faithfulness.json", "localization.json", "sanity.json")


def drive(run: Path, times: Path) -> None:
    """The four stages on `run`, their CPU seconds (this process's) written to `times`."""
    import torch

    torch.set_num_threads(1)
    import captum.attr  # noqa: F401  the stages' lazy imports, a fixed cost per process, before the clock
    import scipy.stats  # noqa: F401

    import tumorcam.explain.methods  # noqa: F401
    from tumorcam.runs.faithfulness import evaluate_faithfulness
    from tumorcam.runs.localization import evaluate_localization
    from tumorcam.runs.sanity import evaluate_sanity
    from tumorcam.runs.explain import explain_run

    began = time.process_time()
    explain_run(run)
    evaluate_faithfulness(run)
    evaluate_localization(run)
    evaluate_sanity(run)
    rank = os.environ.get("RANK")
    path = times if rank is None else times.with_suffix(f".{rank}.json")
    path.write_text(json.dumps({"cpu_s": time.process_time() - began}))


def make_run(folder: Path, prepared: Path) -> Path:
    """A run folder: 4 patients of the blob data, 2 slices each, at 32 px, an untrained U-Net's weights.
    One slice per forward in the explain step: a batch's convolutions round a slice's map apart from
    the same slice in another batch (an fp16 step in a few pixels), so the maps are equal only when
    both runs batch alike; the game and the sanity check's float32 values agree to 1e-6 anyway."""
    import torch

    from tumorcam.config import Config, EvaluateConfig, ExplainConfig, ModelConfig, TrainConfig
    from tumorcam.models.unet import WEIGHTS_FILE, build_model, save_weights

    config = Config(
        preset="demo",
        data=str(prepared),
        model=ModelConfig(encoder="resnet18", encoder_weights="none"),
        train=TrainConfig(size=32, device="cpu", seed=0),
        explain=ExplainConfig(split="all", patients=4, slices_per_patient=2, limit=None,
                              methods=["gradcam", "random", "predicted-mask"], targets=["predicted-region"],
                              batch_size=1),
        evaluate=EvaluateConfig(split="all", steps=4, baselines=["zero", "blur"], bootstrap=100, sanity=4),
    )
    config.save(folder / "config.json")
    torch.manual_seed(1)
    save_weights(build_model(config.model), folder / WEIGHTS_FILE)
    return folder


def _close(a: object, b: object, where: str = "") -> None:
    """JSON values equal, numbers to 1e-6 (the `seconds` and `device` fields left out)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            if key not in ("seconds",):
                _close(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and isinstance(b, (int, float)):
        assert math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6) or (math.isnan(a) and math.isnan(b)), (where, a, b)
    else:
        assert a == b, (where, a, b)


def _run(command: list[str], times: Path) -> tuple[float, float]:
    """(CPU seconds of the stages over every process, CPU seconds of every process) of `command`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    stages = sum(json.loads(p.read_text())["cpu_s"] for p in times.parent.glob(f"{times.stem}*.json"))
    return stages, total


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
    one = make_run(tmp_path / "one", blob_prepared)
    two = tmp_path / "two"
    shutil.copytree(one, two)
    one_stages, one_total = _run([sys.executable, str(HERE), str(one), str(tmp_path / "t1.json")], tmp_path / "t1.json")
    two_stages, two_total = _run([str(TORCHRUN), "--standalone", "--nproc_per_node=2", str(HERE), str(two),
                                  str(tmp_path / "t2.json")], tmp_path / "t2.json")
    print(f"CPU s, stages: 1 process {one_stages:.2f}, 2 ranks {two_stages:.2f}; "
          f"all processes: {one_total:.2f}, {two_total:.2f} (torchrun's agent included)")

    index = json.loads((one / "explanations" / "index.json").read_text())
    assert json.loads((two / "explanations" / "index.json").read_text()) == index
    assert index["n_patients"] == 4 and index["n_slices"] == 8
    for entry in index["entries"]:
        with np.load(one / "explanations" / entry["file"]) as a, np.load(two / "explanations" / entry["file"]) as b:
            np.testing.assert_array_equal(a["file_ids"], b["file_ids"])
            np.testing.assert_array_equal(a["maps"], b["maps"])
    for name in FILES:
        _close(json.loads((one / name).read_text()), json.loads((two / name).read_text()), name)


if __name__ == "__main__":
    drive(Path(sys.argv[1]), Path(sys.argv[2]))
