"""The methods on the U-Net (ResNet18 encoder for speed, 64x64, random weights): the seed's wrapper,
batching, one pass per batch, pytorch-grad-cam."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from captum.attr import LayerAttribution, LayerGradCam

from tumorcam.config import ModelConfig
from tumorcam.errors import TumorcamError
from tumorcam.explain import METHODS, compute_maps
from tumorcam.explain.maps import normalize
from tumorcam.models.unet import build_model

SIZE = 64
SMALL_UNET = ModelConfig(encoder="resnet18", encoder_weights="none")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(SMALL_UNET).eval()


@pytest.fixture(scope="module")
def images():
    generator = torch.Generator().manual_seed(1)
    x = 0.3 + 0.1 * torch.rand((3, 1, SIZE, SIZE), generator=generator)
    x[0, :, 10:30, 20:40] += 0.5
    x[1, :, 35:55, 5:25] += 0.5
    x[2, :, 40:60, 40:50] += 0.5
    return x.clamp(0, 1)


@pytest.fixture(scope="module")
def masks(images):
    return (images > 0.6).float()


class SegmentationWrapper(torch.nn.Module):
    """The seed's wrapper: the spatial mean of the logits."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x).mean(dim=(1, 2, 3))


@pytest.mark.parametrize("layer", ["decoder.blocks.4", "encoder.layer4"])
def test_mean_logits_gradcam_equals_the_seeds_per_image_captum_calls(model, images, layer):
    module = dict(model.named_modules())[layer]
    seed_maps = []
    for i in range(images.shape[0]):
        attr = LayerGradCam(SegmentationWrapper(model), module).attribute(images[i:i + 1], relu_attributions=True)
        attr = LayerAttribution.interpolate(attr, (SIZE, SIZE), interpolate_mode="bilinear")
        seed_maps.append(normalize(attr[:, 0].detach()))
    ours = compute_maps(model, images, method="gradcam", target="mean-logits", layer=layer)
    assert ours.shape == (3, SIZE, SIZE) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, torch.cat(seed_maps), atol=2e-5, rtol=0)
    assert all(p.requires_grad for p in model.parameters())  # parameters restored after explaining


BATCH_CASES = [
    ("gradcam", "mean-logits"), ("gradcam", "predicted-region"), ("gradcam", "gt-region"),
    ("gradcam++", "predicted-region"), ("hirescam", "gt-region"), ("layercam", "mean-logits"),
    ("saliency", "predicted-region"), ("integrated-gradients", "gt-region"), ("random", "mean-logits"),
]


def test_every_registered_method_is_checked_batched():
    """The controls (a random network's mask is often all on or off) are checked batched in test_controls.py."""
    explanations = {name for name, method in METHODS.items() if not method.control}
    assert {method for method, _ in BATCH_CASES} == explanations | {"random"}


@pytest.mark.parametrize(("method", "target"), BATCH_CASES)
def test_a_batch_of_b_equals_b_single_calls(model, images, masks, method, target):
    seeds = [11, 22, 33]
    kwargs = dict(method=method, target=target, layer="decoder.blocks.3", ig_steps=3)
    batch = compute_maps(model, images, masks=masks, seed=seeds, **kwargs)
    singles = torch.cat([compute_maps(model, images[i:i + 1], masks=masks[i:i + 1], seed=seeds[i:i + 1], **kwargs)
                         for i in range(3)])
    assert torch.isfinite(batch).all() and batch.min() >= 0 and batch.max() <= 1
    assert (batch.flatten(1).max(dim=1).values == 1).all()  # every map is a real, non-flat map
    # Up to float roundoff; on IG's darkened path points roundoff can flip a ReLU or max-pool
    # choice of this piecewise-linear net, which moves a map by up to ~0.5% (measured).
    torch.testing.assert_close(batch, singles, atol=1e-2 if method == "integrated-gradients" else 1e-4, rtol=0)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "hirescam", "layercam", "saliency"])
def test_one_forward_and_one_backward_per_batch(model, images, method, monkeypatch):
    model = copy.deepcopy(model)  # a model the library has not checked yet
    forwards, backwards = [], []
    handle = model.register_forward_pre_hook(lambda module, args: forwards.append(args[0].shape[0]))
    grad = torch.autograd.grad
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: backwards.append(1) or grad(*a, **k))
    try:
        compute_maps(model, images, method=method, target="predicted-region", layer="decoder.blocks.4")
        first = list(forwards)
        compute_maps(model, images, method=method, target="predicted-region", layer="decoder.blocks.4")
    finally:
        handle.remove()
    # the model's first call adds one forward of one image (the library's input checks); then one
    # forward of the batch and one backward per call
    assert first == [1, 3] and forwards == [1, 3, 3] and backwards == [1, 1]


def test_integrated_gradients_runs_one_batched_pass_per_step(model, images):
    model = copy.deepcopy(model)  # a model the library has not checked yet
    forwards = []
    handle = model.register_forward_pre_hook(lambda module, args: forwards.append(args[0].shape[0]))
    try:
        compute_maps(model, images, method="integrated-gradients", target="mean-logits", layer=None, ig_steps=4)
    finally:
        handle.remove()
    # the input check (one image, the model's first call), the target's weights, then 4 path points
    assert forwards == [1] + [3] * 5


def test_cam_at_the_last_convolution_redraws_the_logits(model, images):
    with torch.no_grad():
        logits = model(images)[:, 0]
    maps = compute_maps(model, images, method="gradcam", target="mean-logits", layer="segmentation_head.0")
    torch.testing.assert_close(maps, normalize(logits.clamp_min(0)), atol=1e-5, rtol=0)


def test_nothing_predicted_or_empty_mask_gives_an_all_zero_map(images):
    torch.manual_seed(0)
    model = build_model(SMALL_UNET).eval()
    with torch.no_grad():
        model.segmentation_head[0].bias.fill_(-1e4)  # sigmoid < 0.5 everywhere
    for method in ("gradcam", "layercam", "saliency", "integrated-gradients"):
        maps = compute_maps(model, images, method=method, target="predicted-region", layer="decoder.blocks.4", ig_steps=2)
        assert torch.equal(maps, torch.zeros_like(maps)), method
    empty = torch.zeros_like(images)
    maps = compute_maps(model, images, method="gradcam", target="gt-region", layer="decoder.blocks.4", masks=empty)
    assert torch.equal(maps, torch.zeros_like(maps))


class _MeanTarget:
    def __call__(self, output):
        return output.mean()


@pytest.mark.parametrize(("method", "layer"), [
    ("gradcam", "decoder.blocks.4"), ("gradcam", "encoder.layer4"), ("gradcam++", "decoder.blocks.2"),
    ("hirescam", "decoder.blocks.4"), ("layercam", "encoder.layer4"),
])
def test_agrees_with_pytorch_grad_cam(model, images, layer, method):
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

    cls = {"gradcam": pgc.GradCAM, "gradcam++": pgc.GradCAMPlusPlus, "hirescam": pgc.HiResCAM,
           "layercam": pgc.LayerCAM}[method]
    with torch.no_grad():
        predicted = (model(images) > 0)[:, 0].float().numpy()
    module = dict(model.named_modules())[layer]
    for target, theirs_targets in (
        ("mean-logits", [_MeanTarget() for _ in range(3)]),
        ("predicted-region", [SemanticSegmentationTarget(0, predicted[i]) for i in range(3)]),
    ):
        with cls(model=model, target_layers=[module]) as cam:
            theirs = cam(input_tensor=images, targets=theirs_targets)
        ours = compute_maps(model, images, method=method, target=target, layer=layer).numpy()
        assert theirs.max() > 0.99
        np.testing.assert_allclose(ours, theirs, atol=1e-4, err_msg=f"{method} {target} {layer}")


def test_bad_names_and_missing_masks_fail_with_one_clear_message(model, images):
    with pytest.raises(ValueError, match=r"^method: unknown method 'gradcm' \(did you mean gradcam\?\)"):
        compute_maps(model, images, method="gradcm", target="mean-logits", layer=None)
    with pytest.raises(TumorcamError, match=r"^target: unknown target 'mean'.*choose from mean-logits, predicted-region, "
                                            r"gt-region, false-positive, false-negative, boundary, component"):
        compute_maps(model, images, method="gradcam", target="mean", layer=None)
    with pytest.raises(TumorcamError, match=r"^layer: GrayUnet has no layer 'decoder.block.4'.*nearest: decoder.blocks.4"):
        compute_maps(model, images, method="gradcam", target="mean-logits", layer="decoder.block.4")
    with pytest.raises(TumorcamError, match=r"^masks: target 'gt-region' needs ground-truth masks"):
        compute_maps(model, images, method="gradcam", target="gt-region", layer=None)
    with pytest.raises(TumorcamError, match=r"^images: expected a tensor \(B, C, H, W\) or \(B, C, D, H, W\), got \(3, 64, 64\)"):
        compute_maps(model, images[:, 0], method="gradcam", target="mean-logits", layer=None)
