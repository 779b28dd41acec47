"""The public API's docstrings are Google style: `Args:` names exactly the signature's parameters,
and `Returns:` (when the callable returns something) and `Raises:` are there, so a parameter added
without its documentation fails here."""

from __future__ import annotations

import importlib
import inspect
import re
from typing import Any

import pytest

SECTIONS = ("Args", "Returns", "Raises", "Example", "Examples", "Note", "Notes", "Attributes", "Yields")

# (module, dotted name in it)
PUBLIC = [
    ("tumorcam.explain", "explain"),
    ("tumorcam.explain", "explain_components"),
    ("tumorcam.evaluate.faithfulness", "faithfulness"),
    ("tumorcam.evaluate.faithfulness", "FaithfulnessResult.summary"),
    ("tumorcam.evaluate.localization", "localization"),
    ("tumorcam.evaluate.sanity", "sanity"),
    ("tumorcam.evaluate.sanity", "SanityResult"),
    ("tumorcam.evaluate.sanity", "SanityResult.decide"),
    ("tumorcam.evaluate.sanity", "SanityResult.fails"),
    ("tumorcam.evaluate.sanity", "SanityResult.patient_means"),
    ("tumorcam.evaluate.sanity", "SanityResult.final_patient_means"),
    ("tumorcam.evaluate.sanity", "SanityResult.concat"),
    ("tumorcam.evaluate.channels", "channels"),
    ("tumorcam.evaluate.channels", "ChannelResult.summary"),
    ("tumorcam.runfolder.folder", "Run"),
    ("tumorcam.runfolder.folder", "Run.open"),
    ("tumorcam.runfolder.folder", "Run.model"),
    ("tumorcam.runfolder.folder", "Run.prepared"),
    ("tumorcam.runfolder.folder", "Run.split"),
    ("tumorcam.evaluate.measures", "Measure.update"),
    ("tumorcam.evaluate.measures", "Measure.reset"),
    ("tumorcam.evaluate.measures", "DeletionInsertion"),
    ("tumorcam.evaluate.measures", "DeletionInsertion.result"),
    ("tumorcam.evaluate.measures", "DeletionInsertion.summary"),
    ("tumorcam.evaluate.measures", "Localization"),
    ("tumorcam.evaluate.measures", "Localization.summary"),
    ("tumorcam.evaluate.measures", "Dice"),
    ("tumorcam.evaluate.measures", "Dice.summary"),
    ("tumorcam.evaluate.measures", "Sanity"),
    ("tumorcam.evaluate.measures", "Sanity.result"),
    ("tumorcam.evaluate.measures", "Sanity.summary"),
    ("tumorcam.evaluate.measures", "Channels"),
    ("tumorcam.evaluate.measures", "Channels.summary"),
    ("tumorcam.runs.pipeline", "run_pipeline"),
    ("tumorcam.runs.volumes", "run_volumes"),
    ("tumorcam.report", "build_report"),
    ("tumorcam.training", "train"),
    ("tumorcam.data.prepare", "prepare"),
    ("tumorcam.runs.explain", "explain_run"),
    ("tumorcam.runs.faithfulness", "evaluate_faithfulness"),
    ("tumorcam.runs.localization", "evaluate_localization"),
    ("tumorcam.runs.sanity", "evaluate_sanity"),
]

# callables that raise nothing of their own: no `Raises:` section asked of them
RAISE_NOTHING = {"Measure.reset", "SanityResult.final_patient_means"}

IDS = [name for _, name in PUBLIC]


def resolve(module: str, name: str) -> Any:
    obj: Any = importlib.import_module(module)
    for part in name.split("."):
        obj = inspect.getattr_static(obj, part) if inspect.isclass(obj) else getattr(obj, part)
    return obj.__func__ if isinstance(obj, (classmethod, staticmethod)) else obj


def documented_parameters(obj: Any) -> list[str]:
    """The parameters the signature names (self/cls and *args/**kwargs left out); a class's are its
    constructor's."""
    signature = inspect.signature(obj)
    skip = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    names = [p.name for p in signature.parameters.values() if p.kind not in skip]
    return [n for n in names if n not in ("self", "cls")]


def sections(doc: str) -> dict[str, list[str]]:
    """{section name: its lines, dedented once} of a cleaned docstring."""
    found: dict[str, list[str]] = {}
    current = None
    for line in doc.splitlines():
        header = re.fullmatch(r"(\w+):", line)
        if header and header.group(1) in SECTIONS:
            current = header.group(1)
            found[current] = []
        elif current is not None:
            if line and not line.startswith(" "):  # back at the left margin: the section ended
                current = None
            else:
                found[current].append(line[4:])
    return found


def arg_names(lines: list[str]) -> list[str]:
    """The names of the entries of an `Args:` section: `name: text` or `name (type): text` at its margin."""
    names = []
    for line in lines:
        entry = re.match(r"(\*{0,2}\w+)(?: \([^)]*\))?:", line)
        if entry and not line.startswith(" "):
            names.append(entry.group(1))
    return names


def returns_something(obj: Any) -> bool:
    if inspect.isclass(obj):
        return False
    annotation = inspect.signature(obj).return_annotation
    return annotation not in (None, "None", inspect.Signature.empty)


@pytest.mark.parametrize(("module", "name"), PUBLIC, ids=IDS)
def test_args_name_exactly_the_signature(module: str, name: str) -> None:
    obj = resolve(module, name)
    doc = inspect.getdoc(obj)
    assert doc, f"{name}: no docstring"
    assert "\n" not in doc.split("\n\n")[0] or len(doc.split("\n\n")[0]) < 400, f"{name}: no short summary"
    wanted = documented_parameters(obj)
    found = sections(doc)
    if not wanted:
        assert "Args" not in found, f"{name}: `Args:` for a callable without parameters"
        return
    assert "Args" in found, f"{name}: no `Args:` section (parameters {wanted})"
    assert arg_names(found["Args"]) == wanted, f"{name}: `Args:` {arg_names(found['Args'])} != signature {wanted}"


@pytest.mark.parametrize(("module", "name"), PUBLIC, ids=IDS)
def test_returns_and_raises(module: str, name: str) -> None:
    obj = resolve(module, name)
    found = sections(inspect.getdoc(obj) or "")
    if returns_something(obj):
        assert found.get("Returns"), f"{name}: returns something but has no `Returns:` section"
    else:
        assert "Returns" not in found, f"{name}: returns None but has a `Returns:` section"
    if name in RAISE_NOTHING:
        assert "Raises" not in found, f"{name}: listed as raising nothing, yet has `Raises:`"
    else:
        assert any(re.match(r"(TumorcamError|ValueError):", line) for line in found.get("Raises", [])), \
            f"{name}: no `Raises:` section naming TumorcamError (or the ValueError of the statistics)"


def test_the_parser_sees_a_missing_parameter() -> None:
    def documented(a: int, b: int = 0) -> int:
        """Sum.

        Args:
            a: one.

        Returns:
            a + b.
        """
        return a + b

    assert arg_names(sections(inspect.getdoc(documented))["Args"]) == ["a"] != documented_parameters(documented)


def test_the_measures_are_exported_lazily() -> None:
    import tumorcam
    from tumorcam.evaluate import measures

    for name in ("DeletionInsertion", "Localization", "Dice", "Sanity", "Channels", "MEASURES"):
        assert name in tumorcam.__all__
        assert getattr(tumorcam, name) is getattr(measures, name)
