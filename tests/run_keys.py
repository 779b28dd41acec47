"""The JSON fields of a run folder's files, as sorted key paths, for comparing the schema of runs."""

from __future__ import annotations

from typing import Any

# Files whose fields are settings or bookkeeping, not results: left out of the comparison.
SKIPPED = ("config.json", "volume_config.json", "stages.json", "timings.json", "provenance.json")


def key_paths(value: Any, prefix: str = "") -> list[str]:
    """Every key path of a JSON value: `a.b` for objects, `a[]` for the items of arrays, sorted."""
    paths: set[str] = set()
    if isinstance(value, dict):
        for key, item in value.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            paths.add(path)
            paths.update(key_paths(item, path))
    elif isinstance(value, list):
        for item in value:
            paths.update(key_paths(item, prefix + "[]"))
    return sorted(paths)
