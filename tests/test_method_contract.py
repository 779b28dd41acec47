"""The contract every entry of `tumorcam.explain.METHODS` keeps, checked for each (as smp's
tests/models/base.py runs one test class for every model): on a tiny model, 2-D and 3-D, the maps
are (B, *spatial), finite, in [0, 1] and the same for the same seed; the registry's flags
(`control`, `uses_layer`, `reads_channel`) are plain bools on the class."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import tumorcam
from tumorcam.explain import METHODS
from tumorcam.explain.methods.base import Method

CLASSES = 2
CHANNEL = 1
SHAPES = {2: (3, 1, 16, 16), 3: (2, 1, 8, 8, 8)}


def tiny_model(dims: int) -> nn.Module:
    conv = {2: nn.Conv2d, 3: nn.Conv3d}[dims]
    torch.manual_seed(0)
    return nn.Sequential(conv(1, 4, 3, padding=1), nn.ReLU(), conv(4, 4, 3, padding=1), nn.ReLU(),
                         conv(4, CLASSES, 1)).eval()


def tiny_images(dims: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.rand(SHAPES[dims], generator=generator)


def maps_of(name: str, dims: int, seed: int = 0) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # flat maps of a random tiny model are warned, not wrong
        return tumorcam.explain(tiny_model(dims), tiny_images(dims), method=name, channel=CHANNEL,
                                layer="2", seed=seed)


@pytest.mark.parametrize("name", list(METHODS))
class TestMethodContract:
    def test_registered_under_its_name(self, name: str) -> None:
        method = METHODS[name]
        assert isinstance(method, Method)
        assert method.name == name

    def test_flags_are_bools(self, name: str) -> None:
        method = METHODS[name]
        for flag in ("control", "uses_layer", "reads_channel"):
            assert type(getattr(type(method), flag)) is bool, flag
        assert method.rectify in ("relu", "abs", "none")

    @pytest.mark.parametrize("dims", sorted(SHAPES))
    def test_maps_shape_range_finite(self, name: str, dims: int) -> None:
        maps = maps_of(name, dims)
        batch, _, *spatial = SHAPES[dims]
        assert tuple(maps.shape) == (batch, *spatial)
        assert maps.dtype.is_floating_point
        assert bool(torch.isfinite(maps).all())
        assert float(maps.min()) >= 0.0 and float(maps.max()) <= 1.0

    @pytest.mark.parametrize("dims", sorted(SHAPES))
    def test_deterministic_for_a_seed(self, name: str, dims: int) -> None:
        assert torch.equal(maps_of(name, dims, seed=3), maps_of(name, dims, seed=3))


def test_every_control_is_layer_free() -> None:
    # the controls are maps without a layer (explain_at's INPUT_LAYER), and there are some of each kind
    assert any(m.control for m in METHODS.values()) and any(not m.control for m in METHODS.values())
    assert all(not m.uses_layer for m in METHODS.values() if m.control)
