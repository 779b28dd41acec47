"""`tumorcam.explain` on models a user brings: 3 input channels, 3 classes (softmax), multi-output,
callable targets, the default layer, 3-D, and agreement with pytorch-grad-cam on a softmax model."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch
from torch import nn

import tumorcam
from tumorcam.errors import TumorcamError
from tumorcam.explain.layers import default_layer
from tumorcam.explain.targets import predicted

SIZE = 64


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return smp.Unet("resnet18", encoder_weights=None, in_channels=3, classes=3).eval()


@pytest.fixture(scope="module")
def images():
    return torch.rand((4, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(1))


def test_the_top_level_api():
    from tumorcam.explain import METHODS, TARGETS, explain, explain_components

    assert tumorcam.METHODS is METHODS and tumorcam.TARGETS is TARGETS
    assert tumorcam.explain_components is explain_components
    assert {"gradcam", "saliency", "random"} <= set(METHODS)
    assert {"predicted-region", "false-positive", "false-negative", "boundary", "component"} <= set(TARGETS)
    assert callable(tumorcam.explain) and tumorcam.explain.explain is explain  # the package calls `explain`
    assert issubclass(TumorcamError, ValueError)
    with pytest.raises(AttributeError):
        tumorcam.faithfulness_of_nothing  # noqa: B018


@pytest.mark.parametrize("method", sorted(tumorcam.METHODS))
def test_a_three_channel_three_class_unet(model, images, method):
    with torch.no_grad():
        assert (model(images).argmax(dim=1) == 1).flatten(1).any(dim=1).all()  # class 1 is predicted somewhere
    maps = tumorcam.explain(model, images, method=method, channel=1, ig_steps=2)
    assert maps.shape == (4, SIZE, SIZE) and maps.dtype == torch.float32
    assert torch.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    if method != "dilated-mask":  # a random net's scattered class-1 pixels, grown, can cover the whole slice
        assert (maps.flatten(1).max(dim=1).values == 1).all()  # real, non-flat maps


def test_channel_chooses_the_class(model, images):
    with torch.no_grad():
        logits = model(images)
    ones = tumorcam.explain(model, images, method="gradcam", target="mean-logits", channel=1)
    twos = tumorcam.explain(model, images, method="gradcam", target="mean-logits", channel=2)
    assert not torch.allclose(ones, twos, atol=0.1)
    # HiResCAM at the last convolution with mean-logits redraws that class's logits
    last = tumorcam.explain(model, images, method="hirescam", target="mean-logits", channel=2,
                            layer="segmentation_head.0")
    expected = logits[:, 2].clamp_min(0)
    expected = (expected - expected.amin(dim=(1, 2), keepdim=True)) / (
        expected.amax(dim=(1, 2), keepdim=True) - expected.amin(dim=(1, 2), keepdim=True))
    torch.testing.assert_close(last, expected, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=r"^channel: the model has 3 output channel\(s\) \(0..2\), got 3"):
        tumorcam.explain(model, images, channel=3, layer="decoder.blocks.4")


def test_a_callable_target_equals_the_named_one(model, images):
    def class_one(logits, masks):
        return (logits.argmax(dim=1, keepdim=True) == 1) * torch.eye(3)[1].view(1, 3, 1, 1)

    named = tumorcam.explain(model, images, channel=1, layer="decoder.blocks.4")
    ours = tumorcam.explain(model, images, target=class_one, layer="decoder.blocks.4")
    torch.testing.assert_close(ours, named, atol=0, rtol=0)
    center = tumorcam.explain(model, images, method="saliency", layer=None,
                              target=lambda logits, masks: torch.zeros_like(logits).index_fill(2, torch.tensor([32]), 1))
    assert center.shape == (4, SIZE, SIZE) and (center.flatten(1).max(dim=1).values == 1).all()
    with pytest.raises(ValueError, match=r"^target: the weights \(4, 64, 64\) do not broadcast"):
        tumorcam.explain(model, images, target=lambda logits, masks: logits[:, 0], layer="decoder.blocks.4")


class DeepSupervision(nn.Module):
    """The U-Net's logits plus an auxiliary head, as a tuple or a dict."""

    def __init__(self, unet: nn.Module, as_dict: bool) -> None:
        super().__init__()
        self.unet = unet
        self.aux = nn.Conv2d(16, 3, 1)
        self.as_dict = as_dict

    def forward(self, x):
        features = self.unet.decoder(self.unet.encoder(x))
        main = self.unet.segmentation_head(features)
        aux = self.aux(features)
        return {"aux": aux, "out": main} if self.as_dict else (aux, main)


@pytest.mark.parametrize(("as_dict", "output"), [(False, 1), (False, -1), (True, "out"), (True, lambda out: out["out"])])
def test_a_multi_output_model_through_output(model, images, as_dict, output):
    torch.manual_seed(3)
    wrapped = DeepSupervision(model, as_dict).eval()
    expected = tumorcam.explain(model, images, channel=1, layer="decoder.blocks.4")
    maps = tumorcam.explain(wrapped, images, channel=1, layer="unet.decoder.blocks.4", output=output)
    torch.testing.assert_close(maps, expected, atol=1e-6, rtol=0)


def test_a_multi_output_model_without_output_names_the_parameter(model, images):
    with pytest.raises(ValueError, match=r"^output: the model returns a tuple of 2; choose the logits with output=INDEX"):
        tumorcam.explain(DeepSupervision(model, False), images, layer="unet.decoder.blocks.4")
    with pytest.raises(ValueError, match=r"^output: the model's dict has no key 'outs' \(did you mean out\?\)"):
        tumorcam.explain(DeepSupervision(model, True), images, layer="unet.decoder.blocks.4", output="outs")
    with pytest.raises(ValueError, match=r"^output: index 2 is out of range for the model's tuple of 2"):
        tumorcam.explain(DeepSupervision(model, False), images, layer="unet.decoder.blocks.4", output=2)


def test_agrees_with_pytorch_grad_cam_semantic_segmentation_target(model, images):
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

    layer = model.decoder.blocks[4]
    with torch.no_grad():
        regions = (model(images).argmax(dim=1) == 1).float().numpy()
    for method, cls in (("gradcam", pgc.GradCAM), ("layercam", pgc.LayerCAM)):
        with cls(model=model, target_layers=[layer]) as cam:
            theirs = cam(input_tensor=images, targets=[SemanticSegmentationTarget(1, r) for r in regions])
        ours = tumorcam.explain(model, images, method=method, channel=1, layer=layer).numpy()
        assert theirs.max() > 0.99
        for a, b in zip(ours, theirs):
            assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.9999
        np.testing.assert_allclose(ours, theirs, atol=1e-4, err_msg=method)


@pytest.mark.parametrize("encoder", ["resnet18", "resnet34"])
def test_layer_none_picks_the_last_decoder_block_and_logs_it(encoder, caplog):
    unet = smp.Unet(encoder, encoder_weights=None, in_channels=1, classes=1).eval()
    x = torch.rand(2, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    with caplog.at_level(logging.INFO, logger="tumorcam.explain"):
        maps = tumorcam.explain(unet, x)
    assert "decoder.blocks.4" in caplog.text and "segmentation_head.0" in caplog.text
    torch.testing.assert_close(maps, tumorcam.explain(unet, x, layer="decoder.blocks.4"), atol=0, rtol=0)


class Blocks(nn.Module):
    """A stem, two blocks of two convolutions, and a head; `last` can use a lone convolution instead."""

    def __init__(self, lone_last: bool = False) -> None:
        super().__init__()
        self.stem = nn.Conv2d(2, 4, 3, padding=1)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
            for _ in range(2))
        self.last = nn.Conv2d(4, 4, 1) if lone_last else nn.Identity()
        self.head = nn.Sequential(nn.Conv2d(4, 2, 1), nn.Identity())

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.head(self.last(x))


def test_the_default_layer_rule_on_other_models():
    x = torch.rand(1, 2, 16, 16)
    assert default_layer(Blocks(), x) == "blocks.1"  # the block holding the last convolution before head.0
    assert default_layer(Blocks(lone_last=True), x) == "last"  # no block of two around it: the convolution
    mlp = nn.Sequential(nn.Flatten(2), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256), nn.Unflatten(2, (16, 16)))
    assert default_layer(mlp, torch.rand(1, 1, 16, 16)) == "1"  # no convolution: the last Linear before the head
    with pytest.raises(ValueError, match=r"^layer: Sequential has no layer before its head 0; name a layer"):
        default_layer(nn.Sequential(nn.Conv2d(1, 1, 1)), torch.rand(1, 1, 4, 4))
    with pytest.raises(ValueError, match=r"^layer: Conv2d runs no submodule with parameters; name a layer"):
        default_layer(nn.Conv2d(1, 1, 1), torch.rand(1, 1, 4, 4))


def test_unknown_layers_name_the_parameter_and_the_nearest(model, images):
    with pytest.raises(ValueError, match=r"^layer: Unet has no layer 'decoder.blocks.5' \(nearest: decoder.blocks.4"):
        tumorcam.explain(model, images, layer="decoder.blocks.5")
    with pytest.raises(ValueError, match=r"^layer: the Conv2d given is not a submodule of Unet"):
        tumorcam.explain(model, images, layer=nn.Conv2d(1, 1, 1))
    with pytest.raises(ValueError, match=r"^method: unknown method 'grad-cam' \(did you mean gradcam\?\)"):
        tumorcam.explain(model, images, method="grad-cam")
    with pytest.raises(ValueError, match=r"^batch_size: must be an integer >= 1, got 0"):
        tumorcam.explain(model, images, batch_size=0)


@pytest.mark.parametrize("method", ["gradcam", "random"])
def test_batches_do_not_change_the_maps(model, images, method):
    whole = tumorcam.explain(model, images, method=method, channel=1, layer="decoder.blocks.3", seed=5)
    parts = tumorcam.explain(model, images, method=method, channel=1, layer="decoder.blocks.3", seed=5, batch_size=3)
    # random: the batches draw from one generator in turn; gradcam: up to the roundoff of other conv batch sizes
    torch.testing.assert_close(parts, whole, atol=0 if method == "random" else 1e-3, rtol=0)


def test_masks_for_a_multi_class_model_are_the_explained_class(model, images):
    with torch.no_grad():
        region = predicted(model(images), 2)
    masks = region.unsqueeze(1).float()
    gt = tumorcam.explain(model, images, target="gt-region", channel=2, masks=masks, layer="decoder.blocks.4")
    pred = tumorcam.explain(model, images, target="predicted-region", channel=2, layer="decoder.blocks.4")
    torch.testing.assert_close(gt, pred, atol=0, rtol=0)
    fp = tumorcam.explain(model, images, target="false-positive", channel=2, masks=masks, layer="decoder.blocks.4")
    assert torch.equal(fp, torch.zeros_like(fp))


class Tiny3d(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Conv3d(2, 4, 3, padding=1), nn.ReLU(), nn.MaxPool3d(2),
                                   nn.Conv3d(4, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.Upsample(scale_factor=2, mode="trilinear"), nn.Conv3d(4, 2, 1))

    def forward(self, x):
        return self.head(self.block(x))


def _hand_gradcam_3d(net: Tiny3d, x: torch.Tensor) -> torch.Tensor:
    """A = block(x) (B, K, 4, 8, 8); s = mean of channel 1's logits; alpha_k = mean ds/dA_k;
    ReLU(sum_k alpha_k A_k), trilinear to 8 x 16 x 16, min-max per map."""
    activations = net.block(x).detach().requires_grad_()
    score = net.head(activations)[:, 1].mean(dim=(1, 2, 3)).sum()
    (grads,) = torch.autograd.grad(score, activations)
    cam = (grads.mean(dim=(2, 3, 4), keepdim=True) * activations).sum(dim=1, keepdim=True).clamp_min(0).detach()
    cam = torch.nn.functional.interpolate(cam, size=(8, 16, 16), mode="trilinear", align_corners=False)[:, 0]
    low, high = cam.amin(dim=(1, 2, 3), keepdim=True), cam.amax(dim=(1, 2, 3), keepdim=True)
    return (cam - low) / (high - low)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "layercam", "saliency", "integrated-gradients", "random"])
def test_a_3d_network(method, caplog):
    torch.manual_seed(1)
    net = Tiny3d().eval()
    x = torch.rand(2, 2, 8, 16, 16, generator=torch.Generator().manual_seed(4))
    with caplog.at_level(logging.INFO, logger="tumorcam.explain"):
        maps = tumorcam.explain(net, x, method=method, target="mean-logits", channel=1, ig_steps=2)
    assert maps.shape == (2, 8, 16, 16) and torch.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    if method in ("saliency", "integrated-gradients", "random"):
        assert (maps.flatten(1).max(dim=1).values == 1).all()
    else:
        assert "explaining at block" in caplog.text
    if method == "gradcam":
        expected = _hand_gradcam_3d(net, x)
        assert (expected.flatten(1).max(dim=1).values == 1).all()  # the seed gives real maps
        torch.testing.assert_close(maps, expected, atol=1e-5, rtol=0)


def test_each_module_gets_its_own_mode_back(model, images):
    wrapper = DeepSupervision(model, as_dict=False)  # a fresh wrapper trains; the shared U-Net stays in eval
    model.eval()
    wrapper.unet.encoder.train()
    modes = {name: m.training for name, m in wrapper.named_modules()}
    tumorcam.explain(wrapper, images, output=1, layer="unet.decoder.blocks.4", channel=0)
    assert {name: m.training for name, m in wrapper.named_modules()} == modes
    assert all(p.requires_grad for p in wrapper.parameters())
    model.eval()


def test_a_layer_off_the_chosen_outputs_path_is_a_value_error_naming_layer():
    class TwoHeads(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = torch.nn.Conv2d(1, 4, 3, padding=1)
            self.aux = torch.nn.Conv2d(1, 4, 3, padding=1)
            self.head = torch.nn.Conv2d(4, 1, 1)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"out": self.head(self.body(x)), "aux": self.aux(x).mean(1, keepdim=True)}

    model, x = TwoHeads(), torch.rand(2, 1, 16, 16)
    with pytest.raises(ValueError, match=r"^layer: Conv2d is not on the path .* chosen output"):
        tumorcam.explain(model, x, layer="aux", output="out")
    assert tumorcam.explain(model, x, layer="body", output="out").shape == (2, 16, 16)
