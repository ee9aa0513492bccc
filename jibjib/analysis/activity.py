"""When each species called, by site, date and hour: activity.tsv and activity.png, from detections.tsv.

activity.tsv: `site`, `date` (YYYY-MM-DD), `hour` (0-23, the hour the
detection starts in, on the recorder's clock), `label`, `detections` (how many
detections of the species started in that hour at that site); sorted by site,
date, hour and label. Detections whose recording has no known start time are
counted on rows with empty `date` and `hour`, so the counts add up to the rows
of detections.tsv.

activity.png: two heat maps with a row per species (with its number of
detections): the share of the species' detections by hour of day (all dates
and sites), and by date. Shares, not counts, so that a rare species shows its
pattern beside a common one.

Counted while streaming detections.tsv: memory grows with sites x days x
species, not with the number of detections or recordings.
"""

from __future__ import annotations

import datetime as dt
import os
from collections import Counter
from pathlib import Path

from jibjib.core import fsutil
from jibjib.analysis.combined import read_detections
from jibjib.analysis.recorders import parse_clock

ACTIVITY_COLUMNS = ("site", "date", "hour", "label", "detections")
Key = tuple[str, str, str, str]  # site, date, hour, label


def count_activity(detections: str | os.PathLike) -> Counter[Key]:
    counts: Counter[Key] = Counter()
    for row in read_detections(detections):
        at = parse_clock(row.get("recorded_at", ""))
        date, hour = (at.date().isoformat(), str(at.hour)) if at else ("", "")
        counts[(row.get("site", ""), date, hour, row["label"])] += 1
    return counts


def _order(item: tuple[Key, int]) -> tuple:
    (site, date, hour, label), _ = item
    return site, date, int(hour) if hour else -1, label


def write_activity(path: Path, counts: Counter[Key]) -> None:
    fsutil.write_rows(path, ACTIVITY_COLUMNS, [[*key, n] for key, n in sorted(counts.items(), key=_order)])


def activity_figure(path: Path, counts: Counter[Key]) -> None:
    """The two heat maps of activity.png (a note instead where nothing is known)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    totals = Counter()
    for (_, _, _, label), n in counts.items():
        totals[label] += n
    species = sorted(totals, key=lambda label: (-totals[label], label))
    known = sorted({date for _, date, _, _ in counts if date})
    # Every day from the first to the last: a day without detections shows as one, not as a gap closed up.
    first, last = (dt.date.fromisoformat(known[0]), dt.date.fromisoformat(known[-1])) if known else (None, None)
    dates = [(first + dt.timedelta(days=d)).isoformat() for d in range((last - first).days + 1)] if known else []
    timed = any(date for _, date, _, _ in counts)
    by_hour, by_date = np.zeros((len(species), 24)), np.zeros((len(species), max(len(dates), 1)))
    row = {label: i for i, label in enumerate(species)}
    column = {date: i for i, date in enumerate(dates)}
    for (_, date, hour, label), n in counts.items():
        if date:
            by_hour[row[label], int(hour)] += n
            by_date[row[label], column[date]] += n
    height = min(2.0 + 0.28 * max(len(species), 1), 60.0)
    fig, axes = plt.subplots(1, 2, figsize=(13, height), width_ratios=[1, 1.4], squeeze=False)
    names = [f"{label} ({totals[label]})" for label in species]
    for ax, table, title in ((axes[0, 0], by_hour, "by hour of day"), (axes[0, 1], by_date, "by date")):
        if not timed or not species:
            ax.text(0.5, 0.5, "no detections" if not species else "no recorder times known",
                    ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
            continue
        share = table / np.maximum(table.sum(axis=1, keepdims=True), 1)
        image = ax.imshow(share, aspect="auto", cmap="viridis", interpolation="nearest", vmin=0)
        ax.set_yticks(range(len(species)), names if ax is axes[0, 0] else [""] * len(species), fontsize=8)
        ax.set_title(f"Share of each species' detections {title}")
        fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02)
    if timed and species:
        axes[0, 0].set_xticks(range(0, 24, 3))
        axes[0, 0].set_xlabel("hour (recorder clock)")
        step = max(1, len(dates) // 12)
        axes[0, 1].set_xticks(range(0, len(dates), step), dates[::step], rotation=45, ha="right", fontsize=8)
    fig.tight_layout()
    fsutil.atomic_save(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)


def write_activity_outputs(out_dir: Path, detections: Path) -> Counter[Key]:
    """activity.tsv and activity.png in out_dir; returns the counts."""
    counts = count_activity(detections)
    write_activity(out_dir / "activity.tsv", counts)
    activity_figure(out_dir / "activity.png", counts)
    return counts
