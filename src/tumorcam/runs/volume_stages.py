"""The stages of a run on volumes again, from its folder: `evaluate_volume_run` (segmentation,
faithfulness, localisation, sanity) and `volume_channels` (per-sequence attribution).

Both read RUN/volume_config.json (the settings, the model and its weights), RUN/explanations/index.json
(the cases, their order and the prepared folder) and the prepared volumes; `evaluate_volume_run` also
reads the saved maps RUN/explanations/METHOD.npy. Each case is measured by `runs.cases.evaluate_case`
with the seed of its index, as the run measured it, and the files are made by the run's own writers:
with the run's settings they are the files the run wrote. Settings given here replace the run's
(`Settings` names), as `tumorcam evaluate` replaces them for slices.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tumorcam.errors import TumorcamError
from tumorcam.io import optional_json, read_json_object, write_json

VOLUME_STAGES = ("segmentation", "faithfulness", "localization", "sanity")
HEADER_KEYS = ("data", "prepared", "split", "n_cases", "case_ids", "size", "channels")


@dataclasses.dataclass
class VolumeRun:
    """A run folder on volumes opened for its stages: its `settings` (with any replacements), the
    `header` of its files, the network on `device`, the prepared volumes and the rows of its cases."""

    path: Path
    settings: Any
    header: dict[str, Any]
    network: Any
    prepared: Any
    rows: np.ndarray
    device: Any

    @classmethod
    def open(cls, run: str | Path, device: str = "auto", **replace: Any) -> VolumeRun:
        """The run on volumes at `run`, its model on `device`; `replace` (setting -> value, None
        left out) replaces the run's settings."""
        from tumorcam.device import resolve_device
        from tumorcam.runfolder.folder import file_sha256
        from tumorcam.models.user import load_user_model
        from tumorcam.runs.volumes import EXPLANATIONS_DIR
        from tumorcam.runs.volume_settings import check_volumes, load_run_settings
        from tumorcam.runfolder.folder import SETTINGS_FILE, data_folder
        from tumorcam.data.volumes import load_volumes

        path = Path(run)
        refuse_nnunet_run(path)
        settings = load_run_settings(path / SETTINGS_FILE)
        settings = settings.replace({f"evaluate.{name}": value for name, value in replace.items()})
        check_volumes(settings)
        index_path = path / EXPLANATIONS_DIR / "index.json"
        if not index_path.is_file():
            raise TumorcamError(f"run: {path} has no {EXPLANATIONS_DIR}/index.json; run `tumorcam run` on it again",
                                param="run")
        index = read_json_object(index_path)
        header = {key: index[key] for key in HEADER_KEYS}
        weights = settings.model.weights
        if weights is not None and (not Path(weights).is_file() or file_sha256(Path(weights)) != index["weights_sha256"]):
            raise TumorcamError(f"weights: {weights}, the run's weights, is missing or changed since the run "
                                "made its maps", param="weights")
        prepared = load_volumes(data_folder(path, header["prepared"]))
        row_of = {str(case): row for row, case in enumerate(np.asarray(prepared.case_ids).astype(str))}
        missing = [case for case in header["case_ids"] if case not in row_of]
        if missing:
            raise TumorcamError(f"run: the prepared volumes {prepared.root} lack the run's case(s) "
                                f"{', '.join(missing[:3])}", param="run")
        dev = resolve_device(device)
        network = load_user_model(settings.model.network, weights).to(dev).eval()
        rows = np.array([row_of[case] for case in header["case_ids"]], dtype=np.int64)
        return cls(path, settings, header, network, prepared, rows, dev)

    def case(self, i: int) -> tuple[Any, Any]:
        """The image (1, C_in, D, H, W) and mask (1, 1, D, H, W) of the run's case i, on the device."""
        image, mask = self.prepared.tensors(self.rows[i:i + 1])
        return image.to(self.device), mask.to(self.device)

    def saved_maps(self) -> dict[str, np.ndarray]:
        """The run's maps per method (N, D, H, W), memory-mapped from explanations/METHOD.npy."""
        from tumorcam.runs.volumes import EXPLANATIONS_DIR
        from tumorcam.runs.volume_settings import all_methods

        maps = {}
        for method in all_methods(self.settings):
            file = self.path / EXPLANATIONS_DIR / f"{method}.npy"
            if not file.is_file():
                raise TumorcamError(f"run: {file} missing; run `tumorcam run` on this folder again", param="run")
            maps[method] = np.load(file, mmap_mode="r")
            if maps[method].shape[0] != len(self.rows):
                raise TumorcamError(f"run: {file} holds {maps[method].shape[0]} maps for the run's "
                                    f"{len(self.rows)} cases", param="run")
        return maps


def refuse_nnunet_run(run: Path) -> None:
    """The run of an nnU-Net model (`runfolder.folder.is_nnunet_run`) is measured by that run alone
    (its model is no MODULE:FACTORY): one error naming the folder."""
    from tumorcam.runfolder.folder import NNUNET_RUN_FILE, is_nnunet_run

    if is_nnunet_run(run):
        raise TumorcamError(f"run: {run} is the run of an nnU-Net model ({NNUNET_RUN_FILE}), measured by that run "
                            "alone; to measure it again, run `tumorcam run` into it again with its nnU-Net model "
                            "folder", param="run")


def evaluate_volume_run(run: str | Path, stages: Sequence[str] = VOLUME_STAGES, *, device: str = "auto",
                        **replace: Any) -> dict[str, dict[str, Any]]:
    """Recompute the `stages` (of `VOLUME_STAGES`) of the run on volumes `run` from its saved maps,
    model and prepared volumes, and write their files (segmentation.json, faithfulness.json,
    localization.json, sanity.json); faithfulness.json's headline reads the sanity verdict (this
    call's, else the run's sanity.json). `replace`: settings that replace the run's (steps,
    baselines, score, schedule, batch_size, top_percent). Returns the files written, by stage."""
    from tumorcam.evaluate.headline import run_headline
    from tumorcam.runs.cases import evaluate_case
    from tumorcam.runs.volumes import faithfulness_file, localization_file, sanity_file, segmentation_file

    unknown = [name for name in stages if name not in VOLUME_STAGES]
    if unknown:
        raise TumorcamError(f"stages: unknown stage(s) {', '.join(unknown)} (choose from {', '.join(VOLUME_STAGES)})",
                            param="stages")
    opened = VolumeRun.open(run, device, **replace)
    settings, header = opened.settings, opened.header
    docs: dict[str, dict[str, Any]] = {}
    if set(stages) & {"segmentation", "faithfulness", "localization"}:
        saved = opened.saved_maps()
        results = []
        for i in range(len(opened.rows)):
            image, mask = opened.case(i)
            maps = {method: np.array(array[i], dtype=np.float32) for method, array in saved.items()}
            results.append(evaluate_case(opened.network, image, mask, i, settings, maps, sequences=False))
        if "segmentation" in stages:
            docs["segmentation"] = segmentation_file(results, settings, header)
        if "faithfulness" in stages:
            docs["faithfulness"] = faithfulness_file(results, settings, header)
        if "localization" in stages:
            docs["localization"] = localization_file(results, settings, header)
    if "sanity" in stages:
        docs["sanity"] = sanity_file(opened.network, opened.prepared, opened.rows, settings, header, opened.device)
    faithfulness = docs.get("faithfulness") or optional_json(opened.path / "faithfulness.json")
    if faithfulness is not None and ("faithfulness" in docs or "sanity" in docs):
        sanity = docs.get("sanity") or optional_json(opened.path / "sanity.json")
        faithfulness["headline"] = run_headline(faithfulness, sanity, unit="case")
        docs["faithfulness"] = faithfulness
    for stage in VOLUME_STAGES:
        if stage in docs:
            write_json(opened.path / f"{stage}.json", docs[stage])
    return docs


def volume_channels(run: str | Path, *, device: str = "auto", **replace: Any) -> dict[str, Any]:
    """Per-sequence attribution of the run on volumes `run`: each case's attribution shares and
    channel-ablation Dice drops (`runs.cases.evaluate_case`'s), written to RUN/channels.json (the
    run's file); `replace` (channel_method, ablation_baseline, ig_steps, ...) replaces the run's
    settings. Returns the file's content."""
    from tumorcam.runs.cases import case_sequences
    from tumorcam.runs.volumes import channels_file

    opened = VolumeRun.open(run, device, **replace)
    measured = [case_sequences(opened.network, opened.case(i)[0], opened.settings) for i in range(len(opened.rows))]
    shares, drops = (np.stack(values) for values in zip(*measured))
    doc = channels_file(shares, drops, opened.settings, opened.header)
    write_json(opened.path / "channels.json", doc)
    return doc
