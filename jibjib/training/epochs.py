"""A run's epochs: each epoch's batches drawn from the run's seed and the epoch's number, and the fit over them.

A tf.data pipeline that reshuffles itself (`rerandomize_each_iteration`)
counts its passes from the start of the process, so a resumed run used to
replay epoch 1's order and augmentation as its next epoch. Here every epoch
gets a pipeline of its own, seeded by `epoch_seed(train.seed, epoch)`: an
epoch draws the same examples, order, background stretches and per-example
seeds whether or not the run was interrupted before it. The augmentation in
the training step (jibjib.training.trainer) draws only from those
per-example seeds, so it repeats too. The model's own random layers
(dropout) are reseeded from the same number: Keras does not save their
generators' state with the weights. Each epoch is its own `fit` call; Keras
keeps the compiled step, the optimizer and its step count (the schedule)
across calls.
"""

from __future__ import annotations

import os
import sys

import keras
import numpy as np
import tensorflow as tf

from jibjib.core.settings import RunSettings
from jibjib.training.data import TrainingData
from jibjib.training.distribute import Distribution
from jibjib.training.inputs import InputShare, gathered_batches
from jibjib.training.inputs.cached import cached_datasets
from jibjib.training.plan import InputPlan
from jibjib.training.pseudo_labels import PseudoLabels, with_pseudo_labels
from jibjib.training.state import RunState


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch `epoch` (0-based) of a run seeded `seed`: well mixed, the same on any machine."""
    return int(np.random.SeedSequence([seed % 2**63, epoch]).generate_state(1)[0])


class EpochInputs:
    """The training batches of each epoch and the validation batches of a run, as the replicas take them.

    The batches are gathered, not augmented (jibjib.training.inputs); with
    several workers each gathers only its share of each global batch from the
    packed features (`Distribution.input_share`).
    """

    def __init__(self, run: RunSettings, net: keras.Model, data: TrainingData, plan: InputPlan,
                 embeddings: list[str | os.PathLike] | None, distribution: Distribution,
                 pseudo: PseudoLabels | None = None, pseudo_share: float = 0.0) -> None:
        self.run, self.plan, self.distribution = run, plan, distribution
        spec, batch_size = plan.spec, plan.batch_size
        self.share = distribution.input_share if data.packs is not None and not plan.cached else InputShare()
        if plan.cached:
            self._train, val = cached_datasets(net, plan.cache.cut, embeddings, data.train_files, data.val_files,
                                               spec, batch_size, packs=data.packs)
            dropped = plan.augmentation_dropped
            print(f"train {run.model}: the head trains from the embedding cache (output of {plan.cache.cut}); "
                  "augmentation in embedding space is mixup only" + (f", not {', '.join(dropped)}" if dropped else ""),
                  file=sys.stderr, flush=True)
        else:
            self._train = lambda seed: gathered_batches(data.train_files, spec, batch_size, training=True, seed=seed,
                                                        packs=data.packs, share=self.share)
            val = (gathered_batches(data.val_files, spec, batch_size, training=False, packs=data.packs)
                   if len(data.val_files) else None)
            if pseudo is not None:  # self-training: the student's pseudo-labelled windows join every batch
                self._train = with_pseudo_labels(self._train, pseudo, batch_size, pseudo_share)
            if plan.cache is not None and plan.cache.reason and plan.cache.trainable != "all":
                print(f"train {run.model}: no embedding cache: {plan.cache.reason}", file=sys.stderr, flush=True)
        self.val = (distribution.shard_input(val, batch_size, False, examples=plan.val_examples)
                    if val is not None else None)
        self._built: tuple[int, tf.data.Dataset] | None = None

    def train(self, epoch: int) -> tf.data.Dataset:
        """Epoch `epoch`'s (0-based) training batches, shuffled and seeded for augmentation by the run's seed and
        the epoch."""
        if self._built is None or self._built[0] != epoch:
            batches = self._train(epoch_seed(self.run.train.seed, epoch))
            self._built = epoch, self.distribution.shard_input(batches, self.plan.batch_size, True,
                                                               sharded=self.share.workers > 1)
        return self._built[1]


def reseed_random_layers(model: keras.Model, seed: int) -> None:
    """Every random layer of `model` (dropout) draws from `seed` from now on."""
    generators = [v for v in model.variables if v.path.endswith("seed_generator_state")]
    for index, generator in enumerate(generators):
        generator.assign(keras.ops.convert_to_tensor([seed, index], dtype=generator.dtype))


def fit_epochs(model: keras.Model, inputs: EpochInputs, state: RunState, epochs: int,
               callbacks: list[keras.callbacks.Callback]) -> None:
    """Train from the epoch after `state`'s last saved one until `epochs` or until early stopping."""
    for epoch in range(state.epoch, epochs):
        reseed_random_layers(model, epoch_seed(inputs.run.train.seed, epoch))
        model.fit(inputs.train(epoch), validation_data=inputs.val, initial_epoch=epoch, epochs=epoch + 1,
                  callbacks=callbacks, verbose=0, shuffle=False)  # the datasets shuffle themselves
        if state.stopped:
            break
