"""Per-class score thresholds: fitted on val at a target precision, with a minimum support, and measured on test.

Rows and truth as in jibjib.evaluation.metrics: background rows are negatives of
every class, multi-species rows positives of each of theirs.

* A class with at least `min_support` val positives (files) gets its own
  threshold: the lowest score whose detections reach the target precision
  and, where val has background rows, that lies above all but
  `background_pass_rate` of their scores for the class (status `ok`, or
  `unreachable` when no score qualifies: the class is never detected).
* A class with fewer val positives falls back to the *pooled* threshold: the
  same rule applied to every class's score on every val row pooled (a row is
  a positive of each class it holds), counted on a grid of GRID_STEP (status
  `fallback`, or `fallback_unreachable` when the pooled rule finds none).
  One or two val files would otherwise set the threshold at their own score.
* Where the rule is met by a score, every threshold between that score and
  the next lower val score (or the background floor, if higher) detects the
  same val rows: the threshold is placed in the middle of that gap, in
  log-odds (`middle_of_gap`), not at its upper edge. The upper edge is the
  faintest val positive itself; calls in field audio, fainter and more mixed
  than focal recordings, score below it, and with a few val rows per species
  the gap is wide.
* Precision at a threshold comes with its Wilson 95 % interval (the true
  positives among the detections as a binomial share).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.special import expit, logit
from scipy.stats import binomtest
from sklearn.metrics import confusion_matrix_at_thresholds

from jibjib.evaluation.metrics import mean_of_known, safe_ratio, truth_matrix

# At most this share of the val split's background rows (files or windows without a species) may reach a
# class's threshold, whatever the precision: field audio is mostly background, so a threshold that a few
# per cent of it passes floods an analysis with false detections although val precision looks fine.
BACKGROUND_PASS_RATE = 0.01
CONFIDENCE = 0.95
# The pooled threshold's resolution: candidates are multiples of it (scores are probabilities in [0, 1]).
GRID_STEP = 1e-4
# Probabilities are clipped to this before log-odds (a score of exactly 0 or 1 has none).
LOGIT_CLIP = (1e-7, 1.0 - 1e-7)


def precision_interval(true_pos: int, detections: int) -> tuple[float, float]:
    """Wilson 95 % interval of a precision of true_pos / detections; NaN, NaN without detections."""
    if detections == 0:
        return math.nan, math.nan
    interval = binomtest(int(true_pos), int(detections)).proportion_ci(CONFIDENCE, method="wilson")
    return float(interval.low), float(interval.high)


def middle_of_gap(upper: float, lower: float | None) -> float:
    """The point halfway between two probabilities in log-odds (`upper` itself when there is no `lower`)."""
    if lower is None or not lower < upper:
        return float(upper)
    return float(expit((logit(np.clip(upper, *LOGIT_CLIP)) + logit(np.clip(lower, *LOGIT_CLIP))) / 2))


def _own_threshold(positive: np.ndarray, score: np.ndarray, target: float, floor: float | None) -> float:
    """The lowest distinct score reaching `target` precision (and above `floor`), moved to the middle of its
    gap to the next lower score or the floor; NaN if none."""
    tns, fps, fns, tps, candidates = confusion_matrix_at_thresholds(positive, score)
    precision = tps / (tps + fps)
    reaching = np.flatnonzero((precision >= target) & (tps > 0))
    if floor is not None:
        reaching = reaching[candidates[reaching] > floor]
    if not reaching.size:
        return math.nan
    lowest = reaching[-1]  # candidates fall: the last is the lowest
    below = [float(candidates[lowest + 1])] if lowest + 1 < len(candidates) else []
    below += [floor] if floor is not None else []
    return middle_of_gap(float(candidates[lowest]), max(below) if below else None)


def pooled_threshold(truth: np.ndarray, scores: np.ndarray, target: float,
                     background_pass_rate: float = BACKGROUND_PASS_RATE) -> float:
    """The lowest positive score at which every class's detections on every row, pooled, reach `target`
    precision and at most `background_pass_rate` of the background rows' scores (all classes) reach it; NaN if
    none.  Counted in histograms of GRID_STEP (scores within one step are decided together), so memory does
    not grow with rows x classes."""
    edges = np.linspace(0.0, 1.0, int(round(1 / GRID_STEP)) + 1)
    positives, everything, background = (np.zeros(edges.size - 1) for _ in range(3))
    no_species = ~truth.any(axis=1)
    for c in range(truth.shape[1]):
        column = np.clip(scores[:, c], 0.0, 1.0)
        positives += np.histogram(column[truth[:, c]], edges)[0]
        everything += np.histogram(column, edges)[0]
        background += np.histogram(column[no_species], edges)[0]
    # Detections at edges[k]: every score in bins k and above.
    tps, detections, passing = (np.cumsum(counts[::-1])[::-1] for counts in (positives, everything, background))
    with np.errstate(invalid="ignore", divide="ignore"):
        ok = (tps > 0) & (tps / detections >= target)
        if no_species.any():
            ok &= passing / (no_species.sum() * truth.shape[1]) <= background_pass_rate
    reaching = np.flatnonzero(ok)
    if reaching.size == 0:
        return math.nan
    # The lowest positive score in or above that bin: raising the threshold to it only drops negatives.
    edge = edges[reaching[0]]
    lowest = float(min(scores[truth[:, c] & (scores[:, c] >= edge), c].min(initial=np.inf)
                       for c in range(truth.shape[1])))
    below = max(scores[scores[:, c] < lowest, c].max(initial=-np.inf) for c in range(truth.shape[1]))
    return middle_of_gap(lowest, float(below) if np.isfinite(below) else None)


def precision_thresholds(y: np.ndarray, scores: np.ndarray, classes: list[str], target_precision: float,
                         background_pass_rate: float = BACKGROUND_PASS_RATE, min_support: int = 1,
                         support: np.ndarray | None = None) -> list[dict[str, Any]]:
    """Per class, the threshold of the module's rules and its val figures: precision (with its interval),
    recall, support (positive rows) and status.  `support`: the positives the minimum counts, per class
    (default the positive rows; evaluate passes files for window rows, which are not independent)."""
    truth = truth_matrix(y, len(classes))
    scores = np.asarray(scores, np.float64)
    background = ~truth.any(axis=1)
    counted = truth.sum(axis=0) if support is None else np.asarray(support)
    pooled: float | None = None
    rows = []
    for c, label in enumerate(classes):
        positive = truth[:, c]
        if counted[c] >= min_support and positive.any():
            floor = (float(np.quantile(scores[background, c], 1.0 - background_pass_rate, method="higher"))
                     if background.any() else None)
            threshold = _own_threshold(positive, scores[:, c], target_precision, floor)
            status = "unreachable" if math.isnan(threshold) else "ok"
        else:
            if pooled is None:
                pooled = pooled_threshold(truth, scores, target_precision, background_pass_rate)
            threshold = pooled
            status = "fallback_unreachable" if math.isnan(threshold) else "fallback"
        rows.append({"label": label, "threshold": threshold, **_figures_at(positive, scores[:, c], threshold),
                     "support": int(positive.sum()), "status": status})
    return rows


def _figures_at(positive: np.ndarray, score: np.ndarray, threshold: float) -> dict[str, float]:
    """Precision (with its interval) and recall of the rows scoring at least `threshold` (NaN: none)."""
    detected = score >= threshold  # NaN compares false
    true_pos, n_detected, n_positive = int((detected & positive).sum()), int(detected.sum()), int(positive.sum())
    low, high = precision_interval(true_pos, n_detected)
    return {"precision": true_pos / n_detected if n_detected else math.nan, "precision_low": low,
            "precision_high": high, "recall": true_pos / n_positive if n_positive and not math.isnan(threshold)
            else math.nan}


def threshold_outcomes(y: np.ndarray, scores: np.ndarray, thresholds: np.ndarray, classes: list[str],
                       target_precision: float) -> dict[str, Any]:
    """What per-class thresholds fitted on one split achieve on another (y, scores).

    Per class: support, detections (rows scoring at least the threshold),
    precision (with its Wilson interval) and recall; a class with support and no
    detection has precision 0 and recall 0 (a threshold that finds nothing has
    not delivered its target), one without a threshold null figures.  Then the
    macro precision and recall over the classes with a threshold and support,
    how many of them there are, how many reach `target_precision` and how many
    detect nothing.
    """
    truth = truth_matrix(y, len(classes))
    rows = []
    for c, label in enumerate(classes):
        positive = truth[:, c]
        row = {"label": label, "support": int(positive.sum()), "detections": None, "precision": None,
               "precision_low": None, "precision_high": None, "recall": None}
        threshold = float(thresholds[c])
        if not math.isnan(threshold):
            detected = np.asarray(scores)[:, c] >= threshold
            true_pos = int((detected & positive).sum())
            precision = safe_ratio(true_pos, int(detected.sum()))
            if precision is None and row["support"]:
                precision = 0.0
            low, high = precision_interval(true_pos, int(detected.sum()))
            row.update(detections=int(detected.sum()), precision=precision, recall=safe_ratio(true_pos, row["support"]),
                       precision_low=None if math.isnan(low) else low, precision_high=None if math.isnan(high) else high)
        rows.append(row)
    evaluated = [row for row in rows if row["detections"] is not None and row["support"]]
    return {
        "classes": len(evaluated),
        "macro_precision": mean_of_known([row["precision"] for row in evaluated]),
        "macro_recall": mean_of_known([row["recall"] for row in evaluated]),
        "classes_reaching_target": sum(row["precision"] >= target_precision for row in evaluated),
        "classes_without_detections": sum(row["detections"] == 0 for row in evaluated),
        "per_class": rows,
    }


def no_species(scores: np.ndarray, thresholds: np.ndarray) -> dict[str, Any]:
    """On rows that contain no species (background): how many rows, the share on which no class reaches
    its threshold (NaN: the class is never detected) and the mean of the rows' top scores."""
    scores = np.asarray(scores, dtype=np.float64)
    if len(scores) == 0:
        return {"n": 0, "no_species_rate": None, "mean_top_score": None}
    detected = (scores >= np.asarray(thresholds, dtype=np.float64)[None, :]).any(axis=1)
    return {"n": len(scores), "no_species_rate": float(np.mean(~detected)),
            "mean_top_score": float(scores.max(axis=1).mean())}
