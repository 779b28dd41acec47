"""Small trained nnU-Net v2 model folders, built here: what tests/test_nnunet.py's session fixtures and
benchmarks/bench_nnunet.py share.

`make_model_folder(root)` writes tumorcam's synthetic raw dataset (8 cases, size 32), runs nnU-Net's
fingerprint / plan / preprocess steps for 3d_fullres and 2d in one child process (this file run as a script:
nnU-Net reads its folders from the environment at import time; its worker pools run as threads there,
and the fingerprint samples 1e5 foreground voxels instead of 1e8, to keep this ~20 s), builds the
network with nnU-Net's trainer class from the plans, trains it TRAIN_STEPS steps with plain PyTorch on
random 16^3 crops of the preprocessed cases (one CPU thread: fastest on a shared machine) and saves it
in nnU-Net's checkpoint format under results/Dataset987_TumorcamSynth/nnUNetTrainer__nnUNetPlans__3d_fullres/fold_0/.
`prepare_root` is the planning half, `train_model(root, configuration)` the training half:
`train_model(root, "2d")` trains the 2d configuration's network on the same root (its plans and
2d preprocessed cases, no second fingerprint) TRAIN_STEPS_2D steps on random TRAIN_CROP_2D crops of
single slices and saves it under nnUNetTrainer__nnUNetPlans__2d/fold_0/ (mirroring axes (0, 1)).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

DATASET_ID = 987
DATASET = f"Dataset{DATASET_ID:03d}_TumorcamSynth"
TRAINER_FOLDER = "nnUNetTrainer__nnUNetPlans__3d_fullres"
TRAINER_FOLDER_2D = "nnUNetTrainer__nnUNetPlans__2d"
CONFIGURATIONS = ("3d_fullres", "2d")  # planned and preprocessed together: one fingerprint
TRAIN_STEPS = 40
TRAIN_CROP = (16, 16, 16)  # a quarter of the patch's voxels: 4x faster steps, and the model still segments
TRAIN_STEPS_2D = 40
TRAIN_CROP_2D = (1, 32, 28)  # one slice (squeezed) by the 2d plans' patch
TRAIN_BATCH_2D = 8
BIG_SIZE = 52  # a raw case whose preprocessed volume spans several tiles in every axis
BIG_SPACING = (1.0, 0.9, 1.3)  # differs from the plans' spacing, so export resamples
CHANNELS = 4


def _plan_and_preprocess(dataset_id: int, configurations: tuple[str, ...] = CONFIGURATIONS) -> None:
    """nnUNetv2_plan_and_preprocess -d ID -c CONFIGURATIONS -np 1 --verify_dataset_integrity, in this process."""
    from multiprocessing.pool import ThreadPool

    from nnunetv2.experiment_planning import verify_dataset_integrity
    from nnunetv2.experiment_planning.dataset_fingerprint import fingerprint_extractor
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprint_dataset,
        plan_experiments,
        preprocess,
    )
    from nnunetv2.preprocessing.preprocessors import default_preprocessor

    threads = types.SimpleNamespace(get_context=lambda method: types.SimpleNamespace(Pool=ThreadPool))
    for module in (verify_dataset_integrity, fingerprint_extractor, default_preprocessor):
        module.multiprocessing = threads

    class FewSamples(fingerprint_extractor.DatasetFingerprintExtractor):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.num_foreground_voxels_for_intensitystats = 10**5

    extract_fingerprint_dataset(dataset_id, FewSamples, num_processes=1, check_dataset_integrity=True,
                                show_progress_bar=False)
    plan_experiments([dataset_id])
    preprocess([dataset_id], configurations=configurations, num_processes=(1,) * len(configurations),
               show_progress_bar=False)


def _train(plans: dict, dataset_json: dict, preprocessed: str, steps: int, configuration: str = "3d_fullres",
           crop: tuple[int, ...] = TRAIN_CROP, batch: int = 2, device: str = "cpu") -> tuple[torch.nn.Module, dict]:
    """nnU-Net's network of `configuration`, trained `steps` Adam steps on `batch` random `crop` crops (a
    leading 1 for 2d: one slice, squeezed) on `device`, returned on the CPU; and the checkpoint's optimizer
    state and training log (numpy float64 values, as nnU-Net logs them)."""
    from acvl_utils.cropping_and_padding.padding import pad_nd_image
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.training.logging.nnunet_logger import LocalLogger

    from tumorcam.nnunet.model import build_network

    torch.manual_seed(0)
    network = build_network(plans, dataset_json, configuration, "nnUNetTrainer").to(device).train()
    patch = list(crop)
    squeeze = len(plans["configurations"][configuration]["patch_size"]) < len(patch)
    dataset = infer_dataset_class(preprocessed)(preprocessed)
    cases = []
    for key in dataset.identifiers:
        data, seg, _, _ = dataset.load_case(key)
        cases.append((pad_nd_image(np.asarray(data), patch), pad_nd_image(np.clip(np.asarray(seg), 0, None), patch)))
    rng = np.random.default_rng(0)
    optimizer = torch.optim.Adam(network.parameters(), lr=3e-3)
    weight = torch.tensor([0.2, 1.0, 1.0], device=device)
    logger = LocalLogger()
    for step in range(steps):
        images, labels = [], []
        for index in rng.choice(len(cases), batch):
            data, seg = cases[index]
            origin = [rng.integers(0, s - p + 1) for s, p in zip(data.shape[1:], patch)]
            window = tuple(slice(o, o + p) for o, p in zip(origin, patch))
            image, label = data[(slice(None), *window)], seg[(0, *window)]
            images.append(image[:, 0] if squeeze else image)
            labels.append(label[0] if squeeze else label)
        logits = network(torch.from_numpy(np.stack(images)).float().to(device))
        loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(np.stack(labels)).long().to(device),
                                                 weight=weight)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        logger.log("train_losses", np.float64(loss.item()), step)
        logger.log("ema_fg_dice", np.mean(np.array([0.5, 0.5])), step)
    optimizer_state = optimizer.state_dict()
    optimizer_state["state"] = {key: {name: value.cpu() if torch.is_tensor(value) else value
                                      for name, value in moments.items()}
                                for key, moments in optimizer_state["state"].items()}
    return network.cpu().eval(), {"logging": logger.get_checkpoint(), "optimizer_state": optimizer_state,
                                  "_best_ema": logger.get_value("ema_fg_dice", step=-1)}


def _write_big_case(folder, name: str = "BIG", seed: int = 1, size: int = BIG_SIZE) -> list[str]:
    """One raw case `name` of size `size` (default BIG_SIZE) with spacing BIG_SPACING: its channel files."""
    import nibabel as nib

    from tumorcam.data.synth_volumes import synthetic_case

    rng = np.random.default_rng([seed, 0])
    images, _ = synthetic_case(size, rng)
    affine = np.diag([*BIG_SPACING, 1.0])
    affine[:3, 3] = (-80.0, -100.0, -60.0)
    files = []
    for channel, image in enumerate(images):
        path = folder / f"{name}_{channel:04d}.nii.gz"
        nib.save(nib.Nifti1Image(image, affine), path)
        files.append(str(path))
    return files


def prepare_root(root: Path) -> tuple[list[str], float]:
    """Under `root`: tumorcam's synthetic raw dataset, planned and preprocessed by nnU-Net for CONFIGURATIONS
    (one child process, one fingerprint), and the big case; return (big case files, plan+preprocess seconds)."""
    from tumorcam.data.synth_volumes import write_synthetic_volumes

    root = Path(root)
    env = {"nnUNet_raw": str(root / "raw"), "nnUNet_preprocessed": str(root / "preprocessed"),
           "nnUNet_results": str(root / "results")}
    write_synthetic_volumes(root / "raw" / DATASET, cases=8, size=32)
    started = time.perf_counter()
    subprocess.run([sys.executable, __file__, str(DATASET_ID)], env={**os.environ, **env}, check=True,
                   capture_output=True, text=True)
    planned = time.perf_counter() - started
    big = root / "big"
    big.mkdir()
    return _write_big_case(big), planned


def make_model_folder(root: Path) -> tuple[Path, list[str], dict[str, float]]:
    """(model folder, big case files, timings) of a freshly planned and trained 3d_fullres nnU-Net model
    under `root` (`prepare_root`, then `train_model`; the 2d configuration is preprocessed too)."""
    files, planned = prepare_root(root)
    folder, trained = train_model(root, "3d_fullres")
    return folder, files, {"plan_and_preprocess_s": planned, "train_s": trained}


# configuration -> (steps, crop, batch, inference_allowed_mirroring_axes)
TRAINING = {"3d_fullres": (TRAIN_STEPS, TRAIN_CROP, 2, (0, 1, 2)),
            "2d": (TRAIN_STEPS_2D, TRAIN_CROP_2D, TRAIN_BATCH_2D, (0, 1))}


def train_model(root: Path, configuration: str, steps: int | None = None, crop: tuple[int, ...] | None = None,
                device: str = "cpu") -> tuple[Path, float]:
    """(model folder, training seconds) of `configuration`'s network trained on the root that
    `prepare_root(root)` planned and preprocessed, saved as nnU-Net's trainer saves it (`steps`, `crop`:
    instead of TRAINING's; `device`: where it trains)."""
    started = time.perf_counter()
    default_steps, default_crop, batch, axes = TRAINING[configuration]
    folder = _train_and_save(Path(root), configuration, steps or default_steps, crop or default_crop, batch, axes,
                             device)
    return folder, time.perf_counter() - started


def _train_and_save(root: Path, configuration: str, steps: int, crop: tuple[int, ...], batch: int,
                    mirroring_axes: tuple[int, ...], device: str = "cpu") -> Path:
    """Train `configuration`'s network (one CPU thread) and save it as nnU-Net's trainer does under
    results/DATASET/nnUNetTrainer__nnUNetPlans__CONFIGURATION/fold_0/; return that model folder."""
    from batchgenerators.utilities.file_and_folder_operations import load_json

    preprocessed = root / "preprocessed" / DATASET
    plans, dataset_json = load_json(preprocessed / "nnUNetPlans.json"), load_json(preprocessed / "dataset.json")
    data = str(preprocessed / plans["configurations"][configuration]["data_identifier"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        network, state = _train(plans, dataset_json, data, steps, configuration, crop, batch, device)
    finally:
        torch.set_num_threads(threads)
    folder = root / "results" / DATASET / f"nnUNetTrainer__nnUNetPlans__{configuration}"
    (folder / "fold_0").mkdir(parents=True)
    shutil.copy(preprocessed / "nnUNetPlans.json", folder / "plans.json")
    shutil.copy(preprocessed / "dataset.json", folder / "dataset.json")
    torch.save({"network_weights": network.state_dict(), **state, "grad_scaler_state": None,
                "current_epoch": 1, "trainer_name": "nnUNetTrainer",
                "init_args": {"plans": plans, "configuration": configuration, "fold": 0, "dataset_json": dataset_json,
                              "device": torch.device("cpu")},
                "inference_allowed_mirroring_axes": mirroring_axes}, folder / "fold_0" / "checkpoint_final.pth")
    return folder


def load_with_big_case(made: tuple) -> tuple:
    """(tumorcam's model of a made model folder, weights-only; its big case preprocessed; the properties)."""
    import tumorcam.nnunet

    folder, files, _ = made
    model = tumorcam.nnunet.load(folder)
    volume, properties = model.preprocess(files)
    return model, volume, properties


if __name__ == "__main__":  # make_model_folder's child process, with nnU-Net's folders in its environment
    _plan_and_preprocess(int(sys.argv[1]))
