"""A training run, start to end: `train` and its steps.

The run loads its data (jibjib.training.data), plans its input
(jibjib.training.plan), opens its saved state (jibjib.training.state: a
killed run that is started again continues after its last saved epoch, if
everything it is computed from is unchanged), builds and compiles its
model, fits it and writes model.keras, history.tsv and train.json
(jibjib.training.report). All visible GPUs are used through
MirroredStrategy; on a machine without GPUs the same code runs on the CPU.
Started by `srun` as several tasks of a SLURM job, the tasks train one model
together (MultiWorkerMirroredStrategy, jibjib.training.distribute): every
worker computes every step, only the chief (task 0) writes files.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
import warnings
from pathlib import Path

import pandas as pd

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from jibjib.core import fsutil  # noqa: E402
from jibjib.core.settings import RunSettings  # noqa: E402
from jibjib.core.tflog import quiet_python_logging  # noqa: E402
from jibjib.embeddings.trunk import head_model  # noqa: E402
from jibjib.models.build import build_model  # noqa: E402
from jibjib.models.losses import ClassWeightedCrossentropy  # noqa: E402
from jibjib.training.callbacks import EpochLog  # noqa: E402
from jibjib.training.data import TrainingData, load_data  # noqa: E402
from jibjib.training.distribute import Distribution, choose_strategy  # noqa: E402
from jibjib.training.inputs import InputShare, gathered_batches  # noqa: E402
from jibjib.training.inputs.cached import cached_datasets  # noqa: E402
from jibjib.training.plan import InputPlan, plan_input  # noqa: E402
from jibjib.training.report import TrainReport, WorkerReport  # noqa: E402
from jibjib.training.schedule import learning_rate  # noqa: E402
from jibjib.training.state import RunState, training_inputs  # noqa: E402
from jibjib.training.trainer import AugmentingTrainer, compile_options  # noqa: E402

quiet_python_logging()

# Our datasets have unknown length by design (files are read lazily); Keras
# reports each epoch's end as if it were a mistake.
warnings.filterwarnings("ignore", message="Your input ran out of data")


def train(
    run: RunSettings,
    split_tsv: str | os.PathLike,
    labels_tsv: str | os.PathLike,
    features_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    packed: list[str | os.PathLike] | None = None,
    embeddings: list[str | os.PathLike] | None = None,
) -> TrainReport | WorkerReport:
    """Train `run.model` ("vggish" or "convlstm"); writes model.keras, history.tsv and train.json.

    With `packed` (the index files of jibjib.packing) the examples are read
    from the packed features; without, from each file's npz. With
    `embeddings` (the index files of jibjib.embeddings, for a VGGish run
    with a frozen trunk) only the layers after the cut train, from the cached
    trunk outputs; model.keras is still the whole classifier. The shipped
    model has the weights of the best epoch of the whole run (lowest val_loss,
    or loss without a val split), across resumes.
    """
    # First: a multi-worker strategy must exist before TensorFlow sets up its devices.
    distribution = choose_strategy(run.train.gpus_per_task)
    out = Path(out_dir)
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    if distribution.is_chief:
        fsutil.remove_stale_temps(out)  # half-written files of a killed run
    keras.utils.set_random_seed(run.train.seed)

    data = load_data(run, split_tsv, labels_tsv, features_dir, packed)
    plan = plan_input(run, data, embeddings, distribution)
    inputs = training_inputs(run, Path(labels_tsv), Path(split_tsv), data.files, data.stamps, data.source,
                             embeddings if plan.cached else None)
    state = open_state(out, inputs, run, plan, distribution)
    gpus = len(tf.config.list_logical_devices("GPU"))
    with distribution.strategy.scope():
        net, trained = build_and_compile(run, data.n_classes, plan, gpus)
        if state.resumed:
            state.restore(trained)
    train_ds, val_ds = datasets(run, net, data, plan, embeddings, distribution)
    distribution.build_for_fit(trained, train_ds.element_spec)

    done = state.stopped or state.epoch >= run.net.epochs
    if distribution.is_chief:
        announce(run, data, plan, state, distribution, gpus, done)
    started = time.monotonic()
    if not done:
        trained.fit(train_ds, validation_data=val_ds, epochs=run.net.epochs, initial_epoch=state.epoch,
                    callbacks=callbacks(out, run, state, distribution), verbose=0,
                    shuffle=False)  # the datasets shuffle themselves
    state.use_best_weights(trained)
    if not distribution.is_chief:
        return WorkerReport(run.model, distribution.worker, state.epoch, round(time.monotonic() - started, 1))
    devices = {"replicas": plan.replicas, "gpus": gpus, "workers": distribution.workers,
               "jit_compile": bool(trained.jit_compile), "steps_per_execution": int(trained.steps_per_execution)}
    return write_outputs(out, net, run, data, plan, state, started, devices)


def open_state(out: Path, inputs: dict[str, str], run: RunSettings, plan: InputPlan,
               distribution: Distribution) -> RunState:
    """The run's state in out/checkpoints: the saved one if it can be resumed, else a fresh one."""
    checkpoints = out / "checkpoints"
    state = RunState(checkpoints, inputs, plan.monitor, run.net.patience, run.net.epochs,
                     run.train.checkpoint_every_epochs, writes=distribution.is_chief)
    # Every worker has read the saved state; none may start from another epoch than the chief.
    if not distribution.same_on_every_worker(state.saved["epoch"] if state.resumed else -1):
        raise RuntimeError(f"the workers found different saved states in {checkpoints}: is it on a filesystem "
                           "that every node sees?")
    if not state.resumed and distribution.is_chief:
        state.start_fresh()
        shutil.rmtree(out / "tensorboard", ignore_errors=True)  # its curves belong to the run being replaced
    return state


def build_and_compile(run: RunSettings, n_classes: int, plan: InputPlan, gpus: int
                      ) -> tuple[keras.Model, keras.Model]:
    """The classifier, and the model that trains, compiled: the classifier with its batches' augmentation in
    its train step (jibjib.training.trainer), or its layers after the cache's cut.

    Called inside the strategy's scope.
    """
    if run.train.mixed_precision and gpus:
        keras.mixed_precision.set_global_policy("mixed_float16")
    net = build_model(run, n_classes)
    # From the cache only the layers after the cut train; they are the classifier's own layers.
    trained = (head_model(net, plan.cache.cut) if plan.cached
               else AugmentingTrainer(net, plan.augmentation, plan.spec.frontend, plan.spec.seq_len))
    metric = (keras.metrics.BinaryAccuracy(threshold=0.0, name="accuracy") if run.net.multi_label
              else keras.metrics.CategoricalAccuracy(name="accuracy"))
    optimizer = keras.optimizers.Adam(learning_rate(run, plan.replicas, plan.steps_per_epoch), epsilon=1e-8)
    trained.compile(optimizer=optimizer, metrics=[metric], **compile_options(run.train, gpus),
                    loss=ClassWeightedCrossentropy(plan.class_weights.tolist(), run.net.multi_label))
    return net, trained


def datasets(run: RunSettings, net: keras.Model, data: TrainingData, plan: InputPlan,
             embeddings: list[str | os.PathLike] | None, distribution: Distribution
             ) -> tuple[tf.data.Dataset, tf.data.Dataset | None]:
    """The training and validation batches (None without a val split), sharded over the workers."""
    seed, spec, batch_size = run.train.seed, plan.spec, plan.batch_size
    # With several workers each gathers only its share of each global batch (the packed input).
    share = distribution.input_share if data.packs is not None and not plan.cached else InputShare()
    if plan.cached:
        train_ds, val_ds = cached_datasets(net, plan.cache.cut, embeddings, data.train_files, data.val_files, spec,
                                           batch_size, seed)
        dropped = plan.augmentation_dropped
        print(f"train {run.model}: the head trains from the embedding cache (output of {plan.cache.cut}); "
              "augmentation in embedding space is mixup only" + (f", not {', '.join(dropped)}" if dropped else ""),
              file=sys.stderr, flush=True)
    else:
        train_ds = gathered_batches(data.train_files, spec, batch_size, training=True, seed=seed, packs=data.packs,
                                    share=share)
        val_ds = (gathered_batches(data.val_files, spec, batch_size, training=False, seed=seed, packs=data.packs)
                  if len(data.val_files) else None)
        if plan.cache is not None and plan.cache.reason and plan.cache.trainable != "all":
            print(f"train {run.model}: no embedding cache: {plan.cache.reason}", file=sys.stderr, flush=True)
    train_ds = distribution.shard_input(train_ds, batch_size, True, sharded=share.workers > 1)
    val_ds = distribution.shard_input(val_ds, batch_size, False) if val_ds is not None else None
    return train_ds, val_ds


def callbacks(out: Path, run: RunSettings, state: RunState,
              distribution: Distribution) -> list[keras.callbacks.Callback]:
    """The chief's epoch log, run state and TensorBoard; another worker's run state alone (it writes nothing).

    The history row goes first: a kill before the state is saved reruns that
    epoch, whose row is then replaced, rather than losing it.
    """
    if not distribution.is_chief:
        return [state]
    return [EpochLog(out / "checkpoints" / "history.tsv", run.net.epochs), state,
            keras.callbacks.TensorBoard(str(out / "tensorboard"), update_freq="epoch")]


def announce(run: RunSettings, data: TrainingData, plan: InputPlan, state: RunState, distribution: Distribution,
             gpus: int, done: bool) -> None:
    """The chief's line on what trains, on what, and whether it resumes."""
    workers = f" of {distribution.workers} workers" if distribution.workers > 1 else ""
    background = f", {plan.n_background} background files" if plan.n_background else ""
    print(
        f"train {run.model}: {len(data.train_files)} train files ({int(plan.examples.sum())} examples"
        f"{background}), {len(data.val_files)} val files, "
        f"{data.n_classes} classes, batch {plan.batch_size} on {plan.replicas} replica(s){workers} "
        f"({'GPU' if gpus else 'CPU'}); "
        + (f"resuming from the last saved epoch ({state.epoch}, best so far {state.best_epoch or 'none'})"
           + (", which ended the run" if done else "") if state.resumed
           else f"starting at epoch 1 ({state.refused_because})"),
        file=sys.stderr, flush=True,
    )


def write_outputs(out: Path, net: keras.Model, run: RunSettings, data: TrainingData, plan: InputPlan,
                  state: RunState, started: float, devices: dict[str, int]) -> TrainReport:
    """model.keras, history.tsv and train.json (the chief's job); then the state is marked finished."""
    fsutil.atomic_save(out / "model.keras", net.save)
    history_path = out / "checkpoints" / "history.tsv"
    history = pd.read_csv(history_path, sep="\t") if history_path.exists() else pd.DataFrame({"epoch": []})
    fsutil.write_tsv(out / "history.tsv", history)
    report = TrainReport.of(run, data, plan, state, epochs_completed=len(history),
                            seconds=round(time.monotonic() - started, 1), devices=devices)
    fsutil.write_json(out / "train.json", report.to_dict())
    state.finish()
    print(f"train {run.model}: best epoch {state.best_epoch or '-'} of {len(history)}"
          + (f" ({plan.monitor} {state.best:.4f})" if state.best_epoch else ""), file=sys.stderr, flush=True)
    return report
