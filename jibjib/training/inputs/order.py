"""The order examples come in: seeded shuffles, weighted draws and the per-batch seeds of the random ops.

Every random choice of the input is drawn from a seed derived from
train.seed, so one seed gives the same epochs on any machine.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import tensorflow as tf

from jibjib.training.examples import balanced_draw_weights


def seed_pairs(seed: int, rerandomize: bool) -> tf.data.Dataset:
    """An endless stream of stateless-op seeds (shape [2]), new each epoch when `rerandomize`."""
    return tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=rerandomize).batch(2)


def example_seeds(seed: int, rerandomize: bool) -> tf.data.Dataset:
    """An endless stream of int64 seeds, one per example, new each epoch when `rerandomize`: each example
    carries its seed to the training step, where the augmentation draws from it (augment.batch_seed)."""
    return tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=rerandomize)


@dataclasses.dataclass(frozen=True)
class InputShare:
    """Which share of each global batch this process reads: worker `worker` of `workers` (1: all of it).

    Every worker draws the same (seeded) order of examples; each keeps only
    its slice of each global batch's ids before anything is read, so the
    reads and the gathered bytes are divided among the workers.
    """

    worker: int = 0
    workers: int = 1

    def local_batch(self, global_batch: int) -> int:
        """Examples of each global batch this worker reads."""
        if global_batch % self.workers:
            raise ValueError(f"a global batch of {global_batch} does not split evenly over {self.workers} workers")
        return global_batch // self.workers

    def shard(self, examples: tf.data.Dataset, global_batch: int) -> tf.data.Dataset:
        """This worker's slice of each full global batch of `examples` (tuples of per-example tensors); the
        last, partial global batch is dropped, so every worker takes as many steps."""
        if self.workers == 1:
            return examples
        local = self.local_batch(global_batch)
        first = self.worker * local
        return examples.batch(global_batch, drop_remainder=True).map(
            lambda *parts: tuple(part[first:first + local] for part in parts)).unbatch()


def weighted_draws(weights: np.ndarray, count: int, seed: int) -> tf.data.Dataset:
    """`count` indices (-1: endless) drawn with replacement by `weights` (summing to 1), new each epoch."""
    cdf = tf.constant(np.cumsum(weights), tf.float64)
    draws = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).take(count)
    # Dataset.random gives 32 random bits per element.
    return draws.map(lambda r: tf.minimum(
        tf.searchsorted(cdf, [tf.cast(r % (1 << 32), tf.float64) / float(1 << 32)], side="right")[0],
        len(weights) - 1))


def example_order(files: pd.DataFrame, example_file: np.ndarray, class_balance: str, training: bool,
                  seed: int) -> tf.data.Dataset:
    """The example indices (int64) of one epoch, example i belonging to file `example_file[i]` of `files`.

    Training: a permutation of every example, new each epoch (an exact
    shuffle across files), or with class_balance "sampling" as many draws in
    which every stratum is as likely as the others and every example of a
    stratum equally likely. Otherwise every example once, in order.
    """
    n = len(example_file)
    if training and class_balance == "sampling":
        weights = balanced_draw_weights(files, np.bincount(example_file, minlength=len(files)))[example_file]
        return weighted_draws(weights / weights.sum(), n, seed + 1)
    if training:
        shuffled = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).take(1).flat_map(
            lambda s: tf.data.Dataset.from_tensor_slices(
                tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64), tf.stack([s, 0]))))
        # flat_map hides the length; said (and checked), Keras knows an epoch's steps and does not warn of
        # input that "ran out" at the end of every epoch.
        return shuffled.apply(tf.data.experimental.assert_cardinality(n))
    return tf.data.Dataset.range(n)
