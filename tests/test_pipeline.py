"""The pipeline: `tumorcam run` end to end on a tiny synthetic configuration, a rerun that skips every
finished stage, the stage runner's resume rules, stage planning per kind of --data, bad input, and
the demo's size (every test patient of the synthetic default)."""

from __future__ import annotations

import html
import inspect
import json
import re
from pathlib import Path

import click
import numpy as np
import pytest
from PIL import Image

from conftest import TinyRun, tiny_config_file, tiny_run_args
from tumorcam.cli import main
from tumorcam.config import Config, preset
from tumorcam.data.synth import patient_folds, write_synthetic
from tumorcam.errors import TumorcamError
from tumorcam.runs.pipeline import STAGES_FILE, Stage, StageLog, plan_stages, run_pipeline, run_stages, stamp

ALL_STAGES = ["synth", "prepare", "train", "segmentation", "explain", "explain-untrained", "faithfulness",
              "localization", "sanity", "report"]


def outputs_mtimes(run: Path) -> dict[str, int]:
    return {str(p.relative_to(run)): p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}


def test_tumorcam_run_end_to_end_then_a_rerun_skips_every_stage(tiny_slice_run: TinyRun, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    # the first run (`tiny_slice_run`, shared with test_run_keys), then reruns in a copy of it
    run = tiny_slice_run.run
    headline = json.loads((run / "faithfulness.json").read_text())["headline"]
    assert headline["level"] in ("supported", "no-more-than-mask", "unsupported", "undetermined")
    # the last lines: the headline (level, then its sentence), then the report's path
    assert [click.unstyle(line) for line in tiny_slice_run.out.strip().splitlines()[-3:]] == [
        f"headline: {headline['level']}", headline["sentence"], str(run / "report.html")]
    stages = json.loads((run / STAGES_FILE).read_text())["stages"]
    assert list(stages) == ALL_STAGES and all(s["status"] == "done" for s in stages.values())
    for name in ("config.json", "unet_trained.pth", "unet_best.pth", "history.json", "metrics.json",
                 "figures_data/examples.npz", "explanations/index.json", "faithfulness.json", "localization.json", "sanity.json"):
        assert (run / name).is_file(), name
    index = json.loads((run / "explanations" / "index.json").read_text())
    assert {e["model"] for e in index["entries"]} == {"trained", "untrained"}
    assert any(e["times_gt"] for e in index["entries"])
    figures = sorted((run / "figures").glob("*.png"))
    assert len(figures) == 7
    for figure in figures:
        pixels = np.asarray(Image.open(figure).convert("L"), dtype=np.float32)
        assert pixels.size > 0 and pixels.std() > 0, figure
    page = (run / "report.html").read_text()
    assert "Not available" not in page and page.count('<img src="data:image/png;base64,') == 7
    assert f'<p class="headline {headline["level"]}"><strong>{headline["level"]}:</strong> ' \
        f'{html.escape(headline["sentence"], quote=True)}</p>' in page
    assert re.search(r"<li>Primary family: Grad-CAM \(predicted-region, decoder\.blocks\.4, zero baseline\) is "
                     r"[a-z ]+ random on deletion \(difference ", page)
    assert "Controls: maps that explain nothing by design" in page

    run = tiny_slice_run.copy_to(tmp_path / "copy")  # the reruns change the run: they work on a copy
    args = tiny_run_args(tmp_path / "copy" / "tiny.json", run)
    before = outputs_mtimes(run)
    assert before == outputs_mtimes(tiny_slice_run.run)  # file times kept: the copy is the finished run
    main(args)

    log = capsys.readouterr().err
    assert all(f"[{name}] done earlier, skipped" in log for name in ALL_STAGES)
    after = outputs_mtimes(run)
    assert {k: v for k, v in after.items() if k != STAGES_FILE} == {k: v for k, v in before.items() if k != STAGES_FILE}

    config = json.loads((tmp_path / "copy" / "tiny.json").read_text())
    config["explain"]["methods"] = ["gradcam", "random"]  # a new setting redoes explain and what follows, not training
    (tmp_path / "copy" / "tiny.json").write_text(json.dumps(config))
    main(args)

    log = capsys.readouterr().err
    assert all(f"[{name}] done earlier, skipped" in log for name in ALL_STAGES[:4])
    assert all(f"[{name}] running" in log for name in ALL_STAGES[4:])
    assert (run / "unet_trained.pth").stat().st_mtime_ns == before["unet_trained.pth"]
    index = json.loads((run / "explanations" / "index.json").read_text())
    assert {e["method"] for e in index["entries"]} == {"gradcam", "random"}
    assert json.loads((run / "config.json").read_text())["explain"]["methods"] == ["gradcam", "random"]


def file_stage(out: Path, name: str, settings: object, calls: list[str], *upstream: str) -> Stage:
    def write() -> None:
        calls.append(name)
        (out / f"{name}.txt").write_text(json.dumps(settings))
    return Stage(name, (f"{name}.txt",), stamp(name, settings, *upstream), write)


def test_stage_runner_skips_done_stages_and_redoes_changed_ones_and_all_after(tmp_path: Path) -> None:
    calls: list[str] = []

    def plan(b_setting: int) -> list[Stage]:
        a = file_stage(tmp_path, "a", 1, calls)
        b = file_stage(tmp_path, "b", b_setting, calls, a.stamp)
        return [a, b, file_stage(tmp_path, "c", 3, calls, b.stamp)]

    assert run_stages(plan(2), tmp_path, log=lambda _: None) == ["a", "b", "c"]
    assert run_stages(plan(2), tmp_path, log=lambda _: None) == []
    assert run_stages(plan(5), tmp_path, log=lambda _: None) == ["b", "c"]
    assert json.loads((tmp_path / "b.txt").read_text()) == 5
    (tmp_path / "a.txt").unlink()  # an output that vanished is remade, and what follows it
    assert run_stages(plan(5), tmp_path, log=lambda _: None) == ["a", "b", "c"]
    assert run_stages(plan(5), tmp_path, force=True, log=lambda _: None) == ["a", "b", "c"]
    assert calls == ["a", "b", "c", "b", "c", "a", "b", "c", "a", "b", "c"]


def test_an_interrupted_stage_resumes_with_the_same_stamp_and_restarts_with_another(tmp_path: Path) -> None:
    calls: list[str] = []

    def failing() -> None:
        calls.append("start")
        (tmp_path / "partial.txt").write_text("half")
        raise KeyboardInterrupt

    def stage(setting: int, run) -> Stage:
        return Stage("train", ("done.txt",), stamp("train", setting), run,
                     resume=lambda: (calls.append("resume"), (tmp_path / "done.txt").write_text("ok")))

    with pytest.raises(KeyboardInterrupt):
        run_stages([stage(1, failing)], tmp_path, log=lambda _: None)
    assert StageLog(tmp_path).stages["train"]["status"] == "running"
    assert run_stages([stage(1, failing)], tmp_path, log=lambda _: None) == ["train"]
    assert calls == ["start", "resume"] and (tmp_path / "partial.txt").exists()
    assert StageLog(tmp_path).stages["train"]["status"] == "done"


def test_plan_uses_a_prepared_folder_as_is_and_prepares_anything_else(tmp_path: Path, blob_prepared: Path) -> None:
    cfg = preset("demo")
    names = [s.name for s in plan_stages(tmp_path / "run", cfg, blob_prepared, 256, 60, 4)]
    assert names[:2] == ["train", "segmentation"] and cfg.data == str(blob_prepared.resolve())

    mats = tmp_path / "mats"
    mats.mkdir()
    (mats / "1.mat").write_bytes(b"not read while planning")
    cfg = preset("demo")
    names = [s.name for s in plan_stages(tmp_path / "run", cfg, mats, 256, 60, 4)]
    assert names[:2] == ["prepare", "train"] and cfg.data == str((tmp_path / "run" / "prepared").resolve())

    cfg = preset("demo")
    assert [s.name for s in plan_stages(tmp_path / "run", cfg, None, 256, 60, 4)] == ALL_STAGES


def test_data_that_changes_changes_the_stamps_of_everything_after_it(tmp_path: Path, blob_prepared: Path) -> None:
    first = plan_stages(tmp_path / "run", preset("demo"), blob_prepared, 256, 60, 4)
    (blob_prepared / "splits.json").write_text(json.dumps({"train": [1], "val": [], "test": []}))
    second = plan_stages(tmp_path / "run", preset("demo"), blob_prepared, 256, 60, 4)
    assert all(a.stamp != b.stamp for a, b in zip(first, second))


@pytest.mark.parametrize(("args", "message"), [
    (["run", "--data", "/no/such/folder"], "--data /no/such/folder: no such file or folder"),
    (["run", "--preset", "fast"], "--preset: unknown preset 'fast'"),
])
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str, tmp_path: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--out", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_out_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(TumorcamError, match="exists and is not a folder"):
        run_pipeline(tmp_path / "file")


def test_a_folder_the_pipeline_did_not_make_is_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / "unet_trained.pth").write_bytes(b"someone's model")
    with pytest.raises(TumorcamError, match="did not make"):
        run_pipeline(tmp_path, log=lambda _: None)
    assert (tmp_path / "unet_trained.pth").read_bytes() == b"someone's model"


def test_data_without_a_test_split_is_explained_and_evaluated_on_val(tmp_path: Path, blob_prepared: Path) -> None:
    splits = json.loads((blob_prepared / "splits.json").read_text())
    splits["val"] += splits["test"]
    splits["test"] = []
    (blob_prepared / "splits.json").write_text(json.dumps(splits))
    lines: list[str] = []
    cfg = Config.load(tiny_config_file(tmp_path / "tiny.json"))

    run_pipeline(tmp_path / "run", data=blob_prepared, config=cfg, log=lines.append)

    run = tmp_path / "run"
    assert "the test split is empty: explaining and evaluating on the validation split" in lines
    assert json.loads((run / "metrics.json").read_text())["split"] == "val"
    assert json.loads((run / "explanations" / "index.json").read_text())["split"] == "val"
    assert json.loads((run / "config.json").read_text())["evaluate"]["split"] == "val"


def test_the_demo_explains_every_test_patient_of_the_synthetic_default() -> None:
    """`tumorcam run` without arguments: synthetic 60 patients x 4 slices, fold 5 (the test split) holds
    12 patients, 4 per class; the demo explains and evaluates all of them, 2 slices each."""
    patients = inspect.signature(run_pipeline).parameters["synthetic_patients"].default
    slices = inspect.signature(run_pipeline).parameters["synthetic_slices"].default
    synth = inspect.signature(write_synthetic).parameters
    assert (patients, slices) == (synth["patients"].default, synth["slices_per_patient"].default) == (60, 4)
    cfg = preset("demo")
    folds = patient_folds(patients, cfg.train.seed)
    assert sum(f == 5 for f in folds) == 12 and sum(f in (1, 2, 3) for f in folds) == 36
    assert sorted(p % 3 for p, f in enumerate(folds) if f == 5) == [0] * 4 + [1] * 4 + [2] * 4
    assert (cfg.explain.split, cfg.explain.patients, cfg.explain.slices_per_patient, cfg.explain.limit) == ("test", None, 2, None)
    assert (cfg.evaluate.schedule, cfg.evaluate.baselines, cfg.evaluate.steps) == ("log", ["zero"], 8)
    primary = cfg.evaluate.primary
    assert primary.target in cfg.explain.targets and primary.method in cfg.explain.methods
    assert primary.layer in cfg.explain.layers and primary.baseline in cfg.evaluate.baselines
    assert "predicted-mask" in cfg.explain.methods  # every method is compared with it
