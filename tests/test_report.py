"""The report: every figure a valid non-blank PNG, a self-contained escaped page, missing sections
named rather than fatal, and the tables' numbers read from the run's JSON files."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from report_run import BASELINES, METHODS, make_run
from tumorcam.cli import main
from tumorcam.config import Config
from tumorcam.errors import TumorcamError
from tumorcam.report import build_report
from tumorcam.report.results import faithfulness_curves, faithfulness_tables, fmt_ci, sanity_series, segmentation_table

FIGURES = {"fig1_classes", "fig2_untrained_gradcam", "fig3_gradcam_times_gt", "fig4_deletion_insertion",
           "fig5_predicted_mask", "training_curves", "sanity_check"}


@pytest.fixture
def full_run(tmp_path: Path, blob_prepared: Path) -> Path:
    return make_run(tmp_path / "run", blob_prepared)


def grey(png: bytes | Path) -> np.ndarray:
    source = io.BytesIO(png) if isinstance(png, bytes) else png
    return np.asarray(Image.open(source).convert("L"), dtype=np.float32)


def test_every_figure_is_a_valid_non_blank_png_and_is_embedded(full_run: Path) -> None:
    page = build_report(full_run)

    files = {p.stem: p for p in (full_run / "figures").glob("*.png")}
    assert set(files) == FIGURES
    html = page.read_text()
    embedded = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(embedded) == len(FIGURES)
    for path in files.values():
        pixels = grey(path)
        assert pixels.size > 0 and pixels.std() > 0, path
        assert base64.b64encode(path.read_bytes()).decode() in embedded


def test_page_is_self_contained_and_has_its_parts(full_run: Path) -> None:
    html = build_report(full_run).read_text()

    assert not re.search(r"<(script|link|iframe|object|embed)\b", html, re.I)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//|file:)""", html, re.I)
    assert "url(" not in html and "@import" not in html
    assert all(f'href="#{a}"' in html for a in ("data", "explanations", "faithfulness", "segmentation", "sanity", "config"))
    assert "How to read this report" in html and "Not available" not in html
    assert '"encoder": "resnet18"' in html.replace("&quot;", '"')  # the run's config at the end
    assert "segmentation-models-pytorch" in html  # software versions


def test_every_text_is_escaped(tmp_path: Path, blob_prepared: Path) -> None:
    run = make_run(tmp_path / "run", blob_prepared)
    config = Config.load(run / "config.json")
    config.preset = '<script>alert("x")</script>'
    config.save(run / "config.json")
    faith = json.loads((run / "faithfulness.json").read_text())
    faith["results"][0]["target"] = "<b>bold</b>"
    (run / "faithfulness.json").write_text(json.dumps(faith))

    html = build_report(run).read_text()

    assert "<script>" not in html and "<b>bold</b>" not in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html and "&lt;b&gt;bold&lt;/b&gt;" in html


def test_missing_sections_are_named_and_their_old_figures_removed(tmp_path: Path, blob_prepared: Path) -> None:
    run = make_run(tmp_path / "run", blob_prepared)
    build_report(run)
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


def test_figure_4_reads_curves_aucs_and_the_random_reference(full_run: Path) -> None:
    faith = json.loads((full_run / "faithfulness.json").read_text())

    groups = faithfulness_curves(faith)

    assert len(groups) == len(BASELINES)
    for group in groups:
        assert [c.method for c in group.curves] == list(METHODS)  # each method, then its random map
        gradcam = group.curves[0]
        row = next(r for r in faith["results"] if r["method"] == "gradcam" and group.title.startswith(f"baseline {r['baseline']}"))
        assert gradcam.auc["deletion"] == pytest.approx(row["deletion"]["mean"])
        fraction, score = gradcam.get("insertion")
        assert fraction[-1] == 1.0 and score == pytest.approx(row["insertion"]["curve_mean"])
        assert gradcam.auc["deletion"] < group.curves[-1].auc["deletion"]  # the fabricated Grad-CAM beats random


def test_faithfulness_table_puts_the_random_map_beside_each_method(full_run: Path) -> None:
    faith = json.loads((full_run / "faithfulness.json").read_text())
    deletion, insertion = faithfulness_tables(faith)

    assert len(deletion.rows) == len(BASELINES) * (len(METHODS) - 1)  # random is the reference, not a row
    random_zero = next(r for r in faith["results"] if r["method"] == "random" and r["baseline"] == "zero")
    first = deletion.rows[0]
    assert first[:3] == ["zero", "mean-logits", "gradcam"]
    assert first[5] == fmt_ci(random_zero["deletion"])
    assert first[7] == "0.004" and first[8] == "better"
    assert "higher is better" in insertion.title


def test_segmentation_table_lists_overall_patients_and_classes(full_run: Path) -> None:
    metrics = json.loads((full_run / "metrics.json").read_text())
    table = segmentation_table(metrics)
    assert [r[0] for r in table.rows][0] == "all slices"
    assert {r[0] for r in table.rows[2:]} == set(metrics["per_class"])
    assert table.rows[0][2] == fmt_ci(metrics["overall"]["dice"])


def test_sanity_series_follow_the_stages(full_run: Path) -> None:
    sanity = json.loads((full_run / "sanity.json").read_text())
    spearman, ssim = sanity_series(sanity)
    assert spearman.steps == sanity["stages"] and spearman.threshold == 0.5 and ssim.threshold is None
    assert spearman.lines["gradcam (mean-logits)"] == sanity["results"][0]["spearman"]
    assert "edge-detector (mean-logits) FAILS" in spearman.lines


def test_fmt_ci_reads_both_ci_shapes() -> None:
    assert fmt_ci({"mean": 0.5, "ci_low": 0.4, "ci_high": 0.6}) == "0.500 [0.400, 0.600]"
    assert fmt_ci({"mean": 0.5, "ci95": [0.4, 0.6]}) == "0.500 [0.400, 0.600]"
    assert fmt_ci({"mean": 0.5, "ci_low": None, "ci_high": None}) == "0.500"
    assert fmt_ci({"mean": None}) == "n/a" and fmt_ci(None) == "n/a"
