"""Targets on constructed logits and masks where the region is known, and their maps on a pointwise
network whose saliency map is exactly the target's region."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

import tumorcam
from tumorcam.explain import explain_components
from tumorcam.explain.targets import (
    TARGETS,
    band,
    boundary_width,
    get_target,
    predicted,
    target_function,
    target_scores,
)

SIZE = 32


def weights_of(name: str, logits: torch.Tensor, masks: torch.Tensor | None = None, channel: int = 0) -> torch.Tensor:
    return target_function(name, channel)(logits, masks)


def square(y0: int, y1: int, x0: int, x1: int, size: int = SIZE) -> torch.Tensor:
    region = torch.zeros(size, size, dtype=torch.bool)
    region[y0:y1, x0:x1] = True
    return region


# Predicted (logit > 0): lesions A and B; the ground truth: A and C (C not predicted).
A, B, C = square(4, 10, 4, 10), square(18, 26, 16, 28), square(24, 30, 2, 8)
LOGITS = torch.where(A | B, 3.0, -3.0)[None, None]  # (1, 1, S, S)
TRUTH = (A | C)[None, None].float()


def test_the_regions_of_the_named_targets():
    def region(name: str, masks: torch.Tensor | None = TRUTH) -> torch.Tensor:
        return weights_of(name, LOGITS, masks)[0, 0].bool()

    assert torch.equal(region("predicted-region"), A | B)
    assert torch.equal(region("gt-region"), A | C)
    assert torch.equal(region("false-positive"), B)
    assert torch.equal(region("false-negative"), C)
    assert torch.equal(region("false-positive", (A | B)[None, None].float()), torch.zeros_like(A))
    mean = weights_of("mean-logits", LOGITS)
    assert torch.allclose(mean, torch.full_like(mean, 1 / SIZE**2))
    # s = sum of the logits over the region: A and B are 36 + 96 pixels of logit 3
    assert target_scores(LOGITS, weights_of("predicted-region", LOGITS)).item() == 3 * (36 + 96)


def test_masks_may_come_without_a_channel_and_at_another_size():
    half = TRUTH[:, :, ::2, ::2]  # (1, 1, 16, 16) -> nearest to 32 x 32 repeats each pixel
    expected = torch.nn.functional.interpolate(half, size=(SIZE, SIZE), mode="nearest")[0, 0].bool()
    assert torch.equal(weights_of("gt-region", LOGITS, half[:, 0])[0, 0].bool(), expected)
    with pytest.raises(ValueError, match=r"^masks: 2 masks for 1 images"):
        weights_of("gt-region", LOGITS, TRUTH.repeat(2, 1, 1, 1))


def test_boundary_is_dilation_minus_erosion_as_scipy_computes_it():
    rng = np.random.default_rng(0)
    for spatial in [(32, 32), (64, 48), (12, 16, 16)]:
        region = ndimage.binary_opening(rng.random(spatial) > 0.6, iterations=1)
        region[(0,) * len(spatial)] = True  # a region touching the image edge is not eroded there
        width = boundary_width(spatial)
        cube = np.ones((2 * width + 1,) * len(spatial), bool)
        expected = ndimage.binary_dilation(region, cube) & ~ndimage.binary_erosion(region, cube, border_value=1)
        ours = band(torch.from_numpy(region)[None], width)[0].numpy()
        assert expected.any() and np.array_equal(ours, expected), spatial
    assert [boundary_width((s, s)) for s in (32, 64, 96, 224)] == [1, 1, 2, 4]


def test_boundary_weights_are_the_band_of_the_prediction():
    weights = weights_of("boundary", LOGITS)[0, 0].bool()
    assert torch.equal(weights, band((A | B)[None], 1)[0])
    assert weights[A].sum() == 36 - 16 and not weights[7, 7]  # the ring of A, not its interior


def test_multi_class_targets_use_the_argmax_and_weight_only_the_channel():
    logits = torch.zeros(2, 3, 4, 4)
    logits[:, 1, :2] = 5.0  # class 1 wins in the top half
    logits[:, 2, 2:, :1] = 5.0  # class 2 in the bottom-left corner
    region = torch.zeros(4, 4, dtype=torch.bool)
    region[:2] = True
    assert torch.equal(predicted(logits, 1)[0], region)
    weights = weights_of("predicted-region", logits, channel=1)
    assert torch.equal(weights[:, 1].bool(), region.expand(2, 4, 4))
    assert (weights[:, [0, 2]] == 0).all()
    assert weights_of("predicted-region", logits, channel=2)[:, 2].sum() == 2 * 2
    with pytest.raises(ValueError, match=r"^channel: the model has 3 output channel\(s\) \(0..2\), got 3"):
        weights_of("predicted-region", logits, channel=3)


@pytest.mark.parametrize("name", [n for n, t in TARGETS.items() if t.needs_masks])
def test_mask_targets_refuse_to_run_without_masks(name):
    assert name in {"gt-region", "false-positive", "false-negative"}
    with pytest.raises(ValueError, match=rf"^masks: target '{name}' needs ground-truth masks"):
        weights_of(name, LOGITS)
    with pytest.raises(ValueError, match=rf"^masks: target '{name}' needs ground-truth masks"):
        tumorcam.explain(Pointwise(), IMAGES, target=name)


def test_unknown_and_wrong_targets_name_the_parameter():
    with pytest.raises(ValueError, match=r"^target: unknown target 'boundry' \(did you mean boundary\?\)"):
        get_target("boundry")
    with pytest.raises(ValueError, match=r"^target: expected a target name or a callable"):
        target_function(3, 0)
    with pytest.raises(ValueError, match=r"^target: the weights \(3, 32, 32\) do not broadcast to the logits "
                                         r"\(1, 1, 32, 32\)"):
        target_scores(LOGITS, torch.ones(3, SIZE, SIZE))
    with pytest.raises(ValueError, match=r"^target: the weights ndarray do not broadcast"):
        target_scores(LOGITS, np.ones((1, 1, SIZE, SIZE)))


class Pointwise(nn.Module):
    """z = 10 ReLU(A) - 5 with A = x (1x1 convolutions): predicted where x > 0.5, and ds/dx = 10 w on the region
    (ReLU active wherever x > 0), so the saliency map of any target is its region exactly."""

    def __init__(self, dims: int = 2) -> None:
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        self.features = conv(1, 1, 1)
        self.act = nn.ReLU()
        self.head = conv(1, 1, 1)
        with torch.no_grad():
            self.features.weight.fill_(1.0)
            self.features.bias.fill_(0.0)
            self.head.weight.fill_(10.0)
            self.head.bias.fill_(-5.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.features(x)))


IMAGES = torch.where(A | B, 1.0, 0.1)[None, None]  # predicted: A and B


@pytest.mark.parametrize(("name", "truth", "expected"), [
    ("predicted-region", None, A | B),
    ("gt-region", A | C, A | C),
    ("false-positive", A, B),
    ("false-negative", A | C, C),
    ("boundary", None, band((A | B)[None], 1)[0]),
])
def test_the_saliency_map_of_a_target_is_its_region(name, truth, expected):
    masks = None if truth is None else truth[None, None].float()
    maps = tumorcam.explain(Pointwise(), IMAGES, method="saliency", target=name, masks=masks)
    assert torch.equal(maps[0] > 0.5, expected) and set(maps.unique().tolist()) == {0.0, 1.0}


@pytest.mark.parametrize("method", ["gradcam", "hirescam", "saliency", "integrated-gradients"])
def test_an_empty_region_gives_a_flat_all_zero_map(method):
    no_false_positive = (A | B)[None, None].float()
    all_found = (A | B)[None, None].float()
    for name, masks in (("false-positive", no_false_positive), ("false-negative", all_found)):
        maps = tumorcam.explain(Pointwise(), IMAGES, method=method, target=name, masks=masks, layer="features",
                                ig_steps=2)
        assert maps.shape == (1, SIZE, SIZE) and torch.equal(maps, torch.zeros_like(maps)), (method, name)


@pytest.mark.parametrize("method", ["saliency", "hirescam"])
def test_component_gives_one_map_per_lesion_on_its_lesion(method):
    images = torch.cat([IMAGES, torch.full_like(IMAGES, 0.1), torch.where(C, 1.0, 0.1)[None, None]])
    result = explain_components(Pointwise(), images, method=method, layer="features")
    assert result.image_index.tolist() == [0, 0, 2]  # two lesions in image 0, none in 1, one in 2
    assert result.maps.shape == result.lesions.shape == (3, SIZE, SIZE)
    for maps, lesion, expected in zip(result.maps, result.lesions, (A, B, C)):
        assert torch.equal(lesion, expected)
        assert torch.equal(maps > 0.5, expected) and maps[~expected].max() == 0
    with pytest.raises(ValueError, match=r"^target: 'component' gives one map per lesion.*explain_components"):
        tumorcam.explain(Pointwise(), images, target="component")


def test_components_connect_through_corners_in_3d_and_none_give_empty_fields():
    x = torch.full((1, 1, 6, 8, 8), 0.1)
    x[0, 0, 1, 1, 1] = x[0, 0, 2, 2, 2] = 1.0  # corner neighbours: one lesion (26-connectivity)
    x[0, 0, 4:6, 5:7, 5:7] = 1.0  # a second lesion
    result = explain_components(Pointwise(dims=3), x, method="saliency")
    assert result.image_index.tolist() == [0, 0] and result.maps.shape == (2, 6, 8, 8)
    assert result.lesions[0].sum() == 2 and result.lesions[1].sum() == 8
    assert torch.equal(result.maps > 0.5, result.lesions)
    empty = explain_components(Pointwise(), torch.full((2, 1, SIZE, SIZE), 0.1), method="gradcam", layer="features")
    assert empty.maps.shape == empty.lesions.shape == (0, SIZE, SIZE) and empty.image_index.shape == (0,)
