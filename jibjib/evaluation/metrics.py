"""Classification metrics, calibration and thresholds, in plain numpy.

Everything takes the truth `y` and a score matrix of shape (n, n_classes)
(probabilities, higher is more likely), so the same code scores files and
patches.  The truth is either integer classes of shape (n,) or a boolean
matrix (n, n_classes) of the classes each row contains (`truth_matrix`): a
background file's row holds none and is a negative for every class, a
multi-species file's row several, and it is a positive for each of them.
Conventions, chosen to stay defined on small or unbalanced test splits:

* Top-1 and top-k accuracy, the confusion matrix and the ECE need one true
  class per row, so they count the single-species rows only
  (`n_single_species`).  The per-class figures count every row: the
  prediction behind precision, recall and F1 is the row's top-1 class, right
  when the row contains it (a background file's top class is a false
  positive); AP and ROC-AUC rank every row's score.

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


def safe_ratio(numerator: float, denominator: float) -> float | None:
    return float(numerator / denominator) if denominator else None


def f1_of(precision: float | None, recall: float | None) -> float | None:
    if precision is None or recall is None:
        return None
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def mean_of_known(values: list[float | None]) -> float | None:
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


def truth_matrix(y: np.ndarray, n_classes: int) -> np.ndarray:
    """(n, n_classes) bool: the classes each row contains.  A matrix is taken as it is; integer classes
    become one-hot rows, and a negative class (no single class) an empty row."""
    y = np.asarray(y)
    if y.ndim == 2:
        return y.astype(bool)
    truth = np.zeros((y.size, n_classes), bool)
    known = np.flatnonzero(y >= 0)
    truth[known, y[known].astype(int)] = True
    return truth


def single_class(truth: np.ndarray) -> np.ndarray:
    """The one class of each row that has exactly one, -1 for the others (background, several species)."""
    return np.where(truth.sum(axis=1) == 1, truth.argmax(axis=1), -1) if truth.size else np.full(len(truth), -1)


def confusion_matrix(y: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """counts[true, predicted]."""
    return np.bincount(y * n_classes + predicted, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def top_k_accuracy(y: np.ndarray, scores: np.ndarray, k: int) -> float | None:
    """Share of rows whose class is among their k best; rows without one class (y < 0) are left out."""
    y, scores = _single_rows(y, scores)
    if y.size == 0:
        return None
    k = min(k, scores.shape[1])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float(np.mean(np.any(top == y[:, None], axis=1)))


def _single_rows(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows with one true class (y >= 0): what top-1 correctness is defined on."""
    y = np.asarray(y, dtype=int)
    keep = y >= 0
    return y[keep], np.asarray(scores)[keep]


def expected_calibration_error(y: np.ndarray, scores: np.ndarray, bins: int = ECE_BINS) -> dict[str, Any]:
    """ECE of the top-1 confidence over equal-width bins, and the per-bin table for a reliability diagram.

    Rows without one true class (y < 0: background, several species) are left out: top-1 is never right there.
    """
    y, scores = _single_rows(y, scores)
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
    and the confusion matrix (counts[true][predicted]); `y` as in the module docstring."""
    n_classes = len(classes)
    scores = np.asarray(scores, dtype=np.float64)
    truth = truth_matrix(y, n_classes)
    n = len(truth)
    single = single_class(truth)
    predicted = scores.argmax(axis=1) if n else np.zeros(0, int)
    # A forced top-1 answer on a background row has no right answer: the top-1 figures count the rows with a
    # species, and background rows weigh in through AP and ROC-AUC (as negatives) and the thresholds.
    has_species = truth.any(axis=1)
    hit = truth[np.arange(n), predicted] & has_species if n else np.zeros(0, bool)
    one = single >= 0
    counts = confusion_matrix(single[one], predicted[one], n_classes)
    per_class = []
    for c, label in enumerate(classes):
        positive = truth[:, c]
        true_pos = int((hit & (predicted == c)).sum())
        support = int(positive.sum())
        n_predicted = int(((predicted == c) & has_species).sum())
        precision = safe_ratio(true_pos, n_predicted)
        if precision is None and support:
            precision = 0.0
        recall = safe_ratio(true_pos, support)
        per_class.append({
            "label": label,
            "support": support,
            "predicted": n_predicted,
            "precision": precision,
            "recall": recall,
            "f1": f1_of(precision, recall),
            "average_precision": average_precision(positive, scores[:, c]),
            "roc_auc": roc_auc(positive, scores[:, c]),
        })
    present = [row for row in per_class if row["support"]]
    accuracy = float(np.mean(predicted[one] == single[one])) if one.any() else None
    # One prediction per row, one count per (row, class it contains): with single-species rows only,
    # every error is one false positive and one false negative, so micro P = R = F1 = accuracy.
    micro_precision = safe_ratio(int(hit.sum()), int(has_species.sum()))
    micro_recall = safe_ratio(int(hit.sum()), int(truth.sum()))
    return {
        "n": n,
        "n_single_species": int(one.sum()),
        "n_background": int((truth.sum(axis=1) == 0).sum()),
        "n_multi_species": int((truth.sum(axis=1) > 1).sum()),
        "classes_present": len(present),
        "top1_accuracy": accuracy,
        f"top{top_k}_accuracy": top_k_accuracy(single, scores, top_k),
        "macro": {key: mean_of_known([row[key] for row in present]) for key in ("precision", "recall", "f1")},
        "micro": {"precision": micro_precision, "recall": micro_recall, "f1": f1_of(micro_precision, micro_recall)},
        "cmap": mean_of_known([row["average_precision"] for row in present]),
        "macro_roc_auc": mean_of_known([row["roc_auc"] for row in present]),
        "confusion": counts.tolist(),
        "ece": expected_calibration_error(single, scores)["ece"],
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
    what users act on) as sure as they are right on val. `y` as in the module
    docstring; the likelihood is the one training maximises: per class for
    sigmoid outputs (a background file: all classes absent), and for a
    softmax the cross-entropy to the file's classes shared evenly (a
    background file: uniform over the classes, the trainer's target). A one-dimensional
    bounded search; on a val split the model separates perfectly the likelihood
    keeps rising as T falls, and the fit stops at the lower bound.
    """
    target = truth_matrix(y, logits.shape[1]).astype(np.float64)
    n = len(target)
    if n == 0:
        return 1.0
    eps = 1e-12
    if not multi_label:
        shares = target.sum(axis=1, keepdims=True)
        target = np.where(shares > 0, target / np.maximum(shares, 1), 1.0 / target.shape[1])

    def nll(log_t: float) -> float:
        scores = file_scores(logits, owner, n, math.exp(log_t), multi_label)
        if multi_label:
            return float(-np.mean(target * np.log(scores + eps) + (1 - target) * np.log(1 - scores + eps)))
        return float(-np.mean(np.sum(target * np.log(scores + eps), axis=1)))

    low, high = (math.log(b) for b in TEMPERATURE_BOUNDS)
    result = minimize_scalar(nll, bounds=(low, high), method="bounded", options={"xatol": 1e-4})
    return float(math.exp(result.x))


# At most this share of the val split's background rows (files or windows without a species) may reach a
# class's threshold, whatever the precision: field audio is mostly background, so a threshold that a few
# per cent of it passes floods an analysis with false detections although val precision looks fine.
BACKGROUND_PASS_RATE = 0.01


def precision_thresholds(y: np.ndarray, scores: np.ndarray, classes: list[str], target_precision: float,
                         background_pass_rate: float = BACKGROUND_PASS_RATE) -> list[dict[str, Any]]:
    """Per class, the lowest score threshold whose detections reach `target_precision`.

    The lowest such threshold keeps the most recall.  Where no threshold
    reaches the target (or the split has no file of the class) the threshold
    is NaN and `status` says why; predict then never reports the class as detected.
    Background rows are negatives of every class, multi-species rows positives of each of theirs;
    where there are background rows, the threshold also lies above all but
    `background_pass_rate` of their scores for the class (status `ok` all the same).
    """
    truth = truth_matrix(y, len(classes))
    background = ~truth.any(axis=1)
    rows = []
    for c, label in enumerate(classes):
        positive = truth[:, c]
        row = {"label": label, "threshold": math.nan, "precision": math.nan, "recall": math.nan,
               "support": int(positive.sum()), "status": "no_val_files"}
        if positive.any():
            row["status"] = "unreachable"
            threshold, true_pos, predicted = _ranked_counts(positive, scores[:, c])
            precision = true_pos / predicted
            reaching = np.flatnonzero((precision >= target_precision) & (true_pos > 0))
            if background.any():
                floor = float(np.quantile(scores[background, c], 1.0 - background_pass_rate, method="higher"))
                reaching = reaching[threshold[reaching] > floor]
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
    truth = truth_matrix(y, len(classes))
    rows = []
    for c, label in enumerate(classes):
        positive = truth[:, c]
        row = {"label": label, "support": int(positive.sum()), "detections": None, "precision": None, "recall": None}
        threshold = float(thresholds[c])
        if not math.isnan(threshold):
            detected = np.asarray(scores)[:, c] >= threshold
            true_pos = int((detected & positive).sum())
            precision = safe_ratio(true_pos, int(detected.sum()))
            if precision is None and row["support"]:
                precision = 0.0
            row.update(detections=int(detected.sum()), precision=precision, recall=safe_ratio(true_pos, row["support"]))
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
