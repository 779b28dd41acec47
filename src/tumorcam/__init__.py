"""tumorcam: make a segmentation network explain itself, and test the explanation.

    import tumorcam

    maps = tumorcam.explain(model, images, channel=1)  # (B, *spatial) heatmaps in [0, 1]

`tumorcam.explain` (the function and its package), `tumorcam.explain_components`, `tumorcam.METHODS`
and `tumorcam.TARGETS` are imported on first use, so `import tumorcam` stays light.
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
}

__all__ = ["METHODS", "TARGETS", "__version__", "explain", "explain_components"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tumorcam' has no attribute {name!r}")
    module = importlib.import_module(_EXPORTS[name])
    return module if module.__name__ == f"{__name__}.{name}" else getattr(module, name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
