"""Comparing two runs' JSON files: what tests/test_nnunet_distributed.py and benchmarks/bench_shard.py share."""

from __future__ import annotations

import math
from collections.abc import Collection


def json_differences(a: object, b: object, where: str, skip: Collection[str] = ()) -> list[str]:
    """The places where two JSON values differ (`where` names the root): keys and lengths exactly,
    numbers to 1e-6 (NaN equal to NaN), everything else exactly; keys in `skip` are left out."""
    if isinstance(a, dict):
        if not isinstance(b, dict) or a.keys() != b.keys():
            return [where]
        return [w for key in a if key not in skip for w in json_differences(a[key], b[key], f"{where}.{key}", skip)]
    if isinstance(a, list):
        if not isinstance(b, list) or len(a) != len(b):
            return [where]
        return [w for i, (x, y) in enumerate(zip(a, b)) for w in json_differences(x, y, f"{where}[{i}]", skip)]
    if isinstance(a, float) and isinstance(b, (int, float)):
        same = math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6) or (math.isnan(a) and math.isnan(b))
        return [] if same else [f"{where}: {a} != {b}"]
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]
