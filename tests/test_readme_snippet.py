"""The README's "Your own model, in Python" snippet runs as it stands and prints numbers, never NaN."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def own_model_snippet() -> str:
    """The first ```python block of the section "Your own model, in Python"."""
    section = README.read_text().split("## Your own model, in Python", 1)[1].split("\n## ", 1)[0]
    found = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert found, "no python block in the section"
    return found.group(1)


def test_the_own_model_snippet_prints_numbers_not_nan():
    code = own_model_snippet()
    assert "torch.manual_seed(0)" in code
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "nan" not in done.stdout.lower(), done.stdout
    assert re.search(r"\d\.\d", done.stdout), done.stdout
