"""A run's saved state, and what it must share with a new run to be resumed by it.

The full training state (weights, optimizer, epoch, best epoch and its
weights, early-stopping counter) is saved after every epoch (or every
`train.checkpoint_every_epochs`, and always after the last) under
`<out>/checkpoints/`. A killed job that is started again continues after
the last saved epoch (the old code restored only the VGGish trunk), but only
if everything the run is computed from is unchanged (`training_inputs`,
digests of each input, the replicas and the precision). A finished run keeps
its model and report there too: a run of the same inputs reuses them (in
seconds) instead of training again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from jibjib import __version__
from jibjib.core import fsutil
from jibjib.core.errors import TrainingError
from jibjib.core.settings import RunSettings, VggishSettings
from jibjib.features.files import FeatureStamp
from jibjib.models.checkpoint import checkpoint_files


TRAINING_INPUTS = {  # what a saved state must share with this run to be resumed, as the log names it
    "model": "the model",
    "settings": "the training settings",
    "labels": "labels.tsv",
    "split": "split.tsv",
    "features": "the feature files (content or front end)",
    "windows": "the call windows (which examples, their labels and weights)",
    "vggish_checkpoint": "the content of vggish.checkpoint",
    "input": "the training input (packed or per-file npz)",
    "embeddings": "the embedding cache (jibjib embed)",
    "pseudo_labels": "the pseudo-labelled windows (self-training)",
    "replicas": "the replicas",  # devices training together
    "precision": "the compute precision",
    "jibjib": "the jibjib version",
}
SHOWN_INPUTS = ("replicas", "precision", "input", "jibjib")  # said with their values when they change
KEPT_MODEL, KEPT_REPORT = "model.keras", "train.json"  # a finished run's outputs, kept in checkpoints/


def _sha256_text(*parts: str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()


def checkpoint_digest(path: str | os.PathLike) -> str:
    """SHA-256 over a TF checkpoint's files: the V1 file, or a V2 prefix's index and data shards."""
    files = checkpoint_files(str(path))
    return _sha256_text(*(f"{f.name}:{fsutil.sha256_file(f)}" for f in files))


# Settings that change no result: a run resumes (or a finished one is reused) across a change of them.
NOT_IN_IDENTITY = ("checkpoint_every_epochs", "steps_per_execution")


def settings_digest(run: RunSettings) -> str:
    """SHA-256 of the typed settings but NOT_IN_IDENTITY: how often the state is saved, and how many steps
    Keras runs per call into the compiled step."""
    values = dataclasses.asdict(run)
    for name in NOT_IN_IDENTITY:
        del values["train"][name]
    return _sha256_text(json.dumps(values, sort_keys=True))


def training_inputs(run: RunSettings, labels_tsv: Path, split_tsv: Path, files: pd.DataFrame,
                    stamps: list[FeatureStamp], input_kind: str,
                    embeddings: list[str | os.PathLike] | None, replicas: int, precision: str,
                    windows: str = "none", pseudo: tuple[str | os.PathLike, float] | None = None) -> dict[str, str]:
    """A digest of each thing a training run is computed from (the keys of TRAINING_INPUTS).

    The replicas and the precision are part of it: they change the numbers
    (per-replica BatchNorm statistics, float16), so a run killed on 4 GPUs is
    not resumed on 1. `windows`: the digest of the examples the call windows
    cut (jibjib.training.plan.InputPlan.windows_digest): the activity scores
    are derived from the features, and a change of how they are computed
    changes the labels.
    """
    checkpoint = run.net.checkpoint if isinstance(run.net, VggishSettings) else None
    # Self-training: the windows' content and their share of each batch; absent without (so the saved
    # states of runs from before self-training existed stay resumable and reusable).
    extra = {"pseudo_labels": f"{fsutil.sha256_file(pseudo[0])}\t{pseudo[1]}"} if pseudo else {}
    return {**extra,
        "model": run.model,
        "settings": settings_digest(run),
        "labels": fsutil.sha256_file(labels_tsv),
        "split": fsutil.sha256_file(split_tsv),
        "features": _sha256_text(*(f"{path}\t{stamp.content}\t{stamp.frames}"
                                   for path, stamp in zip(files["path"], stamps))),
        "windows": windows,
        "vggish_checkpoint": checkpoint_digest(checkpoint) if checkpoint else "none",
        "input": input_kind,  # packed features are float16: the same run, not the same numbers
        # The cache indexes name each file's content, the cut and the frozen weights' digest.
        "embeddings": (_sha256_text(*(fsutil.sha256_file(path) for path in embeddings)) if embeddings
                       else "none"),
        "replicas": str(replicas),
        "precision": precision,
        "jibjib": __version__,
    }


def changed_inputs(saved: dict[str, str], current: dict[str, str]) -> str | None:
    """What differs between a saved state's inputs and this run's, as the log says it; None if nothing."""
    changed = [TRAINING_INPUTS[name] + (f" ({saved.get(name, 'not recorded')} then, {current.get(name)} now)"
                                        if name in SHOWN_INPUTS else "")
               for name in TRAINING_INPUTS if saved.get(name) != current.get(name)]
    return "changed since it was saved: " + ", ".join(changed) if changed else None


def higher_is_better(monitor: str) -> bool:
    """Whether `monitor` improves upwards (val_cmap) rather than downwards (the losses)."""
    return monitor.endswith("cmap")


class RunState(keras.callbacks.Callback):
    """Everything a killed run needs to go on as if it had not been killed, saved every `save_every` epochs.

    Between saves the best weights are held in variables beside the model's
    (on its device): a copy to the host, for VGGish 289 MB, happens only when
    a state is written.

    `checkpoints/state.json` names the last finished epoch, the weights and
    optimizer state after it, the best epoch so far with its weights, the
    early-stopping counter, and digests of everything the run is computed
    from. A state is resumed only by a run of the same inputs; once its run
    has finished, such a run reuses its kept model instead (`reusable`), and
    a run of other inputs starts at epoch 1. (Keras's own
    BackupAndRestore and EarlyStopping keep neither the best epoch nor the
    patience counter across a restart, and overwrite their file in place.)
    Each file is written under a new name and renamed into place.

    With several workers every worker keeps the same state (its decisions
    come from the logs, which are reduced over all workers, and holding the
    best weights creates variables, which all workers must do together), but
    only the one with `writes` (the chief) writes it.
    """

    def __init__(self, folder: Path, inputs: dict[str, str], monitor: str, patience: int,
                 total_epochs: int = 0, save_every: int = 1, writes: bool = True) -> None:
        super().__init__()
        self.writes = writes
        self.folder, self.meta = folder, folder / "state.json"
        self.inputs, self.monitor, self.patience = inputs, monitor, patience
        self.total_epochs, self.save_every = total_epochs, max(1, int(save_every))
        self.sign = -1.0 if higher_is_better(monitor) else 1.0  # sign * value: lower is better
        self.best_held: list[tf.Variable] | None = None
        self.epoch = self.best_epoch = self.wait = 0
        self.best = self.sign * math.inf
        self.best_tie = math.inf  # val_loss of the best epoch, which breaks a tie of val_cmap (1.0 on easy data)
        self.stopped = False
        self.best_weights: list[np.ndarray] | None = None
        self.best_file: str | None = None
        self.saved: dict[str, Any] | None = None  # the state being resumed
        self.finished_run: dict[str, Any] | None = None  # the finished run of the same inputs, reused
        self.refused_because = self._check_saved_state()

    def _check_saved_state(self) -> str | None:
        """None if the saved state can be resumed (then in self.saved) or its finished run reused (then in
        self.finished_run), else why not."""
        if not self.meta.exists():
            return "no saved state"
        try:
            state = json.loads(self.meta.read_text())
        except (OSError, ValueError):
            return "the saved state is unreadable"
        changed = changed_inputs(state.get("inputs", {}), self.inputs)
        if changed:
            return changed
        if state.get("finished"):
            kept = self.folder / KEPT_MODEL
            if not (kept.is_file() and (self.folder / KEPT_REPORT).is_file()
                    and fsutil.sha256_file(kept) == state.get("model_sha256")):
                return "the finished run of the same inputs kept no intact model"
            self.finished_run = state
            return None
        self.saved = state
        return None

    @property
    def resumed(self) -> bool:
        return self.saved is not None

    @property
    def reusable(self) -> bool:
        """Whether a finished run of the same inputs left its model, which this run then keeps."""
        return self.finished_run is not None

    def start_fresh(self) -> None:
        """Forget every saved state and kept model, so nothing of another run can leak into this one."""
        for name in ("state.json", "history.tsv", KEPT_MODEL, KEPT_REPORT):
            (self.folder / name).unlink(missing_ok=True)
        self._remove_states()

    def restore(self, model: keras.Model) -> None:
        """Load the saved weights, optimizer state, best epoch and counter into `model` (inside the strategy scope)."""
        state = self.saved
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        model.load_weights(self.folder / state["weights"])
        self.epoch, self.wait, self.stopped = state["epoch"], state["wait"], state["stopped"]
        if state.get("best_weights"):
            self.best, self.best_epoch, self.best_file = state["best"], state["best_epoch"], state["best_weights"]
            self.best_tie = state.get("best_tie", math.inf)
            with np.load(self.folder / self.best_file) as saved:
                self.best_weights = [saved[f"arr_{i}"] for i in range(len(saved.files))]

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        diverged = sorted(name for name, value in logs.items() if not math.isfinite(float(value)))
        if diverged:
            raise TrainingError(
                f"epoch {epoch + 1}: {', '.join(f'{name} {float(logs[name])}' for name in diverged)}: training "
                f"diverged (the state saved after epoch {self.epoch} is kept); lower the learning rate or check the "
                "features for NaN or inf")
        current = logs.get(self.monitor)
        tie = float(logs.get("val_loss", math.inf)) if higher_is_better(self.monitor) else 0.0
        if current is not None and (self.sign * float(current), tie) < (self.sign * self.best, self.best_tie):
            self.best, self.best_tie, self.best_epoch, self.wait = float(current), tie, epoch + 1, 0
            self._hold_best()
        else:
            self.wait += 1
        if self.wait >= self.patience:
            self.stopped = self.model.stop_training = True
        if (epoch + 1) % self.save_every and not self.stopped and epoch + 1 < self.total_epochs:
            return  # a kill before the next saved epoch resumes from the last one
        best_file = f"best-{self.best_epoch:04d}.npz" if self.best_epoch else None
        if best_file and best_file != self.best_file:
            if self.writes:
                weights = self._best_on_host()
                fsutil.atomic_save(self.folder / best_file, lambda tmp: np.savez(tmp, *weights))
            self.best_file = best_file
        name = f"state-{epoch + 1:04d}.weights.h5"
        self.epoch = epoch + 1
        if self.writes:
            fsutil.atomic_save(self.folder / name, self.model.save_weights)
            self._write_meta(weights=name)
            self._remove_states(keep={name, self.best_file})

    def _hold_best(self) -> None:
        """Copy the weights to variables beside them (on the device, no host copy until a state is saved)."""
        if self.best_held is None:
            self.best_held = [tf.Variable(v.value, trainable=False) for v in self.model.weights]
        else:
            for held, v in zip(self.best_held, self.model.weights):
                held.assign(v.value)
        self.best_weights = None  # a resumed run's best, now superseded

    def _best_on_host(self) -> list[np.ndarray]:
        return [held.numpy() for held in self.best_held] if self.best_held is not None else self.best_weights

    def _write_meta(self, weights: str | None, finished: bool = False, model_sha256: str | None = None) -> None:
        fsutil.write_json(self.meta, {
            "epoch": self.epoch, "wait": self.wait, "stopped": self.stopped, "finished": finished,
            "best": self.best if self.best_epoch else None, "best_epoch": self.best_epoch or None,
            "best_tie": self.best_tie if self.best_epoch else None,
            "best_weights": self.best_file, "weights": weights, "monitor": self.monitor, "inputs": self.inputs,
            **({"model_sha256": model_sha256} if finished else {}),
        })

    def _remove_states(self, keep: set[str | None] = frozenset()) -> None:
        for old in [*self.folder.glob("state-*"), *self.folder.glob("best-*")]:
            if old.name not in keep:
                old.unlink()

    def use_best_weights(self, model: keras.Model) -> None:
        if self.best_held is not None:
            for v, held in zip(model.weights, self.best_held):
                v.assign(held)
        elif self.best_weights is not None:
            model.set_weights(self.best_weights)

    def finish(self, model: Path, report: Path) -> None:
        """Keep the run's `model` and `report` for a run of the same inputs, mark the run finished (never
        resumed again) and free the disk its states took (the chief's job)."""
        keep(model, self.folder / KEPT_MODEL)
        keep(report, self.folder / KEPT_REPORT)
        self.best_file = None
        self._write_meta(weights=None, finished=True, model_sha256=fsutil.sha256_file(self.folder / KEPT_MODEL))
        self._remove_states()


def keep(source: Path, target: Path) -> None:
    """`target` as a second name of `source` (a hard link: no disk; a copy where links fail), atomically."""
    def link_or_copy(tmp: Path) -> None:
        tmp.unlink(missing_ok=True)
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)

    fsutil.atomic_save(target, link_or_copy)
