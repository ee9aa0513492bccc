"""A training run, start to end: `train` and its steps.

The run loads its data (jibjib.training.data), plans its input
(jibjib.training.plan), opens its saved state (jibjib.training.state: a
killed run that is started again continues after its last saved epoch, and
a finished one is reused, if everything it is computed from is unchanged),
builds and compiles its model (the classifier with its batches'
augmentation in its training step, jibjib.training.trainer), fits it epoch
by epoch (jibjib.training.epochs) and writes model.keras, history.tsv and train.json
(jibjib.training.report). The first `train.gpus_per_task` visible GPUs are
used through MirroredStrategy; on a machine without GPUs the same code runs
on the CPU. Started by `srun` as several tasks of a SLURM job, the tasks
train one model together (MultiWorkerMirroredStrategy,
jibjib.training.distribute): every worker computes every step, only the
chief (task 0) writes files.
"""

from __future__ import annotations

import json
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
from jibjib.core.errors import InputError  # noqa: E402
from jibjib.core.settings import RunSettings, schema_default  # noqa: E402
from jibjib.core.tflog import quiet_python_logging  # noqa: E402
from jibjib.embeddings.trunk import head_model  # noqa: E402
from jibjib.models.build import build_model  # noqa: E402
from jibjib.models.losses import ClassWeightedCrossentropy  # noqa: E402
from jibjib.models.metrics import ClassAveragePrecision, SpeciesAccuracy  # noqa: E402
from jibjib.training.callbacks import EpochLog, Progress  # noqa: E402
from jibjib.training.data import TrainingData, load_data  # noqa: E402
from jibjib.training.distribute import Distribution, choose_strategy  # noqa: E402
from jibjib.training.epochs import EpochInputs, fit_epochs  # noqa: E402
from jibjib.training.plan import InputPlan, plan_input  # noqa: E402
from jibjib.training.pseudo_labels import PseudoLabels  # noqa: E402
from jibjib.training.report import TrainReport, WorkerReport  # noqa: E402
from jibjib.training.schedule import learning_rate  # noqa: E402
from jibjib.training.state import KEPT_MODEL, KEPT_REPORT, RunState, keep, training_inputs  # noqa: E402
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
    pseudo_labels: str | os.PathLike | None = None,
    pseudo_share: float | None = None,
) -> TrainReport | WorkerReport:
    """Train `run.model` ("vggish" or "convlstm"); writes model.keras, history.tsv and train.json.

    With `packed` (the index files of jibjib.packing) the examples are read
    from the packed features; without, from each file's npz. With
    `embeddings` (the index files of jibjib.embeddings, for a VGGish run
    with a frozen trunk) only the layers after the cut train, from the cached
    trunk outputs; model.keras is still the whole classifier. The shipped
    model has the weights of the best epoch of the whole run (train.monitor,
    or loss without a val split), across resumes. A finished run of the same
    inputs is not trained again: its kept model is shipped (`reused`). With
    `pseudo_labels` (self-training) each batch also carries `pseudo_share` x
    the batch size of its windows (jibjib.training.pseudo_labels).
    """
    # First: the devices (and a multi-worker strategy) must be set up before TensorFlow initialises them.
    distribution = choose_strategy(run.train.gpus_per_task)
    out = Path(out_dir)
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    if distribution.is_chief:
        fsutil.remove_stale_temps(out)  # half-written files of a killed run
    keras.utils.set_random_seed(run.train.seed)

    data = load_data(run, split_tsv, labels_tsv, features_dir, packed)
    plan = plan_input(run, data, embeddings, distribution)
    pseudo = check_pseudo_labels(pseudo_labels, plan, distribution, data.classes)
    pseudo_share = schema_default("self_training.batch_share") if pseudo_share is None else pseudo_share
    gpus = len(tf.config.list_logical_devices("GPU"))
    precision = "mixed_float16" if run.train.mixed_precision and gpus else "float32"
    inputs = training_inputs(run, Path(labels_tsv), Path(split_tsv), data.files, data.stamps, data.source,
                             embeddings if plan.cached else None, plan.replicas, precision, plan.windows_digest,
                             pseudo=(pseudo_labels, pseudo_share) if pseudo is not None else None)
    state = open_state(out, inputs, run, plan, distribution)
    if state.reusable:
        return reuse_finished_run(out, run, state, distribution)
    with distribution.strategy.scope():
        net, trained = build_and_compile(run, data.n_classes, plan, precision, gpus)
        if state.resumed:
            state.restore(trained)
    epochs = EpochInputs(run, net, data, plan, embeddings, distribution, pseudo, pseudo_share)
    distribution.build_for_fit(trained, epochs.train(state.epoch).element_spec)

    done = state.stopped or state.epoch >= run.net.epochs
    if distribution.is_chief:
        announce(run, data, plan, state, distribution, gpus, done)
    started = time.monotonic()
    if not done:
        fit_epochs(trained, epochs, state, run.net.epochs, callbacks(out, run, plan, state, distribution))
    state.use_best_weights(trained)
    if not distribution.is_chief:
        return WorkerReport(run.model, distribution.worker, state.epoch, round(time.monotonic() - started, 1))
    devices = {"replicas": plan.replicas, "gpus": gpus, "workers": distribution.workers,
               "jit_compile": bool(trained.jit_compile), "steps_per_execution": int(trained.steps_per_execution)}
    return write_outputs(out, net, run, data, plan, state, started, devices)


def check_pseudo_labels(path: str | os.PathLike | None, plan: InputPlan, distribution: Distribution,
                        classes: list[str]) -> PseudoLabels | None:
    """The pseudo-labelled windows of `path`, if given, where the run can take them (through the whole model,
    in one process: the windows are not in the embedding cache, nor in a worker's share of the packs)."""
    if path is None:
        return None
    if plan.cached or distribution.workers > 1:
        raise InputError("--pseudo-labels: self-training trains through the whole model in one process; "
                         "not with an embedding cache (--embeddings) or several workers")
    pseudo = PseudoLabels.load(path, plan.spec, classes)
    if distribution.is_chief:
        print(f"train: {len(pseudo)} pseudo-labelled windows from {path} join the batches", file=sys.stderr,
              flush=True)
    return pseudo


def open_state(out: Path, inputs: dict[str, str], run: RunSettings, plan: InputPlan,
               distribution: Distribution) -> RunState:
    """The run's state in out/checkpoints: the saved one if it can be resumed, else a fresh one."""
    checkpoints = out / "checkpoints"
    state = RunState(checkpoints, inputs, plan.monitor, run.net.patience, run.net.epochs,
                     run.train.checkpoint_every_epochs, writes=distribution.is_chief)
    # Every worker has read the saved state; none may start from another epoch than the chief.
    agreed = state.saved["epoch"] if state.resumed else -2 if state.reusable else -1
    if not distribution.same_on_every_worker(agreed):
        raise RuntimeError(f"the workers found different saved states in {checkpoints}: is it on a filesystem "
                           "that every node sees?")
    if not state.resumed and not state.reusable and distribution.is_chief:
        state.start_fresh()
        shutil.rmtree(out / "tensorboard", ignore_errors=True)  # its curves belong to the run being replaced
    return state


def build_and_compile(run: RunSettings, n_classes: int, plan: InputPlan, precision: str, gpus: int
                      ) -> tuple[keras.Model, keras.Model]:
    """The classifier, and the model that trains, compiled: the classifier with its batches' augmentation in
    its train step (jibjib.training.trainer), or its layers after the cache's cut.

    Called inside the strategy's scope. The metrics: `accuracy` (right
    with smoothed targets, background left out under softmax) and, with val
    examples of a species, `cmap` (jibjib.models.metrics). XLA and the steps
    per call follow train.jit_compile and train.steps_per_execution for this
    process's `gpus` (jibjib.training.trainer.compile_options).
    """
    if precision != "float32":
        keras.mixed_precision.set_global_policy(precision)
    net = build_model(run, n_classes)
    # From the cache only the layers after the cut train; they are the classifier's own layers.
    trained = (head_model(net, plan.cache.cut) if plan.cached
               else AugmentingTrainer(net, plan.augmentation, plan.spec.frontend, plan.spec.seq_len))
    metrics = [SpeciesAccuracy(run.net.multi_label)]
    if plan.val_positive.any():
        metrics.append(ClassAveragePrecision(plan.val_positive.tolist(), run.net.multi_label))
    optimizer = keras.optimizers.Adam(learning_rate(run, plan.replicas, plan.steps_per_epoch), epsilon=1e-8)
    trained.compile(optimizer=optimizer, metrics=metrics, **compile_options(run.train, gpus),
                    loss=ClassWeightedCrossentropy(plan.class_weights.tolist(), run.net.multi_label))
    return net, trained


def callbacks(out: Path, run: RunSettings, plan: InputPlan, state: RunState,
              distribution: Distribution) -> list[keras.callbacks.Callback]:
    """The chief's epoch log (history, TensorBoard), run state and progress lines; another worker's run state
    alone (it writes nothing).

    The history row goes first: a kill before the state is saved reruns that
    epoch, whose row is then replaced, rather than losing it.
    """
    if not distribution.is_chief:
        return [state]
    return [EpochLog(out / "checkpoints" / "history.tsv", run.net.epochs, tensorboard=out / "tensorboard"), state,
            Progress(run.net.epochs, plan.steps_per_epoch, plan.batch_size)]


def announce(run: RunSettings, data: TrainingData, plan: InputPlan, state: RunState, distribution: Distribution,
             gpus: int, done: bool) -> None:
    """The chief's line on what trains, on what, and whether it resumes."""
    workers = f" of {distribution.workers} workers" if distribution.workers > 1 else ""
    background = f", {plan.n_background} background files" if plan.n_background else ""
    print(
        f"train {run.model}: {len(data.train_files)} train files ({int(plan.examples.sum())} examples"
        f"{background}), {len(data.val_files)} val files, "
        f"{data.n_classes} classes, batch {plan.batch_size} on {plan.replicas} replica(s){workers} "
        f"({'GPU' if gpus else 'CPU'}), {plan.steps_per_epoch} steps an epoch, best epoch by {plan.monitor}; "
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
    report = TrainReport.of(run, data, plan, state, history, seconds=round(time.monotonic() - started, 1),
                            devices=devices)
    fsutil.write_json(out / "train.json", report.to_dict())
    state.finish(out / "model.keras", out / "train.json")
    print(f"train {run.model}: best epoch {state.best_epoch or '-'} of {len(history)}"
          + (f" ({plan.monitor} {state.best:.4f})" if state.best_epoch else ""), file=sys.stderr, flush=True)
    return report


def reuse_finished_run(out: Path, run: RunSettings, state: RunState,
                       distribution: Distribution) -> TrainReport | WorkerReport:
    """Ship the kept model, history and report of the finished run of the same inputs; nothing trains."""
    saved = state.finished_run
    if not distribution.is_chief:
        return WorkerReport(run.model, distribution.worker, saved["epoch"], 0.0)
    checkpoints = out / "checkpoints"
    report = TrainReport.from_dict(json.loads((checkpoints / KEPT_REPORT).read_text())).reused_by(run)
    keep(checkpoints / KEPT_MODEL, out / "model.keras")
    keep(checkpoints / "history.tsv", out / "history.tsv")
    fsutil.write_json(out / "train.json", report.to_dict())
    print(f"train {run.model}: reusing the finished run of the same inputs (best epoch {saved['best_epoch'] or '-'} "
          f"of {report.epochs_completed}): its model is kept, nothing trains", file=sys.stderr, flush=True)
    return report
