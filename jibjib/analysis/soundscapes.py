"""How well window scores find the annotated calls of long field recordings.

Inputs: the per-file window scores of `jibjib analyze --scores DIR`
(`DIR/<relative path without extension>.npz`), the per-species window
thresholds of thresholds.tsv, and annotations: Raven selection tables (one per
audio file, `<stem>.selections.txt` or `<stem>.Table.1.selections.txt`) or one
TSV with columns `file, start, end, label`.  Files are matched by their path
relative to the audio folder, without extension.

Definitions (metrics.py's conventions where they apply):

* A window is *positive* for a species when it overlaps one of that species'
  calls by at least half the shorter of the two (OVERLAP_SHARE), *negative*
  when it overlaps none of them, and left out of that species' window-level
  figures when it overlaps one by less (a window clipping the edge of a call
  is neither a miss nor a false alarm).
* Window level, per species: AP and ROC-AUC over all windows of all evaluated
  files pooled; at the species' window threshold (score >= threshold; a NaN
  threshold detects nothing) precision, recall and F1 of the windows.
* A *detection* is a run of consecutive windows of one species at or above its
  threshold (each starting before the previous one ends), merged into one
  span from the first window's start to the last one's end.
* Event recall: the share of a species' annotated calls that a detection of
  that species overlaps (by any amount).
* False detections per hour: the detections of a species that overlap none of
  its calls, divided by the hours of audio that no annotated call (of any
  label) covers.
* Species with calls in the evaluated files enter the macro averages (AP and
  ROC-AUC where defined; the threshold figures where the species also has a
  threshold); species never annotated are reported, with their false
  detections, but left out of them.  Files with scores but no annotations are
  not evaluated (listed); annotated files without scores are listed too.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jibjib.core.errors import InputError
from jibjib.evaluation import metrics
from jibjib.analysis.annotations import Call
from jibjib.analysis.scores import ScoreFileError, WindowScores, load_scores
from jibjib.analysis.tables import detections

OVERLAP_SHARE = 0.5


def read_scores(folder: str | os.PathLike) -> dict[str, WindowScores]:
    """Recording key -> its window scores, from `jibjib analyze --scores` npz files (searched recursively)."""
    folder = Path(folder)
    out: dict[str, WindowScores] = {}
    labels: list[str] | None = None
    for path in sorted(folder.rglob("*.npz")):
        if any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue  # temporary files of a writer
        try:
            scores = load_scores(path)
        except ScoreFileError as exc:
            raise InputError(str(exc)) from None
        if labels is None:
            labels = scores.labels
        elif scores.labels != labels:
            raise InputError(f"{path}: its labels differ from those of the other score files (another model?)")
        out[path.relative_to(folder).with_suffix("").as_posix()] = scores
    if not out:
        raise InputError(f"{folder}: no window score files (.npz, written by jibjib analyze --scores)")
    return out


def _overlaps(a_start: np.ndarray, a_end: np.ndarray, b_start: np.ndarray, b_end: np.ndarray) -> np.ndarray:
    """Seconds of overlap, (len(a), len(b))."""
    return np.clip(np.minimum(a_end[:, None], b_end[None, :]) - np.maximum(a_start[:, None], b_start[None, :]),
                   0.0, None)


def window_truth(start: np.ndarray, end: np.ndarray, calls: list[Call]) -> tuple[np.ndarray, np.ndarray]:
    """(positive, left out) per window for one species' calls: see the module's definitions."""
    if not calls:
        return np.zeros(start.size, bool), np.zeros(start.size, bool)
    c_start, c_end = np.array([c.start for c in calls]), np.array([c.end for c in calls])
    overlap = _overlaps(start, end, c_start, c_end)
    need = OVERLAP_SHARE * np.minimum((end - start)[:, None], (c_end - c_start)[None, :])
    # A nanosecond of slack: window and call times are sums of decimal seconds.
    positive = ((overlap >= need - 1e-9) & (overlap > 0)).any(axis=1)
    return positive, (overlap > 0).any(axis=1) & ~positive


def _covered_seconds(calls: list[Call], seconds: float) -> float:
    """Length of the union of the calls' spans within [0, seconds]."""
    total, reach = 0.0, 0.0
    for call in sorted(calls, key=lambda c: c.start):
        start, end = max(call.start, reach), min(call.end, seconds)
        if end > start:
            total += end - start
        reach = max(reach, min(call.end, seconds))
    return total


@dataclass(frozen=True)
class _SpeciesInFile:
    """One species in one file: the truth and scores of its windows (those not left out), and what its
    threshold found there."""

    positive: np.ndarray
    score: np.ndarray
    left_out_windows: int
    detected_windows: int
    true_windows: int
    calls: int
    detected_calls: int
    detections: int
    false_detections: int


def _species_in_file(s: WindowScores, column: int, calls: list[Call], threshold: float) -> _SpeciesInFile:
    """The window and event figures of the species in `column` over one file, against its calls there."""
    pos, out = window_truth(s.start, s.end, calls)
    col = s.scores[:, column].astype(np.float64)
    hit = ~out & (col >= threshold)  # NaN compares false: no threshold, no detection
    found = detections(s.start, s.end, col, threshold)
    spans = np.array([d[:2] for d in found]).reshape(-1, 2)
    touching = _overlaps(spans[:, 0], spans[:, 1], np.array([x.start for x in calls]),
                         np.array([x.end for x in calls])) > 0
    return _SpeciesInFile(positive=pos[~out], score=col[~out], left_out_windows=int(out.sum()),
                          detected_windows=int(hit.sum()), true_windows=int((hit & pos).sum()), calls=len(calls),
                          detected_calls=int(touching.any(axis=0).sum()), detections=len(found),
                          false_detections=int((~touching.any(axis=1)).sum()))


def _species_row(label: str, threshold: float, files: list[_SpeciesInFile], hours: float) -> dict[str, Any]:
    """soundscapes.json's `per_species` row: one species' figures over all evaluated files."""
    def total(field: str) -> int:
        return sum(getattr(part, field) for part in files)

    positive_all, score_all = np.concatenate([f.positive for f in files]), np.concatenate([f.score for f in files])
    support = int(positive_all.sum())
    has_threshold = not math.isnan(threshold)
    precision = metrics.safe_ratio(total("true_windows"), total("detected_windows")) if has_threshold else None
    if precision is None and has_threshold and support:
        precision = 0.0  # a threshold that finds nothing has not delivered
    recall = metrics.safe_ratio(total("true_windows"), support) if has_threshold else None
    n_calls, hit_calls, false = total("calls"), total("detected_calls"), total("false_detections")
    return {
        "label": label,
        "calls": n_calls,
        "positive_windows": support,
        "left_out_windows": total("left_out_windows"),
        "negative_windows": int(positive_all.size - support),
        "average_precision": metrics.average_precision(positive_all, score_all),
        "roc_auc": metrics.roc_auc(positive_all, score_all),
        "window_threshold": threshold if has_threshold else None,
        "detected_windows": total("detected_windows") if has_threshold else None,
        "precision": precision,
        "recall": recall,
        "f1": metrics.f1_of(precision, recall),
        "detections": total("detections") if has_threshold else None,
        "detected_calls": hit_calls if has_threshold else None,
        "event_recall": metrics.safe_ratio(hit_calls, n_calls) if has_threshold else None,
        "false_detections": false if has_threshold else None,
        "false_detections_per_hour": metrics.safe_ratio(false, hours) if has_threshold else None,
    }


def _macro_figures(per_species: list[dict[str, Any]], hours: float) -> dict[str, Any]:
    """The averages over the annotated species (the threshold figures over those with a threshold) and the
    detections of all species together."""
    annotated = [row for row in per_species if row["calls"]]
    thresholded = [row for row in annotated if row["window_threshold"] is not None]
    with_threshold = [row for row in per_species if row["window_threshold"] is not None]
    all_false = sum(row["false_detections"] for row in with_threshold)
    return {
        "cmap": metrics.mean_of_known([row["average_precision"] for row in annotated]),
        "macro_roc_auc": metrics.mean_of_known([row["roc_auc"] for row in annotated]),
        "macro_species": len(thresholded),
        "macro": {key: metrics.mean_of_known([row[key] for row in thresholded])
                  for key in ("precision", "recall", "f1", "event_recall", "false_detections_per_hour")},
        "detected_calls": sum(row["detected_calls"] for row in thresholded),
        "thresholded_calls": sum(row["calls"] for row in thresholded),
        "false_detections": all_false,
        "false_detections_per_hour": metrics.safe_ratio(all_false, hours) if with_threshold else None,
    }


def evaluate_soundscapes(scores: dict[str, WindowScores], annotations: dict[str, list[Call]],
                         thresholds: dict[str, float]) -> dict[str, Any]:
    """soundscapes.json: the window-level and event-level figures described in the module docstring."""
    keys = sorted(set(scores) & set(annotations))
    if not keys:
        raise InputError("no file has both window scores and annotations: do the score files' names "
                         "(relative path without extension) match the annotated files'?")
    labels = scores[keys[0]].labels
    known = set(labels)
    unknown = Counter(call.label for key in keys for call in annotations[key] if call.label not in known)
    seconds = sum(scores[k].seconds for k in keys)
    unannotated = sum(scores[k].seconds - _covered_seconds(annotations[k], scores[k].seconds) for k in keys)
    hours = unannotated / 3600.0
    files = [{"file": k, "seconds": scores[k].seconds, "windows": int(scores[k].start.size),
              "calls": sum(c.label in known for c in annotations[k]),
              "species": sorted({c.label for c in annotations[k] if c.label in known}),
              "detections": 0, "false_detections": 0} for k in keys]

    per_species = []
    for c, label in enumerate(labels):
        threshold = float(thresholds.get(label, math.nan))
        in_files = [_species_in_file(scores[k], c, [call for call in annotations[k] if call.label == label],
                                     threshold) for k in keys]
        for summary, found in zip(files, in_files):
            summary["detections"] += found.detections
            summary["false_detections"] += found.false_detections
        per_species.append(_species_row(label, threshold, in_files, hours))

    windows = [scores[k] for k in keys]
    return {
        "overlap_share": OVERLAP_SHARE,
        "n_files": len(keys),
        "hours": seconds / 3600.0,
        "unannotated_hours": hours,
        "n_windows": int(sum(w.start.size for w in windows)),
        "window_seconds": _median([w.end - w.start for w in windows]),
        "hop_seconds": _median([np.diff(np.sort(w.start)) for w in windows]),
        "calls": sum(row["calls"] for row in per_species),
        "species_annotated": sum(1 for row in per_species if row["calls"]),
        "species_not_annotated": [row["label"] for row in per_species if not row["calls"]],
        "species_without_threshold": [row["label"] for row in per_species if row["window_threshold"] is None],
        "unknown_labels": dict(sorted(unknown.items())),
        "files_without_annotations": sorted(set(scores) - set(annotations)),
        "annotated_files_without_scores": sorted(set(annotations) - set(scores)),
        **_macro_figures(per_species, hours),
        "per_species": per_species,
        "files": files,
    }


def _median(parts: list[np.ndarray]) -> float | None:
    values = np.concatenate(parts) if parts else np.zeros(0)
    return float(np.median(values)) if values.size else None
