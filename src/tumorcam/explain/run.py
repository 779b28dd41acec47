"""`explain_run`: heatmaps of a run's model on prepared slices, written to RUN/explanations/.

Outputs (atomic writes): one `.npz` per (method, target, layer, model) with `maps` float16 (N,S,S)
in [0, 1] and `file_ids` int64 (N,); for Grad-CAM also the Grad-CAM x GT maps (`times_gt`); and
`index.json` = {"split", "size", "entries": [{"file", "method", "target", "layer", "model",
"times_gt"}]}. Entries of an earlier call on the same split, size and slices are kept unless
recomputed; entries of other slices are dropped from the index.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from tumorcam.config import Config
from tumorcam.data.arrays import PreparedData, load_prepared
from tumorcam.errors import TumorcamError
from tumorcam.explain import compute_maps, get_method, get_target
from tumorcam.explain.layers import INPUT_LAYER, resolve_layer
from tumorcam.explain.maps import times_mask
from tumorcam.io import save_npz, write_json

EXPLANATIONS_DIR = "explanations"
INDEX_FILE = "index.json"


@dataclass(frozen=True)
class Entry:
    """One map file of the index."""

    method: str
    target: str
    layer: str
    model: str
    times_gt: bool = False

    @property
    def file(self) -> str:
        method = self.method.replace("+", "plus") + ("-x-gt" if self.times_gt else "")
        return f"{self.model}__{method}__{self.target}__{self.layer}.npz"

    def as_json(self) -> dict:
        return {"file": self.file, "method": self.method, "target": self.target, "layer": self.layer,
                "model": self.model, "times_gt": self.times_gt}


def load_explain_model(run: Path, config: Config, device: torch.device, untrained: bool) -> torch.nn.Module:
    """The run's trained model, or (`untrained`) `build_model(config.model)` seeded with config.train.seed."""
    from tumorcam.model import build_model, load_run_model

    if untrained:
        torch.manual_seed(config.train.seed)
        return build_model(config.model).to(device).eval()
    model, _ = load_run_model(run, "last", device)
    return model


def select_rows(data: PreparedData, split: str, limit: int | None, ids: Sequence[int] | None) -> np.ndarray:
    """Rows of `split`: those with the given file `ids` (in that order), else the first `limit`."""
    if limit is not None and ids:
        raise TumorcamError("--limit and --ids: give one or the other")
    if limit is not None and limit < 1:
        raise TumorcamError(f"--limit {limit}: must be at least 1")
    rows = data.indices(split)
    if ids:
        row_of = {int(data.file_ids[r]): int(r) for r in rows}
        missing = [i for i in ids if i not in row_of]
        if missing:
            raise TumorcamError(f"--ids: file id(s) {', '.join(map(str, missing))} not in the {split} split of "
                                f"{data.root} (try --split all)")
        return np.array([row_of[i] for i in ids], dtype=np.int64)
    if limit is not None:
        rows = rows[:limit]
    if len(rows) == 0:
        raise TumorcamError(f"--split {split}: no slices in {data.root}")
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
    run: str | Path,
    data: str | Path | None = None,
    split: str | None = None,
    limit: int | None = None,
    ids: Sequence[int] | None = None,
    methods: Sequence[str] | None = None,
    targets: Sequence[str] | None = None,
    layers: Sequence[str] | None = None,
    batch_size: int | None = None,
    untrained: bool = False,
) -> Path:
    """Write RUN/explanations/ (maps and index.json) for the chosen methods, targets and layers; return the folder.

    Settings left as None come from the run's config.explain; the input size is config.train.size
    and the data config.data unless `data` is given. `untrained` explains the network before
    fine-tuning (entries with model "untrained").
    """
    from tumorcam.training.device import resolve_device

    run = Path(run)
    if not (run / "config.json").is_file():
        raise TumorcamError(f"{run}: not a run folder (no config.json); train one with `tumorcam train`")
    config = Config.load(run / "config.json")
    settings = config.explain
    split = split or settings.split
    limit = settings.limit if (limit is None and not ids) else limit
    methods = list(methods or settings.methods)
    targets = list(targets or settings.targets)
    layers = list(layers or settings.layers)
    batch_size = batch_size or settings.batch_size
    if batch_size < 1:
        raise TumorcamError(f"--batch-size {batch_size}: must be at least 1")
    for name in methods:
        get_method(name)
    for name in targets:
        get_target(name)

    device = resolve_device(config.train.device)
    model = load_explain_model(run, config, device, untrained)
    for layer in layers:
        resolve_layer(model, layer)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        model = model.to(memory_format=torch.channels_last)

    data_dir = data or config.data
    if not data_dir:
        raise TumorcamError(f"{run}/config.json has no data folder; pass --data DIR")
    prepared = load_prepared(data_dir)
    rows = select_rows(prepared, split, limit, ids)
    file_ids = np.asarray(prepared.file_ids[rows], dtype=np.int64)
    size = config.train.size
    images, masks = prepared.tensors(rows, size)
    masks = masks.bool()
    if "gt-region" in targets and not bool(masks.any()):
        raise TumorcamError(f"--targets gt-region: the selected slices of {prepared.root} have no tumour mask pixels")

    model_name = "untrained" if untrained else "trained"
    plan = plan_entries(methods, targets, layers, model_name)
    seeds = random_seeds(settings.seed, file_ids)
    batches = [slice(i, i + batch_size) for i in range(0, len(rows), batch_size)]
    out_dir = run / EXPLANATIONS_DIR
    written: list[Entry] = []
    with tqdm(total=len(plan) * len(batches), desc="explain", unit="batch", disable=None) as progress:
        for entry in plan:
            maps = torch.empty((len(rows), size, size), dtype=torch.float16)
            for part in batches:
                x = images[part].to(device)
                if device.type == "cuda":
                    x = x.contiguous(memory_format=torch.channels_last)
                maps[part] = compute_maps(
                    model, x, method=entry.method, target=entry.target,
                    layer=None if entry.layer == INPUT_LAYER else entry.layer,
                    masks=masks[part].to(device), ig_steps=settings.ig_steps, seed=seeds[part],
                    amp=config.train.amp,
                ).half().cpu()
                progress.update()
            save_npz(out_dir / entry.file, maps=maps.numpy(), file_ids=file_ids)
            written.append(entry)
            if entry.method == "gradcam":
                gt_entry = Entry(entry.method, entry.target, entry.layer, entry.model, times_gt=True)
                gt_maps = times_mask(maps.float(), masks).half()
                save_npz(out_dir / gt_entry.file, maps=gt_maps.numpy(), file_ids=file_ids)
                written.append(gt_entry)
    write_index(out_dir, split, size, file_ids, written)
    return out_dir


def write_index(out_dir: Path, split: str, size: int, file_ids: np.ndarray, written: list[Entry]) -> None:
    """index.json: the entries just written, plus earlier entries of the same split, size and slices."""
    new = [e.as_json() for e in written]
    files = {e["file"] for e in new}
    kept = [e for e in _earlier_entries(out_dir, split, size, file_ids) if e["file"] not in files]
    write_json(out_dir / INDEX_FILE, {"split": split, "size": size, "entries": kept + new})


def _earlier_entries(out_dir: Path, split: str, size: int, file_ids: np.ndarray) -> list[dict]:
    try:
        index = json.loads((out_dir / INDEX_FILE).read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(index, dict) or index.get("split") != split or index.get("size") != size:
        return []
    kept = []
    for entry in index.get("entries", []):
        try:
            with np.load(out_dir / str(entry["file"]), allow_pickle=False) as npz:
                same_slices = np.array_equal(npz["file_ids"], file_ids)
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if same_slices:
            kept.append(entry)
    return kept
