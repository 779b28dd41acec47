"""The run-folder stage of `tumorcam.evaluate.faithfulness`: `evaluate_faithfulness`, `write_headline`, `references`."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tumorcam.config import EvaluateConfig
from tumorcam.evaluate.baselines import curve_baselines
from tumorcam.evaluate.faithfulness import MASK_CONTROL, check_options, target_score
from tumorcam.evaluate.game import (
    CURVES,
    Curves,
    PerturbationGame,
    baseline_effect,
    least_effect,
    warn_uninformative,
)
from tumorcam.evaluate.headline import run_headline
from tumorcam.evaluate.ranking import auc, step_fractions
from tumorcam.evaluate.summary import (
    adjust_file,
    finite_list,
    metric_summary,
)
from tumorcam.guards import count_flat
from tumorcam.runfolder.index import Entry as MapEntry


def evaluate_faithfulness(
    run: str | Path,
    data: str | Path | None = None,
    split: str | None = None,
    steps: int | None = None,
    baselines: list[str] | None = None,
    score: str | None = None,
    schedule: str | None = None,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    patients: int | None = None,
    slices_per_patient: int | None = None,
) -> dict[str, Any]:
    """Deletion/Insertion of every trained-model map of RUN/explanations; writes RUN/faithfulness.json.

    The maps are the methods, the controls and the random map; each row has its patient-level AUC
    summary against the random map (`vs_random`) and the predicted-mask control (`vs_mask`) of the
    same target, Holm-adjusted over the file. Every map is scored by `target_score(map target,
    score)`; the maps it is compared with are scored with the same score. One `PerturbationGame` per
    (baseline, score) plays every map that needs that score. Settings left as None come from the
    run's config.evaluate.

    Args:
        run: the run folder.
        data: the prepared folder (None: the run's config.data).
        split: the split of the explained slices (None: the run's).
        steps: K, the game's steps.
        baselines: what a removed pixel becomes, one game per baseline (zero, mean, blur, road, rise).
        score: the score of the game (see `target_score`).
        schedule: log or uniform.
        batch_size: perturbed images per forward.
        device: where the model runs (None: the run's, config.train.device).
        patients: with `slices_per_patient`, selects the slices (`load_inputs`).
        slices_per_patient: with `patients`, selects the slices (`load_inputs`).

    Returns:
        The contents of RUN/faithfulness.json (schema in docs/evaluate.md).

    Raises:
        TumorcamError: for invalid options (steps, baselines, score, schedule, batch_size), a run
            folder without config.json or maps that do not fit its data and weights (`load_inputs`).
    """
    from tumorcam.config import overridden
    from tumorcam.io import optional_json, write_json
    from tumorcam.runfolder.folder import as_run
    from tumorcam.runs.inputs import load_inputs
    from tumorcam.runs.shard import join, patient_shard

    run = Path(run)
    check_options(steps, baselines, score, schedule, batch_size)  # the options given, before any loading
    info, device = join(as_run(run, device).device, "evaluate")
    inputs = load_inputs(run, data=data, split=split, device=device, patients=patients,
                         slices_per_patient=slices_per_patient)
    shard = patient_shard(inputs.patient_ids, info)
    cfg = overridden(inputs.config.evaluate, steps=steps, baselines=baselines, score=score, schedule=schedule,
                     batch_size=batch_size)
    steps, baselines, score, schedule, batch_size = cfg.steps, list(cfg.baselines), cfg.score, cfg.schedule, cfg.batch_size
    check_options(steps, baselines, score, schedule, batch_size)
    model = inputs.model
    if inputs.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    entries = [e for e in inputs.entries if e.model == "trained"]
    plan = [(entry, target_score(entry.target, score), *references(entry, entries)) for entry in entries]
    needed: dict[str, dict[tuple, MapEntry]] = {}  # score -> the maps to play with it
    for entry, entry_score, random_map, mask_map in plan:
        for member in (entry, random_map, mask_map):
            if member is not None:
                needed.setdefault(entry_score, {})[member.key] = member
    began = time.perf_counter()
    mine = torch.as_tensor(shard.rows, device=inputs.device)
    images, masks = inputs.images[mine], inputs.masks[mine]
    scores: dict[tuple, np.ndarray] = {}  # per slice: the game's scores, or (intact, both fully perturbed)
    for baseline in baselines:
        for game_score, members in needed.items():
            game = PerturbationGame(model, images, steps=steps, baseline=baseline, score=game_score,
                                    schedule=schedule, masks=masks if game_score == "gt-region" else None,
                                    batch_size=batch_size, seed=cfg.seed, road_noise=cfg.road_noise,
                                    amp=inputs.config.explain.amp, progress=shard.is_main, warn=False,
                                    rows=shard.rows)
            scores[baseline, game_score] = torch.stack([game.original, *game.full], dim=1).cpu().numpy()
            for key, member in members.items():
                curves = game.curves(torch.from_numpy(member.maps[shard.rows]).to(inputs.device))
                scores[baseline, game_score, key] = np.stack([curves.deletion, curves.insertion], axis=1)
    gathered = shard.gather(scores)
    if gathered is None:
        return shard.share(None)
    played: dict[tuple, Curves] = {}
    effects: dict[str, dict[str, float]] = {}  # baseline -> score -> median 1 - s(fully perturbed) / s(intact)
    fractions = step_fractions(steps, schedule)
    for key, values in gathered.items():
        if len(key) == 2:
            intact = torch.from_numpy(np.ascontiguousarray(values[:, 0]))
            game_effects = {name: baseline_effect(intact, torch.from_numpy(np.ascontiguousarray(values[:, 1 + curve])))
                            for curve, name in enumerate(curve_baselines(key[0]))}
            warn_uninformative(game_effects, len(values))
            effects.setdefault(key[0], {})[key[1]] = finite_list([least_effect(game_effects)])[0]
        else:
            played[key] = Curves(deletion=values[:, 0], insertion=values[:, 1], fractions=fractions)
    patient_ids = np.asarray(inputs.patient_ids).astype(str)
    results = [_row(entry, entry_score, random_map, mask_map, baseline, played, patient_ids, cfg, steps)
               for baseline in baselines for entry, entry_score, random_map, mask_map in plan]
    adjust_file(results, list(CURVES), primary=dataclasses.asdict(cfg.primary), alpha=cfg.alpha)
    out = {
        "split": inputs.split,
        "size": inputs.size,
        "n_patients": len(np.unique(patient_ids)),
        "n_slices": len(inputs.file_ids),
        "primary": dataclasses.asdict(cfg.primary),
        "alpha": cfg.alpha,
        "steps": steps,
        "schedule": schedule,
        "fractions": step_fractions(steps, schedule).tolist(),
        "score": score,
        "baselines": baselines,
        "baseline_effects": effects,
        "batch_size": batch_size,
        "road_noise": cfg.road_noise,
        "seed": cfg.seed,
        "bootstrap": cfg.bootstrap,
        "device": str(inputs.device),
        "seconds": round(time.perf_counter() - began, 3),
        "file_ids": inputs.file_ids.tolist(),
        "patient_ids": patient_ids.tolist(),
        "results": results,
    }
    out["headline"] = run_headline(out, optional_json(run / "sanity.json"))
    write_json(run / "faithfulness.json", out)
    return shard.share(out)


def write_headline(run: str | Path) -> dict[str, Any] | None:
    """Recompute RUN/faithfulness.json's `headline` from it and RUN/sanity.json (after the sanity
    check ran) and write it back; None when the run has no faithfulness.json."""
    from tumorcam.io import optional_json, write_json

    run = Path(run)
    faithfulness = optional_json(run / "faithfulness.json")
    if faithfulness is None:
        return None
    faithfulness["headline"] = run_headline(faithfulness, optional_json(run / "sanity.json"))
    write_json(run / "faithfulness.json", faithfulness)
    return faithfulness["headline"]


def references(entry: MapEntry, entries: list[MapEntry]) -> tuple[MapEntry | None, MapEntry | None]:
    """The random map and the predicted-mask control an entry is compared with (same model kind;
    the random map of the same target when there is one, the mask of the same target). None for
    the comparison of a map with itself, and no mask for the random map (that test is the mask's
    own vs_random)."""
    from tumorcam.runs.inputs import RANDOM, random_reference

    random_map = random_reference(entry, entries)
    masks = [e for e in entries if e.method == MASK_CONTROL and e.model == entry.model and e.target == entry.target
             and not e.times_gt]
    mask_map = None if entry.method in (RANDOM, MASK_CONTROL) or not masks else masks[0]
    return (None if random_map is entry else random_map), mask_map


def _row(entry: MapEntry, score: str, random_map: MapEntry | None, mask_map: MapEntry | None, baseline: str,
         played: dict[tuple, Curves], patient_ids: np.ndarray, cfg: EvaluateConfig, steps: int) -> dict[str, Any]:
    """One JSON row: the entry, its baseline and score, and per curve the patient-level AUC summary
    with its comparisons with the random map and the predicted mask."""
    curves = played[baseline, score, entry.key]
    row: dict[str, Any] = {
        **entry.describe(), "control": entry.control, "baseline": baseline, "score": score,
        "random_reference": None if random_map is None else random_map.describe(),
        "mask_reference": None if mask_map is None else mask_map.describe(),
    }
    per_slice = {}
    compared = {"random": random_map, "mask": mask_map}
    for name in CURVES:
        raw = getattr(curves, name)
        values = auc(raw, steps)
        reference_values = {label: None if other is None else
                            auc(getattr(played[baseline, score, other.key], name), steps)
                            for label, other in compared.items()}
        row[name] = metric_summary(values, reference_values, patient_ids, lower_is_better=name == "deletion",
                                   test="wilcoxon", resamples=cfg.bootstrap, seed=cfg.seed, curves=raw,
                                   alpha=cfg.alpha)
        per_slice[name] = finite_list(values)
    row["per_slice"] = per_slice
    row["n_maps"], row["n_flat_maps"] = len(entry.maps), count_flat(entry.maps)
    return row
