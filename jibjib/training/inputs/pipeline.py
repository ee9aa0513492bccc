"""The training input of a split: per-file or packed batches, augmented, mixed up and shaped for the model.

Both sources (jibjib.training.inputs.npz and .packed) give the same batches
of examples; the transforms after them (jibjib.training.inputs.batches)
apply only to training batches (never to validation or evaluation).
"""

from __future__ import annotations

import pandas as pd
import tensorflow as tf

from jibjib.labels.tables import background_rows
from jibjib.packing import PackedFeatures
from jibjib.training.examples import file_targets
from jibjib.training.inputs.batches import augmented, mixed_up, model_io
from jibjib.training.inputs.npz import npz_batches
from jibjib.training.inputs.order import seed_pairs
from jibjib.training.inputs.packed import packed_batches
from jibjib.training.inputs.spec import InputSpec

AUTOTUNE = tf.data.AUTOTUNE
READ_EXAMPLES = 256  # examples read and augmented together (a multiple of the batch)


def training_dataset(files: pd.DataFrame, spec: InputSpec, batch_size: int, training: bool,
                     seed: int = 0, packs: PackedFeatures | None = None) -> tf.data.Dataset:
    """Batches of (inputs, targets (B, classes) float32) from a split's files.

    Inputs are patches (B, patch_frames, bands) for VGGish, or {"patches":
    (B, seq_len, patch_frames, bands), "mask": (B, seq_len)} for the ConvLSTM.
    With `packs` (jibjib.packing) examples are gathered from the packed
    features, a whole batch per read, in an exact shuffle of all examples of
    the split; without, each file's npz is read by parallel workers in a
    seeded order and its examples mixed in a fixed-size shuffle buffer.
    Either way memory does not grow with the corpus beyond a few numbers per
    example. With `training` the examples are reshuffled each epoch and the
    augmentation of `spec` applies (background recordings are the split's
    files without a species); `class_balance: sampling` draws examples with
    replacement so that every class gives the same number. Without
    `training` every example comes once, unchanged, in file order.
    """
    aug = spec.augmentation.active() if training else spec.augmentation.off()
    targets = file_targets(files, spec)
    # Read and augment several batches at once, then split them: fewer, larger ops per example.
    read_size = batch_size * max(1, READ_EXAMPLES // batch_size)
    if packs is not None:
        ds = packed_batches(files, targets, packs, spec, aug, read_size, training, seed)
    else:
        ds = npz_batches(files, targets, spec, aug, read_size, training, seed)
    if training and (aug.background_probability > 0 and background_rows(files).any() or aug.changes_examples):
        ds = tf.data.Dataset.zip(ds, seed_pairs(seed + 4, True)).map(
            lambda batch, s: augmented(batch, s, aug, spec), num_parallel_calls=AUTOTUNE, deterministic=True)
    if training and aug.mixup_probability > 0:
        ds = tf.data.Dataset.zip(ds, seed_pairs(seed + 5, True)).map(
            lambda batch, s: mixed_up(batch, s, aug), num_parallel_calls=AUTOTUNE, deterministic=True)
    smoothing = spec.label_smoothing if training else 0.0
    ds = ds.map(lambda batch: model_io(batch, spec, smoothing))
    if read_size != batch_size:
        ds = ds.rebatch(batch_size)
    return ds.prefetch(AUTOTUNE)
