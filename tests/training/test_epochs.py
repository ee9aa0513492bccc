"""Epochs that depend on the seed and the epoch alone: not on a resume, not on the CPU count; and the
progress a person reads during an epoch."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import REPO, REPO_ENV
from test_augment import OFF, make_corpus
from test_train import TINY_CONVLSTM, tiny, train_command  # noqa: F401 - the fixture
from jibjib.training.windows import WindowRule  # noqa: E402

EVERY_WINDOW = WindowRule.every_window()  # the tests' log-mel is no audio: the plain grid, every window labelled

# `jibjib train` that dies (as if killed) right after the state of its first epoch is saved: at the same
# point every time, unlike a SIGKILL timed from outside.
DIES_AFTER_FIRST_SAVE = """
import os, sys
from jibjib.training import state
save = state.RunState.on_epoch_end
def save_then_die(self, epoch, logs=None):
    save(self, epoch, logs)
    if self.epoch >= 1:
        os._exit(9)
state.RunState.on_epoch_end = save_then_die
from jibjib.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_resumed_run_trains_the_epochs_an_uninterrupted_run_does(tiny: Path) -> None:  # noqa: F811
    """Shuffle, augmentation (offsets, gain, masks, mixup) and dropout of epochs 2 and 3 are the same after
    a restart: the loss of every epoch and the shipped weights match (1 CPU thread: deterministic sums)."""
    settings = {**TINY_CONVLSTM, "epochs": 3, "patience": 3, "dropout": 0.3, "augment": {"enabled": True},
                "monitor": "val_loss"}
    uninterrupted = train_command(tiny, settings)
    uninterrupted[uninterrupted.index("--out-dir") + 1] = str(tiny / "uninterrupted")
    uninterrupted[-1] = "1"  # --threads
    assert subprocess.run(uninterrupted, capture_output=True, cwd=REPO, env=REPO_ENV, timeout=600).returncode == 0

    command = train_command(tiny, settings)
    command[-1] = "1"
    died = subprocess.run([sys.executable, "-c", DIES_AFTER_FIRST_SAVE, *command[3:]], capture_output=True,
                          text=True, cwd=REPO, env=REPO_ENV, timeout=600)
    assert died.returncode == 9, died.stderr[-3000:]
    assert json.loads((tiny / "model" / "checkpoints" / "state.json").read_text())["epoch"] == 1
    resumed = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=REPO_ENV, timeout=600)
    assert resumed.returncode == 0 and "resuming from the last saved epoch (1" in resumed.stderr, resumed.stderr

    columns = ["loss", "accuracy", "val_loss", "val_accuracy"]
    one, other = (pd.read_csv(tiny / name / "history.tsv", sep="\t")[columns] for name in ("uninterrupted", "model"))
    np.testing.assert_allclose(other.to_numpy(), one.to_numpy(), rtol=1e-5)
    assert one["loss"].nunique() == 3  # the epochs differ from each other: a replayed epoch 1 would show

    import keras

    weights = [keras.models.load_model(tiny / name / "model.keras", compile=False).get_weights()
               for name in ("uninterrupted", "model")]
    for a, b in zip(*weights):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_the_per_file_input_reads_a_fixed_number_of_files_at_once(tmp_path: Path) -> None:
    """The npz reader interleaves its files, one example of each in turn, FILES_IN_FLIGHT at a time: a
    number fixed in the code. tf.data's default (left to its runtime, from the CPU count) made the order of
    one seed's epoch differ from machine to machine."""
    from jibjib.training.inputs import InputSpec, training_dataset
    from jibjib.training.inputs.npz import FILES_IN_FLIGHT

    corpus = make_corpus(tmp_path)  # 11 files of 2 or 6 patches; a patch's values name its file and frame
    # A buffer of 1 keeps the read order.
    spec = InputSpec(windows=EVERY_WINDOW, n_classes=2, augmentation=OFF, shuffle_buffer=1)
    seen = [(int(p[0, 0]), int(p[0, 1]) // 96) for patches, _ in training_dataset(corpus, spec, 4, training=True,
                                                                                  seed=3) for p in patches.numpy()]
    files = list(dict.fromkeys(file for file, _ in seen))  # the epoch's file order, as first read
    assert len(files) == 11 <= FILES_IN_FLIGHT  # all of them in flight at once: one example of each in turn
    left = {file: [patch for f, patch in seen if f == file] for file in files}
    expected = []
    while any(left.values()):
        expected += [(file, left[file].pop(0)) for file in files if left[file]]
    assert seen == expected


def test_balanced_sampling_from_npz_gives_epochs_of_every_example_count(tmp_path: Path) -> None:
    """Drawn files give as many examples as the split holds (what the schedule counts), every epoch."""
    from jibjib.training.inputs import InputSpec, training_dataset

    corpus = make_corpus(tmp_path)  # 42 patches in files of 2 to 6
    spec = InputSpec(windows=EVERY_WINDOW, n_classes=2, class_balance="sampling", augmentation=OFF, shuffle_buffer=64)
    for seed in range(4):
        epochs = training_dataset(corpus, spec, 16, training=True, seed=seed)
        assert [sum(len(t) for _, t in epochs) for _ in range(2)] == [42, 42]


def test_epoch_seeds_depend_on_the_seed_and_the_epoch_only() -> None:
    from jibjib.training.epochs import epoch_seed

    seeds = {(s, e): epoch_seed(s, e) for s in (0, 1, -3) for e in range(5)}
    assert len(set(seeds.values())) == len(seeds) and all(0 <= s < 2**32 for s in seeds.values())
    assert epoch_seed(1, 2) == seeds[(1, 2)]  # the same in another process: no hash randomisation


def test_progress_lines_come_at_most_every_30_seconds() -> None:
    from jibjib.training.callbacks import Progress

    now = [0.0]
    out = io.StringIO()
    progress = Progress(total_epochs=3, steps_per_epoch=100, batch_size=32, clock=lambda: now[0], stream=out)
    for epoch in (0, 1):
        progress.on_epoch_begin(epoch)
        for step in range(100):
            now[0] += 1.0 if step else 0.0  # a step takes a second
            progress.on_train_batch_begin(step)
        now[0] += 1.0
    lines = out.getvalue().splitlines()
    assert lines[:3] == ["epoch 1/3: step 30/100, 32 examples/s, about 1 min 10 s left in the epoch",
                         "epoch 1/3: step 60/100, 32 examples/s, about 40 s left in the epoch",
                         "epoch 1/3: step 90/100, 32 examples/s, about 10 s left in the epoch"]
    assert len(lines) == 6 and lines[3].startswith("epoch 2/3: step 30/100")
