"""The augmentation in the training step: what it trains on, per replica, with XLA; the compile options; and
each worker of a multi-worker run gathering only its share of each global batch."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from conftest import REPO_ENV, pack_files  # noqa: E402
from test_augment import OFF, make_corpus  # noqa: E402
from jibjib.core.params import VGGISH  # noqa: E402
from jibjib.core.settings import AugmentSettings, TrainSettings  # noqa: E402
from jibjib.models.convlstm import convlstm_classifier  # noqa: E402
from jibjib.models.losses import ClassWeightedCrossentropy  # noqa: E402
from jibjib.training.inputs import InputShare, InputSpec, gathered_batches, training_dataset  # noqa: E402
from jibjib.training.windows import WindowRule  # noqa: E402
from jibjib.training.trainer import GPU_STEPS_PER_EXECUTION, AugmentingTrainer, compile_options  # noqa: E402

EVERY_WINDOW = WindowRule.every_window()  # the tests' log-mel is no audio: the plain grid, every window labelled
EVERY_STEP = AugmentSettings.from_dict({"lowpass_probability": 0.5, "mixup_probability": 0.5})


def tiny_classifier(seed: int = 7) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return convlstm_classifier(2, seq_len=3, conv_filters=(4,), lstm_units=4, dense_units=4, dropout=0.0)


def test_the_training_step_trains_on_the_batches_the_cpu_reference_augments(tmp_path: Path) -> None:
    """Gathered batches augmented in the train step train the model exactly as the same batches augmented on
    the CPU (training_dataset) do: same seeds, same augmented batches. The trainer's weights are the
    classifier's, and the classifier (what model.keras saves) holds no augmentation."""
    corpus = make_corpus(tmp_path, realistic=True)
    packs = pack_files(tmp_path)
    spec = InputSpec(windows=EVERY_WINDOW, n_classes=2, seq_len=3, multi_label=True, label_smoothing=0.1,
                     augmentation=EVERY_STEP)
    reference, stepped = tiny_classifier(), tiny_classifier()
    stepped.set_weights(reference.get_weights())
    before = reference.get_weights()
    loss = ClassWeightedCrossentropy([1.0, 2.0], multi_label=True)
    reference.compile(optimizer=keras.optimizers.SGD(0.1), loss=loss)
    reference.fit(training_dataset(corpus, spec, 8, training=True, seed=2, packs=packs), epochs=1, verbose=0,
                  shuffle=False)
    trainer = AugmentingTrainer(stepped, EVERY_STEP, VGGISH, seq_len=3)
    trainer.compile(optimizer=keras.optimizers.SGD(0.1), loss=loss)
    trainer.fit(gathered_batches(corpus, spec, 8, training=True, seed=2, packs=packs), epochs=1, verbose=0,
                shuffle=False)
    assert len(trainer.weights) == len(stepped.weights)
    assert not all(np.allclose(a, b) for a, b in zip(before, reference.get_weights()))
    for a, b in zip(reference.get_weights(), stepped.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert not [layer.name for layer in stepped.layers if "trainer" in layer.name or "augment" in layer.name]
    # The step, augmentation included, compiles with XLA (jit_compile; Keras would warn and fall back if not).
    xla = AugmentingTrainer(tiny_classifier(), EVERY_STEP, VGGISH, seq_len=3)
    xla.compile(optimizer=keras.optimizers.SGD(0.1), loss=loss, jit_compile=True)
    history = xla.fit(gathered_batches(corpus, spec, 8, training=True, seed=2, packs=packs), epochs=1, verbose=0,
                      shuffle=False)
    assert xla.jit_compile and np.isfinite(history.history["loss"]).all()


REPLICAS = """
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import numpy as np
from jibjib.core.params import VGGISH
from jibjib.core.settings import AugmentSettings
from jibjib.models.convlstm import convlstm_classifier
from jibjib.models.losses import ClassWeightedCrossentropy
from jibjib.training.augment import augment_gathered
from jibjib.training.distribute import Distribution
from jibjib.training.trainer import AugmentingTrainer

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
aug = AugmentSettings.from_dict({"lowpass_probability": 0.5})  # and the defaults: every step on
rng = np.random.default_rng(0)
# Eight copies of one example: whatever differs after the augmentation is the draws.
one = rng.normal(-3, 1, (1, 3, 96, 64)).astype(np.float16)
batch = {"units": np.repeat(one, 8, 0), "mask": np.ones((8, 3), bool), "seed": rng.integers(0, 2**62, 8),
         "background": rng.normal(-4, 1, (8, 3, 96, 64)).astype(np.float16)}
targets = np.eye(2, dtype=np.float32)[[0, 1] * 4]
data = tf.data.Dataset.from_tensors((batch, targets))
shares = strategy.run(lambda b, t: augment_gathered(b, t, aug, VGGISH)[0]["units"],
                      args=next(iter(strategy.experimental_distribute_dataset(data))))
first, second = (v.numpy() for v in strategy.experimental_local_results(shares))
alone = augment_gathered({k: v[:4] for k, v in batch.items()}, targets[:4], aug, VGGISH)[0]["units"].numpy()
with strategy.scope():
    trainer = AugmentingTrainer(convlstm_classifier(2, seq_len=3, conv_filters=(4,), lstm_units=4, dense_units=4),
                                aug, VGGISH, 3)
    # Without XLA: XLA cannot compile a step whose replicas are logical devices of one CPU (their variables
    # sit on "another device"); the XLA step is checked on one device.
    trainer.compile(optimizer="adam", loss=ClassWeightedCrossentropy([1.0, 1.0]), jit_compile=False)
# Built from the element spec, as a run does: Keras's fit would average a first batch over the replicas, which
# fails for the bool mask.
Distribution(strategy, workers=1, worker=0).build_for_fit(trainer, data.element_spec)
losses = trainer.fit(data.repeat(3), epochs=1, verbose=0).history["loss"]
print(first.shape[0], second.shape[0], not np.allclose(first, second), np.allclose(first, alone, atol=1e-5),
      bool(np.isfinite(losses).all()))
"""


def test_each_replica_augments_its_share_with_its_own_draws() -> None:
    """Two replicas (two logical CPUs under MirroredStrategy) given the same example: each draws its own
    randomness (from its examples' seeds), each augments its share as that share alone would be, and the
    two train together with finite losses."""
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(REPLICAS)], capture_output=True, text=True,
                            env={**REPO_ENV, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-5:] == ["4", "4", "True", "True", "True"], result.stdout


def test_compile_options_follow_the_device() -> None:
    default = TrainSettings.from_dict({})
    assert compile_options(default, gpus=0) == {"jit_compile": False, "steps_per_execution": 1}
    assert compile_options(default, gpus=2) == {"jit_compile": True, "steps_per_execution": GPU_STEPS_PER_EXECUTION}
    chosen = TrainSettings.from_dict({"jit_compile": True, "steps_per_execution": 4})
    assert compile_options(chosen, gpus=0) == {"jit_compile": True, "steps_per_execution": 4}
    assert compile_options(TrainSettings.from_dict({"jit_compile": False}), gpus=1)["jit_compile"] is False


def test_each_worker_gathers_only_its_share_of_each_global_batch(tmp_path: Path) -> None:
    """Worker w of 2 reads the examples of the w-th half of each global batch of 8, and only those: together
    the workers read the global batches (the last, partial one dropped), each about half the rows."""
    corpus = make_corpus(tmp_path)
    packs = pack_files(tmp_path)
    spec = InputSpec(windows=EVERY_WINDOW, n_classes=2, augmentation=OFF)
    frames_read: list[int] = []
    read_each = packs.read_each

    def counted(arrays: np.ndarray, rows: np.ndarray, counts: np.ndarray, out: np.ndarray) -> None:
        frames_read.append(int(counts.sum()))
        read_each(arrays, rows, counts, out)

    packs.read_each = counted

    def epoch(share: InputShare) -> tuple[list[dict[str, np.ndarray]], int]:
        frames_read.clear()
        batches = [{**{k: v.numpy() for k, v in x.items()}, "target": y.numpy()}
                   for x, y in gathered_batches(corpus, spec, 8, training=True, seed=3, packs=packs, share=share)]
        return batches, sum(frames_read)

    whole, whole_frames = epoch(InputShare())
    halves, half_frames = zip(*(epoch(InputShare(worker, 2)) for worker in (0, 1)))
    full = [b for b in whole if len(b["seed"]) == 8]
    assert len(full) == 5 and all(len(h) == 5 for h in halves)
    for k, batch in enumerate(full):
        for worker, half in enumerate(halves):
            for key, value in batch.items():
                np.testing.assert_array_equal(half[k][key], value[4 * worker: 4 * worker + 4])
    assert sum(half_frames) == 40 * 96 < whole_frames and all(frames == 20 * 96 for frames in half_frames)
