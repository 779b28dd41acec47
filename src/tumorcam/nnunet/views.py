"""What the report of `run_nnunet` reads beside its JSON files, written as a run on volumes writes it,
so that `tumorcam.report.volume_page.build_volume_report` draws the same page (`tumorcam report RUN`
draws it again):

    volume_config.json            the settings, and under "nnunet" the model (folder, configuration,
                                  trainer, folds, checkpoint, label, its channel)
    explanations/index.json       the maps' index of a run on volumes (`runs.volumes.write_map_index`),
                                  with "shapes": each shown case's preprocessed (nnU-Net grid) shape,
                                  and "map_cases": the cases whose maps METHOD.npy holds
    explanations/METHOD.npy       (K, S, S, S) float16: the maps of the first K = `VIEWED_CASES` cases
                                  (the ones the report shows) on nnU-Net's grid, zero-padded at the end
                                  of each axis to the cube S (the largest axis of those cases)
    explanations/preprocessed/    those K cases as a prepared volume folder (`data.volumes`):
                                  volumes.npy (K, 1, S, S, S) float16, the one sequence the views draw
                                  (FLAIR, else the first: `view_channel`) of nnU-Net's preprocessed
                                  volume scaled to [0, 1] as `prepare_volumes` scales a case
                                  (`normalize_case`), masks.npy the label's ground truth on that
                                  grid, affines.npy and shapes.npy the raw case's affine and shape

Only the shown cases are kept (every map of every case is on the raw grid in explanations/nifti/);
the padding is cropped away again by the report (index.json's "shapes").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tumorcam.config import Settings

VIEWS_DIR = "preprocessed"  # inside explanations/: the shown cases' volumes


@dataclass
class ViewCase:
    """One shown case: its preprocessed volume (C, *spatial) in [0, 1], ground truth, maps and raw grid."""

    case: str
    volume: np.ndarray
    mask: np.ndarray
    maps: dict[str, np.ndarray]
    affine: np.ndarray
    raw_shape: tuple[int, ...]


@dataclass
class ViewCases:
    """The first `limit` cases of a run, kept (float16) for the report's orthogonal views."""

    limit: int
    cases: list[ViewCase] = field(default_factory=list)

    def add(self, case: str, volume: np.ndarray, mask: np.ndarray, maps: dict[str, np.ndarray],
            files: Sequence[str]) -> None:
        """Keep `case` (its preprocessed `volume` (C, *spatial), ground truth `mask` and `maps` on that
        grid; `files` its raw channel files) while fewer than `limit` are kept."""
        if len(self.cases) < self.limit:
            self.cases.append(view_case(case, volume, mask, maps, files))


def view_case(case: str, volume: np.ndarray, mask: np.ndarray, maps: dict[str, np.ndarray],
              files: Sequence[str]) -> ViewCase:
    """The `ViewCase` of `case` (what `ViewCases.add` keeps; under torchrun a rank makes it of its own
    case and rank 0 gathers it).

    Args:
        case: the case's name.
        volume: its preprocessed volume (C, *spatial).
        mask: its ground truth on that grid.
        maps: every method's map on that grid.
        files: its raw channel files (the first gives the raw grid and affine).

    Returns:
        The case with its volume scaled to [0, 1] per channel, volume and maps as float16.
    """
    from tumorcam.data.nnunet import read_nifti
    from tumorcam.data.volumes import normalize_case

    scaled, _, _ = normalize_case(np.asarray(volume, dtype=np.float32), [Path(f) for f in files])
    raw, affine, _ = read_nifti(files[0])
    return ViewCase(case, scaled.astype(np.float16), np.asarray(mask, dtype=bool),
                    {m: np.asarray(v, dtype=np.float16) for m, v in maps.items()},
                    np.asarray(affine, dtype=np.float64), tuple(int(n) for n in raw.shape))


def _padded(arrays: Sequence[np.ndarray], size: int, dtype: Any) -> np.ndarray:
    """`arrays` (*lead, *spatial) stacked, each zero-padded at the end of its spatial axes to size^3."""
    lead = arrays[0].shape[:-3]
    out = np.zeros((len(arrays), *lead, size, size, size), dtype=dtype)
    for i, array in enumerate(arrays):
        out[(i, ..., *(slice(0, n) for n in array.shape[-3:]))] = array
    return out


def write_views(out: Path, kept: ViewCases, header: dict[str, Any], settings: Settings,
                model: dict[str, Any]) -> None:
    """Write volume_config.json, explanations/index.json, METHOD.npy and preprocessed/ of an nnU-Net
    run (module docstring) into `out`: `header` is the run files' header, `settings` the run's,
    `model` the nnU-Net model's record."""
    from tumorcam.io import atomic_dir, save_npy, write_json
    from tumorcam.report.volume_page import view_channel
    from tumorcam.runfolder.folder import SETTINGS_FILE
    from tumorcam.runs.volume_settings import all_methods
    from tumorcam.runs.volumes import EXPLANATIONS_DIR, write_map_index

    folder = out / EXPLANATIONS_DIR
    cases = kept.cases
    size = max(max(c.volume.shape[1:]) for c in cases)
    shown = view_channel(header["channels"])  # the one sequence the views draw is the one kept
    with atomic_dir(folder / VIEWS_DIR) as tmp:
        for name, array in (("volumes.npy", _padded([c.volume[shown:shown + 1] for c in cases], size, np.float16)),
                            ("masks.npy", _padded([c.mask for c in cases], size, bool)),
                            ("case_ids.npy", np.array([c.case for c in cases])),
                            ("affines.npy", np.stack([c.affine for c in cases])),
                            ("shapes.npy", np.array([c.raw_shape for c in cases], dtype=np.int64))):
            save_npy(Path(tmp) / name, array)
        write_json(Path(tmp) / "manifest.json", {
            "kind": "volumes", "format": "nnunet-preprocessed", "source": header["data"],
            "channels": [header["channels"][shown]], "region": model["label"], "size": size, "count": len(cases),
            "cases": [c.case for c in cases], "shapes": [list(c.volume.shape[1:]) for c in cases],
            "normalization": f"nnU-Net's preprocessing ({model['configuration']}), then per channel scaled to "
                             "[0, 1] by the 0.5th..99.5th percentile of the foreground, as prepare_volumes",
            "resampling": f"nnU-Net's ({model['configuration']}); zero-padded at the end of each axis to {size}^3"})
        write_json(Path(tmp) / "splits.json", {"train": [], "val": [], "test": []})
    for method in all_methods(settings):
        save_npy(folder / f"{method}.npy", _padded([c.maps[method] for c in cases], size, np.float16))
    index = {**header, "channels": [header["channels"][shown]], "prepared": f"{EXPLANATIONS_DIR}/{VIEWS_DIR}", "size": size,
             "shapes": [list(c.volume.shape[1:]) for c in cases], "map_cases": [c.case for c in cases]}
    write_map_index(folder, settings, index, None)
    write_json(out / SETTINGS_FILE, {**settings.to_dict(), "data": header["data"], "nnunet": model})


def model_record(model: Any, folder: str | Path, folds: Sequence[int | str], checkpoint: str, label: str,
                 channel: int, regions: bool) -> dict[str, Any]:
    """The nnU-Net model as the run's settings file and report name it."""
    return {"folder": str(folder), "configuration": str(model.configuration), "trainer": str(model.trainer_name),
            "folds": [str(f) for f in folds], "checkpoint": checkpoint, "label": label, "channel": channel,
            "regions": regions}
