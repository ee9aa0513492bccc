"""The training loss, registered with keras.saving so a saved model.keras loads and compiles with it."""

from __future__ import annotations

from typing import Any

import keras


@keras.saving.register_keras_serializable(package="jibjib")
class ClassWeightedCrossentropy(keras.losses.Loss):
    """Cross-entropy from logits with each class weighted, in the loss itself.

    Keras's `class_weight` weights only the training batches, so val_loss
    would measure something else than loss; a weighted loss applies to both.
    Targets are (batch, classes) probabilities (mixed, smoothed or uniform for
    background under softmax). Single-label: softmax cross-entropy times the
    target-weighted class weight. Multi-label: sigmoid cross-entropy per class,
    the positive term of each class times its weight (negatives weigh 1).
    """

    def __init__(self, class_weights: list[float], multi_label: bool = False,
                 name: str = "class_weighted_crossentropy", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.class_weights = [float(w) for w in class_weights]
        self.multi_label = multi_label

    def call(self, y_true, y_pred):  # noqa: ANN001, ANN201 - Keras API
        logits = keras.ops.cast(y_pred, "float32")
        weights = keras.ops.convert_to_tensor(self.class_weights, "float32")
        target = keras.ops.cast(y_true, "float32")
        if self.multi_label:
            per_class = keras.ops.binary_crossentropy(target, logits, from_logits=True)
            return keras.ops.mean(per_class * (1.0 + (weights - 1.0) * target), axis=-1)
        loss = keras.ops.categorical_crossentropy(target, logits, from_logits=True)
        return loss * keras.ops.sum(target * weights, axis=-1)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "class_weights": self.class_weights, "multi_label": self.multi_label}
