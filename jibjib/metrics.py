"""Classification metrics, calibration and thresholds, in plain numpy.

Everything takes integer true classes `y` of shape (n,) and a score matrix of
shape (n, n_classes) (probabilities, higher is more likely), so the same code
scores files and patches.  Conventions, chosen to stay defined on small or
unbalanced test splits:

* A class absent from the evaluated split (support 0) keeps its row in the
  per-class table, with recall, F1, AP and ROC-AUC null; the macro averages
  are taken over the classes present.  Its precision is 0 if it was predicted
  (every such prediction is wrong) and null otherwise.
* Precision of a class never predicted is 0 (no correct detections).
* cmAP is the mean average precision over classes present; macro ROC-AUC the
  mean over classes present that also have negatives.
* A per-class threshold applied to a split (`threshold_outcomes`) follows the
  same rules with "detected" (score >= threshold) for "predicted": a class
  with support and no detection has precision 0 and recall 0, because a
  threshold that finds nothing has not delivered its target; the macro
  averages are taken over the classes that have a threshold and support.
  Classes without a threshold have null figures.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.stats import rankdata

ECE_BINS = 15


def _ratio(numerator: float, denominator: float) -> float | None:
    return float(numerator / denominator) if denominator else None


def _f1(precision: float | None, recall: float | None) -> float | None:
    if precision is None or recall is None:
        return None
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def _ranked_counts(positive: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every distinct score as a threshold, highest first: (threshold, true positives, detections)
    when everything scoring at least the threshold is detected."""
    order = np.argsort(-score, kind="stable")
    score, positive = score[order], positive[order]
    # Tied scores form one threshold: take the cumulative counts at the last of each tie.
    last_of_tie = np.r_[np.flatnonzero(np.diff(score)), score.size - 1]
    return score[last_of_tie], np.cumsum(positive)[last_of_tie], last_of_tie + 1


def average_precision(positive: np.ndarray, score: np.ndarray) -> float | None:
    """Area under the precision-recall step curve: sum of (R_k - R_k-1) * P_k over distinct scores."""
    n_pos = int(positive.sum())
    if n_pos == 0:
        return None
    _, true_pos, predicted = _ranked_counts(positive, score)
    recall = true_pos / n_pos
    precision = true_pos / predicted
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def roc_auc(positive: np.ndarray, score: np.ndarray) -> float | None:
    """Probability that a positive outscores a negative (ties count half); Mann-Whitney U."""
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(score)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def confusion_matrix(y: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """counts[true, predicted]."""
    return np.bincount(y * n_classes + predicted, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def top_k_accuracy(y: np.ndarray, scores: np.ndarray, k: int) -> float | None:
    if y.size == 0:
        return None
    k = min(k, scores.shape[1])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float(np.mean(np.any(top == y[:, None], axis=1)))


def expected_calibration_error(y: np.ndarray, scores: np.ndarray, bins: int = ECE_BINS) -> dict[str, Any]:
    """ECE of the top-1 confidence over equal-width bins, and the per-bin table for a reliability diagram."""
    confidence = scores.max(axis=1)
    correct = scores.argmax(axis=1) == y
    index = np.minimum((confidence * bins).astype(int), bins - 1)
    table = []
    ece = 0.0
    for b in range(bins):
        members = index == b
        count = int(members.sum())
        accuracy = float(correct[members].mean()) if count else None
        mean_confidence = float(confidence[members].mean()) if count else None
        if count:
            ece += count / y.size * abs(accuracy - mean_confidence)
        table.append({"lower": b / bins, "upper": (b + 1) / bins, "count": count,
                      "accuracy": accuracy, "confidence": mean_confidence})
    return {"ece": float(ece) if y.size else None, "bins": table}


def classification_metrics(y: np.ndarray, scores: np.ndarray, classes: list[str], top_k: int = 5) -> dict[str, Any]:
    """Per-class precision/recall/F1/support/AP/ROC-AUC, macro and micro averages, top-1/top-k, cmAP, ECE,
    and the confusion matrix (counts[true][predicted])."""
    n_classes = len(classes)
    y = np.asarray(y, dtype=int)
    scores = np.asarray(scores, dtype=np.float64)
    predicted = scores.argmax(axis=1) if y.size else np.zeros(0, int)
    counts = confusion_matrix(y, predicted, n_classes)
    per_class = []
    for c, label in enumerate(classes):
        true_pos = int(counts[c, c])
        support = int(counts[c].sum())
        n_predicted = int(counts[:, c].sum())
        precision = _ratio(true_pos, n_predicted)
        if precision is None and support:
            precision = 0.0
        recall = _ratio(true_pos, support)
        positive = y == c
        per_class.append({
            "label": label,
            "support": support,
            "predicted": n_predicted,
            "precision": precision,
            "recall": recall,
            "f1": _f1(precision, recall),
            "average_precision": average_precision(positive, scores[:, c]),
            "roc_auc": roc_auc(positive, scores[:, c]),
        })
    present = [row for row in per_class if row["support"]]
    accuracy = float(np.mean(predicted == y)) if y.size else None
    return {
        "n": int(y.size),
        "classes_present": len(present),
        "top1_accuracy": accuracy,
        f"top{top_k}_accuracy": top_k_accuracy(y, scores, top_k),
        "macro": {key: _mean([row[key] for row in present]) for key in ("precision", "recall", "f1")},
        # Single-label: every error is one false positive and one false negative, so micro P = R = F1 = accuracy.
        "micro": {"precision": accuracy, "recall": accuracy, "f1": accuracy},
        "cmap": _mean([row["average_precision"] for row in present]),
        "macro_roc_auc": _mean([row["roc_auc"] for row in present]),
        "confusion": counts.tolist(),
        "ece": expected_calibration_error(y, scores)["ece"],
        "per_class": per_class,
    }


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def sigmoid(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64) / temperature))


def probabilities(logits: np.ndarray, temperature: float = 1.0, multi_label: bool = False) -> np.ndarray:
    """Per-class probabilities: independent sigmoids for a multi-label model, else a softmax."""
    return (sigmoid if multi_label else softmax)(logits, temperature)


def file_scores(logits: np.ndarray, file_index: np.ndarray, n_files: int,
                temperature: float = 1.0, multi_label: bool = False) -> np.ndarray:
    """Mean of the per-patch (or per-sequence) probabilities of each file: (n_files, n_classes).

    Averaging probabilities rather than logits keeps one confident patch from
    outvoting the rest of a ten-second file.  A file without patches gets NaN.
    """
    totals = np.zeros((n_files, logits.shape[1]))
    np.add.at(totals, file_index, probabilities(logits, temperature, multi_label))
    counts = np.bincount(file_index, minlength=n_files)[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        return totals / counts


TEMPERATURE_BOUNDS = (0.05, 20.0)


def fit_temperature(logits: np.ndarray, owner: np.ndarray, y: np.ndarray, multi_label: bool = False) -> float:
    """The temperature T minimising the negative log-likelihood of the file scores at T.

    Fitted on the validation split. Dividing the patch logits by T changes no
    patch's top class; it makes the file scores (means of patch probabilities,
    what users act on) as sure as they are right on val. A one-dimensional
    bounded search; on a val split the model separates perfectly the likelihood
    keeps rising as T falls, and the fit stops at the lower bound.
    """
    if y.size == 0:
        return 1.0
    eps = 1e-12
    target = np.eye(logits.shape[1])[y]

    def nll(log_t: float) -> float:
        scores = file_scores(logits, owner, y.size, math.exp(log_t), multi_label)
        if multi_label:
            return float(-np.mean(target * np.log(scores + eps) + (1 - target) * np.log(1 - scores + eps)))
        return float(-np.mean(np.log(scores[np.arange(y.size), y] + eps)))

    low, high = (math.log(b) for b in TEMPERATURE_BOUNDS)
    result = minimize_scalar(nll, bounds=(low, high), method="bounded", options={"xatol": 1e-4})
    return float(math.exp(result.x))


def precision_thresholds(y: np.ndarray, scores: np.ndarray, classes: list[str],
                         target_precision: float) -> list[dict[str, Any]]:
    """Per class, the lowest score threshold whose detections reach `target_precision`.

    The lowest such threshold keeps the most recall.  Where no threshold
    reaches the target (or the split has no file of the class) the threshold
    is NaN and `status` says why; predict then never reports the class as detected.
    """
    rows = []
    for c, label in enumerate(classes):
        positive = y == c
        row = {"label": label, "threshold": math.nan, "precision": math.nan, "recall": math.nan,
               "support": int(positive.sum()), "status": "no_val_files"}
        if positive.any():
            row["status"] = "unreachable"
            threshold, true_pos, predicted = _ranked_counts(positive, scores[:, c])
            precision = true_pos / predicted
            reaching = np.flatnonzero((precision >= target_precision) & (true_pos > 0))
            if reaching.size:
                best = reaching[-1]  # the lowest threshold that still reaches the target
                row.update(threshold=float(threshold[best]), precision=float(precision[best]),
                           recall=float(true_pos[best] / positive.sum()), status="ok")
        rows.append(row)
    return rows


def threshold_outcomes(y: np.ndarray, scores: np.ndarray, thresholds: np.ndarray, classes: list[str],
                       target_precision: float) -> dict[str, Any]:
    """What per-class thresholds fitted on one split achieve on another (y, scores).

    Per class: support, detections (files scoring at least the threshold),
    precision and recall; then the macro precision and recall over the classes
    with a threshold and support, how many of them there are, how many reach
    `target_precision` and how many detect nothing.
    """
    y = np.asarray(y, dtype=int)
    rows = []
    for c, label in enumerate(classes):
        positive = y == c
        row = {"label": label, "support": int(positive.sum()), "detections": None, "precision": None, "recall": None}
        threshold = float(thresholds[c])
        if not math.isnan(threshold):
            detected = np.asarray(scores)[:, c] >= threshold
            true_pos = int((detected & positive).sum())
            precision = _ratio(true_pos, int(detected.sum()))
            if precision is None and row["support"]:
                precision = 0.0
            row.update(detections=int(detected.sum()), precision=precision, recall=_ratio(true_pos, row["support"]))
        rows.append(row)
    evaluated = [row for row in rows if row["detections"] is not None and row["support"]]
    return {
        "classes": len(evaluated),
        "macro_precision": _mean([row["precision"] for row in evaluated]),
        "macro_recall": _mean([row["recall"] for row in evaluated]),
        "classes_reaching_target": sum(row["precision"] >= target_precision for row in evaluated),
        "classes_without_detections": sum(row["detections"] == 0 for row in evaluated),
        "per_class": rows,
    }
