"""How well what `jibjib analyze` delivers finds the annotated calls of long field recordings.

Inputs: the per-file window scores of `jibjib analyze --scores DIR`
(`DIR/<relative path without extension>.npz`), the per-species window
thresholds of thresholds.tsv, the detection settings analyze delivers with
(`analyze.merge`, `analyze.min_score`; the hop is the scores' own), and
annotations: Raven selection tables (one per audio file,
`<stem>.selections.txt` or `<stem>.Table.1.selections.txt`) or one TSV with
columns `file, start, end, label`.  Files are matched by their path relative
to the audio folder, without extension.

Definitions (metrics.py's conventions where they apply).  Two spans *hit*
when they overlap by at least OVERLAP_SHARE (half) of the shorter of the two.

* Window level.  A window is *positive* for a species when it hits one of
  that species' calls, *negative* when it overlaps none of them, and left out
  of that species' window figures when it overlaps one by less (a window
  clipping the edge of a call is neither a miss nor a false alarm).  Per
  species: AP and ROC-AUC over all windows of all evaluated files pooled; at
  the species' threshold (score >= threshold; a NaN threshold detects
  nothing) precision, recall and F1 of the windows.
* Detections are the rows analyze delivers (jibjib.analysis.tables.
  file_detections, with the same thresholds and merging): each window at or
  above the threshold, or with merging each run of them as one span.
* Event level.  A detection of species X is *true* when it hits a call of X
  and *false* otherwise.  *Event recall* of X is the share of its calls that
  detections find, matched one to one (a maximum bipartite matching of the
  hits): a detection finds at most one call, so a merged detection spanning
  a chorus of five calls finds one of them; a call hit by several detections
  is found once (the others are true detections, not false ones).
* *False detections per hour*: the false detections over the hours of all
  evaluated audio; and, separately, the false detections that overlap no
  annotated call of any label over the hours no annotated call covers
  (`per_unannotated_hour`: the rate in bird-free audio).  Where the false
  detections are: in audio without any call (`unannotated`), on part of a
  call of their own species, overlapping it by less than the hit share
  (`partial_call`: a window beside a call, holding its start or end), or on
  other species' calls only (`other_calls`); the three add up to all.
* Species with calls in the evaluated files enter the macro averages (AP and
  ROC-AUC where defined; the threshold figures where the species also has a
  threshold); *pooled* figures count every call and every false detection of
  the species with a threshold together.  Species never annotated are
  reported, with their false detections, but left out of the macro averages.
  Files with scores but no annotations are not evaluated (listed); annotated
  files without scores are listed too.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import maximum_bipartite_matching

from jibjib.core.errors import InputError
from jibjib.evaluation import metrics
from jibjib.analysis.annotations import Call
from jibjib.analysis.scores import ScoreFileError, WindowScores, load_scores
from jibjib.analysis.tables import Detection, file_detections, thresholds_for

OVERLAP_SHARE = 0.5
# A nanosecond of slack: window, detection and call times are sums of decimal seconds.
SLACK = 1e-9


@dataclass(frozen=True)
class DetectionSettings:
    """How analyze turns window scores into detections: `analyze.merge`, `analyze.min_score`."""

    merge: bool = False
    min_score: float | None = None  # instead of every species' window threshold


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


def spans(items: list) -> tuple[np.ndarray, np.ndarray]:
    """Start and end arrays of calls or detections (anything with .start and .end)."""
    return np.array([x.start for x in items], float), np.array([x.end for x in items], float)


def _overlaps(a_start: np.ndarray, a_end: np.ndarray, b_start: np.ndarray, b_end: np.ndarray) -> np.ndarray:
    """Seconds of overlap, (len(a), len(b))."""
    return np.clip(np.minimum(a_end[:, None], b_end[None, :]) - np.maximum(a_start[:, None], b_start[None, :]),
                   0.0, None)


def hit_matrix(a_start: np.ndarray, a_end: np.ndarray, b_start: np.ndarray, b_end: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) bool: the spans overlap by at least OVERLAP_SHARE of the shorter of the two."""
    overlap = _overlaps(a_start, a_end, b_start, b_end)
    need = OVERLAP_SHARE * np.minimum((a_end - a_start)[:, None], (b_end - b_start)[None, :])
    return (overlap >= need - SLACK) & (overlap > 0)


def matched_calls(hits: np.ndarray) -> int:
    """How many calls (columns) detections (rows) find one to one: scipy's maximum bipartite matching."""
    if not hits.any():
        return 0
    return int((maximum_bipartite_matching(csr_matrix(hits), perm_type="row") >= 0).sum())


def window_truth(start: np.ndarray, end: np.ndarray, calls: list[Call]) -> tuple[np.ndarray, np.ndarray]:
    """(positive, left out) per window for one species' calls: see the module's definitions."""
    if not calls:
        return np.zeros(start.size, bool), np.zeros(start.size, bool)
    c_start, c_end = spans(calls)
    positive = hit_matrix(start, end, c_start, c_end).any(axis=1)
    return positive, (_overlaps(start, end, c_start, c_end) > 0).any(axis=1) & ~positive


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
    detections found there."""

    positive: np.ndarray
    score: np.ndarray
    left_out_windows: int
    detected_windows: int
    true_windows: int
    calls: int
    detected_calls: int
    detections: int
    false_detections: int
    false_unannotated: int  # false detections that overlap no annotated call of any label
    false_partial: int  # false detections that overlap a call of their own species, by less than OVERLAP_SHARE


def _species_in_file(s: WindowScores, column: int, calls: list[Call], threshold: float, found: list[Detection],
                     all_calls: list[Call]) -> _SpeciesInFile:
    """The window and event figures of the species in `column` over one file: its calls there, its threshold
    and its detections (`found`); `all_calls`: every annotated call of the file."""
    pos, out = window_truth(s.start, s.end, calls)
    col = s.scores[:, column].astype(np.float64)
    hit = ~out & (col >= threshold)  # NaN compares false: no threshold, no detection
    d_start, d_end = spans(found)
    hits = hit_matrix(d_start, d_end, *spans(calls))
    false = ~hits.any(axis=1)
    in_quiet = ~(_overlaps(d_start, d_end, *spans(all_calls)) > 0).any(axis=1)
    on_own_call = (_overlaps(d_start, d_end, *spans(calls)) > 0).any(axis=1)
    return _SpeciesInFile(positive=pos[~out], score=col[~out], left_out_windows=int(out.sum()),
                          detected_windows=int(hit.sum()), true_windows=int((hit & pos).sum()), calls=len(calls),
                          detected_calls=matched_calls(hits), detections=len(found),
                          false_detections=int(false.sum()), false_unannotated=int((false & in_quiet).sum()),
                          false_partial=int((false & on_own_call).sum()))


def _species_row(label: str, threshold: float, files: list[_SpeciesInFile], hours: dict[str, float]) -> dict[str, Any]:
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
    false, quiet, partial = total("false_detections"), total("false_unannotated"), total("false_partial")

    def given_threshold(value: Any) -> Any:
        return value if has_threshold else None

    return {
        "label": label,
        "calls": total("calls"),
        "positive_windows": support,
        "left_out_windows": total("left_out_windows"),
        "negative_windows": int(positive_all.size - support),
        "average_precision": metrics.average_precision(positive_all, score_all),
        "roc_auc": metrics.roc_auc(positive_all, score_all),
        "window_threshold": given_threshold(threshold),
        "detected_windows": given_threshold(total("detected_windows")),
        "precision": precision,
        "recall": recall,
        "f1": metrics.f1_of(precision, recall),
        "detections": given_threshold(total("detections")),
        "true_detections": given_threshold(total("detections") - false),
        "detected_calls": given_threshold(total("detected_calls")),
        "event_recall": given_threshold(metrics.safe_ratio(total("detected_calls"), total("calls"))),
        "false_detections": given_threshold(false),
        "false_detections_per_hour": given_threshold(metrics.safe_ratio(false, hours["all"])),
        "false_detections_unannotated": given_threshold(quiet),
        "false_detections_per_unannotated_hour": given_threshold(metrics.safe_ratio(quiet, hours["unannotated"])),
        "false_detections_partial_call": given_threshold(partial),
        "false_detections_other_calls": given_threshold(false - quiet - partial),
    }


def _averages(per_species: list[dict[str, Any]], hours: dict[str, float]) -> dict[str, Any]:
    """The macro averages over the annotated species (the threshold figures over those with a threshold) and
    the pooled figures of all species with a threshold together."""
    annotated = [row for row in per_species if row["calls"]]
    thresholded = [row for row in annotated if row["window_threshold"] is not None]
    with_threshold = [row for row in per_species if row["window_threshold"] is not None]
    calls, found = sum(row["calls"] for row in thresholded), sum(row["detected_calls"] for row in thresholded)
    false = sum(row["false_detections"] for row in with_threshold)
    quiet = sum(row["false_detections_unannotated"] for row in with_threshold)
    partial = sum(row["false_detections_partial_call"] for row in with_threshold)
    rates = ("false_detections_per_hour", "false_detections_per_unannotated_hour")
    return {
        "cmap": metrics.mean_of_known([row["average_precision"] for row in annotated]),
        "macro_roc_auc": metrics.mean_of_known([row["roc_auc"] for row in annotated]),
        "macro_species": len(thresholded),
        "macro": {key: metrics.mean_of_known([row[key] for row in thresholded])
                  for key in ("precision", "recall", "f1", "event_recall", *rates)},
        "pooled": {
            "calls": calls,
            "detected_calls": found,
            "event_recall": metrics.safe_ratio(found, calls),
            "detections": sum(row["detections"] for row in with_threshold),
            "false_detections": false,
            "false_detections_per_hour": metrics.safe_ratio(false, hours["all"]) if with_threshold else None,
            "false_detections_unannotated": quiet,
            "false_detections_per_unannotated_hour":
                metrics.safe_ratio(quiet, hours["unannotated"]) if with_threshold else None,
            "false_detections_partial_call": partial,
            "false_detections_other_calls": false - quiet - partial,
        },
    }


def evaluate_soundscapes(scores: dict[str, WindowScores], annotations: dict[str, list[Call]],
                         thresholds: dict[str, float],
                         settings: DetectionSettings = DetectionSettings()) -> dict[str, Any]:
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
    hours = {"all": seconds / 3600.0, "unannotated": unannotated / 3600.0}
    per_class = thresholds_for(labels, thresholds, settings.min_score)  # as analyze detects
    found = {k: file_detections(k, scores[k], per_class, settings.merge) for k in keys}
    files = [{"file": k, "seconds": scores[k].seconds, "windows": int(scores[k].start.size),
              "calls": sum(c.label in known for c in annotations[k]),
              "species": sorted({c.label for c in annotations[k] if c.label in known}),
              "detections": len(found[k]), "false_detections": 0} for k in keys]

    per_species = []
    for c, label in enumerate(labels):
        in_files = [_species_in_file(scores[k], c, [call for call in annotations[k] if call.label == label],
                                     float(per_class[c]), [d for d in found[k] if d.label == label], annotations[k])
                    for k in keys]
        for summary, part in zip(files, in_files):
            summary["false_detections"] += part.false_detections
        per_species.append(_species_row(label, float(per_class[c]), in_files, hours))

    windows = [scores[k] for k in keys]
    return {
        "overlap_share": OVERLAP_SHARE,
        "event_matching": "one to one (maximum bipartite matching of the hits)",
        "detection_settings": {"merge": settings.merge, "min_score": settings.min_score},
        "n_files": len(keys),
        "hours": hours["all"],
        "unannotated_hours": hours["unannotated"],
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
        **_averages(per_species, hours),
        "per_species": per_species,
        "files": files,
    }


def _median(parts: list[np.ndarray]) -> float | None:
    values = np.concatenate(parts) if parts else np.zeros(0)
    return float(np.median(values)) if values.size else None
