"""The training metrics: accuracy that smoothed targets and background examples cannot fool, and cmAP."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from jibjib.models.metrics import ClassAveragePrecision, SpeciesAccuracy  # noqa: E402


def test_multi_label_accuracy_reads_smoothed_targets() -> None:
    """Label smoothing 0.1 turns 1 into 0.95 and 0 into 0.05: Keras's BinaryAccuracy compares with exact
    {0, 1} and reads 0 for a perfect model; the targets above 0.5 are the positives."""
    targets = np.array([[1, 0, 0], [0, 1, 1]], np.float32) * 0.9 + 0.05
    logits = np.array([[3.0, -2.0, -1.0], [-4.0, 2.0, 1.0]], np.float32)
    keras_accuracy = keras.metrics.BinaryAccuracy(threshold=0.0)
    keras_accuracy.update_state(targets, logits)
    assert float(keras_accuracy.result()) == 0.0
    accuracy = SpeciesAccuracy(multi_label=True)
    accuracy.update_state(targets, logits)
    assert float(accuracy.result()) == 1.0
    logits[1, 2] = -1.0  # one class of one example wrong: 5 of 6
    accuracy.reset_state()
    accuracy.update_state(targets, logits)
    assert float(accuracy.result()) == pytest.approx(5 / 6)


def test_softmax_accuracy_leaves_background_examples_out() -> None:
    """A background example's target is uniform: its argmax (class 0) is no right answer, so a model
    that says class 0 for silence must not score, nor one that spreads its belief lose."""
    targets = np.array([[1, 0, 0], [0, 0, 1], [1 / 3, 1 / 3, 1 / 3], [1 / 3, 1 / 3, 1 / 3]], np.float32)
    logits = np.array([[2, 0, 0], [2, 0, 0], [5, 0, 0], [0, 0, 0.1]], np.float32)
    accuracy = SpeciesAccuracy()
    accuracy.update_state(targets, logits)
    assert float(accuracy.result()) == 0.5  # the two species examples: one right
    smoothed = targets[:2] * 0.8 + 0.2 / 3
    accuracy.reset_state()
    accuracy.update_state(smoothed, logits[:2])
    assert float(accuracy.result()) == 0.5


@pytest.mark.parametrize("multi_label", [False, True])
def test_cmap_is_the_macro_average_precision_of_the_classes_with_a_positive(multi_label: bool) -> None:
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(0)
    n, classes = 600, 6
    targets = np.eye(classes, dtype=np.float32)[rng.integers(0, classes - 1, n)]  # the last class: no positive
    logits = (2.0 * targets + rng.normal(size=(n, classes))).astype(np.float32)
    scores = 1 / (1 + np.exp(-logits)) if multi_label else np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    present = targets.any(axis=0)
    expected = np.mean([average_precision_score(targets[:, c], scores[:, c]) for c in np.flatnonzero(present)])
    cmap = ClassAveragePrecision(present.tolist(), multi_label=multi_label)
    for start in range(0, n, 64):  # batch by batch, as in an epoch
        cmap.update_state(targets[start:start + 64], logits[start:start + 64])
    assert float(cmap.result()) == pytest.approx(expected, abs=0.01)
    assert not present[-1] and 0.3 < expected < 0.95
