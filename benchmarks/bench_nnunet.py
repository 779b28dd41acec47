"""tumorcam's nnU-Net Grad-CAM side by side with nnunetv2-cam's, on the same model, cases and layer.

    PIP_NO_DEPS=1 pip install -c constraints.txt nnunetv2-cam==0.1.6.1   # benchmark-only; not a tumorcam dependency
    PYTHONPATH=src python benchmarks/bench_nnunet.py [--cases 3] [--steps 8] [--threads 2]

The model: the small 3d_fullres nnU-Net that tests/test_nnunet.py trains (`make_model_folder` of
tests/nnunet_model.py: synthetic 4-channel cases, 40 steps); the cases: `--cases` raw synthetic cases
of size 52 (several tiles in every axis), label `edema`.

- tumorcam: `tumorcam.nnunet.load(folder)`, `model.preprocess(files)`,
  `model.explain(volume, "edema", method="gradcam", layer=LAYER)` (target: the edema logit summed
  over the tile's predicted edema; maps stitched with nnU-Net's Gaussian weights, normalised once).
- nnunetv2-cam: `run_cam_for_prediction(nnUNetPredictor(use_mirroring=False, device=cpu), CASE_0000.nii.gz,
  target_layer=LAYER, target_class=1, method="gradcam", cam_type="3d", device=cpu, save_slices=False)`:
  pytorch-grad-cam's GradCAM per tile (target: all K output channels summed inside the tile's
  predicted label-1 mask; each tile's map min-max normalised by pytorch-grad-cam), tiles averaged
  without weights, then `* 1.3`, in fp16. As released it reads one channel of a 4-channel case (its
  `_preprocess_file` looks for the channel files by `Path.stem`, which keeps `.nii` of `.nii.gz`);
  the error is recorded as raised, and then it is run with the smallest fix: `_preprocess_file`
  replaced by the same code given the case's four channel files (nnU-Net's CASE_XXXX naming).
  Its map on the preprocessed grid is taken where `compute_cam_with_sliding_window` returns it.
- LAYER: tumorcam's default layer of the network (the last convolution block before the head),
  explained by both.
- seconds per case: the explanation on the preprocessed volume (`model.explain`;
  `compute_cam_with_sliding_window`), and end to end from the raw files to the map on the raw grid
  (tumorcam: preprocess + explain + export_map; nnunetv2-cam: run_cam_for_prediction, whose
  preprocessing runs in a spawned process).
- agreement: Spearman's rho of the two maps per case over all voxels of the preprocessed grid (the
  same grid for both: no resampling).
- faithfulness: `tumorcam.faithfulness(model, volume[None], map[None], channel=edema, steps, baseline
  "zero", score "predicted-region")` with tumorcam's NnunetModel (the Gaussian sliding window) as the
  scored model, for tumorcam's map, nnunetv2-cam's map and the seeded random map (reference="random").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

LABEL = "edema"


def _log(message: str) -> None:
    print(f"[bench_nnunet {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cases", type=int, default=3, help="synthetic raw cases of size 52 (default 3)")
    parser.add_argument("--steps", type=int, default=8, help="Deletion/Insertion steps (default 8)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from nnunet_model import BIG_SIZE, BIG_SPACING, _write_big_case, make_model_folder

    import tumorcam.nnunet

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        started = time.perf_counter()
        folder, first, _ = make_model_folder(tmp / "model")
        build_s = time.perf_counter() - started
        _log(f"model folder built in {build_s:.0f} s")
        cases_dir = tmp / "cases"
        cases_dir.mkdir()
        cases = [first] + [_write_big_case(cases_dir, f"CASE{seed}", seed=seed) for seed in range(2, args.cases + 1)]
        torch.set_num_threads(args.threads)

        model = tumorcam.nnunet.load(folder)
        channel = model.channel(LABEL)
        layer = _default_layer(model)
        theirs = _Theirs(folder, tmp / "nncam", layer)
        as_released = theirs.as_released(cases[0])

        rows = []
        for files in cases:
            name = Path(files[0]).name.rsplit("_", 1)[0]
            _log(f"case {name}")
            started = time.perf_counter()
            volume, properties = model.preprocess(files)
            preprocess_s = time.perf_counter() - started
            started = time.perf_counter()
            ours = model.explain(volume, LABEL, method="gradcam", layer=layer)
            explain_s = time.perf_counter() - started
            started = time.perf_counter()
            model.export_map(ours.heatmap, properties)
            export_s = time.perf_counter() - started
            their_map, their_explain_s, their_total_s, their_volume = theirs.fixed(files, channel)
            rows.append(_case(model, name, volume, their_volume, ours.heatmap, their_map, channel, args.steps, {
                "tumorcam_explain_s": explain_s, "tumorcam_end_to_end_s": preprocess_s + explain_s + export_s,
                "nnunetv2_cam_explain_s": their_explain_s, "nnunetv2_cam_end_to_end_s": their_total_s}))

    return {
        "model": {"configuration": model.configuration, "patch_size": list(model.patch_size), "folds": list(model.folds),
                  "label": LABEL, "channel": channel, "layer": layer, "built_s": round(build_s, 1),
                  "cases": len(rows), "raw_case": {"size": BIG_SIZE, "spacing": list(BIG_SPACING), "channels": 4}},
        "nnunetv2_cam": {"version": version("nnunetv2-cam"), "as_released": as_released,
                         "fix": "api._preprocess_file replaced by the same code given the case's 4 channel files "
                                "(CASE_XXXX.nii.gz); everything else as released",
                         "settings": {"method": "gradcam", "cam_type": "3d", "target_class": 1, "use_mirroring": False,
                                      "tile_step_size": 0.5, "device": "cpu"}},
        "faithfulness_settings": {"steps": args.steps, "baseline": "zero", "score": "predicted-region",
                                  "schedule": "log", "scored_model": "tumorcam NnunetModel (Gaussian sliding window)"},
        "agreement": "Spearman rho over all voxels of the preprocessed grid (no resampling: same grid)",
        "per_case": rows,
        "mean": _mean(rows),
    }


def _default_layer(model: Any) -> str:
    from tumorcam.explain.layers import default_layer
    from tumorcam.logits import explaining

    network = model.networks[0]
    example = torch.zeros((1, len(model.dataset_json["channel_names"]), *model.patch_size))
    with explaining(network):
        return default_layer(network, example)


class _Theirs:
    """nnunetv2-cam's run_cam_for_prediction on nnU-Net's own predictor, as released and with the fix."""

    def __init__(self, folder: Path, out: Path, layer: str, device: str = "cpu") -> None:
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        self.device = torch.device(device)
        self.predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                         device=self.device, verbose=False, allow_tqdm=False)
        self.predictor.initialize_from_trained_model_folder(str(folder), (0,), "checkpoint_final.pth")
        self.out, self.layer = out, layer

    def _call(self, input_file: str) -> Any:
        from nnunetv2_cam.api import run_cam_for_prediction

        return run_cam_for_prediction(self.predictor, input_file, str(self.out), target_layer=self.layer,
                                      target_class=1, method="gradcam", cam_type="3d",
                                      device=self.device, save_slices=False)

    def as_released(self, files: list[str]) -> dict[str, Any]:
        try:
            self._call(files[0])
        except Exception as exc:  # noqa: BLE001 - the released code's error is the finding
            return {"runs": False, "error": f"{type(exc).__name__}: {exc}"}
        return {"runs": True, "error": None}

    def fixed(self, files: list[str], channel: int) -> tuple[np.ndarray, float, float, np.ndarray]:
        from nnunetv2_cam import api

        seen: dict[str, Any] = {}
        original_compute, original_preprocess = api.compute_cam_with_sliding_window, api._preprocess_file

        def compute(**kwargs: Any) -> torch.Tensor:
            seen["volume"] = kwargs["data"].cpu().numpy().copy()
            started = time.perf_counter()
            cam = original_compute(**kwargs)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            seen["explain_s"] = time.perf_counter() - started
            seen["map"] = cam[0].float().cpu().numpy()
            return cam

        api.compute_cam_with_sliding_window, api._preprocess_file = compute, _preprocess_case(files)
        try:
            started = time.perf_counter()
            self._call(files[0])
            total = time.perf_counter() - started
        finally:
            api.compute_cam_with_sliding_window, api._preprocess_file = original_compute, original_preprocess
        return seen["map"], seen["explain_s"], total, seen["volume"]


def _preprocess_case(files: list[str]) -> Any:
    """nnunetv2_cam.api._preprocess_file with the one fix: the case's channel files are `files`."""

    def preprocess(predictor: Any, input_file: str, output_file: str) -> tuple:
        from nnunetv2.inference.data_iterators import preprocessing_iterator_fromfiles

        iterator = preprocessing_iterator_fromfiles([sorted(files)], [None], [output_file], predictor.plans_manager,
                                                    predictor.dataset_json, predictor.configuration_manager,
                                                    num_processes=1, pin_memory=False, verbose=False)
        item = next(iterator)
        data = item["data"]
        if isinstance(data, str):
            data = torch.from_numpy(np.load(data))
        elif isinstance(data, np.ndarray):
            data = torch.from_numpy(data)
        return data, item.get("seg_from_prev_stage", None), item["data_properties"], item.get("ofile", output_file)

    return preprocess


def _case(model: Any, name: str, volume: np.ndarray, their_volume: np.ndarray, ours: np.ndarray, theirs: np.ndarray,
          channel: int, steps: int, seconds: dict[str, float]) -> dict[str, Any]:
    from scipy.stats import spearmanr

    import tumorcam

    _log(f"case {name}: maps done ({seconds}); faithfulness")
    images = torch.from_numpy(volume)[None]
    game = {"channel": channel, "steps": steps, "baseline": "zero", "score": "predicted-region", "mask_reference": False,
            "batch_size": 4, "seed": 0}
    with torch.no_grad():
        mine = tumorcam.faithfulness(model, images, torch.from_numpy(ours)[None], reference="random", **game)
        other = tumorcam.faithfulness(model, images, torch.from_numpy(theirs)[None], reference=None, **game)
    from tumorcam.evaluate.ranking import auc

    random_deletion = float(auc(mine.reference_curves.deletion, steps)[0])
    random_insertion = float(auc(mine.reference_curves.insertion, steps)[0])
    return {
        "case": name,
        "shape": list(volume.shape),
        "same_preprocessed_volume": bool(their_volume.shape == volume.shape and np.allclose(their_volume, volume, atol=1e-5)),
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "spearman": round(float(spearmanr(ours.ravel(), theirs.ravel()).statistic), 4),
        "nnunetv2_cam_map_range": [round(float(theirs.min()), 3), round(float(theirs.max()), 3)],
        "deletion_auc": {"tumorcam": round(float(mine.deletion_auc[0]), 4),
                         "nnunetv2_cam": round(float(other.deletion_auc[0]), 4), "random": round(random_deletion, 4)},
        "insertion_auc": {"tumorcam": round(float(mine.insertion_auc[0]), 4),
                          "nnunetv2_cam": round(float(other.insertion_auc[0]), 4), "random": round(random_insertion, 4)},
    }


def _mean(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def mean(values: list[float]) -> float:
        return round(float(np.mean(values)), 4)

    out: dict[str, Any] = {"seconds": {k: round(float(np.mean([r["seconds"][k] for r in rows])), 2)
                                       for k in rows[0]["seconds"]},
                           "spearman": mean([r["spearman"] for r in rows])}
    for curve in ("deletion_auc", "insertion_auc"):
        out[curve] = {who: mean([r[curve][who] for r in rows]) for who in ("tumorcam", "nnunetv2_cam", "random")}
    s = out["seconds"]
    out["explain_speedup_tumorcam_vs_nnunetv2_cam"] = round(s["nnunetv2_cam_explain_s"] / s["tumorcam_explain_s"], 2)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    report: dict[str, Any] = {
        "device": "cpu",
        "cpu": _cpu_name(),
        "cpus": len(os.sched_getaffinity(0)),
        "threads": args.threads,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "torch": torch.__version__,
        "python": platform.python_version(),
        "versions": {name: version(name) for name in ("nnunetv2", "nnunetv2-cam", "grad-cam")},
        "sections": {},
    }
    started = time.perf_counter()
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)  # nnU-Net's and nnunetv2-cam's prints (and their spawned workers') go to stderr
    try:
        report["sections"]["nnunet"] = run(args)
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
    report["sections"]["nnunet"]["wall_s"] = round(time.perf_counter() - started, 1)
    report["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(report, indent=2))


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    main()
