"""The per-file input: each file's npz read lazily by parallel workers, its examples mixed in a shuffle buffer.

Only the list of file names is held in memory; patches are read by parallel
workers, mixed in a fixed-size shuffle buffer and prefetched, so memory does
not grow with the number of files (the old code loaded every patch up front).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import tensorflow as tf

from jibjib.core.params import VGGISH
from jibjib.core.settings import AugmentSettings
from jibjib.features.files import feature_stamp
from jibjib.labels.tables import background_rows
from jibjib.training.examples import balanced_draw_weights, to_sequences
from jibjib.training.inputs.batches import smoothed
from jibjib.training.inputs.order import example_seeds, seed_pairs, weighted_draws
from jibjib.training.inputs.spec import InputSpec
from jibjib.training.windows import WindowExamples, file_activity, negative_target, window_examples

AUTOTUNE = tf.data.AUTOTUNE
# Files read side by side. Fixed, not tf.data's default (the CPU count): the order of a deterministic
# interleave depends on it, and one seed must give the same epochs on any machine.
FILES_IN_FLIGHT = 16


def _load_units(path: bytes, seed: int, unit: int, short: str, random_offset: bool, tile: bool,
                patch_frames: int, cut: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(k, unit, patch_frames, bands) examples of one file and their (k, unit) mask.

    With `random_offset` the patch grid starts at a random frame (seeded) in
    the first patch, as far as the file leaves room. `tile` repeats a short
    file until it fills one unit (for background recordings, which must not
    bring padding into a mix). `cut`: each example's first patch and real
    patches (jibjib.training.windows), else the plain grid.
    """
    with np.load(path.decode(), allow_pickle=False) as z:
        log_mel = z["log_mel"]
    if tile and log_mel.shape[0] < unit * patch_frames:
        log_mel = np.tile(log_mel, (-(-unit * patch_frames // log_mel.shape[0]), 1))
    spare = log_mel.shape[0] - patch_frames
    if cut is not None and len(cut[0]):  # room after the examples' last real patch
        spare = log_mel.shape[0] - int((cut[0] + cut[1]).max()) * patch_frames
    if random_offset and spare > 0:
        offset = int(np.random.default_rng(seed & 0x7FFFFFFFFFFFFFFF).integers(0, min(patch_frames, spare + 1)))
        log_mel = log_mel[offset:]
    n = log_mel.shape[0] // patch_frames
    patches = log_mel[: n * patch_frames].reshape(n, patch_frames, log_mel.shape[1])
    if cut is None:
        return to_sequences(patches, unit, "skip" if tile else short)
    first, valid = cut
    take = first[:, None] + np.arange(unit)[None, :]
    mask = np.arange(unit)[None, :] < valid[:, None]
    units = np.where(mask[:, :, None, None], patches[np.minimum(take, max(n - 1, 0))], np.float32(VGGISH.silence))
    return units.astype(np.float32), mask


def _read(paths: np.ndarray, targets: np.ndarray, spec: InputSpec, random_offset: bool, tile: bool,
          examples: WindowExamples | None = None, negative: np.ndarray | None = None):
    """The per-file reader: a file's examples, their masks and targets (and loss weights when `spec` weighs
    its weak negatives). `examples` (jibjib.training.windows): where they are cut and which are labelled."""
    unit, frames, bands = spec.unit_patches, spec.frontend.patch_frames, spec.frontend.mel_bands
    bounds = None if examples is None else np.r_[0, np.cumsum(examples.per_file(len(paths)))]
    paths, targets = tf.constant(paths), tf.constant(targets)

    def load(p: bytes, s: int, i: int) -> tuple[np.ndarray, ...]:
        if examples is None:
            units, mask = _load_units(p, int(s), unit, spec.short_files, random_offset, tile, frames)
            return units, mask, np.ones(len(units), bool), np.ones(len(units), np.float32)
        own = slice(bounds[i], bounds[i + 1])
        units, mask = _load_units(p, int(s), unit, spec.short_files, random_offset, tile, frames,
                                  (examples.first[own], examples.valid[own]))
        return units, mask, examples.labelled[own], examples.weight[own]

    def read(index: tf.Tensor, seed: tf.Tensor):
        units, mask, labelled, weight = tf.numpy_function(
            load, [tf.gather(paths, index), seed[0], index], (tf.float32, tf.bool, tf.bool, tf.float32))
        units.set_shape([None, unit, frames, bands])
        mask.set_shape([None, unit])
        labelled.set_shape([None])
        weight.set_shape([None])
        target = tf.tile(tf.gather(targets, index)[None], [tf.shape(units)[0], 1])
        if negative is not None:
            target = tf.where(labelled[:, None], target, tf.constant(negative)[None])
        return units, mask, target, weight

    return read


def _examples(files: tf.data.Dataset, read, interleaved: bool) -> tf.data.Dataset:
    """The examples of each (file index, seed) in `files`. Interleaved: a fixed number of files side by side
    (training, where a shuffle follows); else read in parallel but given out file by file, in order, as the
    packed reader gives them."""
    if interleaved:
        return files.interleave(lambda index, seed: tf.data.Dataset.from_tensor_slices(read(index, seed)),
                                cycle_length=FILES_IN_FLIGHT, num_parallel_calls=AUTOTUNE, deterministic=True)
    return files.map(read, num_parallel_calls=AUTOTUNE, deterministic=True).prefetch(FILES_IN_FLIGHT).flat_map(
        lambda *file: tf.data.Dataset.from_tensor_slices(file))


def npz_batches(files: pd.DataFrame, targets: np.ndarray, spec: InputSpec, aug: AugmentSettings, batch_size: int,
                training: bool, seed: int) -> tf.data.Dataset:
    """Batches ({units, mask, seed[, background]}, targets) read file by file from the npz."""
    paths = files["feature"].to_numpy(str)
    n = len(files)
    order = tf.data.Dataset.range(n)
    cut = window_examples(files, [feature_stamp(f) for f in paths],
                          file_activity(files) if spec.windows.uses_activity else None, spec.unit_patches,
                          spec.short_files, spec.windows, spec.frontend.patch_frames)
    negative = smoothed(negative_target(targets.shape[1], spec.multi_label), spec,
                        spec.label_smoothing if training else 0.0)
    if training and spec.class_balance == "sampling":
        examples = cut.per_file(n)
        # Files are drawn until their examples make the split's count (what the schedule counts); the
        # last file's surplus is cut below.
        sizes = tf.constant(examples, tf.int64)
        order = weighted_draws(balanced_draw_weights(files, examples), -1, seed + 1).scan(
            tf.constant(0, tf.int64), lambda before, i: (before + sizes[i], (i, before))).take_while(
            lambda i, before: before < int(examples.sum())).map(lambda i, before: i)
    elif training:
        order = order.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    ds = tf.data.Dataset.zip(order, seed_pairs(seed + 2, training))
    ds = _examples(ds, _read(paths, targets, spec, aug.random_offsets, tile=False, examples=cut, negative=negative),
                   interleaved=training)
    if training and spec.class_balance == "sampling":
        ds = ds.take(int(examples.sum()))
    if training:
        ds = ds.shuffle(spec.shuffle_buffer, seed=seed + 3, reshuffle_each_iteration=True)
    ds = tf.data.Dataset.zip(ds, example_seeds(seed + 9, training)).batch(batch_size).map(
        lambda example, seeds: ({"units": example[0], "mask": example[1], "seed": seeds,
                                 **({"weight": example[3]} if spec.windows.weighs else {})}, example[2]))
    background = _npz_background(files, targets, spec, aug, seed) if training else None
    if background is None:
        return ds
    return tf.data.Dataset.zip(ds, background.batch(batch_size)).map(
        lambda batch, bg: ({**batch[0], "background": bg[: tf.shape(batch[0]["units"])[0]]}, batch[1]))


def _npz_background(files: pd.DataFrame, targets: np.ndarray, spec: InputSpec, aug: AugmentSettings,
                    seed: int) -> tf.data.Dataset | None:
    """Endless random background units (from the files without a species), or None if there are none."""
    is_background = background_rows(files)
    if aug.background_probability <= 0 or not is_background.any():
        return None
    paths = files["feature"].to_numpy(str)[is_background]
    order = tf.data.Dataset.range(len(paths)).shuffle(len(paths), seed=seed + 6, reshuffle_each_iteration=True)
    ds = tf.data.Dataset.zip(order.repeat(), seed_pairs(seed + 7, True))
    ds = _examples(ds, _read(paths, targets[is_background], spec, True, tile=True), interleaved=True)
    return ds.shuffle(256, seed=seed + 8, reshuffle_each_iteration=True).map(lambda units, mask, target, _: units)
