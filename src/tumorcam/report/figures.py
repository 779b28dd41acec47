"""The report's figures: matplotlib (Agg canvas, no pyplot state), one PNG each in RUN/figures/.

Grey-scale safe by construction: slices in grey, heatmaps in `inferno` (luminance rises
monotonically with the value, so a grey print keeps the order), masks drawn as outlines with a
dark halo (ground truth solid, prediction dashed), curves told apart by line style as well as
colour. Each builder raises `MissingInput` when the run lacks what it needs; `make_figures`
turns that into a `FigureResult` that says what is missing instead of failing the report.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import patheffects
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tumorcam.data.arrays import CLASS_NAMES
from tumorcam.runfolder.index import Entry
from tumorcam.io import atomic_path
from tumorcam.report import results
from tumorcam.report.contents import RunContents, Section, rows_of_file_ids
from tumorcam.runfolder.examples import one_per_class_first

HEATMAP_CMAP = "inferno"
DPI = 110
MAX_ROWS = 3
PANEL_INCHES = 2.2
LINE_STYLES = ("-", "--", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)))  # dotted and dash-dot are kept for the references
REFERENCE_STYLES = {  # Figure 4's reference maps, in grey
    "random": {"color": "0.45", "linestyle": ":", "marker": None, "linewidth": 2.2},
    "predicted-mask": {"color": "0.2", "linestyle": "-.", "marker": None, "linewidth": 2.0},
}
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
GT_STYLE = {"colors": "#ffe14d", "linestyles": "solid"}
PRED_STYLE = {"colors": "#4dd2ff", "linestyles": "dashed"}
HALO = [patheffects.withStroke(linewidth=3.2, foreground="black")]


def save_figure(fig: Figure, path: Path) -> Path:
    """`fig` as a PNG at `path` (DPI, white background), written atomically; the figure is closed."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, facecolor="white")
    plt.close(fig)
    return path


class MissingInput(Exception):
    """A figure cannot be drawn because the run lacks one of its inputs (the message says which)."""


@dataclass
class FigureResult:
    """A drawn figure (`path`) or the reason it is missing."""

    key: str
    title: str
    caption: str
    path: Path | None = None
    missing: str = ""


@dataclass
class FigureSpec:
    key: str
    title: str
    caption: str
    draw: Callable[[RunContents], Figure]


# --- helpers -----------------------------------------------------------------------------------

def _new_figure(rows: int, cols: int, width: float | None = None, height: float | None = None) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(width or cols * PANEL_INCHES, height or rows * PANEL_INCHES), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.atleast_2d(fig.subplots(rows, cols, squeeze=False))
    return fig, axes


def _show_slice(ax: Any, image: np.ndarray) -> None:
    ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0, interpolation="bilinear")
    ax.set_xticks([])
    ax.set_yticks([])


def _outline(ax: Any, mask: np.ndarray, style: dict[str, str]) -> None:
    if mask.any() and not mask.all():
        contour = ax.contour(mask.astype(np.float32), levels=[0.5], linewidths=1.6, **style)
        contour.set_path_effects(HALO)


def _show_heatmap(ax: Any, heatmap: np.ndarray) -> Any:
    image = ax.imshow(heatmap, cmap=HEATMAP_CMAP, vmin=0.0, vmax=1.0, interpolation="bilinear")
    ax.set_xticks([])
    ax.set_yticks([])
    return image


def _need(section: Section) -> Any:
    """The section's value; a missing section stops the figure with its reason."""
    if not section.present:
        raise MissingInput(section.reason)
    return section.value


def _slices(contents: RunContents, file_ids: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images (N,S,S), masks (N,S,S) bool and labels (N,) of `file_ids`, resized to `size`."""
    prepared = _need(contents.prepared)
    rows = rows_of_file_ids(prepared, file_ids)
    images, masks = prepared.tensors(rows, size)
    return images[:, 0].numpy(), masks[:, 0].numpy() > 0.5, np.asarray(prepared.labels[rows])


def _label_name(label: int) -> str:
    return CLASS_NAMES.get(int(label), f"class {int(label)}")


def _entry_title(entry: Entry) -> str:
    return f"{entry.method}, {entry.target}, {entry.layer}"


def _pick_entry(entries: list[Entry]) -> Entry:
    """The entry to show: Grad-CAM first (the paper's method), never the random map unless alone."""
    if not entries:
        raise MissingInput("no explanation entries of this kind")
    return sorted(entries, key=lambda e: (e.method != "gradcam", e.method == "random"))[0]


def _matching(entries: list[Entry], like: Entry) -> Entry | None:
    for entry in entries:
        if (entry.method, entry.target, entry.layer) == (like.method, like.target, like.layer):
            return entry
    return None


def _shared_maps(*entries: Entry) -> tuple[np.ndarray, list[np.ndarray]]:
    """File ids present in every entry (in the first's order) and each entry's maps for them."""
    loaded = [entry.load() for entry in entries]
    others = [set(ids.tolist()) for _, ids in loaded[1:]]
    common = [int(f) for f in loaded[0][1] if all(int(f) in ids for ids in others)]
    if not common:
        raise MissingInput("the explanation files share no slice")
    file_ids = np.array(common, dtype=np.int64)
    maps = []
    for entry_maps, ids in loaded:
        where = {int(f): i for i, f in enumerate(ids)}
        maps.append(entry_maps[[where[int(f)] for f in file_ids]])
    return file_ids, maps


def _row_label(ax: Any, text: str) -> None:
    ax.set_ylabel(text, fontsize=9)


def _colorbar(fig: Figure, image: Any, axes: np.ndarray, label: str) -> None:
    bar = fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.6, pad=0.01)
    bar.set_label(label)


# --- the paper's five figures --------------------------------------------------------------------

def draw_classes(contents: RunContents) -> Figure:
    """(1) One slice per tumour class with the ground-truth outline."""
    prepared = _need(contents.prepared)
    rows = prepared.indices("test")
    if len(rows) == 0:
        rows = prepared.indices("all")
    labels = np.asarray(prepared.labels[rows])
    picks = [rows[np.flatnonzero(labels == c)[0]] for c in sorted(set(labels.tolist()))]
    if not picks:
        raise MissingInput("the prepared data holds no slice")
    images, masks = prepared.tensors(np.array(picks), None)
    fig, axes = _new_figure(1, len(picks))
    for ax, image, mask, row in zip(axes[0], images[:, 0].numpy(), masks[:, 0].numpy() > 0.5, picks):
        _show_slice(ax, image)
        _outline(ax, mask, GT_STYLE)
        ax.set_title(f"{_label_name(prepared.labels[row])}\nfile {int(prepared.file_ids[row])}", fontsize=10)
    fig.suptitle("One slice per class; outline: ground-truth tumour", fontsize=11)
    return fig


def draw_untrained_gradcam(contents: RunContents) -> Figure:
    """(2) Grad-CAM of the network before fine-tuning, beside the fine-tuned network's."""
    untrained = _pick_entry(contents.entries(model="untrained", times_gt=False))
    trained = _matching(contents.entries(model="trained", times_gt=False), untrained)
    entries = [untrained] + ([trained] if trained else [])
    file_ids, maps = _shared_maps(*entries)
    images, masks, labels = _slices(contents, file_ids, maps[0].shape[-1])
    show = one_per_class_first(labels, MAX_ROWS)
    titles = ["slice + ground truth", "before fine-tuning"] + (["after fine-tuning"] if trained else [])
    fig, axes = _new_figure(len(show), len(titles))
    heat = None
    for r, i in enumerate(show):
        _show_slice(axes[r, 0], images[i])
        _outline(axes[r, 0], masks[i], GT_STYLE)
        _row_label(axes[r, 0], f"{_label_name(labels[i])} {int(file_ids[i])}")
        for c, entry_maps in enumerate(maps, start=1):
            heat = _show_heatmap(axes[r, c], entry_maps[i])
            _outline(axes[r, c], masks[i], GT_STYLE)
    for c, title in enumerate(titles):
        axes[0, c].set_title(title, fontsize=10)
    _colorbar(fig, heat, axes, "relevance (0 to 1)")
    fig.suptitle(_entry_title(untrained), fontsize=11)
    return fig


def draw_gradcam_times_gt(contents: RunContents) -> Figure:
    """(3) Slices, Grad-CAM and Grad-CAM x ground truth."""
    times_gt = _pick_entry(contents.entries(model="trained", times_gt=True))
    plain = _matching(contents.entries(model="trained", times_gt=False), times_gt)
    entries = ([plain] if plain else []) + [times_gt]
    file_ids, maps = _shared_maps(*entries)
    images, masks, labels = _slices(contents, file_ids, maps[0].shape[-1])
    show = one_per_class_first(labels, MAX_ROWS)
    titles = ["slice + ground truth"] + (["Grad-CAM"] if plain else []) + ["Grad-CAM x ground truth"]
    fig, axes = _new_figure(len(show), len(titles))
    heat = None
    for r, i in enumerate(show):
        _show_slice(axes[r, 0], images[i])
        _outline(axes[r, 0], masks[i], GT_STYLE)
        _row_label(axes[r, 0], f"{_label_name(labels[i])} {int(file_ids[i])}")
        for c, entry_maps in enumerate(maps, start=1):
            heat = _show_heatmap(axes[r, c], entry_maps[i])
    for c, title in enumerate(titles):
        axes[0, c].set_title(title, fontsize=10)
    _colorbar(fig, heat, axes, "relevance (0 to 1)")
    fig.suptitle(_entry_title(times_gt), fontsize=11)
    return fig


def draw_deletion_insertion(contents: RunContents) -> Figure:
    """(4) Patient-level mean Deletion and Insertion curves of every method, AUC in the legend, with
    the random map (dotted) and the predicted-mask control (dash-dot) in grey."""
    groups = results.faithfulness_curves(_need(contents.faithfulness))
    if not groups:
        raise MissingInput("faithfulness.json holds no curves")
    fig, axes = _new_figure(len(groups), 2, width=11.0, height=3.6 * len(groups))
    for r, group in enumerate(groups):
        for c, game in enumerate(("deletion", "insertion")):
            ax = axes[r, c]
            for k, curve in enumerate(group.curves):
                points = curve.get(game)
                if points is None:
                    continue
                step, score = points
                style = REFERENCE_STYLES.get(curve.method, REFERENCE_STYLES["random"]) if curve.reference else \
                    {"color": None, "linestyle": LINE_STYLES[k % len(LINE_STYLES)], "marker": MARKERS[k % len(MARKERS)],
                     "linewidth": 1.6}
                ax.plot(step, score, markevery=max(1, len(step) // 6), markersize=4, **style,
                        label=f"{curve.label} (AUC {results.fmt(curve.auc[game])})" if curve.auc.get(game) is not None else curve.label)
            better = "lower is better" if game == "deletion" else "higher is better"
            ax.set_title(f"{game.capitalize()} ({better}); {group.title}", fontsize=10)
            ax.set_xlabel("fraction of pixels " + ("removed" if game == "deletion" else "restored")
                          + " (axis: step k/K)")
            ax.set_ylabel(group.score_label)
            ax.set_xlim(0, 1)
            positions, labels = group.ticks
            if positions:
                ax.set_xticks(positions, labels, fontsize=8)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8, loc="best")
    return fig


def draw_predicted_mask(contents: RunContents) -> Figure:
    """(5) Slices and the predicted mask, with the ground truth for comparison and the Dice; the
    predictions are read from RUN/figures_data/examples.npz (the segmentation stage writes them)."""
    from tumorcam.errors import TumorcamError
    from tumorcam.evaluate.metrics import dice_iou

    prepared = _need(contents.prepared)
    try:
        images, masks, predicted, rows = results.read_examples(contents.run, prepared)
    except TumorcamError as exc:
        raise MissingInput(str(exc)) from None
    import torch

    dice, _ = dice_iou(torch.from_numpy(predicted), torch.from_numpy(masks))
    fig, axes = _new_figure(len(rows), 3)
    for r, row in enumerate(rows):
        _show_slice(axes[r, 0], images[r])
        _row_label(axes[r, 0], f"{_label_name(prepared.labels[row])} {int(prepared.file_ids[row])}")
        axes[r, 1].imshow(predicted[r], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        axes[r, 1].set_xticks([])
        axes[r, 1].set_yticks([])
        _show_slice(axes[r, 2], images[r])
        _outline(axes[r, 2], masks[r], GT_STYLE)
        _outline(axes[r, 2], predicted[r], PRED_STYLE)
        axes[r, 2].set_xlabel(f"Dice {float(dice[r]):.2f}", fontsize=9)
    for c, title in enumerate(("slice", "predicted mask", "ground truth (solid)\nvs prediction (dashed)")):
        axes[0, c].set_title(title, fontsize=10)
    return fig


# --- training, sanity -----------------------------------------------------------------------------

def draw_training_curves(contents: RunContents) -> Figure:
    """Loss and validation scores per epoch (history.json)."""
    epochs, series = results.history_series(_need(contents.history))
    losses = {k: v for k, v in series.items() if "loss" in k}
    scores = {k: v for k, v in series.items() if "loss" not in k}
    if not losses and not scores:
        raise MissingInput("history.json holds no per-epoch numbers")
    panels = [(name, group) for name, group in (("loss", losses), ("validation score", scores)) if group]
    fig, axes = _new_figure(1, len(panels), width=5.2 * len(panels), height=3.4)
    for ax, (ylabel, group) in zip(axes[0], panels):
        for k, (name, values) in enumerate(group.items()):
            ax.plot(epochs, values, linestyle=LINE_STYLES[k % len(LINE_STYLES)], marker=MARKERS[k % len(MARKERS)],
                    markersize=4, label=name)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def draw_sanity(contents: RunContents) -> Figure:
    """Cascading randomisation: similarity of each method's maps to the original, layer by layer."""
    panels = results.sanity_series(_need(contents.sanity))
    if not panels:
        raise MissingInput("sanity.json holds no per-layer similarities")
    fig, axes = _new_figure(1, len(panels), width=5.6 * len(panels), height=4.2)
    for ax, panel in zip(axes[0], panels):
        for k, (label, values) in enumerate(panel.lines.items()):
            ax.plot(range(len(panel.steps)), values, linestyle=LINE_STYLES[k % len(LINE_STYLES)],
                    marker=MARKERS[k % len(MARKERS)], markersize=4, label=label)
        ax.set_xticks(range(len(panel.steps)), panel.steps, rotation=45, ha="right", fontsize=7)
        ax.set_ylim(-1.05 if panel.signed else -0.05, 1.05)
        ax.axhline(0.0, color="0.6", linewidth=0.8)
        if panel.threshold is not None:
            ax.axhline(panel.threshold, color="0.3", linestyle=(0, (6, 3)), linewidth=1.0)
            ax.text(0, panel.threshold + 0.03, "fails at or above", fontsize=7, color="0.3")
        ax.set_ylabel(panel.metric)
        ax.set_xlabel("randomised cumulatively down to (output first)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Sanity check: a faithful map changes as the weights are randomised (values fall)", fontsize=11)
    return fig


FIGURES: tuple[FigureSpec, ...] = (
    FigureSpec("fig1_classes", "Figure 1. One slice per class",
               "A slice of each tumour class from the test split, with the expert's tumour outline.", draw_classes),
    FigureSpec("fig2_untrained_gradcam", "Figure 2. Grad-CAM before fine-tuning",
               "What the network attends to before it was trained on tumours, beside the same explanation after "
               "training. Bright = the pixels that raise the tumour score most.", draw_untrained_gradcam),
    FigureSpec("fig3_gradcam_times_gt", "Figure 3. Grad-CAM and Grad-CAM x ground truth",
               "The explanation, and the explanation kept only inside the expert's tumour outline.", draw_gradcam_times_gt),
    FigureSpec("fig4_deletion_insertion", "Figure 4. Deletion and Insertion",
               "Deletion removes the pixels the map ranks highest first: a faithful map makes the score drop fast "
               "(low AUC). Insertion restores them first: the score should rise fast (high AUC). Each curve is the "
               "mean over patients of each patient's mean curve, drawn over the step k/K (the axis of the AUC; the "
               "ticks give the fraction of pixels). Grey: the random map (dotted) and the predicted-mask control "
               "(dash-dot); a method is only useful where it beats both.", draw_deletion_insertion),
    FigureSpec("fig5_predicted_mask", "Figure 5. Slices and predicted masks",
               "The network's tumour prediction against the expert's outline, with the Dice overlap "
               "(1 = perfect, 0 = no overlap).", draw_predicted_mask),
    FigureSpec("training_curves", "Training curves",
               "Training loss and validation scores per epoch.", draw_training_curves),
    FigureSpec("sanity_check", "Sanity check",
               "The layers are randomised from the output down; an explanation that still looks the same does not "
               "depend on what the network learned and fails the check.", draw_sanity),
)


def make_figures(contents: RunContents, folder: Path) -> list[FigureResult]:
    """Draw every figure into `folder` (PNG); a figure whose input is missing says so instead."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for spec in FIGURES:
        result = FigureResult(spec.key, spec.title, spec.caption)
        (folder / f"{spec.key}.png").unlink(missing_ok=True)  # never show a figure of an earlier run
        try:
            fig = spec.draw(contents)
        except MissingInput as exc:
            result.missing = str(exc)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            result.missing = f"its input does not have the documented shape ({type(exc).__name__}: {exc})"
        else:
            result.path = save_figure(fig, folder / f"{spec.key}.png")
        out.append(result)
    return out
