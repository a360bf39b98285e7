"""Pictures: training curves from the metrics log."""
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402


def read_jsonl(path):
    rows = []
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
    return rows


def plot_training_curves(log_path, png_path):
    """Loss (total, classification, localisation) per step with per-epoch means, and the lr.

    Reads the step rows of the JSON-lines log; writes the PNG atomically. Returns its path, or
    None when the log has no steps yet.
    """
    steps = [r for r in read_jsonl(log_path) if r.get("kind") == "step"]
    if not steps:
        return None
    x = np.array([r["global_step"] for r in steps])
    epochs = np.array([r["epoch"] for r in steps])
    fig, (ax_loss, ax_lr) = plt.subplots(1, 2, figsize=(12, 4.5))
    for key, colour in (("loss", "C0"), ("cls_loss", "C1"), ("loc_loss", "C2")):
        values = np.array([r[key] for r in steps], float)
        ax_loss.plot(x, values, color=colour, alpha=0.3, linewidth=0.8)
        ends = [x[epochs == e].max() for e in np.unique(epochs)]
        means = [values[epochs == e].mean() for e in np.unique(epochs)]
        ax_loss.plot(ends, means, color=colour, marker="o", label=f"{key} (epoch mean)")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss")
    ax_loss.set_yscale("log")
    ax_loss.grid(True, alpha=0.3)
    ax_loss.legend()
    ax_loss.set_title("Training loss")
    ax_lr.plot(x, [r["lr"] for r in steps], color="C3")
    ax_lr.set_xlabel("step")
    ax_lr.set_ylabel("learning rate")
    ax_lr.grid(True, alpha=0.3)
    ax_lr.set_title("Learning rate")
    fig.tight_layout()
    tmp = f"{png_path}.tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, png_path)
    return png_path
