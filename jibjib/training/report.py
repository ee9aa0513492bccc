"""What a training run reports: TrainReport (train.json, written by the chief) and a worker's WorkerReport."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pandas as pd

from jibjib.core.settings import AugmentSettings, RunSettings, VggishSettings
from jibjib.core.versions import software_versions
from jibjib.training.data import TrainingData
from jibjib.training.plan import InputPlan
from jibjib.training.schedule import peak_learning_rate
from jibjib.training.state import RunState


@dataclasses.dataclass(frozen=True)
class WorkerReport:
    """What another worker than the chief of a multi-worker run reports (the chief writes train.json)."""

    model: str
    worker: int
    epochs_completed: int
    seconds: float


@dataclasses.dataclass(frozen=True)
class TrainReport:
    """train.json: what was trained on what, how it went, and what produced it."""

    model: str
    classes: list[str]
    settings: RunSettings
    n_train_files: int
    n_val_files: int
    train_examples_per_class: list[int]
    train_examples: int  # every training example: positives, background and weak negatives
    window_labels: str  # which windows took their file's label (train.call_windows)
    n_train_background_files: int
    augmentation: AugmentSettings  # what applied to the training batches
    embedding_cache: dict[str, Any] | None  # VGGish: used (the cut, the steps not applied) or why not
    class_weights: list[float]
    global_batch: int  # examples per step over all replicas
    peak_learning_rate: float  # the learning rate, after train.lr_scaling
    epochs_completed: int
    stopped_early: bool
    monitor: str
    best_epoch: int | None
    best_val_loss: float | None  # val_loss and val_cmap of the best epoch
    best_val_cmap: float | None
    resumed: bool
    resume_refused_because: str | None
    reused: bool  # a finished run of the same inputs: its model kept, nothing trained
    inputs: dict[str, str]  # the digests a resume compares (jibjib.training.state.TRAINING_INPUTS)
    trunk_initialisation: str  # checkpoint | random
    input: str  # embeddings | packed | npz
    seconds: float
    devices: dict[str, int]
    versions: dict[str, str]

    @classmethod
    def of(cls, run: RunSettings, data: TrainingData, plan: InputPlan, state: RunState, history: pd.DataFrame,
           seconds: float, devices: dict[str, int]) -> TrainReport:
        """The report of a finished run (`state` after its last epoch, `history` its rows)."""
        cache = plan.cache
        best = history[history["epoch"] == state.best_epoch] if state.best_epoch else history.iloc[:0]

        def at_best(column: str) -> float | None:
            value = float(best[column].iloc[0]) if column in best and len(best) else math.nan
            return value if math.isfinite(value) else None

        return cls(
            model=run.model,
            classes=data.classes,
            settings=run,
            n_train_files=len(data.train_files),
            n_val_files=len(data.val_files),
            train_examples_per_class=[int(n) for n in plan.examples],
            train_examples=plan.train_examples,
            window_labels=plan.spec.windows.describe(),
            n_train_background_files=plan.n_background,
            augmentation=plan.augmentation,
            embedding_cache=({"used": True, "cut": cache.cut, "augmentation_not_applied": plan.augmentation_dropped}
                             if plan.cached else {"used": False, "reason": cache.reason} if cache is not None
                             else None),
            class_weights=[round(float(w), 6) for w in plan.class_weights],
            global_batch=plan.batch_size,
            peak_learning_rate=peak_learning_rate(run, plan.replicas),
            epochs_completed=len(history),
            stopped_early=state.stopped,
            monitor=plan.monitor,
            best_epoch=state.best_epoch or None,
            best_val_loss=at_best("val_loss"),
            best_val_cmap=at_best("val_cmap"),
            resumed=state.resumed,
            resume_refused_because=state.refused_because,
            reused=False,
            inputs=state.inputs,
            trunk_initialisation=("checkpoint" if isinstance(run.net, VggishSettings) and run.net.checkpoint
                                  else "random"),
            input="embeddings" if plan.cached else data.source,
            seconds=seconds,
            devices=devices,
            versions=software_versions(),
        )

    def to_dict(self) -> dict[str, Any]:
        """train.json's content: the settings as RunSettings.to_dict ({"model", "train", "<model>"})."""
        fields = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        return {**fields, "settings": self.settings.to_dict(), "augmentation": self.augmentation.to_dict()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainReport:
        """The report of train.json's content (`to_dict`'s form); a key it lacks (written by an older
        jibjib) is None, one it has in excess is dropped."""
        known = {field.name: values.get(field.name) for field in dataclasses.fields(cls)}
        return cls(**{**known, "settings": RunSettings.from_dict(values["settings"]),
                      "augmentation": AugmentSettings.from_dict(values["augmentation"])})

    def reused_by(self, run: RunSettings) -> TrainReport:
        """This finished run's report as `run` (of the same inputs; another checkpoint_every_epochs or
        steps_per_execution) reuses it."""
        return dataclasses.replace(self, settings=run, reused=True, resumed=False, resume_refused_because=None)
