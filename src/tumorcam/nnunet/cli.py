"""`tumorcam explain --nnunet MODEL_FOLDER --image CASE_0000.nii.gz ... --out DIR`: the command's logic.

One case (its channel files, in order) is preprocessed by nnU-Net, explained tile by tile for
each fold (`explain_volume`), and the fold mean is written on the raw grid of the first file as
DIR/CASE_METHOD_LABEL.nii.gz (float32 in [0, 1], the file's affine). The library's parameter names
that the command spells differently are mapped to its flags (`PARAMS`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tumorcam.errors import TumorcamError

# library parameter -> the explain command's parameter (shown as its flag by the CLI)
PARAMS = {"folder": "nnunet", "model": "nnunet", "case_files": "images", "reference": "images"}


def explain_nnunet(folder: Path | None, images: Sequence[Path] | None, out: Path | None, *, folds: str | None,
                   checkpoint: str | None, label: str | None, trust_checkpoint: bool, method: str | None,
                   layer: str | None, mirror: bool = False, one_pass: bool = False, per_fold: bool = False,
                   device: str = "auto", others: Sequence[str] = ()) -> list[str]:
    """Explain one case with the nnU-Net model in `folder`; return the lines the command prints.
    `others`: flags given that the nnU-Net mode does not take (refused); `per_fold`: each fold's map
    too, as DIR/CASE_METHOD_LABEL_foldK.nii.gz."""
    from tumorcam.device import resolve_device
    from tumorcam.runs.volume_files import case_name
    from tumorcam.nnunet import load, write_map
    from tumorcam.nnunet.model import DEFAULT_CHECKPOINT

    if folder is None:
        raise TumorcamError("nnunet: folds, checkpoint, label, trust_checkpoint, mirror, one_pass and per_fold "
                            "need an nnU-Net model folder", param="nnunet")
    if others:
        raise TumorcamError(f"nnunet: not with {', '.join(others)}", param="nnunet")
    if not images:
        raise TumorcamError("images: give the case's channel files, CASE_0000.nii.gz CASE_0001.nii.gz ...",
                            param="images")
    if out is None:
        raise TumorcamError("out: give a folder for the map", param="out")
    method = method or "gradcam"
    try:
        model = load(folder, folds=fold_names(folds), checkpoint=checkpoint or DEFAULT_CHECKPOINT,
                     trust_checkpoint=trust_checkpoint, mirror=mirror, one_pass=one_pass).to(resolve_device(device))
        label = label or _only_label(model.dataset_json["labels"])
        volume, properties = model.preprocess(images)
        result = model.explain(volume, label, method=method, layer=layer)
        Path(out).mkdir(parents=True, exist_ok=True)
        path = Path(out) / f"{case_name(images[0])}_{method}_{label}.nii.gz"
        write_map(model, result.heatmap, properties, images[0], path)
        fold_paths = [path.with_name(path.name.replace(".nii.gz", f"_fold{fold}.nii.gz")) for fold in model.folds]
        for fold_map, fold_path in zip(result.fold_maps if per_fold else [], fold_paths):
            write_map(model, fold_map, properties, images[0], fold_path)
    except TumorcamError as exc:
        if exc.param not in PARAMS:
            raise
        message = str(exc)
        message = PARAMS[exc.param] + message[len(exc.param):] if message.startswith(exc.param) else message
        raise TumorcamError(message, param=PARAMS[exc.param]) from None
    folds_text = ",".join(map(str, model.folds))
    how = ", ".join(["mirrored"] * mirror + ["one pass"] * one_pass + ["tile by tile"] * (not one_pass))
    return [f"{method} of {label} (channel {result.channel}), fold(s) {folds_text}, at layer {result.layer} of "
            f"{model.trainer_name} {model.configuration}, {how}",
            *(f"wrote {p}" for p in [path, *(fold_paths if per_fold else [])])]


def fold_names(folds: str | None) -> list[int | str]:
    """The folds of a comma-separated `folds` text ("0,1", "all"), numbers as ints; None: fold 0."""
    return [int(f) if f.strip().isdigit() else f.strip() for f in (folds or "0").split(",")]


def _only_label(labels: dict) -> str:
    """The one foreground label of dataset.json, else an error listing them."""
    names = [name for name in labels if name not in ("background", "ignore")]
    if len(names) != 1:
        raise TumorcamError(f"label: the model has several labels; choose one of {', '.join(names)}", param="label")
    return names[0]
