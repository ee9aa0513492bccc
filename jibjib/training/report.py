"""What a training run reports: TrainReport (train.json, written by the chief) and a worker's WorkerReport."""

from __future__ import annotations

import dataclasses
from typing import Any

from jibjib.core.settings import AugmentSettings, RunSettings, VggishSettings
from jibjib.core.versions import software_versions
from jibjib.training.data import TrainingData
from jibjib.training.plan import InputPlan
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
    n_train_background_files: int
    augmentation: AugmentSettings  # what applied to the training batches
    embedding_cache: dict[str, Any] | None  # VGGish: used (the cut, the steps not applied) or why not
    class_weights: list[float]
    epochs_completed: int
    stopped_early: bool
    monitor: str
    best_epoch: int | None
    best_val_loss: float | None
    resumed: bool
    resume_refused_because: str | None
    inputs: dict[str, str]  # the digests a resume compares (jibjib.training.state.TRAINING_INPUTS)
    trunk_initialisation: str  # checkpoint | random
    input: str  # embeddings | packed | npz
    seconds: float
    devices: dict[str, int]
    versions: dict[str, str]

    @classmethod
    def of(cls, run: RunSettings, data: TrainingData, plan: InputPlan, state: RunState, epochs_completed: int,
           seconds: float, devices: dict[str, int]) -> TrainReport:
        """The report of a finished run (`state` after its last epoch)."""
        cache = plan.cache
        return cls(
            model=run.model,
            classes=data.classes,
            settings=run,
            n_train_files=len(data.train_files),
            n_val_files=len(data.val_files),
            train_examples_per_class=[int(n) for n in plan.examples],
            n_train_background_files=plan.n_background,
            augmentation=plan.augmentation,
            embedding_cache=({"used": True, "cut": cache.cut, "augmentation_not_applied": plan.augmentation_dropped}
                             if plan.cached else {"used": False, "reason": cache.reason} if cache is not None
                             else None),
            class_weights=[round(float(w), 6) for w in plan.class_weights],
            epochs_completed=epochs_completed,
            stopped_early=state.stopped,
            monitor=plan.monitor,
            best_epoch=state.best_epoch or None,
            best_val_loss=state.best if state.best_epoch and plan.monitor == "val_loss" else None,
            resumed=state.resumed,
            resume_refused_because=state.refused_because,
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
