"""Classification metrics and calibration, computed with scikit-learn where it has the definition.

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
* Calibration error (ECE) bins scores in ECE_BINS equal-width bins as
  scikit-learn's `calibration_curve` does (a score on an inner edge goes to
  the lower bin).  Top-1 ECE (`ece`) judges the single-species rows' top
  score; the classwise ECE (`classwise_ece`, Kull et al. 2019) judges every
  class's score on every row against whether the row holds the class, and is
  the mean over classes of each class's binned ECE: what fits sigmoid
  outputs, which are one independent probability per class.

scikit-learn computes AP (`average_precision_score`), ROC-AUC
(`roc_auc_score`), per-class precision/recall/F1
(`precision_recall_fscore_support`), the confusion matrix and top-k accuracy;
this module adds the conventions above.  Thresholds: jibjib.evaluation.thresholds.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from sklearn import metrics as sk

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


def average_precision(positive: np.ndarray, score: np.ndarray) -> float | None:
    """Area under the precision-recall step curve, sum of (R_k - R_k-1) * P_k over distinct scores
    (scikit-learn's average_precision_score); None without positives."""
    positive = np.asarray(positive, bool)
    return float(sk.average_precision_score(positive, score)) if positive.any() else None


def roc_auc(positive: np.ndarray, score: np.ndarray) -> float | None:
    """Probability that a positive outscores a negative, ties counting half (scikit-learn's roc_auc_score);
    None without positives or negatives."""
    positive = np.asarray(positive, bool)
    return float(sk.roc_auc_score(positive, score)) if 0 < positive.sum() < positive.size else None


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
    return sk.confusion_matrix(y, predicted, labels=np.arange(n_classes))


def top_k_accuracy(y: np.ndarray, scores: np.ndarray, k: int) -> float | None:
    """Share of rows whose class is among their k best (scikit-learn's top_k_accuracy_score, which ranks a
    later class first among tied scores); rows without one class (y < 0) are left out."""
    y, scores = _single_rows(y, scores)
    n_classes = scores.shape[1] if scores.ndim == 2 else 0
    if y.size == 0:
        return None
    if k >= n_classes:
        return 1.0  # every class is among the k best
    if n_classes == 2:  # scikit-learn takes a binary task's positive-class score alone
        return float(sk.top_k_accuracy_score(y, scores[:, 1], k=k, labels=[0, 1]))
    return float(sk.top_k_accuracy_score(y, scores, k=k, labels=np.arange(n_classes)))


def _single_rows(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows with one true class (y >= 0): what top-1 correctness is defined on."""
    y = np.asarray(y, dtype=int)
    keep = y >= 0
    return y[keep], np.asarray(scores)[keep]


def calibration_bins(confidence: np.ndarray, outcome: np.ndarray, bins: int = ECE_BINS) -> dict[str, Any]:
    """ECE of probabilities `confidence` against 0/1 `outcome` over `bins` equal-width bins, and the per-bin table.

    Bins as scikit-learn's calibration_curve (strategy uniform) puts scores in them, so its prob_true and
    prob_pred are this table's accuracy and confidence of the filled bins.
    """
    confidence, outcome = np.asarray(confidence, np.float64).ravel(), np.asarray(outcome, np.float64).ravel()
    index = np.searchsorted(np.linspace(0.0, 1.0, bins + 1)[1:-1], confidence)
    count = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.bincount(index, weights=outcome, minlength=bins) / count
        mean_confidence = np.bincount(index, weights=confidence, minlength=bins) / count
    filled = count > 0
    ece = float(np.sum(count[filled] * np.abs(accuracy[filled] - mean_confidence[filled])) / confidence.size) \
        if confidence.size else None
    table = [{"lower": b / bins, "upper": (b + 1) / bins, "count": int(count[b]),
              "accuracy": float(accuracy[b]) if filled[b] else None,
              "confidence": float(mean_confidence[b]) if filled[b] else None} for b in range(bins)]
    return {"ece": ece, "bins": table}


def expected_calibration_error(y: np.ndarray, scores: np.ndarray, bins: int = ECE_BINS) -> dict[str, Any]:
    """Top-1 ECE: the top-1 confidence against top-1 correctness over equal-width bins, with the per-bin table.

    Rows without one true class (y < 0: background, several species) are left out: top-1 is never right there.
    """
    y, scores = _single_rows(y, scores)
    if y.size == 0:
        return calibration_bins(np.zeros(0), np.zeros(0), bins)
    return calibration_bins(scores.max(axis=1), scores.argmax(axis=1) == y, bins)


def classwise_calibration_error(truth: np.ndarray, scores: np.ndarray, bins: int = ECE_BINS) -> dict[str, Any]:
    """Classwise ECE: per class, its score on every row against whether the row holds the class, binned;
    `ece` is the mean of the classes' ECEs, and `bins` the table of all (row, class) pairs pooled (what a
    reliability diagram of independent sigmoids draws)."""
    truth, scores = np.asarray(truth, bool), np.asarray(scores, np.float64)
    pooled = calibration_bins(scores, truth, bins)
    if truth.size == 0:
        return pooled
    per_class = [calibration_bins(scores[:, c], truth[:, c], bins)["ece"] for c in range(truth.shape[1])]
    return {"ece": float(np.mean(per_class)), "bins": pooled["bins"], "pooled_ece": pooled["ece"]}


def _top1_counts(truth: np.ndarray, predicted: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per class: right top-1 predictions, top-1 predictions and support, over the rows holding a species
    (scikit-learn's multilabel_confusion_matrix of the rows' truth against their one-hot top-1)."""
    n_classes = truth.shape[1]
    rows = truth.any(axis=1)
    one_hot = np.zeros((int(rows.sum()), n_classes), int)
    one_hot[np.arange(one_hot.shape[0]), predicted[rows]] = 1
    if not rows.any():
        return np.zeros(n_classes, int), np.zeros(n_classes, int), np.zeros(n_classes, int)
    counts = sk.multilabel_confusion_matrix(truth[rows].astype(int), one_hot, labels=np.arange(n_classes))
    true_pos = counts[:, 1, 1]
    return true_pos, true_pos + counts[:, 0, 1], true_pos + counts[:, 1, 0]


def classification_metrics(y: np.ndarray, scores: np.ndarray, classes: list[str], top_k: int = 5) -> dict[str, Any]:
    """Per-class precision/recall/F1/support/AP/ROC-AUC, macro and micro averages, top-1/top-k, cmAP, ECE
    (top-1 and classwise), and the confusion matrix (counts[true][predicted]); `y` as in the module docstring."""
    n_classes = len(classes)
    scores = np.asarray(scores, dtype=np.float64)
    truth = truth_matrix(y, n_classes)
    n = len(truth)
    single = single_class(truth)
    predicted = scores.argmax(axis=1) if n else np.zeros(0, int)
    # A forced top-1 answer on a background row has no right answer: the top-1 figures count the rows with a
    # species, and background rows weigh in through AP and ROC-AUC (as negatives) and the thresholds.
    one = single >= 0
    true_pos, n_predicted, support = _top1_counts(truth, predicted)
    per_class = []
    for c, label in enumerate(classes):
        precision = safe_ratio(true_pos[c], n_predicted[c])
        if precision is None and support[c]:
            precision = 0.0
        recall = safe_ratio(true_pos[c], support[c])
        per_class.append({
            "label": label,
            "support": int(support[c]),
            "predicted": int(n_predicted[c]),
            "precision": precision,
            "recall": recall,
            "f1": f1_of(precision, recall),
            "average_precision": average_precision(truth[:, c], scores[:, c]),
            "roc_auc": roc_auc(truth[:, c], scores[:, c]),
        })
    present = [row for row in per_class if row["support"]]
    # One prediction per row, one count per (row, class it contains): with single-species rows only,
    # every error is one false positive and one false negative, so micro P = R = F1 = accuracy.
    micro_precision = safe_ratio(int(true_pos.sum()), int(n_predicted.sum()))
    micro_recall = safe_ratio(int(true_pos.sum()), int(support.sum()))
    return {
        "n": n,
        "n_single_species": int(one.sum()),
        "n_background": int((truth.sum(axis=1) == 0).sum()),
        "n_multi_species": int((truth.sum(axis=1) > 1).sum()),
        "classes_present": len(present),
        "top1_accuracy": float(sk.accuracy_score(single[one], predicted[one])) if one.any() else None,
        f"top{top_k}_accuracy": top_k_accuracy(single, scores, top_k),
        "macro": {key: mean_of_known([row[key] for row in present]) for key in ("precision", "recall", "f1")},
        "micro": {"precision": micro_precision, "recall": micro_recall, "f1": f1_of(micro_precision, micro_recall)},
        "cmap": mean_of_known([row["average_precision"] for row in present]),
        "macro_roc_auc": mean_of_known([row["roc_auc"] for row in present]),
        "confusion": confusion_matrix(single[one], predicted[one], n_classes).tolist(),
        "ece": expected_calibration_error(single, scores)["ece"],
        "classwise_ece": classwise_calibration_error(truth, scores)["ece"],
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
    bounded search over TEMPERATURE_BOUNDS.

    Why the fit often stops at the lower bound: as T falls, each patch probability
    tends to 0 or 1 by the sign of its logit (of its margin, for a softmax), so a
    file score tends to the share of the file's patches that vote for the class.
    That share is wrong with certainty only for a file all of whose patches vote
    wrongly; on a val split without such a file the likelihood keeps rising as T
    falls.  With sigmoid outputs this is the common case: most (file, class) pairs
    are negatives whose patches all have negative logits, and each of them costs
    -log(1 - p) > 0 at T = 1 and nothing as T falls.  The bound is then the
    likelihood's answer on that val split, not a failed fit (evaluate reports it
    as temperature_at_bound).
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
