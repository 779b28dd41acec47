"""`run_volumes`: explain and evaluate a segmentation network on 3-D volumes, without training it.

    tumorcam run --data DATASET --model MODULE:FACTORY --weights W --out RUN
    torchrun --standalone --nproc_per_node=N --no-python tumorcam run --data DATASET --model ... --out RUN

DATASET is nnU-Net's raw layout (prepared first into RUN/prepared, see `tumorcam.data.volumes`) or
a prepared volume folder. Every case of the split is streamed through `evaluate_case` on its own
(memory stays that of one case), then the statistics are made with the case as the patient:

    volume_config.json   the settings (`tumorcam.config.Settings`, with the data, the model and its weights)
                         and the weights' sha256
    explanations/        METHOD.npy (N, S, S, S) float32 maps, index.json, nifti/CASE_METHOD.nii.gz
                         (each map resampled to its case's original grid, with its affine; uint16
                         scaled by scl_slope, to 1/65535)
    faithfulness.json    Deletion/Insertion AUCs per baseline and method vs the random map and the
                         predicted-mask control (Wilcoxon on cases, Holm; one primary comparison)
    localization.json    pointing game, energy pointing game, top-p% IoU vs the same references
    channels.json        per-sequence attribution shares and channel-ablation Dice drops
    segmentation.json    Dice of the prediction with the ground truth, per case and mean with its CI
    sanity.json          cascading randomization of the primary method on `evaluate.sanity` cases
    timings.json         seconds per stage, processes, device (the only file that differs between runs)
    report.html          orthogonal views, channel shares, verdict tables

Under `torchrun` the cases are dealt to the ranks (case i to rank i mod N); each rank writes its
cases' rows of the map files, rank 0 gathers the measurements and writes everything else. The
JSON files are the same as those of one process (the numbers of a case never depend on the others).
"""

from __future__ import annotations

import copy
import datetime
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tumorcam.errors import TumorcamError
from tumorcam.evaluate.game import warn_uninformative
from tumorcam.evaluate.headline import run_headline
from tumorcam.explain import METHODS
from tumorcam.io import write_json
from tumorcam.runs.cases import CaseResult, evaluate_case, explain_case
from tumorcam.config import Settings, preset
from tumorcam.runs.volume_settings import all_methods, check_volumes, volume_layer
from tumorcam.runfolder.folder import SETTINGS_FILE, data_label

EXPLANATIONS_DIR = "explanations"
NIFTI_DIR = "nifti"
PREPARED_DIR = "prepared"
DEFAULT_SIZE = 64
CURVES = ("deletion", "insertion")


OUTPUTS = ("volume_config.json", "faithfulness.json", "localization.json", "channels.json", "segmentation.json",
           "sanity.json", "timings.json", "report.html", "figures", EXPLANATIONS_DIR)  # what a run (re)writes
RANK_TIMEOUT = datetime.timedelta(hours=2)  # how long ranks wait for rank 0's preparing (and the demo's training)


def resolve_data(data: str | Path, out: Path, size: int | None, info: Any, log: Callable[[str], None]) -> Path:
    """The prepared volume folder of `data`: itself, or RUN/prepared made from nnU-Net's raw layout at
    `size` (default 64) by rank 0 while the others wait; a RUN/prepared made from other data or at
    another size is an error."""
    from tumorcam.data.nnunet import is_nnunet_raw
    from tumorcam.data.volumes import is_volume_folder, load_volumes, prepare_volumes
    from tumorcam.training.distributed import barrier

    data = Path(data)
    if is_volume_folder(data):
        made_at = load_volumes(data).size
        if size is not None and size != made_at:
            raise TumorcamError(f"size {size}: data {data} is already prepared, at {made_at}^3", param="size")
        return data
    if not is_nnunet_raw(data):
        raise TumorcamError(f"data {data}: neither nnU-Net's raw layout (dataset.json, imagesTr/) nor a prepared "
                            "volume folder", param="data")
    size = DEFAULT_SIZE if size is None else size
    prepared = out / PREPARED_DIR
    if is_volume_folder(prepared):
        earlier = load_volumes(prepared)
        if Path(str(earlier.manifest.get("source"))).resolve() != data.resolve():
            raise TumorcamError(f"data {data}: {prepared} was prepared from {earlier.manifest.get('source')}; "
                                "choose another out folder, or remove that folder", param="data")
        if earlier.size != size:
            raise TumorcamError(f"size {size}: {prepared} was prepared at {earlier.size}^3; give "
                                f"size {earlier.size}, or remove that folder to prepare again", param="size")
    elif info.is_main:
        began = time.perf_counter()
        manifest = prepare_volumes(data, prepared, size=size)
        log(f"prepared {manifest['count']} case(s) of {data} at {size}^3 into {prepared} "
            f"in {time.perf_counter() - began:.1f} s")
    barrier(info)
    return prepared


def clear_outputs(out: Path) -> None:
    """Remove what an earlier run on volumes wrote into `out` (`OUTPUTS`), so that no file of it
    stays beside the new ones; a slice run folder (config.json) or an nnU-Net model's run folder
    (nnunet_run.json) is refused, not cleared."""
    from tumorcam.io import remove_outputs
    from tumorcam.runfolder.folder import refuse_other_run

    refuse_other_run(out, "volumes")
    remove_outputs(out, OUTPUTS)


def run_volumes(out: str | Path, data: str | Path, *, model: str, weights: str | Path | None,
                settings: Settings | None = None, device: str = "auto", size: int | None = None,
                log: Callable[[str], None] = print) -> Path | None:
    """Explain and evaluate the network of `model` with `weights` on the cases of `data`; write the run
    folder `out` (see the module docstring; an earlier run's outputs there are replaced).

    Args:
        out: the run folder.
        data: nnU-Net's raw layout (prepared first into RUN/prepared) or a prepared volume folder.
        model: MODULE:FACTORY of the network.
        weights: its weights (None: as the factory makes it).
        settings: the run's settings (`tumorcam.config.Settings`; None: the `own-model` preset).
        device: auto, cpu, cuda or cuda:N.
        size: the size an nnU-Net raw folder is prepared at (default 64).
        log: receives the progress lines.

    Returns:
        The path of the report (rank 0; the other ranks return None once their cases are gathered).

    Raises:
        TumorcamError: for a `data` that is neither layout, a prepared folder made from other data or
            at another size, an `out` that holds a run on slices or an nnU-Net model's run, a split without cases, or a model
            that fails on the volumes or returns the wrong shape.
    """
    from tumorcam.data.volumes import load_volumes
    from tumorcam.explain.layers import default_layer
    from tumorcam.training.distributed import barrier, gather_to_main, refuse_several_machines, start, stop
    from tumorcam.models.user import load_user_model

    settings = copy.deepcopy(settings or preset("own-model"))  # the split and layer are filled in on this copy
    check_volumes(settings)
    refuse_several_machines("run")
    out = Path(out)
    info, dev = start(device, timeout=RANK_TIMEOUT)
    folder = out / EXPLANATIONS_DIR
    partial = {m: folder / f".{m}.npy.partial" for m in all_methods(settings)}
    try:
        timings: dict[str, float] = {}
        began = time.perf_counter()
        network = load_user_model(model, weights).to(dev).eval()  # a wrong --model fails before any work
        root = resolve_data(data, out, size, info, log)
        prepared = load_volumes(root)
        settings.explain.split = resolve_split(prepared, settings.explain.split, settings.explain.patients,
                                               warn=info.is_main)
        rows = prepared.indices(settings.explain.split)
        if settings.explain.patients is not None:
            rows = rows[:settings.explain.patients]
        if len(rows) == 0:
            raise TumorcamError(f"split {settings.explain.split}: no case in {root}", param="split")
        images, _ = prepared.tensors(rows[:1])
        check_model(network, images.to(dev), settings, model, root)
        if volume_layer(settings) is None and any(METHODS[m].uses_layer for m in settings.explain.methods):
            settings.explain.layers = [default_layer(network, images.to(dev))]
            log(f"layer: {volume_layer(settings)} (the last convolution block before the head)")
        if info.is_main:
            clear_outputs(out)
            (folder / NIFTI_DIR).mkdir(parents=True)
            for path in partial.values():
                np.lib.format.open_memmap(path, mode="w+", dtype=np.float32,
                                          shape=(len(rows), *prepared.images.shape[2:])).flush()
        barrier(info)
        timings["load"] = time.perf_counter() - began

        began = time.perf_counter()
        files = {m: np.lib.format.open_memmap(path, mode="r+") for m, path in partial.items()}
        results: list[CaseResult] = []
        for i in _progress(list(range(info.rank, len(rows), info.world_size)), info.is_main):
            image, mask = prepared.tensors(rows[i:i + 1])
            maps = explain_case(network, image.to(dev), i, settings)
            result = evaluate_case(network, image.to(dev), mask.to(dev), i, settings, maps)
            for method, heatmap in result.maps.items():
                files[method][i] = heatmap
            write_case_maps(folder / NIFTI_DIR, prepared, int(rows[i]), result.maps, settings)
            results.append(result.without_maps())
        for array in files.values():
            array.flush()
        del files
        gathered = gather_to_main(results, info)
        timings["explain_and_evaluate"] = time.perf_counter() - began
        if not info.is_main:
            return None
        assert gathered is not None
        gathered.sort(key=lambda r: r.index)
        header = {"data": data_label(Path(data), out), "prepared": data_label(root, out), "split": settings.explain.split,
                  "n_cases": len(rows), "case_ids": np.asarray(prepared.case_ids[rows]).astype(str).tolist(),
                  "size": prepared.size, "channels": list(prepared.channels)}

        began = time.perf_counter()
        faithfulness = faithfulness_file(gathered, settings, header)  # written with its headline, after sanity
        write_json(out / "localization.json", localization_file(gathered, settings, header))
        write_json(out / "channels.json", channels_file(np.stack([r.shares for r in gathered]),
                                                        np.stack([r.dice_drop for r in gathered]), settings, header))
        write_json(out / "segmentation.json", segmentation_file(gathered, settings, header))
        timings["statistics"] = time.perf_counter() - began

        began = time.perf_counter()
        sanity = sanity_file(network, prepared, rows, settings, header, dev)
        write_json(out / "sanity.json", sanity)
        timings["sanity"] = time.perf_counter() - began
        faithfulness["headline"] = run_headline(faithfulness, sanity, unit="case")
        write_json(out / "faithfulness.json", faithfulness)

        began = time.perf_counter()
        from tumorcam.runfolder.folder import file_sha256
        from tumorcam.report.volume_page import build_volume_report

        for method, path in partial.items():
            os.replace(path, folder / f"{method}.npy")
        weights_sha256 = None if weights is None else file_sha256(Path(weights))
        write_map_index(folder, settings, header, weights_sha256)
        settings.data, settings.model.network = header["data"], model
        settings.model.weights = None if weights is None else str(weights)
        write_json(out / SETTINGS_FILE, {**settings.to_dict(), "weights_sha256": weights_sha256})
        report = build_volume_report(out)
        timings["report"] = time.perf_counter() - began
        write_json(out / "timings.json", {"seconds": {k: round(v, 3) for k, v in timings.items()},
                                          "processes": info.world_size, "device": str(dev)})
        return report
    finally:
        if info.is_main:
            for path in partial.values():  # a run that stopped leaves no half-written map file
                path.unlink(missing_ok=True)
        stop(info)


def resolve_split(prepared: Any, split: str | None, cases: int | None = None, warn: bool = True) -> str:
    """The split a run evaluates: `split`, or (None) `test` when the prepared volumes have a test split,
    else `all`. A split with training cases (`train`, `all`) when there is a test split warns
    (`TumorcamWarning`, when `warn`): the Dice and the verdicts then include cases a model trained on
    the split may have seen."""
    from tumorcam.data.arrays import warn_training_split

    if split is None:
        return "test" if list(prepared.splits.get("test", [])) else "all"
    if warn:
        warn_training_split(prepared.splits, split, np.asarray(prepared.case_ids).astype(str),
                            prepared.indices(split)[:cases], "case")
    return split


def check_model(network: torch.nn.Module, images: torch.Tensor, settings: Settings, spec: str,
                root: Path) -> None:
    """One forward of the first case: the network must take the prepared volumes (C, S, S, S) and
    return logits (1, C_out, S, S, S) with the class `channel`; else one error naming `model`."""
    from tumorcam.explain.methods.base import Logits
    from tumorcam.models.user import first_line

    shape = tuple(images.shape[1:])
    try:
        with torch.no_grad():
            logits = Logits(network, settings.explain.output)(images)
    except TumorcamError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's network failed on our input
        raise TumorcamError(f"model {spec}: fails on the volumes of {root} (one case is {shape}: "
                            f"{shape[0]} sequences): {first_line(exc)}", param="model") from None
    if logits.dim() != 5 or tuple(logits.shape[2:]) != shape[1:]:
        raise TumorcamError(f"model {spec}: returned {tuple(logits.shape)} for input (1, {', '.join(map(str, shape))});"
                            " a run on volumes needs logits (1, C_out, D, H, W) on the input's grid", param="model")
    if not 0 <= settings.explain.channel < logits.shape[1]:
        raise TumorcamError(f"channel {settings.explain.channel}: model {spec} has {logits.shape[1]} output channel(s)",
                            param="channel")


def _progress(items: list[int], show: bool) -> Any:
    if not show:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc="cases (explain, game, channels)", unit="case", total=len(items))


def _row_layer(method: str, settings: Settings) -> str:
    from tumorcam.explain import INPUT_LAYER

    return str(volume_layer(settings)) if METHODS[method].uses_layer else INPUT_LAYER


def _describe(method: str, settings: Settings) -> dict[str, Any]:
    return {"method": method, "target": "none" if method == "random" else settings.explain.targets[0],
            "layer": _row_layer(method, settings), "model": "trained", "control": METHODS[method].control}


def write_map_index(folder: Path, settings: Settings, header: dict[str, Any],
                    weights_sha256: str | None) -> None:
    """explanations/index.json of a run on volumes: `header`, the weights' hash and one entry per method
    and control (its METHOD.npy, target, layer, control flag and the explained channel)."""
    entries = [{**_describe(m, settings), "file": f"{m}.npy", "channel": settings.explain.channel}
               for m in all_methods(settings)]
    write_json(folder / "index.json", {**header, "weights_sha256": weights_sha256, "entries": entries})


def write_case_maps(target: Path, prepared: Any, row: int, maps: dict[str, np.ndarray],
                    settings: Settings) -> None:
    """One case's maps of the methods (controls left out), resampled (trilinear, which keeps them in
    [0, 1]) to the case's original shape, as target/CASE_METHOD.nii.gz with the case's affine,
    stored as uint16 scaled by scl_slope (to 1/65535, half the bytes of float32)."""
    import torch.nn.functional as F

    from tumorcam.data.nnunet import write_nifti

    shape = tuple(int(n) for n in prepared.shapes[row])
    for method in settings.explain.methods:
        if METHODS[method].control:
            continue
        volume = torch.from_numpy(np.asarray(maps[method], dtype=np.float32))[None, None]
        if tuple(volume.shape[2:]) != shape:
            volume = F.interpolate(volume, size=shape, mode="trilinear", align_corners=False)
        write_nifti(target / f"{prepared.case_ids[row]}_{method}.nii.gz", volume[0, 0].numpy(),
                    np.asarray(prepared.affines[row]), dtype=np.uint16)


CASE_KEYS = {"n_slices": "n_cases", "per_slice": "per_case"}  # the shared summaries' names, for volumes


def case_keys(doc: Any) -> Any:
    """`doc` with the keys that the shared statistics name after slices (`CASE_KEYS`) named after
    cases, at any depth: a volume run's files count cases."""
    if isinstance(doc, dict):
        return {CASE_KEYS.get(key, key): case_keys(value) for key, value in doc.items()}
    if isinstance(doc, list):
        return [case_keys(value) for value in doc]
    return doc


def _stack(results: list[CaseResult], field: str, key: Any) -> np.ndarray:
    return np.stack([getattr(r, field)[key] for r in results])


def faithfulness_file(results: list[CaseResult], settings: Settings, header: dict[str, Any]) -> dict[str, Any]:
    """faithfulness.json of a run on volumes: one row per (baseline, method) like the slices' file,
    the case as the patient; Holm over the primary pair and over the rest of the file."""
    from tumorcam.evaluate.ranking import auc, step_fractions
    from tumorcam.evaluate.summary import adjust_file, finite_list, metric_summary

    case_ids = np.asarray(header["case_ids"])
    rows = []
    for baseline in settings.evaluate.baselines:
        for method in all_methods(settings):
            row: dict[str, Any] = {**_describe(method, settings), "baseline": baseline, "score": settings.evaluate.score}
            for name in CURVES:
                raw = _stack(results, name, (baseline, method))
                references = {
                    "random": None if method == "random" else auc(_stack(results, name, (baseline, "random")),
                                                                  settings.evaluate.steps),
                    "mask": None if method in ("random", "predicted-mask") else
                    auc(_stack(results, name, (baseline, "predicted-mask")), settings.evaluate.steps)}
                row[name] = metric_summary(auc(raw, settings.evaluate.steps), references, case_ids,
                                           lower_is_better=name == "deletion", test="wilcoxon",
                                           resamples=settings.evaluate.bootstrap, seed=settings.evaluate.seed, curves=raw,
                                           alpha=settings.evaluate.alpha)
                row[name]["unit"] = "patient"
            row["per_case"] = {name: finite_list(auc(_stack(results, name, (baseline, method)), settings.evaluate.steps))
                               for name in CURVES}
            row["n_maps"], row["n_flat_maps"] = len(results), sum(r.flat[method] for r in results)
            rows.append(row)
    primary = {"method": settings.evaluate.primary.method, "target": settings.explain.targets[0],
               "layer": _row_layer(settings.evaluate.primary.method, settings), "baseline": settings.evaluate.baselines[0]}
    adjust_file(rows, CURVES, primary=primary, alpha=settings.evaluate.alpha)
    effects = {name: float(np.nanmedian([r.baseline_effects.get(name, np.nan) for r in results]))
               for name in dict.fromkeys(n for r in results for n in r.baseline_effects)}
    warn_uninformative(effects, len(results), unit="case")
    effects = {name: finite_list([value])[0] for name, value in effects.items()}
    return {**header, "unit": "patient (one case = one patient)", "primary": primary, "alpha": settings.evaluate.alpha,
            "steps": settings.evaluate.steps, "schedule": settings.evaluate.schedule,
            "fractions": step_fractions(settings.evaluate.steps, settings.evaluate.schedule).tolist(), "score": settings.evaluate.score,
            "baselines": settings.evaluate.baselines, "baseline_effects": effects, "seed": settings.evaluate.seed,
            "bootstrap": settings.evaluate.bootstrap, "results": case_keys(rows)}


def localization_file(results: list[CaseResult], settings: Settings, header: dict[str, Any]) -> dict[str, Any]:
    """localization.json of a run on volumes: per method the three metrics against the ground truth,
    vs the random map and the predicted-mask control, Holm over the file (all exploratory)."""
    from tumorcam.evaluate.localization import METRICS, TESTS
    from tumorcam.evaluate.summary import adjust_file, metric_summary

    case_ids = np.asarray(header["case_ids"])

    def values(method: str, metric: str) -> np.ndarray:
        return np.array([r.localization[method][metric] for r in results], dtype=np.float64)

    rows = []
    for method in all_methods(settings):
        row: dict[str, Any] = _describe(method, settings)
        for metric in METRICS:
            references = {"random": None if method == "random" else values("random", metric),
                          "mask": None if method in ("random", "predicted-mask") else values("predicted-mask", metric)}
            row[metric] = metric_summary(values(method, metric), references, case_ids, lower_is_better=False,
                                         test=TESTS[metric], resamples=settings.evaluate.bootstrap, seed=settings.evaluate.seed,
                                         alpha=settings.evaluate.alpha)
            row[metric]["unit"] = "patient"
        rows.append(row)
    adjust_file(rows, METRICS, primary=None, alpha=settings.evaluate.alpha)
    return {**header, "unit": "patient (one case = one patient)", "top_percent": settings.evaluate.top_percent,
            "alpha": settings.evaluate.alpha, "results": case_keys(rows)}


def channels_file(shares: np.ndarray, dice_drop: np.ndarray, settings: Settings,
                  header: dict[str, Any]) -> dict[str, Any]:
    """channels.json: each input sequence's attribution share and channel-ablation Dice drop, the
    cases' (N, C_in) `shares` and `dice_drop`."""
    from tumorcam.evaluate.channels import ChannelResult

    result = ChannelResult(shares=shares, dice_drop=dice_drop,
                           unit_ids=np.asarray(header["case_ids"]), unit="patient",
                           channel_names=tuple(header["channels"]),
                           settings={"method": settings.evaluate.channel_method, "baseline": settings.evaluate.ablation_baseline,
                                     "target": settings.explain.targets[0], "channel": settings.explain.channel, "ig_steps": settings.explain.ig_steps,
                                     "seed": settings.evaluate.seed})
    return {**header, "method": settings.evaluate.channel_method, "ablation_baseline": settings.evaluate.ablation_baseline,
            "summary": case_keys(result.summary(bootstrap=settings.evaluate.bootstrap, alpha=settings.evaluate.alpha))}


def segmentation_file(results: list[CaseResult], settings: Settings, header: dict[str, Any]) -> dict[str, Any]:
    """segmentation.json: Dice of the prediction with the ground truth per case, and its mean with a
    bootstrap CI over cases (each case one patient)."""
    from tumorcam.evaluate.stats import bootstrap_ci
    from tumorcam.evaluate.summary import finite_list

    values = np.array([r.dice for r in results], dtype=np.float64)
    return {**header, "unit": "patient (one case = one patient)",
            "dice": bootstrap_ci(values, resamples=settings.evaluate.bootstrap, seed=settings.evaluate.seed),
            "per_case": {"dice": finite_list(values), "predicted_voxels": [r.predicted_voxels for r in results]}}


def sanity_file(network: torch.nn.Module, prepared: Any, rows: np.ndarray, settings: Settings,
                header: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """sanity.json: cascading randomization of the primary method's maps on the first `evaluate.sanity`
    cases (None: every case of the run; 0: skipped), one case at a time (memory stays that of one
    case), each case one patient: the verdict of `SanityResult` on the cases' mean |rho| and mean
    SSIM (region fixed from the intact model, compared inside each volume's foreground). One row in
    `results`, shaped as a row of the slices' sanity.json (docs/evaluate.md); its `verdict`, `reason`,
    `passes`, `n_compared`, `mean_abs_spearman` and (as `mean_ssim`) `ssim` are repeated at the top."""
    from tumorcam.evaluate.sanity import MIN_PATIENTS, SanityResult, sanity

    count = len(rows) if settings.evaluate.sanity is None else min(settings.evaluate.sanity, len(rows))
    if count == 0:
        return {**header, "skipped": "evaluate.sanity is 0"}
    case_ids = [str(c) for c in header["case_ids"][:count]]
    layer = None if not METHODS[settings.evaluate.primary.method].uses_layer else volume_layer(settings)
    parts = []
    for i in range(count):
        image, _ = prepared.tensors(rows[i:i + 1])
        try:
            parts.append(sanity(network, image.to(device), method=settings.evaluate.primary.method, target=settings.explain.targets[0],
                                layer=layer, channel=settings.explain.channel, output=settings.explain.output,
                                ig_steps=settings.explain.ig_steps, seed=settings.evaluate.seed, patient_ids=case_ids[i:i + 1],
                                min_patients=MIN_PATIENTS, bootstrap=settings.evaluate.bootstrap, batch_size=1))
        except torch.cuda.OutOfMemoryError:
            raise TumorcamError(f"sanity: case {case_ids[i]} of {tuple(image.shape[1:])} does not fit in the "
                                f"memory of {device} for the sanity check; prepare the volumes at a smaller size, or "
                                "set evaluate.sanity 0 in the settings", param="sanity") from None
    return sanity_document(SanityResult.concat(parts), settings, header, case_ids, layer)


def sanity_document(result: Any, settings: Settings, header: dict[str, Any], case_ids: list[str],
                    layer: str | None) -> dict[str, Any]:
    """sanity.json of a run on cases from the `SanityResult` of its cases (`sanity_file`)."""
    from tumorcam.evaluate.sanity import CRITERION, FOREGROUND, LEVEL, THRESHOLD_SOURCE, region_source, result_row

    count = len(case_ids)
    row = {"method": settings.evaluate.primary.method, "target": settings.explain.targets[0], "layer": layer,
           "region": region_source(settings.explain.targets[0]), **result_row(result)}
    return {**header, "method": settings.evaluate.primary.method, "target": settings.explain.targets[0], "n_cases": count,
            "case_ids": case_ids, "n_patients": count, "unit": "patient (one case = one patient)",
            "stages": result.stages, "threshold": result.threshold, "criterion": CRITERION,
            "threshold_source": THRESHOLD_SOURCE, "min_patients": result.min_patients, "bootstrap": settings.evaluate.bootstrap,
            "level": LEVEL, "foreground": FOREGROUND, "seed": settings.evaluate.seed,
            "mean_abs_spearman": row["mean_abs_spearman"], "mean_ssim": row["ssim"], "n_compared": row["n_compared"],
            "verdict": row["verdict"], "reason": row["reason"], "passes": row["passes"], "results": [row]}


def run_volume_demo(out: str | Path, *, settings: Settings | None = None, cases: int = 100, size: int = 32,
                    epochs: int = 30, device: str = "auto", seed: int = 0, threads: int | None = None,
                    log: Callable[[str], None] = print) -> Path | None:
    """The volume demo: synthetic volumes in nnU-Net's layout (OUT/synthetic-volumes), prepared at
    `size`^3, the demo U-Net trained on their train split (OUT/demo_unet.safetensors; kept when it
    exists), then `run_volumes` on the test split, on `threads` CPU threads (`cpu_threads`: 0 is automatic;
    None: `demo_threads()`, fixed whatever the load, so that the figures are the same on every run). Returns the report's path (None on ranks other than 0)."""
    from tumorcam.data.synth_volumes import write_synthetic_volumes
    from tumorcam.data.volumes import is_volume_folder, prepare_volumes
    from tumorcam.device import cpu_threads, demo_threads, resolve_device
    from tumorcam.io import write_json as write
    from tumorcam.training.distributed import barrier, start
    from tumorcam.training.volumes import DEMO_MODEL, train_demo_unet

    out = Path(out)
    raw, prepared, weights = out / "synthetic-volumes", out / PREPARED_DIR, out / "demo_unet.safetensors"
    info, _ = start(device, timeout=RANK_TIMEOUT)
    # fixed, not from the load, unless asked: the thread count changes the figures
    torch.set_num_threads(demo_threads() if threads is None else cpu_threads(threads))
    if info.is_main:
        if not (raw / "dataset.json").is_file():
            write_synthetic_volumes(raw, cases=cases, size=size, seed=seed)
            log(f"wrote {cases} synthetic cases (T1, T1CE, T2, FLAIR) in nnU-Net's layout to {raw}")
        if not is_volume_folder(prepared):
            prepare_volumes(raw, prepared, size=size, seed=seed)
        if not weights.is_file():
            began = time.perf_counter()
            history = train_demo_unet(prepared, weights, epochs=epochs, seed=seed, device=resolve_device(device),
                                      log=log)
            history["seconds"] = round(time.perf_counter() - began, 3)
            write(out / "demo_training.json", history)
            log(f"trained the demo 3-D U-Net in {history['seconds']:.0f} s: validation Dice "
                f"{history['val_dice_mean']:.3f} ({history['val_cases']} cases)")
    barrier(info)
    settings = settings or preset("demo-3d")
    return run_volumes(out, prepared, model=DEMO_MODEL, weights=weights, settings=settings, device=device, log=log)
