"""benchmarks/demo_results.py: README.md and docs/*.md quote the demos exactly as docs/demo-results.json
says (re-rendered, compared block by block), and the figures are read from the right places of a run
folder (crafted files with known, distinct numbers)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import demo_results  # noqa: E402
from demo_results import (  # noqa: E402
    DOCS, RESULTS, blocks, extract_slices, extract_volumes, fmt_p, render, render_blocks, write_atomic,
)

# the blocks each document must carry (a block removed by mistake fails too)
EXPECTED_BLOCKS = {"README.md": {"readme"}, "docs/findings.md": {"findings-slices", "findings-volumes"},
                   "docs/report.md": {"report-stages"}}


def test_docs_quote_demo_results_json():
    """Every marked block of README.md and docs/*.md is what the JSON renders to: edit the JSON's run
    (python benchmarks/demo_results.py --run RUN --volumes VOLUME_RUN), never the blocks by hand."""
    results = json.loads((ROOT / RESULTS).read_text())
    assert set(EXPECTED_BLOCKS) == {str(d) for d in DOCS}
    for doc in DOCS:
        found = blocks((ROOT / doc).read_text())
        assert set(found) == EXPECTED_BLOCKS[str(doc)], f"{doc}: blocks {sorted(found)}"
        for name, body in found.items():
            assert body == render(name, results), (f"{doc}: block {name} differs from {RESULTS}; run "
                                                   "python benchmarks/demo_results.py --render")


def test_demo_results_json_is_documented():
    results = json.loads((ROOT / RESULTS).read_text())
    assert results["slices"] and results["volumes"]
    generic = {k.replace("CURVE", c).replace("REF", r) for k in results["fields"] for c in ("deletion", "insertion")
               for r in ("random", "mask")}
    for demo in ("slices", "volumes"):
        undocumented = set(results[demo]) - generic
        assert not undocumented, f"{demo}: keys without a line in 'fields': {sorted(undocumented)}"


def _comparison(p, p_adjusted, family, verdict, n_pairs=12):
    return {"test": "wilcoxon", "p_value": p, "p_adjusted": p_adjusted, "family": family, "verdict": verdict,
            "n_pairs": n_pairs, "estimate": -0.1, "lower_is_better": True}


def _row(method, baseline="zero", model="trained", times_gt=False, aucs=(0.5, 0.5), tests=None):
    row = {"method": method, "target": "predicted-region", "layer": "decoder.blocks.4" if method == "gradcam" else "input",
           "baseline": baseline, "model": model, "times_gt": times_gt}
    for curve, auc in zip(("deletion", "insertion"), aucs):
        row[curve] = {"mean": auc, "ci_low": auc - 0.05, "ci_high": auc + 0.05, **(tests or {}).get(curve, {})}
    return row


PRIMARY = {"method": "gradcam", "target": "predicted-region", "layer": "decoder.blocks.4", "baseline": "zero"}


def _faithfulness() -> dict:
    primary_tests = {"deletion": {"vs_random": _comparison(0.00049, 0.00196, "primary", "better"),
                                  "vs_mask": _comparison(0.0139, 0.0417, "primary", "worse")},
                     "insertion": {"vs_random": _comparison(0.00098, 0.00293, "primary", "better"),
                                   "vs_mask": _comparison(0.4, 0.4, "primary", "not shown to differ", n_pairs=11)}}
    explore = {c: {"vs_random": _comparison(0.2, 1.0, "exploratory", "not shown to differ"),
                   "vs_mask": _comparison(0.3, 1.0, "exploratory", "not shown to differ")} for c in ("deletion", "insertion")}
    rows = [
        # decoys first: untrained, x GT and another baseline match the primary but for one field
        _row("gradcam", model="untrained", aucs=(0.9, 0.9), tests=explore),
        _row("gradcam", times_gt=True, aucs=(0.8, 0.8), tests=explore),
        _row("gradcam", baseline="blur", aucs=(0.7, 0.7), tests=explore),
        _row("gradcam", aucs=(0.261, 0.363), tests=primary_tests),
        _row("random", aucs=(0.803, 0.061)),
        _row("random", baseline="blur", aucs=(0.99, 0.66)),
        _row("predicted-mask", aucs=(0.226, 0.525), tests={c: {"vs_random": explore[c]["vs_random"]}
                                                         for c in ("deletion", "insertion")}),
    ]
    return {"n_patients": 12, "n_slices": 24, "primary": PRIMARY, "alpha": 0.05, "steps": 8, "schedule": "log",
            "baselines": ["zero", "blur"], "results": rows,
            "headline": {"level": "no-more-than-mask", "sentence": "Grad-CAM beats random but not the mask.",
                         "tests": [], "sanity": "passes"}}


def _write(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


@pytest.fixture
def slice_run(tmp_path: Path) -> Path:
    run = tmp_path / "demo"
    _write(run / "config.json", {"preset": "demo", "train": {"epochs": 6, "size": 96, "num_threads": 1}})
    _write(run / "provenance.json", {"cpu_threads": 1})
    _write(run / "metrics.json", {
        "overall": {"n": 48, "dice": {"mean": 0.8851, "ci_low": 0.86, "ci_high": 0.9, "n": 48}},
        "per_patient": {"summary": {"n": 12, "dice": {"mean": 0.8874, "ci_low": 0.8612, "ci_high": 0.9103, "n": 12}}}})
    _write(run / "faithfulness.json", _faithfulness())
    _write(run / "localization.json", {"results": [
        {"method": "gradcam", "pointing_game": {"vs_random": {"family": "exploratory"}, "vs_mask": {"family": "exploratory"}},
         "energy_pointing_game": {"vs_random": {"family": "exploratory"}, "vs_mask": None}}]})
    _write(run / "sanity.json", {"results": [
        {"method": "gradcam", "passes": True}, {"method": "saliency", "passes": False},
        {"method": "edges", "passes": None}, {"method": "dilated-mask", "verdict": "undetermined", "passes": None},
        {"method": "predicted-mask", "verdict": "fails", "passes": False}]})
    _write(run / "stages.json", {"stages": {
        "synth": {"status": "done", "seconds": 9.04, "finished": "2026-12-01T20:36:00"},
        "train": {"status": "done", "seconds": 120.46, "finished": "2026-12-01T20:38:00"},
        "report": {"status": "done", "seconds": 5.0, "finished": "2026-12-01T20:44:10"}}})
    return run


def test_extract_slices_reads_the_primary_row_and_its_references(slice_run: Path):
    r = extract_slices(slice_run)
    assert (r["preset"], r["epochs"], r["size"], r["threads"]) == ("demo", 6, 96, 1)
    assert (r["dice_patient"], r["dice_patient_ci_low"], r["dice_patient_ci_high"]) == (0.8874, 0.8612, 0.9103)
    assert (r["dice_mean"], r["dice_n_patients"], r["dice_n_slices"]) == (0.8851, 12, 48)
    # the primary row, not the untrained / x GT / blur decoys that precede it
    assert (r["deletion_auc"], r["insertion_auc"]) == (0.261, 0.363)
    assert r["deletion_auc_ci_low"] == pytest.approx(0.211)
    # the references of the primary's target and baseline (zero), not blur's random row
    assert (r["deletion_random_auc"], r["insertion_random_auc"]) == (0.803, 0.061)
    assert (r["deletion_mask_auc"], r["insertion_mask_auc"]) == (0.226, 0.525)
    assert (r["deletion_vs_mask_p"], r["deletion_vs_mask_p_adjusted"], r["deletion_vs_mask_verdict"]) == (0.0139, 0.0417, "worse")
    assert (r["insertion_vs_mask_verdict"], r["insertion_vs_mask_n_pairs"]) == ("not shown to differ", 11)
    assert (r["insertion_vs_random_p_adjusted"], r["deletion_vs_random_family"]) == (0.00293, "primary")
    # 4 primary tests; exploratory: 3 decoy rows x 2 curves x 2 references + the mask row's 2
    assert (r["holm_primary_tests"], r["holm_exploratory_tests"], r["holm_localization_tests"]) == (4, 14, 3)
    assert r["sanity"] == {"gradcam": "passes", "saliency": "fails", "edges": "undetermined",
                           "dilated-mask": "undetermined", "predicted-mask": "fails"}
    assert (r["headline_level"], r["headline_sentence"]) == ("no-more-than-mask", "Grad-CAM beats random but not the mask.")
    assert r["seconds"] == {"synth": 9.0, "train": 120.5, "report": 5.0} and r["seconds_total"] == 134.5
    assert r["finished"] == "2026-12-01T20:44:10"
    assert r["primary_layer"] == "decoder.blocks.4" and r["baselines"] == ["zero", "blur"]


def test_extract_slices_without_headline_or_stages(slice_run: Path):
    faithfulness = json.loads((slice_run / "faithfulness.json").read_text())
    del faithfulness["headline"]
    _write(slice_run / "faithfulness.json", faithfulness)
    (slice_run / "stages.json").unlink()
    r = extract_slices(slice_run)
    assert r["headline_level"] is None and r["seconds"] == {} and r["seconds_total"] is None
    assert "headline" not in render("readme", {"slices": r})


def test_extract_slices_refuses_an_unfinished_run(tmp_path: Path):
    with pytest.raises(SystemExit, match="not a finished"):
        extract_slices(tmp_path)


def test_extract_volumes(tmp_path: Path):
    run = tmp_path / "volumes"
    faithfulness = _faithfulness()
    for row in faithfulness["results"]:
        if row["method"] == "gradcam":
            row["layer"] = "model.1.submodule.2"
        if row["method"] == "random":
            row["target"] = "none"  # a generated random map: the reference of any target
    faithfulness["primary"] = {**PRIMARY, "layer": "model.1.submodule.2"}
    _write(run / "faithfulness.json", faithfulness)
    _write(run / "segmentation.json", {"n_cases": 15, "size": 32,
                                       "dice": {"mean": 0.994, "ci_low": 0.993, "ci_high": 0.995}})
    _write(run / "sanity.json", {"method": "gradcam", "passes": False})
    _write(run / "channels.json", {"summary": {"top_channel": "FLAIR", "channels": {
        "T1": {"share": {"mean": 0.2}, "dice_drop": {"mean": 0.03}},
        "FLAIR": {"share": {"mean": 0.467}, "dice_drop": {"mean": 0.861}}}}})
    _write(run / "timings.json", {"seconds": {"explain_and_evaluate": 32.04, "sanity": 3.0}})
    _write(run / "demo_training.json", {"epochs": 30, "val_dice_mean": 0.995, "seconds": 41.0})
    _write(run / "prepared" / "splits.json", {"train": ["a"] * 70, "val": ["b"] * 15, "test": ["c"] * 15})
    r = extract_volumes(run)
    assert (r["n_patients"], r["size"], r["epochs"], r["train_cases"], r["val_dice"]) == (15, 32, 30, 70, 0.995)
    assert (r["dice_patient"], r["dice_patient_ci_high"]) == (0.994, 0.995)
    assert (r["primary_layer"], r["insertion_auc"], r["deletion_vs_random_p"]) == ("model.1.submodule.2", 0.363, 0.00049)
    assert (r["deletion_random_auc"], r["insertion_random_auc"]) == (0.803, 0.061)  # zero's, not blur's
    assert r["sanity"] == {"gradcam": "fails"}
    assert (r["top_channel"], r["top_channel_share"], r["top_channel_dice_drop"]) == ("FLAIR", 0.467, 0.861)
    assert r["seconds"] == {"train": 41.0, "explain_and_evaluate": 32.0, "sanity": 3.0} and r["seconds_total"] == 76.0


def test_render_replaces_only_the_marked_blocks(slice_run: Path):
    results = {"slices": extract_slices(slice_run), "volumes": None}
    text = ("# Title\n\nhand-written 0.571\n\n<!-- demo-results:start:findings-slices -->\nold 0.904\n"
            "<!-- demo-results:end:findings-slices -->\n\ntail\n")
    new = render_blocks(text, results)
    assert new.startswith("# Title\n\nhand-written 0.571\n\n") and new.endswith("\n\ntail\n")
    body = blocks(new)["findings-slices"]
    assert body == render("findings-slices", results) and "0.904" not in body
    assert "| deletion | 0.261 [0.211, 0.311] | predicted mask | 0.226 | 0.014 | 0.042 (primary) | worse | 12 |" in body
    assert "0.887 [0.861, 0.910]" in body
    assert render_blocks(new, results) == new  # rendering twice changes nothing
    assert "Not generated yet" in render("findings-volumes", results)
    with pytest.raises(KeyError):
        render("nonsense", results)


def test_readme_row_carries_the_figures(slice_run: Path):
    row = render("readme", {"slices": extract_slices(slice_run)})
    assert "test Dice 0.887 [0.861, 0.910] per patient (12 patients; 0.885 over 48 slices)" in row
    assert "**worse** (p = 0.014, adj 0.042)" in row and "better (p = 0.00049, adj 0.002)" in row
    assert "Holm over the 4 tests of the primary family, the file's other 14 exploratory" in row
    assert "headline **no-more-than-mask**" in row and "saliency fails" in row and "predicted-mask fails" in row


@pytest.mark.parametrize("p, text", [(0.0417, "0.042"), (0.00049, "0.00049"), (6.1e-5, "6.1e-05"), (1.0, "1.000"),
                                     (None, "n/a")])
def test_fmt_p(p, text):
    assert fmt_p(p) == text


def test_write_atomic_keeps_mode_and_leaves_no_temporary(tmp_path: Path):
    path = tmp_path / "README.md"
    path.write_text("old")
    path.chmod(0o640)
    write_atomic(path, "new")
    assert path.read_text() == "new" and (path.stat().st_mode & 0o777) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["README.md"]


def test_check_mode_reports_stale_docs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slice_run: Path):
    """--check exits 1 on a stale block and writes nothing; the default run writes the JSON and the blocks."""
    (tmp_path / "docs").mkdir()
    for doc in DOCS:
        (tmp_path / doc).write_text("x\n<!-- demo-results:start:readme -->\nstale\n<!-- demo-results:end:readme -->\n")
    monkeypatch.setattr(demo_results, "ROOT", tmp_path)
    json_path = tmp_path / "docs" / "demo-results.json"
    assert demo_results.main(["--run", str(slice_run), "--json", str(json_path)]) == 0
    assert json.loads(json_path.read_text())["slices"]["deletion_auc"] == 0.261
    assert demo_results.main(["--check", "--json", str(json_path)]) == 0
    (tmp_path / "README.md").write_text("<!-- demo-results:start:readme -->\nstale\n<!-- demo-results:end:readme -->\n")
    assert demo_results.main(["--check", "--json", str(json_path)]) == 1
    assert "stale" in (tmp_path / "README.md").read_text()


def test_the_demos_run_on_a_fixed_thread_count_whatever_the_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The thread count changes the reduction order, so the demos must not take it from the load:
    the `demo` preset fixes it, `run_pipeline` applies it to every stage, the volume demo uses
    DEMO_THREADS unless OMP_NUM_THREADS is set."""
    import os

    import torch

    from tumorcam.runs import pipeline
    from tumorcam.config import preset
    from tumorcam.device import DEMO_THREADS, cpu_threads, demo_threads

    cfg = preset("demo")
    assert cfg.train.num_threads == DEMO_THREADS == 1 and preset("paper").train.num_threads == 0
    for load in (0.0, 1.5, 7.0):
        monkeypatch.setattr(os, "getloadavg", lambda load=load: (load, load, load))
        assert cpu_threads(cfg.train.num_threads) == DEMO_THREADS
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert demo_threads() == DEMO_THREADS
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert demo_threads() == 3

    threads = torch.get_num_threads()
    monkeypatch.setattr(pipeline, "plan_stages", lambda *a, **k: [])
    monkeypatch.setattr(pipeline, "run_stages", lambda *a, **k: [])
    try:
        torch.set_num_threads(2)
        pipeline.run_pipeline(tmp_path / "run", preset="demo", log=lambda _: None)
        assert torch.get_num_threads() == DEMO_THREADS  # for every stage, training or not
        user = preset("demo")
        user.train.num_threads = 2  # a config's own count (tumorcam run --config) is kept
        pipeline.run_pipeline(tmp_path / "run2", config=user, log=lambda _: None)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
