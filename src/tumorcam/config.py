"""One config object for a run: every setting of every stage, saved as `RUN/config.json`.

Presets fill it: `paper` is the seed's setting (224x224, ResNet34, ImageNet encoder weights,
Adam 1e-4, BCEWithLogitsLoss, batch 8); `demo` trains on the synthetic set on a 2-core CPU in
about two minutes and still learns.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tumorcam.errors import TumorcamError


@dataclass
class ModelConfig:
    architecture: str = "Unet"
    encoder: str = "resnet34"
    encoder_weights: str = "imagenet"  # "imagenet", "none" or a path to a local encoder file
    classes: int = 1


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
    amp: bool = True  # bf16 autocast on CUDA; ignored on CPU
    channels_last: bool = True  # channels_last memory format on CUDA; ignored on CPU
    compile: bool = False  # torch.compile the training step's model
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower on CUDA)
    eval_batch_size: int = 64  # batch for validation and evaluation
    num_threads: int = 0  # CPU threads; 0: torch's default lowered to the idle cores (load average)


@dataclass
class ExplainConfig:
    split: str = "test"
    limit: int | None = 64
    methods: list[str] = field(default_factory=lambda: ["gradcam", "gradcam++", "saliency", "integrated-gradients", "random"])
    # primary target first (evidence in docs/findings.md); mean-logits is the seed's
    targets: list[str] = field(default_factory=lambda: ["predicted-region", "mean-logits"])
    layers: list[str] = field(default_factory=lambda: ["decoder.blocks.4"])
    batch_size: int = 32
    ig_steps: int = 32  # integrated gradients: points on the path from black to the slice
    seed: int = 0  # the random-map baseline: each slice's noise is seeded by (seed, file id)


@dataclass
class EvaluateConfig:
    split: str = "test"
    steps: int = 50  # Deletion/Insertion steps K: the top k/K of the pixels for k = 0..K
    baselines: list[str] = field(default_factory=lambda: ["zero", "blur"])  # of zero, blur, mean, road
    score: str = "mean-sigmoid"  # or "predicted-region"
    batch_size: int = 256  # perturbed images per forward
    road_noise: float = 0.01  # std of ROAD's imputation noise, in [0, 1] intensity units
    top_percent: float = 5.0  # localisation: IoU of the top p% of the map with the mask
    bootstrap: int = 1000
    sanity_slices: int = 8  # slices whose maps the sanity check recomputes per randomised layer
    sanity_threshold: float = 0.5  # a method fails when its fully randomised maps keep mean Spearman >= this
    seed: int = 0


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
            train=TrainConfig(size=96, epochs=10, batch_size=8, lr=2e-3, schedule="cosine", loss="dice+bce",
                              augment=True),
            explain=ExplainConfig(limit=8, batch_size=8, ig_steps=8),  # sized so `tumorcam run` fits 5 min
            evaluate=EvaluateConfig(steps=10, bootstrap=500, sanity_slices=2),
        )
    raise TumorcamError(f"--preset: unknown preset {name!r} (choose paper or demo)")


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise TumorcamError(f"{where}: expected an object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise TumorcamError(f"{where}: unknown setting(s) {', '.join(unknown)}")
    kwargs = {}
    for name, value in data.items():
        sub = fields[name].type
        nested = {"ModelConfig": ModelConfig, "TrainConfig": TrainConfig,
                  "ExplainConfig": ExplainConfig, "EvaluateConfig": EvaluateConfig}.get(str(sub))
        kwargs[name] = _build(nested, value, f"{where}.{name}") if nested else value
    return cls(**kwargs)
