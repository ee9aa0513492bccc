"""The packed input: examples gathered from the packed features (jibjib.packing), many examples per read.

A few numbers per example are held in memory (the corpus's log-mel stays on
disk); each epoch is an exact shuffle of all examples of the split. The rows
are gathered as they are stored (float16) and augmented in the training step.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import tensorflow as tf

from jibjib.core.settings import AugmentSettings
from jibjib.features.files import FeatureStamp
from jibjib.labels.tables import background_rows
from jibjib.packing import PackedFeatures
from jibjib.training.windows import file_activity, negative_target, window_examples
from jibjib.training.inputs.batches import smoothed
from jibjib.training.inputs.order import InputShare, example_order, example_seeds
from jibjib.training.inputs.spec import InputSpec

AUTOTUNE = tf.data.AUTOTUNE
READ_EXAMPLES = 256  # examples read together (a multiple of the batch), then split into batches


@dataclasses.dataclass(frozen=True)
class PackedExamples:
    """Every example of a split in the packed features: where it starts and how many patches are real.

    A few numbers per example (the corpus's log-mel stays on disk): example e
    is `valid[e]` patches from row `start[e]` of array `array[e]`, belonging
    to file `file[e]`, whose rows end at `file_end[e]`; it takes its file's
    label when `labelled[e]` (else it is a weak negative, of loss weight
    `weight[e]`; jibjib.training.windows).
    """

    array: np.ndarray
    start: np.ndarray
    valid: np.ndarray
    file: np.ndarray
    file_end: np.ndarray
    labelled: np.ndarray
    weight: np.ndarray

    @classmethod
    def of(cls, files: pd.DataFrame, packs: PackedFeatures, spec: InputSpec) -> "PackedExamples":
        where = packs.locate(files["path"])
        frames = where["frames"].to_numpy(np.int64)
        activity = file_activity(files, packs) if spec.windows.uses_activity else None
        ex = window_examples(files, [FeatureStamp(int(n), "") for n in frames], activity, spec.unit_patches,
                             spec.short_files, spec.windows, spec.frontend.patch_frames)
        rows = where["row"].to_numpy(np.int64)
        return cls(array=where["array"].to_numpy(np.int32)[ex.file],
                   start=rows[ex.file] + ex.first * spec.frontend.patch_frames,
                   valid=ex.valid.astype(np.int32), file=ex.file.astype(np.int32),
                   file_end=(rows + frames)[ex.file], labelled=ex.labelled, weight=ex.weight)

    def __len__(self) -> int:
        return len(self.file)


def packed_batches(files: pd.DataFrame, targets: np.ndarray, packs: PackedFeatures, spec: InputSpec,
                   aug: AugmentSettings, batch_size: int, training: bool, seed: int,
                   share: InputShare = InputShare()) -> tf.data.Dataset:
    """Batches ({units float16, mask, seed[, background float16]}, targets) gathered from the packed features.

    Gathering is all the CPU does: each example's rows are read into one
    buffer (READ_EXAMPLES at a time, then split into batches), with a stretch
    of a background recording beside it when the augmentation mixes them in;
    the augmentation itself runs in the training step. `batch_size` is the
    global batch: with several workers (`share`) each reads only its share of
    each global batch and yields batches of that share.
    """
    examples = PackedExamples.of(files, packs, spec)
    order = example_order(files, examples.file, spec.class_balance, training, seed)
    background = None
    if training and aug.background_probability > 0 and background_rows(files).any():
        is_background = background_rows(files)
        where = packs.locate(files.loc[is_background, "path"])
        background = (where["array"].to_numpy(np.int32), where["row"].to_numpy(np.int64),
                      where["frames"].to_numpy(np.int64))
    gather = _PackedGather(packs, examples, background, spec, random_offsets=training and aug.random_offsets)
    targets = tf.constant(targets)
    file_of = tf.constant(examples.file)
    labelled, weight = tf.constant(examples.labelled), tf.constant(examples.weight)
    negative = tf.constant(smoothed(negative_target(targets.shape[1], spec.multi_label), spec,
                                    spec.label_smoothing if training else 0.0))
    frames, bands = spec.frontend.patch_frames, packs.bands

    def read(ids: tf.Tensor, seeds: tf.Tensor) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
        out = tf.numpy_function(gather, [ids, seeds],
                                (tf.float16, tf.bool, tf.float16) if background else (tf.float16, tf.bool))
        batch = {"units": tf.ensure_shape(out[0], [None, spec.unit_patches, frames, bands]),
                 "mask": tf.ensure_shape(out[1], [None, spec.unit_patches]), "seed": seeds}
        if background:
            batch["background"] = tf.ensure_shape(out[2], [None, spec.unit_patches, frames, bands])
        if spec.windows.weighs:
            batch["weight"] = tf.gather(weight, ids)
        target = tf.where(tf.gather(labelled, ids)[:, None], tf.gather(targets, tf.gather(file_of, ids)), negative)
        return batch, target

    local = share.local_batch(batch_size)
    read_size = local * max(1, READ_EXAMPLES // local)  # fewer, larger reads; then split into batches
    ids = share.shard(tf.data.Dataset.zip(order, example_seeds(seed + 2, training)), batch_size)
    ds = ids.batch(read_size).map(read, num_parallel_calls=AUTOTUNE, deterministic=True)
    return ds.rebatch(local) if read_size != local else ds


class _PackedGather:
    """The numpy side of a packed batch: reads each example's rows from its pack into one buffer."""

    def __init__(self, packs: PackedFeatures, examples: PackedExamples,
                 background: tuple[np.ndarray, np.ndarray, np.ndarray] | None, spec: InputSpec,
                 random_offsets: bool) -> None:
        self.packs, self.examples, self.background = packs, examples, background
        self.unit, self.frames = spec.unit_patches, spec.frontend.patch_frames
        self.silence = np.float16(spec.frontend.silence)
        self.random_offsets = random_offsets

    def __call__(self, ids: np.ndarray, seeds: np.ndarray) -> tuple[np.ndarray, ...]:
        ex, unit, frames, bands = self.examples, self.unit, self.frames, self.packs.bands
        rng = np.random.default_rng(int(seeds[0]) & 0x7FFFFFFFFFFFFFFF if len(seeds) else 0)
        count = len(ids)
        units = np.empty((count, unit * frames, bands), np.float16)
        valid = ex.valid[ids]
        start = ex.start[ids]
        if self.random_offsets:
            # Up to one patch later, as far as the file leaves room after the example's real patches.
            room = np.minimum(frames - 1, ex.file_end[ids] - (start + valid * frames))
            start = start + (rng.random(count) * (np.maximum(room, 0) + 1)).astype(np.int64)
        self.packs.read_each(ex.array[ids], start, valid * frames, units)
        mask = np.arange(unit)[None, :] < valid[:, None]
        units = units.reshape(count, unit, frames, bands)
        units[~mask] = self.silence  # padding is silence (the training step makes sure of it too)
        if self.background is None:
            return units, mask
        return units, mask, self._background(rng, count)

    def _background(self, rng: np.random.Generator, count: int) -> np.ndarray:
        """`count` random stretches of background recordings, a unit long (a short recording repeated)."""
        arrays, rows, lengths = self.background
        need = self.unit * self.frames
        out = np.empty((count, need, self.packs.bands), np.float16)
        picks = rng.integers(0, len(arrays), count)
        length = lengths[picks]
        offset = (rng.random(count) * np.maximum(length - need + 1, 1)).astype(np.int64)
        self.packs.read_each(arrays[picks], rows[picks] + offset, np.minimum(length, need), out)
        for i in np.flatnonzero(length < need).tolist():  # a short recording, repeated; none: silence
            out[i] = np.resize(out[i, : length[i]], out[i].shape) if length[i] else self.silence
        return out.reshape(count, self.unit, self.frames, self.packs.bands)
