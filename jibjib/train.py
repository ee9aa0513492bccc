"""Training runs: streaming input, per-epoch checkpoints and a resume that really resumes.

The full training state (weights, optimizer, epoch) is saved after every epoch
under `<out>/checkpoints/`; a killed job that is started again continues from
the last completed epoch instead of epoch 0 (the old code restored only the
VGGish trunk).  All visible GPUs are used through MirroredStrategy; on a
machine without GPUs the same code runs on the CPU.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from . import __version__, fsutil  # noqa: E402
from .data import class_weights, patch_dataset, sequence_dataset, split_files  # noqa: E402
from .models import convlstm_classifier, vggish_classifier  # noqa: E402

MODELS = ("vggish", "convlstm")
# Our datasets have unknown length by design (files are read lazily); Keras
# reports each epoch's end as if it were a mistake.
warnings.filterwarnings("ignore", message="Your input ran out of data")
log = logging.getLogger("jibjib.train")


def build_model(model: str, n_classes: int, settings: dict[str, Any]) -> keras.Model:
    if model == "vggish":
        return vggish_classifier(
            n_classes,
            head_units=settings["head_units"],
            multi_label=settings["multi_label"],
            checkpoint=settings["checkpoint"],
            trainable=settings["trainable"],
            dropout=settings["dropout"],
        )
    if model == "convlstm":
        return convlstm_classifier(
            n_classes,
            seq_len=settings["seq_len"],
            conv_filters=tuple(settings["conv_filters"]),
            lstm_units=settings["lstm_units"],
            dense_units=settings["dense_units"],
            dropout=settings["dropout"],
        )
    raise ValueError(f"unknown model {model!r}: expected one of {', '.join(MODELS)}")


def _dataset(model: str, files: pd.DataFrame, batch_size: int, settings: dict[str, Any],
              shuffle: bool, seed: int) -> tf.data.Dataset:
    if model == "vggish":
        ds = patch_dataset(files, batch_size, shuffle=shuffle, seed=seed,
                           shuffle_buffer=settings["shuffle_buffer"])
    else:
        ds = sequence_dataset(files, batch_size, seq_len=settings["seq_len"], short=settings["short_files"],
                              shuffle=shuffle, seed=seed, shuffle_buffer=settings["shuffle_buffer"])
    if settings["multi_label"]:
        n_classes = settings["n_classes"]
        ds = ds.map(lambda x, y: (x, tf.one_hot(y, n_classes)))
    return ds


class _EpochLog(keras.callbacks.Callback):
    """Appends each finished epoch to a TSV that survives a kill, and prints progress."""

    def __init__(self, path: Path, total_epochs: int) -> None:
        super().__init__()
        self.path, self.total_epochs = path, total_epochs
        self.started = time.monotonic()

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.started = time.monotonic()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        row = {"epoch": epoch + 1, "seconds": round(time.monotonic() - self.started, 1)}
        row.update({k: float(v) for k, v in (logs or {}).items()})
        frame = pd.DataFrame([row])
        write_header = not self.path.exists()
        with open(self.path, "a", encoding="utf-8") as f:
            frame.to_csv(f, sep="\t", index=False, header=write_header, lineterminator="\n")
        shown = ", ".join(f"{k} {v:.4f}" for k, v in row.items() if k not in ("epoch", "seconds"))
        print(f"epoch {epoch + 1}/{self.total_epochs} ({row['seconds']} s): {shown}", file=sys.stderr, flush=True)


class _ResumableState(keras.callbacks.Callback):
    """Weights, optimizer state and epoch after every epoch, restored when fit() starts again.

    Keras's BackupAndRestore overwrites its file in place, so a kill during the
    write leaves a backup that cannot be read; here each state goes to a new
    file that is renamed into place, and `state.json` names the newest complete one.
    """

    def __init__(self, folder: Path, fingerprint: str) -> None:
        super().__init__()
        self.folder = folder
        self.meta = folder / "state.json"
        self.fingerprint = fingerprint

    def saved_state(self) -> dict | None:
        """The state to resume from, if it was saved by a run with the same settings and data."""
        if not self.meta.exists():
            return None
        state = json.loads(self.meta.read_text())
        return state if state.get("fingerprint") == self.fingerprint else None

    def on_train_begin(self, logs: dict | None = None) -> None:
        state = self.saved_state()
        if state is None:
            return
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        self.model.load_weights(self.folder / state["weights"])
        self.model._initial_epoch = state["epoch"]  # how Keras's own BackupAndRestore resumes

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        name = f"state-{epoch + 1:04d}.weights.h5"
        fsutil.atomic_save(self.folder / name, self.model.save_weights)
        fsutil.write_json(self.meta, {"epoch": epoch + 1, "weights": name, "fingerprint": self.fingerprint})
        for old in self.folder.glob("state-*.weights.h5"):
            if old.name != name:
                old.unlink()


def software_versions() -> dict[str, str]:
    """What produced a model: recorded in train.json and in the export's model card."""
    return {"jibjib": __version__, "tensorflow": tf.__version__, "keras": keras.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


def train(
    model: str,
    split_tsv: str | os.PathLike,
    labels_tsv: str | os.PathLike,
    features_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    settings: dict[str, Any],
) -> dict[str, Any]:
    """Train `model` ("vggish" or "convlstm"); writes model.keras, history.tsv and train.json."""
    out = Path(out_dir)
    checkpoints = out / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    fsutil.remove_stale_temps(out)  # half-written files of a killed run
    seed = int(settings["seed"])
    keras.utils.set_random_seed(seed)

    labels = pd.read_csv(labels_tsv, sep="\t", keep_default_na=False)
    n_classes = len(labels)
    settings = {**settings, "n_classes": n_classes}
    train_files = split_files(split_tsv, labels_tsv, features_dir, "train")
    val_files = split_files(split_tsv, labels_tsv, features_dir, "val")
    if train_files.empty:
        raise ValueError(f"{split_tsv} has no training files")

    gpus = tf.config.list_logical_devices("GPU")
    # MirroredStrategy over every visible GPU; the default (CPU) strategy otherwise.
    distribution = tf.distribute.MirroredStrategy() if gpus else tf.distribute.get_strategy()
    replicas = distribution.num_replicas_in_sync
    if settings["mixed_precision"] and gpus:
        keras.mixed_precision.set_global_policy("mixed_float16")
    batch_size = int(settings["batch_size"]) * replicas
    train_ds = _dataset(model, train_files, batch_size, settings, shuffle=True, seed=seed)
    val_ds = _dataset(model, val_files, batch_size, settings, shuffle=False, seed=seed) if len(val_files) else None

    with distribution.scope():
        net = build_model(model, n_classes, settings)
        if settings["multi_label"]:
            loss = keras.losses.BinaryCrossentropy(from_logits=True)
            metrics = [keras.metrics.BinaryAccuracy(threshold=0.0, name="accuracy")]
        else:
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
            metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
        net.compile(
            optimizer=keras.optimizers.Adam(settings["learning_rate"], epsilon=1e-8),
            loss=loss,
            metrics=metrics,
        )

    monitor = "val_loss" if val_ds is not None else "loss"
    history_path = checkpoints / "history.tsv"
    # A saved state resumes only a run of the same settings on the same labels and split.
    fingerprint = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()
                                 + Path(labels_tsv).read_bytes() + Path(split_tsv).read_bytes()).hexdigest()
    state = _ResumableState(checkpoints, fingerprint)
    resumed = state.saved_state() is not None
    if not resumed:
        history_path.unlink(missing_ok=True)  # a fresh run starts a fresh history
    callbacks = [
        # The history row goes first: a kill before the backup below reruns that
        # epoch, whose row is then replaced, rather than losing it.
        _EpochLog(history_path, settings["epochs"]),
        state,
        keras.callbacks.EarlyStopping(monitor=monitor, patience=settings["patience"], restore_best_weights=True),
        keras.callbacks.TensorBoard(str(out / "tensorboard"), update_freq="epoch"),
    ]
    weights = None
    if settings["class_balance"] == "weights" and not settings["multi_label"]:
        weights = class_weights(train_files["class_id"].to_numpy(), n_classes)

    print(
        f"train {model}: {len(train_files)} train files, {len(val_files)} val files, {n_classes} classes, "
        f"batch {batch_size} on {replicas} replica(s) ({'GPU' if gpus else 'CPU'})"
        + (", resuming from the last saved epoch" if resumed else ""),
        file=sys.stderr, flush=True,
    )
    started = time.monotonic()
    net.fit(train_ds, validation_data=val_ds, epochs=settings["epochs"], class_weight=weights,
            callbacks=callbacks, verbose=0, shuffle=False)  # the datasets shuffle themselves

    fsutil.atomic_save(out / "model.keras", net.save)
    history = pd.read_csv(history_path, sep="\t") if history_path.exists() else pd.DataFrame({"epoch": []})
    history = history.drop_duplicates("epoch", keep="last").reset_index(drop=True)
    fsutil.write_tsv(out / "history.tsv", history)
    report = {
        "model": model,
        "classes": labels["label"].astype(str).tolist(),
        "settings": settings,
        "n_train_files": len(train_files),
        "n_val_files": len(val_files),
        "epochs_completed": int(len(history)),
        "resumed": resumed,
        "trunk_initialisation": "checkpoint" if model == "vggish" and settings.get("checkpoint") else "random",
        "seconds": round(time.monotonic() - started, 1),
        "devices": {"replicas": replicas, "gpus": len(gpus)},
        "versions": software_versions(),
    }
    fsutil.write_json(out / "train.json", report)
    return report
