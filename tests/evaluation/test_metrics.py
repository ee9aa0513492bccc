"""Metrics, calibration and thresholds against cases worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from jibjib.evaluation import metrics, thresholds as fitting

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


def middle(upper: float, lower: float) -> float:
    """Halfway between two probabilities in log-odds."""
    mean = (math.log(upper / (1 - upper)) + math.log(lower / (1 - lower))) / 2
    return 1 / (1 + math.exp(-mean))


def test_thresholds_reach_the_target_precision() -> None:
    # Class 0 scores of six val files, ranked: + + - + - -.
    y = np.array([0, 0, 1, 0, 1, 1])
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    scores = np.c_[scores, 1 - scores]
    rows = fitting.precision_thresholds(y, scores, ["a", "b"], target_precision=0.75)
    a = rows[0]
    # At 0.6: 3 of 4 detections right (0.75), recall 1; the lowest score that reaches 0.75. Every threshold
    # down to the next score, 0.5, detects the same files: the threshold is the middle of that gap in log-odds.
    assert (a["threshold"], a["precision"], a["recall"], a["status"]) == (pytest.approx(middle(0.6, 0.5)), 0.75,
                                                                          1.0, "ok")
    assert 0.5 < a["threshold"] < 0.6
    strict = fitting.precision_thresholds(y, scores, ["a", "b"], target_precision=1.0)[0]
    assert (strict["threshold"], strict["recall"]) == (pytest.approx(middle(0.8, 0.7)), pytest.approx(2 / 3))
    # The highest b score belongs to an a file, so no threshold gives b precision 1.
    mixed = fitting.precision_thresholds(np.array([1, 0]), np.array([[0.6, 0.4], [0.4, 0.6]]), ["a", "b"], 1.0)
    assert mixed[1]["status"] == "unreachable" and math.isnan(mixed[1]["threshold"])
    # b has no val file: it falls back to the pooled threshold, the lowest positive score of any class above
    # b's 0.1 scores (a's 0.9; there every detection of every class is right) moved to the middle of the gap
    # down to 0.1 (0.5 in log-odds), and is flagged.
    absent = fitting.precision_thresholds(np.array([0, 0]), np.array([[0.9, 0.1]] * 2), ["a", "b"], 0.9)[1]
    assert (absent["status"], absent["threshold"]) == ("fallback", pytest.approx(0.5))
    assert absent["support"] == 0 and math.isnan(absent["recall"])


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
    result = fitting.threshold_outcomes(y, scores, thresholds, ["a", "b", "c", "absent", "none"], 0.6)
    rows = {row["label"]: row for row in result["per_class"]}
    assert rows["a"] == {"label": "a", "support": 3, "detections": 3, "precision": pytest.approx(2 / 3),
                         "precision_low": pytest.approx(0.2077, abs=1e-4),
                         "precision_high": pytest.approx(0.9385, abs=1e-4), "recall": pytest.approx(2 / 3)}
    assert (rows["b"]["detections"], rows["b"]["precision"], rows["b"]["recall"]) == (3, pytest.approx(2 / 3), 1.0)
    assert (rows["c"]["detections"], rows["c"]["precision"], rows["c"]["recall"]) == (0, 0.0, 0.0)
    assert (rows["absent"]["support"], rows["absent"]["detections"]) == (0, 1)
    assert (rows["absent"]["precision"], rows["absent"]["recall"]) == (0.0, None)
    assert rows["none"] == {"label": "none", "support": 0, "detections": None, "precision": None,
                            "precision_low": None, "precision_high": None, "recall": None}
    assert result["classes"] == 3  # a, b, c: a threshold and test files
    assert result["macro_precision"] == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)
    assert result["macro_recall"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert result["classes_reaching_target"] == 2 and result["classes_without_detections"] == 1


def test_threshold_table_fits_and_tests_raw_and_calibrated_separately(tmp_path) -> None:
    pytest.importorskip("tensorflow")
    from jibjib.evaluation.evaluate import Labelled, ThresholdRule, threshold_table, too_few_recordings
    from jibjib.evaluation.report import evaluated_sentence, threshold_sentence

    # Val: a a b. Raw a scores 0.9 0.5 | 0.6 -> lowest score at precision 1 is 0.9 (0.6 is a b file), the
    # threshold in the middle of the gap down to 0.6; calibrated a scores 0.7 0.6 | 0.5 -> 0.6 (gap to 0.5),
    # recall 1. The order changed, so the thresholds differ.
    val_y = np.array([0, 0, 1])
    val = {"raw": np.array([[0.9, 0.1], [0.5, 0.5], [0.6, 0.4]]),
           "calibrated": np.array([[0.7, 0.3], [0.6, 0.4], [0.5, 0.5]])}
    # Test: a b. Raw a 0.95 | 0.2 -> P 1 R 1 at 0.9; calibrated a 0.65 | 0.62 -> both detected at 0.6: P 1/2.
    test_y = np.array([0, 1])
    test = {"raw": np.array([[0.95, 0.05], [0.2, 0.8]]), "calibrated": np.array([[0.65, 0.35], [0.62, 0.38]])}
    # One window per file here: the window thresholds are the subject of the next test.
    val, test = ({**{kind: Labelled(y, scores[kind]) for kind in scores}, "window": Labelled(y, scores["raw"])}
                 for y, scores in ((val_y, val), (test_y, test)))
    table, summary = threshold_table(val, test, ["a", "b"], ThresholdRule(target_precision=1.0))
    interval = ["precision_low", "precision_high"]
    assert list(table.columns) == [
        "label", "threshold", "precision", *interval, "recall", "support", "status", "test_support",
        "test_detections", "test_precision", *(f"test_{c}" for c in interval), "test_recall",
        "calibrated_threshold", "calibrated_precision", *(f"calibrated_{c}" for c in interval), "calibrated_recall",
        "calibrated_status", "calibrated_test_detections", "calibrated_test_precision",
        *(f"calibrated_test_{c}" for c in interval), "calibrated_test_recall",
        "window_threshold", "window_precision", *(f"window_{c}" for c in interval), "window_recall",
        "window_support", "window_status", "window_test_support", "window_test_detections",
        "window_test_precision", *(f"window_test_{c}" for c in interval), "window_test_recall"]
    a, b = summary["per_class"]
    assert (a["threshold"], a["recall"], a["test_precision"], a["test_recall"]) == (pytest.approx(middle(0.9, 0.6)),
                                                                                    0.5, 1.0, 1.0)
    assert (a["calibrated_threshold"], a["calibrated_recall"]) == (pytest.approx(middle(0.6, 0.5)), 1.0)
    assert (a["calibrated_test_detections"], a["calibrated_test_precision"]) == (2, 0.5)
    # b: the highest raw b score on val (0.5) is an a file: no raw threshold, no raw test figures.
    assert (b["status"], b["threshold"], b["test_support"], b["test_precision"]) == ("unreachable", None, 1, None)
    # Calibrated b scores on val 0.3 0.4 | 0.5 -> 0.5 (gap to 0.4: 0.45); on test the b file scores 0.38: no
    # detection, precision 0.
    assert (b["calibrated_threshold"], b["calibrated_test_detections"], b["calibrated_test_precision"]) == (
        pytest.approx(middle(0.5, 0.4)), 0, 0.0)
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
        "no val file (1, the pooled fallback threshold): b."


def test_window_thresholds_are_fitted_on_the_windows_of_val_files_labelled_by_their_file() -> None:
    """Two classes, two windows per file; the numbers are P(a) per window (P(b) = 1 - P(a)).

    Val: file a 0.9 0.3 (mean 0.6), file b 0.5 0.5 (mean 0.5).  At precision 1:
    a  file threshold at 0.6 (recall 1; in the middle of the gap to 0.5, log-odds, as every threshold);
       its windows 0.9 | 0.5 0.5 (b's) | 0.3 -> window threshold at 0.9 (gap to 0.5: 0.75), recall 1/2:
       the quiet window of the a file counts as a window of a, missed.
    b  file threshold at 0.5 (b means 0.4 | 0.5); its windows' highest P(b), 0.7, is the a file's quiet
       window -> unreachable: no window threshold although the file threshold exists.
    Test: file a 0.95 0.35 (mean 0.65), file b 0.6 0.3 (mean 0.45).
    """
    pytest.importorskip("tensorflow")
    import pandas as pd

    from jibjib.evaluation.evaluate import ScoredSplit, ThresholdRule, threshold_scores, threshold_table
    from jibjib.evaluation.report import window_threshold_sentence

    def split(p_a: list[float]) -> ScoredSplit:
        """Two files of two units each; here the analysis windows are the units."""
        p, owner = np.array(p_a), np.array([0, 0, 1, 1])
        logits = np.log(np.c_[p, 1 - p])
        return ScoredSplit(pd.DataFrame({"class_id": [0, 1]}), logits, owner, 0, logits, owner)

    val, test = split([0.9, 0.3, 0.5, 0.5]), split([0.95, 0.35, 0.6, 0.3])
    table, summary = threshold_table(threshold_scores(val, 1.0, False), threshold_scores(test, 1.0, False),
                                     ["a", "b"], ThresholdRule(target_precision=1.0))
    a, b = table.to_dict("records")
    assert (a["threshold"], a["recall"], a["support"]) == (pytest.approx(middle(0.6, 0.5)), 1.0, 1)
    assert (a["window_threshold"], a["window_precision"], a["window_recall"]) == (pytest.approx(0.75), 1.0, 0.5)
    assert (a["window_support"], a["window_status"]) == (2, "ok")
    # On test the a file (mean 0.65) is detected; of its windows only 0.95 reaches 0.75 (b's 0.6 does not).
    assert (a["test_detections"], a["test_recall"]) == (1, 1.0)
    assert (a["window_test_support"], a["window_test_detections"], a["window_test_precision"],
            a["window_test_recall"]) == (2, 1, 1.0, 0.5)
    assert (b["status"], b["threshold"]) == ("ok", pytest.approx(middle(0.5, 0.4)))
    assert b["window_status"] == "unreachable" and math.isnan(b["window_threshold"])
    assert (b["window_support"], b["window_test_support"]) == (2, 2)
    assert pd.isna(b["window_test_detections"]) and math.isnan(b["window_test_precision"])
    assert summary["window"]["classes_with_threshold"] == 1 and summary["raw"]["classes_with_threshold"] == 2
    assert summary["window"]["test"]["classes"] == 1 and summary["window"]["test"]["macro_recall"] == 0.5
    assert summary["window_unit"] == "patch" and "file's label" in summary["window_labels"]
    sentence = window_threshold_sentence(summary)
    assert "the val windows, each labelled with its file's species" in sentence
    assert "on the test windows: window precision 1.000, recall 0.500 over 1 species" in sentence


def test_thresholds_let_at_most_one_percent_of_background_pass() -> None:
    """Precision alone would take 0.3 (3 of 5 detections right); 2 % of the background reaches 0.5."""
    y = np.array([0, 0, 0] + [-1] * 100)
    a = np.array([0.9, 0.8, 0.3] + [0.1] * 98 + [0.5] * 2)
    scores = np.stack([a, 1 - a], axis=1)
    row = fitting.precision_thresholds(y, scores, ["a", "b"], target_precision=0.5)[0]
    # 0.8, moved down its gap no further than the background floor 0.5 (the 99th percentile).
    assert (row["threshold"], row["recall"], row["status"]) == (pytest.approx(middle(0.8, 0.5)), pytest.approx(2 / 3),
                                                                "ok")
    lenient = fitting.precision_thresholds(y, scores, ["a", "b"], target_precision=0.5, background_pass_rate=0.05)[0]
    assert lenient["threshold"] == pytest.approx(middle(0.3, 0.1))


# --------------------------------------------------------------------------
# Every figure of metrics.json against scikit-learn, computed there independently, on random cases


def random_case(seed: int, n: int = 60, n_classes: int = 5, ties: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Truth with single-species, multi-species and background rows (and a class never present), and scores
    (rounded to one decimal when `ties`, so that many scores tie)."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((n, n_classes), bool)
    kind = rng.choice(["single", "multi", "background"], n, p=[0.6, 0.2, 0.2])
    for row in range(n):
        if kind[row] != "background":
            truth[row, rng.choice(n_classes - 1, 1 if kind[row] == "single" else 2, replace=False)] = True
    scores = np.clip(0.35 * truth + rng.uniform(0, 0.7, (n, n_classes)), 0, 1)
    return truth, np.round(scores, 1) if ties else scores


def sklearn_reference(truth: np.ndarray, scores: np.ndarray, k: int) -> dict:
    """The metrics.json figures from scikit-learn calls, with the module docstring's conventions."""
    from sklearn import metrics as sk
    from sklearn.calibration import calibration_curve

    n_classes = truth.shape[1]
    labels = np.arange(n_classes)
    single = truth.sum(axis=1) == 1
    y1, top = truth[single].argmax(axis=1), scores.argmax(axis=1)
    rows = truth.any(axis=1)
    one_hot = np.eye(n_classes, dtype=int)[top[rows]]
    precision, recall, _, support = sk.precision_recall_fscore_support(
        truth[rows].astype(int), one_hot, average=None, labels=labels, zero_division=np.nan)
    present = support > 0
    precision = np.where(np.isnan(precision) & present, 0.0, precision)  # never predicted, but present: 0
    f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    micro = sk.precision_recall_fscore_support(truth[rows].astype(int), one_hot, average="micro", labels=labels)

    def ece(outcome: np.ndarray, confidence: np.ndarray) -> float:
        prob_true, prob_pred = calibration_curve(outcome, confidence, n_bins=metrics.ECE_BINS)
        counts = np.histogram(confidence, np.linspace(0, 1, metrics.ECE_BINS + 1))[0]
        return float(np.sum(counts[counts > 0] * np.abs(prob_true - prob_pred)) / confidence.size)

    has_negatives = present & (truth.sum(axis=0) < len(truth))
    return {
        "top1_accuracy": sk.accuracy_score(y1, top[single]),
        f"top{k}_accuracy": sk.top_k_accuracy_score(y1, scores[single], k=k, labels=labels),
        "confusion": sk.confusion_matrix(y1, top[single], labels=labels).tolist(),
        "precision": precision, "recall": recall, "f1": f1,
        "macro": {"precision": np.nanmean(precision[present]), "recall": np.nanmean(recall[present]),
                  "f1": np.nanmean(f1[present])},
        "micro": dict(zip(("precision", "recall", "f1"), micro[:3])),
        "cmap": np.mean([sk.average_precision_score(truth[:, c], scores[:, c]) for c in labels[present]]),
        "macro_roc_auc": np.mean([sk.roc_auc_score(truth[:, c], scores[:, c]) for c in labels[has_negatives]]),
        "ece": ece(truth[single].argmax(axis=1) == top[single], scores[single].max(axis=1)),
        "classwise_ece": np.mean([ece(truth[:, c], scores[:, c]) for c in labels]),
    }


@pytest.mark.parametrize("seed", range(6))
def test_classification_metrics_agree_with_scikit_learn(seed: int) -> None:
    truth, scores = random_case(seed, ties=seed % 2 == 1)
    classes = [f"c{i}" for i in range(truth.shape[1])]
    got = metrics.classification_metrics(truth, scores, classes, top_k=2)
    expected = sklearn_reference(truth, scores, k=2)
    assert got["classes_present"] == truth.shape[1] - 1  # the last class is never present
    for key in ("top1_accuracy", "top2_accuracy", "cmap", "macro_roc_auc", "classwise_ece"):
        assert got[key] == pytest.approx(expected[key], abs=1e-12), key
    if seed % 2 == 0:  # scikit-learn's histogram and its bins differ only for a score on a bin's edge
        assert got["ece"] == pytest.approx(expected["ece"], abs=1e-12)
    assert got["confusion"] == expected["confusion"]
    assert got["macro"] == pytest.approx(expected["macro"]) and got["micro"] == pytest.approx(expected["micro"])
    for c, row in enumerate(got["per_class"][:-1]):
        assert (row["precision"], row["recall"], row["f1"]) == pytest.approx(
            (expected["precision"][c], expected["recall"][c], expected["f1"][c])), row["label"]


@pytest.mark.parametrize("seed", range(4))
def test_thresholds_and_their_test_figures_agree_with_scikit_learn(seed: int) -> None:
    """The val threshold is the lowest point of scikit-learn's precision-recall curve that reaches the target
    above the background rule; on test, precision and recall are scikit-learn's of score >= threshold."""
    from sklearn import metrics as sk

    val_truth, val_scores = random_case(seed, n=80, ties=seed % 2 == 1)
    test_truth, test_scores = random_case(seed + 100, n=80)
    classes = [f"c{i}" for i in range(val_truth.shape[1])]
    rows = fitting.precision_thresholds(val_truth, val_scores, classes, 0.8)
    outcome = fitting.threshold_outcomes(test_truth, test_scores, np.array([r["threshold"] for r in rows]),
                                         classes, 0.8)
    background = ~val_truth.any(axis=1)
    for c, row in enumerate(rows[:-1]):
        precision, recall, candidates = sk.precision_recall_curve(val_truth[:, c], val_scores[:, c])
        floor = np.quantile(val_scores[background, c], 0.99, method="higher")
        good = candidates[(precision[:-1] >= 0.8) & (recall[:-1] > 0) & (candidates > floor)]
        if good.size == 0:
            assert row["status"] == "unreachable" and math.isnan(row["threshold"])
            continue
        below = val_scores[val_scores[:, c] < good.min(), c]
        lower = max(below.max(initial=-np.inf), floor)
        assert (row["status"], row["threshold"]) == ("ok", pytest.approx(middle(good.min(), lower)))
        detected = val_scores[:, c] >= row["threshold"]
        assert row["precision"] == pytest.approx(sk.precision_score(val_truth[:, c], detected))
        assert row["recall"] == pytest.approx(sk.recall_score(val_truth[:, c], detected))
        tested = outcome["per_class"][c]
        detected = test_scores[:, c] >= row["threshold"]
        assert tested["precision"] == pytest.approx(sk.precision_score(test_truth[:, c], detected, zero_division=0))
        assert tested["recall"] == pytest.approx(sk.recall_score(test_truth[:, c], detected))


def test_calibration_bins_are_calibration_curves() -> None:
    from sklearn.calibration import calibration_curve

    rng = np.random.default_rng(3)
    confidence = rng.uniform(0, 1, 500)
    outcome = rng.uniform(0, 1, 500) < confidence**2
    table = metrics.calibration_bins(confidence, outcome)["bins"]
    prob_true, prob_pred = calibration_curve(outcome, confidence, n_bins=metrics.ECE_BINS)
    filled = [b for b in table if b["count"]]
    assert [b["accuracy"] for b in filled] == pytest.approx(prob_true)
    assert [b["confidence"] for b in filled] == pytest.approx(prob_pred)
    # A score on an inner edge goes to the lower bin, as in calibration_curve.
    assert metrics.calibration_bins(np.array([1 / 3]), np.array([1]), bins=3)["bins"][0]["count"] == 1


def test_classwise_calibration_counts_every_class_on_every_row() -> None:
    """Sigmoid scores of two rows, two classes: row 0 holds a (0.9 a, 0.6 b), row 1 is background (0.2, 0.7).

    Top-1 ECE sees row 0 only: confidence 0.9, right -> 0.1.  Classwise: class a's scores 0.9 (holds it) and
    0.2 (not) sit in bins of their own, |1 - 0.9| and |0 - 0.2| over 2 rows -> 0.15; class b's 0.6 and 0.7,
    both absent -> (0.6 + 0.7) / 2 = 0.65; the mean over classes 0.4.
    """
    truth = np.array([[True, False], [False, False]])
    scores = np.array([[0.9, 0.6], [0.2, 0.7]])
    assert metrics.expected_calibration_error(metrics.single_class(truth), scores)["ece"] == pytest.approx(0.1)
    classwise = metrics.classwise_calibration_error(truth, scores)
    assert classwise["ece"] == pytest.approx(0.4)
    assert sum(b["count"] for b in classwise["bins"]) == 4  # the pooled table for the diagram: every pair
    m = metrics.classification_metrics(truth, scores, ["a", "b"])
    assert (m["ece"], m["classwise_ece"]) == (pytest.approx(0.1), pytest.approx(0.4))


def test_thresholds_need_val_support_or_fall_back_to_the_pooled_one() -> None:
    """Val: a has 4 files (0.9 0.8 0.7 0.6), b one (0.95); every other score is 0.1 or 0.2.

    a: 4 files >= min_support 3 -> its own threshold at 0.6 (precision 1).  b: one file, below the minimum
    -> the pooled threshold: every class's score on every row pooled, positives 0.95 0.9 0.8 0.7 0.6,
    negatives at most 0.2 -> the lowest positive, 0.6, reaches precision 1.  Status `fallback`, its own
    figures.  Each threshold sits in the middle (log-odds) of its gap, here down to 0.2.
    """
    y = np.array([0, 0, 0, 0, 1])
    a = np.array([0.9, 0.8, 0.7, 0.6, 0.2])
    scores = np.stack([a, np.where(y == 1, 0.95, 0.1)], axis=1)
    a_row, b_row = fitting.precision_thresholds(y, scores, ["a", "b"], 1.0, min_support=3)
    assert (a_row["threshold"], a_row["status"], a_row["support"]) == (pytest.approx(middle(0.6, 0.2)), "ok", 4)
    assert (b_row["status"], b_row["support"]) == ("fallback", 1)
    assert b_row["threshold"] == pytest.approx(middle(0.6, 0.2))
    assert (b_row["precision"], b_row["recall"]) == (1.0, 1.0)
    # One right detection of one: the interval says how little that shows.
    assert (b_row["precision_low"], b_row["precision_high"]) == (pytest.approx(0.2065, abs=1e-4), 1.0)
    # With min_support 1, b keeps its own threshold: its one file's score.
    assert fitting.precision_thresholds(y, scores, ["a", "b"], 1.0, min_support=1)[1]["threshold"] == pytest.approx(
        middle(0.95, 0.1))


def test_precision_interval_is_wilson() -> None:
    z = 1.959963984540054
    for hits, n in ((1, 1), (3, 4), (45, 50)):
        p = hits / n
        centre, half = (p + z * z / (2 * n)) / (1 + z * z / n), z / (1 + z * z / n) * math.sqrt(
            p * (1 - p) / n + z * z / (4 * n * n))
        assert fitting.precision_interval(hits, n) == pytest.approx((centre - half, min(1.0, centre + half)))
    assert all(math.isnan(v) for v in fitting.precision_interval(0, 0))


def test_temperature_reaches_its_bound_when_no_file_votes_wrongly() -> None:
    """Why both demo models' temperatures sit at 0.05: with sigmoid outputs, as T falls a file score tends
    to the share of its patches with a positive logit.  When every (file, class) pair has at least one patch
    on the right side, that limit is never certainly wrong, and the many negative pairs (each costing
    -log(1 - p) at T = 1) pull T down to the bound.  One file all of whose patches vote for a class it lacks
    makes sharpening expensive, and the fit stops inside."""
    rng = np.random.default_rng(0)
    n_files, patches, n_classes = 30, 4, 5
    y = np.arange(n_files) % n_classes
    owner = np.repeat(np.arange(n_files), patches)
    logits = rng.normal(-3.0, 1.0, (n_files * patches, n_classes))
    own = logits[np.arange(owner.size), y[owner]]
    logits[np.arange(owner.size), y[owner]] = np.where(np.arange(owner.size) % patches == 0, -1.0, 2.0 + own + 3.0)
    at_bound = metrics.fit_temperature(logits, owner, y, multi_label=True)
    assert at_bound == pytest.approx(metrics.TEMPERATURE_BOUNDS[0], rel=0.01)
    wrong = logits.copy()
    wrong[owner == 0, 1] = 3.0  # file 0 (class 0): all its patches say class 1 too
    inside = metrics.fit_temperature(wrong, owner, y, multi_label=True)
    assert metrics.TEMPERATURE_BOUNDS[0] * 2 < inside < metrics.TEMPERATURE_BOUNDS[1] / 2


# --------------------------------------------------------------------------
# Window thresholds are fitted on the windows analyze cuts


def test_evaluation_cuts_the_windows_analyze_cuts() -> None:
    pytest.importorskip("tensorflow")
    from jibjib.analysis.analyzer import WindowCutter
    from jibjib.core.params import VGGISH, WindowGrid
    from jibjib.evaluation.evaluate import analysis_windows

    log_mel = np.random.default_rng(0).normal(size=(1000, 64)).astype(np.float32)
    for patches, hop in ((1, None), (3, None), (3, 0.5)):
        grid = WindowGrid.for_model(VGGISH, patches, hop)
        cutter = WindowCutter(grid, 64)
        expected = np.concatenate([cutter.push(log_mel[i:i + 137]) for i in range(0, 1000, 137)])
        got = analysis_windows(log_mel, grid, None if patches == 1 else patches)
        if patches > 1:
            patches_of, mask = got
            assert mask.all() and patches_of.shape[1:] == (patches, 96, 64)
            got = patches_of.reshape(len(patches_of), -1, 64)
        assert np.array_equal(got, expected)
    assert analysis_windows(log_mel[:200], WindowGrid.for_model(VGGISH, 3), 3) is None  # no whole window


def test_convlstm_window_thresholds_never_see_a_padded_tail(tmp_path) -> None:
    """A file of 3 patches, seq_len 2: the file score averages the sequences [p0 p1] and [p2 pad]; analyze
    scores the windows [p0 p1] and [p1 p2] (hop one patch), every patch real.  The model's logit is
    10 x (share of real patches) - 6: 4 for a full sequence, -1 for the padded one."""
    keras = pytest.importorskip("keras")
    import pandas as pd

    from jibjib.core.params import VGGISH, WindowGrid
    from jibjib.evaluation.evaluate import score_files

    patches, mask = keras.Input((2, 96, 64), name="patches"), keras.Input((2,), dtype="bool", name="mask")
    share = keras.layers.Lambda(lambda m: keras.ops.mean(keras.ops.cast(m, "float32"), axis=1, keepdims=True))(mask)
    model = keras.Model([patches, mask], keras.layers.Lambda(lambda s: 10.0 * s - 6.0)(share))
    np.savez(tmp_path / "f.npz", log_mel=np.zeros((3 * 96 + 10, 64), np.float32))
    files = pd.DataFrame({"feature": [str(tmp_path / "f.npz")]})
    units, _ = score_files(model, files)
    windows, owner = score_files(model, files, WindowGrid.for_model(VGGISH, 2))
    assert units[:, 0] == pytest.approx([4.0, -1.0])
    assert windows[:, 0] == pytest.approx([4.0, 4.0]) and owner.tolist() == [0, 0]


@pytest.mark.parametrize("inactive", ["drop", "negative"])
def test_window_labels_follow_the_call_windows_of_the_run(inactive: str) -> None:
    """A species file's inactive windows are left out (drop) or negatives; background windows stay negatives."""
    pytest.importorskip("tensorflow")
    import pandas as pd

    from jibjib.evaluation.evaluate import ScoredSplit, ThresholdRule, threshold_scores, threshold_table
    from jibjib.evaluation.report import window_threshold_sentence
    from jibjib.training.windows import WindowRule

    # File a (class 0): windows 0.9 (active) and 0.8 (silent); background file: windows 0.2 and 0.85 (both silent).
    p, owner = np.array([0.9, 0.8, 0.2, 0.85]), np.array([0, 0, 1, 1])
    logits = np.log(np.c_[p, 1 - p] / (1 - np.c_[p, 1 - p]))
    files = pd.DataFrame({"class_id": [0, -1], "class_ids": [(0,), ()]})
    split = ScoredSplit(files, logits, owner, 0, logits, owner, np.array([20.0, 1.0, 1.0, 1.0]))
    rule = WindowRule("activity", 6.0, inactive, 0.3)
    window = threshold_scores(split, 1.0, True, rule)["window"]
    if inactive == "drop":
        assert window.y.tolist() == [[True, False], [False, False], [False, False]]
        assert window.scores[:, 0].round(2).tolist() == [0.9, 0.2, 0.85]
    else:
        assert window.y.tolist() == [[True, False]] + [[False, False]] * 3
    # Under every_window the silent window of file a is a positive, as before.
    assert threshold_scores(split, 1.0, True)["window"].y[:, 0].tolist() == [True, True, False, False]
    _, summary = threshold_table(threshold_scores(split, 1.0, True, rule), threshold_scores(split, 1.0, True, rule),
                                 ["a", "b"], ThresholdRule(target_precision=1.0, windows=rule))
    assert summary["call_windows"] == "activity" and "6 dB" in summary["window_labels"]
    assert "where it holds an active patch" in window_threshold_sentence(summary)
