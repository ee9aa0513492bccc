"""The per-file input: each file's npz read lazily by parallel workers, its examples mixed in a shuffle buffer.

Only the list of file names is held in memory; patches are read by parallel
workers, mixed in a fixed-size shuffle buffer and prefetched, so memory does
not grow with the number of files (the old code loaded every patch up front).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import tensorflow as tf

from jibjib.core.settings import AugmentSettings
from jibjib.features.files import feature_stamp
from jibjib.labels.tables import background_rows
from jibjib.training.examples import balanced_draw_weights, examples_per_file, to_sequences
from jibjib.training.inputs.order import example_seeds, seed_pairs, weighted_draws
from jibjib.training.inputs.spec import InputSpec

AUTOTUNE = tf.data.AUTOTUNE
# Files read side by side. Fixed, not tf.data's default (the CPU count): the order of a deterministic
# interleave depends on it, and one seed must give the same epochs on any machine.
FILES_IN_FLIGHT = 16


def _load_units(path: bytes, seed: int, unit: int, short: str, random_offset: bool, tile: bool,
                patch_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """(k, unit, patch_frames, bands) examples of one file and their (k, unit) mask.

    With `random_offset` the patch grid starts at a random frame (seeded) in
    the first patch, as far as the file leaves room. `tile` repeats a short
    file until it fills one unit (for background recordings, which must not
    bring padding into a mix).
    """
    with np.load(path.decode(), allow_pickle=False) as z:
        log_mel = z["log_mel"]
    if tile and log_mel.shape[0] < unit * patch_frames:
        log_mel = np.tile(log_mel, (-(-unit * patch_frames // log_mel.shape[0]), 1))
    spare = log_mel.shape[0] - patch_frames
    if random_offset and spare > 0:
        offset = int(np.random.default_rng(seed & 0x7FFFFFFFFFFFFFFF).integers(0, min(patch_frames, spare + 1)))
        log_mel = log_mel[offset:]
    n = log_mel.shape[0] // patch_frames
    patches = log_mel[: n * patch_frames].reshape(n, patch_frames, log_mel.shape[1])
    return to_sequences(patches, unit, "skip" if tile else short)


def _read(paths: np.ndarray, targets: np.ndarray, spec: InputSpec, random_offset: bool, tile: bool):
    unit, frames, bands = spec.unit_patches, spec.frontend.patch_frames, spec.frontend.mel_bands
    paths, targets = tf.constant(paths), tf.constant(targets)

    def read(index: tf.Tensor, seed: tf.Tensor):
        units, mask = tf.numpy_function(
            lambda p, s: _load_units(p, int(s), unit, spec.short_files, random_offset, tile, frames),
            [tf.gather(paths, index), seed[0]], (tf.float32, tf.bool))
        units.set_shape([None, unit, frames, bands])
        mask.set_shape([None, unit])
        target = tf.tile(tf.gather(targets, index)[None], [tf.shape(units)[0], 1])
        return units, mask, target

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
    if training and spec.class_balance == "sampling":
        examples = examples_per_file([feature_stamp(f) for f in paths], spec.seq_len, spec.short_files,
                                     spec.frontend.patch_frames)
        # Files are drawn until their examples make the split's count (what the schedule counts); the
        # last file's surplus is cut below.
        sizes = tf.constant(examples, tf.int64)
        order = weighted_draws(balanced_draw_weights(files, examples), -1, seed + 1).scan(
            tf.constant(0, tf.int64), lambda before, i: (before + sizes[i], (i, before))).take_while(
            lambda i, before: before < int(examples.sum())).map(lambda i, before: i)
    elif training:
        order = order.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    ds = tf.data.Dataset.zip(order, seed_pairs(seed + 2, training))
    ds = _examples(ds, _read(paths, targets, spec, aug.random_offsets, tile=False), interleaved=training)
    if training and spec.class_balance == "sampling":
        ds = ds.take(int(examples.sum()))
    if training:
        ds = ds.shuffle(spec.shuffle_buffer, seed=seed + 3, reshuffle_each_iteration=True)
    ds = tf.data.Dataset.zip(ds, example_seeds(seed + 9, training)).batch(batch_size).map(
        lambda example, seeds: ({"units": example[0], "mask": example[1], "seed": seeds}, example[2]))
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
    return ds.shuffle(256, seed=seed + 8, reshuffle_each_iteration=True).map(lambda units, mask, target: units)
