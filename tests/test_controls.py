"""The control maps on constructed logits and images: predicted mask and probability, the dilated
mask, Sobel edges (checked against scipy.ndimage), and their flags in the registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from tumorcam.explain import METHODS, compute_maps
from tumorcam.explain.methods.controls import dilation_margin, sobel_magnitude

CONTROLS = ("predicted-mask", "predicted-probability", "dilated-mask", "edges")


class FixedLogits(torch.nn.Module):
    """A 'model' whose logits are given: the first B of `logits` for a batch of B."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("logits", logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits[: x.shape[0]]


def _maps(method: str, logits: torch.Tensor, images: torch.Tensor | None = None,
          target: str = "mean-logits") -> torch.Tensor:
    images = torch.rand(logits.shape, generator=torch.Generator().manual_seed(0)) if images is None else images
    return compute_maps(FixedLogits(logits), images, method=method, target=target, layer=None)


def test_controls_are_registered_layer_free_unrectified_controls():
    for name in (*CONTROLS, "random"):
        method = METHODS[name]
        assert method.control and not method.uses_layer and method.rectify == "none", name
    assert not any(METHODS[name].control for name in ("gradcam", "gradcam++", "saliency", "integrated-gradients"))


def test_predicted_mask_is_logits_above_zero_for_every_target():
    logits = torch.randn((2, 1, 16, 16), generator=torch.Generator().manual_seed(1))
    expected = (logits[:, 0] > 0).float()
    assert 0 < expected.mean() < 1
    for target in ("mean-logits", "predicted-region"):
        assert torch.equal(_maps("predicted-mask", logits, target=target), expected)


def test_predicted_probability_is_the_min_max_normalized_sigmoid():
    logits = 3 * torch.randn((2, 1, 16, 16), generator=torch.Generator().manual_seed(2))
    p = torch.sigmoid(logits[:, 0]).double()
    low = p.flatten(1).min(1).values[:, None, None]
    high = p.flatten(1).max(1).values[:, None, None]
    torch.testing.assert_close(_maps("predicted-probability", logits).double(), (p - low) / (high - low),
                               atol=1e-6, rtol=0)


def test_a_mask_covering_everything_or_nothing_gives_a_zero_map():
    logits = torch.cat([torch.full((1, 1, 8, 8), 5.0), torch.full((1, 1, 8, 8), -5.0)])
    for name in ("predicted-mask", "dilated-mask"):
        assert torch.equal(_maps(name, logits), torch.zeros(2, 8, 8)), name


def test_dilation_margin_scales_with_the_input_size():
    assert [dilation_margin(s) for s in (224, 96, 64, 32, 16, 8)] == [7, 3, 2, 1, 1, 1]


@pytest.mark.parametrize(("size", "row", "col"), [(64, 30, 17), (96, 50, 40), (64, 0, 63)])
def test_dilated_mask_grows_one_pixel_into_a_square(size, row, col):
    logits = torch.full((1, 1, size, size), -4.0)
    logits[0, 0, row, col] = 4.0
    m = dilation_margin(size)
    expected = torch.zeros(1, size, size)
    expected[0, max(0, row - m):row + m + 1, max(0, col - m):col + m + 1] = 1
    maps = _maps("dilated-mask", logits)
    assert torch.equal(maps, expected)
    if 0 < row < size - m and m < col < size - m:
        assert int(maps.sum()) == (2 * m + 1) ** 2


def test_edges_of_a_step_image_peak_on_the_step_and_ignore_the_model():
    images = torch.full((2, 1, 32, 32), 0.2)
    images[0, :, :, 16:] = 0.8  # vertical step between columns 15 and 16
    images[1, :, 10:, :] = 0.8  # horizontal step between rows 9 and 10
    maps = _maps("edges", torch.randn(2, 1, 32, 32), images=images)
    expected = torch.zeros(2, 32, 32)
    expected[0, :, 15:17] = 1
    expected[1, 9:11, :] = 1
    torch.testing.assert_close(maps, expected, atol=1e-6, rtol=0)
    raw = sobel_magnitude(images)
    assert float(raw[0, 0, 5, 15]) == pytest.approx(0.6 * 4, abs=1e-5)  # (0.8 - 0.2) * (1 + 2 + 1)


@pytest.mark.parametrize("shape", [(2, 1, 20, 24), (1, 3, 12, 14), (1, 1, 6, 7, 8)])
def test_sobel_magnitude_equals_scipy(shape):
    images = torch.rand(shape, generator=torch.Generator().manual_seed(3))
    ours = sobel_magnitude(images).numpy()[:, 0]
    gray = images.double().mean(dim=1).numpy()
    for b in range(shape[0]):
        theirs = np.sqrt(sum(ndimage.sobel(gray[b], axis=a, mode="nearest") ** 2 for a in range(gray[b].ndim)))
        np.testing.assert_allclose(ours[b], theirs, atol=1e-5)


def test_a_batch_of_controls_equals_single_calls():
    logits = torch.randn((3, 1, 16, 16), generator=torch.Generator().manual_seed(4))
    images = torch.rand((3, 1, 16, 16), generator=torch.Generator().manual_seed(5))
    for name in CONTROLS:
        batch = _maps(name, logits, images=images)
        singles = torch.cat([compute_maps(FixedLogits(logits[i:i + 1]), images[i:i + 1], method=name,
                                          target="mean-logits", layer=None) for i in range(3)])
        assert torch.equal(batch, singles), name
