"""Where guidance helps across a dataset: an evaluation run's samples (`sam_core.evaluation_run`) grouped by N, by
task, by how much SAM's guidance weights α concentrate on the linked object, and the alignment of both modes'
visual tokens. Each view is a table (the data behind its figure, for download) and a figure.

Differences are SAM minus the baseline on the same samples, with 95% bootstrap intervals of the mean per-sample
difference; CIDEr is the mean of per-sample CIDEr (scored within each task, as the metrics table scores it).
"""

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure

from sam_core.data import TASKS
from sam_core.evaluation_run import OUTCOMES, SampleResult
from sam_core.metrics import bootstrap_interval
from sam_core.modeling import SamVisualTokens

from .alignment import alignment
from .common import BASELINE_COLOUR, DPI, SAM_COLOUR

OUTCOME_COLOURS = {"sam only": SAM_COLOUR, "baseline only": BASELINE_COLOUR, "both": "#4d9221", "neither": "#9e9e9e"}


@dataclass
class DatasetView:
    """One aggregate view: `rows` are the numbers the figure draws; `note` says how to read it."""

    name: str  # file stem: by_images, by_task, by_alpha, alignment
    title: str
    note: str
    rows: list[dict]
    figure: Figure | None


def alignment_measure(visual: dict[str, SamVisualTokens]) -> list[dict[str, float]]:
    """Per sample of a batch, the alignment score (mean cross-image cosine similarity of the visual tokens,
    `visualization.alignment`) of each mode; a measure hook for `run_evaluation`."""
    batch = visual["sam"].visual_tokens.shape[0]
    scores = []
    for sample in range(batch):
        values = {f"alignment_{mode}": alignment(visual[mode], sample).score for mode in ("sam", "baseline")}
        scores.append({key: value for key, value in values.items() if np.isfinite(value)})
    return scores


def mean_difference(values: list[float]) -> dict[str, float]:
    low, high = bootstrap_interval(values) if len(values) > 1 else (values[0], values[0])
    return {"difference": float(np.mean(values)), "low": low, "high": high}


def group_row(label: str, samples: list[SampleResult]) -> dict:
    """n, accuracy (%) and mean CIDEr per mode, and SAM − baseline with its interval, over some samples."""
    row = {"group": label, "n": len(samples)}
    if all(s.correct is not None for s in samples):
        for mode in ("sam", "baseline"):
            row[f"accuracy_{mode}"] = 100.0 * float(np.mean([s.correct[mode] for s in samples]))
        gain = mean_difference([100.0 * (s.correct["sam"] - s.correct["baseline"]) for s in samples])
        row.update({f"accuracy_{key}": value for key, value in gain.items()})
    for mode in ("sam", "baseline"):
        row[f"cider_{mode}"] = float(np.mean([s.cider[mode] for s in samples]))
    row.update({f"cider_{key}": value for key, value in mean_difference([s.cider_difference for s in samples]).items()})
    return row


def grouped(samples: list[SampleResult], key: Callable[[SampleResult], object], order=None) -> list[tuple[object, list[SampleResult]]]:
    groups: dict = {}
    for sample in samples:
        groups.setdefault(key(sample), []).append(sample)
    return sorted(groups.items(), key=lambda item: item[0] if order is None else order(item[0]))


def new_chart(columns: int, width: float, height: float, margins: tuple[float, float, float, float],
              wspace: float = 0.2) -> tuple[Figure, np.ndarray]:
    """A matplotlib figure with one row of `columns` axes and margins (left, right, top, bottom) in inches, laid out
    by hand (a layout engine costs more than these charts). The views' maps are drawn on a pixel canvas instead;
    bar charts and scatter plots are matplotlib's job."""
    left, right, top, bottom = margins
    height += top + bottom
    figure = Figure(figsize=(width, height), dpi=DPI)
    grid = figure.add_gridspec(1, columns, left=left / width, right=1 - right / width, top=1 - top / height,
                               bottom=bottom / height, wspace=wspace)
    return figure, grid.subplots(squeeze=False)


def chart_png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, pil_kwargs={"compress_level": 1})
    return buffer.getvalue()


def task_order(task: str) -> tuple[int, str]:
    """MiniLINK's tasks in their usual order, any other task after them by name."""
    return (TASKS.index(task) if task in TASKS else len(TASKS), task)


def plot_groups(rows: list[dict], xlabel: str) -> Figure:
    """Per group: accuracy per mode (mean CIDEr where accuracy is not defined), then SAM − baseline with its 95%
    interval in accuracy points (where defined) and in CIDEr."""
    accuracy = "accuracy_sam" in rows[0]
    level = "accuracy" if accuracy else "cider"
    differences = ["accuracy", "cider"] if accuracy else ["cider"]
    figure, axes = new_chart(1 + len(differences), width=3.2 * (1 + len(differences)), height=2.3,
                             margins=(0.5, 0.1, 0.3, 0.75), wspace=0.3)
    positions = np.arange(len(rows))
    labels = [f"{row['group']}\n(n={row['n']})" for row in rows]
    first = axes[0, 0]
    for offset, mode, colour in ((-0.2, "baseline", BASELINE_COLOUR), (0.2, "sam", SAM_COLOUR)):
        first.bar(positions + offset, [row[f"{level}_{mode}"] for row in rows], width=0.4, color=colour,
                  label="SAM" if mode == "sam" else "baseline")
    first.set_title("task accuracy (%)" if accuracy else "mean CIDEr", fontsize=8)
    first.legend(frameon=False, fontsize=7)
    for ax, metric in zip(axes[0, 1:], differences):
        values = np.array([row[f"{metric}_difference"] for row in rows])
        spread = np.array([[row[f"{metric}_difference"] - row[f"{metric}_low"], row[f"{metric}_high"] - row[f"{metric}_difference"]]
                           for row in rows]).T
        ax.bar(positions, values, color=[SAM_COLOUR if v >= 0 else BASELINE_COLOUR for v in values], width=0.55)
        ax.errorbar(positions, values, yerr=spread, fmt="none", ecolor="black", elinewidth=0.8, capsize=2)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_title(f"SAM − baseline, {'accuracy points' if metric == 'accuracy' else 'CIDEr'} (95% CI)", fontsize=8)
    for ax in axes[0]:
        ax.set_xticks(positions, labels, fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
    axes[0, 0].set_xlabel(xlabel, fontsize=8)
    return figure


def alpha_bins(samples: list[SampleResult], bins: int = 4) -> list[tuple[str, list[SampleResult]]]:
    """Samples sorted by how many times chance SAM's α concentrates on the linked object, cut into up to `bins`
    groups of (nearly) equal size with at least 5 samples each, labelled by their range."""
    ranked = sorted((s for s in samples if s.alpha_lift is not None), key=lambda s: s.alpha_lift)
    if not ranked:
        return []
    count = max(1, min(bins, len(ranked) // 5))
    edges = [round(i * len(ranked) / count) for i in range(count + 1)]
    chunks = [ranked[a:b] for a, b in zip(edges, edges[1:])]
    return [(f"{chunk[0].alpha_lift:.2f}–{chunk[-1].alpha_lift:.2f}×", chunk) for chunk in chunks]


def plot_alignment_scatter(samples: list[SampleResult]) -> Figure:
    """Each sample's alignment score under the baseline (x) and SAM (y), coloured by who answered right."""
    figure, axes = new_chart(1, width=5.6, height=3.0, margins=(0.65, 2.1, 0.3, 0.55))
    ax = axes[0, 0]
    for outcome, label in list(OUTCOMES.items()) + [(None, "accuracy not defined")]:
        chosen = [s for s in samples if s.outcome == outcome]
        if chosen:
            ax.scatter([s.measures["alignment_baseline"] for s in chosen], [s.measures["alignment_sam"] for s in chosen],
                       s=12, color=OUTCOME_COLOURS.get(outcome, "#4d4d4d"), label=label, alpha=0.8)
    low = min(min(s.measures["alignment_baseline"], s.measures["alignment_sam"]) for s in samples)
    ax.plot([low, 1], [low, 1], color="black", linewidth=0.6, linestyle="--")
    ax.set_xlabel("baseline alignment", fontsize=8)
    ax.set_ylabel("SAM alignment", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(frameon=False, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    ax.set_title("alignment per sample (above the line: SAM's agree more)", fontsize=8)
    return figure


def alignment_rows(samples: list[SampleResult]) -> list[dict]:
    """Mean alignment per mode and SAM − baseline, for all samples and per outcome."""
    groups = [("all samples", samples)] + [(OUTCOMES[o], [s for s in samples if s.outcome == o]) for o in OUTCOMES]
    rows = []
    for label, chosen in groups:
        if not chosen:
            continue
        row = {"group": label, "n": len(chosen)}
        for mode in ("sam", "baseline"):
            row[f"alignment_{mode}"] = float(np.mean([s.measures[f"alignment_{mode}"] for s in chosen]))
        differences = [s.measures["alignment_sam"] - s.measures["alignment_baseline"] for s in chosen]
        row.update({f"alignment_{key}": value for key, value in mean_difference(differences).items()})
        rows.append(row)
    return rows


def dataset_views(samples: list[SampleResult]) -> list[DatasetView]:
    """Every view the samples support (α needs MiniLINK's object positions; alignment needs N > 1)."""
    views = []
    if not samples:
        return views
    by_images = [group_row(f"N={n}", chosen) for n, chosen in grouped(samples, lambda s: s.prediction.num_images)]
    views.append(DatasetView("by_images", "By number of images", "Does guidance help more when there are more images to link?",
                             by_images, plot_groups(by_images, "images per sample")))
    by_task = [group_row(task, chosen) for task, chosen in grouped(samples, lambda s: s.prediction.task, task_order)]
    views.append(DatasetView("by_task", "By task", "Group captioning, storytelling and questions side by side.",
                             by_task, plot_groups(by_task, "task")))
    bins = alpha_bins(samples)
    if bins:
        by_alpha = [group_row(label, chosen) for label, chosen in bins]
        views.append(DatasetView(
            "by_alpha", "By where the guidance weights α point",
            "Samples in four equal groups by how many times chance SAM's α puts weight on the linked object's patches "
            "(1× = no more than uniform weights over the images). If guidance helps by selecting the linked object, "
            "SAM's gain should grow from left to right.",
            by_alpha, plot_groups(by_alpha, "α on the linked object (× chance)")))
    aligned = [s for s in samples if {"alignment_sam", "alignment_baseline"} <= set(s.measures)]
    if aligned:
        views.append(DatasetView(
            "alignment", "Alignment of the visual tokens",
            "Mean cross-image cosine similarity of each mode's visual tokens (1 = all images give the same tokens), "
            "per sample and by who answered right.",
            alignment_rows(aligned), plot_alignment_scatter(aligned)))
    return views
