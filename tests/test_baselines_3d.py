"""The blur, road and rise baselines on volumes: the separable Gaussian (torchvision's in 2-D, a
constant stays, a delta becomes the product of 1-D kernels), ROAD's weights in n dimensions and its
imputation in 3-D (constants, linear ramps, the kept range, its sparse system), and the game on a
MONAI 3-D U-Net with every baseline."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import torch
from monai.networks.nets import UNet
from scipy.sparse import lil_matrix
from scipy.sparse.linalg import spsolve
from torchvision.transforms.functional import gaussian_blur

import tumorcam
from tumorcam.errors import TumorcamError
from tumorcam.evaluate.baselines import (
    BASELINES,
    ROAD_WEIGHTS,
    blur_images,
    blur_kernel,
    gaussian_kernel,
    road_impute,
    road_weights,
)
from tumorcam.evaluate.game import PerturbationGame


@pytest.mark.parametrize("shape", [(2, 3, 224, 224), (1, 2, 40, 96), (3, 1, 32, 32)])
def test_blur_in_2d_is_torchvisions_gaussian_blur(shape: tuple[int, ...]) -> None:
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    kernel, sigma = blur_kernel(shape[-1])
    expected = gaussian_blur(x, [kernel, kernel], [sigma, sigma])
    assert blur_images(x).shape == x.shape
    assert float((blur_images(x) - expected).abs().max()) < 1e-6


def test_blur_keeps_a_constant_volume() -> None:
    volume = torch.full((2, 3, 16, 12, 20), 0.37)
    torch.testing.assert_close(blur_images(volume), volume, atol=1e-6, rtol=0)


def test_blur_of_a_delta_is_the_separable_gaussian_of_the_last_axis() -> None:
    shape = (17, 19, 96)  # the kernel follows the last axis: 5 voxels, sigma 15/7
    kernel, sigma = blur_kernel(96)
    assert (kernel, sigma) == (5, pytest.approx(15 / 7))
    delta = torch.zeros((1, 1, *shape), dtype=torch.float64)
    centre = (8, 9, 40)
    delta[(0, 0, *centre)] = 1.0
    out = blur_images(delta)[0, 0]
    k = gaussian_kernel(kernel, sigma, torch.float64, delta.device)
    assert float(out.sum()) == pytest.approx(1.0, abs=1e-12)
    expected = torch.zeros(shape, dtype=torch.float64)
    half = kernel // 2
    window = tuple(slice(c - half, c + half + 1) for c in centre)
    expected[window] = torch.einsum("i,j,k->ijk", k, k, k)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=0)
    for axis in range(3):  # the profile along each axis, summed over the others, is the 1-D kernel
        profile = out.sum(dim=tuple(a for a in range(3) if a != axis))
        torch.testing.assert_close(profile[centre[axis] - half:centre[axis] + half + 1], k, atol=1e-12, rtol=0)


def test_blur_needs_every_axis_longer_than_half_the_kernel() -> None:
    with pytest.raises(TumorcamError, match=r"^images: the blur baseline reflects 5 pixels") as error:
        blur_images(torch.rand((1, 1, 4, 224, 224)))
    assert "\n" not in str(error.value)


def test_road_weights_follow_one_rule_and_are_roads_in_2d() -> None:
    assert torch.equal(road_weights(2), torch.tensor(ROAD_WEIGHTS, dtype=torch.float64))
    w = road_weights(3)
    assert w.shape == (3, 3, 3) and w[1, 1, 1] == 0 and float(w.sum()) == pytest.approx(1.0, abs=1e-15)
    for offset in itertools.product((-1, 0, 1), repeat=3):
        nonzero = sum(o != 0 for o in offset)
        if nonzero:
            expected = {1: 1 / 14, 2: 1 / 28, 3: 1 / 56}[nonzero]
            assert float(w[tuple(o + 1 for o in offset)]) == pytest.approx(expected, rel=1e-15)
    torch.testing.assert_close(road_weights(1), torch.tensor([0.5, 0.0, 0.5], dtype=torch.float64))


def road_sparse_reference(volume: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """ROAD's system in n dimensions with `road_weights`, noise-free, solved by scipy's spsolve."""
    weights = road_weights(volume.ndim).numpy()
    unknown = np.flatnonzero(removed.ravel())
    var = {int(p): i for i, p in enumerate(unknown)}
    a = lil_matrix((len(unknown), len(unknown)))
    b = np.zeros(len(unknown))
    flat = volume.ravel()
    for i, p in enumerate(unknown):
        here = np.unravel_index(int(p), volume.shape)
        for offset in itertools.product((-1, 0, 1), repeat=volume.ndim):
            there = tuple(h + o for h, o in zip(here, offset))
            weight = weights[tuple(o + 1 for o in offset)]
            if weight == 0 or not all(0 <= t < s for t, s in zip(there, volume.shape)):
                continue
            a[i, i] += weight
            q = int(np.ravel_multi_index(there, volume.shape))
            if q in var:
                a[i, var[q]] = -weight
            else:
                b[i] += weight * flat[q]
    out = flat.copy()
    out[unknown] = spsolve(a.tocsc(), b)
    return out.reshape(volume.shape)


def test_road_in_3d_solves_its_sparse_system_and_keeps_the_rest() -> None:
    g = torch.Generator().manual_seed(1)
    volumes = torch.rand((2, 2, 6, 7, 5), generator=g)
    removed = torch.rand((2, 1, 6, 7, 5), generator=g) < torch.tensor([0.3, 0.8]).view(2, 1, 1, 1, 1)
    filled = road_impute(volumes, removed, noise=0.0, tol=1e-7)
    assert torch.equal(filled[~removed.expand_as(volumes)], volumes[~removed.expand_as(volumes)])
    for i in range(2):
        for c in range(2):
            expected = road_sparse_reference(volumes[i, c].double().numpy(), removed[i, 0].numpy())
            np.testing.assert_allclose(filled[i, c].numpy(), expected, atol=1e-4)


def test_road_in_3d_fills_a_constant_and_a_linear_ramp() -> None:
    removed = torch.zeros((1, 1, 9, 10, 11), dtype=torch.bool)
    removed[0, 0, 4, 5, 5] = True
    constant = torch.full((1, 1, 9, 10, 11), 0.42)
    assert float(road_impute(constant, removed, noise=0.0)[0, 0, 4, 5, 5]) == pytest.approx(0.42, abs=1e-6)
    d, h, w = torch.meshgrid(torch.arange(9.0), torch.arange(10.0), torch.arange(11.0), indexing="ij")
    ramp = (0.1 + 0.03 * d - 0.02 * h + 0.05 * w).view(1, 1, 9, 10, 11)
    block = torch.zeros_like(removed)
    block[0, 0, 2:7, 3:8, 2:9] = True  # an interior block: a harmonic (linear) field is its own mean
    for holes in (removed, block):
        filled = road_impute(ramp, holes, noise=0.0, tol=1e-7)
        torch.testing.assert_close(filled, ramp, atol=1e-4, rtol=0)


def test_road_in_3d_stays_within_the_kept_range() -> None:
    g = torch.Generator().manual_seed(2)
    volumes = 0.2 + 0.5 * torch.rand((2, 1, 12, 12, 12), generator=g)
    removed = torch.rand((2, 1, 12, 12, 12), generator=g) < 0.7
    filled = road_impute(volumes, removed, noise=0.0)
    for i in range(2):
        kept = volumes[i, 0][~removed[i, 0]]
        inside = filled[i, 0][removed[i, 0]]
        assert float(inside.min()) >= float(kept.min()) - 1e-5 and float(inside.max()) <= float(kept.max()) + 1e-5


def test_faithfulness_of_a_monai_3d_unet_plays_every_baseline() -> None:
    torch.manual_seed(0)
    model = UNet(spatial_dims=3, in_channels=2, out_channels=1, channels=(4, 8), strides=(2,)).eval()
    images = torch.rand((2, 2, 16, 16, 16), generator=torch.Generator().manual_seed(3))
    maps = tumorcam.explain(model, images, target="mean-logits")
    assert maps.shape == (2, 16, 16, 16)
    with torch.no_grad():
        original = model(images).sigmoid().mean(dim=(1, 2, 3, 4))
        zero = model(torch.zeros_like(images)).sigmoid().mean(dim=(1, 2, 3, 4))
        blurred = model(blur_images(images)).sigmoid().mean(dim=(1, 2, 3, 4))
    ends = {"blur": (blurred, blurred), "rise": (zero, blurred)}
    for baseline in ("blur", "road", "rise"):
        result = tumorcam.faithfulness(model, images, maps, steps=4, baseline=baseline, score="mean-sigmoid")
        for aucs in (result.deletion_auc, result.insertion_auc):
            assert aucs.shape == (2,) and np.isfinite(aucs).all() and ((aucs >= 0) & (aucs <= 1)).all()
        np.testing.assert_allclose(result.curves.deletion[:, 0], original.numpy(), atol=1e-6)
        np.testing.assert_allclose(result.curves.insertion[:, -1], original.numpy(), atol=1e-6)
        if baseline in ends:  # the full baselines: deletion's last step and insertion's first
            np.testing.assert_allclose(result.curves.deletion[:, -1], ends[baseline][0].numpy(), atol=1e-6)
            np.testing.assert_allclose(result.curves.insertion[:, 0], ends[baseline][1].numpy(), atol=1e-6)


def test_every_baseline_plays_volumes_and_images_alike() -> None:
    conv = {2: torch.nn.Conv2d, 3: torch.nn.Conv3d}
    for shape in ((2, 1, 12, 12), (2, 1, 6, 12, 12)):
        torch.manual_seed(0)
        model = conv[len(shape) - 2](1, 1, 3, padding=1).eval()
        images = torch.rand(shape, generator=torch.Generator().manual_seed(1))
        maps = torch.rand((shape[0], *shape[2:]), generator=torch.Generator().manual_seed(2))
        for baseline in BASELINES:
            curves = PerturbationGame(model, images, steps=3, baseline=baseline).curves(maps)
            assert curves.deletion.shape == (2, 4) and np.isfinite(curves.deletion_auc).all()


def _mean_model(x: torch.Tensor) -> torch.Tensor:
    """Every voxel's logit is 4 (image mean - 0.3): blind to where the intensity is, so blurring changes nothing."""
    return (4 * (x.mean(dim=tuple(range(1, x.dim())), keepdim=True) - 0.3)).expand(len(x), 1, *x.shape[2:]).contiguous()


def _voxel_model(x: torch.Tensor) -> torch.Tensor:
    return 4 * (x[:, :1] - 0.3)


def test_an_uninformative_baseline_is_warned_once_and_its_effect_exposed() -> None:
    from tumorcam.evaluate.game import UNINFORMATIVE_EFFECT
    from tumorcam.errors import TumorcamWarning

    images = torch.rand(3, 1, 12, 12, 12, generator=torch.Generator().manual_seed(0))
    with pytest.warns(TumorcamWarning) as caught:
        game = PerturbationGame(_mean_model, images, steps=4, baseline="blur", score="mean-sigmoid")
    messages = [str(w.message) for w in caught if issubclass(w.category, TumorcamWarning)]
    assert messages == ["baseline 'blur': the fully perturbed image keeps 100% of the intact score (median over 3 "
                        "images); its AUCs say little (uninformative baseline)"]
    ratio = (game.full[0].double() / game.original.double()).numpy()
    assert abs(game.baseline_effect) < UNINFORMATIVE_EFFECT
    assert game.baseline_effect == pytest.approx(1 - float(np.median(ratio)))
    assert game.baseline_effects == {"blur": game.baseline_effect}
    with pytest.warns(TumorcamWarning, match="^baseline 'blur'"):  # rise: zero for deletion is fine, blur is not
        rise = PerturbationGame(_mean_model, images, steps=4, baseline="rise", score="mean-sigmoid")
    assert set(rise.baseline_effects) == {"zero", "blur"} and rise.baseline_effects["zero"] > 0.3
    assert rise.baseline_effect == rise.baseline_effects["blur"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", TumorcamWarning)
        zero = PerturbationGame(_voxel_model, images, steps=4, baseline="zero", score="mean-sigmoid")
        quiet = PerturbationGame(_mean_model, images, steps=4, baseline="blur", score="mean-sigmoid", warn=False)
    assert zero.baseline_effect > 0.3 and quiet.baseline_effect == pytest.approx(game.baseline_effect)
    empty = PerturbationGame(_voxel_model, torch.zeros(2, 1, 8, 8, 8), steps=2, baseline="zero", score="dice",
                             warn=False)
    assert np.isnan(empty.baseline_effect)  # no image has a predicted region: no ratio to take
