"""`run_pipeline`: data -> prepare -> train -> segmentation -> explain -> evaluate -> report, in one run folder.

Stages and what they leave in OUT (the run folder):

    synth             synthetic/ (figshare .mat layout)        only without --data
    prepare           prepared/ (the prepared arrays)           unless --data is already prepared
    train             config.json, unet_trained.pth, unet_best.pth, history.json   not with a user's network
    segmentation      metrics.json, figures_data/examples.npz (Figure 5's predicted masks)
    explain           explanations/ (trained model)
    explain-untrained explanations/ (model before fine-tuning, the paper's Figure 2)   not with a user's network
    faithfulness      faithfulness.json
    localization      localization.json
    sanity            sanity.json
    report            figures/*.png, report.html

A user's network (config.model.network, MODULE:FACTORY with config.model.weights) replaces the
trained model: every stage after prepare explains and evaluates it as it is.

Resuming: OUT/stages.json holds, per stage, a stamp = sha256 of the settings the stage ran with
and the stamps of the stages it reads from. A stage is skipped when it is marked done, its
stamp matches and its outputs exist; otherwise its old outputs are removed and it runs again
(a change of settings redoes that stage and everything after it). `force` redoes every stage.
Training that was interrupted with the same stamp resumes from its last checkpoint.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tumorcam.config import Config, preset as preset_config
from tumorcam.errors import TumorcamError
from tumorcam.runfolder.examples import EXAMPLES_FILE
from tumorcam.io import remove_outputs, write_json

STAGES_FILE = "stages.json"
PREPARED_FILES = ("images.npy", "masks.npy", "labels.npy", "pids.npy", "file_ids.npy", "manifest.json", "splits.json")
TRAIN_FILES = ("config.json", "unet_trained.pth", "unet_best.pth", "history.json", "history.csv",
               "provenance.json", "train_state.pth")
# Settings that change where or how fast a stage runs, not its result: left out of the stamps.
NOT_STAMPED = {"device", "num_threads", "eval_batch_size", "batch_size", "compile"}


@dataclass
class Stage:
    """One step: its name, what it writes (relative to OUT), the stamp of its inputs, and how to run
    it; `clean` is what to remove before running it afresh (default: its outputs), `resume` how to
    continue it after an interruption (None: it starts afresh)."""

    name: str
    outputs: tuple[str, ...]
    stamp: str
    run: Callable[[], Any]
    clean: tuple[str, ...] | None = None
    resume: Callable[[], Any] | None = None


def is_prepared(path: Path) -> bool:
    """A folder that already holds the prepared arrays (the layout of `tumorcam.data.arrays`)."""
    return path.is_dir() and all((path / name).is_file() for name in PREPARED_FILES)


def stamp(name: str, settings: Any, *upstream: str) -> str:
    """sha256 of a stage's name, its settings (JSON) and the stamps it depends on."""
    text = json.dumps({"stage": name, "settings": settings, "upstream": list(upstream)}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _settings(section: Any) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(section).items() if k not in NOT_STAMPED}


def _source_fingerprint(path: Path) -> list[Any]:
    """What identifies a data source cheaply: its resolved path, and the name, size and mtime of each entry."""
    path = path.resolve()
    if path.is_file():
        st = path.stat()
        return [str(path), st.st_size, st.st_mtime_ns]
    entries = sorted(path.rglob("*")) if path.is_dir() else []
    return [str(path)] + [[str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns]
                          for p in entries if p.is_file()]


class StageLog:
    """OUT/stages.json: {"stages": {name: {"stamp", "status": "running"|"done", "seconds", "finished"}}}."""

    def __init__(self, out: Path) -> None:
        self.path = out / STAGES_FILE
        try:
            self.stages: dict[str, dict[str, Any]] = json.loads(self.path.read_text())["stages"]
        except FileNotFoundError:
            self.stages = {}
        except (OSError, ValueError, KeyError, TypeError):
            raise TumorcamError(f"{self.path}: not a tumorcam stage log; remove it or force the run", param="force") from None

    def done(self, stage: Stage, out: Path) -> bool:
        record = self.stages.get(stage.name, {})
        return (record.get("status") == "done" and record.get("stamp") == stage.stamp
                and all((out / p).exists() for p in stage.outputs))

    def interrupted(self, stage: Stage) -> bool:
        record = self.stages.get(stage.name, {})
        return record.get("status") == "running" and record.get("stamp") == stage.stamp

    def mark(self, stage: Stage, status: str, seconds: float | None = None) -> None:
        record = {"stamp": stage.stamp, "status": status}
        if seconds is not None:
            record.update(seconds=round(seconds, 2), finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
        self.stages[stage.name] = record
        write_json(self.path, {"stages": self.stages})




def run_pipeline(
    out: str | Path = Path("runs/demo"),
    data: str | Path | None = None,
    preset: str = "demo",
    force: bool = False,
    *,
    config: Config | None = None,
    prepare_size: int = 256,
    synthetic_patients: int = 60,
    synthetic_slices: int = 4,
    log: Callable[[str], None] = print,
) -> Path:
    """Run every stage into the run folder `out` (skipping finished ones) and return the report's path.

    With config.model.network (a user's network) nothing is trained: the network is explained,
    evaluated and reported as it is.

    Args:
        out: the run folder.
        data: None (the synthetic dataset), a prepared folder, a folder of .mat files, the figshare
            zips (a folder holding them, or one zip) or a PNG folder.
        preset: the name of the settings' preset.
        force: redo every stage.
        config: settings (`tumorcam.config.Settings`) that replace the preset's; its
            train.num_threads are every stage's CPU threads (0 automatic).
        prepare_size: the size the slices are prepared at.
        synthetic_patients: patients of the synthetic dataset (without `data`).
        synthetic_slices: slices per patient of the synthetic dataset.
        log: receives one line per stage.

    Returns:
        The path of RUN/report.html.

    Raises:
        TumorcamError: for an `out` that is not a folder or holds files `tumorcam run` did not make,
            a `data` that does not exist, a stage log that is not one, a user's network that fails on a
            prepared slice, or as the stages do.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise TumorcamError(f"out {out}: exists and is not a folder", param="out")
    if data is not None and not Path(data).exists():
        raise TumorcamError(f"data {data}: no such file or folder", param="data")
    if out.is_dir() and not (out / STAGES_FILE).exists() and any(out.iterdir()) and not force:
        raise TumorcamError(f"out {out}: holds files that `tumorcam run` did not make; choose another folder "
                            "(or force the run, to let the pipeline replace what it writes there)", param="out")
    cfg = copy.deepcopy(config) if config is not None else preset_config(preset)
    if cfg.train.num_threads > 0:  # every stage, not training only, on the config's threads (the demo's: fixed)
        import torch

        torch.set_num_threads(cfg.train.num_threads)
    out.mkdir(parents=True, exist_ok=True)
    stages = plan_stages(out, cfg, None if data is None else Path(data), prepare_size,
                         synthetic_patients, synthetic_slices, log)
    run_stages(stages, out, force, log)
    return out / "report.html"


def run_stages(stages: list[Stage], out: Path, force: bool = False, log: Callable[[str], None] = print) -> list[str]:
    """Run `stages` in order into `out`, skipping those done earlier with the same stamp (unless
    `force`); once one runs, every later one runs too. Returns the names of the stages that ran."""
    stage_log = StageLog(out)
    began = time.perf_counter()
    ran: list[str] = []
    redo = force
    for stage in stages:
        if not redo and stage_log.done(stage, out):
            log(f"[{stage.name}] done earlier, skipped")
            continue
        redo = True  # a stage that runs again redoes every stage after it
        resume = stage.resume is not None and not force and stage_log.interrupted(stage)
        if not resume:
            remove_outputs(out, stage.outputs if stage.clean is None else stage.clean)
        log(f"[{stage.name}] {'resuming' if resume else 'running'}")
        started = time.perf_counter()
        stage_log.mark(stage, "running")
        (stage.resume if resume else stage.run)()
        stage_log.mark(stage, "done", time.perf_counter() - started)
        log(f"[{stage.name}] finished in {time.perf_counter() - started:.1f} s")
        ran.append(stage.name)
    log(f"all stages done in {time.perf_counter() - began:.1f} s")
    return ran


def plan_stages(out: Path, cfg: Config, data: Path | None, prepare_size: int,
                synthetic_patients: int, synthetic_slices: int,
                log: Callable[[str], None] = print) -> list[Stage]:
    """The stages of a run, in order, with their stamps chained so a change redoes what follows."""
    stages: list[Stage] = []
    seed = cfg.train.seed
    if data is None:
        from tumorcam.data.synth import write_synthetic

        synth = Stage("synth", ("synthetic",),
                      stamp("synth", {"patients": synthetic_patients, "slices": synthetic_slices, "seed": seed}),
                      lambda: write_synthetic(out / "synthetic", synthetic_patients, synthetic_slices, seed))
        stages.append(synth)
        source, source_stamp = out / "synthetic", synth.stamp
    else:
        source, source_stamp = data, stamp("source", _source_fingerprint(data))

    if is_prepared(source):
        prepared, data_stamp = source.resolve(), stamp("prepared", _source_fingerprint(source))
    else:
        from tumorcam.data.prepare import prepare

        prepared = (out / "prepared").resolve()
        prep = Stage("prepare", ("prepared",), stamp("prepare", {"size": prepare_size, "seed": seed}, source_stamp),
                     lambda: prepare(source, prepared, size=prepare_size, seed=seed))
        stages.append(prep)
        data_stamp = prep.stamp
    cfg.data = str(prepared)

    if cfg.model.network is None:
        model_stamp = stamp("train", {"model": _settings(cfg.model), "train": _settings(cfg.train)}, data_stamp)
        stages.append(_train_stage(out, cfg, model_stamp))
    else:
        weights = [] if cfg.model.weights is None else _source_fingerprint(Path(cfg.model.weights))
        model_stamp = stamp("model", {"model": _settings(cfg.model), "weights": weights, "size": cfg.train.size},
                            data_stamp)
    explain_settings = _settings(cfg.explain)
    evaluate_settings = _settings(cfg.evaluate)

    # Before fine-tuning only Grad-CAM is drawn (Figure 2); the evaluation adds its own random map.
    untrained_methods = ["gradcam"] if "gradcam" in cfg.explain.methods else cfg.explain.methods[:1]

    def current_config(action: Callable[[], Any]) -> Callable[[], None]:
        """The later stages read RUN/config.json: give them this run's settings even when training was skipped."""
        def run() -> None:
            _evaluate_on_val_without_test(cfg, log)
            _fill_layers(cfg, log)
            cfg.save(out / "config.json")
            action()
        return run

    def explain(untrained: bool) -> Callable[[], None]:
        from tumorcam.runs.explain import explain_run

        return current_config(lambda: explain_run(out, untrained=untrained,
                                                  methods=untrained_methods if untrained else None))

    def evaluate(stage: Callable[[Path], Any]) -> Callable[[], None]:
        return current_config(lambda: stage(out))

    explain_stamp = stamp("explain", explain_settings, model_stamp)
    stages += [
        Stage("segmentation", ("metrics.json", EXAMPLES_FILE), stamp("segmentation", {"split": cfg.evaluate.split}, model_stamp),
              current_config(lambda: _evaluate_segmentation(out, cfg.evaluate.split))),
        Stage("explain", ("explanations",), explain_stamp, explain(False)),
    ]
    if cfg.model.network is None:
        stages.append(Stage("explain-untrained", ("explanations/index.json",),
                            stamp("explain-untrained", untrained_methods, explain_stamp),
                            explain(True), clean=()))  # adds its entries to the index of the trained model's maps
    maps_stamp = stages[-1].stamp
    from tumorcam.runs.faithfulness import evaluate_faithfulness
    from tumorcam.runs.localization import evaluate_localization
    from tumorcam.runs.sanity import evaluate_sanity

    for name, stage in (("faithfulness", evaluate_faithfulness), ("localization", evaluate_localization),
                        ("sanity", evaluate_sanity)):
        stages.append(Stage(name, (f"{name}.json",), stamp(name, evaluate_settings, maps_stamp), evaluate(stage)))
    report_stamp = stamp("report", {}, *[s.stamp for s in stages])
    stages.append(Stage("report", ("report.html", "figures"), report_stamp, current_config(lambda: _report(out))))
    return stages


def _train_stage(out: Path, cfg: Config, train_stamp: str) -> Stage:
    from tumorcam.training import train

    def resume() -> None:
        if not (out / "train_state.pth").is_file():
            remove_outputs(out, TRAIN_FILES)
            train(cfg, out)
        elif _epochs_done(out) < cfg.train.epochs:
            train(cfg, out, resume=True)

    return Stage("train", TRAIN_FILES[:5], train_stamp, lambda: train(cfg, out), clean=TRAIN_FILES, resume=resume)


def _epochs_done(out: Path) -> int:
    try:
        return max(int(row["epoch"]) for row in json.loads((out / "history.json").read_text())["epochs"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _evaluate_on_val_without_test(cfg: Config, log: Callable[[str], None]) -> None:
    """Data whose test split is empty (figshare-png256 holds folds 1-4 only) is explained and
    evaluated on its validation split, and so is a run with no split set (explain.split null);
    the change is logged and saved in config.json."""
    if cfg.explain.split is not None and "test" not in (cfg.explain.split, cfg.evaluate.split):
        return
    from tumorcam.data.arrays import load_prepared

    if len(load_prepared(cfg.data).indices("test")) == 0:
        log("the test split is empty: explaining and evaluating on the validation split")
        cfg.explain.split = cfg.evaluate.split = "val"
    elif cfg.explain.split is None:
        cfg.explain.split = cfg.evaluate.split = "test"


def _fill_layers(cfg: Config, log: Callable[[str], None]) -> None:
    """A user's network with no layer set (explain.layers null): the last convolution block before its
    head, found on one prepared slice, also the primary comparison's layer when that is null; the
    network must take the prepared slices (1, 1, S, S) and return logits on their grid."""
    if cfg.explain.layers is not None and cfg.evaluate.primary.layer is not None:
        return
    if cfg.explain.layers is None:
        import torch

        from tumorcam.data.arrays import load_prepared
        from tumorcam.explain.layers import default_layer
        from tumorcam.runfolder.folder import Run

        image, _ = load_prepared(cfg.data).tensors([0], cfg.train.size)
        run = Run(Path(cfg.data), cfg)
        network = run.model()
        from tumorcam.models.user import first_line

        try:
            with torch.no_grad():
                logits = network(image.to(run.device))
        except Exception as exc:  # noqa: BLE001 - the user's network failed on our input
            raise TumorcamError(f"model: {cfg.model.network} fails on a prepared slice {tuple(image.shape)}: "
                                f"{first_line(exc)}", param="model") from None
        if not isinstance(logits, torch.Tensor) or logits.dim() != 4 or tuple(logits.shape[2:]) != tuple(image.shape[2:]):
            raise TumorcamError(f"model: {cfg.model.network} returned {getattr(logits, 'shape', type(logits))} for a "
                                f"prepared slice {tuple(image.shape)}; a run on slices needs logits (1, C_out, H, W) "
                                "on the input's grid", param="model")
        cfg.explain.layers = [default_layer(network, image.to(run.device))]
        log(f"layer: {cfg.explain.layers[0]} (the last convolution block before the head)")
    cfg.evaluate.primary.layer = cfg.evaluate.primary.layer or cfg.explain.layers[0]


def _evaluate_segmentation(out: Path, split: str) -> None:
    from tumorcam.runs.segmentation import evaluate_segmentation

    evaluate_segmentation(out, split=split)


def _report(out: Path) -> None:
    from tumorcam.report import build_report

    build_report(out)
