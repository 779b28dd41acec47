"""The same library calls on a 2-D smp U-Net and a 3-D MONAI U-Net: explain (every method),
components, faithfulness under every baseline, localisation, sanity and per-sequence attribution."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch
from monai.networks.nets import UNet

import tumorcam
from tumorcam.evaluate.baselines import BASELINES
from tumorcam.explain.layers import default_layer


def _models() -> dict[str, tuple[torch.nn.Module, torch.Tensor]]:
    torch.manual_seed(0)
    flat = smp.Unet("resnet18", encoder_weights=None, in_channels=2, classes=1, decoder_channels=(32, 16, 8, 8, 8))
    volume = UNet(spatial_dims=3, in_channels=2, out_channels=1, channels=(4, 8, 16), strides=(2, 2), num_res_units=1)
    images = {"2d": torch.rand(3, 2, 32, 32, generator=torch.Generator().manual_seed(1)),
              "3d": torch.rand(3, 2, 16, 16, 16, generator=torch.Generator().manual_seed(1))}
    models = {"2d": flat.eval(), "3d": volume.eval()}
    for key, model in models.items():  # centre the logits so that about half of each image is predicted
        with torch.no_grad():
            median = model(images[key]).median()
        head = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))][-1]
        with torch.no_grad():
            head.bias -= median
    return {key: (models[key], images[key]) for key in models}


MODELS = _models()


@pytest.mark.parametrize("key", ["2d", "3d"])
def test_every_method_explains_both(key: str) -> None:
    model, images = MODELS[key]
    for method in tumorcam.METHODS:
        maps = tumorcam.explain(model, images, method=method, ig_steps=4)
        assert maps.shape == (3, *images.shape[2:]), method
        assert float(maps.min()) >= 0 and float(maps.max()) <= 1, method
    lesions = tumorcam.explain_components(model, images)
    assert lesions.maps.shape[1:] == images.shape[2:] and len(lesions.maps) == len(lesions.image_index)


@pytest.mark.parametrize("key", ["2d", "3d"])
def test_checks_run_on_both(key: str) -> None:
    model, images = MODELS[key]
    maps = tumorcam.explain(model, images)
    for baseline in BASELINES:
        result = tumorcam.faithfulness(model, images, maps, steps=4, baseline=baseline)
        assert np.isfinite(result.deletion_auc).all() and np.isfinite(result.insertion_auc).all(), baseline
        assert ((result.deletion_auc >= 0) & (result.deletion_auc <= 1)).all(), baseline
    masks = (images[:, :1] > 0.5).float()
    row = tumorcam.localization(maps, masks)
    assert set(row) == {"pointing_game", "energy_pointing_game", "top_iou"}
    sanity = tumorcam.sanity(model, images[:2])
    assert sanity.spearman.shape == (len(sanity.stages), 2)
    shares = tumorcam.channels(model, images, ig_steps=4, patient_ids=["a", "a", "b"]).shares
    np.testing.assert_allclose(shares.sum(axis=1), 1.0, atol=1e-6)


def test_the_default_layer_of_a_monai_unet_is_the_up_block_below_the_top() -> None:
    model = UNet(spatial_dims=3, in_channels=4, out_channels=1, channels=(8, 16, 32, 64), strides=(2, 2, 2),
                 num_res_units=1)
    # model.2.0 (the top up-block's transposed convolution) already outputs the one class channel
    assert default_layer(model, torch.zeros(1, 4, 16, 16, 16)) == "model.1.submodule.2"


def test_the_library_example_of_docs_volumes_runs() -> None:
    text = (Path(__file__).resolve().parents[1] / "docs" / "volumes.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert len(blocks) == 1
    scope: dict = {}
    exec(compile(blocks[0], "docs/volumes.md", "exec"), scope)  # noqa: S102 - the doc's own example
    assert scope["maps"].shape == (2, 32, 32, 32)
    assert scope["seq"].shares.shape == (2, 4)


def test_every_target_explains_a_volume() -> None:
    model, images = MODELS["3d"]
    masks = (images[:, :1] > 0.6).float()
    for target in [name for name, spec in tumorcam.TARGETS.items() if not spec.per_lesion]:  # component: above
        maps = tumorcam.explain(model, images, target=target, masks=masks)
        assert maps.shape == (3, 16, 16, 16) and bool(torch.isfinite(maps).all()), target
    # false positives only exist where the model predicts and the ground truth does not
    with torch.no_grad():
        predicted = model(images) > 0
    no_false_positive = tumorcam.explain(model, images, target="false-positive", masks=predicted.float())
    assert float(no_false_positive.max()) == 0.0


