"""What the per-file, packed and cached inputs share: smoothed targets, and a gathered batch as model inputs.

A gathered batch (the CPU side's output, jibjib.training.inputs.pipeline)
is a dict: `units` (batch, unit patches, frames, bands) of log-mel, float16
from the packs or float32 from the npz, their `mask` (right-padded: the real
patches first), each example's `seed` and, where background recordings are
mixed in, a `background` of the units' shape; beside it the targets.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from jibjib.core.params import FrontEnd
from jibjib.training.inputs.spec import InputSpec


def smoothed(target: tf.Tensor | np.ndarray, spec: InputSpec, smoothing: float) -> tf.Tensor | np.ndarray:
    """Targets moved `smoothing` of the way to uniform (0.5 a class under sigmoid, 1 / classes under softmax).

    Linear, so smoothing before mixup (in the training step) is smoothing after it."""
    if smoothing <= 0:
        return target
    share = 0.5 if spec.multi_label else 1.0 / spec.n_classes
    return target * (1.0 - smoothing) + smoothing * share


def model_inputs(batch: dict[str, tf.Tensor], seq_len: int | None, frontend: FrontEnd):
    """A gathered (or augmented) batch as the model takes it: single patches (batch, frames, bands) for VGGish,
    {"patches", "mask"} for the ConvLSTM; float32, padded patches silence whatever they held."""
    units = tf.where(batch["mask"][:, :, None, None], tf.cast(batch["units"], tf.float32), frontend.silence)
    if seq_len is None:
        return units[:, 0]
    return {"patches": units, "mask": batch["mask"]}
