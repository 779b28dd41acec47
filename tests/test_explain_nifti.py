"""`tumorcam explain --image CASE_0000.nii.gz --image CASE_0001.nii.gz --model MODULE:FACTORY` for a 3-D
network: a 2-channel 20^3 case with a non-identity affine and a seeded MONAI U-Net in tmp_path; the map's
geometry, the input rule, --size, the one-line errors (nothing written), the 2-D slice path kept, and the
command of docs/own-model.md's volume section."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import nibabel
import numpy as np
import pytest
import torch

from conftest import run_cli
from tumorcam.runs.volume_files import case_name, explain_volume_files, is_volume
from tumorcam.models.user import load_user_model

DOC = Path(__file__).resolve().parents[1] / "docs" / "own-model.md"
MODULE = "nifti_helper_models"
AFFINE = np.array([[0.0, 0.0, 1.5, -40.25], [1.2, 0.0, 0.0, 12.5], [0.0, 1.0, 0.1, -7.75], [0.0, 0.0, 0.0, 1.0]])

FACTORIES = '''
import torch
from monai.networks.nets import UNet
from torch import nn


def make3d():
    torch.manual_seed(0)
    return UNet(spatial_dims=3, in_channels=2, out_channels=1, channels=(4, 8), strides=(2,))


def make2d():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(4, 1, 1))
'''


def _write_nifti(path: Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    nibabel.save(nibabel.Nifti1Image(array.astype(np.float32), affine), path)
    return path


def _case(rng: np.random.Generator, shape: tuple[int, int, int] = (20, 20, 20)) -> np.ndarray:
    """Two channels: a noisy head (zero background) with a bright ball."""
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"))
    head = ((grid - np.array(shape)[:, None, None, None] / 2) ** 2).sum(0) < (0.45 * min(shape)) ** 2
    ball = ((grid - np.array([12, 8, 10])[:, None, None, None]) ** 2).sum(0) < 9
    channels = []
    for scale in (300.0, 1200.0):
        volume = scale * (0.4 + 0.1 * rng.standard_normal(shape)) * head
        volume[ball] += scale
        channels.append(volume)
    return np.stack(channels)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch) -> Path:
    """tmp_path as the current directory holding the factories, w.pth (make3d's weights) and the case
    CASE_0000.nii.gz, CASE_0001.nii.gz; the module is forgotten afterwards."""
    monkeypatch.chdir(tmp_path)
    for name in (MODULE, "my_unet3d"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    (tmp_path / f"{MODULE}.py").write_text(FACTORIES)
    sys.path_importer_cache.pop(str(tmp_path), None)
    torch.save(load_user_model(f"{MODULE}:make3d").state_dict(), tmp_path / "w.pth")
    for c, volume in enumerate(_case(np.random.default_rng(0))):
        _write_nifti(tmp_path / f"CASE_{c:04d}.nii.gz", volume)
    yield tmp_path
    for name in (MODULE, "my_unet3d"):
        sys.modules.pop(name, None)


_cli = run_cli


CASE = ["--image", "CASE_0000.nii.gz", "--image", "CASE_0001.nii.gz"]
MODEL = ["--model", f"{MODULE}:make3d", "--weights", "w.pth"]


def _scaled(path: Path) -> np.ndarray:
    """The documented rule: clip((v - lo) / (hi - lo), 0, 1), lo, hi the 0.5/99.5 percentiles of the nonzero voxels."""
    v = np.asarray(nibabel.load(path).dataobj, dtype=np.float64)
    lo, hi = np.percentile(v[v != 0], [0.5, 99.5])
    return np.clip((v - lo) / (hi - lo), 0, 1)


def test_a_case_gives_a_map_with_its_shape_and_affine_and_orthogonal_views(workdir: Path, capsys):
    from PIL import Image

    from tumorcam.explain import explain

    code, out, err = _cli(["explain", *CASE, *MODEL, "--out", "out"], capsys)
    assert code == 0, err
    assert out.splitlines() == [
        "gradcam of predicted-region, channel 0, at layer model.1.submodule.conv of UNet (2 input channel(s))",
        "wrote out/CASE_gradcam.nii.gz and out/CASE_gradcam.png"]
    written = nibabel.load(workdir / "out" / "CASE_gradcam.nii.gz")
    source = nibabel.load(workdir / "CASE_0000.nii.gz")
    assert written.shape == source.shape == (20, 20, 20)
    assert np.array_equal(written.affine, source.affine)
    heatmap = np.asarray(written.dataobj)
    assert np.issubdtype(heatmap.dtype, np.floating) and heatmap.min() >= 0 and heatmap.max() == pytest.approx(1.0)
    with Image.open(workdir / "out" / "CASE_gradcam.png") as img:
        assert img.format == "PNG" and img.width > 400
    assert not [p for p in (workdir / "out").iterdir() if p.name.startswith(".")]  # no temporary files left

    model = load_user_model(f"{MODULE}:make3d", "w.pth")
    x = torch.from_numpy(np.stack([_scaled(workdir / f"CASE_{c:04d}.nii.gz") for c in range(2)]))[None].float()
    np.testing.assert_allclose(heatmap, explain(model, x)[0].numpy(), atol=1e-5)


def test_size_resamples_for_the_network_and_writes_the_case_shape(workdir: Path):
    model = load_user_model(f"{MODULE}:make3d", "w.pth")
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape)))
    written = explain_volume_files(model, ["CASE_0000.nii.gz", "CASE_0001.nii.gz"], "sized", method="saliency",
                                   size=16)
    assert set(seen) == {(1, 2, 16, 16, 16)}
    assert written.layer == "input" and written.channels == 2
    assert [tuple(p.name for p in pair) for pair in written.files] == [("CASE_saliency.nii.gz", "CASE_saliency.png")]
    image = nibabel.load(written.files[0][0])
    assert image.shape == (20, 20, 20) and np.array_equal(image.affine, nibabel.load("CASE_0001.nii.gz").affine)
    heatmap = np.asarray(image.dataobj)
    assert 0 <= heatmap.min() and heatmap.max() == pytest.approx(1.0)


def test_an_odd_depth_is_padded_for_the_network_and_the_map_keeps_the_case_grid(workdir: Path):
    """A MONAI U-Net that halves each axis twice concatenates 11 with 12 slices on a 21-slice case and
    fails inside (the user's 155 slices with 4 halvings alike): the case is padded to 24, explained,
    and the map cropped back to 21. The one-level U-Net takes 21 but answers on 22: padded to 22."""
    from monai.networks.nets import UNet

    from tumorcam.errors import TumorcamWarning
    from tumorcam.explain import explain
    from tumorcam.runs.volume_files import network_multiple

    for c, volume in enumerate(_case(np.random.default_rng(0), (21, 20, 20))):
        _write_nifti(workdir / f"ODD_{c:04d}.nii.gz", volume)
    torch.manual_seed(0)
    model = UNet(spatial_dims=3, in_channels=2, out_channels=1, channels=(4, 8, 16), strides=(2, 2)).eval()
    with pytest.raises(RuntimeError, match="Expected size"), torch.no_grad():
        model(torch.zeros(1, 2, 21, 20, 20))
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape)))
    with pytest.warns(TumorcamWarning, match=re.escape(
            "cannot take the case's shape (21, 20, 20) (RuntimeError: ") + r".*" + re.escape(
            "padded it with zeros at the end of each axis to (24, 20, 20), a multiple of 4, and cropped the map "
            "back to (21, 20, 20)")):
        written = explain_volume_files(model, ["ODD_0000.nii.gz", "ODD_0001.nii.gz"], "odd")
    assert (1, 2, 24, 20, 20) in seen
    image = nibabel.load(written.files[0][0])
    assert image.shape == (21, 20, 20) and np.array_equal(image.affine, nibabel.load("ODD_0000.nii.gz").affine)
    heatmap = np.asarray(image.dataobj)
    assert heatmap.min() >= 0 and heatmap.max() == pytest.approx(1.0)
    x = torch.from_numpy(np.stack([_scaled(workdir / f"ODD_{c:04d}.nii.gz") for c in range(2)]))[None].float()
    expected = explain(model, torch.nn.functional.pad(x, [0, 0, 0, 0, 0, 3]))[0, :21]
    expected = (expected - expected.min()) / (expected.max() - expected.min())
    np.testing.assert_allclose(heatmap, expected.numpy(), atol=1e-5)
    shallow = load_user_model(f"{MODULE}:make3d", "w.pth")
    assert network_multiple(shallow, x) == (2, "logits (1, 1, 22, 20, 20) for input (1, 2, 21, 20, 20)")
    assert network_multiple(shallow, x[:, :, :20]) == (1, None)


def test_a_shape_no_padding_fixes_is_one_error_naming_size(workdir: Path):
    from tumorcam.errors import TumorcamError

    class OnlyCube16(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv3d(2, 1, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if tuple(x.shape[2:]) != (16, 16, 16):
                raise RuntimeError(f"Expected size 16 but got size {x.shape[2]}")
            return self.conv(x)

    with pytest.raises(TumorcamError, match=r"^model: cannot take the case's shape \(20, 20, 20\) \(RuntimeError: "
                                            r"Expected size 16 but got size 20\), nor .*; give a size N, a cube"):
        explain_volume_files(OnlyCube16(), ["CASE_0000.nii.gz", "CASE_0001.nii.gz"], "never")
    assert not (workdir / "never").exists()
    written = explain_volume_files(OnlyCube16(), ["CASE_0000.nii.gz", "CASE_0001.nii.gz"], "cube", size=16,
                                   method="saliency")
    assert nibabel.load(written.files[0][0]).shape == (20, 20, 20)


def _rewrite(workdir: Path, name: str, *, affine: np.ndarray = AFFINE, shape=(20, 20, 20)) -> None:
    _write_nifti(workdir / name, _case(np.random.default_rng(1), shape)[1], affine)


@pytest.mark.parametrize(("setup", "args", "message"), [
    (None, ["--image", "CASE_0000.nii.gz"], ("--image: 1 file(s) given as the channels of one case; the network "
                                             "takes 2 input channel(s)")),
    (lambda w: _rewrite(w, "CASE_0002.nii.gz"), [*CASE, "--image", "CASE_0002.nii.gz"], "--image: 3 file(s)"),
    (lambda w: _rewrite(w, "CASE_0001.nii.gz", affine=AFFINE + np.diag([0.0, 0.0, 0.01, 0.0])), CASE,
     "--image CASE_0001.nii.gz: its affine differs from CASE_0000.nii.gz's"),
    (lambda w: _rewrite(w, "CASE_0001.nii.gz", shape=(20, 20, 18)), CASE,
     "--image CASE_0001.nii.gz: shape (20, 20, 18) differs from CASE_0000.nii.gz's (20, 20, 20)"),
    (None, ["--image", "CASE_0001.nii.gz", "--image", "CASE_0000.nii.gz"],
     "--image CASE_0001.nii.gz: channel 0001 given as channel 0; give the files in channel order"),
    (lambda w: _rewrite(w, "OTHER_0001.nii.gz"), ["--image", "CASE_0000.nii.gz", "--image", "OTHER_0001.nii.gz"],
     "--image OTHER_0001.nii.gz: of case OTHER, not CASE"),
    (lambda w: _rewrite(w, "CASE_0001.nii.gz", shape=(20, 1, 20)), CASE,
     ("--image CASE_0001.nii.gz: a 3-D network needs a volume (a 3-D array with more than one voxel on each axis), "
      "the file holds an array of shape (20, 1, 20)")),
    (lambda w: _write_nifti(w / "CASE_0001.nii.gz", np.zeros((20, 20, 20))), CASE, "error: --image CASE_0001.nii.gz: "),
    (lambda w: (w / "CASE_0001.nii.gz").write_bytes(b"not gzip"), CASE, "error: --image CASE_0001.nii.gz: "),
    (lambda w: (w / "x.png").write_bytes(b""), ["--image", "CASE_0000.nii.gz", "--image", "x.png"],
     "--image x.png: a 3-D network needs NIfTI volumes"),
    (None, [*CASE, "--imagenet"], "--imagenet: for a 2-D network's RGB slices"),
    (None, [*CASE, "--size", "1"], "--size 1: the cube's side in voxels, an integer >= 2"),
    (None, [*CASE, "--target", "gt-region"], "--target gt-region: needs a ground-truth mask"),
    (None, [*CASE, "--channel", "1"], "--channel: the model has 1 output channel(s) (0..0), got 1"),
])
def test_a_bad_case_is_one_line_naming_the_option_and_writes_nothing(workdir: Path, capsys, setup, args, message):
    if setup is not None:
        setup(workdir)
    code, _, err = _cli(["explain", *args, *MODEL, "--out", "out"], capsys)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not (workdir / "out").exists()


def test_the_slice_path_is_kept_for_a_2d_network(workdir: Path, capsys):
    """A 2-D NIfTI slice with a 2-D network: today's behaviour, a map .npy at the slice's size; --size refused."""
    _write_nifti(workdir / "slice.nii.gz", np.random.default_rng(2).random((24, 32)) + 0.1)
    code, out, err = _cli(["explain", "--image", "slice.nii.gz", "--model", f"{MODULE}:make2d", "--out", "o"], capsys)
    assert code == 0, err
    assert "wrote o/slice.npy and o/slice.png" in out
    assert np.load(workdir / "o" / "slice.npy").shape == (32, 24)  # rotated to display orientation, as before
    code, _, err = _cli(["explain", "--image", "slice.nii.gz", "--model", f"{MODULE}:make2d", "--size", "16",
                         "--out", "p"], capsys)
    assert code == 2 and "--size: resamples a 3-D network's NIfTI volumes" in err and not (workdir / "p").exists()
    code, _, err = _cli(["explain", "run", "--size", "16"], capsys)
    assert code == 2 and err == "error: --size: only with --model MODULE:FACTORY\n"


def test_channel_rules():
    assert case_name("BRATS_001_0003.nii.gz") == "BRATS_001" and case_name("dir/t1.nii") == "t1"
    assert case_name("CASE_12.nii.gz") == "CASE_12"
    assert is_volume(np.zeros((2, 3, 4))) and not is_volume(np.zeros((2, 1, 4))) and not is_volume(np.zeros((4, 4)))


def test_the_docs_volume_command_runs(workdir: Path, capsys, monkeypatch):
    """The `# my_unet3d.py` block of the volume section written beside a 4-channel 16^3 case named as the
    command names it; the command (with its weights saved from the factory) writes the documented files."""
    monkeypatch.syspath_prepend(str(workdir))
    text = DOC.read_text()
    section = text[text.index("## Volumes (NIfTI)"):]
    factory = re.search(r"^```python\n(# my_unet3d\.py\n.*?)^```", section, flags=re.S | re.M).group(1)
    (workdir / "my_unet3d.py").write_text(factory)
    sys.path_importer_cache.pop(str(workdir), None)
    command = re.search(r"^```shell\n(.*?)^```", section, flags=re.S | re.M).group(1).replace("\\\n", " ")
    args = shlex.split(command)[1:]
    torch.manual_seed(0)
    torch.save(load_user_model("my_unet3d:make_unet3d").state_dict(), args[args.index("--weights") + 1])
    rng = np.random.default_rng(3)
    for path in [args[i + 1] for i, arg in enumerate(args) if arg == "--image"]:
        _write_nifti(workdir / path, _case(rng, (16, 16, 16))[0])
    args[args.index("--size") + 1] = "32"  # the documented 64 works the same, slower on a CPU
    code, out, err = _cli(args, capsys)
    assert code == 0, err
    assert "wrote maps/BRATS_001_gradcam.nii.gz and maps/BRATS_001_gradcam.png" in out
    assert nibabel.load(workdir / "maps" / "BRATS_001_gradcam.nii.gz").shape == (16, 16, 16)
