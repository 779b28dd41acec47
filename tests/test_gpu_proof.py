"""benchmarks/gpu_proof: its smoke run writes every section with plausible numbers and reaches every
section module; its parts (Spearman, AUC differences, the clock, time-boxed children, the data pack,
the wheel choice) on hand-workable cases."""

from __future__ import annotations

import json
import math
import os
import pkgutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_proof
from gpu_proof import bf16_agreement, driver, slices, summary, timebox, wheels

SECTIONS = ("environment", "paper_run", "bf16_agreement", "training", "explain", "faithfulness")
SECTION_STEPS = {  # each section module of benchmarks/gpu_proof: the steps it runs in the smoke run
    "environment": ("environment",), "slices": ("paper_run/data",),
    "paper_run": ("paper_run/prepare", "paper_run/train", "paper_run/train_resume", "paper_run/explain",
                  "paper_run/evaluate"),
    "bf16_agreement": ("bf16_agreement",), "training": ("training",), "explain": ("explain",),
    "faithfulness": ("faithfulness",), "nnunet": (),  # nnunet: skipped in smoke runs (minutes on a CPU)
}
HELPER_MODULES = {"__main__", "driver", "summary", "timebox", "wheels"}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, float, str]:
    """One smoke run of the Python entry (CPU, tiny sizes): its JSON, output folder, wall seconds and stdout."""
    out = tmp_path_factory.mktemp("gpu_proof")
    # the threads this session's torch uses (conftest: at most 2); the smoke run is the only work while it runs
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "PYTHONPATH": os.pathsep.join(
        [str(ROOT / "src"), str(ROOT / "benchmarks"), os.environ.get("PYTHONPATH", "")])}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_proof"), "run", "--smoke", "--out", str(out),
                           "--budget-s", "280"], check=False, env=env, capture_output=True, text=True, timeout=300)
    wall = time.perf_counter() - start
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((out / timebox.JSON_NAME).read_text()), out, wall, done.stdout


def test_smoke_writes_every_section_in_time(smoke):
    report, _, wall, stdout = smoke
    assert report["smoke"] is True
    assert stdout.splitlines()[-len(summary.summary_lines(report)):] == summary.summary_lines(report)
    assert "paper_run: 2 epochs" in stdout and "training_compiled (smoke mode" in stdout
    for name in SECTIONS:
        assert report[name], f"section {name} is empty"
    assert wall < 280
    assert report["wall_s"] <= report["budget_s"]
    ok = {name for name, stage in report["stages"].items() if stage["status"] == "ok"}
    assert {"environment", "paper_run/data", "paper_run/prepare", "paper_run/train", "bf16_agreement", "training",
            "explain", "faithfulness"} <= ok, report["stages"]
    skipped = {item["stage"]: item["reason"] for item in report["skipped"]}
    assert "torch.compile" in skipped["training_compiled"]
    assert skipped["nnunet"].startswith("smoke mode") and report["nnunet"] == {}
    assert any(line.startswith("nnU-Net: Grad-CAM - s/case") for line in stdout.splitlines())
    assert report["environment"]["device"] == "cpu" and report["environment"]["versions"]["torch"]


def test_smoke_paper_run(smoke):
    report, out = smoke[:2]
    paper = report["paper_run"]
    assert paper["prepare"]["count"] == 16 and paper["prepare"]["splits"]["val"]["slices"] == 4
    train = paper["train"]
    assert train["epochs"] == train["planned_epochs"] == 2  # the smoke cap, inside the budget
    assert [row["epoch"] for row in train["history"]] == [1, 2]
    assert train["s_per_epoch"] > 0 and train["img_per_s"] > 0
    dice = paper["val_dice"]
    assert 0 <= dice["overall"]["mean"] <= 1
    with tarfile.open(out / timebox.TAR_NAME) as tar:
        names = set(tar.getnames())
    assert {"paper_run/history.json", "paper_run/config.json", "logs/paper_run_train.log"} <= names
    if report["stages"].get("paper_run/evaluate", {}).get("status") == "ok":
        assert dice["source"] == "metrics.json" and dice["per_class"]
        assert {"paper_run/metrics.json", "paper_run/faithfulness.json", "paper_run/sanity.json"} <= names


def test_smoke_bf16_agreement(smoke):
    section = smoke[0]["bf16_agreement"]
    assert section["setup"]["model"].startswith("trained")
    rows = section["rows"]
    assert rows[0]["method"] == "gradcam" and rows[0]["layer"] == "decoder.blocks.4"
    assert {r["layer"] for r in rows if r["method"] == "gradcam"} == set(bf16_agreement.LAYERS)
    for row in rows:
        rho = row["spearman"]
        if rho["mean"] is not None:
            assert -1 <= rho["min"] <= rho["p05"] <= rho["mean"] <= 1
        assert 0 <= row["max_abs_diff"]["mean"] <= row["max_abs_diff"]["max"] <= 1
        for curve in ("deletion", "insertion"):
            diff = row["auc_bf16_end_to_end"][curve]
            if diff["n"]:
                assert diff["abs_diff_mean"] >= abs(diff["diff_mean"]) - 1e-12
                assert 0 <= diff["fp32_mean"] <= 1
    assert section["summary"]["rows"] == len(rows)


def test_smoke_throughput_sections(smoke):
    report = smoke[0]
    training = report["training"]
    assert training["seed_style"]["img_per_s"] > 0 and training["tumorcam"]["img_per_s"] > 0
    assert training["speedup"] == pytest.approx(training["tumorcam"]["img_per_s"] / training["seed_style"]["img_per_s"],
                                                rel=0.02)
    explain = report["explain"]
    assert explain["seed_loop"]["maps_per_s"] > 0
    assert set(explain["tumorcam"]) == {f"gradcam_{t}_{p}" for t in ("mean-logits", "predicted-region")
                                        for p in ("bf16", "fp32")}
    for row in explain["tumorcam"].values():
        assert row["maps_per_s"] > 0 and row["ratio_to_inference"] > 0 and row["speedup_vs_seed"] > 0
    assert all(rate > 0 for rate in explain["other_methods_bf16_maps_per_s"].values())
    faith = report["faithfulness"]
    assert faith["tumorcam"]["slices_per_s"] > 0 and faith["seed_loop"]["slices_per_s"] > 0
    assert 0 < faith["fraction_of_inference_bound"] < faith["ratio_to_inference"]


def test_smoke_reaches_every_section_module(smoke):
    modules = {module.name for module in pkgutil.iter_modules(gpu_proof.__path__)}
    assert modules == set(SECTION_STEPS) | HELPER_MODULES, "a new module: add it as a section or a helper"
    stages = smoke[0]["stages"]
    for module, steps in SECTION_STEPS.items():
        for step in steps:
            assert step in stages, f"{module}: step {step} not reached"
    assert [name for name in stages if name in driver.STEPS] == [name for name in driver.STEPS if name in stages]


def test_spearman_rows_matches_scipy_with_ties_and_flat_rows():
    a = np.array([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 1.0, 1.0], [5.0, 5.0, 5.0, 5.0]])
    b = np.array([[4.0, 3.0, 2.0, 1.0], [0.0, 1.0, 0.0, 1.0], [1.0, 2.0, 3.0, 4.0]])
    rho = bf16_agreement.spearman_rows(a, b)
    assert rho[0] == pytest.approx(-1.0)
    assert rho[1] == pytest.approx(stats.spearmanr(a[1], b[1]).statistic) and rho[1] == pytest.approx(0.0)
    assert math.isnan(rho[2])
    rng = np.random.default_rng(1)
    x, y = rng.random((3, 50)), rng.random((3, 50)).round(1)  # ties in y
    assert bf16_agreement.spearman_rows(x, y) == pytest.approx([stats.spearmanr(x[i], y[i]).statistic for i in range(3)])


def test_auc_difference_by_hand():
    diff = bf16_agreement.auc_difference([1.0, 2.0, 3.0, np.nan], [1.5, 2.0, 2.5, 1.0])
    assert diff["n"] == 3 and diff["diff_mean"] == pytest.approx(0.0)
    assert diff["abs_diff_mean"] == pytest.approx(1 / 3) and diff["abs_diff_max"] == pytest.approx(0.5)
    assert diff["fp32_mean"] == pytest.approx(2.0) and diff["fp32_se"] == pytest.approx(1 / math.sqrt(3))
    shifted = bf16_agreement.auc_difference([1.0, 2.0, 3.0], [2.0, 3.0, 4.0])
    assert shifted["diff_in_se"] == pytest.approx(math.sqrt(3))
    assert bf16_agreement.auc_difference([np.nan], [1.0])["n"] == 0


def test_clock_keeps_time_for_later_steps():
    steps = {name: timebox.Step(cap=100, reserve=10, minimum=5) for name in driver.STEPS}
    clock = timebox.Clock(time.time() + timebox.FINAL_MARGIN_S + 120, steps)
    seconds, why = clock.allot("paper_run/explain")  # 7 steps after it: 70 s kept for them
    assert why == "" and seconds == pytest.approx(120 - 70, abs=1)
    assert clock.allot("environment")[0] == pytest.approx(120 - 110, abs=1)  # 11 steps after it
    greedy = {name: timebox.Step(cap=100, reserve=50, minimum=5) for name in driver.STEPS}
    tight = timebox.Clock(time.time() + timebox.FINAL_MARGIN_S + 120, greedy)
    assert tight.allot("environment")[0] == pytest.approx(120 * 50 / 600, abs=0.1)  # reserves exceed what is left: a share
    seconds, why = clock.allot("environment", cap=3)
    assert seconds is None and "at least 5 s" in why
    assert clock.allot("training_compiled")[0] == pytest.approx(100, abs=1)  # nothing after it: the cap
    late = timebox.Clock(time.time() + timebox.FINAL_MARGIN_S + 4, steps)
    seconds, why = late.allot("bf16_agreement")
    assert seconds is None and "4 s left" in why


def _sleepy(record, seconds):
    record.set("before", 1)
    time.sleep(seconds)
    record.set("after", 2)


def _broken(record):
    record.set("before", 1)
    raise RuntimeError("boom")


def test_run_child_times_out_keeping_partial_results_and_reports_errors(tmp_path):
    outcome = timebox.run_child("slow", _sleepy, {"seconds": 30}, 1.5, tmp_path)
    assert outcome.status == "timeout" and outcome.result == {"before": 1} and outcome.seconds < 10
    outcome = timebox.run_child("quick", _sleepy, {"seconds": 0}, 30, tmp_path)
    assert outcome.status == "ok" and outcome.result == {"before": 1, "after": 2}
    outcome = timebox.run_child("broken", _broken, {}, 30, tmp_path)
    assert outcome.status == "error" and outcome.result["error"] == "RuntimeError: boom"
    assert any("boom" in line for line in outcome.log_tail)
    outcome = timebox.run_child("spawned", slices.data_step, {"source": None, "dest": tmp_path / "png"}, 120,
                                  tmp_path, method="spawn")  # the fallback where CUDA fails in forked children
    assert outcome.status == "ok" and outcome.result["info"]["count"] == 16


def test_pack_and_unpack_are_lossless_and_checked(tmp_path):
    from PIL import Image

    src = tmp_path / "png"
    slices.write_smoke_pngs(src, patients_per_fold=1, slices=1, size=32)
    info = slices.pack(src, tmp_path / "packed")
    assert info["count"] == 4 and slices.is_pack(tmp_path / "packed")
    restored = slices.unpack(tmp_path / "packed", tmp_path / "restored")
    assert restored["pixels_verified"] and restored["count"] == 4
    for name in ("images/1.png", "images/4.png", "masks/3.png"):
        assert np.array_equal(np.asarray(Image.open(src / name)), np.asarray(Image.open(tmp_path / "restored" / name)))
    assert (tmp_path / "restored" / "metadata.csv").read_text() == (src / "metadata.csv").read_text()
    pack_file = tmp_path / "packed" / slices.PACK_FILE
    doc = json.loads(pack_file.read_text())
    doc["images"]["2"] = "0" * 64
    pack_file.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="differ from the packed digests"):
        slices.unpack(tmp_path / "packed", tmp_path / "again")


def test_summary_prints_the_nnunet_headline():
    report = {"skipped": [], "nnunet": {
        "explain": {"seconds_per_case": 1.5}, "agreement": {"summary": {"min_raw_agreement": 0.9999}},
        "run": {"seconds": 30.0, "headline_level": "undetermined",
                "auc_means": {"gradcam": {"deletion": 0.2, "insertion": 0.8}, "random": {"deletion": 0.5, "insertion": 0.5}}},
        "nnunetv2_cam": {"skipped": "not installed: SimpleITK"}}}
    lines = [line for line in summary.summary_lines(report) if line.startswith("nnU-Net")]
    assert lines == ["nnU-Net: Grad-CAM 1.5 s/case, segmentation agrees with nnUNetPredictor on 0.9999 of voxels (min), "
                     "run_nnunet 30.0 s (undetermined; deletion/insertion gradcam 0.2/0.8, random 0.5/0.5), "
                     "nnunetv2-cam - s/case"]


def test_wheels_to_install_picks_only_what_is_missing(tmp_path):
    for name in ("numpy-1.0-py3-none-any.whl", "surely_not_installed_pkg-1.0-py3-none-any.whl"):
        (tmp_path / name).write_bytes(b"")
    report = tmp_path / "report.json"
    chosen = wheels.wheels_to_install(tmp_path, report)
    assert [p.name for p in chosen] == ["surely_not_installed_pkg-1.0-py3-none-any.whl"]
    decisions = {d["wheel"].split("-")[0]: d for d in json.loads(report.read_text())["wheels"]}
    assert decisions["numpy"]["install"] is False and decisions["numpy"]["why"].startswith("installed ")
    assert decisions["surely_not_installed_pkg"]["why"] == "not installed"
