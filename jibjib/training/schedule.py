"""The learning rate of a run: the configured rate (scaled to the replicas only if asked), constant or
warm-up then cosine."""

from __future__ import annotations

import math

import keras

from jibjib.core.settings import RunSettings


def peak_learning_rate(run: RunSettings, replicas: int) -> float:
    """The model's learning_rate; times sqrt(replicas) or replicas under train.lr_scaling sqrt or linear.

    With lr_scaling none the global batch is batch_size on any machine, so
    the rate is too; sqrt and linear go with a batch that grows with the
    replicas (jibjib.training.plan.global_batch).
    """
    factor = {"none": 1.0, "sqrt": math.sqrt(replicas), "linear": float(replicas)}[run.train.lr_scaling]
    return float(run.net.learning_rate) * factor


def learning_rate(run: RunSettings, replicas: int, steps_per_epoch: int
                  ) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """The peak rate (peak_learning_rate), constant or warm-up then cosine over the run's steps."""
    peak = peak_learning_rate(run, replicas)
    if run.train.lr_schedule == "constant":
        return peak
    total = max(1, int(run.net.epochs) * steps_per_epoch)
    warmup = min(total - 1, int(round(float(run.train.warmup_epochs) * steps_per_epoch)))
    # Warm-up from a hundredth of the peak, then cosine down to a hundredth.
    return keras.optimizers.schedules.CosineDecay(peak / 100.0, max(1, total - warmup), alpha=0.01,
                                                  warmup_target=peak, warmup_steps=warmup)
