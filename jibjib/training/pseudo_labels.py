"""Pseudo-labelled windows as an extra training source (`jibjib train --pseudo-labels`, self-training).

The file (jibjib.selftraining.pseudo writes it) holds the windows' log-mel units, their masks and soft
targets. Each training batch of the labelled data gets `ceil(batch_share x batch_size)` of these windows
appended, drawn in a shuffle seeded by the epoch's seed and given per-example seeds of their own, so the
training step augments them like the labelled examples (background mix, masks, mixup). Their targets are
the teacher's: not smoothed again. The windows are held in memory (a pseudo-label set is a few thousand
windows, 12 KB each in float16).
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Callable

import numpy as np
import tensorflow as tf

from jibjib.core.errors import InputError
from jibjib.training.inputs.order import example_seeds
from jibjib.training.inputs.spec import InputSpec


@dataclasses.dataclass(frozen=True)
class PseudoLabels:
    units: np.ndarray  # (n, unit patches, patch frames, bands) float16
    mask: np.ndarray  # (n, unit patches) bool
    targets: np.ndarray  # (n, classes) float32

    @classmethod
    def load(cls, path: str | os.PathLike, spec: InputSpec, classes: list[str]) -> PseudoLabels:
        """The windows of `path`, checked against what the run trains: its unit and its classes, by name and
        order (a target column is a class of labels.tsv; a teacher of another label set would teach wrong names)."""
        with np.load(path, allow_pickle=False) as z:
            found = cls(z["units"], z["mask"].astype(bool), z["targets"].astype(np.float32))
            drawn_for = [str(c) for c in z["classes"]] if "classes" in z else None
        if drawn_for is not None and drawn_for != list(classes):
            raise InputError(f"--pseudo-labels {path}: drawn for the classes {drawn_for}, but this run trains "
                             f"{list(classes)}: was the teacher trained on another labels.tsv?")
        unit = (spec.unit_patches, spec.frontend.patch_frames, spec.frontend.mel_bands)
        if found.units.shape[1:] != unit or found.targets.shape[1:] != (spec.n_classes,):
            raise InputError(f"--pseudo-labels {path}: windows of {found.units.shape[1:]} with "
                             f"{found.targets.shape[1:]} targets, but this run trains units of {unit} for "
                             f"{spec.n_classes} classes (were they drawn by a teacher of another model or label set?)")
        return found

    def __len__(self) -> int:
        return len(self.targets)


def with_pseudo_labels(batches: Callable[[int], tf.data.Dataset], pseudo: PseudoLabels, batch_size: int,
                       share: float) -> Callable[[int], tf.data.Dataset]:
    """`batches` (an epoch's gathered batches from its seed) with pseudo-labelled windows appended to each."""
    extra = max(1, math.ceil(share * batch_size))
    if len(pseudo) == 0:
        return batches

    def epoch(seed: int) -> tf.data.Dataset:
        windows = tf.data.Dataset.from_tensor_slices((pseudo.units, pseudo.mask, pseudo.targets))
        windows = windows.shuffle(len(pseudo), seed=seed + 11, reshuffle_each_iteration=False).repeat()
        windows = tf.data.Dataset.zip(windows, example_seeds(seed + 12, False)).batch(extra)
        return tf.data.Dataset.zip(batches(seed), windows).map(_append)

    return epoch


def _append(labelled: tuple[dict, tf.Tensor], windows: tuple) -> tuple[dict, tf.Tensor]:
    (batch, targets), ((units, mask, extra_targets), seeds) = labelled, windows
    joined = {"units": tf.concat([batch["units"], tf.cast(units, batch["units"].dtype)], 0),
              "mask": tf.concat([batch["mask"], mask], 0),
              "seed": tf.concat([batch["seed"], tf.cast(seeds, batch["seed"].dtype)], 0)}
    if "background" in batch:  # background stretches are random draws: the batch's own serve again
        rows = tf.range(tf.shape(units)[0]) % tf.shape(batch["background"])[0]
        joined["background"] = tf.concat([batch["background"], tf.gather(batch["background"], rows)], 0)
    if "weight" in batch:  # weak negatives weigh less in the loss; a pseudo-labelled window counts in full
        joined["weight"] = tf.concat([batch["weight"], tf.ones([tf.shape(units)[0]], batch["weight"].dtype)], 0)
    return joined, tf.concat([targets, tf.cast(extra_targets, targets.dtype)], 0)
