"""`tumorcam explain --image FILE --model MODULE:FACTORY`: a factory module written into tmp_path and
run from there; `load_user_model`'s errors (one line naming the option, exit 2); the image-to-input
rule; and every Python block of docs/own-model.md, run in order, plus its command line."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import run_cli
from tumorcam.errors import TumorcamError
from tumorcam.runs.image import input_channels, model_input, unit_range
from tumorcam.models.user import load_user_model

DOC = Path(__file__).resolve().parents[1] / "docs" / "own-model.md"

FACTORIES = '''
import segmentation_models_pytorch as smp
from torch import nn


def make():
    return smp.Unet("resnet18", encoder_weights=None, in_channels=3, classes=2)


def make_grey():
    return smp.Unet("resnet18", encoder_weights=None, in_channels=1, classes=1)


class TwoOutputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.unet = make()

    def forward(self, x):
        return {"aux": x.mean(), "logits": self.unet(x)}


def make_pair():
    return TwoOutputs()


class SquareOnly(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 1, 1))

    def forward(self, x):
        if x.shape[-1] != x.shape[-2]:
            raise RuntimeError(f"expected a square image, got {x.shape[-2]} x {x.shape[-1]}")
        return self.body(x)


def make_square_only():
    return SquareOnly()


def make_dict():
    return {"not": "a module"}


def make_broken():
    raise RuntimeError("no GPU here")


not_callable = 3
'''


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch) -> Path:
    """tmp_path as the current directory, holding tests_helper_module.py (the factories), w.pth (make()'s
    weights, seeded), x.png (48 x 64, not square) and y.png; the module is forgotten afterwards."""
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    for name in ("tests_helper_module", "my_models"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    (tmp_path / "tests_helper_module.py").write_text(FACTORIES)
    sys.path_importer_cache.pop(str(tmp_path), None)
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((64, 96)) * 255).astype(np.uint8)).save(tmp_path / "x.png")
    Image.fromarray((rng.random((64, 64)) * 255).astype(np.uint8)).save(tmp_path / "y.png")
    yield tmp_path
    for name in ("tests_helper_module", "my_models"):
        sys.modules.pop(name, None)


def _weights(path: Path, factory: str = "make", seed: int = 0) -> Path:
    torch.manual_seed(seed)
    torch.save(load_user_model(f"tests_helper_module:{factory}").state_dict(), path)
    return path


_cli = run_cli


def test_model_form_writes_a_map_of_the_image_shape_and_an_overlay(workdir: Path, capsys):
    from PIL import Image

    from tumorcam.explain import explain

    _weights(workdir / "w.pth")
    code, out, err = _cli(["explain", "--image", "x.png", "--image", "y.png", "--model", "tests_helper_module:make",
                           "--weights", "w.pth", "--out", "out", "--channel", "1"], capsys)
    assert code == 0, err
    assert out.splitlines()[0] == ("gradcam of predicted-region, channel 1, at layer decoder.blocks.4 of Unet "
                                   "(3 input channel(s))")
    assert "wrote out/x.npy and out/x.png" in out and "wrote out/y.npy and out/y.png" in out
    heatmap = np.load(workdir / "out" / "x.npy")
    assert heatmap.shape == (64, 96) and heatmap.dtype == np.float32
    assert heatmap.min() >= 0 and heatmap.max() == pytest.approx(1.0)
    with Image.open(workdir / "out" / "x.png") as img:
        assert img.format == "PNG" and img.width > 600
    # the same map as the library's on the documented input: the slice in [0, 1] repeated to 3 channels
    model = load_user_model("tests_helper_module:make", "w.pth")
    with Image.open(workdir / "x.png") as img:
        grey = np.asarray(img, dtype=np.float32)
    x = torch.from_numpy(grey / grey.max())[None, None].repeat(1, 3, 1, 1)
    expected = explain(model, x, channel=1)[0].numpy()
    np.testing.assert_allclose(heatmap, expected, atol=1e-5)
    assert not [p for p in (workdir / "out").iterdir() if p.name.startswith(".")]  # no temporary files left


def test_model_form_options_output_layer_method(workdir: Path, capsys):
    code, out, err = _cli(["explain", "--image", "y.png", "--model", "tests_helper_module:make_pair", "--output",
                           "logits", "--method", "saliency", "--out", "o"], capsys)
    # two output channels and no --channel: the class to explain must be chosen
    assert code == 2 and err.strip() == ("error: --channel: the model has 2 output channels (classes); choose the one "
                                         "to explain, 0..1")
    code, out, err = _cli(["explain", "--image", "y.png", "--model", "tests_helper_module:make_pair", "--output",
                           "logits", "--method", "saliency", "--channel", "0", "--out", "o"], capsys)
    assert code == 0, err
    assert out.startswith("saliency of predicted-region, channel 0, at layer input of TwoOutputs")
    code, out, err = _cli(["explain", "--image", "y.png", "--model", "tests_helper_module:make_grey", "--layer",
                           "encoder.layer4", "--out", "o"], capsys)
    assert code == 0, err
    assert "at layer encoder.layer4 of Unet (1 input channel(s))" in out
    assert np.load(workdir / "o" / "y.npy").shape == (64, 64)


@pytest.mark.parametrize(("args", "message"), [
    (["--model", "tests_helper_module"], "--model tests_helper_module: expected MODULE:FACTORY"),
    (["--model", "tests_helper_module:mak"], "--model tests_helper_module:mak: tests_helper_module has no 'mak' "
                                              "(did you mean make?)"),
    (["--model", "no_such_module:make"], "--model no_such_module:make: no module named 'no_such_module'"),
    (["--model", "tests_helper_module:make_dict"], "--model tests_helper_module:make_dict: make_dict() returned "
                                                    "an object of type dict, not a torch.nn.Module"),
    (["--model", "tests_helper_module:make_broken"], "calling make_broken() failed (RuntimeError: no GPU here)"),
    (["--model", "tests_helper_module:not_callable"], "not_callable is an object of type int, not a factory"),
    (["--model", "tests_helper_module:make", "--weights", "missing.pth"], "--weights missing.pth: no such file"),
    (["--model", "tests_helper_module:make", "--method", "gradcm"], "--method: unknown method 'gradcm' "
                                                                    "(did you mean gradcam?)"),
    (["--model", "tests_helper_module:make", "--layer", "decoder.block.4", "--channel", "1"],
     "--layer: Unet has no layer 'decoder.block.4' (nearest: decoder.blocks.4"),
    (["--model", "tests_helper_module:make", "--channel", "2"], "--channel: the model has 2 output channel(s) "
                                                                "(0..1), got 2"),
    (["--model", "tests_helper_module:make", "--target", "false-positive", "--channel", "1"], "--target false-positive: needs a "
                                                                            "ground-truth mask"),
    (["--model", "tests_helper_module:make", "--target", "component", "--channel", "1"], "use tumorcam.explain_components"),
    (["--model", "tests_helper_module:make", "--method", "gradcam,saliency"], "--method gradcam,saliency: one value"),
    (["--model", "tests_helper_module:make_pair"], "--output: the model returns a dict with keys aux, logits"),
    (["--model", "tests_helper_module:make_grey", "--imagenet"], "--imagenet: ImageNet's mean and std are for 3 "
                                                                 "input channels; the model takes 1"),
    (["--model", "tests_helper_module:make", "--untrained"], "--untrained: only with RUN, not with --model"),
])
def test_model_form_errors_are_one_line_naming_the_option(workdir: Path, capsys, args, message):
    out = [] if "--out" in args else ["--out", "out"]
    code, _, err = _cli(["explain", "--image", "y.png", *args, *out], capsys)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not (workdir / "out").exists()


def test_an_input_the_network_fails_on_is_one_line_with_the_tensor_shape(workdir: Path, capsys):
    code, _, err = _cli(["explain", "--image", "x.png", "--model", "tests_helper_module:make_square_only", "--out",
                         "out"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert err == ("error: --model tests_helper_module:make_square_only: the network failed on x.png given as "
                   "a tensor (1, 1, 64, 96) (RuntimeError: expected a square image, got 64 x 96)\n"), err
    assert not (workdir / "out").exists()


def test_weights_of_another_architecture_or_pickled_are_refused(workdir: Path, capsys):
    _weights(workdir / "grey.pth", "make_grey")
    code, _, err = _cli(["explain", "--image", "y.png", "--model", "tests_helper_module:make", "--weights",
                         "grey.pth", "--out", "out"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("error: --weights grey.pth: does not fit the network of model tests_helper_module:make:")
    assert "encoder.conv1.weight: (64, 1, 7, 7) in the file, (64, 3, 7, 7) in the model" in err
    assert "missing (e.g. segmentation_head" not in err and "2 of another shape" not in err

    torch.save(load_user_model("tests_helper_module:make"), workdir / "whole.pth")  # a pickled module
    code, _, err = _cli(["explain", "--image", "y.png", "--model", "tests_helper_module:make", "--weights",
                         "whole.pth", "--out", "out"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("error: --weights whole.pth: holds a pickled segmentation_models_pytorch.")
    assert "torch.load(weights_only=True) refuses" in err

    state = load_user_model("tests_helper_module:make").state_dict()
    torch.save({"epoch": 3, "state_dict": state}, workdir / "ckpt.pth")  # a training checkpoint
    code, _, err = _cli(["explain", "--image", "y.png", "--model", "tests_helper_module:make", "--weights",
                         "ckpt.pth", "--out", "out"], capsys)
    assert code == 2 and "--weights ckpt.pth: not a state_dict: entries epoch, state_dict are not tensors" in err


def test_safetensors_weights_load_exactly(workdir: Path):
    from safetensors.torch import save_file

    torch.manual_seed(3)
    source = load_user_model("tests_helper_module:make")
    save_file(source.state_dict(), str(workdir / "w.safetensors"))
    loaded = load_user_model("tests_helper_module:make", workdir / "w.safetensors")
    state = loaded.state_dict()
    fresh = load_user_model("tests_helper_module:make")
    assert not torch.equal(fresh.encoder.conv1.weight, state["encoder.conv1.weight"])
    for name, value in source.state_dict().items():
        assert torch.equal(value, state[name]), name


def test_load_user_model_finds_the_current_directory_and_restores_sys_path(workdir: Path):
    import importlib.util

    assert importlib.util.find_spec("tests_helper_module") is None  # only the current directory holds it
    before = list(sys.path)
    with pytest.raises(TumorcamError, match="model tests_helper_module:make_broken"):
        load_user_model("tests_helper_module:make_broken")
    assert load_user_model("tests_helper_module:make_grey").encoder.conv1.in_channels == 1
    assert sys.path == before


def test_the_model_form_and_the_run_form_do_not_mix(workdir: Path, capsys):
    for args, message in [
        (["explain", "runs/demo", "--image", "y.png", "--model", "tests_helper_module:make", "--out", "o"],
         "--model: explains your own network, not the run runs/demo"),
        (["explain", "--model", "tests_helper_module:make", "--out", "o"], "--image: --model needs at least one"),
        (["explain", "--image", "y.png", "--model", "tests_helper_module:make"], "--out: --model needs a folder"),
        (["explain"], "RUN: give a run folder, or --image FILE --model MODULE:FACTORY --out DIR"),
        (["explain", "--image", "y.png"], "RUN: give a run folder, or --image FILE --model MODULE:FACTORY"),
        (["explain", "runs/demo", "--weights", "w.pth"], "--weights: only with --model"),
        (["explain", "--image", "y.png", "--image", "sub/y.png", "--model", "tests_helper_module:make", "--out", "o"],
         "--image: y.png and sub/y.png would both write y.npy in the out folder"),
    ]:
        code, _, err = _cli(args, capsys)
        assert code == 2 and err.count("\n") == 1 and message in err, (args, err)


def test_the_input_rule_scale_then_repeat_then_optional_imagenet():
    pixels = np.array([[-5.0, 0.0], [2.0, 8.0]], np.float32)
    x = unit_range(pixels, "a.png")
    np.testing.assert_array_equal(x, [[0, 0], [0.25, 1]])
    three = model_input(x, 3)
    assert three.shape == (1, 3, 2, 2) and all(torch.equal(three[0, c], torch.from_numpy(x)) for c in range(3))
    normalised = model_input(x, 3, imagenet=True)
    np.testing.assert_allclose(normalised[0, :, 1, 1].numpy(), [(1 - 0.485) / 0.229, (1 - 0.456) / 0.224,
                                                                 (1 - 0.406) / 0.225], rtol=1e-6)
    with pytest.raises(TumorcamError, match="a.png: the image has no positive values"):
        unit_range(np.zeros((2, 2)), "a.png")
    first_conv = nn.Sequential(nn.Identity(), nn.Conv2d(4, 2, 3), nn.Conv2d(2, 1, 1))
    assert input_channels(first_conv) == 4 and input_channels(nn.Linear(3, 3)) == 1


def _blocks(language: str) -> list[str]:
    """The doc's blocks of `language`, each led by blank lines so that line numbers are the doc's."""
    text = DOC.read_text()
    return ["\n" * text.count("\n", 0, m.start(1)) + m.group(1)
            for m in re.finditer(rf"^```{language}\n(.*?)^```", text, flags=re.S | re.M)]


def test_the_docs_python_blocks_and_command_run(workdir: Path, capsys, monkeypatch):
    """Blocks that start with `# NAME.py` are files written to the current directory; the others run in
    order in one namespace, as a script in that directory would; then each `tumorcam explain ... --model`
    line runs on a 64 x 64 slice.png."""
    from PIL import Image

    monkeypatch.syspath_prepend(str(workdir))

    blocks = _blocks("python")
    assert len(blocks) >= 8
    namespace: dict = {"__name__": "own_model_doc"}
    for block in blocks:
        first = block.lstrip("\n").splitlines()[0]
        if re.fullmatch(r"# \w+\.py", first):
            (workdir / first[2:]).write_text(block.lstrip("\n"))
            sys.path_importer_cache.pop(str(workdir), None)
            continue
        exec(compile(block, str(DOC), "exec"), namespace)  # noqa: S102 - the docs' own examples
    out = capsys.readouterr().out
    assert "layer: Unet has no layer 'decoder.block.4' (nearest: decoder.blocks.4" in out
    assert "masks: target 'false-negative' needs ground-truth masks" in out

    Image.fromarray((np.random.default_rng(1).random((64, 64)) * 255).astype(np.uint8)).save("slice.png")
    commands = [line for block in _blocks("bash") for line in block.splitlines() if "--model" in line]
    assert len(commands) == 1
    code, out, err = _cli(shlex.split(commands[0])[1:], capsys)
    assert code == 0, err
    assert "channel 1, at layer decoder.blocks.4 of Unet (3 input channel(s))" in out
    assert np.load(workdir / "maps" / "slice.npy").shape == (64, 64)
