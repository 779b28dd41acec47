"""`explain_run`: heatmaps of a run's model on a sample of prepared slices, written to RUN/explanations/.

Slices: `ids` picks exact slices; otherwise `sample_rows` takes a seeded sample of the split's
patients spread over classes, up to K slices each, at most `limit` slices in all.

Outputs (atomic writes): one `.npz` per (method, target, layer, model) with `maps` float16 (N,S,S)
in [0, 1] and `file_ids` int64 (N,); for Grad-CAM also the Grad-CAM x GT maps (`times_gt`); and
`index.json` = {"split", "size", "weights_sha256", "selection" ("sample" | "ids"), "patients",
"slices_per_patient", "limit", "seed" (the sample's settings; null with ids), "n_patients", "n_slices",
"entries": [{"file", "method", "target", "layer", "model", "times_gt", "control", "weights_sha256"}]}
(read and written by `tumorcam.runfolder.index`).

`weights_sha256` names the weights that made the maps: for the trained model the sha256 of
RUN/unet_trained.pth (`Run.weights_sha256`), for the untrained one `model_sha256` of its state_dict
(`untrained_sha256`). An entry has the hash of its own model; the top level has the trained model's
(null when the run has no weights file). Entries of an earlier call are kept unless recomputed when
the split, size, slices (file ids, in order) and the weights of their model are all the same; others
are dropped, so maps of weights since retrained never outlive them.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from tumorcam.config import Config
from tumorcam.data.arrays import PreparedData, warn_training_split
from tumorcam.errors import TumorcamError
from tumorcam.explain import compute_maps, get_method, get_target
from tumorcam.runfolder.index import Entry, Index, read_index, write_index
from tumorcam.explain.layers import INPUT_LAYER, resolve_layer
from tumorcam.explain.maps import times_mask
from tumorcam.io import save_npz
from tumorcam.runfolder.folder import Run, as_run
from tumorcam.runs.shard import join, patient_shard


def model_sha256(model: torch.nn.Module) -> str:
    """sha256 over the state_dict in sorted key order: each key's UTF-8 name, then its tensor's bytes
    (on the CPU, contiguous, in the tensor's own dtype)."""
    digest = hashlib.sha256()
    state = model.state_dict()
    for key in sorted(state):
        digest.update(key.encode())
        tensor = state[key].detach().cpu().contiguous().reshape(-1)
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def untrained_sha256(config: Config) -> str:
    """`model_sha256` of the untrained network `explain_model` builds (the global RNG is left as it was)."""
    from tumorcam.models.unet import build_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.train.seed)
        return model_sha256(build_model(config.model))


def explain_model(run: Run, untrained: bool) -> torch.nn.Module:
    """The run's trained model (`run.model()`), or (`untrained`) `build_model(config.model)` seeded with
    config.train.seed, on `run.device` in eval mode."""
    from tumorcam.models.unet import build_model

    if untrained:
        torch.manual_seed(run.config.train.seed)
        return build_model(run.config.model).to(run.device).eval()
    return run.model()


def _as_param(param: str, check: Callable[[str], object], name: str) -> None:
    """`check(name)`, its error naming the list parameter `param` (`methods`) instead of one name's (`method`)."""
    try:
        check(name)
    except TumorcamError as exc:
        raise TumorcamError(f"{param}: {str(exc).split(': ', 1)[-1]}", param=param) from None


def _at_least_one(param: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise TumorcamError(f"{param} {value}: must be at least 1", param=param)


def sample_rows(data: PreparedData, split: str, *, patients: int | None, slices_per_patient: int | None,
                limit: int | None = None, seed: int = 0) -> np.ndarray:
    """Rows of a seeded sample of `split`, spread over classes and patients, in file-id order.

    1. Patients: a patient's class is its most frequent label. The classes are visited round-robin in
       a seeded order, each visit taking that class's next patient in a seeded order, until `patients`
       are taken (None: all patients of the split).
    2. Slices: of a patient's n slices in file-id order, K = min(`slices_per_patient`, n) (None: n)
       evenly spaced ones, positions floor((2i + 1) n / (2K)) for i = 0..K-1 (the centres of K equal parts).
    3. `limit` (None: no cap) keeps the first `limit` slices taken round by round (every patient's first
       pick, then every patient's second, ...), so a cap keeps as many patients as it can.
    """
    _at_least_one("patients", patients)
    _at_least_one("slices_per_patient", slices_per_patient)
    _at_least_one("limit", limit)
    rows = data.indices(split)
    if len(rows) == 0:
        raise TumorcamError(f"split {split}: no slices in {data.root}", param="split")
    rows = rows[np.argsort(np.asarray(data.file_ids[rows]), kind="stable")]
    pids = np.asarray(data.pids[rows]).astype(str)
    labels = np.asarray(data.labels[rows])
    rows_of = {pid: rows[pids == pid] for pid in np.unique(pids)}
    class_of = {}
    for pid in rows_of:
        values, counts = np.unique(labels[pids == pid], return_counts=True)
        class_of[pid] = int(values[np.argmax(counts)])
    rng = np.random.default_rng(seed)
    classes = sorted(set(class_of.values()))
    class_order = [classes[i] for i in rng.permutation(len(classes))]
    queues = {}
    for c in classes:
        members = sorted(p for p, k in class_of.items() if k == c)
        queues[c] = deque(members[i] for i in rng.permutation(len(members)))
    wanted = len(rows_of) if patients is None else min(patients, len(rows_of))
    chosen: list[str] = []
    while len(chosen) < wanted:
        for c in class_order:
            if queues[c] and len(chosen) < wanted:
                chosen.append(queues[c].popleft())
    picks = []
    for pid in chosen:
        mine = rows_of[pid]
        n = len(mine)
        k = n if slices_per_patient is None else min(slices_per_patient, n)
        picks.append(mine[(2 * np.arange(k) + 1) * n // (2 * k)])
    taken = [p[r] for r in range(max(len(p) for p in picks)) for p in picks if r < len(p)]
    if limit is not None:
        taken = taken[:limit]
    taken = np.asarray(taken, dtype=np.int64)
    return taken[np.argsort(np.asarray(data.file_ids[taken]), kind="stable")]


def select_rows(data: PreparedData, split: str, ids: Sequence[int] | None = None, *, patients: int | None = None,
                slices_per_patient: int | None = None, limit: int | None = None, seed: int = 0) -> np.ndarray:
    """Rows of `split` to explain and evaluate: those with the given file `ids` (in that order), else
    `sample_rows`; a split with training slices warns (`data.arrays.warn_training_split`)."""
    if not ids:
        rows = sample_rows(data, split, patients=patients, slices_per_patient=slices_per_patient, limit=limit,
                           seed=seed)
        warn_training_split(data.splits, split, data.file_ids, rows, "slice")
        return rows
    rows = data.indices(split)
    row_of = {int(data.file_ids[r]): int(r) for r in rows}
    missing = [i for i in ids if i not in row_of]
    if missing:
        raise TumorcamError(f"ids: file id(s) {', '.join(map(str, missing))} not in the {split} split of "
                            f"{data.root} (try the split all)", param="ids")
    rows = np.array([row_of[i] for i in ids], dtype=np.int64)
    warn_training_split(data.splits, split, data.file_ids, rows, "slice")
    return rows


def random_seeds(seed: int, file_ids: np.ndarray) -> list[int]:
    """One seed per slice from (seed, file id): the random map of a slice does not depend on its batch."""
    return [int(np.random.SeedSequence([seed, int(f)]).generate_state(1)[0]) for f in file_ids]


def plan_entries(methods: Sequence[str], targets: Sequence[str], layers: Sequence[str], model: str) -> list[Entry]:
    """Every (method, target, layer) to compute; layer-free methods once per target with layer `input`."""
    entries: list[Entry] = []
    for method in methods:
        uses_layer = get_method(method).uses_layer
        for target in targets:
            for layer in (layers if uses_layer else [INPUT_LAYER]):
                entry = Entry(method, target, layer, model)
                if entry not in entries:
                    entries.append(entry)
    return entries


def explain_run(
    run: str | Path | Run,
    data: str | Path | None = None,
    split: str | None = None,
    limit: int | None = None,
    ids: Sequence[int] | None = None,
    methods: Sequence[str] | None = None,
    targets: Sequence[str] | None = None,
    layers: Sequence[str] | None = None,
    batch_size: int | None = None,
    untrained: bool = False,
    patients: int | None = None,
    slices_per_patient: int | None = None,
) -> Path:
    """Write RUN/explanations/ (maps and index.json) for the chosen methods, targets and layers.

    Settings left as None come from the run's config.explain; the input size is config.train.size.
    The model runs on `run.device`.

    Args:
        run: the run folder, or its `Run`.
        data: the prepared folder (None: config.data).
        split: the split the slices come from.
        limit: at most `limit` slices in all (the sample).
        ids: file ids of exact slices; else the slices are `sample_rows(patients, slices_per_patient,
            limit)` seeded with config.explain.seed.
        methods: names of `tumorcam.METHODS`.
        targets: names of `tumorcam.TARGETS`.
        layers: module paths of the model's layers explained.
        batch_size: images per batch of maps.
        untrained: explain the network before fine-tuning (entries with model "untrained").
        patients: patients of the seeded sample.
        slices_per_patient: up to K slices of each patient in the sample.

    Returns:
        The folder RUN/explanations/.

    Raises:
        TumorcamError: for a run folder without config.json, a split without slices, ids not in the
            split, sample settings given with ids, counts or batch_size < 1, unknown methods, targets
            or layers, or `gt-region` on slices without tumour pixels.
    """
    run = as_run(run)
    config = run.config
    settings = config.explain
    if ids:
        given = (("limit", limit), ("patients", patients), ("slices_per_patient", slices_per_patient))
        for name, value in given:
            if value is not None:
                raise TumorcamError(f"{name}: not with ids (ids picks exact slices)", param=name)
    else:
        limit = settings.limit if limit is None else limit
        patients = settings.patients if patients is None else patients
        slices_per_patient = settings.slices_per_patient if slices_per_patient is None else slices_per_patient
    split = split or settings.split
    methods = list(methods or settings.methods)
    targets = list(targets or settings.targets)
    layers = list(layers or settings.layers)
    batch_size = batch_size or settings.batch_size
    if batch_size < 1:
        raise TumorcamError(f"batch_size {batch_size}: must be at least 1", param="batch_size")
    for name in methods:
        _as_param("methods", get_method, name)
    for name in targets:
        _as_param("targets", get_target, name)

    info, device = join(run.device, "explain")
    model = explain_model(run, untrained).to(device)
    for layer in layers:
        _as_param("layers", lambda path: resolve_layer(model, path), layer)
    trained_sha256 = run.weights_sha256
    model_hash = model_sha256(model) if untrained else trained_sha256
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        model = model.to(memory_format=torch.channels_last)

    prepared = run.prepared(data)
    rows = select_rows(prepared, split, ids, patients=patients, slices_per_patient=slices_per_patient, limit=limit,
                       seed=settings.seed)
    file_ids = np.asarray(prepared.file_ids[rows], dtype=np.int64)
    shard = patient_shard(np.asarray(prepared.pids[rows]), info)
    size = config.train.size
    images, masks = prepared.tensors(rows[shard.rows], size)
    masks = masks.bool()
    if "gt-region" in targets and not shard.any(bool(masks.any())):
        raise TumorcamError(f"targets gt-region: the selected slices of {prepared.root} have no tumour mask pixels",
                            param="targets")

    model_name = "untrained" if untrained else "trained"
    plan = plan_entries(methods, targets, layers, model_name)
    seeds = [random_seeds(settings.seed, file_ids)[i] for i in shard.rows]
    batches = [slice(i, i + batch_size) for i in range(0, len(shard.rows), batch_size)]
    out_dir = run.explanations_folder
    written: list[Entry] = []
    with tqdm(total=len(plan) * len(batches), desc="explain", unit="batch",
              disable=None if shard.is_main else True) as progress:
        for entry in plan:
            maps = torch.empty((len(shard.rows), size, size), dtype=torch.float16)
            for part in batches:
                x = images[part].to(device)
                if device.type == "cuda":
                    x = x.contiguous(memory_format=torch.channels_last)
                maps[part] = compute_maps(
                    model, x, method=entry.method, target=entry.target,
                    layer=None if entry.layer == INPUT_LAYER else entry.layer,
                    masks=masks[part].to(device), ig_steps=settings.ig_steps, seed=seeds[part],
                    amp=config.explain.amp,
                ).half().cpu()
                progress.update()
            made = {False: maps}
            if entry.method == "gradcam":
                made[True] = times_mask(maps.float(), masks).half()
            gathered = shard.gather({times_gt: part.numpy() for times_gt, part in made.items()})
            for times_gt in made:
                done = Entry(entry.method, entry.target, entry.layer, entry.model, times_gt=times_gt,
                             weights_sha256=model_hash, folder=out_dir)
                if gathered is not None:
                    save_npz(out_dir / done.file, maps=gathered[times_gt], file_ids=file_ids)
                written.append(done)

    by_ids = bool(ids)
    header = {"split": split, "size": size, "weights_sha256": trained_sha256,
              "selection": "ids" if by_ids else "sample",
              "patients": None if by_ids else patients,
              "slices_per_patient": None if by_ids else slices_per_patient,
              "limit": None if by_ids else limit,
              "seed": None if by_ids else settings.seed,
              "n_patients": len(np.unique(np.asarray(prepared.pids[rows]).astype(str))), "n_slices": len(rows)}
    current = {model_name: model_hash, "trained": trained_sha256}

    def weights_now(kind: str) -> str | None:
        if kind not in current:
            try:
                current[kind] = untrained_sha256(config) if kind == "untrained" else None
            except TumorcamError:  # e.g. ImageNet weights unavailable: its earlier maps cannot be vouched for
                current[kind] = None
        return current[kind]

    if shard.is_main:
        kept = _kept_entries(out_dir, header, file_ids, written, weights_now)
        write_index(Index(folder=out_dir, header=header, entries=kept + written))
    shard.wait()  # the other ranks return once the index is written
    return out_dir


def _kept_entries(folder: Path, header: dict, file_ids: np.ndarray, new: list[Entry],
                  weights_now: Callable[[str], str | None]) -> list[Entry]:
    """The entries of the index already in `folder` to list beside `new`: those not recomputed, of the
    same split, size and slices (file ids, in order), whose `weights_sha256` is `weights_now(their model)`."""
    try:
        earlier = read_index(folder)
    except TumorcamError:
        return []
    if earlier.split != header["split"] or earlier.size != header["size"]:
        return []
    files = {entry.file for entry in new}
    kept = []
    for entry in earlier.entries:
        if entry.file in files or entry.weights_sha256 is None or entry.weights_sha256 != weights_now(entry.model):
            continue
        try:
            same_slices = np.array_equal(entry.stored_file_ids(), file_ids)
        except TumorcamError:
            continue
        if same_slices:
            kept.append(entry)
    return kept
