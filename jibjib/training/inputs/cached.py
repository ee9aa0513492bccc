"""Training batches of cached trunk outputs: what the head of a frozen VGGish trains on.

Only where each of the split's patches sits in the cache is held in memory
(a few numbers a patch); each batch's rows are read from the cache's files
(EmbeddingCache.read), so memory does not grow with the cache (float32: 512
bytes a patch for the 128-d embedding, 16 kB for a cut after fc1).
Examples are the files' patches at the patch grid from frame 0, as the
per-file input cuts them without random offsets; each epoch is an exact
shuffle of all of them (or, with class_balance: sampling, per-example
balanced draws), with the targets, label smoothing and class weights of the
ordinary input.

Augmentation: only mixup applies, in embedding space (two examples' cached
outputs and targets interpolated by the same weight, as BirdNET-Analyzer
mixes embeddings). Every other step changes the log-mel before the trunk
(random offsets, gain, background mixing, time and frequency masks,
low-pass), which a cache computed once cannot see; `applied_augmentation`
says what is left.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from jibjib.core.settings import AugmentSettings
from jibjib.embeddings.reader import EmbeddingCache
from jibjib.embeddings.trunk import frozen_weights_digest, trunk_of
from jibjib.features.files import FeatureStamp
from jibjib.packing import PackedFeatures
from jibjib.training.augment import mixup_batch
from jibjib.training.examples import file_targets
from jibjib.training.inputs.batches import smoothed
from jibjib.training.inputs.order import example_order, seed_pairs
from jibjib.training.inputs.spec import InputSpec
from jibjib.training.windows import file_activity, negative_target, window_examples

AUTOTUNE = tf.data.AUTOTUNE


def applied_augmentation(aug: AugmentSettings) -> tuple[AugmentSettings, list[str]]:
    """The part of `aug` that applies to cached outputs (mixup only), and the names of the steps dropped."""
    active = aug.active()
    dropped = [name for name, on in (
        ("random_offsets", active.random_offsets), ("gain_db", active.gain_db > 0),
        ("background_probability", active.background_probability > 0), ("time_masks", active.time_masks > 0),
        ("freq_masks", active.freq_masks > 0), ("lowpass_probability", active.lowpass_probability > 0),
        ("union_mix_probability", active.union_mix_probability > 0)) if on]
    kept = dataclasses.replace(active, random_offsets=False, gain_db=0.0, background_probability=0.0,
                               time_masks=0, freq_masks=0, lowpass_probability=0.0, union_mix_probability=0.0)
    return kept, dropped


def _window_patches(files: pd.DataFrame, cache: EmbeddingCache, spec: InputSpec,
                    packs: PackedFeatures | None) -> tuple[np.ndarray, ...]:
    """The cached patches the window rule keeps (arrays, rows, file of each) and which are labelled, their
    weights (jibjib.training.windows; activity from the packed index if given, else from the npz)."""
    arrays, rows, file_of = cache.rows(files["path"])
    patches = np.bincount(file_of, minlength=len(files))
    activity = file_activity(files, packs) if spec.windows.uses_activity else None
    frames = spec.frontend.patch_frames
    ex = window_examples(files, [FeatureStamp(int(n) * frames, "") for n in patches], activity, 1, "pad",
                         spec.windows, frames)
    ids = np.r_[0, np.cumsum(patches)][ex.file] + ex.first
    return arrays[ids], rows[ids], file_of[ids], ex.labelled, ex.weight


def embedding_dataset(files: pd.DataFrame, cache: EmbeddingCache, spec: InputSpec, batch_size: int,
                      training: bool, seed: int = 0, packs: PackedFeatures | None = None) -> tf.data.Dataset:
    """Batches of (cached outputs (B, floats) float32, targets (B, classes) float32[, loss weights (B,)]) of the
    patches of `files` the window rule keeps (jibjib.training.windows; weights only with weak negatives).

    Each batch's rows are read from the cache when the batch is made. With
    `training` the order is reshuffled each epoch and mixup (the only
    augmentation of spec that applies) is on.
    """
    aug = applied_augmentation(spec.augmentation)[0] if training else spec.augmentation.off()
    arrays, rows, file_of, labelled, weight = _window_patches(files, cache, spec, packs)
    order = example_order(files, file_of, spec.class_balance, training, seed)
    targets = tf.constant(file_targets(files, spec))
    negative = tf.constant(negative_target(spec.n_classes, spec.multi_label))
    rows_file, labelled, weight = tf.constant(file_of), tf.constant(labelled), tf.constant(weight)

    def read(ids: tf.Tensor) -> tuple[tf.Tensor, ...]:
        x = tf.numpy_function(lambda i: cache.read(arrays[i], rows[i]), [ids], tf.float32)
        target = tf.where(tf.gather(labelled, ids)[:, None], tf.gather(targets, tf.gather(rows_file, ids)), negative)
        return tf.ensure_shape(x, [None, cache.floats]), target, tf.gather(weight, ids)

    ds = order.batch(batch_size).map(read, num_parallel_calls=AUTOTUNE, deterministic=True)
    if training and aug.mixup_probability > 0:
        ds = tf.data.Dataset.zip(ds, seed_pairs(seed + 5, True)).map(
            lambda batch, s: mixup_batch(*batch[:2], s, aug.mixup_probability, aug.mixup_alpha, batch[2]),
            num_parallel_calls=AUTOTUNE, deterministic=True)
    smoothing = spec.label_smoothing if training else 0.0
    ds = ds.map(lambda x, t, w: (x, smoothed(t, spec, smoothing), w) if spec.windows.weighs
                else (x, smoothed(t, spec, smoothing)))
    return ds.prefetch(AUTOTUNE)


def cached_datasets(net: keras.Model, cut: str, embeddings: list[str | os.PathLike], train_files: pd.DataFrame,
                    val_files: pd.DataFrame, spec: InputSpec, batch_size: int, packs: PackedFeatures | None = None
                    ) -> tuple[Callable[[int], tf.data.Dataset], tf.data.Dataset | None]:
    """The training batches of a seed (one per epoch) and the validation batches from the cache, after
    checking it holds this run's frozen trunk."""
    cache = EmbeddingCache.open(embeddings)
    wanted = (cut, frozen_weights_digest(trunk_of(net), cut))
    used = cache.locate(pd.concat([train_files, val_files])["path"])
    if set(zip(used["cut"], used["trunk"])) - {wanted}:
        raise ValueError(f"the embedding cache was computed with another frozen trunk than this run's (cut "
                         f"{cut}, weights {wanted[1][:12]}): run jibjib embed again with this run's "
                         "vggish.checkpoint, vggish.trainable and train.seed")

    def train_batches(seed: int) -> tf.data.Dataset:
        return embedding_dataset(train_files, cache, spec, batch_size, training=True, seed=seed, packs=packs)

    if not len(val_files):
        return train_batches, None
    return train_batches, embedding_dataset(val_files, cache, spec, batch_size, training=False, packs=packs)
