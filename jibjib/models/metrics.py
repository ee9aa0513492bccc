"""The training metrics, from logits, registered with keras.saving so a saved model.keras loads compiled.

- `SpeciesAccuracy` ("accuracy"): right where it can be right. Multi-label:
  per-class binary accuracy against the targets above 0.5 (a
  smoothed or mixed target is never exactly 0 or 1). Softmax: categorical
  accuracy over the examples of a species; a background example's uniform
  target has no right class (its argmax would be class 0), so it is left out.
- `ClassAveragePrecision` ("cmap"): macro average precision over the classes
  with a positive (the `present` classes: those of the val split), as
  Keras's interpolated PR-AUC accumulates it batch by batch (exact sums over
  the replicas, no predictions held). Its thresholds are spaced evenly in
  logit, so that softmax probabilities of many classes, mostly near 0, are
  still told apart. It approximates the evaluation's exact cmAP.
"""

from __future__ import annotations

from typing import Any

import keras

LOGIT_RANGE = 12.0  # cmap's thresholds span logits -12 to 12 (probabilities 6e-6 to 1 - 6e-6) ...
THRESHOLDS = 201  # ... in steps of 0.12


def _species_rows(target: Any) -> Any:
    """1.0 for a row whose target is not uniform (an example of some species), else 0.0."""
    spread = keras.ops.max(target, axis=-1) - keras.ops.min(target, axis=-1)
    return keras.ops.cast(spread > 1e-6, "float32")


@keras.saving.register_keras_serializable(package="jibjib")
class SpeciesAccuracy(keras.metrics.Mean):
    """Accuracy of logits: per class against targets > 0.5 (multi-label), or over species rows (softmax)."""

    def __init__(self, multi_label: bool = False, name: str = "accuracy", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.multi_label = multi_label

    def update_state(self, y_true, y_pred, sample_weight=None):  # noqa: ANN001, ANN201 - Keras API
        target = keras.ops.cast(y_true, "float32")
        logits = keras.ops.cast(y_pred, "float32")
        if self.multi_label:
            right = keras.ops.cast((logits > 0.0) == (target > 0.5), "float32")
            return super().update_state(keras.ops.mean(right, axis=-1), sample_weight)
        right = keras.ops.cast(keras.ops.argmax(logits, axis=-1) == keras.ops.argmax(target, axis=-1), "float32")
        weight = _species_rows(target)
        if sample_weight is not None:
            weight = weight * keras.ops.reshape(keras.ops.cast(sample_weight, "float32"), (-1,))
        return super().update_state(right, weight)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "multi_label": self.multi_label}


@keras.saving.register_keras_serializable(package="jibjib")
class ClassAveragePrecision(keras.metrics.AUC):
    """Macro average precision of logits over the `present` classes (a list of bools, one per class)."""

    def __init__(self, present: list[bool], multi_label: bool = False, name: str = "cmap", **kwargs: Any) -> None:
        self.present = [bool(p) for p in present]
        self.softmax = not multi_label
        # Evenly spaced thresholds (Keras then buckets the scores in one pass) over the scores of _scores.
        super().__init__(num_thresholds=THRESHOLDS, curve="PR", multi_label=True,
                         num_labels=len(self.present), label_weights=[float(p) for p in self.present], name=name,
                         **kwargs)

    def update_state(self, y_true, y_pred, sample_weight=None):  # noqa: ANN001, ANN201 - Keras API
        positive = keras.ops.cast(keras.ops.cast(y_true, "float32") > 0.5, "float32")
        return super().update_state(positive, _scores(y_pred, self.softmax), sample_weight)

    def get_config(self) -> dict[str, Any]:
        # Only what __init__ takes: the AUC's own settings (thresholds, label weights) follow from it.
        return {**keras.metrics.Metric.get_config(self), "present": self.present, "multi_label": not self.softmax}


def _scores(logits: Any, softmax: bool) -> Any:
    """Each class's probability (softmax or sigmoid) as its logit, mapped linearly from +-LOGIT_RANGE onto [0, 1].

    Average precision ranks the examples of each class by score, so any
    increasing map of the probability gives the same AP; evenly spaced
    thresholds over this one are evenly spaced in logit.
    """
    logits = keras.ops.cast(logits, "float32")
    if softmax:
        probability = keras.ops.clip(keras.ops.softmax(logits, axis=-1), 1e-7, 1.0 - 1e-7)
        logits = keras.ops.log(probability) - keras.ops.log1p(-probability)
    return keras.ops.clip((logits + LOGIT_RANGE) / (2 * LOGIT_RANGE), 0.0, 1.0)
