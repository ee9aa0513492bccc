"""Does training work on this machine's GPUs, and how fast? A check a GPU host runs in under 5 minutes.

For each model (VGGish, the ConvLSTM), with the strategy a training run
chooses for the visible GPUs (jibjib.training.distribute.choose_strategy),
the model is built, wrapped and compiled as a run does it (the classifier in
an AugmentingTrainer, the default augmentation in the train step, Adam, the
class-weighted loss) and trained on generated gathered batches (float16 log-mel
with background stretches; right-padded ConvLSTM sequences of every length)
in four modes: float32 or mixed_float16, XLA off or on. Per mode it prints
patches/s (the steps after the first call, which traces and compiles) and the
GPU's memory peak. It checks that every loss is finite; that on a GPU the
LSTM runs cuDNN's kernel (a CudnnRNN op in the traced forward pass, fed padded
sequences; training on them passes Keras's run-time check that cuDNN's masks
are right-padded and never empty); and, for the last mode of each model
(mixed precision, XLA on), that its model.keras exports (the SavedModel
of jibjib export, rebuilt in float32) and reloads with the same scores.

On a machine without a GPU it runs small (few steps, small batches) and says
so: a check of the code paths, not a measurement.

    python benchmarks/gpu_check.py [--steps 200] [--batch 64] [--models vggish convlstm]

The last line reads `gpu check: <ok|failed> on <device>, <N> patches/s best
mode (<mode>)`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from jibjib.core.params import VGGISH  # noqa: E402
from jibjib.core.settings import AugmentSettings, ConvlstmSettings, RunSettings  # noqa: E402
from jibjib.models.build import build_model  # noqa: E402
from jibjib.models.losses import ClassWeightedCrossentropy  # noqa: E402
from jibjib.training.distribute import Distribution, choose_strategy  # noqa: E402
from jibjib.training.trainer import AugmentingTrainer, compile_options  # noqa: E402

CLASSES = 8
MODES = [(precision, xla) for precision in ("float32", "mixed_float16") for xla in (False, True)]


@dataclasses.dataclass
class ModeResult:
    model: str
    mode: str
    patches_per_second: float
    memory_peak_mb: float | None
    finite: bool
    cudnn: bool | None  # None: not applicable (no GPU, or no LSTM)
    jit: bool  # what Keras compiled with (it turns XLA off for a model it cannot compile)
    problem: str = ""


def gathered_batches(run: RunSettings, batch: int, count: int, seed: int = 0) -> tf.data.Dataset:
    """`count` distinct gathered batches (what the CPU side of the input yields), repeated endlessly."""
    rng = np.random.default_rng(seed)
    units = run.net.seq_len or 1
    shape = (count * batch, units, VGGISH.patch_frames, VGGISH.mel_bands)
    log_mel = rng.normal(-3.0, 1.5, shape).astype(np.float16)
    real = np.maximum(1, (np.arange(count * batch) % units) + 1)  # every length from 1 to units: right-padded
    mask = np.arange(units)[None, :] < real[:, None]
    log_mel[~mask] = VGGISH.silence
    targets = np.eye(CLASSES, dtype=np.float32)[rng.integers(0, CLASSES, count * batch)]
    inputs = {"units": log_mel, "mask": mask, "seed": rng.integers(0, 2**62, count * batch),
              "background": rng.normal(-4.0, 1.0, shape).astype(np.float16)}
    return tf.data.Dataset.from_tensor_slices((inputs, targets)).batch(batch, drop_remainder=True).cache().repeat()


def lstm_takes_cudnn(model: keras.Model, seq_len: int) -> bool:
    """Whether the ConvLSTM's forward pass on padded sequences holds cuDNN's LSTM op (on this device)."""
    spec = {"patches": tf.TensorSpec([None, seq_len, VGGISH.patch_frames, VGGISH.mel_bands], tf.float32),
            "mask": tf.TensorSpec([None, seq_len], tf.bool)}
    graph = tf.function(lambda x: model(x, training=True)).get_concrete_function(spec).graph.as_graph_def()
    # The LSTM's kernel sits in a nested function of the graph's library.
    ops = {node.op for node in graph.node} | {node.op for f in graph.library.function for node in f.node_def}
    return any(op.startswith("CudnnRNN") for op in ops)


class LossLog(keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.losses: list[float] = []

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.losses.append(float((logs or {}).get("loss", np.nan)))


def memory_peak_mb(gpus: list) -> float | None:
    if not gpus:
        return None
    return sum(tf.config.experimental.get_memory_info(f"GPU:{i}")["peak"] for i in range(len(gpus))) / 2**20


def reset_memory(gpus: list) -> None:
    for i in range(len(gpus)):
        tf.config.experimental.reset_memory_stats(f"GPU:{i}")


def train_mode(model_name: str, precision: str, xla: bool, distribution: Distribution, gpus: list,
               batch: int, steps: int) -> tuple[ModeResult, keras.Model]:
    run = run_settings(model_name)
    keras.mixed_precision.set_global_policy(precision)
    keras.utils.set_random_seed(0)
    try:
        with distribution.strategy.scope():
            net = build_model(run, CLASSES)
            trainer = AugmentingTrainer(net, run.train.augment.active(), VGGISH, run.net.seq_len)
            options = compile_options(run.train, len(gpus))
            with warnings.catch_warnings():  # Keras says so when it cannot compile a model with XLA
                warnings.simplefilter("ignore")
                trainer.compile(optimizer=keras.optimizers.Adam(1e-4, epsilon=1e-8),
                                loss=ClassWeightedCrossentropy([1.0] * CLASSES, multi_label=False),
                                jit_compile=xla, steps_per_execution=options["steps_per_execution"])
        data = gathered_batches(run, batch, count=4)
        distribution.build_for_fit(trainer, data.element_spec)  # as a run does (several replicas)
        log = LossLog()
        spe = int(trainer.steps_per_execution)
        trainer.fit(data, epochs=1, steps_per_epoch=spe, verbose=0, callbacks=[log],
                    shuffle=False)  # traces and compiles
        reset_memory(gpus)
        started = time.perf_counter()
        timed = max(spe, steps // spe * spe)
        trainer.fit(data, epochs=1, steps_per_epoch=timed, verbose=0, callbacks=[log], shuffle=False)
        seconds = time.perf_counter() - started
        units = run.net.seq_len or 1
        cudnn = lstm_takes_cudnn(net, run.net.seq_len) if gpus and isinstance(run.net, ConvlstmSettings) else None
        result = ModeResult(model_name, f"{'mixed' if precision != 'float32' else 'float32'}, XLA "
                            f"{'on' if xla else 'off'}", timed * batch * units / seconds, memory_peak_mb(gpus),
                            bool(np.isfinite(log.losses).all()), cudnn, bool(trainer.jit_compile))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    return result, net


def run_settings(model_name: str) -> RunSettings:
    net = {"seq_len": 3, "short_files": "pad"} if model_name == "convlstm" else {"trainable": "all"}
    return RunSettings.of(model_name, {"seed": 0, "augment": {"enabled": True}}, net)


def export_and_reload(net: keras.Model, model_name: str, folder: Path) -> str:
    """Export `net` as jibjib export does (model.keras, loaded for inference in float32, then the SavedModel),
    reload it and compare its scores with the model's; "" if they agree, else what went wrong."""
    from jibjib.models.loading import load_for_inference
    from jibjib.serving.export import save_export

    net.save(folder / "model.keras")
    model = load_for_inference(folder / "model.keras")
    (folder / "labels.tsv").write_text("class_id\tlabel\n" + "".join(f"{i}\tc{i}\n" for i in range(CLASSES)))
    (folder / "thresholds.tsv").write_text("class_id\tthreshold\n" + "".join(f"{i}\t0.5\n" for i in range(CLASSES)))
    out = folder / "export" / "1"
    save_export(out, model, [f"c{i}" for i in range(CLASSES)], folder / "labels.tsv", folder / "thresholds.tsv",
                {"model": model_name}, VGGISH)
    patches = np.random.default_rng(1).normal(-3.0, 1.5, (7, VGGISH.patch_frames, VGGISH.mel_bands))
    served = tf.saved_model.load(str(out)).signatures["log_mel"](patches=tf.constant(patches, tf.float32))
    scores = served["scores"].numpy()
    seq_len = run_settings(model_name).net.seq_len
    if seq_len is None:
        expected = tf.nn.softmax(model(patches.astype(np.float32), training=False)).numpy()
    else:
        units = -(-len(patches) // seq_len)
        padded = np.full((units * seq_len, *patches.shape[1:]), VGGISH.silence, np.float32)
        padded[: len(patches)] = patches
        mask = (np.arange(units * seq_len) < len(patches)).reshape(units, seq_len)
        expected = tf.nn.softmax(model({"patches": padded.reshape(units, seq_len, *patches.shape[1:]),
                                        "mask": mask}, training=False)).numpy()
    gap = float(np.abs(scores - expected).max())
    return "" if gap < 1e-4 else f"the reloaded export's scores differ from the model's by {gap:.2g}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="timed steps per mode (default 200, 2 on a CPU)")
    parser.add_argument("--batch", type=int, default=None, help="global batch (default 64, 2 on a CPU)")
    parser.add_argument("--models", nargs="+", default=["vggish", "convlstm"], choices=["vggish", "convlstm"])
    args = parser.parse_args()
    distribution = choose_strategy()
    gpus = tf.config.list_logical_devices("GPU")
    device = (f"{len(gpus)} GPU(s) ({tf.config.experimental.get_device_details(tf.config.list_physical_devices('GPU')[0]).get('device_name', 'GPU')})"
              if gpus else f"CPU ({os.cpu_count()} cores)")
    steps = args.steps or (200 if gpus else 2)
    batch = args.batch or (64 if gpus else 2)
    print(f"gpu check on {device}: {type(distribution.strategy).__name__} with {distribution.replicas} replica(s), "
          f"batch {batch}, {steps} timed steps per mode"
          + ("" if gpus else "; no GPU: a small run that checks the code paths, not a measurement"), flush=True)
    results, problems = [], []
    for model_name in args.models:
        for precision, xla in MODES:
            try:
                result, net = train_mode(model_name, precision, xla, distribution, gpus, batch, steps)
            except Exception as error:  # report and go on: the last line says failed
                result = ModeResult(model_name, f"{precision}, XLA {'on' if xla else 'off'}", 0.0, None, False, None,
                                    False, f"{type(error).__name__}: {str(error).splitlines()[0][:200]}")
                net = None
            results.append(result)
            memory = "" if result.memory_peak_mb is None else f", GPU memory peak {result.memory_peak_mb:,.0f} MB"
            cudnn = "" if result.cudnn is None else f", cuDNN LSTM {'yes' if result.cudnn else 'NO'}"
            xla_note = "" if result.jit or not xla else " (Keras compiled it without XLA)"
            rate = result.patches_per_second
            print(f"{model_name:9} {result.mode:22} {rate:10,.{0 if rate >= 100 else 2}f} patches/s{memory}{cudnn}"
                  f"{xla_note}, losses {'finite' if result.finite else 'NOT FINITE'}"
                  + (f"; {result.problem}" if result.problem else ""), flush=True)
            if result.problem or not result.finite or result.cudnn is False:
                problems.append(f"{model_name} {result.mode}")
        if net is not None:
            with tempfile.TemporaryDirectory() as scratch:
                problem = export_and_reload(net, model_name, Path(scratch))
            print(f"{model_name:9} export and reload: {problem or 'same scores'}", flush=True)
            if problem:
                problems.append(f"{model_name} export")
    best = max(results, key=lambda r: r.patches_per_second)
    print(f"gpu check: {'failed' if problems else 'ok'} on {device}, {best.patches_per_second:.0f} patches/s best mode "
          f"({best.model}, {best.mode})" + (f"; failed: {', '.join(problems)}" if problems else ""))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
