"""Metrics, calibration and thresholds against cases worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from jibjib.evaluation import metrics

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


def test_val_thresholds_applied_to_test_by_hand() -> None:
    """Six test files, true a a a b b c; thresholds fitted elsewhere: a 0.5, b 0.6, c 0.9, absent 0.5, none NaN.

    a: detected at >= 0.5: files 0 1 3 (3 is a b file) -> P 2/3, R 2/3
    b: files 2 (an a file, exactly at 0.6) 3 4 -> P 2/3, R 1
    c: nothing reaches 0.9 -> detections 0, P 0 (by convention), R 0
    absent: no test file, one detection -> P 0, R null, left out of the macro mean
    none: no threshold -> null figures
    """
    y = np.array([0, 0, 0, 1, 1, 2])
    scores = np.array([
        # a     b     c     absent none
        [0.80, 0.10, 0.10, 0.00, 0.9],
        [0.60, 0.20, 0.20, 0.00, 0.9],
        [0.30, 0.60, 0.10, 0.00, 0.9],
        [0.55, 0.65, 0.05, 0.00, 0.9],
        [0.10, 0.70, 0.20, 0.50, 0.9],
        [0.20, 0.10, 0.70, 0.00, 0.9],
    ])
    thresholds = np.array([0.5, 0.6, 0.9, 0.5, math.nan])
    result = metrics.threshold_outcomes(y, scores, thresholds, ["a", "b", "c", "absent", "none"], 0.6)
    rows = {row["label"]: row for row in result["per_class"]}
    assert rows["a"] == {"label": "a", "support": 3, "detections": 3, "precision": pytest.approx(2 / 3),
                         "recall": pytest.approx(2 / 3)}
    assert (rows["b"]["detections"], rows["b"]["precision"], rows["b"]["recall"]) == (3, pytest.approx(2 / 3), 1.0)
    assert (rows["c"]["detections"], rows["c"]["precision"], rows["c"]["recall"]) == (0, 0.0, 0.0)
    assert (rows["absent"]["support"], rows["absent"]["detections"]) == (0, 1)
    assert (rows["absent"]["precision"], rows["absent"]["recall"]) == (0.0, None)
    assert rows["none"] == {"label": "none", "support": 0, "detections": None, "precision": None, "recall": None}
    assert result["classes"] == 3  # a, b, c: a threshold and test files
    assert result["macro_precision"] == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)
    assert result["macro_recall"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert result["classes_reaching_target"] == 2 and result["classes_without_detections"] == 1


def test_threshold_table_fits_and_tests_raw_and_calibrated_separately(tmp_path) -> None:
    pytest.importorskip("tensorflow")
    from jibjib.evaluation.evaluate import (
        Labelled, evaluated_sentence, threshold_sentence, threshold_table, too_few_recordings,
    )

    # Val: a a b. Raw a scores 0.9 0.5 | 0.6 -> lowest threshold at precision 1 is 0.9 (0.6 is a b file);
    # calibrated a scores 0.7 0.6 | 0.5 -> 0.6, recall 1. The order changed, so the thresholds differ.
    val_y = np.array([0, 0, 1])
    val = {"raw": np.array([[0.9, 0.1], [0.5, 0.5], [0.6, 0.4]]),
           "calibrated": np.array([[0.7, 0.3], [0.6, 0.4], [0.5, 0.5]])}
    # Test: a b. Raw a 0.95 | 0.2 -> P 1 R 1 at 0.9; calibrated a 0.65 | 0.62 -> both detected at 0.6: P 1/2.
    test_y = np.array([0, 1])
    test = {"raw": np.array([[0.95, 0.05], [0.2, 0.8]]), "calibrated": np.array([[0.65, 0.35], [0.62, 0.38]])}
    # One window per file here: the window thresholds are the subject of the next test.
    val, test = ({**{kind: Labelled(y, scores[kind]) for kind in scores}, "window": Labelled(y, scores["raw"])}
                 for y, scores in ((val_y, val), (test_y, test)))
    table, summary = threshold_table(val, test, ["a", "b"], target_precision=1.0, window_unit="patch")
    assert list(table.columns) == [
        "label", "threshold", "precision", "recall", "support", "status", "test_support", "test_detections",
        "test_precision", "test_recall", "calibrated_threshold", "calibrated_precision", "calibrated_recall",
        "calibrated_status", "calibrated_test_detections", "calibrated_test_precision", "calibrated_test_recall",
        "window_threshold", "window_precision", "window_recall", "window_support", "window_status",
        "window_test_support", "window_test_detections", "window_test_precision", "window_test_recall"]
    a, b = summary["per_class"]
    assert (a["threshold"], a["recall"], a["test_precision"], a["test_recall"]) == (0.9, 0.5, 1.0, 1.0)
    assert (a["calibrated_threshold"], a["calibrated_recall"]) == (0.6, 1.0)
    assert (a["calibrated_test_detections"], a["calibrated_test_precision"]) == (2, 0.5)
    # b: the highest raw b score on val (0.5) is an a file: no raw threshold, no raw test figures.
    assert (b["status"], b["threshold"], b["test_support"], b["test_precision"]) == ("unreachable", None, 1, None)
    # Calibrated b scores on val 0.3 0.4 | 0.5 -> 0.5; on test the b file scores 0.38: no detection, precision 0.
    assert (b["calibrated_threshold"], b["calibrated_test_detections"], b["calibrated_test_precision"]) == (0.5, 0, 0.0)
    assert summary["raw"]["classes_with_threshold"] == 1 and summary["calibrated"]["classes_with_threshold"] == 2
    assert summary["raw"]["test"]["classes"] == 1 and summary["raw"]["test"]["macro_precision"] == 1.0
    calibrated = summary["calibrated"]["test"]
    assert (calibrated["classes"], calibrated["macro_precision"], calibrated["macro_recall"]) == (2, 0.25, 0.5)
    assert calibrated["classes_without_detections"] == 1
    assert "calibrated scores" in threshold_sentence(summary)

    assert summary["window"]["classes_with_threshold"] == summary["raw"]["classes_with_threshold"]

    split = tmp_path / "split.tsv"
    split.write_text("path\tlabel\trecording_id\tsplit\n"
                     "a/1.wav\ta\t1\ttrain\na/2.wav\ta\t2\tval\na/3.wav\ta\t3\ttest\nb/1.wav\tb\t1\ttrain\n"
                     "c/1.wav\tc\t1\ttrain\nc/2.wav\tc\t2\tval\n")
    few = too_few_recordings(split, ["a", "b", "c"])
    assert few == {"species_without_test_files": ["b", "c"], "species_without_val_files": ["b"]}
    assert evaluated_sentence(few) == "Too few recordings: no test file (2, not evaluated): b, c; " \
        "no val file (1, no threshold): b."


def test_window_thresholds_are_fitted_on_the_windows_of_val_files_labelled_by_their_file() -> None:
    """Two classes, two windows per file; the numbers are P(a) per window (P(b) = 1 - P(a)).

    Val: file a 0.9 0.3 (mean 0.6), file b 0.5 0.5 (mean 0.5).  At precision 1:
    a  file threshold 0.6 (recall 1); its windows 0.9 | 0.5 0.5 (b's) | 0.3 -> window threshold 0.9,
       recall 1/2: the quiet window of the a file counts as a window of a, missed.
    b  file threshold 0.5 (b means 0.4 | 0.5); its windows' highest P(b), 0.7, is the a file's quiet
       window -> unreachable: no window threshold although the file threshold exists.
    Test: file a 0.95 0.35 (mean 0.65), file b 0.6 0.3 (mean 0.45).
    """
    pytest.importorskip("tensorflow")
    import pandas as pd

    from jibjib.evaluation.evaluate import (
        ScoredSplit, threshold_scores, threshold_table, window_threshold_sentence,
    )

    def split(p_a: list[float]) -> ScoredSplit:
        p = np.array(p_a)
        return ScoredSplit(pd.DataFrame({"class_id": [0, 1]}), np.log(np.c_[p, 1 - p]), np.array([0, 0, 1, 1]), 0)

    val, test = split([0.9, 0.3, 0.5, 0.5]), split([0.95, 0.35, 0.6, 0.3])
    table, summary = threshold_table(threshold_scores(val, 1.0, False), threshold_scores(test, 1.0, False),
                                     ["a", "b"], target_precision=1.0, window_unit="patch")
    a, b = table.to_dict("records")
    assert (a["threshold"], a["recall"], a["support"]) == (pytest.approx(0.6), 1.0, 1)
    assert (a["window_threshold"], a["window_precision"], a["window_recall"]) == (pytest.approx(0.9), 1.0, 0.5)
    assert (a["window_support"], a["window_status"]) == (2, "ok")
    # On test the a file (mean 0.65) is detected; of its windows only 0.95 reaches 0.9.
    assert (a["test_detections"], a["test_recall"]) == (1, 1.0)
    assert (a["window_test_support"], a["window_test_detections"], a["window_test_precision"],
            a["window_test_recall"]) == (2, 1, 1.0, 0.5)
    assert (b["status"], b["threshold"]) == ("ok", pytest.approx(0.5))
    assert b["window_status"] == "unreachable" and math.isnan(b["window_threshold"])
    assert (b["window_support"], b["window_test_support"]) == (2, 2)
    assert pd.isna(b["window_test_detections"]) and math.isnan(b["window_test_precision"])
    assert summary["window"]["classes_with_threshold"] == 1 and summary["raw"]["classes_with_threshold"] == 2
    assert summary["window"]["test"]["classes"] == 1 and summary["window"]["test"]["macro_recall"] == 0.5
    assert summary["window_unit"] == "patch" and "file's label" in summary["window_labels"]
    sentence = window_threshold_sentence(summary)
    assert "the val patches, each patch labelled with its file's species" in sentence
    assert "on the test patches: window precision 1.000, recall 0.500 over 1 species" in sentence


def test_thresholds_let_at_most_one_percent_of_background_pass() -> None:
    """Precision alone would take 0.3 (3 of 5 detections right); 2 % of the background reaches 0.5."""
    y = np.array([0, 0, 0] + [-1] * 100)
    a = np.array([0.9, 0.8, 0.3] + [0.1] * 98 + [0.5] * 2)
    scores = np.stack([a, 1 - a], axis=1)
    row = metrics.precision_thresholds(y, scores, ["a", "b"], target_precision=0.5)[0]
    assert (row["threshold"], row["recall"], row["status"]) == (0.8, pytest.approx(2 / 3), "ok")
    lenient = metrics.precision_thresholds(y, scores, ["a", "b"], target_precision=0.5, background_pass_rate=0.05)[0]
    assert lenient["threshold"] == 0.3
