"""What a run on volumes needs of the unified `tumorcam.config.Settings`, kept in RUN/volume_config.json.

A run on volumes reads the same settings as a run on slices: one target (`explain.targets`), at most
one layer (`explain.layers`, null: the last convolution block before the head), the first N cases
(`explain.patients`), `evaluate.sanity` cases (0: no sanity check); the controls random and
predicted-mask are always explained. `check_volumes` adds these rules to `Settings.check`;
`load_run_settings` also reads the flat volume_config.json of earlier versions (`FLAT`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tumorcam.config import Settings
from tumorcam.errors import TumorcamError


RECORD_KEYS = ("weights_sha256", "nnunet")  # what volume_config.json records beside the settings
CONTROLS = ("random", "predicted-mask")  # always explained: the references of every comparison

# The flat keys of an earlier volume_config.json -> their setting now.
FLAT = {"split": "explain.split", "cases": "explain.patients", "methods": "explain.methods",
        "target": "explain.targets", "layer": "explain.layers", "channel": "explain.channel",
        "output": "explain.output", "ig_steps": "explain.ig_steps", "baselines": "evaluate.baselines",
        "steps": "evaluate.steps", "schedule": "evaluate.schedule", "score": "evaluate.score",
        "batch_size": "evaluate.batch_size", "top_percent": "evaluate.top_percent",
        "channel_method": "evaluate.channel_method", "ablation_baseline": "evaluate.ablation_baseline",
        "sanity_cases": "evaluate.sanity", "primary_method": "evaluate.primary.method",
        "bootstrap": "evaluate.bootstrap", "alpha": "evaluate.alpha", "seed": "evaluate.seed",
        "model": "model.network", "weights": "model.weights", "data": "data"}


def all_methods(settings: Settings) -> list[str]:
    """The methods with the controls every comparison needs."""
    return list(dict.fromkeys([*settings.explain.methods, *CONTROLS]))


def volume_layer(settings: Settings) -> str | None:
    """The explained layer (None: not found yet, or no method uses one)."""
    return settings.explain.layers[0] if settings.explain.layers else None


def _needs_no_masks(settings: Settings) -> bool:
    from tumorcam.explain import TARGETS

    return not TARGETS[settings.explain.targets[0]].needs_masks


def _primary_explained(settings: Settings) -> bool:
    return settings.evaluate.primary.method in settings.explain.methods


# param -> (rule on the settings, what it asks): what a run on volumes adds to `Settings.check`.
VOLUME_CHECKS: dict[str, tuple[Callable[[Settings], bool], str]] = {
    "targets": (lambda s: len(s.explain.targets) == 1, "a run on volumes explains one target"),
    "target": (_needs_no_masks, "needs no mask on volumes: choose predicted-region, mean-logits or boundary"),
    "layers": (lambda s: s.explain.layers is None or len(s.explain.layers) == 1, "a run on volumes explains one layer"),
    "score": (lambda s: s.evaluate.score in ("predicted-region", "dice", "mean-sigmoid"),
              "choose predicted-region, dice or mean-sigmoid"),
    "primary": (_primary_explained, "evaluate.primary.method must be one of explain.methods"),
}


def check_volumes(settings: Settings) -> None:
    """`settings.check()`, then one TumorcamError for the first rule of `VOLUME_CHECKS` it breaks."""
    settings.check()
    for param, (allowed, message) in VOLUME_CHECKS.items():
        if not allowed(settings):
            raise TumorcamError(f"{param}: {message}", param=param)


def load_run_settings(path: str | Path) -> Settings:
    """The settings of a settings file (a config.json or volume_config.json, `RECORD_KEYS` left out), or
    of the flat volume_config.json of earlier versions (`FLAT`)."""
    from tumorcam.config import preset
    from tumorcam.io import read_json_object

    values = {k: v for k, v in read_json_object(path).items() if k not in RECORD_KEYS}
    if set(values) & {"preset", "explain", "evaluate", "train"} or not values:
        return Settings.from_dict(values, str(path))
    unknown = sorted(set(values) - set(FLAT))
    if unknown:
        raise TumorcamError(f"{unknown[0]}: unknown setting(s) {', '.join(unknown)} (in {path})", param=unknown[0])
    settings = preset("own-model").to_dict()
    for key, value in values.items():
        if key in ("target", "layer"):
            value = None if value is None else [value]
        *sections, name = FLAT[key].split(".")
        owner = settings
        for section in sections:
            owner = owner[section]
        owner[name] = value
        if key == "seed":  # seeded every draw, the maps' too
            settings["explain"]["seed"] = value
    return Settings.from_dict(settings, str(path))
