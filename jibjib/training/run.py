"""Training runs: streaming input, per-epoch state, a resume that resumes only what it should.

The full training state (weights, optimizer, epoch, best epoch and its
weights, early-stopping counter) is saved after every epoch (or every
`checkpoint_every_epochs`, and always after the last) under
`<out>/checkpoints/`; a killed job that is started again continues after the
last saved epoch (the old code restored only the VGGish trunk), but only
if everything the run is computed from is unchanged and the run had not
finished. All visible GPUs are used through MirroredStrategy; on a machine
without GPUs the same code runs on the CPU. Started by `srun` as several
tasks of a SLURM job, the tasks train one model together
(MultiWorkerMirroredStrategy, jibjib.training.distribute): every worker
computes every step, only the chief (task 0) writes files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
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

from jibjib import __version__
from jibjib.core import fsutil  # noqa: E402
from jibjib.core.versions import software_versions  # noqa: E402
from jibjib.models.checkpoint import checkpoint_files  # noqa: E402
from jibjib.core.errors import LabelError  # noqa: E402
from jibjib.training.inputs.pipeline import (
    FeatureStamp, InputSpec, background_rows, class_weights, examples_per_file, file_stamps, split_files, target_matrix, training_dataset,
)
from jibjib.embeddings import CachePlan, cache_plan  # noqa: E402
from jibjib.embeddings.cache import EmbeddingCache  # noqa: E402
from jibjib.training.inputs.cached import applied_augmentation, embedding_dataset  # noqa: E402
from jibjib.embeddings.trunk import frozen_weights_digest, head_model, trunk_of  # noqa: E402
from jibjib.models.networks import convlstm_classifier, vggish_classifier  # noqa: E402
from jibjib.packing import PackedFeatures  # noqa: E402
from jibjib.core.tflog import quiet_python_logging  # noqa: E402
from jibjib.training.augment import Augmentation  # noqa: E402
from jibjib.training.distribute import choose_strategy  # noqa: E402

quiet_python_logging()

MODELS = ("vggish", "convlstm")
# Our datasets have unknown length by design (files are read lazily); Keras
# reports each epoch's end as if it were a mistake.
warnings.filterwarnings("ignore", message="Your input ran out of data")


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


def input_spec(model: str, settings: dict[str, Any]) -> InputSpec:
    """The training input of one run, from its settings (missing keys take their defaults)."""
    return InputSpec(
        n_classes=settings["n_classes"],
        seq_len=settings["seq_len"] if model == "convlstm" else None,
        short_files=settings.get("short_files", "pad"),
        multi_label=settings["multi_label"],
        label_smoothing=float(settings.get("label_smoothing", 0.0)),
        class_balance=settings["class_balance"],
        shuffle_buffer=settings["shuffle_buffer"],
        augmentation=Augmentation.from_settings(settings.get("augment")),
    )


def learning_rate(settings: dict[str, Any], replicas: int, steps_per_epoch: int
                  ) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """The configured rate times the replicas (the batch grows with them), constant or warm-up then cosine."""
    peak = float(settings["learning_rate"]) * replicas
    if settings.get("lr_schedule", "cosine") == "constant":
        return peak
    total = max(1, int(settings["epochs"]) * steps_per_epoch)
    warmup = min(total - 1, int(round(float(settings.get("warmup_epochs", 1)) * steps_per_epoch)))
    # Warm-up from a hundredth of the peak, then cosine down to a hundredth.
    return keras.optimizers.schedules.CosineDecay(peak / 100.0, max(1, total - warmup), alpha=0.01,
                                                  warmup_target=peak, warmup_steps=warmup)


class _EpochLog(keras.callbacks.Callback):
    """Records each finished epoch in a TSV that survives a kill, and prints progress (the chief's callback).

    The whole table is rewritten atomically each epoch, so a reader (or a
    resumed run) never sees it empty or with half a row.
    """

    def __init__(self, path: Path, total_epochs: int) -> None:
        super().__init__()
        self.path, self.total_epochs = path, total_epochs
        self.started = time.monotonic()
        self.rows = pd.DataFrame({"epoch": []})

    def on_train_begin(self, logs: dict | None = None) -> None:
        if self.path.exists():  # a resumed run's earlier epochs
            self.rows = pd.read_csv(self.path, sep="\t")

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.started = time.monotonic()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        row = {"epoch": epoch + 1, "seconds": round(time.monotonic() - self.started, 3)}
        row.update({k: float(v) for k, v in (logs or {}).items()})
        # An epoch run again after a kill replaces the row its first run left.
        earlier = self.rows[self.rows["epoch"] < epoch + 1]
        this = pd.DataFrame([row])
        self.rows = pd.concat([earlier, this], ignore_index=True) if len(earlier) else this
        fsutil.write_tsv(self.path, self.rows)
        shown = ", ".join(f"{k} {v:.4f}" for k, v in row.items() if k not in ("epoch", "seconds"))
        print(f"epoch {epoch + 1}/{self.total_epochs} ({row['seconds']} s): {shown}", file=sys.stderr, flush=True)


TRAINING_INPUTS = {  # what a saved state must share with this run to be resumed, as the log names it
    "model": "the model",
    "settings": "the training settings",
    "labels": "labels.tsv",
    "split": "split.tsv",
    "features": "the feature files (content or front end)",
    "vggish_checkpoint": "the content of vggish.checkpoint",
    "input": "the training input (packed or per-file npz)",
    "embeddings": "the embedding cache (jibjib embed)",
    "jibjib": "the jibjib version",
}


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


def training_inputs(model: str, settings: dict[str, Any], labels_tsv: Path, split_tsv: Path,
                    files: pd.DataFrame, stamps: list[FeatureStamp], input_kind: str = "npz",
                    embeddings: list[str | os.PathLike] | None = None) -> dict[str, str]:
    """A digest of each thing a training run is computed from (the keys of TRAINING_INPUTS)."""
    checkpoint = settings.get("checkpoint") if model == "vggish" else None
    return {
        "model": model,
        # How often the state is saved changes no result: a run resumes across a change of it.
        "settings": _sha256_text(json.dumps({k: v for k, v in settings.items() if k != "checkpoint_every_epochs"},
                                            sort_keys=True)),
        "labels": fsutil.sha256_file(labels_tsv),
        "split": fsutil.sha256_file(split_tsv),
        "features": _sha256_text(*(f"{path}\t{stamp.content}\t{stamp.frames}"
                                   for path, stamp in zip(files["path"], stamps))),
        "vggish_checkpoint": checkpoint_digest(checkpoint) if checkpoint else "none",
        "input": input_kind,  # packed features are float16: the same run, not the same numbers
        # The cache indexes name each file's content, the cut and the frozen weights' digest.
        "embeddings": (_sha256_text(*(fsutil.sha256_file(path) for path in embeddings)) if embeddings
                       else "none"),
        "jibjib": __version__,
    }


class _RunState(keras.callbacks.Callback):
    """Everything a killed run needs to go on as if it had not been killed, saved every `save_every` epochs.

    Between saves the best weights are held in variables beside the model's
    (on its device): a copy to the host, for VGGish 289 MB, happens only when
    a state is written.

    `checkpoints/state.json` names the last finished epoch, the weights and
    optimizer state after it, the best epoch so far with its weights, the
    early-stopping counter, and digests of everything the run is computed
    from. A state is resumed only by a run of the same inputs, and never
    once its run has finished: a retrain starts at epoch 1. (Keras's own
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
        self.best_held: list[tf.Variable] | None = None
        self.epoch = self.best_epoch = self.wait = 0
        self.best = math.inf
        self.stopped = False
        self.best_weights: list[np.ndarray] | None = None
        self.best_file: str | None = None
        self.saved: dict[str, Any] | None = None  # the state being resumed
        self.refused_because = self._check_saved_state()

    def _check_saved_state(self) -> str | None:
        """None if the saved state can be resumed (it is then in self.saved), else why not."""
        if not self.meta.exists():
            return "no saved state"
        try:
            state = json.loads(self.meta.read_text())
        except (OSError, ValueError):
            return "the saved state is unreadable"
        if state.get("finished"):
            return "the saved state is of a finished run"
        saved_inputs = state.get("inputs", {})
        changed = [name for name in TRAINING_INPUTS if saved_inputs.get(name) != self.inputs.get(name)]
        if changed:
            return "changed since it was saved: " + ", ".join(TRAINING_INPUTS[name] for name in changed)
        self.saved = state
        return None

    @property
    def resumed(self) -> bool:
        return self.saved is not None

    def start_fresh(self) -> None:
        """Forget every saved state, so nothing of another run can leak into this one."""
        self.meta.unlink(missing_ok=True)
        (self.folder / "history.tsv").unlink(missing_ok=True)
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
            with np.load(self.folder / self.best_file) as saved:
                self.best_weights = [saved[f"arr_{i}"] for i in range(len(saved.files))]

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        current = (logs or {}).get(self.monitor)
        if current is not None and float(current) < self.best:  # NaN never improves
            self.best, self.best_epoch, self.wait = float(current), epoch + 1, 0
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

    def _write_meta(self, weights: str | None, finished: bool = False) -> None:
        fsutil.write_json(self.meta, {
            "epoch": self.epoch, "wait": self.wait, "stopped": self.stopped, "finished": finished,
            "best": self.best if self.best_epoch else None, "best_epoch": self.best_epoch or None,
            "best_weights": self.best_file, "weights": weights, "monitor": self.monitor, "inputs": self.inputs,
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

    def finish(self) -> None:
        """Mark the run finished (never resumed again) and free the disk its states took (the chief's job)."""
        self.best_file = None
        self._write_meta(weights=None, finished=True)
        self._remove_states()


def _cached_datasets(net: keras.Model, cut: str, embeddings: list[str | os.PathLike], train_files: pd.DataFrame,
                     val_files: pd.DataFrame, spec: InputSpec, batch_size: int, seed: int
                     ) -> tuple[tf.data.Dataset, tf.data.Dataset | None]:
    """Training and validation batches from the cache, after checking it holds this run's frozen trunk."""
    cache = EmbeddingCache.open(embeddings)
    wanted = (cut, frozen_weights_digest(trunk_of(net), cut))
    used = cache.locate(pd.concat([train_files, val_files])["path"])
    if set(zip(used["cut"], used["trunk"])) - {wanted}:
        raise ValueError(f"the embedding cache was computed with another frozen trunk than this run's (cut "
                         f"{cut}, weights {wanted[1][:12]}): run jibjib embed again with this run's "
                         "vggish.checkpoint, vggish.trainable and train.seed")
    train_x, train_of = cache.gather(train_files["path"])
    train_ds = embedding_dataset(train_files, train_x, train_of, spec, batch_size, training=True, seed=seed)
    if not len(val_files):
        return train_ds, None
    val_x, val_of = cache.gather(val_files["path"])
    return train_ds, embedding_dataset(val_files, val_x, val_of, spec, batch_size, training=False, seed=seed)


@keras.saving.register_keras_serializable(package="jibjib")
class ClassWeightedCrossentropy(keras.losses.Loss):
    """Cross-entropy from logits with each class weighted, in the loss itself.

    Keras's `class_weight` weights only the training batches, so val_loss
    would measure something else than loss; a weighted loss applies to both.
    Targets are (batch, classes) probabilities (mixed, smoothed or uniform for
    background under softmax). Single-label: softmax cross-entropy times the
    target-weighted class weight. Multi-label: sigmoid cross-entropy per class,
    the positive term of each class times its weight (negatives weigh 1).
    """

    def __init__(self, class_weights: list[float], multi_label: bool = False,
                 name: str = "class_weighted_crossentropy", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.class_weights = [float(w) for w in class_weights]
        self.multi_label = multi_label

    def call(self, y_true, y_pred):  # noqa: ANN001, ANN201 - Keras API
        logits = keras.ops.cast(y_pred, "float32")
        weights = keras.ops.convert_to_tensor(self.class_weights, "float32")
        target = keras.ops.cast(y_true, "float32")
        if self.multi_label:
            per_class = keras.ops.binary_crossentropy(target, logits, from_logits=True)
            return keras.ops.mean(per_class * (1.0 + (weights - 1.0) * target), axis=-1)
        loss = keras.ops.categorical_crossentropy(target, logits, from_logits=True)
        return loss * keras.ops.sum(target * weights, axis=-1)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "class_weights": self.class_weights, "multi_label": self.multi_label}


def example_counts(model: str, stamps: list[FeatureStamp], class_ids: pd.Series, n_classes: int,
                   settings: dict[str, Any]) -> np.ndarray:
    """Training examples per class (a multi-species file counts for each of its species, background for none)."""
    units = examples_per_file(stamps, settings["seq_len"] if model == "convlstm" else None, settings.get("short_files", "pad"))
    return (target_matrix(class_ids, n_classes) * units[:, None]).sum(axis=0)


def embedding_plan(model: str, settings: dict[str, Any], embeddings: list | None) -> CachePlan | None:
    """How a VGGish run uses the embedding cache (None for another model); raises if `embeddings` cannot serve it."""
    if model != "vggish":
        if embeddings:
            raise ValueError(f"--embeddings serve only a VGGish run with a frozen trunk, not {model}")
        return None
    plan = cache_plan(settings["trainable"], settings.get("embedding_cache", "auto"))
    if embeddings and not plan.used:
        raise ValueError(f"--embeddings given, but the run cannot train from them: {plan.reason}")
    if plan.used and not embeddings:
        return dataclasses.replace(plan, cut=None, reason="no embedding cache given (--embeddings, jibjib embed)")
    return plan


def train(
    model: str,
    split_tsv: str | os.PathLike,
    labels_tsv: str | os.PathLike,
    features_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    settings: dict[str, Any],
    packed: list[str | os.PathLike] | None = None,
    embeddings: list[str | os.PathLike] | None = None,
) -> dict[str, Any]:
    """Train `model` ("vggish" or "convlstm"); writes model.keras, history.tsv and train.json.

    With `packed` (the index files of jibjib.packed) the examples are read
    from the packed features; without, from each file's npz. With
    `embeddings` (the index files of jibjib.embeddings, for a VGGish run
    with a frozen trunk) only the layers after the cut train, from the cached
    trunk outputs; model.keras is still the whole classifier. The shipped
    model has the weights of the best epoch of the whole run (lowest val_loss,
    or loss without a val split), across resumes.
    """
    # First: a multi-worker strategy must exist before TensorFlow sets up its devices.
    distribution = choose_strategy(settings.get("gpus_per_task"))
    chief = distribution.is_chief
    out = Path(out_dir)
    checkpoints = out / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    if chief:
        fsutil.remove_stale_temps(out)  # half-written files of a killed run
    seed = int(settings["seed"])
    keras.utils.set_random_seed(seed)

    labels = pd.read_csv(labels_tsv, sep="\t", keep_default_na=False)
    n_classes = len(labels)
    settings = {**settings, "n_classes": n_classes}
    train_files = split_files(split_tsv, labels_tsv, features_dir, "train")
    val_files = split_files(split_tsv, labels_tsv, features_dir, "val")
    several = sorted({path for f in (train_files, val_files) for path, ids in zip(f["path"], f["class_ids"])
                      if len(ids) > 1})
    if several and not settings["multi_label"]:
        raise LabelError(f"a softmax model has one species per file, but {len(several)} of the files name several "
                         f"({several[0]}, ...); set multi_label: true")
    if not settings.get("use_background", True):
        train_files, val_files = (f[~background_rows(f)].reset_index(drop=True) for f in (train_files, val_files))
    if train_files.empty:
        raise ValueError(f"{split_tsv} has no training files")
    plan = embedding_plan(model, settings, embeddings)
    cached = plan is not None and plan.used
    packs = PackedFeatures.open(packed) if packed else None
    train_stamps, val_stamps = (file_stamps(f, packs) for f in (train_files, val_files))

    gpus = tf.config.list_logical_devices("GPU")
    replicas = distribution.replicas  # over all workers
    if settings["mixed_precision"] and gpus:
        keras.mixed_precision.set_global_policy("mixed_float16")
    batch_size = int(settings["batch_size"]) * replicas  # the global batch; the learning rate grows with it
    spec = input_spec(model, settings)
    applied, dropped = applied_augmentation(spec.augmentation) if cached else (spec.augmentation.active(), [])
    if not cached:
        train_ds = training_dataset(train_files, spec, batch_size, training=True, seed=seed, packs=packs)
        val_ds = (training_dataset(val_files, spec, batch_size, training=False, seed=seed, packs=packs)
                  if len(val_files) else None)

    examples = example_counts(model, train_stamps, train_files["class_ids"], n_classes, settings)
    weights = class_weights(examples) if settings["class_balance"] == "weights" else np.ones(n_classes)
    n_background = int(background_rows(train_files).sum())
    all_examples = examples_per_file(train_stamps, spec.seq_len, spec.short_files).sum()  # background files too
    if distribution.workers > 1:  # only full batches (see shard_input)
        if all_examples < batch_size:
            raise ValueError(f"{int(all_examples)} training examples make no full batch of {batch_size} "
                             f"({settings['batch_size']} on each of {replicas} replicas): lower batch_size "
                             "or use fewer workers")
        steps_per_epoch = int(all_examples) // batch_size
    else:
        steps_per_epoch = max(1, -(-int(all_examples) // batch_size))
    monitor = "val_loss" if len(val_files) else "loss"
    inputs = training_inputs(model, settings, Path(labels_tsv), Path(split_tsv),
                             pd.concat([train_files, val_files]), train_stamps + val_stamps,
                             "packed" if packs is not None else "npz", embeddings if cached else None)
    state = _RunState(checkpoints, inputs, monitor, settings["patience"], settings["epochs"],
                      settings.get("checkpoint_every_epochs", 1), writes=chief)
    # Every worker has read the saved state; none may start from another epoch than the chief.
    if not distribution.same_on_every_worker(state.saved["epoch"] if state.resumed else -1):
        raise RuntimeError(f"the workers found different saved states in {checkpoints}: is it on a filesystem "
                           "that every node sees?")
    if not state.resumed and chief:
        state.start_fresh()
        shutil.rmtree(out / "tensorboard", ignore_errors=True)  # its curves belong to the run being replaced

    with distribution.strategy.scope():
        net = build_model(model, n_classes, settings)
        # From the cache only the layers after the cut train; they are the classifier's own layers.
        trained = head_model(net, plan.cut) if cached else net
        metric = (keras.metrics.BinaryAccuracy(threshold=0.0, name="accuracy") if settings["multi_label"]
                  else keras.metrics.CategoricalAccuracy(name="accuracy"))
        trained.compile(optimizer=keras.optimizers.Adam(learning_rate(settings, replicas, steps_per_epoch),
                                                        epsilon=1e-8),
                        loss=ClassWeightedCrossentropy(weights.tolist(), settings["multi_label"]), metrics=[metric])
        if state.resumed:
            state.restore(trained)
    if cached:
        train_ds, val_ds = _cached_datasets(net, plan.cut, embeddings, train_files, val_files, spec, batch_size, seed)
        print(f"train {model}: the head trains from the embedding cache (output of {plan.cut}); augmentation "
              f"in embedding space is mixup only" + (f", not {', '.join(dropped)}" if dropped else ""),
              file=sys.stderr, flush=True)
    elif plan is not None and plan.reason and settings["trainable"] != "all":
        print(f"train {model}: no embedding cache: {plan.reason}", file=sys.stderr, flush=True)
    train_ds = distribution.shard_input(train_ds, batch_size, True)
    val_ds = distribution.shard_input(val_ds, batch_size, False) if val_ds is not None else None
    distribution.build_for_fit(trained, train_ds.element_spec)

    history_path = checkpoints / "history.tsv"
    # The history row goes first: a kill before the state is saved reruns
    # that epoch, whose row is then replaced, rather than losing it. The
    # other workers run the state alone: it writes nothing there.
    callbacks = ([_EpochLog(history_path, settings["epochs"]), state,
                  keras.callbacks.TensorBoard(str(out / "tensorboard"), update_freq="epoch")] if chief
                 else [state])
    done = state.stopped or state.epoch >= settings["epochs"]
    workers = f" of {distribution.workers} workers" if distribution.workers > 1 else ""
    if chief:
        print(
            f"train {model}: {len(train_files)} train files ({int(examples.sum())} examples"
            f"{f', {n_background} background files' if n_background else ''}), {len(val_files)} val files, "
            f"{n_classes} classes, batch {batch_size} on {replicas} replica(s){workers} "
            f"({'GPU' if gpus else 'CPU'}); "
            + (f"resuming from the last saved epoch ({state.epoch}, best so far {state.best_epoch or 'none'})"
               + (", which ended the run" if done else "") if state.resumed
               else f"starting at epoch 1 ({state.refused_because})"),
            file=sys.stderr, flush=True,
        )
    started = time.monotonic()
    if not done:
        trained.fit(train_ds, validation_data=val_ds, epochs=settings["epochs"], initial_epoch=state.epoch,
                    callbacks=callbacks, verbose=0, shuffle=False)  # the datasets shuffle themselves
    state.use_best_weights(trained)
    if not chief:
        return {"model": model, "worker": distribution.worker, "epochs_completed": state.epoch,
                "seconds": round(time.monotonic() - started, 1)}

    fsutil.atomic_save(out / "model.keras", net.save)
    history = pd.read_csv(history_path, sep="\t") if history_path.exists() else pd.DataFrame({"epoch": []})
    fsutil.write_tsv(out / "history.tsv", history)
    report = {
        "model": model,
        "classes": labels["label"].astype(str).tolist(),
        "settings": settings,
        "n_train_files": len(train_files),
        "n_val_files": len(val_files),
        "train_examples_per_class": [int(n) for n in examples],
        "n_train_background_files": n_background,
        "augmentation": dataclasses.asdict(applied),
        "embedding_cache": ({"used": True, "cut": plan.cut, "augmentation_not_applied": dropped} if cached
                            else {"used": False, "reason": plan.reason} if plan is not None else None),
        "class_weights": [round(float(w), 6) for w in weights],
        "epochs_completed": int(len(history)),
        "stopped_early": state.stopped,
        "monitor": monitor,
        "best_epoch": state.best_epoch or None,
        "best_val_loss": state.best if state.best_epoch and monitor == "val_loss" else None,
        "resumed": state.resumed,
        "resume_refused_because": state.refused_because,
        "inputs": inputs,
        "trunk_initialisation": "checkpoint" if model == "vggish" and settings.get("checkpoint") else "random",
        "input": "embeddings" if cached else "packed" if packs is not None else "npz",
        "seconds": round(time.monotonic() - started, 1),
        "devices": {"replicas": replicas, "gpus": len(gpus), "workers": distribution.workers},
        "versions": software_versions(),
    }
    fsutil.write_json(out / "train.json", report)
    state.finish()
    print(f"train {model}: best epoch {state.best_epoch or '-'} of {len(history)}"
          + (f" ({monitor} {state.best:.4f})" if state.best_epoch else ""), file=sys.stderr, flush=True)
    return report
