"""The tables of `jibjib analyze`: detections.tsv, a Raven selection table or Audacity labels per file, files.tsv.

detections.tsv: one row per detection, columns `file` (path relative to the
analysed folder), `start`, `end` (seconds), `label`, `score` (the window's
probability; with merging the highest of the run), `site` and `recorded_at`
(the recorder's clock at the detection's start, ISO 8601, empty when the
recording's start time is unknown; jibjib.analysis.recorders), and
`external_id` when the labels have one; sorted by file, start and label.  A
detection is a window whose score for a species reaches that species' window
threshold (thresholds.tsv, column window_threshold; a species without one is
never detected, nor is one a species list leaves out), or with a minimum score
that value for every species.  Merging joins consecutive detections of one
species (each starting before the previous one ends) into one row from the
first one's start to the last one's end.

`<file without extension>.jibjib.selections.txt` (Raven Pro): Selection, View,
Channel, Begin Time (s), End Time (s), Low Freq (Hz), High Freq (Hz) (the
model's mel range), the label column (`Species` unless named otherwise),
Score; one per analysed file, header only when nothing was detected.  Audacity
instead: `<file without extension>.jibjib.labels.txt`, `start<TAB>end<TAB>label
(score)` lines.  The `.jibjib` keeps them apart from the human tables
(`<file>.selections.txt`) that the soundscape evaluation reads.  The tables
for a whole deployment (Raven's multi-file table, Kaleidoscope, CSV) are
jibjib.analysis.combined's.

files.tsv: every input file with `status` (analysed, reused: its scores were
current, rejected, ignored), `reason`, `detail`, `seconds`, `sample_rate`,
`channels`, `windows`, `detections` (how many the file got: 0 is "no species", nothing reached its
threshold), `table` (the per-file table written, the Raven one when there are two), `sha256` (the content
analysed), `site`, `recorded_at` (the recorder's clock at the file's start) and `path` (the file as found,
absolute, links not followed).  The workflow's shard jobs write the same columns to their manifests.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from jibjib.core import fsutil
from jibjib.core.errors import InputError
from jibjib.analysis.recorders import clock
from jibjib.analysis.scores import WindowScores

# Table formats: raven and audacity also write a table per file; all but audacity a table for all files.
FORMATS = ("raven", "audacity", "kaleidoscope", "csv")
PER_FILE_FORMATS = ("raven", "audacity")
TABLE_SUFFIX = {"raven": ".jibjib.selections.txt", "audacity": ".jibjib.labels.txt"}
DEFAULT_LABEL_COLUMN = "Species"
RAVEN_SELECTION = ("Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)",
                   "High Freq (Hz)")
RAVEN_COLUMNS = (*RAVEN_SELECTION, DEFAULT_LABEL_COLUMN, "Score")
FILE_COLUMNS = ("file", "status", "reason", "detail", "seconds", "sample_rate", "channels", "windows",
                "detections", "table", "sha256", "site", "recorded_at", "path")


def parse_formats(values: Sequence[str] | str) -> tuple[str, ...]:
    """Table formats from the command line or the config: names, each possibly comma-separated; InputError
    naming one that is not a format."""
    names = []
    for value in [values] if isinstance(values, str) else values:
        for name in (part.strip() for part in value.split(",")):
            if name not in FORMATS:
                raise InputError(f"--format: {name!r} is not one of {', '.join(FORMATS)}")
            if name not in names:
                names.append(name)
    if not names:
        raise InputError(f"--format: name one or more of {', '.join(FORMATS)}")
    return tuple(names)


def check_label_column(name: str) -> str:
    """A Raven column name for the labels: not empty, no tab or line break, not one of Raven's own columns."""
    if not name.strip() or any(c in name for c in "\t\r\n") or name in (*RAVEN_SELECTION, "Score", "Begin Path",
                                                                       "File Offset (s)", "Begin File"):
        raise InputError(f"--label-column: {name!r} cannot name the label column of a Raven table")
    return name


def detections(start: np.ndarray, end: np.ndarray, score: np.ndarray,
               threshold: float) -> list[tuple[float, float, float]]:
    """(start, end, highest score) of each run of consecutive windows scoring at least `threshold`,
    each window of a run starting before the previous one ends."""
    order = np.argsort(start, kind="stable")
    s, e, x = start[order], end[order], score[order]
    hit = x >= threshold  # NaN compares false: no threshold, no detection
    joined = np.r_[False, hit[:-1] & hit[1:] & (s[1:] <= e[:-1] + 1e-9)]
    firsts = np.flatnonzero(hit & ~joined)
    lasts = np.flatnonzero(hit & ~np.r_[joined[1:], False])
    return [(float(s[f]), float(e[f : l + 1].max()), float(x[f : l + 1].max())) for f, l in zip(firsts, lasts)]


def read_window_thresholds(path: str | os.PathLike, column: str = "window_threshold") -> dict[str, float]:
    """Label -> window threshold (NaN where none was fitted) from thresholds.tsv."""
    table = pd.read_csv(path, sep="\t", keep_default_na=False, na_values=["nan", "NaN", ""])
    if "label" not in table.columns or column not in table.columns:
        hint = (" (written before window thresholds existed: evaluate and export the model again, or give a "
                "minimum score)") if "label" in table.columns and column == "window_threshold" else ""
        raise InputError(f"{path}: expected columns label and {column}{hint}")
    return dict(zip(table["label"].astype(str), pd.to_numeric(table[column], errors="coerce").astype(float)))


@dataclass(frozen=True)
class Detection:
    file: str
    start: float
    end: float
    label: str
    score: float
    external_id: str | None = None
    site: str = ""
    recorded_at: str = ""  # the recorder's clock at `start` (ISO 8601), '' when unknown


def file_detections(file: str, scores: WindowScores, thresholds: np.ndarray, merge: bool,
                    external_ids: Sequence[str] | None = None, site: str = "",
                    started: datetime | None = None) -> list[Detection]:
    """The detections of one file, by start then class order; `thresholds` per class (NaN: never); `started`:
    the recorder's clock at the file's start (None: unknown)."""
    found: list[tuple[float, int, Detection]] = []
    for c, label in enumerate(scores.labels):
        column = scores.scores[:, c].astype(np.float64)
        if merge:
            runs = detections(scores.start, scores.end, column, float(thresholds[c]))
        else:
            hits = np.flatnonzero(column >= thresholds[c])
            runs = [(float(scores.start[i]), float(scores.end[i]), float(column[i])) for i in hits]
        external = None if external_ids is None else str(external_ids[c])
        found += [(start, c, Detection(file, start, end, label, score, external, site, clock(started, start)))
                  for start, end, score in runs]
    return [d for _, _, d in sorted(found, key=lambda item: item[:2])]


def thresholds_for(labels: list[str], window_thresholds: dict[str, float] | None,
                   min_score: float | None) -> np.ndarray:
    """Per class: `min_score` for all if given, else each species' window threshold (NaN where none)."""
    if min_score is not None:
        return np.full(len(labels), float(min_score))
    assert window_thresholds is not None
    return np.array([window_thresholds.get(label, math.nan) for label in labels], dtype=np.float64)


def _seconds(value: float) -> str:
    return f"{value:.3f}"


def detection_columns(with_external_id: bool) -> list[str]:
    return ["file", "start", "end", "label", "score", "site", "recorded_at"] + (
        ["external_id"] if with_external_id else [])


def detection_rows(rows: list[Detection], with_external_id: bool) -> list[list[str]]:
    """detections.tsv rows of one file's detections, by start and label (as written, to 1 ms)."""
    ordered = sorted(rows, key=lambda d: (d.file, round(d.start, 3), d.label))
    return [[d.file, _seconds(d.start), _seconds(d.end), d.label, f"{d.score:.4f}", d.site, d.recorded_at]
            + ([d.external_id or ""] if with_external_id else []) for d in ordered]


def detection_order(row: list[str]) -> tuple[str, float, str]:
    """The sort key of a detections.tsv row: file, start, label."""
    return row[0], float(row[1]), row[3]


def raven_text(rows: list[Detection], low_hz: float, high_hz: float,
               label_column: str = DEFAULT_LABEL_COLUMN) -> str:
    """A Raven Pro selection table (tab-separated, no quoting: Raven reads cells verbatim)."""
    lines = ["\t".join((*RAVEN_SELECTION, label_column, "Score"))]
    for number, d in enumerate(sorted(rows, key=lambda d: (d.start, d.label)), 1):
        lines.append("\t".join([str(number), "Spectrogram 1", "1", _seconds(d.start), _seconds(d.end),
                                f"{low_hz:.1f}", f"{high_hz:.1f}", d.label, f"{d.score:.4f}"]))
    return "\n".join(lines) + "\n"


def audacity_text(rows: list[Detection]) -> str:
    """Audacity's label track format: start, end, text per line, no header."""
    return "".join(f"{d.start:.3f}\t{d.end:.3f}\t{d.label} ({d.score:.2f})\n"
                   for d in sorted(rows, key=lambda d: (d.start, d.label)))


def table_name(relative: str, table_format: str) -> str:
    return Path(relative).with_suffix("").as_posix() + TABLE_SUFFIX[table_format]


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with fsutil.atomic_open(path) as f:
        f.write(text)


def files_text(rows: list[dict[str, object]]) -> str:
    return fsutil.tsv_text(FILE_COLUMNS, [[r.get(c, "") for c in FILE_COLUMNS]
                                          for r in sorted(rows, key=lambda r: str(r["file"]))])


def read_files_table(path: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of a files.tsv or shard manifest."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter="\t")
        missing = [c for c in ("file", "status") if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: not a files table (no {', '.join(missing)})")
        return list(reader)
