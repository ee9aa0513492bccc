"""How a run feeds its model: the input spec, the global batch, the embedding cache, class weights, steps."""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from jibjib.core.settings import AugmentSettings, RunSettings, VggishSettings
from jibjib.embeddings import CachePlan, cache_plan
from jibjib.labels.tables import background_rows
from jibjib.training.data import TrainingData
from jibjib.training.distribute import Distribution
from jibjib.training.examples import class_weights, example_counts, examples_per_file
from jibjib.training.inputs.cached import applied_augmentation
from jibjib.training.inputs.spec import InputSpec


@dataclasses.dataclass(frozen=True, eq=False)
class InputPlan:
    """The training input of one run, decided before the model is built."""

    spec: InputSpec
    batch_size: int  # the global batch: the per-replica batch times the replicas
    replicas: int  # over all workers
    cache: CachePlan | None  # a VGGish run's use of the embedding cache; None for another model
    augmentation: AugmentSettings  # what applies to the training batches
    augmentation_dropped: list[str]  # steps the embedding cache cannot apply
    examples: np.ndarray  # training examples per class
    class_weights: np.ndarray
    n_background: int  # training files without a species
    steps_per_epoch: int
    monitor: str  # val_loss, or loss without a val split

    @property
    def cached(self) -> bool:
        """Whether the head trains from the embedding cache."""
        return self.cache is not None and self.cache.used


def embedding_plan(run: RunSettings, embeddings: list[str | os.PathLike] | None) -> CachePlan | None:
    """How a VGGish run uses the embedding cache (None for another model); raises if `embeddings` cannot serve it."""
    if not isinstance(run.net, VggishSettings):
        if embeddings:
            raise ValueError(f"--embeddings serve only a VGGish run with a frozen trunk, not {run.model}")
        return None
    plan = cache_plan(run.net.trainable, run.net.embedding_cache)
    if embeddings and not plan.used:
        raise ValueError(f"--embeddings given, but the run cannot train from them: {plan.reason}")
    if plan.used and not embeddings:
        return dataclasses.replace(plan, cut=None, reason="no embedding cache given (--embeddings, jibjib embed)")
    return plan


def steps_per_epoch(examples: int, batch_size: int, run: RunSettings, distribution: Distribution) -> int:
    """Batches in an epoch of `examples`; with several workers only full batches (see shard_input)."""
    if distribution.workers == 1:
        return max(1, -(-examples // batch_size))
    if examples < batch_size:
        raise ValueError(f"{examples} training examples make no full batch of {batch_size} "
                         f"({run.net.batch_size} on each of {distribution.replicas} replicas): lower batch_size "
                         "or use fewer workers")
    return examples // batch_size


def plan_input(run: RunSettings, data: TrainingData, embeddings: list[str | os.PathLike] | None,
               distribution: Distribution) -> InputPlan:
    """The input plan of `run` on `data`, with the replicas of `distribution`."""
    cache = embedding_plan(run, embeddings)
    cached = cache is not None and cache.used
    spec = InputSpec.of(run, data.n_classes)
    applied, dropped = applied_augmentation(spec.augmentation) if cached else (spec.augmentation.active(), [])
    batch_size = run.net.batch_size * distribution.replicas  # the learning rate grows with it
    examples = example_counts(data.train_stamps, data.train_files["class_ids"], data.n_classes, spec.seq_len,
                              spec.short_files)
    weights = class_weights(examples) if run.train.class_balance == "weights" else np.ones(data.n_classes)
    all_examples = examples_per_file(data.train_stamps, spec.seq_len, spec.short_files).sum()  # background too
    return InputPlan(spec, batch_size, distribution.replicas, cache, applied, dropped, examples, weights,
                     n_background=int(background_rows(data.train_files).sum()),
                     steps_per_epoch=steps_per_epoch(int(all_examples), batch_size, run, distribution),
                     monitor="val_loss" if len(data.val_files) else "loss")
