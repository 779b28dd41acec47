"""One config object for a run: every setting of every stage, saved as `RUN/config.json`.

Presets fill it: `paper` is the seed's setting (224x224, ResNet34, ImageNet encoder weights,
Adam 1e-4, BCEWithLogitsLoss, batch 8); `demo` trains on the synthetic set on a 2-core CPU in a
few minutes (6 epochs) and still learns.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from tumorcam.errors import TumorcamError

DEMO_THREADS = 1  # the demos' CPU threads (`demo` preset, volume demo): fixed, so their figures never follow the load


Check = tuple[Callable[[Any], bool], str]  # a value rule of a config field and what it asks
POSITIVE_INT: Check = (lambda v: v >= 1, "must be >= 1")
POSITIVE_INT_OR_NULL: Check = (lambda v: v is None or v >= 1, "must be >= 1 or null")
NON_EMPTY: Check = (bool, "must not be empty")


@dataclass
class ModelConfig:
    architecture: str = "Unet"
    encoder: str = "resnet34"
    encoder_weights: str = "imagenet"  # "imagenet", "none" or a path to a local encoder file
    classes: int = 1

    CHECKS: ClassVar[dict[str, Check]] = {
        "classes": POSITIVE_INT,
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
    device: str = "auto"  # "auto", "cpu", "cuda" or "cuda:N"
    amp: bool = True  # bf16 autocast on CUDA for training and segmentation inference; ignored on CPU
    channels_last: bool = True  # channels_last memory format on CUDA; ignored on CPU
    compile: bool = False  # torch.compile the training step's model
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower on CUDA)
    eval_batch_size: int = 64  # batch for validation and evaluation
    num_threads: int = 0  # CPU threads; 0: torch's default lowered to the idle cores (load average)

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
    split: str = "test"
    limit: int | None = None  # a cap on the number of slices after the patient sample (None: no cap)
    patients: int | None = None  # patients sampled from the split, spread over classes (None: all)
    slices_per_patient: int | None = 4  # at most K slices per sampled patient (None: all of them)
    methods: list[str] = field(default_factory=lambda: [
        "gradcam", "gradcam++", "saliency", "integrated-gradients", "random",
        "predicted-mask", "predicted-probability", "dilated-mask", "edges"])
    # primary target first (evidence in docs/findings.md); mean-logits is the seed's
    targets: list[str] = field(default_factory=lambda: ["predicted-region", "mean-logits"])
    layers: list[str] = field(default_factory=lambda: ["decoder.blocks.4"])
    batch_size: int = 32
    ig_steps: int = 32  # integrated gradients: points on the path from black to the slice
    amp: bool = False  # bf16 autocast for maps and the perturbation game on CUDA (off: not shown to agree with fp32)
    seed: int = 0  # the random-map baseline: each slice's noise is seeded by (seed, file id)

    CHECKS: ClassVar[dict[str, Check]] = {
        "limit": POSITIVE_INT_OR_NULL,
        "patients": POSITIVE_INT_OR_NULL,
        "slices_per_patient": POSITIVE_INT_OR_NULL,
        "methods": NON_EMPTY,
        "targets": NON_EMPTY,
        "layers": NON_EMPTY,
        "batch_size": POSITIVE_INT,
        "ig_steps": POSITIVE_INT,
    }


@dataclass
class PrimaryConfig:
    """The one primary comparison of a run, reported with its raw p; every other test is exploratory."""

    method: str = "gradcam"
    target: str = "predicted-region"
    layer: str = "decoder.blocks.4"
    baseline: str = "zero"


@dataclass
class EvaluateConfig:
    split: str = "test"
    steps: int = 50  # Deletion/Insertion steps K
    schedule: str = "log"  # "log" (fractions spaced logarithmically) or "uniform" (k/K of the slice, the seed's)
    # of zero, blur, mean, road, rise (RISE: zero for deletion, blur for insertion; its deletion repeats zero's)
    baselines: list[str] = field(default_factory=lambda: ["zero", "blur"])
    score: str = "target"  # "target" (follows the map's target), "mean-sigmoid", "predicted-region" or "dice"
    primary: PrimaryConfig = field(default_factory=PrimaryConfig)
    alpha: float = 0.05  # significance level of every verdict (after Holm adjustment for exploratory tests)
    batch_size: int = 256  # perturbed images per forward
    road_noise: float = 0.01  # std of ROAD's imputation noise, in [0, 1] intensity units
    top_percent: float = 5.0  # localisation: IoU of the top p% of the map with the mask
    bootstrap: int = 1000
    sanity_slices: int | None = None  # slices the sanity check recomputes per randomised layer (None: every explained one)
    sanity_threshold: float = 0.5  # fails when the CI of the patients' mean |Spearman| or mean SSIM lies >= this
    seed: int = 0

    CHECKS: ClassVar[dict[str, Check]] = {
        "steps": POSITIVE_INT,
        "schedule": (lambda v: v in ("log", "uniform"), "must be log or uniform"),
        "baselines": NON_EMPTY,
        "batch_size": POSITIVE_INT,
        "alpha": (lambda v: 0 < v < 1, "must be in (0, 1)"),
        "road_noise": (lambda v: v >= 0, "must be >= 0"),
        "top_percent": (lambda v: 0 < v <= 100, "must be in (0, 100]"),
        "bootstrap": POSITIVE_INT,
        "sanity_slices": POSITIVE_INT_OR_NULL,
    }


@dataclass
class Config:
    preset: str = "paper"
    data: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    explain: ExplainConfig = field(default_factory=ExplainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> Config:
        return _build(cls, data, source)

    @classmethod
    def load(cls, path: str | Path) -> Config:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise TumorcamError(f"{path}: no config file") from None
        except (OSError, ValueError) as exc:
            raise TumorcamError(f"{path}: not a readable JSON config ({exc})") from None
        return cls.from_dict(data, source=str(path))

    def save(self, path: str | Path) -> None:
        from tumorcam.io import write_json

        write_json(path, self.to_dict())


def preset(name: str) -> Config:
    """The config of a named preset (`paper` or `demo`)."""
    if name == "paper":
        return Config(preset="paper")
    if name == "demo":
        return Config(
            preset="demo",
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
    raise TumorcamError(f"--preset: unknown preset {name!r} (choose paper or demo)")


SECTIONS: dict[str, type] = {}  # annotation name -> nested section class, filled below


def _build(cls: type, data: Any, where: str) -> Any:
    """`cls` from a JSON object: names, types and values checked; the first wrong field is one error naming it."""
    if not isinstance(data, dict):
        raise TumorcamError(f"{where}: expected an object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise TumorcamError(f"{where}: unknown setting(s) {', '.join(unknown)}")
    kwargs = {}
    for name, value in data.items():
        annotation = str(fields[name].type)
        if annotation in SECTIONS:
            kwargs[name] = _build(SECTIONS[annotation], value, f"{where}.{name}")
        else:
            _check_type(value, annotation, f"{where}.{name}")
            kwargs[name] = list(value) if isinstance(value, list) else value
    section = cls(**kwargs)
    for name, (allowed, message) in getattr(cls, "CHECKS", {}).items():
        if not allowed(getattr(section, name)):
            raise TumorcamError(f"{where}.{name}: {message}, got {getattr(section, name)!r}")
    return section


_SCALARS: dict[str, tuple[type, ...]] = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,)}


def _check_type(value: Any, annotation: str, where: str) -> None:
    """Check a JSON value against a field annotation: str, int, float, bool, `X | None`, `list[X]`."""
    options = [a.strip() for a in annotation.split("|")]
    if value is None:
        if "None" in options:
            return
        raise TumorcamError(f"{where}: must not be null (expected {annotation})")
    for option in options:
        if option.startswith("list[") and isinstance(value, list):
            item = option[5:-1]
            for i, element in enumerate(value):
                _check_type(element, item, f"{where}[{i}]")
            return
        kinds = _SCALARS.get(option)
        if kinds and isinstance(value, kinds) and (option == "bool" or not isinstance(value, bool)):
            return
    raise TumorcamError(f"{where}: expected {annotation}, got {type(value).__name__} {value!r}")


SECTIONS.update({c.__name__: c for c in (ModelConfig, TrainConfig, ExplainConfig, PrimaryConfig, EvaluateConfig)})
