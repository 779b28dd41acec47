"""`wheels DIR`: the local wheels this machine lacks, so that gpu_proof.sh installs only those."""

from __future__ import annotations

import json
from pathlib import Path

from gpu_proof.timebox import ROOT


def wheels_to_install(folder: Path, report: Path | None = None) -> list[Path]:
    """The wheels of `folder` to install.

    Args:
        folder: a folder of .whl files (none when it is missing).
        report: where to write each wheel's decision as JSON.

    Returns:
        The wheels whose distribution is not installed, or installed at a version outside the range
        pyproject.toml asks for.
    """
    from importlib import metadata

    ranges = _dependency_ranges()
    chosen, decisions = [], []
    for wheel in sorted(Path(folder).glob("*.whl")) if Path(folder).is_dir() else []:
        name, version = wheel.name.split("-")[:2]
        key = _normalize(name)
        try:
            present: str | None = metadata.version(key)
        except metadata.PackageNotFoundError:
            present = None
        wanted = ranges.get(key)
        if present is None:
            why, install = "not installed", True
        elif wanted is not None and not _in_range(present, wanted):
            why, install = f"installed {present} outside {wanted}", True
        else:
            why, install = f"installed {present}", False
        decisions.append({"wheel": wheel.name, "version": version, "install": install, "why": why})
        if install:
            chosen.append(wheel)
    if report is not None:
        report.write_text(json.dumps({"folder": str(folder), "wheels": decisions}, indent=1))
    return chosen


def _normalize(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _dependency_ranges() -> dict[str, str]:
    """pyproject.toml's dependencies as {normalised name: specifier}."""
    import re
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    ranges = {}
    for line in project.get("dependencies", []):
        match = re.match(r"\s*([A-Za-z0-9_.\-]+)\s*(\[[^\]]*\])?\s*([^;]*)", line)
        if match:
            ranges[_normalize(match.group(1))] = match.group(3).strip()
    return ranges


def _in_range(version: str, specifier: str) -> bool:
    """Whether `version` satisfies `specifier` (True when `packaging` is not there to tell)."""
    try:
        from packaging.specifiers import SpecifierSet
        from packaging.version import Version
    except ImportError:
        return True
    return Version(version) in SpecifierSet(specifier)
