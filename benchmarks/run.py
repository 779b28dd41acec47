"""Benchmarks, one process on one device; prints one JSON object.

Usage: python benchmarks/run.py [--quick] [--device auto|cpu|cuda] [--only SECTION ...] [section options]

Each section is a module beside this file with `add_arguments(parser)` and `run(args) -> dict`,
listed in SECTIONS; add a stage's benchmark by adding its module there. `--quick` uses tiny sizes
so a CPU finishes in seconds. Speed is measured here, never in timed tests.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

SECTIONS = {"train": "bench_train", "faithfulness": "bench_faithfulness", "explain": "bench_explain"}  # section name -> module in benchmarks/


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (CPU, seconds)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--only", nargs="+", choices=sorted(SECTIONS), help="sections to run (default: all)")
    modules = {name: importlib.import_module(module) for name, module in SECTIONS.items()}
    for module in modules.values():
        module.add_arguments(parser)
    args = parser.parse_args(argv)

    report = {
        "device": torch.cuda.get_device_name() if args.device != "cpu" and torch.cuda.is_available() else "cpu",
        "cpus": len(os.sched_getaffinity(0)),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "torch": torch.__version__,
        "python": platform.python_version(),
        "quick": args.quick,
        "sections": {},
    }
    for name in args.only or SECTIONS:
        start = time.perf_counter()
        report["sections"][name] = modules[name].run(args)
        report["sections"][name]["wall_s"] = round(time.perf_counter() - start, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
