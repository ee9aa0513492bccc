"""Metrics, calibration and thresholds against cases worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from jibjib import metrics

CLASSES = ["a", "b", "c", "absent"]


@pytest.fixture
def case() -> tuple[np.ndarray, np.ndarray]:
    """Six files. True: a a b b c c. Predicted (argmax): a b b b absent c.

    a: TP 1, predicted 1, support 2 -> P 1, R 0.5, F1 2/3
    b: TP 2, predicted 3, support 2 -> P 2/3, R 1, F1 0.8
    c: TP 1, predicted 1, support 2 -> P 1, R 0.5, F1 2/3
    absent: predicted once, support 0 -> P 0, R/F1 undefined (left out of the macro mean)
    """
    y = np.array([0, 0, 1, 1, 2, 2])
    scores = np.array([
        [0.70, 0.10, 0.10, 0.10],
        [0.30, 0.40, 0.20, 0.10],
        [0.10, 0.80, 0.05, 0.05],
        [0.20, 0.50, 0.20, 0.10],
        [0.10, 0.10, 0.30, 0.50],
        [0.05, 0.05, 0.85, 0.05],
    ])
    return y, scores


def test_per_class_and_averages(case) -> None:
    y, scores = case
    m = metrics.classification_metrics(y, scores, CLASSES, top_k=2)
    rows = {row["label"]: row for row in m["per_class"]}
    assert rows["a"]["precision"] == 1.0 and rows["a"]["recall"] == 0.5
    assert rows["a"]["f1"] == pytest.approx(2 / 3)
    assert rows["b"]["precision"] == pytest.approx(2 / 3) and rows["b"]["recall"] == 1.0
    assert rows["b"]["f1"] == pytest.approx(0.8)
    assert rows["absent"] == {**rows["absent"], "support": 0, "predicted": 1, "precision": 0.0,
                              "recall": None, "f1": None, "average_precision": None, "roc_auc": None}
    assert m["classes_present"] == 3
    assert m["macro"]["precision"] == pytest.approx((1 + 2 / 3 + 1) / 3)
    assert m["macro"]["recall"] == pytest.approx((0.5 + 1 + 0.5) / 3)
    assert m["macro"]["f1"] == pytest.approx((2 / 3 + 0.8 + 2 / 3) / 3)
    assert m["top1_accuracy"] == pytest.approx(4 / 6)
    assert m["micro"]["f1"] == pytest.approx(4 / 6)
    # Top-2: file 1 has a second (0.30), file 4 has c second (0.30 after 0.50): all six hit.
    assert m["top2_accuracy"] == 1.0


def test_average_precision_and_roc_auc_by_hand() -> None:
    positive = np.array([True, False, True, False])
    score = np.array([0.9, 0.8, 0.7, 0.1])
    # Ranked: + - + -. P@1 = 1 at R 0.5, P@3 = 2/3 at R 1 -> AP = 0.5 * 1 + 0.5 * 2/3.
    assert metrics.average_precision(positive, score) == pytest.approx(0.5 + 1 / 3)
    # Positive-negative pairs ordered correctly: (0.9, 0.8) (0.9, 0.1) (0.7, 0.1) of 4.
    assert metrics.roc_auc(positive, score) == pytest.approx(0.75)
    # A tie is one threshold (AP = precision 1/2 at recall 1) and half a pair.
    tie = np.array([0.5, 0.5])
    assert metrics.average_precision(np.array([True, False]), tie) == pytest.approx(0.5)
    assert metrics.roc_auc(np.array([True, False]), tie) == pytest.approx(0.5)
    assert metrics.roc_auc(np.array([True, True]), tie) is None  # no negatives


def test_cmap_and_auc_average_over_present_classes(case) -> None:
    y, scores = case
    m = metrics.classification_metrics(y, scores, CLASSES)
    present = [row for row in m["per_class"] if row["support"]]
    assert m["cmap"] == pytest.approx(np.mean([row["average_precision"] for row in present]))
    # Class a: positives score 0.70, 0.30; negatives 0.10 0.20 0.10 0.05 -> all 8 pairs right.
    assert present[0]["roc_auc"] == 1.0
    assert present[0]["average_precision"] == 1.0


def test_confusion_matrix_counts(case) -> None:
    y, scores = case
    counts = metrics.confusion_matrix(y, scores.argmax(axis=1), 4)
    assert counts.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [0, 0, 1, 1], [0, 0, 0, 0]]


def test_expected_calibration_error_by_hand() -> None:
    # Four files at confidence 0.9, three right: one bin, |0.75 - 0.9| = 0.15.
    scores = np.array([[0.9, 0.1]] * 4)
    y = np.array([0, 0, 0, 1])
    result = metrics.expected_calibration_error(y, scores)
    assert result["ece"] == pytest.approx(0.15)
    filled = [b for b in result["bins"] if b["count"]]
    assert len(filled) == 1 and filled[0]["accuracy"] == 0.75
    # Add two files at 0.6, both right: (4 * 0.15 + 2 * 0.4) / 6.
    scores = np.vstack([scores, [[0.6, 0.4]] * 2])
    y = np.r_[y, 0, 0]
    assert metrics.expected_calibration_error(y, scores)["ece"] == pytest.approx((0.6 + 0.8) / 6)


def test_file_scores_average_probabilities() -> None:
    logits = np.log(np.array([[0.8, 0.2], [0.4, 0.6], [0.1, 0.9]]))
    owner = np.array([0, 0, 2])
    scores = metrics.file_scores(logits, owner, n_files=3)
    assert scores[0] == pytest.approx([0.6, 0.4])
    assert np.isnan(scores[1]).all()  # no patches
    assert scores[2] == pytest.approx([0.1, 0.9])


def test_temperature_recovers_the_overconfidence() -> None:
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 2, (4000, 5))
    y = np.array([rng.choice(5, p=p) for p in metrics.softmax(true_logits)])
    # A model three times too sure of itself: its logits are 3x the calibrated ones.
    one_patch_each = np.arange(y.size)
    assert metrics.fit_temperature(3 * true_logits, one_patch_each, y) == pytest.approx(3.0, rel=0.1)
    # Two patches per file: the fit calibrates the file scores, the means of patch probabilities.
    both = np.vstack([3 * true_logits, 3 * true_logits])
    assert metrics.fit_temperature(both, np.r_[one_patch_each, one_patch_each], y) == pytest.approx(3.0, rel=0.1)
    assert metrics.fit_temperature(np.zeros((0, 5)), np.zeros(0, int), np.zeros(0, int)) == 1.0


def test_thresholds_reach_the_target_precision() -> None:
    # Class 0 scores of six val files, ranked: + + - + - -.
    y = np.array([0, 0, 1, 0, 1, 1])
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    scores = np.c_[scores, 1 - scores]
    rows = metrics.precision_thresholds(y, scores, ["a", "b"], target_precision=0.75)
    a = rows[0]
    # At 0.6: 3 of 4 detections right (0.75), recall 1; the lowest threshold that reaches 0.75.
    assert (a["threshold"], a["precision"], a["recall"], a["status"]) == (0.6, 0.75, 1.0, "ok")
    strict = metrics.precision_thresholds(y, scores, ["a", "b"], target_precision=1.0)[0]
    assert (strict["threshold"], strict["recall"]) == (0.8, pytest.approx(2 / 3))
    # The highest b score belongs to an a file, so no threshold gives b precision 1.
    mixed = metrics.precision_thresholds(np.array([1, 0]), np.array([[0.6, 0.4], [0.4, 0.6]]), ["a", "b"], 1.0)
    assert mixed[1]["status"] == "unreachable" and math.isnan(mixed[1]["threshold"])
    absent = metrics.precision_thresholds(np.array([0, 0]), np.array([[0.9, 0.1]] * 2), ["a", "b"], 0.9)[1]
    assert absent["status"] == "no_val_files" and math.isnan(absent["threshold"])
