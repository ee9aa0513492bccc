"""Transforms of a batch that the per-file, packed and cached inputs share: augmentation, mixup, targets.

A batch of the per-file and packed inputs is a dict: `units` (batch, unit
patches, frames, bands) of log-mel, their `mask`, the `target` and, where
background recordings are mixed in, a `background` of the units' shape.
"""

from __future__ import annotations

import tensorflow as tf

from jibjib.core.settings import AugmentSettings
from jibjib.training.augment import augment_batch, mixup_batch
from jibjib.training.inputs.spec import InputSpec


def augmented(batch: dict[str, tf.Tensor], seed: tf.Tensor, aug: AugmentSettings,
              spec: InputSpec) -> dict[str, tf.Tensor]:
    """The batch with its units augmented (the background, if any, mixed in and dropped)."""
    units = augment_batch(batch["units"], batch.get("background"), seed, aug, spec.frontend)
    return {"units": units, "mask": batch["mask"], "target": batch["target"]}


def mixed_up(batch: dict[str, tf.Tensor], seed: tf.Tensor, aug: AugmentSettings) -> dict[str, tf.Tensor]:
    """The batch after mixup; a mixed sequence's mask holds the patches of both."""
    units, target = mixup_batch(batch["units"], batch["target"], seed, aug.mixup_probability, aug.mixup_alpha)
    return {"units": units, "mask": batch["mask"] | tf.roll(batch["mask"], shift=1, axis=0), "target": target}


def smoothed(target: tf.Tensor, spec: InputSpec, smoothing: float) -> tf.Tensor:
    """Targets moved `smoothing` of the way to uniform (0.5 a class under sigmoid, 1 / classes under softmax)."""
    if smoothing <= 0:
        return target
    share = 0.5 if spec.multi_label else 1.0 / spec.n_classes
    return target * (1.0 - smoothing) + smoothing * share


def model_io(batch: dict[str, tf.Tensor], spec: InputSpec, smoothing: float):
    """(inputs, targets) as the model takes them: single patches for VGGish, patches and mask for the ConvLSTM."""
    target = smoothed(batch["target"], spec, smoothing)
    if spec.seq_len is None:
        return batch["units"][:, 0], target
    return {"patches": batch["units"], "mask": batch["mask"]}, target
