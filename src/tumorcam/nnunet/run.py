"""`run_nnunet`: explain and evaluate a trained nnU-Net v2 model on the cases of an nnU-Net raw dataset.

    tumorcam run --data NNUNET_RAW_DATASET --nnunet MODEL_FOLDER --label NAME --out RUN

Each case (imagesTr/ with its labelsTr/ file, the first `cases`) is preprocessed by nnU-Net (image
and label to the same grid, `run_case` of the configuration's preprocessor). The maps are those of a
run on volumes (`tumorcam.runs.cases.explain_case`, the settings' methods and target): `tumorcam.explain`
has the model explain its tiles (`NnunetModel.explain_tiles`, stitched with nnU-Net's Gaussian), the
controls (random, predicted-mask) read the whole volume's output; every map is then measured by
`tumorcam.runs.cases.evaluate_case` through `LabelOutput`, the model's output for the label: its
one region channel (sigmoid) for a region-based model, all class channels with the label's
(softmax) for a class-based one, as nnU-Net's label manager reads them. The case is the unit:

    faithfulness.json    Deletion/Insertion AUCs per baseline and method vs random and predicted-mask,
                         with the headline (`tumorcam.evaluate.headline`)
    localization.json    pointing game, energy pointing game, top-p% IoU of the ground-truth label
    channels.json        per-sequence attribution shares and channel-ablation Dice drops
    segmentation.json    Dice of the predicted label with the ground truth
    sanity.json          cascading randomisation of the primary method on the first `evaluate.sanity`
                         cases (every fold's stages at once, `NnunetModel.cascade_stages`)
    nnunet_run.json      the model (folder, folds, checkpoint, label, channel, layer) and the settings
    volume_config.json   the settings, with the model under "nnunet" (the report's subtitle names it)
    explanations/nifti/  CASE_METHOD.nii.gz: each method's map on the raw case's grid and affine
    explanations/        index.json, METHOD.npy and preprocessed/: the maps and preprocessed volumes
                         (nnU-Net's grid) of the cases the report shows (`tumorcam.nnunet.views`)
    report.html          orthogonal views of the shown cases, channel shares, the verdict tables

An `out` that holds a run of another kind (on slices, on volumes) is refused before anything is
written; `tumorcam report RUN` draws the report again, `tumorcam evaluate RUN` refuses the folder.

    torchrun --standalone --nproc_per_node=N --no-python tumorcam run --data NNUNET_RAW_DATASET --nnunet MODEL_FOLDER

Under `torchrun` (one machine; `tumorcam.training.distributed.start`: gloo on CPU, NCCL on CUDA with
rank i on cuda:LOCAL_RANK) the cases are dealt to the ranks as a run on volumes deals them (case i
to rank i mod N): each rank preprocesses, explains and measures its cases, writes their NIfTI maps
and runs the sanity check of those among the first `evaluate.sanity`; rank 0 alone removes the
earlier outputs (the others wait), gathers the per-case results, the sanity parts and the shown
cases (`gather_to_main`), puts them in case order and writes every other file. Every draw is seeded
by the case's index, never the rank, so the files are those of one process.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tumorcam.config import Settings, preset
from tumorcam.errors import TumorcamError
from tumorcam.explain import METHODS
from tumorcam.nnunet.label import LabelOutput, first_label
from tumorcam.runfolder.folder import NNUNET_RUN_FILE, SETTINGS_FILE

RUN_FILE = NNUNET_RUN_FILE
OUTPUTS = ("faithfulness.json", "localization.json", "channels.json", "segmentation.json", "sanity.json", RUN_FILE,
           SETTINGS_FILE, "report.html", "figures", "explanations")


def run_nnunet(out: str | os.PathLike, data: str | os.PathLike, folder: str | os.PathLike, *,
               folds: Sequence[int | str] = (0,), checkpoint: str | None = None, label: str | None = None,
               cases: int | None = None, settings: Settings | None = None, trust_checkpoint: bool = False,
               mirror: bool = False, one_pass: bool = False, device: str = "auto",
               log: Callable[[str], None] = print) -> Path | None:
    """Explain and evaluate the nnU-Net model in `folder` on the cases of the raw dataset `data`; write
    the run folder `out` (see the module docstring; an earlier run's outputs there are replaced).

    Args:
        out: the run folder.
        data: nnU-Net's raw layout (dataset.json, imagesTr/, labelsTr/).
        folder: the model's Trainer__Plans__configuration results folder.
        folds: the folds loaded (their logits and maps are averaged).
        checkpoint: the checkpoint file of each fold (None: checkpoint_final.pth).
        label: the explained label of dataset.json (None: its first foreground label).
        cases: at most this many cases (None: every case of imagesTr/).
        settings: methods, baselines, steps, ... (None: the `own-model` preset).
        trust_checkpoint: unpickle the checkpoints fully (only for files you trust).
        mirror: nnU-Net's test-time mirroring of every tile (its logits and maps).
        one_pass: the network on each whole volume at once instead of nnU-Net's tiles.
        device: auto, cpu, cuda or cuda:N.
        log: receives the progress lines.

    Returns:
        The path of report.html (rank 0; under torchrun the other ranks return None once their cases
        are gathered and rank 0 has written the run folder).

    Raises:
        TumorcamError: for a `data` that is not nnU-Net's raw layout or has no case, a `label` the model
            does not predict, settings a run on volumes refuses, a model folder that cannot be read,
            an `out` that holds a run of another kind, or a torchrun that spans several machines.
    """
    from tumorcam.data.nnunet import read_dataset
    from tumorcam.evaluate.headline import run_headline
    from tumorcam.evaluate.sanity import SanityResult
    from tumorcam.io import remove_outputs, write_json
    from tumorcam.nnunet.model import DEFAULT_CHECKPOINT, load
    from tumorcam.nnunet.views import ViewCases, model_record, write_views
    from tumorcam.report.volume_page import VIEWED_CASES, build_volume_report
    from tumorcam.runfolder.folder import refuse_other_run
    from tumorcam.runs.volume_settings import check_volumes, volume_layer
    from tumorcam.runs.volumes import (RANK_TIMEOUT, channels_file, faithfulness_file, localization_file,
                                       sanity_document, segmentation_file)
    from tumorcam.training.distributed import barrier, gather_to_main, refuse_several_machines, start, stop

    refuse_other_run(out, "nnunet")
    settings = copy.deepcopy(settings or preset("own-model"))
    check_volumes(settings)
    dataset = read_dataset(data)
    names = dataset.cases[:cases] if cases is not None else dataset.cases
    if not names:
        raise TumorcamError(f"data: no case in {Path(data) / 'imagesTr'}", param="data")
    refuse_several_machines("run")
    info, dev = start(device, timeout=RANK_TIMEOUT)
    try:
        checkpoint = checkpoint or DEFAULT_CHECKPOINT
        model = load(folder, folds=folds, checkpoint=checkpoint, trust_checkpoint=trust_checkpoint, mirror=mirror,
                     one_pass=one_pass).to(dev)
        label = label or first_label(model)
        scored = LabelOutput(model, label).eval()
        settings.explain.channel, settings.explain.output = scored.channel, None
        if volume_layer(settings) is None and any(METHODS[m].uses_layer for m in settings.explain.methods):
            settings.explain.layers = [scored.tile_layer()]  # structural: the same on every rank and case
        out = Path(out)
        nifti = out / "explanations" / "nifti"
        if info.is_main:  # before any rank writes a map; the others wait
            remove_outputs(out, OUTPUTS)
            nifti.mkdir(parents=True)
        barrier(info)

        mine = list(range(info.rank, len(names), info.world_size))
        part = run_cases(model, scored, data, dataset, names, mine, label, settings, nifti, dev, VIEWED_CASES,
                         log=log, rank=info.rank if info.enabled else None)
        parts = gather_to_main([part], info)
        if not info.is_main:
            barrier(info)  # until rank 0 has written the run folder
            return None
        assert parts is not None
        results = sorted((r for p in parts for r in p.results), key=lambda r: r.index)
        checks = [c for _, c in sorted((c for p in parts for c in p.checks), key=lambda c: c[0])]
        shown = ViewCases(VIEWED_CASES, cases=[v for _, v in sorted((v for p in parts for v in p.views),
                                                                    key=lambda v: v[0])])
        sanity_count = len(checks)

        header = {"data": str(data), "model": str(folder), "folds": [str(f) for f in folds], "checkpoint": checkpoint,
                  "label": label, "mirror": mirror, "one_pass": one_pass, "split": "imagesTr", "n_cases": len(names), "case_ids": list(names),
                  "channels": list(dataset.channels)}
        faithfulness = faithfulness_file(results, settings, header)
        write_json(out / "localization.json", localization_file(results, settings, header))
        write_json(out / "channels.json", channels_file(np.stack([r.shares for r in results]),
                                                        np.stack([r.dice_drop for r in results]), settings, header))
        write_json(out / "segmentation.json", segmentation_file(results, settings, header))
        sanity = (sanity_document(SanityResult.concat(checks), settings, header, list(names[:sanity_count]),
                                  volume_layer(settings)) if checks else {**header, "skipped": "evaluate.sanity is 0"})
        write_json(out / "sanity.json", sanity)
        faithfulness["headline"] = run_headline(faithfulness, sanity, unit="case")
        write_json(out / "faithfulness.json", faithfulness)
        write_json(out / RUN_FILE, {**header, "channel": scored.label_channel,
                                    "regions": scored.regions, "settings": settings.to_dict()})
        write_views(out, shown, header, settings, model_record(model, folder, folds, checkpoint, label,
                                                                scored.label_channel, scored.regions))
        report = build_volume_report(out)
        barrier(info)
        return report
    finally:
        stop(info)


@dataclass
class RankCases:
    """What one rank computed of its cases, gathered on rank 0: the per-case results (without maps),
    the sanity check parts and the shown cases, each with its case index."""

    results: list[Any] = field(default_factory=list)
    checks: list[tuple[int, Any]] = field(default_factory=list)
    views: list[tuple[int, Any]] = field(default_factory=list)


def run_cases(model: nn.Module, scored: LabelOutput, data: str | os.PathLike, dataset: Any, names: Sequence[str],
              indices: Sequence[int], label: str, settings: Settings, nifti: Path, device: torch.device,
              shown: int, log: Callable[[str], None] = print, rank: int | None = None) -> RankCases:
    """Preprocess, explain and measure the cases of `names` at `indices` (one rank's share), writing
    each method's map on the raw grid into `nifti`.

    Args:
        model: the `NnunetModel`.
        scored: its output for `label` (`LabelOutput`).
        data: the raw dataset's folder.
        dataset: its `read_dataset` record.
        names: every case of the run, in order (a case's index is its place here).
        indices: the indices of the cases computed here, ascending.
        label: the explained label.
        settings: the run's settings (its layer set).
        nifti: the folder of the maps on the raw grid.
        device: the device computed on.
        shown: how many first cases the report shows (kept in `RankCases.views`).
        log: receives one progress line per case.
        rank: this process's rank, named in the progress lines (None: one process).

    Returns:
        The `RankCases` of these cases: results, sanity parts of the first `evaluate.sanity` cases
        (None: all) and shown cases, each with its index.
    """
    from tumorcam.data.nnunet import read_case
    from tumorcam.nnunet.export import write_map
    from tumorcam.nnunet.views import view_case
    from tumorcam.runs.cases import evaluate_case, explain_case

    sanity_count = len(names) if settings.evaluate.sanity is None else min(settings.evaluate.sanity, len(names))
    part = RankCases()
    for index in indices:
        case = names[index]
        read_case(data, case, dataset)  # the case's files checked against dataset.json
        files = [str(dataset.image_path(case, c)) for c in range(len(dataset.channels))]
        volume, mask, properties = preprocess_case(model, files, str(dataset.label_path(case)), label)
        image = torch.from_numpy(volume)[None].to(device)
        maps = explain_case(scored, image, index, settings)
        result = evaluate_case(scored, image, torch.from_numpy(mask)[None, None].float().to(device), index,
                               settings, maps)
        for method in settings.explain.methods:
            if not METHODS[method].control:
                write_map(model, maps[method], properties, files[0], nifti / f"{case}_{method}.nii.gz")
        part.results.append(result.without_maps())
        if index < sanity_count:
            part.checks.append((index, sanity_case(scored, image, case, settings)))
        if index < shown:
            part.views.append((index, view_case(case, volume, mask, maps, files)))
        log(f"case {case} ({index + 1}/{len(names)}): {tuple(volume.shape[1:])} preprocessed, "
            f"Dice {result.dice:.3f}" + ("" if rank is None else f" (rank {rank})"))
    return part


def sanity_case(scored: LabelOutput, image: torch.Tensor, case: str, settings: Settings) -> Any:
    """The sanity check of one case (1, C, *spatial): `tumorcam.sanity` of the primary method on the
    label's output, the region fixed from the intact model, every fold's stages randomised together
    (`NnunetModel.cascade_stages`), the layer the run's maps used; the case is its patient."""
    from tumorcam.evaluate.sanity import MIN_PATIENTS, sanity
    from tumorcam.runs.volume_settings import volume_layer

    primary = settings.evaluate.primary.method
    return sanity(scored, image, method=primary, target=settings.explain.targets[0],
                  layer=volume_layer(settings) if METHODS[primary].uses_layer else None, channel=scored.channel,
                  ig_steps=settings.explain.ig_steps, seed=settings.evaluate.seed, patient_ids=[case],
                  min_patients=MIN_PATIENTS, bootstrap=settings.evaluate.bootstrap, batch_size=1)


def preprocess_case(model: nn.Module, files: Sequence[str], label_file: str,
                    label: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """nnU-Net's preprocessing of one case's channel `files` and its `label_file` to the same grid: the
    volume (C, *spatial) float32, the ground truth of `label` (*spatial) bool, and the properties."""
    preprocessor = model.configuration_manager.preprocessor_class(verbose=False)
    data, seg, properties = preprocessor.run_case(list(files), label_file, model.plans_manager,
                                                  model.configuration_manager, model.dataset_json)
    value = model.dataset_json["labels"][label]
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    return np.asarray(data, dtype=np.float32), np.isin(np.asarray(seg)[0], values), properties
