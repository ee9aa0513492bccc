"""How a run feeds its model: the input spec, the global batch, the embedding cache, class weights, steps.

The global batch is the model's `batch_size` whatever the machine (split
over the replicas, which must divide it), unless `train.lr_scaling` makes
`batch_size` per replica (jibjib.training.schedule scales the rate then).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from jibjib.core.errors import ConfigError
from jibjib.core.settings import AugmentSettings, RunSettings, VggishSettings
from jibjib.embeddings import CachePlan, cache_plan
from jibjib.labels.tables import background_rows, target_matrix
from jibjib.training.data import TrainingData
from jibjib.training.distribute import Distribution
from jibjib.training.examples import class_weights
from jibjib.training.inputs.cached import applied_augmentation
from jibjib.training.inputs.spec import InputSpec
from jibjib.training.windows import WindowExamples, class_examples, window_examples


@dataclasses.dataclass(frozen=True, eq=False)
class InputPlan:
    """The training input of one run, decided before the model is built."""

    spec: InputSpec
    batch_size: int  # the global batch: the per-replica batch times the replicas
    replicas: int  # over all workers
    cache: CachePlan | None  # a VGGish run's use of the embedding cache; None for another model
    augmentation: AugmentSettings  # what applies to the training batches
    augmentation_dropped: list[str]  # steps the embedding cache cannot apply
    examples: np.ndarray  # labelled training examples per class
    train_examples: int  # every training example (background and weak negatives too)
    windows_digest: str  # of the train and val examples the call windows cut (part of the run's identity)
    class_weights: np.ndarray
    n_background: int  # training files without a species
    steps_per_epoch: int
    monitor: str  # train.monitor (val_cmap or val_loss), or loss without a val split
    val_examples: int  # every val example once per epoch
    val_positive: np.ndarray  # (classes,) bool: the class has a positive example in the val split (cmAP's classes)

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


def global_batch(run: RunSettings, replicas: int) -> int:
    """Examples per training step over all replicas: batch_size (lr_scaling none) or batch_size per replica."""
    batch = run.net.batch_size
    if run.train.lr_scaling != "none":
        return batch * replicas
    if batch % replicas:
        raise ConfigError(f"{run.model}.batch_size: {batch} does not split over the {replicas} replicas of this "
                          f"run: set a multiple of {replicas} (it is the global batch; with train.lr_scaling sqrt "
                          "or linear it is per replica)")
    return batch


def steps_per_epoch(examples: int, batch_size: int, distribution: Distribution) -> int:
    """Batches in an epoch of `examples`, as shard_input leaves them.

    One replica: every batch, the partial last one too. Several on one
    machine: a partial last batch of fewer examples than replicas goes.
    Several workers: only full batches.
    """
    full, tail = divmod(examples, batch_size)
    steps = full + int(distribution.workers == 1 and tail >= distribution.replicas)
    if not steps:
        raise ValueError(f"{examples} training examples make no batch of {batch_size} over {distribution.replicas} "
                         "replicas: lower batch_size or use fewer replicas")
    return steps


def plan_input(run: RunSettings, data: TrainingData, embeddings: list[str | os.PathLike] | None,
               distribution: Distribution) -> InputPlan:
    """The input plan of `run` on `data`, with the replicas of `distribution`."""
    cache = embedding_plan(run, embeddings)
    cached = cache is not None and cache.used
    spec = InputSpec.of(run, data.n_classes)
    applied, dropped = applied_augmentation(spec.augmentation) if cached else (spec.augmentation.active(), [])
    batch_size = global_batch(run, distribution.replicas)
    train_windows, val_windows = (_windows(spec, files, stamps, activity) for files, stamps, activity in (
        (data.train_files, data.train_stamps, data.train_activity), (data.val_files, data.val_stamps,
                                                                      data.val_activity)))
    examples = class_examples(data.train_files, train_windows, data.n_classes)
    unserved = [data.classes[c] for c in np.flatnonzero(examples == 0)
                if data.train_files["class_ids"].map(lambda ids, c=c: c in ids).any()]
    if unserved:
        why = ("shorter than one patch" if spec.seq_len is None else
               f"shorter than seq_len ({spec.seq_len} patches) and convlstm.short_files is skip: set it to pad "
               "or shorten seq_len")
        if spec.windows.uses_activity:
            why = (f"{why}, or without a patch whose activity reaches train.activity_threshold_db "
                   f"({spec.windows.threshold_db:g} dB): lower it, or set train.call_windows: all")
        raise ConfigError(f"{len(unserved)} class(es) have training files but no training example, every file "
                          f"{why} (first: {unserved[0]})")
    val_counts = val_windows.per_file(len(data.val_files))
    labelled_val = np.bincount(val_windows.file[val_windows.labelled], minlength=len(data.val_files))
    weights = class_weights(examples) if run.train.class_balance == "weights" else np.ones(data.n_classes)
    all_examples = len(train_windows)  # background and weak negatives too
    val_positive = (target_matrix(data.val_files["class_ids"], data.n_classes) * labelled_val[:, None]).sum(axis=0) > 0
    return InputPlan(spec, batch_size, distribution.replicas, cache, applied, dropped, examples, int(all_examples),
                     train_windows.digest(val_windows), weights,
                     n_background=int(background_rows(data.train_files).sum()),
                     steps_per_epoch=steps_per_epoch(int(all_examples), batch_size, distribution),
                     monitor=monitor(run, int(val_counts.sum()), val_positive),
                     val_examples=int(val_counts.sum()), val_positive=val_positive)


def _windows(spec: InputSpec, files, stamps, activity) -> WindowExamples:
    """The examples of one split under the run's window rule (jibjib.training.windows)."""
    return window_examples(files, stamps, activity, spec.unit_patches, spec.short_files, spec.windows,
                           spec.frontend.patch_frames)


def monitor(run: RunSettings, val_examples: int, val_positive: np.ndarray) -> str:
    """What early stopping follows: train.monitor; loss without val examples, val_loss without a val positive."""
    if not val_examples:
        return "loss"
    if run.train.monitor == "val_cmap" and not val_positive.any():
        return "val_loss"  # a val split of background files alone has no average precision
    return run.train.monitor
