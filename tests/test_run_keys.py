"""`tumorcam run` on slices and on volumes writes every JSON field it wrote before the settings were
unified: the key paths of a tiny run of each kind against tests/data/run_keys.json (generated from
the code before the change)."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import TinyRun
from run_keys import SKIPPED, key_paths

EXPECTED = json.loads((Path(__file__).parent / "data" / "run_keys.json").read_text())
# A run on volumes counts cases, not slices (n_cases, per_case), and names the prepared folder beside
# the data as given: the only changes of its fields since the list was made.
RENAMED_FOR_VOLUMES = {"n_slices": "n_cases", "per_slice": "per_case"}
ADDED_FOR_VOLUMES = "prepared"


def volume_fields(paths: list[str]) -> list[str]:
    """The expected key paths of a volume run's file: renamed, and `prepared` beside `data`."""
    renamed = {".".join(RENAMED_FOR_VOLUMES.get(part, part) for part in path.split(".")) for path in paths}
    if "data" in renamed:
        renamed.add(ADDED_FOR_VOLUMES)
    return sorted(renamed)


def run_keys(run: Path) -> dict[str, list[str]]:
    return {str(p.relative_to(run)): key_paths(json.loads(p.read_text())) for p in sorted(run.rglob("*.json"))
            if p.name not in SKIPPED and not {"prepared", "synthetic"} & set(p.relative_to(run).parts)}


def test_a_slice_run_keeps_every_field(tiny_slice_run: TinyRun) -> None:
    # the tiny `tumorcam run` on synthetic slices (ResNet18, 64 px, one epoch, 3 slices explained by gradcam,
    # saliency, random and predicted-mask, K = 4, zero baseline, 20 bootstrap resamples, one sanity stage),
    # shared with test_pipeline's end-to-end test
    assert run_keys(tiny_slice_run.run) == EXPECTED["slices"]


def test_a_volume_run_keeps_every_field(volume_run: tuple[Path, Path]) -> None:
    # `tumorcam run` of the FLAIR-only network on 6 synthetic cases (16^3, seed 3) at 16 px, gradcam and
    # saliency, baselines zero and blur, split all: test_volumes_run's run, shared through conftest
    run = volume_run[1]
    assert run_keys(run) == {name: volume_fields(paths) for name, paths in EXPECTED["volumes"].items()}
    settings = json.loads((run / "volume_config.json").read_text())
    assert settings["model"]["network"] == "flair_only:make" and settings["explain"]["layers"] == ["features"]
