"""Every progress bar in src/ is named by its stage and counts a unit: each `tqdm(...)` call has
literal-or-formatted `desc=` and a `unit=` keyword (read with ast, nothing runs)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "tumorcam"


def tqdm_calls() -> list[tuple[str, ast.Call]]:
    calls = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "tqdm":
                calls.append((f"{path.relative_to(SRC)}:{node.lineno}", node))
    return calls


def test_every_progress_bar_has_a_stage_and_a_unit():
    calls = tqdm_calls()
    assert len(calls) >= 8
    for where, call in calls:
        keywords = {kw.arg: kw.value for kw in call.keywords}
        assert "desc" in keywords and "unit" in keywords, f"{where}: tqdm without desc= and unit="
        desc = keywords["desc"]
        if isinstance(desc, ast.Constant):
            assert desc.value.strip(), where
        elif isinstance(desc, ast.JoinedStr):
            assert isinstance(desc.values[0], ast.Constant), f"{where}: desc starts with the stage's name"
