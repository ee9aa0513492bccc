"""The evaluation figures: confusion matrix, reliability diagram, training curves, soundscape strip.

Written with matplotlib's non-interactive Agg backend (no display needed) and
renamed into place like every other output.
"""

from __future__ import annotations

import math
import os
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from jibjib.core import fsutil  # noqa: E402


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


def reliability_diagram(path: str | os.PathLike, tables: dict[str, Any], temperature: float) -> None:
    """Accuracy against confidence per bin, before and after temperature scaling: of the top-1 file score, or
    with `tables["kind"] == "classwise"` of every class's score on every file (the bins of all pairs pooled,
    the legend's ECE the classwise one)."""
    classwise = tables.get("kind") == "classwise"
    figure, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
    for name, style in (("uncalibrated", "o-"), ("calibrated", "s--")):
        bins = [b for b in tables[name]["bins"] if b["count"]]
        ece = tables[name]["ece"]
        kind = "classwise ECE" if classwise else "ECE"
        label = f"{name}{f' (T={temperature:.2f})' if name == 'calibrated' else ''}, {kind} {ece:.3f}" if ece is not None else name
        ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], style, label=label)
    # A little margin, so points at accuracy 1 are not cut by the frame.
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.04)
    ax.set_xlabel("file score, every class" if classwise else "confidence (top-1 file score)")
    ax.set_ylabel("share of files holding the class" if classwise else "accuracy")
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


def soundscape_strip(path: str | os.PathLike, samples: np.ndarray, sample_rate: int, offset: float,
                     calls: list[Any], tracks: list[dict[str, Any]], title: str) -> None:
    """A spectrogram strip with the annotated calls boxed in their species' colours, over one lane per species.

    `calls` have start, end, label, low_hz and high_hz (None: the full
    height); each track has label, centres and scores (per window),
    threshold and detections [(start, end, true)].  In a lane the upper
    bar marks annotated calls, the lower one detections (dark: true, a hit on a
    call of the species; red: false), the line the window score against the
    dashed threshold.
    """
    import scipy.signal

    # tab10 without its red (false detections) and grey (the spectrogram's own).
    palette = [plt.get_cmap("tab10")(i) for i in range(10) if i not in (3, 7)]
    colours = {t["label"]: palette[i % len(palette)] for i, t in enumerate(tracks)}
    seconds = samples.size / sample_rate
    figure, (ax, lanes) = plt.subplots(
        2, 1, figsize=(15, 3.6 + 0.42 * max(1, len(tracks))), sharex=True,
        gridspec_kw={"height_ratios": [3.6, 0.42 * max(1, len(tracks))], "hspace": 0.06})
    nperseg = 1 << int(round(math.log2(0.023 * sample_rate)))  # about 23 ms: syllables stay sharp in time
    freqs, times, power = scipy.signal.spectrogram(samples, sample_rate, nperseg=nperseg, noverlap=nperseg // 2)
    top = min(sample_rate / 2, 10000.0)
    keep = freqs <= top
    db = 10.0 * np.log10(power[keep] + 1e-12)
    # Stretch the colours over the upper part: the bed greys out, calls stand out.
    ax.imshow(db, origin="lower", aspect="auto", cmap="Greys", interpolation="nearest",
              vmin=np.percentile(db, 30), vmax=np.percentile(db, 99.9),
              extent=(offset, offset + seconds, 0.0, freqs[keep][-1] / 1000.0))
    for call in calls:
        colour = colours.get(call.label, "tab:gray")
        low = (call.low_hz or 0.0) / 1000.0
        high = (call.high_hz if call.high_hz is not None else top) / 1000.0
        ax.add_patch(plt.Rectangle((call.start, low), call.end - call.start, high - low, fill=False,
                                   edgecolor=colour, linewidth=1.6))
    ax.set_ylim(0.0, top / 1000.0)
    ax.set_ylabel("kHz")
    ax.set_title(title)
    for row, track in enumerate(reversed(tracks)):
        colour = colours[track["label"]]
        for call in (c for c in calls if c.label == track["label"]):
            lanes.add_patch(plt.Rectangle((call.start, row + 0.55), call.end - call.start, 0.35,
                                          facecolor=colour, edgecolor="none", alpha=0.75))
        for start, end, correct in track["detections"]:
            lanes.add_patch(plt.Rectangle((start, row + 0.1), end - start, 0.35, edgecolor="none",
                                          facecolor="#333333" if correct else "#d62728"))
        lanes.plot(track["centres"], row + 0.05 + 0.9 * np.clip(track["scores"], 0.0, 1.0), color=colour,
                   linewidth=0.8)
        if not math.isnan(track["threshold"]):
            lanes.axhline(row + 0.05 + 0.9 * track["threshold"], color=colour, linewidth=0.7, linestyle="--")
        lanes.axhline(row, color="#cccccc", linewidth=0.5)
    lanes.set_ylim(0.0, max(1, len(tracks)))
    lanes.set_yticks([row + 0.5 for row in range(len(tracks))],
                     [t["label"].replace("_", " ") for t in reversed(tracks)], fontsize=8)
    # The names take their boxes' colours: the key to the spectrogram.
    for tick, track in zip(lanes.get_yticklabels(), reversed(tracks)):
        tick.set_color(colours[track["label"]])
    lanes.set_xlim(offset, offset + seconds)
    lanes.set_xlabel("seconds into the file")
    handles = [plt.Rectangle((0, 0), 1, 1, facecolor="tab:blue", alpha=0.75, label="annotated call"),
               plt.Rectangle((0, 0), 1, 1, facecolor="#333333", label="detection"),
               plt.Rectangle((0, 0), 1, 1, facecolor="#d62728", label="false detection"),
               plt.Line2D([], [], color="tab:blue", linewidth=0.8, label="window score (lane = 0-1)"),
               plt.Line2D([], [], color="tab:blue", linewidth=0.7, linestyle="--", label="window threshold")]
    figure.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.04), ncol=5, fontsize=8, frameon=False)
    _save(figure, path)
