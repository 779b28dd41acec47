"""The faithfulness section: benchmarks/bench_faithfulness.py as is (the seed's Deletion/Insertion loop
against `PerturbationGame`), with the fraction of the bf16 inference bound and the seconds per fold."""

from __future__ import annotations

import argparse

from gpu_proof.timebox import Recorder


def measure(record: Recorder, quick: bool, device: str) -> None:
    """The faithfulness step: bench_faithfulness's keys, `fraction_of_inference_bound`, `seconds_per_664_slices`.

    Args:
        record: the step's results.
        quick: bench_faithfulness's tiny sizes (smoke mode).
        device: auto, cuda or cpu.
    """
    import bench_faithfulness

    result = bench_faithfulness.run(argparse.Namespace(quick=quick, device=device, faith_batch=None, faith_slices=None))
    game, inference = result["tumorcam"], result["inference_img_per_s"]
    result["fraction_of_inference_bound"] = round(game["forwarded_img_per_s"] / inference, 3)
    result["seconds_per_664_slices"] = round(664 / game["slices_per_s"], 2)
    for key, value in result.items():
        record.set(key, value)
