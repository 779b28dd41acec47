"""The nnU-Net section: a small nnU-Net v2 model planned, preprocessed and trained here, then on the device
tumorcam's nnU-Net Grad-CAM per case, the stitched forward against nnU-Net's own `nnUNetPredictor`, one
`run_nnunet`, and nnunetv2-cam's Grad-CAM where it is installed.

- `build`: tests/nnunet_model.py's `prepare_root` (tumorcam's synthetic raw dataset, 8 cases of size 32,
  nnU-Net's fingerprint / plan / preprocess in a child process) and `train_model` (3d_fullres, Adam on
  random crops, on the device; GPU: more steps on whole patches), seconds of each.
- `explain`: `tumorcam.nnunet.load(folder).to(device)`, then per raw case (size `case_size`, spacing
  nnunet_model.BIG_SPACING): `model.preprocess` and `model.explain(volume, "edema")` (Grad-CAM at the
  default layer, tile by tile); `seconds_per_case` is the median explanation time of the cases after the
  first (the first pays cuDNN autotuning; all of them when there is one).
- `agreement`: per case, the segmentation of tumorcam's stitched forward against nnUNetPredictor's on the
  same device (tile step 0.5, Gaussian, no mirroring; nnU-Net runs its network under fp16 autocast on
  CUDA): the fraction of voxels with the same label on the preprocessed grid (argmax of both logits) and
  on the raw grid (`predict_single_npy_array` against nnU-Net's export of tumorcam's logits), and the
  seconds of each sliding window on the preprocessed volume.
- `run`: `tumorcam.nnunet.run.run_nnunet` on `run_cases` synthetic raw cases of size `run_size` (Grad-CAM,
  zero baseline, `steps` Deletion/Insertion steps, the sanity check on one case): seconds, and from its
  faithfulness.json the headline level and the Deletion/Insertion AUC means of gradcam and random.
- `nnunetv2_cam`: benchmarks/bench_nnunet.py's nnunetv2-cam call (its fixed preprocessing, the predictor
  on the same device) on the first case: seconds per case against tumorcam's, Spearman of the two maps;
  skipped with the reason when nnunetv2-cam, pytorch-grad-cam or SimpleITK is not installed.

SimpleITK (a 53 MB wheel) and connected-components-3d (cc3d, 5 MB) are not carried to the GPU machine:
nnU-Net and acvl-utils import them at module level, but the section's paths never call them (cc3d:
nnU-Net's post-processing and cascade transforms). Where one is missing, a stand-in module whose every
attribute is missing lets them import (`build.stand_ins`); nnU-Net's planner then finds that SimpleITKIO
cannot read the .nii.gz cases and picks NibabelIO, recorded under `build.reader_writer`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from gpu_proof.timebox import ROOT, Recorder, clean, say

LABEL = "edema"
GPU_SIZES: dict[str, Any] = {"train_steps": 300, "train_crop": None, "explain_cases": 3, "case_size": 96,
                             "run_cases": 3, "run_size": 48, "steps": 16, "bootstrap": 200}
SMOKE_SIZES: dict[str, Any] = {"train_steps": 4, "train_crop": (16, 16, 16), "explain_cases": 1, "case_size": 40,
                               "run_cases": 1, "run_size": 32, "steps": 4, "bootstrap": 20}
STAND_INS = ("SimpleITK", "cc3d")  # imported at module level by nnU-Net / acvl-utils, never called here
STAND_IN = '''"""gpu_proof's stand-in for {name}, which this machine lacks: every attribute is missing."""


def __getattr__(name):
    raise AttributeError(f"{name} is not installed here (gpu_proof stand-in): {name}.{{name}}")
'''


def installed(name: str) -> bool:
    """Whether the module `name` can be found here."""
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:
        return False


def available() -> str | None:
    """None when nnunetv2 can be imported here, else why the section is skipped."""
    if not installed("nnunetv2"):
        return "nnunetv2 is not installed (its wheels were not carried; see docs/performance.md)"
    return None


def measure(record: Recorder, sizes: dict[str, Any], device: str, work: Path) -> None:
    """The nnunet step: `build`, `explain`, `agreement`, `run`, `nnunetv2_cam` (see the module docstring).

    Args:
        record: the step's results.
        sizes: GPU_SIZES or SMOKE_SIZES.
        device: auto, cuda or cpu.
        work: a scratch folder (created).
    """
    import torch

    from tumorcam.device import resolve_device

    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    stand_ins = _stand_ins(work)
    sys.path.insert(0, str(ROOT / "tests"))
    from nnunet_model import DATASET, prepare_root, train_model

    dev = resolve_device(device)
    record.set("sizes", sizes)
    record.set("device", str(dev))
    record.set("versions", _versions())
    root = work / "model"
    try:
        files, planned = prepare_root(root)
    except Exception as exc:  # a failed plan/preprocess child: its stderr says why
        tail = getattr(exc, "stderr", "") or ""
        raise RuntimeError(f"plan and preprocess failed: {tail[-400:]}") from exc
    plans = json.loads((root / "preprocessed" / DATASET / "nnUNetPlans.json").read_text())
    patch = tuple(plans["configurations"]["3d_fullres"]["patch_size"])
    crop = tuple(sizes["train_crop"] or patch)
    folder, trained = train_model(root, "3d_fullres", steps=sizes["train_steps"], crop=crop, device=dev.type)
    build = {"plan_and_preprocess_s": round(planned, 1), "train_s": round(trained, 1), "train_steps": sizes["train_steps"],
             "train_crop": list(crop), "patch_size": list(patch), "train_device": dev.type,
             "reader_writer": plans.get("image_reader_writer"), "stand_ins": stand_ins}
    record.set("build", build)
    say(f"nnunet: model built ({build})")

    import tumorcam.nnunet
    from nnunet_model import _write_big_case

    model = tumorcam.nnunet.load(folder).to(dev)
    cases_dir = work / "cases"
    cases_dir.mkdir(exist_ok=True)
    cases = [_write_big_case(cases_dir, f"CASE{i}", seed=i + 2, size=sizes["case_size"])
             for i in range(sizes["explain_cases"])]

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    rows, volumes = [], []
    for files in cases:
        started = time.perf_counter()
        volume, properties = model.preprocess(files)
        preprocess_s = time.perf_counter() - started
        sync()
        started = time.perf_counter()
        result = model.explain(volume, LABEL)
        sync()
        explain_s = time.perf_counter() - started
        volumes.append((files, volume, properties, result))
        rows.append({"shape": list(volume.shape), "preprocess_s": round(preprocess_s, 3), "explain_s": round(explain_s, 3)})
        record.set("explain", _explain_summary(rows, result.layer, model))
    say(f"nnunet: explain {record.data['explain']['seconds_per_case']} s per case")

    record.set("agreement", _agreement(model, folder, volumes, dev, sync))
    say(f"nnunet: agreement {record.data['agreement']['summary']}")

    record.set("run", _run(work, folder, sizes, dev, record))
    say(f"nnunet: run_nnunet {record.data['run'].get('seconds')} s, level {record.data['run'].get('headline_level')}")

    record.set("nnunetv2_cam", _nnunetv2_cam(work, folder, volumes[0], model, stand_ins, dev))


def _stand_ins(work: Path) -> list[str]:
    """The modules of STAND_INS that are missing here, each given a stand-in first on sys.path and on
    PYTHONPATH (nnU-Net's plan/preprocess child); returns their names."""
    missing = [name for name in STAND_INS if not installed(name)]
    if not missing:
        return []
    folder = work / "stand_in"
    for name in missing:
        (folder / name).mkdir(parents=True, exist_ok=True)
        (folder / name / "__init__.py").write_text(STAND_IN.format(name=name))
    sys.path.insert(0, str(folder))
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH")) if p)
    return missing


def _versions() -> dict[str, str]:
    from importlib import metadata

    versions = {}
    for name in ("nnunetv2", "dynamic-network-architectures", "acvl-utils", "batchgenerators", "batchgeneratorsv2",
                 "blosc2", "ndindex", "nibabel", "simpleitk", "connected-components-3d", "nnunetv2-cam",
                 "grad-cam"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def _explain_summary(rows: list[dict[str, Any]], layer: str, model: Any) -> dict[str, Any]:
    timed = [r["explain_s"] for r in (rows[1:] if len(rows) > 1 else rows)]
    return {"label": LABEL, "method": "gradcam", "layer": layer, "folds": len(model.networks),
            "patch_size": list(model.patch_size), "cases": rows, "first_case_s": rows[0]["explain_s"],
            "seconds_per_case": round(statistics.median(timed), 3),
            "preprocess_s_per_case": round(statistics.median(r["preprocess_s"] for r in rows), 3)}


def _agreement(model: Any, folder: Path, volumes: list[tuple], dev: Any, sync: Any) -> dict[str, Any]:
    """tumorcam's stitched forward against nnUNetPredictor on the same device, per case."""
    import numpy as np
    import torch
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                perform_everything_on_device=dev.type == "cuda", device=dev, verbose=False,
                                verbose_preprocessing=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(folder), (0,), "checkpoint_final.pth")
    reader = model.plans_manager.image_reader_writer_class()
    rows = []
    for files, volume, properties, _ in volumes:
        data = torch.from_numpy(volume)
        with torch.no_grad():
            for _ in range(2):  # the second of each is timed (the first pays cuDNN autotuning)
                sync()
                started = time.perf_counter()
                theirs = predictor.predict_sliding_window_return_logits(data)
                sync()
                their_s = time.perf_counter() - started
                started = time.perf_counter()
                ours = model(data[None].to(dev))[0]
                sync()
                our_s = time.perf_counter() - started
        same = float((theirs.float().argmax(0).cpu() == ours.float().argmax(0).cpu()).float().mean())
        image, image_properties = reader.read_images(files)
        raw_theirs = predictor.predict_single_npy_array(image, image_properties)
        raw_ours = convert_predicted_logits_to_segmentation_with_correct_shape(
            ours.float().cpu(), model.plans_manager, model.configuration_manager, model.label_manager, properties)
        rows.append({"preprocessed_agreement": round(same, 6),
                     "raw_agreement": round(float(np.mean(raw_theirs == raw_ours)), 6),
                     "foreground_voxels_nnunet": int((raw_theirs > 0).sum()),
                     "tumorcam_forward_s": round(our_s, 4), "nnunet_sliding_window_s": round(their_s, 4),
                     "max_abs_logit_diff": round(float((theirs.float().cpu() - ours.float().cpu()).abs().max()), 4)})
    summary = {"min_preprocessed_agreement": min(r["preprocessed_agreement"] for r in rows),
               "min_raw_agreement": min(r["raw_agreement"] for r in rows),
               "tumorcam_forward_s": round(statistics.median(r["tumorcam_forward_s"] for r in rows), 4),
               "nnunet_sliding_window_s": round(statistics.median(r["nnunet_sliding_window_s"] for r in rows), 4)}
    return {"predictor": {"tile_step_size": 0.5, "use_gaussian": True, "use_mirroring": False,
                          "precision": "fp16 autocast on CUDA (nnU-Net's default)" if dev.type == "cuda" else "fp32"},
            "tumorcam_precision": "fp32", "cases": rows, "summary": summary}


def _run(work: Path, folder: Path, sizes: dict[str, Any], dev: Any, record: Recorder) -> dict[str, Any]:
    """One `run_nnunet` on fresh synthetic raw cases: seconds, headline and AUC means (its progress lines
    recorded as they come, so a run stopped at the step's timeout shows how far it got)."""
    from nnunet_model import DATASET

    from tumorcam.config import preset
    from tumorcam.data.synth_volumes import write_synthetic_volumes
    from tumorcam.nnunet.run import run_nnunet

    raw = write_synthetic_volumes(work / "run_raw" / DATASET, cases=sizes["run_cases"], size=sizes["run_size"], seed=1)
    settings = preset("own-model").replace({"explain.methods": ["gradcam"], "evaluate.steps": sizes["steps"],
                                            "evaluate.baselines": ["zero"], "evaluate.bootstrap": sizes["bootstrap"],
                                            "evaluate.sanity": 1})
    out = work / "run"
    lines: list[str] = []
    started = time.perf_counter()

    def log(line: str) -> None:
        lines.append(f"{time.perf_counter() - started:.1f} s: {line}")
        record.set("run", {"progress": lines})

    run_nnunet(out, raw, folder, label=LABEL, cases=sizes["run_cases"], settings=settings, device=str(dev), log=log)
    seconds = time.perf_counter() - started
    faith = json.loads((out / "faithfulness.json").read_text())
    aucs = {}
    for row in faith["results"]:
        if row["method"] in ("gradcam", "random") and row["baseline"] == "zero":
            aucs[row["method"]] = {curve: clean(row[curve].get("mean")) for curve in ("deletion", "insertion")}
            for curve in ("deletion", "insertion"):
                verdict = (row[curve].get("vs_random") or {}).get("verdict")
                if verdict is not None:
                    aucs[row["method"]][f"{curve}_verdict"] = verdict
    headline = faith.get("headline") or {}
    return {"cases": sizes["run_cases"], "case_size": sizes["run_size"], "steps": sizes["steps"], "seconds": round(seconds, 1),
            "seconds_per_case": round(seconds / sizes["run_cases"], 2), "headline_level": headline.get("level"),
            "headline_reason": headline.get("reason"), "auc_means": aucs, "progress": lines}


def _nnunetv2_cam(work: Path, folder: Path, case: tuple, model: Any, stand_ins: list[str], dev: Any) -> dict[str, Any]:
    """nnunetv2-cam's Grad-CAM on the first case (bench_nnunet's call), or why it is skipped."""
    missing = [name for name in ("nnunetv2_cam", "pytorch_grad_cam") if not installed(name)]
    if "SimpleITK" in stand_ins:
        missing.append("SimpleITK (a 53 MB wheel: more than the 64 MiB carry leaves)")
    if missing:
        return {"skipped": f"not installed: {', '.join(missing)}"}
    from bench_nnunet import _Theirs
    from scipy.stats import spearmanr

    files, volume, _, ours = case
    theirs = _Theirs(folder, work / "nncam", ours.layer, device=str(dev))
    their_map, explain_s, total_s, their_volume = theirs.fixed(files, ours.channel)
    return {"version": _versions().get("nnunetv2-cam"), "device": str(dev), "layer": ours.layer,
            "explain_s": round(explain_s, 3), "end_to_end_s": round(total_s, 3),
            "same_preprocessed_volume": bool(their_volume.shape == volume.shape),
            "spearman_vs_tumorcam": round(float(spearmanr(ours.heatmap.ravel(), their_map.ravel()).statistic), 4),
            "note": "as benchmarks/bench_nnunet.py runs it: its preprocessing given the case's 4 channel files"}
