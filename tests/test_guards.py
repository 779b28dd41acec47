"""`tumorcam.guards`: one test per refusal and per warning of the library's entry points."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch
from torch import nn

import tumorcam
from tumorcam.errors import TumorcamWarning
from tumorcam.guards import warn_intensity

SIZE = 64


@pytest.fixture(scope="module")
def unet() -> nn.Module:
    torch.manual_seed(0)
    return smp.Unet("resnet18", encoder_weights=None, in_channels=3, classes=3).eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.rand(2, 3, SIZE, SIZE)


def tiny(in_channels: int = 1, classes: int = 1, last: nn.Module | None = None) -> nn.Module:
    layers = [nn.Conv2d(in_channels, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
              nn.Conv2d(4, classes, 1)]
    return nn.Sequential(*layers, *([last] if last is not None else [])).eval()


# refusals


def test_a_channel_count_the_first_convolution_does_not_take(unet):
    with pytest.raises(ValueError, match=r"^images: images has 1 channel; the model's first convolution takes 3$"):
        tumorcam.explain(unet, torch.rand(2, 1, SIZE, SIZE), channel=1)
    with pytest.raises(ValueError, match=r"^images: images has 4 channels; the model's first convolution takes 3$"):
        tumorcam.faithfulness(unet, torch.rand(2, 4, SIZE, SIZE), torch.rand(2, SIZE, SIZE), channel=1)


def test_a_model_that_repeats_its_input_is_not_refused():
    class Repeats(nn.Module):  # takes 1 channel although its first convolution takes 3
        def __init__(self) -> None:
            super().__init__()
            self.net = tiny(in_channels=3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x.repeat(1, 3, 1, 1))

    assert tumorcam.explain(Repeats().eval(), torch.rand(1, 1, 16, 16), method="saliency").shape == (1, 16, 16)


def test_a_multi_channel_output_needs_channel(unet, images):
    message = r"^channel: the model has 3 output channels \(classes\); choose the one to explain, 0..2"
    with pytest.raises(ValueError, match=message):
        tumorcam.explain(unet, images)
    with pytest.raises(ValueError, match=message):
        tumorcam.faithfulness(unet, images, torch.rand(2, SIZE, SIZE))
    with pytest.raises(ValueError, match=message):
        tumorcam.channels(unet, images, ig_steps=2)
    with pytest.raises(ValueError, match=message):
        tumorcam.explain_components(unet, images)
    one = tiny()  # one output channel: channel None is 0
    x = torch.rand(2, 1, 16, 16)
    torch.testing.assert_close(tumorcam.explain(one, x, method="saliency"),
                               tumorcam.explain(one, x, method="saliency", channel=0))


def test_images_that_are_not_b_c_spatial(unet):
    with pytest.raises(ValueError, match=r"^images: expected a tensor \(B, C, H, W\) or \(B, C, D, H, W\), got \(3, 64, 64\)"):
        tumorcam.explain(unet, torch.rand(3, SIZE, SIZE), channel=1)
    with pytest.raises(ValueError, match=r"^images: expected a tensor .* got ndarray"):
        tumorcam.faithfulness(unet, np.zeros((1, 3, SIZE, SIZE)), torch.rand(1, SIZE, SIZE), channel=1)


def test_nan_or_inf_in_images(unet, images):
    bad = images.clone()
    bad[1, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match=r"^images: 1 of 2 images hold NaN or inf values"):
        tumorcam.explain(unet, bad, channel=1)
    bad[0, 2, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"^images: 2 of 2 images hold NaN or inf values"):
        tumorcam.channels(unet, bad, channel=1)


def test_a_spatial_size_the_encoder_cannot_take():
    fpn = smp.FPN("resnet18", encoder_weights=None, in_channels=1, classes=1).eval()
    with pytest.raises(ValueError, match=r"^images: spatial size \(70, 70\) is not divisible by 32, which the encoder "
                                         r"needs; pad or resize \(e.g. to \(96, 96\)\)$"):
        tumorcam.explain(fpn, torch.rand(1, 1, 70, 70))


def test_a_spatial_size_a_hand_built_unet_cannot_take():
    class TwoLevels(nn.Module):  # a skip connection: the size must be even
        def __init__(self) -> None:
            super().__init__()
            self.down = nn.Conv2d(1, 4, 3, stride=2, padding=1)
            self.up = nn.ConvTranspose2d(4, 4, 2, stride=2)
            self.head = nn.Conv2d(5, 1, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(torch.cat([x, self.up(self.down(x))], dim=1))

    with pytest.raises(ValueError, match=r"^images: spatial size \(15, 16\) is not divisible by 2, which the model "
                                         r"needs; pad or resize \(e.g. to \(16, 16\)\)$"):
        tumorcam.faithfulness(TwoLevels().eval(), torch.rand(1, 1, 15, 16), torch.rand(1, 15, 16))


# warnings


def test_probability_outputs_are_warned():
    x = torch.rand(2, 1, 16, 16)
    with pytest.warns(TumorcamWarning, match=r"^output: the model's outputs look like probabilities \(its last "
                                             r"module is a Sigmoid\); tumorcam expects logits$"):
        tumorcam.explain(tiny(last=nn.Sigmoid()), x, method="saliency")
    clamped = tiny()
    with torch.no_grad():
        clamped[4].weight.zero_()
        clamped[4].bias.fill_(0.25)
    with pytest.warns(TumorcamWarning, match=r"^output: the model's outputs look like probabilities \(all in "
                                             r"\[0, 1\]\); tumorcam expects logits$"):
        tumorcam.faithfulness(clamped, x, torch.rand(2, 16, 16), steps=2)


def test_logits_are_not_warned(unet, images):
    with warnings.catch_warnings():
        warnings.simplefilter("error", TumorcamWarning)
        maps = tumorcam.explain(unet, images, channel=1, method="saliency")
    assert maps.shape == (2, SIZE, SIZE)


def test_empty_predicted_regions_are_warned_in_faithfulness():
    never = tiny()
    with torch.no_grad():
        never[4].weight.zero_()
        never[4].bias.fill_(-1.0)  # z = -1 everywhere: no predicted pixel
    x = torch.rand(3, 1, 16, 16)
    with pytest.warns(TumorcamWarning, match=r"^images: 3 of 3 images have an empty predicted region: their "
                                             r"deletion/insertion AUCs are NaN and they leave the statistics$"):
        result = tumorcam.faithfulness(never, x, torch.rand(3, 16, 16), steps=2)
    assert np.isnan(result.deletion_auc).all()


def fallback_model() -> nn.Module:
    """Grad-CAM at the last block ("4") is negative everywhere (flat after ReLU); at "2" it is not."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 1, 1))
    with torch.no_grad():
        model[0].bias.fill_(0.5)
        model[2].weight.uniform_(0, 0.1)
        model[2].bias.fill_(1.0)
        model[4].weight.fill_(-0.01)
        model[4].bias.fill_(10.0)
        model[6].weight.fill_(-1.0)
        model[6].bias.fill_(100.0)  # every pixel predicted
    return model.eval()


def test_flat_maps_are_warned():
    x = torch.rand(2, 1, 16, 16)
    with pytest.warns(TumorcamWarning, match=r"^maps: 2 of 2 gradcam maps at layer 4 are flat \(all equal\)$"):
        maps = tumorcam.explain(fallback_model(), x, layer="4")
    assert (maps == 0).all()


def test_layer_none_moves_up_a_block_when_the_default_gives_flat_maps():
    x = torch.rand(2, 1, 16, 16)
    with pytest.warns(TumorcamWarning, match=r"^layer=None: 4 gave flat Grad-CAM maps; using 2$"):
        maps = tumorcam.explain(fallback_model(), x)
    torch.testing.assert_close(maps, tumorcam.explain(fallback_model(), x, layer="2"))
    assert (maps.flatten(1).amax(dim=1) > maps.flatten(1).amin(dim=1)).all()


def test_intensities_far_from_the_training_slices_are_warned():
    training = np.clip(np.random.default_rng(0).uniform(0, 1, (8, 32, 32)), 0, 1).astype(np.float32)
    dark = np.zeros((32, 32), np.float32)
    dark[0, 0] = 1.0  # one hot pixel: after x / max(x) everything else is black
    with pytest.warns(TumorcamWarning, match=r"^dark.png: its intensities after preparation lie far from "
                                             r"the training data's"):
        warn_intensity(dark, training, "dark.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error", TumorcamWarning)
        warn_intensity(training[0], training, "--image same.png")


def test_the_run_folder_image_path_warns_on_far_intensities(tmp_path: Path, blob_prepared: Path, capsys):
    from PIL import Image

    from tumorcam.cli import main
    from tumorcam.config import Config, ExplainConfig, ModelConfig, TrainConfig
    from tumorcam.models.unet import WEIGHTS_FILE, build_model, save_weights

    run = tmp_path / "run"
    config = Config(preset="demo", data=str(blob_prepared), model=ModelConfig(encoder="resnet18", encoder_weights="none"),
                    train=TrainConfig(size=64, device="cpu", seed=0),
                    explain=ExplainConfig(limit=4, methods=["saliency"], targets=["mean-logits"], batch_size=3))
    config.save(run / "config.json")
    torch.manual_seed(1)
    save_weights(build_model(config.model), run / WEIGHTS_FILE)
    pixels = np.zeros((64, 64), np.uint8)
    pixels[5, 5] = 255
    source = tmp_path / "dark.png"
    Image.fromarray(pixels).save(source)
    main(["explain", str(run), "--image", str(source), "--out", str(tmp_path / "o.png")])
    err = capsys.readouterr().err
    assert any(line.startswith(f"warning: {source}: its intensities after preparation")
               for line in err.splitlines())
    assert all(line.startswith("warning: ") for line in err.splitlines())  # one line each: no file:line


def test_the_cli_prints_a_warning_as_one_line(capsys, monkeypatch):
    from tumorcam import cli
    from tumorcam.guards import warn

    def warns(**_: object) -> None:
        warn("maps: 1 of 1 gradcam maps at layer x are flat (all equal)")
        warn("maps: 1 of 1 gradcam maps at layer x are flat (all equal)")  # once

    monkeypatch.setattr(cli, "app", warns)
    cli.main(["anything"])
    assert capsys.readouterr().err == "warning: maps: 1 of 1 gradcam maps at layer x are flat (all equal)\n"


def test_evaluating_a_split_with_training_slices_warns_how_many() -> None:
    from tumorcam.data.arrays import warn_training_split

    splits = {"train": [1, 2, 3], "val": [4], "test": [5, 6]}
    keys = np.array([1, 2, 3, 4, 5, 6])
    with pytest.warns(TumorcamWarning, match=r"^split 'all' mixes 3 training slices into the Dice and the verdicts; "
                                             r"the test split has 2 slices$"):
        warn_training_split(splits, "all", keys, np.arange(6), "slice")
    with pytest.warns(TumorcamWarning, match=r"^split 'train' mixes 1 training case into"):
        warn_training_split(splits, "train", keys, np.array([0]), "case")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_training_split(splits, "test", keys, np.array([4, 5]), "slice")  # the test split: no word
        warn_training_split({"train": [1], "test": []}, "all", keys, np.arange(6), "slice")  # no test split to use
