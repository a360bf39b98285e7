"""Pictures: training curves from the metrics log, precision/recall curves, boxes drawn.

Figures are made with matplotlib's object API (``Figure`` + the Agg canvas), not pyplot's
process-wide figure list, and collected as soon as they are written: a figure is a web of
reference cycles that only the cyclic garbage collector frees, late, and a run that drew its
curves after every epoch grew by 1.5-2 MB an epoch with them (docs/performance.md, "Memory
across epochs").
"""
import gc

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from src.files import atomic_path

# Per-step curves longer than this are drawn as the means of equal runs of consecutive steps:
# a COCO run logs ~3,700 steps an epoch, and the curves are redrawn after every epoch.
PLOT_POINTS = 4000


def subplots(columns: int = 1, figsize=(7, 5.5)):
    """(figure, axes) of a new Agg figure with ``columns`` axes in a row (one: an Axes)."""
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, columns)
    return fig, axes


def style_axes(ax, xlabel, ylabel, title, legend=True, **legend_options):
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.set_title(title)
    if legend:
        ax.legend(**legend_options)


def save_figure(fig, png_path):
    """Write a figure as PNG atomically (readers never see a half-written file)."""
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    fig.clear()
    gc.collect()
    return png_path


def thinned(x: np.ndarray, values: np.ndarray, points: int = PLOT_POINTS) -> tuple:
    """(x, values) as at most ``points`` points: unchanged when short enough, else the means
    of ``points`` runs of consecutive entries (as equal in length as they can be)."""
    if len(x) <= points:
        return x, values
    starts = np.linspace(0, len(x), points + 1).astype(int)[:-1]
    lengths = np.diff(np.append(starts, len(x)))
    return (np.add.reduceat(np.asarray(x, float), starts) / lengths,
            np.add.reduceat(np.asarray(values, float), starts) / lengths)


def epoch_means(epochs: np.ndarray, x: np.ndarray, values: np.ndarray) -> tuple:
    """(each epoch's last x, each epoch's mean value), epochs in increasing order."""
    _, index = np.unique(epochs, return_inverse=True)
    ends = np.full(index.max() + 1, -np.inf)
    np.maximum.at(ends, index, x)
    return ends, np.bincount(index, weights=values) / np.bincount(index)


def plot_training_curves(rows, png_path):
    """Loss (total, classification, localisation) per step with per-epoch means, the lr, and
    the mAP of evaluations during training if there were any.

    ``rows``: the training log's rows (``src.train.run_log``); writes the PNG atomically.
    Returns its path, or None when the log has no steps yet. Beyond PLOT_POINTS steps the
    per-step lines are ``thinned``; the epoch means use every step.
    """
    steps = [r for r in rows if r.get("kind") == "step" and r.get("finite", True)]
    evals = [r for r in rows if r.get("kind") == "eval"]
    if not steps:
        return None
    x = np.array([r["global_step"] for r in steps])
    epochs = np.array([r["epoch"] for r in steps])
    fig, axes = subplots(3 if evals else 2, figsize=(18 if evals else 12, 4.5))
    ax_loss, ax_lr = axes[0], axes[1]
    for key, colour in (("loss", "C0"), ("cls_loss", "C1"), ("loc_loss", "C2")):
        values = np.array([r[key] for r in steps], float)
        ax_loss.plot(*thinned(x, values), color=colour, alpha=0.3, linewidth=0.8)
        ax_loss.plot(*epoch_means(epochs, x, values), color=colour, marker="o",
                     label=f"{key} (epoch mean)")
    ax_loss.set_yscale("log")
    style_axes(ax_loss, "step", "loss", "Training loss")
    ax_lr.plot(*thinned(x, np.array([r["lr"] for r in steps], float)), color="C3")
    style_axes(ax_lr, "step", "learning rate", "Learning rate", legend=False)
    if evals:
        ax_map = axes[2]
        for key, colour in (("mAP", "C4"), ("AP50", "C5")):
            ax_map.plot([r["epoch"] for r in evals], [r[key] for r in evals], color=colour,
                        marker="o", label=key)
        style_axes(ax_map, "epoch", "COCO AP", "Evaluation during training")
    return save_figure(fig, png_path)


def plot_pr_curves(result, png_path, title="Precision / recall at IoU 0.5"):
    """Per-category precision/recall curves at IoU 0.5 (thin) and their mean (thick), from a
    ``src.metrics.CocoResult``. Returns the path, or None without curves."""
    if result.recall is None or not result.precision50:
        return None
    fig, ax = subplots(figsize=(7, 5.5))
    curves = []
    for category, precision in sorted(result.precision50.items()):
        if np.all(np.isnan(precision)):
            continue
        curves.append(precision)
        ap50 = result.per_class[category]["AP50"]
        ax.plot(result.recall, precision, linewidth=0.8, alpha=0.6,
                label=f"{result.per_class[category]['name']} ({ap50:.3f})"
                if len(result.precision50) <= 12 else None)
    if curves:
        mean = np.nanmean(np.stack(curves), axis=0)
        ax.plot(result.recall, mean, color="black", linewidth=2.2,
                label=f"mean (AP50 {result.stats[1]:.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    style_axes(ax, "recall", "precision", title, fontsize=8, loc="lower left")
    return save_figure(fig, png_path)


PALETTE = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128),
           (220, 190, 255), (170, 110, 40), (128, 0, 0), (170, 255, 195), (128, 128, 0),
           (0, 0, 128))


def draw_detections(image_bgr, boxes, scores, classes, class_names):
    """A copy of a BGR image with boxes (pixel y-first corners), class names and scores drawn."""
    import cv2

    canvas = image_bgr.copy()
    height, width = canvas.shape[:2]
    thickness = max(1, round(min(height, width) / 250))
    scale = max(0.4, min(height, width) / 900)
    for (y1, x1, y2, x2), score, cls in zip(boxes, scores, classes):
        r, g, b = PALETTE[int(cls) % len(PALETTE)]
        colour = (b, g, r)
        p1 = (int(round(x1)), int(round(y1)))
        p2 = (int(round(x2)), int(round(y2)))
        cv2.rectangle(canvas, p1, p2, colour, thickness)
        name = class_names[cls] if cls < len(class_names) else f"class_{cls}"
        text = f"{name} {score:.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        top = max(p1[1] - th - base - 2, 0)
        cv2.rectangle(canvas, (p1[0], top), (p1[0] + tw + 4, top + th + base + 2), colour, -1)
        cv2.putText(canvas, text, (p1[0] + 2, top + th + 1), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    (255, 255, 255), 1, cv2.LINE_AA)
    return canvas
