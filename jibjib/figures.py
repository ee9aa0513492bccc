"""The evaluation figures: confusion matrix, reliability diagram, training curves.

Written with matplotlib's non-interactive Agg backend (no display needed) and
renamed into place like every other output.
"""

from __future__ import annotations

import os
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from . import fsutil  # noqa: E402


def _save(figure: plt.Figure, path: str | os.PathLike) -> None:
    fsutil.atomic_save(path, lambda tmp: figure.savefig(tmp, dpi=110, bbox_inches="tight", format="png"))
    plt.close(figure)


def confusion_matrix(path: str | os.PathLike, counts: np.ndarray, classes: list[str], title: str) -> None:
    """Row-normalised (recall) colours, counts written in the cells while they stay legible.

    The figure grows with the number of classes (about 0.22 inch per class),
    so 200 species still get one readable label per row and column.
    """
    n = len(classes)
    side = max(4.0, 0.22 * n + 2.0)
    figure, ax = plt.subplots(figsize=(side + 1.0, side))
    totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(totals > 0, counts / np.maximum(totals, 1), np.nan)
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    font = 9.0 if n <= 30 else 7.0  # a 0.22 inch row holds 7 pt text
    ax.set_xticks(range(n), classes, rotation=90, fontsize=font)
    ax.set_yticks(range(n), classes, fontsize=font)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if n <= 30:
        for i, j in zip(*np.nonzero(counts)):
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=font,
                    color="white" if share[i, j] > 0.5 else "black")
    figure.colorbar(image, ax=ax, fraction=0.04, pad=0.02, label="share of the true class's files")
    _save(figure, path)


def reliability_diagram(path: str | os.PathLike, tables: dict[str, dict[str, Any]], temperature: float) -> None:
    """Accuracy against confidence per bin, before and after temperature scaling."""
    figure, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
    for name, style in (("uncalibrated", "o-"), ("calibrated", "s--")):
        bins = [b for b in tables[name]["bins"] if b["count"]]
        ece = tables[name]["ece"]
        label = f"{name}{f' (T={temperature:.2f})' if name == 'calibrated' else ''}, ECE {ece:.3f}" if ece is not None else name
        ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], style, label=label)
    # A little margin, so points at accuracy 1 are not cut by the frame.
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.04)
    ax.set_xlabel("confidence (top-1 file score)")
    ax.set_ylabel("accuracy")
    ax.set_title("Reliability on the test files")
    ax.legend(loc="upper left", fontsize=8)
    _save(figure, path)


def training_curves(path: str | os.PathLike, history: pd.DataFrame, model: str) -> None:
    """Loss and accuracy per epoch, training and validation."""
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for column, style in ((metric, "o-"), (f"val_{metric}", "s--")):
            if column in history and len(history):
                ax.plot(history["epoch"], history[column], style, label=column)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.set_title(f"{model}: {metric}")
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    _save(figure, path)
