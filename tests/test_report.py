"""The report: every figure a valid non-blank PNG, a self-contained escaped page, missing sections
named rather than fatal, the tables' numbers read from the run's JSON files, and "At a glance": the
primary comparison first with its raw p, the exploratory tests with their Holm-adjusted p, one
sentence per method on the predicted-mask control, controls apart."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import write_blob_prepared
from report_run import (BASELINES, METHODS, PATIENTS, faithfulness_doc, localization_doc, log_fractions, make_run,
                        sanity_doc)
from tumorcam.cli import main
from tumorcam.config import Config
from tumorcam.errors import TumorcamError
from tumorcam.report import build_report
from tumorcam.report.results import (faithfulness_curves, faithfulness_tables, fmt_ci, fraction_ticks, glance_sentences,
                                     glance_tables, localization_tables, mask_sentences, primary_sentence,
                                     sanity_series, sanity_summary, sanity_tables, segmentation_table)

FIGURES = {"fig1_classes", "fig2_untrained_gradcam", "fig3_gradcam_times_gt", "fig4_deletion_insertion",
           "fig5_predicted_mask", "training_curves", "sanity_check"}


@pytest.fixture(scope="module")
def unbuilt_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`make_run` over the blob data, made once per module; the tests read copies of it."""
    root = tmp_path_factory.mktemp("report_runs")
    return make_run(root / "unbuilt", write_blob_prepared(root / "prepared"))


@pytest.fixture(scope="module")
def built_page(unbuilt_run: Path) -> Path:
    """The report of a copy of `unbuilt_run`, built once per module for the tests that only read it."""
    run = unbuilt_run.parent / "built"
    shutil.copytree(unbuilt_run, run)
    return build_report(run)


@pytest.fixture
def full_run(tmp_path: Path, unbuilt_run: Path) -> Path:
    """A run folder of `make_run`, no report built yet, the test's own to change."""
    return Path(shutil.copytree(unbuilt_run, tmp_path / "run"))


@pytest.fixture
def built_run(tmp_path: Path, built_page: Path) -> Path:
    """A run folder whose report is built (figures and page), the test's own to change."""
    return Path(shutil.copytree(built_page.parent, tmp_path / "run"))


def gray(png: bytes | Path) -> np.ndarray:
    source = io.BytesIO(png) if isinstance(png, bytes) else png
    return np.asarray(Image.open(source).convert("L"), dtype=np.float32)


def test_every_figure_is_a_valid_non_blank_png_and_is_embedded(built_page: Path) -> None:
    page = built_page

    assert page == page.parent / "report.html"
    files = {p.stem: p for p in (page.parent / "figures").glob("*.png")}
    assert set(files) == FIGURES
    html = page.read_text()
    embedded = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(embedded) == len(FIGURES)
    for path in files.values():
        pixels = gray(path)
        assert pixels.size > 0 and pixels.std() > 0, path
        assert base64.b64encode(path.read_bytes()).decode() in embedded


def test_page_is_self_contained_and_has_its_parts(built_page: Path) -> None:
    html = built_page.read_text()

    assert not re.search(r"<(script|link|iframe|object|embed)\b", html, re.I)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//|file:)""", html, re.I)
    assert "url(" not in html and "@import" not in html
    assert all(f'href="#{a}"' in html for a in ("data", "explanations", "faithfulness", "segmentation", "sanity", "config"))
    assert "How to read this report" in html and "Not available" not in html
    assert '"encoder": "resnet18"' in html.replace("&quot;", '"')  # the run's config at the end
    assert "segmentation-models-pytorch" in html  # software versions


def test_every_text_is_escaped(full_run: Path) -> None:
    run = full_run
    config = Config.load(run / "config.json")
    config.preset = '<script>alert("x")</script>'
    config.save(run / "config.json")
    faith = json.loads((run / "faithfulness.json").read_text())
    faith["results"][0]["target"] = "<b>bold</b>"
    faith["results"][1]["method"] = "<i>sal</i>"  # a method name in the vs-mask sentences and the tables
    faith["primary"]["layer"] = "<u>layer</u>"  # the primary sentence
    (run / "faithfulness.json").write_text(json.dumps(faith))
    sanity = json.loads((run / "sanity.json").read_text())
    sanity["criterion"] = "<em>fails</em> & more"
    (run / "sanity.json").write_text(json.dumps(sanity))

    html = build_report(run).read_text()

    for raw in ("<script>", "<b>bold</b>", "<i>sal</i>", "<u>layer</u>", "<em>fails</em>"):
        assert raw not in html, raw
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html and "&lt;b&gt;bold&lt;/b&gt;" in html
    assert "&lt;i&gt;sal&lt;/i&gt; is not shown to tell more than the predicted mask" in html
    assert "decoder.blocks.4, zero baseline)" not in html and "&lt;u&gt;layer&lt;/u&gt;, zero baseline)" in html
    assert "&lt;em&gt;fails&lt;/em&gt; &amp; more" in html


def test_missing_sections_are_named_and_their_old_figures_removed(built_run: Path) -> None:
    run = built_run  # its report built: every figure is there
    assert len(list((run / "figures").glob("*.png"))) == len(FIGURES)
    for name in ("faithfulness.json", "sanity.json", "localization.json", "metrics.json"):
        (run / name).unlink()
    (run / "explanations" / "index.json").unlink()

    html = build_report(run).read_text()

    assert {p.stem for p in (run / "figures").glob("*.png")} == {"fig1_classes", "fig5_predicted_mask", "training_curves"}
    for reason in ("faithfulness.json is missing (written by `tumorcam evaluate RUN --faithfulness`)",
                   "sanity.json is missing", "localization.json is missing", "metrics.json is missing",
                   "explanations/index.json is missing"):
        assert reason in html.replace("&#x27;", "'"), reason
    assert html.count('class="missing"') >= 6


def test_a_section_of_another_shape_is_reported_not_fatal(full_run: Path) -> None:
    (full_run / "sanity.json").write_text(json.dumps({"something": "else"}))
    (full_run / "metrics.json").write_text("{not json")

    html = build_report(full_run).read_text()

    assert "Sanity check" in html and "does not have the documented shape" in html
    assert "metrics.json could not be read" in html


def test_a_folder_that_is_not_a_run_is_one_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(TumorcamError, match="not a run folder"):
        build_report(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(tmp_path / "nowhere")])
    assert exit_info.value.code == 2 and "error: " in capsys.readouterr().err


def test_report_command_prints_the_page_path(full_run: Path, capsys: pytest.CaptureFixture) -> None:
    main(["report", str(full_run)])
    assert capsys.readouterr().out.strip() == str(full_run / "report.html")


def test_figure_4_reads_curves_aucs_and_both_references() -> None:
    faith = faithfulness_doc()

    groups = faithfulness_curves(faith)

    assert [g.title for g in groups] == [f"baseline {b}, target predicted-region" for b in BASELINES]
    for group in groups:
        assert [c.method for c in group.curves] == list(METHODS)  # the methods, then random and the mask control
        assert [c.reference for c in group.curves] == [False, False, True, True]
        gradcam = group.curves[0]
        row = next(r for r in faith["results"] if r["method"] == "gradcam" and group.title.startswith(f"baseline {r['baseline']}"))
        assert gradcam.auc["deletion"] == pytest.approx(row["deletion"]["mean"])
        step, score = gradcam.get("insertion")
        assert step == pytest.approx(np.linspace(0, 1, 9)) and score == pytest.approx(row["insertion"]["curve_mean"])
        assert np.trapezoid(score, step) == pytest.approx(gradcam.auc["insertion"])  # the AUC is the area drawn
        assert gradcam.auc["deletion"] < group.curves[2].auc["deletion"]  # the fabricated Grad-CAM beats random
        assert group.ticks == fraction_ticks(np.asarray(faith["fractions"]), "log")


def test_fraction_ticks_label_the_steps_with_their_fractions() -> None:
    # log, K = 8: f_k = 1e-3^((8-k)/7); the decades fall nearest to k = 1 (0.001), 3 (0.0072), 6 (0.139), 8 (1)
    positions, labels = fraction_ticks(log_fractions(8), "log")
    assert positions == pytest.approx([0, 1 / 8, 3 / 8, 6 / 8, 1])
    assert labels == ["0", "0.001", "0.0072", "0.14", "1"]
    assert fraction_ticks(np.linspace(0, 1, 11), "uniform") == ([0, 0.25, 0.5, 0.75, 1], ["0", "0.25", "0.5", "0.75", "1"])


HEADLINE = "Grad-CAM is not supported: not shown to be better than random on insertion (4 tests, 12 patients, Holm)."
PRIMARY_SENTENCE = ("Primary family: Grad-CAM (predicted-region, decoder.blocks.4, zero baseline) is better than random "
                    "on deletion (difference -0.100 [-0.150, -0.05], p = 0.012, adjusted 0.025, n = 12 patients); not "
                    "shown to differ from random on insertion (difference 0.100 [0.05, 0.150], p = 0.200, adjusted "
                    "0.200, n = 12 patients); better than the predicted mask on deletion (difference -0.100 [-0.150, "
                    "-0.05], p = 0.001, adjusted 0.004, n = 12 patients); better than the predicted mask on insertion "
                    "(difference 0.100 [0.05, 0.150], p = 0.002, adjusted 0.006, n = 12 patients). Verdicts at alpha = "
                    "0.05 after Holm's adjustment over these 4 tests; a difference is the map's AUC minus the "
                    "reference's (Hodges-Lehmann estimate over patients, 95% bootstrap CI).")


def test_at_a_glance_leads_with_the_headline_coloured_by_its_level(built_page: Path) -> None:
    html = built_page.read_text().replace("&#x27;", "'")

    glance = html[html.index('<h2 id="summary">At a glance</h2>'):html.index('id="how-to-read"')]
    first = re.search(r"<(p|li|table)\b([^>]*)>(.*?)</\1>", glance, re.S)
    assert first.group(1) == "p" and first.group(2) == ' class="headline unsupported"'
    assert first.group(3) == f"<strong>unsupported:</strong> {HEADLINE}"
    assert 'class="headline supported"' not in glance  # green only for "supported"
    # then the four primary tests with raw p, adjusted p and effect size; the verdict is the adjusted one's
    assert glance.index(HEADLINE) < glance.index(PRIMARY_SENTENCE) < glance.index("Every other test is exploratory") \
        < glance.index("<table>")


def test_primary_sentence_follows_the_verdicts_and_says_when_the_primary_row_is_absent() -> None:
    faith = faithfulness_doc()
    primary = next(r for r in faith["results"] if r["method"] == "gradcam" and r["baseline"] == "zero")
    primary["insertion"]["vs_random"].update(verdict="undetermined", p_value=None, n_pairs=1)
    primary["deletion"]["vs_random"]["verdict"] = "worse"

    assert ("is worse than random on deletion (difference -0.100 [-0.150, -0.05], p = 0.012, adjusted 0.025, n = 12 "
            "patients); undetermined against random on insertion (difference 0.100 [0.05, 0.150], no p-value, "
            "adjusted 0.200, n = 1 patient)") in primary_sentence(faith)

    faith["primary"]["baseline"] = "blur"
    assert primary_sentence(faith).startswith(
        "Primary comparison: Grad-CAM (predicted-region, decoder.blocks.4, blur baseline) is not in faithfulness.json")
    del faith["primary"]
    assert "names no primary comparison" in primary_sentence(faith)


def test_glance_sentences_count_the_exploratory_tests_and_compare_with_the_mask() -> None:
    faith = faithfulness_doc()

    lines = glance_sentences(faith)

    # per baseline: gradcam and saliency 4 tests each, the mask control 2 (vs random); minus the 4 primary
    assert lines[0] == HEADLINE and lines[1] == PRIMARY_SENTENCE
    assert "(16 tests)" in lines[2] and "Holm-adjusted p over all 16" in lines[2]
    assert lines[3:] == [
        "Grad-CAM is better than the predicted-mask control on deletion and insertion for predicted-region with "
        "the zero baseline; it is not shown to tell more than the predicted mask for predicted-region with the rise "
        "baseline.",
        "Saliency is not shown to tell more than the predicted mask for predicted-region with the zero baseline and "
        "predicted-region with the rise baseline.",
    ]
    assert not any(line.startswith(("Random", "The predicted mask")) for line in lines[3:])  # controls: no sentence


def test_mask_sentence_names_mixed_and_missing_comparisons() -> None:
    faith = faithfulness_doc()
    for row in faith["results"]:
        if row["method"] == "saliency":
            row["deletion"]["vs_mask"]["verdict"] = "better"
            row["insertion"]["vs_mask"]["verdict"] = "worse" if row["baseline"] == "zero" else "not shown to differ"
        if row["method"] == "gradcam":
            row["deletion"]["vs_mask"] = row["insertion"]["vs_mask"] = None

    assert mask_sentences(faith) == [
        "Grad-CAM is not compared with the predicted mask (the run has no predicted-mask control) for "
        "predicted-region with the zero baseline and predicted-region with the rise baseline.",
        "Saliency is better than the predicted-mask control on deletion, worse than the predicted-mask control on "
        "insertion for predicted-region with the zero baseline; it is better than the predicted-mask control on "
        "deletion, not shown to differ from it on insertion for predicted-region with the rise baseline.",
    ]


def test_glance_table_has_the_columns_raw_and_adjusted_p_and_controls_apart() -> None:
    faith = faithfulness_doc()

    methods, controls = glance_tables(faith)

    per_game = ["AUC [95% CI]", "p vs random", "adjusted p", "vs random", "vs predicted mask (adjusted p)"]
    assert methods.headers == ["method", "target", "baseline", "n patients"] + per_game * 2
    assert methods.groups == [("", 4), ("Deletion: lower AUC is better", 5), ("Insertion: higher AUC is better", 5)]
    primary = next(r for r in faith["results"] if r["method"] == "gradcam" and r["baseline"] == "zero")
    # Holm over the 4 primary tests (0.0123, 0.2 vs random; 0.001, 0.002 vs mask): 0.001 x 4 = 0.004,
    # 0.002 x 3 = 0.006, 0.0123 x 2 = 0.0246, 0.2 -> max(0.0246, 1 x 0.2) = 0.2. Each verdict shows its
    # effect size (estimate [95% CI]).
    assert methods.rows[0] == [
        "gradcam (primary)", "predicted-region", "zero", str(PATIENTS),
        fmt_ci(primary["deletion"]), "0.012", "0.025 (primary)", "better, -0.100 [-0.150, -0.05]",
        "better, -0.100 [-0.150, -0.05] (0.004)",
        fmt_ci(primary["insertion"]), "0.200", "0.200 (primary)", "not shown to differ, 0.100 [0.05, 0.150]",
        "better, 0.100 [0.05, 0.150] (0.006)"]
    rise = next(row for row in methods.rows if row[0] == "gradcam" and row[2] == "rise")
    # exploratory (m = 16): raw 0.004 < 0.05 but 4th smallest: 13 x 0.004 = 0.052, so not shown to differ
    assert rise[10:13] == ["0.004", "0.052 (exploratory)", "not shown to differ, 0.100 [0.05, 0.150]"]
    assert [r[0] for r in methods.rows] == ["gradcam (primary)", "saliency", "gradcam", "saliency"]
    assert [r[0] for r in controls.rows] == ["random (control)", "predicted-mask (control)"] * 2
    random_row, mask_row = controls.rows[:2]
    assert random_row[7] == "(the reference)" and mask_row[8] == "(the reference)"
    assert mask_row[7] == "better, -0.100 [-0.150, -0.05]"


def test_the_page_never_says_no_better_and_shows_the_glance_tables(built_page: Path) -> None:
    html = built_page.read_text()

    text = re.sub(r"<[^>]+>", " ", html).lower()
    assert "no better" not in text and "no difference" not in text and "not shown to differ" in text
    assert '<th colspan="5">Deletion: lower AUC is better</th>' in html
    assert "Controls: maps that explain nothing by design" in html
    assert "<td>gradcam (primary)</td>" in html


def test_faithfulness_table_puts_both_references_beside_each_map() -> None:
    faith = faithfulness_doc()
    deletion, insertion = faithfulness_tables(faith)

    assert len(deletion.rows) == len(BASELINES) * (len(METHODS) - 1)  # random is the reference, not a row
    random_zero = next(r for r in faith["results"] if r["method"] == "random" and r["baseline"] == "zero")
    mask_zero = next(r for r in faith["results"] if r["method"] == "predicted-mask" and r["baseline"] == "zero")
    first = deletion.rows[0]
    assert first[:3] == ["zero", "predicted-region", "gradcam"]
    assert first[5] == fmt_ci(random_zero["deletion"]) and first[6] == fmt_ci(mask_zero["deletion"])
    assert first[9:] == ["0.025 (primary)", "better, -0.100 [-0.150, -0.05]", "12 (24)"]
    assert "higher is better" in insertion.title and "12 patients, 24 slices, K = 8 steps (log schedule)" in insertion.title


def test_localization_tables_show_patients_tests_and_adjusted_p() -> None:
    loc = localization_doc()

    tables = localization_tables(loc)

    assert [t.title.split(" (")[0] for t in tables] == ["Localisation: pointing game", "Localisation: energy pointing game",
                                                         "Localisation: top IoU"]
    pointing = tables[0]
    assert pointing.headers[4:7] == ["n patients (slices)", "test", "p vs random"]
    gradcam = pointing.rows[0]
    # per metric 6 tests (trained: Grad-CAM and saliency 2 each, the mask control 1; untrained Grad-CAM 1), one
    # Holm over the file's 18: the tied smallest p = 0.001 all become 18 x 0.001 = 0.018
    assert gradcam[4:] == ["12 (24)", "wilcoxon", "0.001", "0.018 (exploratory)", "better, 0.100 [0.05, 0.150]",
                           "not shown to differ, 0.100 [0.05, 0.150] (1.000)"]
    assert tables[1].rows[0][5] == "wilcoxon"
    assert [r[0] for r in pointing.rows][-2:] == ["gradcam (untrained network)", "random (untrained network) (control)"]


def test_segmentation_table_lists_overall_patients_and_classes(full_run: Path) -> None:
    metrics = json.loads((full_run / "metrics.json").read_text())
    table = segmentation_table(metrics)
    assert [r[0] for r in table.rows][0] == "all slices"
    assert {r[0] for r in table.rows[2:]} == set(metrics["per_class"])
    assert table.rows[0][2] == fmt_ci(metrics["overall"]["dice"])


def test_sanity_series_table_and_summary() -> None:
    sanity = sanity_doc()

    absolute, ssim = sanity_series(sanity)

    assert absolute.steps == sanity["stages"] and absolute.threshold == ssim.threshold == 0.5
    assert not absolute.signed and ssim.signed
    assert absolute.lines["saliency (predicted-region)"] == sanity["results"][1]["mean_abs_spearman"]
    assert "edges (predicted-region, control) FAILS" in absolute.lines
    table = sanity_tables(sanity)
    assert table.rows[0] == ["gradcam", "predicted-region", "decoder.blocks.4", "0.000", "0.000", "3 of 4", "passes"]
    assert table.rows[3][0] == "edges (control)" and table.rows[3][-1] == "FAILS"
    assert sanity["criterion"] in table.note
    line, = sanity_summary(sanity)
    assert line.startswith("Sanity check (4 slices): passes: gradcam, saliency; control predicted-mask")
    assert "control edges (predicted-region): FAILS, as it should (it never reads the weights)" in line


def test_fmt_ci_reads_both_ci_shapes() -> None:
    assert fmt_ci({"mean": 0.5, "ci_low": 0.4, "ci_high": 0.6}) == "0.500 [0.400, 0.600]"
    assert fmt_ci({"mean": 0.5, "ci95": [0.4, 0.6]}) == "0.500 [0.400, 0.600]"
    assert fmt_ci({"mean": 0.5, "ci_low": None, "ci_high": None}) == "0.500"
    assert fmt_ci({"mean": None}) == "n/a" and fmt_ci(None) == "n/a"


def test_figure_5_reads_the_saved_predictions_and_names_the_command_when_they_are_missing(built_run: Path) -> None:
    from tumorcam.runfolder.examples import EXAMPLES_FILE, load_examples

    full_run = built_run  # its report built from the saved predictions
    examples = load_examples(full_run)
    assert len(examples.file_ids) == 3 and examples.predicted.shape == (3, 64, 64) and examples.size == 64
    assert (full_run / "figures" / "fig5_predicted_mask.png").is_file()

    (full_run / EXAMPLES_FILE).unlink()
    html = build_report(full_run).read_text().replace("&#x27;", "'")

    assert not (full_run / "figures" / "fig5_predicted_mask.png").exists()
    assert "figures_data/examples.npz is missing (written by `tumorcam evaluate RUN --segmentation`)" in html


NEVER_RUNS_THE_NETWORK = """
import sys
opened = []


def hook(event, args):
    if event == "open":
        opened.append(str(args[0]))


sys.addaudithook(hook)
from tumorcam.report import build_report
build_report(sys.argv[1])
print(sorted(m for m in ("tumorcam.models.inference", "tumorcam.models.unet", "segmentation_models_pytorch") if m in sys.modules))
print(sorted({p for p in opened if p.endswith(".pth")}))
"""


def test_the_report_never_loads_or_runs_the_network(full_run: Path) -> None:
    """Building the report imports neither tumorcam.models.inference nor tumorcam.models.unet and opens no .pth."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    result = subprocess.run([sys.executable, "-c", NEVER_RUNS_THE_NETWORK, str(full_run)], capture_output=True,
                            text=True, env=env, timeout=300, check=True)
    assert result.stdout.split("\n")[-3:-1] == ["[]", "[]"], result.stdout + result.stderr
    assert (full_run / "figures" / "fig5_predicted_mask.png").is_file()
