"""`RUN/report.html`: one self-contained page (figures as base64 data URIs, inline CSS, no script,
no network), every piece of text escaped with `html.escape`, laid out for a laptop screen."""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import platform
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from tumorcam import __version__
from tumorcam.report.figures import FigureResult
from tumorcam.report.results import Table

PACKAGES = ("torch", "torchvision", "segmentation-models-pytorch", "captum", "numpy", "scipy", "matplotlib")

CSS = """
:root { color-scheme: light; }
body { font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: #1b1b1b;
       background: #fff; margin: 0; }
main { max-width: 1320px; margin: 0 auto; padding: 1.2rem 1.5rem 3rem; }
h1 { font-size: 1.7rem; margin: 0.4rem 0 0.2rem; }
h2 { font-size: 1.3rem; margin-top: 2.2rem; border-bottom: 2px solid #ddd; padding-bottom: 0.2rem; }
h3 { font-size: 1.08rem; margin: 1.4rem 0 0.4rem; }
.meta { color: #555; margin: 0 0 1rem; }
nav { background: #f4f4f4; border-radius: 6px; padding: 0.5rem 0.9rem; }
nav a { margin-right: 1rem; white-space: nowrap; }
figure { margin: 1rem 0 1.6rem; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid #ddd; }
figcaption { color: #333; font-size: 0.95rem; margin-top: 0.4rem; max-width: 62rem; }
.missing { background: #fff6e0; border-left: 4px solid #d99a00; padding: 0.5rem 0.8rem; margin: 0.8rem 0; }
.howto { background: #eef5fb; border-left: 4px solid #2b6ca3; padding: 0.4rem 1rem; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: 0.5rem 0; font-size: 0.88rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.45rem; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
tbody tr:nth-child(even) { background: #fafafa; }
.note { color: #555; font-size: 0.9rem; }
.headline { font-weight: 600; padding: 0.5rem 0.8rem; border-left: 4px solid #777; background: #f3f3f3; }
.headline.supported { background: #f4f9f1; border-left-color: #3f7f2a; }
.headline.no-more-than-mask { background: #fdf6e3; border-left-color: #b7791f; }
.headline.unsupported { background: #fbeeee; border-left-color: #b03a2e; }
.headline.undetermined { background: #f3f3f3; border-left-color: #777; }
pre { background: #f6f6f6; padding: 0.7rem; overflow-x: auto; font-size: 0.85rem; white-space: pre-wrap;
      word-break: break-word; }
"""

HOW_TO_READ = (
    "The network outlines the tumour on each MRI slice. An explanation (a heatmap) shows which pixels "
    "pushed that outline: bright (yellow-white) means strong influence, dark means none.",
    "A heatmap is a hypothesis, not a proof. This report tests each one: if the pixels a heatmap calls "
    "important are removed, the network's tumour score should fall quickly (Deletion, lower is better); "
    "if only they are shown, the score should rise quickly (Insertion, higher is better). Every method "
    "is compared with a random heatmap, and with the network's own predicted mask: a heatmap not shown to "
    "beat the predicted mask has not been shown to tell more than the outline the network already draws.",
    "The patient is the unit: each patient's slices are averaged first, so a patient with many slices "
    "counts once. One map, fixed before the run, is primary: its four tests (against random and against "
    "the predicted mask, on deletion and insertion) are Holm-adjusted together and, with the sanity "
    "check, give the headline: supported (green: better than random and than the mask on both curves, "
    "sanity passes), no-more-than-mask, unsupported or undetermined. Each verdict shows its effect size, "
    "the paired difference with its 95% interval over patients. Every other test is exploratory, and its verdict uses a p-value adjusted (Holm) for how many such "
    "tests there are. \"Not shown to differ\" means the data cannot tell the two apart, not that they are equal.",
    "Controls are maps that explain nothing by design (random noise, the predicted mask, the image's "
    "edges); they are shown as yardsticks, not as methods.",
    "The sanity check scrambles the network's learned weights; a trustworthy heatmap must change when "
    "that happens. Heatmaps that stay the same are showing the image's edges, not the network's reasoning.",
    "Grad-CAM x ground truth keeps only the part of the heatmap inside the expert's tumour outline; it "
    "shows where inside the tumour the network looked, and is not itself an explanation of the prediction.",
    "Numbers in brackets are 95% confidence intervals over patients. This is a research tool: it is not "
    "validated for diagnosis.",
)


@dataclass
class Glance:
    """The "At a glance" part: lead sentences (the run's headline first), tables, then notes; `level`
    is the headline's level (`tumorcam.evaluate.headline.LEVELS`), which colours the first sentence
    (green only for "supported"; None: grey)."""

    lead: list[str]
    tables: list[Table]
    notes: list[str]
    level: str | None = None


@dataclass
class Section:
    """One part of the page: an anchor, a heading, and figures, tables or a missing-input note."""

    anchor: str
    title: str
    figures: list[FigureResult]
    tables: list[Table]
    missing: list[str]
    intro: str = ""


def e(text: Any) -> str:
    """Escape any value for HTML text or attribute context."""
    return html.escape(str(text), quote=True)


def render_page(*, run_name: str, subtitle: str, glance: Glance, sections: list[Section],
                config: dict[str, Any], provenance: dict[str, Any] | None,
                how_to_read: tuple[str, ...] = HOW_TO_READ) -> str:
    """The whole page as one string; `how_to_read` are the paragraphs of its reading guide."""
    generated = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    nav = "".join(f'<a href="#{e(s.anchor)}">{e(s.title)}</a>' for s in sections)
    nav += '<a href="#config">Configuration and software</a>'
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e('tumorcam report: ' + run_name)}</title>",
        f"<style>{CSS}</style></head><body><main>",
        f"<h1>{e('tumorcam report: ' + run_name)}</h1>",
        f'<p class="meta">{e(subtitle)} · generated {e(generated)} · tumorcam {e(__version__)}</p>',
        f"<nav>{nav}</nav>",
        '<h2 id="summary">At a glance</h2>',
        _glance(glance),
        '<div class="howto"><h3 id="how-to-read">How to read this report</h3>',
        "".join(f"<p>{e(p)}</p>" for p in how_to_read),
        "</div>",
    ]
    for section in sections:
        parts.append(_section(section))
    parts.append(_config_section(config, provenance))
    parts.append("</main></body></html>")
    return "\n".join(parts) + "\n"


def _glance(glance: Glance) -> str:
    """The headline as a paragraph of its own, coloured by its level, the other lead sentences as a
    list, the tables, then the notes."""
    out = []
    if glance.lead:
        badge = f"<strong>{e(glance.level)}:</strong> " if glance.level else ""
        out.append(f'<p class="headline {e(glance.level or "undetermined")}">{badge}{e(glance.lead[0])}</p>')
    if glance.lead[1:]:
        out.append("<ul>" + "".join(f"<li>{e(line)}</li>" for line in glance.lead[1:]) + "</ul>")
    out += [_table(table) for table in glance.tables]
    if glance.notes:
        out.append("<ul>" + "".join(f"<li>{e(line)}</li>" for line in glance.notes) + "</ul>")
    return "\n".join(out)


def _section(section: Section) -> str:
    out = [f'<h2 id="{e(section.anchor)}">{e(section.title)}</h2>']
    if section.intro:
        out.append(f"<p>{e(section.intro)}</p>")
    for reason in section.missing:
        out.append(f'<p class="missing">Not available: {e(reason)}.</p>')
    for figure in section.figures:
        out.append(_figure(figure))
    for table in section.tables:
        out.append(_table(table))
    return "\n".join(out)


def _figure(figure: FigureResult) -> str:
    if figure.path is None:
        return (f"<h3>{e(figure.title)}</h3>"
                f'<p class="missing">Not available: {e(figure.missing)}.</p>')
    data = base64.b64encode(figure.path.read_bytes()).decode("ascii")
    return (f"<figure><h3>{e(figure.title)}</h3>"
            f'<img src="data:image/png;base64,{data}" alt="{e(figure.title)}">'
            f"<figcaption>{e(figure.caption)}</figcaption></figure>")


def _table(table: Table) -> str:
    head = "".join(f"<th>{e(h)}</th>" for h in table.headers)
    if table.groups:
        head = ("".join(f'<th colspan="{int(span)}">{e(title)}</th>' for title, span in table.groups)
                + f"</tr><tr>{head}")
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in table.rows)
    note = f'<p class="note">{e(table.note)}</p>' if table.note else ""
    return (f"<h3>{e(table.title)}</h3><div class=\"scroll\"><table><thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table></div>{note}")


def software_versions() -> dict[str, str]:
    """Python, platform and the versions of the packages that shape the results."""
    versions = {"python": platform.python_version(), "platform": platform.platform(), "tumorcam": __version__}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _config_section(config: dict[str, Any], provenance: dict[str, Any] | None) -> str:
    versions = software_versions()
    rows = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in versions.items())
    out = ['<h2 id="config">Configuration and software</h2>',
           "<h3>Software that made this report</h3>",
           f'<div class="scroll"><table><tbody>{rows}</tbody></table></div>',
           "<h3>Run configuration (config.json)</h3>",
           f"<pre>{e(json.dumps(config, indent=2))}</pre>"]
    if provenance:
        out += ["<h3>Training provenance (provenance.json)</h3>",
                f"<pre>{e(json.dumps(provenance, indent=2))}</pre>"]
    return "\n".join(out)
