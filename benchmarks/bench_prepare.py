"""Wall time of `prepare` on the sources at hand; prints one JSON object.

- `png256`: ../shared/data/figshare-png256 (2400 slices, 256x256 PNGs), when present;
- `mat3064`: 3064 figshare-layout `.mat` files, made by linking the real slices of
  ../shared/data/figshare-mat-layout (six 512x512, two 256x256) under the numbers 1-3064: the
  full dataset's file count and mostly its 512x512 size, read by the real `.mat` path;
- `synth`: the synthetic set (40 patients x 6 slices), generated first (its time is reported too).

Usage: python benchmarks/bench_prepare.py [--workers N] [--size 256]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from tumorcam.data.prepare import prepare
from tumorcam.data.synth import write_synthetic

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def timed(function, *args, **kwargs) -> tuple[object, float]:
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, round(time.perf_counter() - start, 2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    report: dict[str, object] = {"cpus": len(os.sched_getaffinity(0)), "workers": args.workers, "size": args.size, "load_average": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        _, report["synth_generate_s"] = timed(write_synthetic, tmp / "synth-mat", patients=40, slices_per_patient=6, seed=0)
        manifest, report["synth_prepare_s"] = timed(prepare, tmp / "synth-mat", tmp / "synth-out", size=args.size, workers=args.workers)
        report["synth_slices"] = manifest["count"]
        if (SHARED / "figshare-png256").is_dir():
            manifest, report["png256_prepare_s"] = timed(prepare, SHARED / "figshare-png256", tmp / "png-out", size=args.size, workers=args.workers)
            report["png256_slices"] = manifest["count"]
        if (SHARED / "figshare-mat-layout").is_dir():
            originals = sorted((SHARED / "figshare-mat-layout").glob("*.mat"))
            (tmp / "mat3064").mkdir()
            for i in range(1, 3065):
                (tmp / "mat3064" / f"{i}.mat").symlink_to(originals[i % len(originals)])
            manifest, report["mat3064_prepare_s"] = timed(prepare, tmp / "mat3064", tmp / "mat-out", size=args.size, workers=args.workers)
            report["mat3064_slices"] = manifest["count"]
            report["mat3064_original_sizes"] = manifest["original_sizes"]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
