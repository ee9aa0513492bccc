"""The learning rate of a run: the configured rate scaled to the replicas, constant or warm-up then cosine."""

from __future__ import annotations

import keras

from jibjib.core.settings import RunSettings


def learning_rate(run: RunSettings, replicas: int, steps_per_epoch: int
                  ) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """The configured rate times the replicas (the batch grows with them), constant or warm-up then cosine."""
    peak = float(run.net.learning_rate) * replicas
    if run.train.lr_schedule == "constant":
        return peak
    total = max(1, int(run.net.epochs) * steps_per_epoch)
    warmup = min(total - 1, int(round(float(run.train.warmup_epochs) * steps_per_epoch)))
    # Warm-up from a hundredth of the peak, then cosine down to a hundredth.
    return keras.optimizers.schedules.CosineDecay(peak / 100.0, max(1, total - warmup), alpha=0.01,
                                                  warmup_target=peak, warmup_steps=warmup)
