"""Slices under torchrun (`tumorcam.runs.shard`): the CPU time of N ranks against one process on the
same run; prints one JSON object.

The run: `write_blob_prepared` slices (tests/conftest.py; bright discs on a textured background,
12 patients), `patients` x `slices` of them at `size` px, an untrained ResNet18 U-Net, Grad-CAM with
the random map and the predicted mask, `steps` Deletion/Insertion steps with the zero and blur
baselines, the sanity check on `sanity` slices. Its four stages (`explain_run`,
`evaluate_faithfulness`, `evaluate_localization`, `evaluate_sanity`) run once in one process and once
under `torchrun --standalone --nproc_per_node=ranks` (gloo, OMP_NUM_THREADS=1 and 1 torch thread per
process), each on its own copy of the run; `equal` says whether the two wrote the same files.

Per configuration: `stages_cpu_s` (time.process_time of the four stages, summed over the
processes; imports left out), `stages_cpu_s_per_stage`, `all_cpu_s` (RUSAGE_CHILDREN: every process,
interpreter start-up, imports and torchrun's agent included) and `wall_s`; `ratios` divides the
ranks' figures by one process's. The requirement: `ratios.stages_cpu` at most 1.25.

Usage: python benchmarks/bench_shard.py [--patients 12] [--slices 4] [--size 64] [--steps 4]
       [--sanity 12] [--ranks 2]
       python benchmarks/bench_shard.py --drive RUN TIMES   (what each process runs: the four stages
       on RUN, its CPU seconds written to TIMES, or TIMES with .RANK before .json under torchrun)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")
FILES = ("faithfulness.json", "localization.json", "sanity.json")
STAGES = ("explain", "faithfulness", "localization", "sanity")


def drive(run: Path, times: Path) -> None:
    """The four stages on `run`, this process's CPU seconds in each written to `times` (TIMES.RANK.json
    under torchrun)."""
    import torch

    torch.set_num_threads(1)
    import captum.attr  # noqa: F401  the stages' lazy imports, a fixed cost per process, before the clock
    import scipy.stats  # noqa: F401

    import tumorcam.explain.methods  # noqa: F401
    from tumorcam.runs.explain import explain_run
    from tumorcam.runs.faithfulness import evaluate_faithfulness
    from tumorcam.runs.localization import evaluate_localization
    from tumorcam.runs.sanity import evaluate_sanity

    spent = {}
    for name, stage in zip(STAGES, (explain_run, evaluate_faithfulness, evaluate_localization, evaluate_sanity)):
        began = time.process_time()
        stage(run)
        spent[name] = time.process_time() - began
    rank = os.environ.get("RANK")
    path = times if rank is None else times.with_suffix(f".{rank}.json")
    path.write_text(json.dumps(spent))


def make_run(folder: Path, prepared: Path, *, patients: int, slices: int, size: int, steps: int, sanity: int) -> Path:
    """A run folder on `prepared` (split all): `patients` x `slices` slices at `size` px, an untrained
    U-Net's weights. One slice per forward in the explain step: a batch's convolutions round a
    slice's map apart from the same slice in another batch (an fp16 step in a few pixels), so the
    maps are equal only when both runs batch alike; the game and the sanity check's float32 values
    agree to 1e-6 anyway."""
    import torch

    from tumorcam.config import Config, EvaluateConfig, ExplainConfig, ModelConfig, TrainConfig
    from tumorcam.models.unet import WEIGHTS_FILE, build_model, save_weights

    config = Config(
        preset="demo",
        data=str(prepared),
        model=ModelConfig(encoder="resnet18", encoder_weights="none"),
        train=TrainConfig(size=size, device="cpu", seed=0),
        explain=ExplainConfig(split="all", patients=patients, slices_per_patient=slices, limit=None,
                              methods=["gradcam", "random", "predicted-mask"], targets=["predicted-region"],
                              batch_size=1),
        evaluate=EvaluateConfig(split="all", steps=steps, baselines=["zero", "blur"], bootstrap=100, sanity=sanity),
    )
    folder.mkdir(parents=True, exist_ok=True)
    config.save(folder / "config.json")
    torch.manual_seed(1)
    save_weights(build_model(config.model), folder / WEIGHTS_FILE)
    return folder


def launch(command: list[str], times: Path) -> dict:
    """Run `command` (1 thread per process); its stages' CPU seconds summed over the processes that
    wrote TIMES(.RANK).json, total and per stage, every process's CPU seconds and the wall seconds."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - began
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    parts = [json.loads(p.read_text()) for p in sorted(times.parent.glob(f"{times.stem}*.json"))]
    per_stage = {name: sum(part[name] for part in parts) for name in STAGES}
    return {"processes": len(parts), "stages_cpu_s": sum(per_stage.values()), "stages_cpu_s_per_stage": per_stage,
            "all_cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), "wall_s": wall}


def one_process(run: Path, times: Path) -> dict:
    """`launch` of the driver in one process."""
    return launch([sys.executable, str(Path(__file__).resolve()), "--drive", str(run), str(times)], times)


def ranks(run: Path, times: Path, n: int) -> dict:
    """`launch` of the driver under `torchrun --standalone --nproc_per_node=n`."""
    return launch([str(TORCHRUN), "--standalone", f"--nproc_per_node={n}", str(Path(__file__).resolve()),
                   "--drive", str(run), str(times)], times)


def differences(one: Path, two: Path) -> list[str]:
    """Where the files of two runs differ: explanations/index.json exactly, each map file's maps and
    file ids exactly, the JSON files' values with numbers to 1e-6 (`seconds` left out)."""
    from json_compare import json_differences  # tests/, on the path (main)

    found = []
    index = json.loads((one / "explanations" / "index.json").read_text())
    if json.loads((two / "explanations" / "index.json").read_text()) != index:
        found.append("explanations/index.json")
    for entry in index["entries"]:
        with np.load(one / "explanations" / entry["file"]) as a, np.load(two / "explanations" / entry["file"]) as b:
            if not (np.array_equal(a["file_ids"], b["file_ids"]) and np.array_equal(a["maps"], b["maps"])):
                found.append(f"explanations/{entry['file']}")
    for name in FILES:
        found += json_differences(json.loads((one / name).read_text()), json.loads((two / name).read_text()), name,
                                  skip={"seconds"})
    return found


def _cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else the platform's processor string."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    names = (line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    return next(names, platform.processor())


def _rounded(figures: dict) -> dict:
    """`figures` with every float, at any depth of dicts, to 2 decimals."""
    return {key: round(value, 2) if isinstance(value, float) else _rounded(value) if isinstance(value, dict) else value
            for key, value in figures.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drive", nargs=2, metavar=("RUN", "TIMES"), help="run the four stages on RUN (one process)")
    parser.add_argument("--patients", type=int, default=12, help="patients (at most 12)")
    parser.add_argument("--slices", type=int, default=4, help="slices per patient")
    parser.add_argument("--size", type=int, default=64, help="slice size, px")
    parser.add_argument("--steps", type=int, default=4, help="Deletion/Insertion steps K")
    parser.add_argument("--sanity", type=int, default=12, help="slices of the sanity check")
    parser.add_argument("--ranks", type=int, default=2, help="torchrun processes")
    args = parser.parse_args(argv)
    if args.drive:
        drive(Path(args.drive[0]), Path(args.drive[1]))
        return

    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import write_blob_prepared

    sizes = {key: getattr(args, key) for key in ("patients", "slices", "size", "steps", "sanity")}
    report = {"cpu": _cpu_model(), "cores": len(os.sched_getaffinity(0)),
              "load_average_before": [round(x, 2) for x in os.getloadavg()], "python": platform.python_version(),
              "sizes": {**sizes, "n_slices": args.patients * args.slices}, "threads_per_process": 1}
    with tempfile.TemporaryDirectory(prefix="bench-shard-") as tmp:
        work = Path(tmp)
        prepared = write_blob_prepared(work / "prepared", n=12 * args.slices, size=args.size)
        one = make_run(work / "one", prepared, **sizes)
        many = work / "many"
        shutil.copytree(one, many)
        report["one_process"] = one_process(one, work / "t1.json")
        report[f"ranks_{args.ranks}"] = ranks(many, work / "tn.json", args.ranks)
        found = differences(one, many)
    single, several = report["one_process"], report[f"ranks_{args.ranks}"]
    report["ratios"] = {"stages_cpu": several["stages_cpu_s"] / single["stages_cpu_s"],
                        "all_cpu": several["all_cpu_s"] / single["all_cpu_s"],
                        "wall": several["wall_s"] / single["wall_s"],
                        "per_stage_cpu": {name: several["stages_cpu_s_per_stage"][name]
                                          / single["stages_cpu_s_per_stage"][name] for name in STAGES}}
    report["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    report["equal"] = not found
    report["differences"] = found[:10]
    print(json.dumps(_rounded(report), indent=2))


if __name__ == "__main__":
    main()
