"""Heatmap post-processing and Grad-CAM worked out by hand on a tiny network."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tumorcam.errors import TumorcamError
from tumorcam.explain import compute_maps
from tumorcam.explain.layers import resolve_layer
from tumorcam.explain.maps import normalize, rectify, times_mask, upsample


def test_normalize_is_per_map_min_max_and_flat_maps_stay_zero():
    maps = torch.stack([
        torch.arange(16.0).reshape(4, 4) * 3 + 2,   # ramp 2..47
        torch.full((4, 4), 5.0),                    # flat
        torch.zeros(4, 4),                          # all zero
        torch.tensor([[float("nan"), 1.0], [2.0, float("inf")]]).repeat(2, 2),
    ])
    out = normalize(maps)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert out.min() >= 0 and out.max() <= 1
    assert torch.allclose(out[0], torch.arange(16.0).reshape(4, 4) / 15)
    assert (out[1] == 0).all() and (out[2] == 0).all()
    # non-finite values count as 0: the map is [0, 1; 2, 0] tiled, so 2 -> 1, 1 -> 0.5
    assert torch.allclose(out[3], torch.tensor([[0.0, 0.5], [1.0, 0.0]]).repeat(2, 2))


def test_rectify_and_upsample():
    raw = torch.tensor([[[[-1.0, 2.0], [0.5, -3.0]]]])
    assert torch.equal(rectify(raw, "relu"), torch.tensor([[[[0.0, 2.0], [0.5, 0.0]]]]))
    assert torch.equal(rectify(raw, "abs"), raw.abs())
    with pytest.raises(ValueError):
        rectify(raw, "square")
    up = upsample(rectify(raw, "relu"), (4, 4))
    assert up.shape == (1, 4, 4)
    assert up[0, 0, 3] == 2.0 and up[0, 3, 3] == 0.0  # corners keep the corner values (align_corners=False)


def test_times_mask_is_zero_outside_the_nearest_resized_mask():
    maps = torch.rand(2, 8, 8) * 0.9 + 0.1
    masks = torch.zeros(2, 1, 4, 4)
    masks[0, 0, 1:3, 1:3] = 1
    masks[1, 0, 0, :] = 1
    out = times_mask(maps, masks)
    big = torch.nn.functional.interpolate(masks, size=(8, 8), mode="nearest")[:, 0].bool()
    assert (out[~big] == 0).all()
    assert torch.equal(out[big], maps[big])
    assert big[0].sum() == 16 and big[1].sum() == 16


class Tiny(nn.Module):
    """A = conv1x1(x) (2 channels); z = head(ReLU(A)). Grad-CAM at `features` is known in closed form."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(1, 2, 1)
        self.act = nn.ReLU()
        self.head = nn.Conv2d(2, 1, 1)
        with torch.no_grad():
            self.features.weight.copy_(torch.tensor([1.0, -2.0]).view(2, 1, 1, 1))
            self.features.bias.copy_(torch.tensor([-0.5, 1.0]))
            self.head.weight.copy_(torch.tensor([1.0, 3.0]).view(1, 2, 1, 1))
            self.head.bias.copy_(torch.tensor([-0.2]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.features(x)))


def _hand_gradcam(x: np.ndarray, target: str) -> np.ndarray:
    """A0 = x - 0.5, A1 = 1 - 2x, z = ReLU(A0) + 3 ReLU(A1) - 0.2.
    ds/dA_k(ij) = v_k [A_k(ij) > 0] w_ij with w = 1/HW (mean-logits) or [z > 0] (predicted-region);
    alpha_k = mean_ij ds/dA_k(ij); L = ReLU(sum_k alpha_k A_k), then min-max."""
    a = np.stack([x - 0.5, 1 - 2 * x])
    v = np.array([1.0, 3.0])
    z = v[0] * np.maximum(a[0], 0) + v[1] * np.maximum(a[1], 0) - 0.2
    w = np.full_like(x, 1 / x.size) if target == "mean-logits" else (z > 0).astype(float)
    alpha = np.array([(v[k] * (a[k] > 0) * w).mean() for k in range(2)])
    cam = np.maximum((alpha[:, None, None] * a).sum(0), 0)
    return (cam - cam.min()) / (cam.max() - cam.min())


@pytest.mark.parametrize("target", ["mean-logits", "predicted-region"])
def test_gradcam_on_a_tiny_network_matches_the_hand_computation(target):
    x0 = np.linspace(0, 1, 16).reshape(4, 4)
    x1 = np.array([[0.9, 0.1, 0.8, 0.2], [0.3, 0.95, 0.05, 0.6], [0.4, 0.45, 0.7, 0.0], [1.0, 0.35, 0.25, 0.85]])
    images = torch.tensor(np.stack([x0, x1]), dtype=torch.float32).unsqueeze(1)
    maps = compute_maps(Tiny(), images, method="gradcam", target=target, layer="features")
    for i, x in enumerate((x0, x1)):
        expected = _hand_gradcam(x, target)
        assert expected.max() == 1 and 0 < expected.mean() < 1  # a non-trivial map
        np.testing.assert_allclose(maps[i].numpy(), expected, atol=1e-6)


def test_unknown_layer_names_the_nearest_ones():
    with pytest.raises(TumorcamError, match=r"^layer: Tiny has no layer 'featres'.*nearest: features"):
        resolve_layer(Tiny(), "featres")
    with pytest.raises(TumorcamError, match=r"top-level modules: features, act, head"):
        resolve_layer(Tiny(), "zzz")
    assert isinstance(resolve_layer(Tiny(), "head"), nn.Conv2d)
