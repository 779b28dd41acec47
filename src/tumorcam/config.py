"""`Settings`: every setting of every stage of a run, on slices or on volumes, in one object.

A run on slices saves it as `RUN/config.json`, a run on volumes as `RUN/volume_config.json`;
`Settings.load` reads either (and the files of earlier versions, `LEGACY`). The defaults are the
field defaults below and the presets (`PRESETS`): `paper-2d` is the seed's setting (224x224,
ResNet34, ImageNet encoder weights, Adam 1e-4, BCEWithLogitsLoss, batch 8); `demo-2d` trains on the
synthetic slices on a 2-core CPU in a few minutes (6 epochs) and still learns; `demo-3d` is the
volume demo (`tumorcam run --volumes`); `own-model` explains a user's network (`model.network`) on
slices or volumes, without training. `demo` and `paper` are the names of `demo-2d` and `paper-2d`
in runs made before. Every value is checked by one routine (`check`) against the `CHECKS` table
of its section; a wrong key or value is one `TumorcamError` naming the setting (`param=`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from tumorcam.device import DEMO_THREADS
from tumorcam.errors import TumorcamError

SPLITS = ("train", "val", "test", "all")


def _methods() -> dict[str, Any]:
    from tumorcam.explain import METHODS

    return METHODS


def _targets() -> dict[str, Any]:
    from tumorcam.explain import TARGETS

    return TARGETS


def _baselines() -> dict[str, Any]:
    from tumorcam.evaluate.baselines import BASELINES

    return BASELINES


def _channel_methods() -> tuple[str, ...]:
    from tumorcam.evaluate.channels import CHANNEL_METHODS

    return tuple(CHANNEL_METHODS)


Check = tuple[Callable[[Any], bool], str]  # a value rule of a setting and what it asks
POSITIVE_INT: Check = (lambda v: v >= 1, "must be >= 1")
POSITIVE_INT_OR_NULL: Check = (lambda v: v is None or v >= 1, "must be >= 1 or null")
NON_EMPTY: Check = (bool, "must not be empty")
KNOWN_METHODS: Check = (lambda v: bool(v) and all(m in _methods() for m in v), "must be method names of tumorcam.explain")
KNOWN_TARGETS: Check = (lambda v: bool(v) and all(t in _targets() for t in v), "must be target names of tumorcam.explain")


@dataclass
class ModelConfig:
    architecture: str = "Unet"
    encoder: str = "resnet34"
    encoder_weights: str = "imagenet"  # "imagenet", "none" or a path to a local encoder file
    classes: int = 1
    network: str | None = None  # a user's network, MODULE:FACTORY (`tumorcam.models.user`): no training, explained as is
    weights: str | None = None  # the state_dict of `network` (.pth or .safetensors)

    CHECKS: ClassVar[dict[str, Check]] = {
        "classes": POSITIVE_INT,
        "network": (lambda v: v is None or v.count(":") == 1 and all(v.split(":")), "must be MODULE:FACTORY or null"),
    }


@dataclass
class TrainConfig:
    size: int = 224
    epochs: int = 20
    batch_size: int = 8
    lr: float = 1e-4
    schedule: str = "constant"  # "constant" (the seed's) or "cosine" (per-epoch cosine decay to 0)
    loss: str = "bce"  # "bce" (the seed's BCEWithLogitsLoss) or "dice+bce"
    augment: bool = False
    seed: int = 0
    device: str = "auto"  # "auto", "cpu", "cuda" or "cuda:N": every stage's device
    amp: bool = True  # bf16 autocast on CUDA for training and segmentation inference; ignored on CPU
    channels_last: bool = True  # channels_last memory format on CUDA; ignored on CPU
    compile: bool = False  # torch.compile the training step's model
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower on CUDA)
    eval_batch_size: int = 64  # batch for validation and evaluation
    num_threads: int = 0  # every stage's CPU threads; 0: torch's default lowered to the idle cores (load average)

    CHECKS: ClassVar[dict[str, Check]] = {
        "size": (lambda v: v >= 32 and v % 32 == 0, "must be a multiple of 32, >= 32"),
        "epochs": POSITIVE_INT,
        "batch_size": POSITIVE_INT,
        "lr": (lambda v: v > 0, "must be > 0"),
        "schedule": (lambda v: v in ("constant", "cosine"), "must be constant or cosine"),
        "loss": (lambda v: v in ("bce", "dice+bce"), "must be bce or dice+bce"),
        "eval_batch_size": POSITIVE_INT,
        "num_threads": (lambda v: v >= 0, "must be >= 0"),
    }


@dataclass
class ExplainConfig:
    # null: test when the data has a test split, else val (slices) or all (volumes)
    split: str | None = "test"
    limit: int | None = None  # slices: a cap on the number of slices after the patient sample (None: no cap)
    # patients sampled from the split, spread over classes (None: all); volumes: the first N cases (a case is a patient)
    patients: int | None = None
    slices_per_patient: int | None = 4  # slices: at most K slices per sampled patient (None: all of them)
    # volumes add the controls random and predicted-mask when they are not listed
    methods: list[str] = field(default_factory=lambda: [
        "gradcam", "gradcam++", "saliency", "integrated-gradients", "random",
        "predicted-mask", "predicted-probability", "dilated-mask", "edges"])
    # primary target first (evidence in docs/findings.md); mean-logits is the seed's; volumes: one target
    targets: list[str] = field(default_factory=lambda: ["predicted-region", "mean-logits"])
    # null: the last convolution block before the head, found on the network; volumes: one layer
    layers: list[str] | None = field(default_factory=lambda: ["decoder.blocks.4"])
    channel: int = 0  # the explained output class of a user's network
    output: int | str | None = None  # which output of a network that returns several (index or key)
    batch_size: int = 32
    ig_steps: int = 32  # integrated gradients: points on the path from black to the input
    amp: bool = False  # bf16 autocast for maps and the perturbation game on CUDA (off: not shown to agree with fp32)
    seed: int = 0  # the random-map baseline: each slice's noise is seeded by (seed, file id)

    CHECKS: ClassVar[dict[str, Check]] = {
        "split": (lambda v: v is None or v in SPLITS, "must be train, val, test, all or null"),
        "limit": POSITIVE_INT_OR_NULL,
        "patients": POSITIVE_INT_OR_NULL,
        "slices_per_patient": POSITIVE_INT_OR_NULL,
        "methods": KNOWN_METHODS,
        "targets": KNOWN_TARGETS,
        "layers": (lambda v: v is None or bool(v), "must not be empty (null: the last block before the head)"),
        "channel": (lambda v: v >= 0, "must be >= 0"),
        "batch_size": POSITIVE_INT,
        "ig_steps": POSITIVE_INT,
    }


@dataclass
class PrimaryConfig:
    """The one primary comparison of a run, reported with its raw p; every other test is exploratory."""

    method: str = "gradcam"
    target: str = "predicted-region"
    layer: str | None = "decoder.blocks.4"  # null: the explained layer
    baseline: str = "zero"

    CHECKS: ClassVar[dict[str, Check]] = {
        "method": (lambda v: v in _methods() and not _methods()[v].control, "must be a method that is not a control"),
        "target": (lambda v: v in _targets(), "must be a target name of tumorcam.explain"),
    }


@dataclass
class EvaluateConfig:
    split: str = "test"  # slices: the split of the segmentation metrics
    steps: int = 50  # Deletion/Insertion steps K
    schedule: str = "log"  # "log" (fractions spaced logarithmically) or "uniform" (k/K of the input, the seed's)
    # of zero, blur, mean, road, rise (RISE: zero for deletion, blur for insertion; its deletion repeats zero's)
    baselines: list[str] = field(default_factory=lambda: ["zero", "blur"])
    score: str = "target"  # "target" (follows the map's target), "mean-sigmoid", "predicted-region" or "dice"
    primary: PrimaryConfig = field(default_factory=PrimaryConfig)
    alpha: float = 0.05  # significance level of every verdict (after Holm adjustment for exploratory tests)
    batch_size: int = 256  # perturbed inputs per forward
    road_noise: float = 0.01  # std of ROAD's imputation noise, in [0, 1] intensity units
    top_percent: float = 5.0  # localisation: IoU of the top p% of the map with the mask
    bootstrap: int = 1000
    # units (slices, or cases of a run on volumes) the sanity check recomputes per randomised layer
    # (None: every explained one; 0: no sanity check, volumes)
    sanity: int | None = None
    sanity_threshold: float = 0.5  # fails when the CI of the patients' mean |Spearman| or mean SSIM lies >= this
    channel_method: str = "integrated-gradients"  # volumes: the per-sequence attribution
    ablation_baseline: str = "zero"  # volumes: what an ablated sequence is replaced with (zero or mean)
    seed: int = 0

    CHECKS: ClassVar[dict[str, Check]] = {
        "split": (lambda v: v in SPLITS, "must be train, val, test or all"),
        "steps": POSITIVE_INT,
        "schedule": (lambda v: v in ("log", "uniform"), "must be log or uniform"),
        "baselines": (lambda v: bool(v) and all(b in _baselines() for b in v), "must be baseline names (zero, blur, "
                      "mean, road, rise)"),
        "batch_size": POSITIVE_INT,
        "alpha": (lambda v: 0 < v < 1, "must be in (0, 1)"),
        "road_noise": (lambda v: v >= 0, "must be >= 0"),
        "top_percent": (lambda v: 0 < v <= 100, "must be in (0, 100]"),
        "bootstrap": POSITIVE_INT,
        "sanity": (lambda v: v is None or v >= 0, "must be >= 0 or null"),
        "channel_method": (lambda v: v in _channel_methods(), "must be a method of tumorcam.evaluate.channels"),
        "ablation_baseline": (lambda v: v in ("zero", "mean"), "must be zero or mean"),
    }


@dataclass
class Settings:
    preset: str = "paper-2d"
    data: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    explain: ExplainConfig = field(default_factory=ExplainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "settings") -> Settings:
        """The settings of a JSON object (keys of `LEGACY` renamed), checked (`check`)."""
        return _build(cls, _renamed(data), source)

    @classmethod
    def load(cls, path: str | Path) -> Settings:
        """The settings of the JSON file `path` (`from_dict`)."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise TumorcamError(f"config: {path}: no settings file", param="config") from None
        except (OSError, ValueError) as exc:
            raise TumorcamError(f"config: {path}: not a readable JSON file ({exc})", param="config") from None
        return cls.from_dict(data, source=str(path))

    def save(self, path: str | Path) -> None:
        from tumorcam.io import write_json

        write_json(path, self.to_dict())

    def replace(self, overrides: dict[str, Any]) -> Settings:
        """A checked copy with the values of `overrides` ({"evaluate.steps": 8, ...}; None leaves a setting as it is)."""
        copied = copy.deepcopy(self)
        for path, value in overrides.items():
            if value is not None:
                *sections, name = path.split(".")
                owner = copied
                for section in sections:
                    owner = getattr(owner, section)
                setattr(owner, name, list(value) if isinstance(value, (list, tuple)) else value)
        copied.check()
        return copied

    def check(self) -> None:
        """One TumorcamError for the first setting of a wrong type or out of range."""
        _build(Settings, self.to_dict(), "settings")


Config = Settings  # the name the stages of a run on slices import


def overridden(section: Any, **values: Any) -> Any:
    """A copy of a settings section with the `values` that are not None, each checked by its `CHECKS`;
    the one way an entry point's arguments replace the run's settings."""
    given = {name: value for name, value in values.items() if value is not None}
    updated = dataclasses.replace(section, **given)
    _check_values(type(updated), updated, type(updated).__name__)
    return updated


def _demo_2d() -> Settings:
    return Settings(
        preset="demo-2d",
        model=ModelConfig(encoder_weights="none"),
        # num_threads fixed (DEMO_THREADS): the thread count changes the reduction order,
        # so the automatic one (from the load average) would change the demo's figures from run to run
        train=TrainConfig(size=96, epochs=6, batch_size=8, lr=2e-3, schedule="cosine", loss="dice+bce",
                          augment=True, num_threads=DEMO_THREADS),
        # sized so `tumorcam run` fits 5 min on 2 CPU cores: every test patient (12 of the synthetic
        # default), 2 slices each, the primary target and baseline only, K = 8 log-spaced steps
        explain=ExplainConfig(patients=None, slices_per_patient=2, limit=None, targets=["predicted-region"],
                              methods=["gradcam", "saliency", "integrated-gradients", "random", "predicted-mask",
                                       "predicted-probability", "dilated-mask", "edges"],
                              batch_size=8, ig_steps=8),
        evaluate=EvaluateConfig(steps=8, schedule="log", baselines=["zero"], bootstrap=500),
    )


def _volume_explain(split: str | None) -> ExplainConfig:
    """A run on volumes: every case of `split`, Grad-CAM and saliency of the predicted region at the last block."""
    return ExplainConfig(split=split, slices_per_patient=None, methods=["gradcam", "saliency"],
                         targets=["predicted-region"], layers=None, ig_steps=16)


def _volume_evaluate() -> EvaluateConfig:
    return EvaluateConfig(steps=20, score="predicted-region", batch_size=16, primary=PrimaryConfig(layer=None))


def _demo_3d() -> Settings:
    return Settings(preset="demo-3d", train=TrainConfig(size=32, epochs=30, num_threads=DEMO_THREADS),
                    explain=_volume_explain("test"), evaluate=_volume_evaluate())


def _own_model() -> Settings:
    explain = _volume_explain(None)
    explain.methods = ["gradcam", "saliency", "random", "predicted-mask"]
    return Settings(preset="own-model", model=ModelConfig(encoder_weights="none"), explain=explain,
                    evaluate=_volume_evaluate())


PRESETS: dict[str, Callable[[], Settings]] = {
    "demo-2d": _demo_2d, "paper-2d": lambda: Settings(preset="paper-2d"), "demo-3d": _demo_3d, "own-model": _own_model}
ALIASES = {"demo": "demo-2d", "paper": "paper-2d"}  # the preset names of earlier runs


def preset(name: str) -> Settings:
    """The settings of a named preset (`PRESETS`, or an alias of `ALIASES`)."""
    factory = PRESETS.get(ALIASES.get(name, name))
    if factory is None:
        raise TumorcamError(f"preset: unknown preset {name!r} (choose {', '.join([*PRESETS, *ALIASES])})",
                            param="preset")
    return factory()


# Setting names of earlier files -> their path now.
LEGACY = {"evaluate.sanity_slices": "evaluate.sanity"}


def _renamed(data: Any) -> Any:
    """`data` with the keys of `LEGACY` under their names now."""
    if not isinstance(data, dict):
        return data
    data = copy.deepcopy(data)
    for old, new in LEGACY.items():
        *where, name = old.split(".")
        section = data
        for key in where:
            section = section.get(key) if isinstance(section, dict) else None
        if isinstance(section, dict) and name in section:
            section[new.rsplit(".", 1)[-1]] = section.pop(name)
    return data


SECTIONS: dict[str, type] = {}  # annotation name -> nested section class, filled below


def _error(where: str, name: str, message: str) -> TumorcamError:
    """The error of the setting `name` at `where` (a source and a dotted path), naming the setting with `param=`."""
    return TumorcamError(f"{name}: {message} (in {where})", param=name)


def _build(cls: type, data: Any, where: str) -> Any:
    """`cls` from a JSON object: names, types and values checked; the first wrong field is one error naming it."""
    if not isinstance(data, dict):
        raise _error(where, where.rsplit(".", 1)[-1], f"expected an object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise _error(where, unknown[0], f"unknown setting(s) {', '.join(unknown)} (known: {', '.join(fields)})")
    kwargs = {}
    for name, value in data.items():
        annotation = str(fields[name].type)
        if annotation in SECTIONS:
            kwargs[name] = _build(SECTIONS[annotation], value, f"{where}.{name}")
        else:
            _check_type(value, annotation, where, name)
            kwargs[name] = list(value) if isinstance(value, list) else value
    section = cls(**kwargs)
    _check_values(cls, section, where)
    return section


def _check_values(cls: type, section: Any, where: str) -> None:
    for name, (allowed, message) in getattr(cls, "CHECKS", {}).items():
        value = getattr(section, name)
        if not allowed(value):
            raise _error(f"{where}.{name}", name, f"{message}, got {value!r}")


_SCALARS: dict[str, tuple[type, ...]] = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,)}


def _check_type(value: Any, annotation: str, where: str, name: str) -> None:
    """Check a JSON value against a field annotation: str, int, float, bool, `X | None`, `list[X]`."""
    if not _fits(value, annotation):
        raise _error(f"{where}.{name}", name, f"expected {annotation}, got {type(value).__name__} {value!r}")


def _fits(value: Any, annotation: str) -> bool:
    for option in (a.strip() for a in annotation.split("|")):
        if option == "None" and value is None:
            return True
        if option.startswith("list[") and isinstance(value, list):
            return all(_fits(item, option[5:-1]) for item in value)
        kinds = _SCALARS.get(option)
        if kinds and isinstance(value, kinds) and (option == "bool" or not isinstance(value, bool)):
            return True
    return False


SECTIONS.update({c.__name__: c for c in (ModelConfig, TrainConfig, ExplainConfig, PrimaryConfig, EvaluateConfig)})
