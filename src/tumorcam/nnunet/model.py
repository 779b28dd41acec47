"""A trained nnU-Net v2 model folder as one differentiable `nn.Module`.

MODEL_FOLDER is nnU-Net's `Trainer__Plans__configuration` results folder: plans.json,
dataset.json and fold_k/CHECKPOINT per trained fold. `load` builds the network as
`nnUNetPredictor.initialize_from_trained_model_folder` does (the trainer class named in the
checkpoint, its `build_network_architecture` from the plans, deep supervision off), one per fold,
but reads the checkpoints through `tumorcam.nnunet.checkpoint` (weights only, unless
`trust_checkpoint`). Test-time mirroring (nnU-Net's default) is applied with `mirror=True`.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tumorcam.errors import TumorcamError, unknown_name
from tumorcam.io import read_json_object
from tumorcam.nnunet.checkpoint import read_checkpoint
from tumorcam.nnunet.sliding import TILE_STEP, mirrored, stitch, whole

DEFAULT_CHECKPOINT = "checkpoint_final.pth"
SLICE_BATCH = 8  # tiles per network call in `forward` for a 2-D patch (small tiles: the per-call cost dominates)


class NnunetModel(nn.Module):
    """The folds' networks of one nnU-Net model and what nnU-Net knows about them.

    `forward(x)`: preprocessed volumes (B, C, *spatial) -> logits (B, K, *spatial), nnU-Net's
    Gaussian-weighted sliding window (`tile_step` of the patch) run with gradients, averaged over
    the folds; with `mirror`, each tile is also run flipped along the checkpoint's mirroring axes
    and averaged, as nnU-Net's predictor does by default. A 2d configuration's 2-D patch tiles a
    volume (C, Z, X, Y) slice by slice (nnU-Net's order), SLICE_BATCH tiles per network call. `preprocess` turns raw case files into such a volume; `explain`
    (`tumorcam.nnunet.explain`) explains one, and `export_map` (`tumorcam.nnunet.export`) puts a map
    back on the raw grid.

    Attributes:
        networks: one network per fold (`nn.ModuleList`), in eval mode.
        folds: the fold names, as loaded.
        plans_manager, configuration_manager, label_manager: nnU-Net's views of plans.json and
            dataset.json for this configuration.
        configuration, trainer_name, dataset_json: as in the checkpoint and the folder.
        mirror_axes: the checkpoint's `inference_allowed_mirroring_axes`.
        mirror: whether tiles are mirrored (test-time augmentation) along `mirror_axes`.
        one_pass: whether the network runs on the whole volume at once (`sliding.whole`, padded to
            its stride) instead of nnU-Net's tiles: no tiling, one map, when the volume fits in memory.
    """

    def __init__(self, networks: Sequence[nn.Module], folds: Sequence[int | str], plans: dict[str, Any],
                 dataset_json: dict[str, Any], configuration: str, trainer_name: str,
                 mirror_axes: Sequence[int] | None, tile_step: float = TILE_STEP, mirror: bool = False,
                 one_pass: bool = False) -> None:
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        super().__init__()
        self.networks = nn.ModuleList(networks).eval()
        self.folds = tuple(folds)
        self.plans_manager = PlansManager(plans)
        self.configuration_manager = self.plans_manager.get_configuration(configuration)
        self.label_manager = self.plans_manager.get_label_manager(dataset_json)
        self.dataset_json = dataset_json
        self.configuration = configuration
        self.trainer_name = trainer_name
        self.mirror_axes = None if mirror_axes is None else tuple(mirror_axes)
        self.tile_step = tile_step
        self.mirror = mirror
        self.one_pass = one_pass

    @property
    def patch_size(self) -> tuple[int, ...]:
        """The network's input patch (nnU-Net's tile), from the plans."""
        return tuple(self.configuration_manager.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, K, *spatial) of preprocessed volumes (B, C, *spatial), averaged over the folds."""
        return torch.stack([torch.stack([self.stitched(volume, network) for volume in x])
                            for network in self.networks]).mean(0)

    @property
    def input_channels(self) -> int:
        """The channel files a case has (dataset.json's channel_names; "modality" in older files)."""
        return len(self.dataset_json.get("channel_names", self.dataset_json.get("modality", {})))

    @property
    def stride(self) -> tuple[int, ...]:
        """The network's total downsampling per axis (the product of the plans' pooling kernels)."""
        kernels = np.asarray(self.configuration_manager.pool_op_kernel_sizes)
        return tuple(int(k) for k in kernels.prod(axis=0))

    def stitched(self, volume: torch.Tensor, network: nn.Module) -> torch.Tensor:
        """One network's sliding-window logits (K, *spatial) of one volume (C, *spatial)."""
        batch = SLICE_BATCH if len(self.patch_size) == 2 else 1
        return self.window(volume, self.per_tile(network), batch)

    def window(self, volume: torch.Tensor, run: Callable[[torch.Tensor], torch.Tensor], batch: int = 1) -> torch.Tensor:
        """`run` over `volume` (C, *spatial) as this model runs its network: nnU-Net's Gaussian-weighted
        tiles (`sliding.stitch`, `batch` tiles per call), or the whole volume at once with `one_pass`."""
        if self.one_pass:
            return whole(volume, self.stride, run)
        return stitch(volume, self.patch_size, run, self.tile_step, batch)

    def per_tile(self, run: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
        """`run` on tiles (B, C, *patch), mirrored along `mirror_axes` when `mirror` is set."""
        return partial(mirrored, run, self.mirror_axes) if self.mirror and self.mirror_axes else run

    def channel(self, label: str) -> int:
        """The output channel of the label (or region) named `label` in dataset.json."""
        labels = self.dataset_json["labels"]
        if label not in labels or label == "ignore":
            raise unknown_name("label", label, [name for name in labels if name not in ("background", "ignore")])
        value = labels[label]
        if self.label_manager.has_regions:
            region = tuple(value) if isinstance(value, (list, tuple)) else value
            regions = [tuple(r) if isinstance(r, (list, tuple)) else r for r in self.label_manager.foreground_regions]
            if region not in regions:
                raise TumorcamError(f"label: {label!r} is not one of the model's regions", param="label")
            return regions.index(region)
        if label == "background" or isinstance(value, (list, tuple)):
            raise TumorcamError(f"label: {label!r} is not a foreground class of the model", param="label")
        return self.label_manager.all_labels.index(int(value))

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """nnU-Net's nonlinearity of logits (K, *spatial): sigmoid for regions, softmax for classes."""
        return self.label_manager.apply_inference_nonlin(logits.detach().float().cpu())

    def segmentation(self, logits: torch.Tensor) -> np.ndarray:
        """The label map (*spatial) of logits (K, *spatial), as nnU-Net converts them."""
        seg = self.label_manager.convert_logits_to_segmentation(logits.detach().float().cpu())
        return np.asarray(seg)

    def preprocess(self, case_files: Sequence[str | os.PathLike]) -> tuple[np.ndarray, dict[str, Any]]:
        """nnU-Net's preprocessing of one case (its channel files, in channel order): the volume
        (C, *spatial) float32 on the configuration's grid and the properties that undo it."""
        files = [str(f) for f in case_files]
        expected = self.input_channels
        if len(files) != expected:
            raise TumorcamError(f"case_files: the model reads {expected} channel file(s) per case, got {len(files)}",
                                param="case_files")
        missing = [f for f in files if not Path(f).is_file()]
        if missing:
            raise TumorcamError(f"case_files: {missing[0]}: no such file", param="case_files")
        preprocessor = self.configuration_manager.preprocessor_class(verbose=False)
        data, _, properties = preprocessor.run_case(files, None, self.plans_manager, self.configuration_manager,
                                                    self.dataset_json)
        return np.asarray(data, dtype=np.float32), properties

    def explain_tiles(self, images: torch.Tensor, **options: Any) -> tuple[torch.Tensor, str]:
        """`tumorcam.nnunet.explain.explain_tiles(self, images, **options)`: what `tumorcam.explain`
        runs for a layer method on this model (its layers run once per tile)."""
        from tumorcam.nnunet.explain import explain_tiles

        return explain_tiles(self, images, **options)

    def tile_layer(self) -> str:
        """tumorcam's default layer (module path in each fold's network), found on one empty tile."""
        from tumorcam.explain.layers import default_layer
        from tumorcam.logits import explaining

        network = self.networks[0]
        example = torch.zeros((1, self.input_channels, *self.patch_size), device=next(network.parameters()).device)
        with explaining(network):
            return default_layer(network, example)

    def cascade_stages(self) -> list[str]:
        """The sanity check's cascade, output first, as module-path patterns over every fold
        (`networks.*.`): the segmentation layers, the decoder's stages and their transposed
        convolutions from the last, then the encoder's stages from the deepest (and its stem)."""
        network = self.networks[0]
        decoder, encoder = network.decoder, network.encoder
        stages = ["decoder.seg_layers"]
        for i in reversed(range(len(decoder.stages))):
            stages += [f"decoder.stages.{i}", f"decoder.transpconvs.{i}"]
        stages += [f"encoder.stages.{i}" for i in reversed(range(len(encoder.stages)))]
        if getattr(encoder, "stem", None) is not None:
            stages.append("encoder.stem")
        return [f"networks.*.{stage}" for stage in stages]

    def explain(self, volume: np.ndarray | torch.Tensor, label: str, **options: Any) -> Any:
        """`tumorcam.nnunet.explain.explain_volume(self, volume, label, **options)`."""
        from tumorcam.nnunet.explain import explain_volume

        return explain_volume(self, volume, label, **options)

    def export_map(self, heatmap: np.ndarray, properties: dict[str, Any]) -> np.ndarray:
        """`tumorcam.nnunet.export.map_to_raw(self, heatmap, properties)`."""
        from tumorcam.nnunet.export import map_to_raw

        return map_to_raw(self, heatmap, properties)


def load(folder: str | os.PathLike, folds: Sequence[int | str] = (0,), checkpoint: str = DEFAULT_CHECKPOINT,
         trust_checkpoint: bool = False, mirror: bool = False, one_pass: bool = False) -> NnunetModel:
    """The nnU-Net model in `folder` (Trainer__Plans__configuration) with the networks of `folds`
    (ints, or "all"), each from fold_k/`checkpoint`, read weights-only unless `trust_checkpoint`;
    `mirror`: nnU-Net's test-time mirroring of every tile; `one_pass`: the whole volume at once
    instead of tiles (see `NnunetModel`)."""
    _require_nnunetv2()
    folder = Path(folder)
    for name in ("plans.json", "dataset.json"):
        if not (folder / name).is_file():
            raise TumorcamError(f"folder: {folder} has no {name}; give nnU-Net's Trainer__Plans__configuration "
                                "results folder", param="folder")
    folds = list(folds)
    if not folds:
        raise TumorcamError("folds: give at least one fold", param="folds")
    paths = []
    for fold in folds:
        path = folder / f"fold_{fold}" / checkpoint
        if not path.is_file():
            found = sorted(p.parent.name for p in folder.glob(f"fold_*/{checkpoint}"))
            raise TumorcamError(f"folds: {path} does not exist (folds with {checkpoint}: {', '.join(found) or 'none'})",
                                param="folds")
        paths.append(path)
    checkpoints = [read_checkpoint(path, trust_checkpoint) for path in paths]
    plans = read_json_object(folder / "plans.json")
    dataset_json = read_json_object(folder / "dataset.json")
    first = checkpoints[0]
    configuration = first["init_args"]["configuration"]
    networks = []
    for path, state in zip(paths, checkpoints):
        network = build_network(plans, dataset_json, configuration, first["trainer_name"])
        try:
            network.load_state_dict(state["network_weights"])
        except RuntimeError as exc:
            raise TumorcamError(f"checkpoint: {path}: its weights do not fit the network of plans.json "
                                f"({' '.join(str(exc).split())[:300]})", param="checkpoint") from None
        networks.append(network)
    return NnunetModel(networks, folds, plans, dataset_json, configuration, first["trainer_name"],
                       first.get("inference_allowed_mirroring_axes"), mirror=mirror, one_pass=one_pass)


def _require_nnunetv2() -> None:
    """nnunetv2 must be installed (the `nnunet` extra); else a one-line error saying how."""
    try:
        import nnunetv2  # noqa: F401
    except ImportError:
        raise TumorcamError("reading an nnU-Net model needs nnunetv2: pip install 'tumorcam[nnunet]'") from None


def build_network(plans: dict[str, Any], dataset_json: dict[str, Any], configuration: str,
                  trainer_name: str) -> nn.Module:
    """The network of `configuration` as the trainer class `trainer_name` builds it, without deep
    supervision, in eval mode (the steps of `initialize_from_trained_model_folder`)."""
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans_manager = PlansManager(plans)
    if configuration not in plans_manager.available_configurations:
        raise TumorcamError(f"folder: plans.json has no configuration {configuration!r} (the checkpoint's)",
                            param="folder")
    configuration_manager = plans_manager.get_configuration(configuration)
    if configuration_manager.previous_stage_name is not None:
        raise TumorcamError(f"folder: {configuration} is a cascade stage (its input holds the segmentation of "
                            f"{configuration_manager.previous_stage_name}); tumorcam explains 2d, 3d_lowres and "
                            "3d_fullres models", param="folder")
    inputs = determine_num_input_channels(plans_manager, configuration_manager, dataset_json)
    outputs = plans_manager.get_label_manager(dataset_json).num_segmentation_heads
    trainer = trainer_class(trainer_name)
    if "plans_manager" in inspect.signature(trainer.build_network_architecture).parameters:
        network = trainer.build_network_architecture(plans_manager, configuration_manager, inputs, outputs,
                                                     enable_deep_supervision=False)
    else:
        network = trainer.build_network_architecture(
            configuration_manager.network_arch_class_name, configuration_manager.network_arch_init_kwargs,
            configuration_manager.network_arch_init_kwargs_req_import, inputs, outputs,
            enable_deep_supervision=False)
    return network.eval()


def trainer_class(name: str) -> type:
    """nnU-Net's trainer class `name` (searched in nnunetv2.training.nnUNetTrainer, as nnU-Net does)."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    if name == nnUNetTrainer.__name__:
        return nnUNetTrainer
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    try:
        return recursive_find_trainer_class_by_name(name)
    except RuntimeError:
        raise TumorcamError(f"checkpoint: trainer class {name!r} is not in the installed nnunetv2 "
                            "(install the package that defines it)", param="checkpoint") from None
