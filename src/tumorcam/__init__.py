"""tumorcam: make a segmentation network explain itself, and test the explanation.

    import tumorcam

    maps = tumorcam.explain(model, images, channel=1)  # (B, *spatial) heatmaps in [0, 1]
    result = tumorcam.faithfulness(model, images, maps, channel=1)  # Deletion/Insertion vs a random map
    result.summary()["deletion"]["vs_random"]["verdict"]
    tumorcam.localization(maps, masks)  # pointing game, energy, top-p% IoU vs a random map
    tumorcam.sanity(model, images, channel=1).passes  # cascading randomization of the weights
    tumorcam.channels(model, volumes, channel_names=["T1", "T1CE", "T2", "FLAIR"]).summary()  # per sequence

    measure = tumorcam.DeletionInsertion(model, channel=1)  # the same checks, accumulated over batches
    for images, maps, pids in batches:
        measure.update(images, maps, patient_ids=pids)
    measure.summary()["headline"]["level"]

`tumorcam.explain` (the function and its package), `tumorcam.explain_components`, `tumorcam.METHODS`,
`tumorcam.TARGETS`, `tumorcam.faithfulness` (with `FaithfulnessResult`), `tumorcam.localization`,
`tumorcam.sanity` (with `SanityResult`), `tumorcam.channels` (with `ChannelResult`: each input channel's
share of the attribution and the Dice drop of ablating it), `tumorcam.Run` (a run folder) and the
accumulating measures of `tumorcam.evaluate.measures` (`DeletionInsertion`, `Localization`, `Dice`,
`Sanity`, `Channels`, and `MEASURES` naming them) are imported on first use, so `import tumorcam`
stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "explain": "tumorcam.explain",
    "explain_components": "tumorcam.explain",
    "METHODS": "tumorcam.explain",
    "TARGETS": "tumorcam.explain",
    "Run": "tumorcam.runfolder.folder",
    "faithfulness": "tumorcam.evaluate.faithfulness",
    "FaithfulnessResult": "tumorcam.evaluate.faithfulness",
    "localization": "tumorcam.evaluate.localization",
    "sanity": "tumorcam.evaluate.sanity",
    "SanityResult": "tumorcam.evaluate.sanity",
    "channels": "tumorcam.evaluate.channels",
    "ChannelResult": "tumorcam.evaluate.channels",
    "DeletionInsertion": "tumorcam.evaluate.measures",
    "Localization": "tumorcam.evaluate.measures",
    "Dice": "tumorcam.evaluate.measures",
    "Sanity": "tumorcam.evaluate.measures",
    "Channels": "tumorcam.evaluate.measures",
    "MEASURES": "tumorcam.evaluate.measures",
}

__all__ = ["MEASURES", "METHODS", "TARGETS", "ChannelResult", "Channels", "DeletionInsertion", "Dice",
           "FaithfulnessResult", "Localization", "Run", "Sanity", "SanityResult", "__version__", "channels", "explain",
           "explain_components", "faithfulness", "localization", "sanity"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tumorcam' has no attribute {name!r}")
    module = importlib.import_module(_EXPORTS[name])
    return module if module.__name__ == f"{__name__}.{name}" else getattr(module, name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
