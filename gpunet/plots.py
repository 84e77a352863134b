"""Training curves: loss and accuracy per epoch, train and validation, saved as a PNG.

matplotlib is imported only here, and only when a plot is drawn. The figure is drawn on an Agg canvas
directly (no pyplot, no display, no change to the user's global backend), so headless training works
and `import gpunet` never pays for matplotlib.
"""
from __future__ import annotations

from pathlib import Path


def _two_panels():
    """A 10x4 inch figure with two side-by-side axes, on its own Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, 2)


def _save(fig, path, title: str | None) -> Path:
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    return path


def plot_history(history: list[dict], path, title: str | None = None) -> Path:
    """Write a two-panel figure (loss | accuracy, train and val) of `history` to `path`."""
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = _two_panels()
    for ax, key, label in ((ax_loss, "loss", "loss"), (ax_acc, "acc", "accuracy (%)")):
        scale = 100.0 if key == "acc" else 1.0
        ax.plot(epochs, [scale * h[f"train_{key}"] for h in history], "o-", label="train")
        val = [(e, scale * h[f"val_{key}"]) for e, h in zip(epochs, history) if h.get(f"val_{key}") is not None]
        if val:
            ax.plot(*zip(*val), "s-", label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.legend()
    return _save(fig, path, title)


def plot_health(history: list[dict], path, title: str | None = None) -> Path:
    """Write the training monitor's per-layer curves (gpunet.diagnostics.TrainingMonitor, `--monitor`):
    update/parameter norm ratio per weight (log scale, the healthy ~1e-3 marked) and the dead-ReLU share
    per ReLU layer, against the epoch. Epochs without monitor data (e.g. before a resume) are skipped."""
    rows = [h for h in history if "update_ratio" in h]
    fig, (ax_up, ax_dead) = _two_panels()
    for key, ax in (("update_ratio", ax_up), ("dead_relu", ax_dead)):
        names = sorted({n for h in rows for n in h.get(key, {})})
        for name in names:
            pts = [(h["epoch"], h[key][name]) for h in rows if name in h.get(key, {})]
            ax.plot(*zip(*pts), "o-", label=name, markersize=3)
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
        if names:
            ax.legend(fontsize=7)
    ax_up.set_yscale("log")
    ax_up.axhline(1e-3, color="grey", linestyle="--", linewidth=1)
    ax_up.set_ylabel("||update|| / ||weight||")
    ax_dead.set_ylabel("dead ReLU units (share)")
    ax_dead.set_ylim(-0.02, 1.02)
    return _save(fig, path, title)


def plot_confusion(matrix, path, title: str | None = None, class_names=None) -> Path:
    """Write the confusion matrix (rows true class, columns prediction) as a heat map, each cell coloured by
    its share of its row (the class's recall there) and labelled with its count (up to 20 classes)."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cm = np.asarray(matrix, dtype=np.int64)
    k = cm.shape[0]
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig = Figure(figsize=(max(4.5, 0.5 * k + 2), max(4, 0.5 * k + 1.5)))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, label="share of the true class")
    names = [str(c) for c in (class_names if class_names is not None else range(k))]
    ax.set_xticks(range(k), names)
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if k <= 20:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if share[i, j] > 0.5 else "black")
    return _save(fig, path, title)
