"""The training input of a split: the CPU side gathers examples, the training step augments them.

`gathered_batches` is what a training run feeds its model: batches of raw
examples from the per-file npz (jibjib.training.inputs.npz) or the packed
features (.packed), with everything the augmentation needs beside them
(each example's seed, background stretches), but no augmentation: that runs
on the device that trains, inside the training step
(jibjib.training.trainer, with jibjib.training.augment.augment_gathered).
`training_dataset` applies the same augmentation on the CPU and gives model
inputs, as a model's fit takes them without the trainer: what the tests and
benchmarks compare against.
"""

from __future__ import annotations

import pandas as pd
import tensorflow as tf

from jibjib.packing import PackedFeatures
from jibjib.training.augment import augment_gathered
from jibjib.training.examples import file_targets
from jibjib.training.inputs.batches import model_inputs, smoothed
from jibjib.training.inputs.npz import npz_batches
from jibjib.training.inputs.order import InputShare
from jibjib.training.inputs.packed import packed_batches
from jibjib.training.inputs.spec import InputSpec

AUTOTUNE = tf.data.AUTOTUNE


def gathered_batches(files: pd.DataFrame, spec: InputSpec, batch_size: int, training: bool, seed: int = 0,
                     packs: PackedFeatures | None = None, share: InputShare = InputShare()) -> tf.data.Dataset:
    """Batches of (gathered examples, targets (B, classes) float32) from a split's files, not yet augmented.

    The gathered examples are a dict (jibjib.training.inputs.batches). With
    `packs` (jibjib.packing) examples are gathered from the packed features,
    many per read, in an exact shuffle of all examples of the split; without,
    each file's npz is read by parallel workers in a seeded order and its
    examples mixed in a fixed-size shuffle buffer. Either way memory does not
    grow with the corpus beyond a few numbers per example. With `training`
    the examples are reshuffled each epoch, background stretches are gathered
    for the augmentation of `spec` (from the split's files without a
    species), and the targets are label-smoothed; `class_balance: sampling`
    draws examples with replacement so that every class gives the same
    number. Without `training` every example comes once, in file order.
    `share`: with several workers (packed input only) each reads its share of
    each global batch of `batch_size` and yields batches of that share.
    """
    aug = spec.augmentation.active() if training else spec.augmentation.off()
    targets = smoothed(file_targets(files, spec), spec, spec.label_smoothing if training else 0.0)
    if packs is not None:
        ds = packed_batches(files, targets, packs, spec, aug, batch_size, training, seed, share)
    elif share.workers > 1:
        raise ValueError("only the packed input reads a share of each batch per worker")
    else:
        ds = npz_batches(files, targets, spec, aug, batch_size, training, seed)
    return ds.prefetch(AUTOTUNE)


def training_dataset(files: pd.DataFrame, spec: InputSpec, batch_size: int, training: bool,
                     seed: int = 0, packs: PackedFeatures | None = None) -> tf.data.Dataset:
    """Batches of (inputs, targets (B, classes) float32), augmented on the CPU as the training step would.

    Inputs are patches (B, patch_frames, bands) for VGGish, or {"patches":
    (B, seq_len, patch_frames, bands), "mask": (B, seq_len)} for the ConvLSTM
    (see `gathered_batches`). A training run does not use this: it feeds
    `gathered_batches` to jibjib.training.trainer, which augments on its
    device; the batches are the same (one replica).
    """
    aug = spec.augmentation.active() if training else spec.augmentation.off()
    ds = gathered_batches(files, spec, batch_size, training, seed, packs)
    if training:
        ds = ds.map(lambda batch, target: augment_gathered(batch, target, aug, spec.frontend),
                    num_parallel_calls=AUTOTUNE, deterministic=True)
    return ds.map(lambda batch, target: (model_inputs(batch, spec.seq_len, spec.frontend), target)).prefetch(AUTOTUNE)
