"""The chief's per-epoch log (history.tsv under checkpoints/, TensorBoard and a line per epoch) and its
progress lines during an epoch."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable, TextIO

import keras
import pandas as pd
import tensorflow as tf

from jibjib.core import fsutil

PROGRESS_SECONDS = 30.0  # at most one progress line this often


class EpochLog(keras.callbacks.Callback):
    """Records each finished epoch in a TSV that survives a kill, in TensorBoard, and as a line (the chief's).

    A row holds the epoch, its seconds, the learning rate at its end and every
    metric of the logs. The whole table is rewritten atomically each epoch,
    so a reader (or a resumed run) never sees it empty or with half a row.
    TensorBoard gets the same numbers under `train/` and `validation/`
    (Keras's names: epoch_loss, epoch_cmap, ...), one step per epoch.
    """

    def __init__(self, path: Path, total_epochs: int, tensorboard: Path | None = None) -> None:
        super().__init__()
        self.path, self.total_epochs = path, total_epochs
        self.started = time.monotonic()
        self.rows = pd.DataFrame({"epoch": []})
        self.writers = ({part: tf.summary.create_file_writer(str(tensorboard / part))
                         for part in ("train", "validation")} if tensorboard else {})

    def on_train_begin(self, logs: dict | None = None) -> None:
        if self.path.exists():  # a resumed run's earlier epochs
            self.rows = pd.read_csv(self.path, sep="\t")

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.started = time.monotonic()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        row = {"epoch": epoch + 1, "seconds": round(time.monotonic() - self.started, 3),
               "learning_rate": float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))}
        row.update({k: float(v) for k, v in (logs or {}).items()})
        # An epoch run again after a kill replaces the row its first run left.
        earlier = self.rows[self.rows["epoch"] < epoch + 1]
        this = pd.DataFrame([row])
        self.rows = pd.concat([earlier, this], ignore_index=True) if len(earlier) else this
        fsutil.write_tsv(self.path, self.rows)
        self._to_tensorboard(row)
        shown = ", ".join(f"{k} {v:.4g}" if k == "learning_rate" else f"{k} {v:.4f}"
                          for k, v in row.items() if k not in ("epoch", "seconds"))
        print(f"epoch {epoch + 1}/{self.total_epochs} ({row['seconds']} s): {shown}", file=sys.stderr, flush=True)

    def _to_tensorboard(self, row: dict[str, float]) -> None:
        for name, value in row.items():
            if not self.writers or name in ("epoch", "seconds"):
                continue
            part, tag = ("validation", name[4:]) if name.startswith("val_") else ("train", name)
            with self.writers[part].as_default():
                tf.summary.scalar(f"epoch_{tag}", value, step=int(row["epoch"]))
        for writer in self.writers.values():
            writer.flush()


class Progress(keras.callbacks.Callback):
    """A line at most every `every` seconds during an epoch: the step, examples per second and the time left.

    `clock` (seconds, monotonic) is a parameter so that a test can drive it.
    The line is taken at the start of a step (the steps before it are done):
    a hook at the end of a step would make Keras wait for each step's logs.
    """

    def __init__(self, total_epochs: int, steps_per_epoch: int, batch_size: int, every: float = PROGRESS_SECONDS,
                 clock: Callable[[], float] = time.monotonic, stream: TextIO | None = None) -> None:
        super().__init__()
        self.total_epochs, self.steps, self.batch_size = total_epochs, steps_per_epoch, batch_size
        self.every, self.clock, self.stream = every, clock, stream
        self.epoch, self.started, self.shown = 0, 0.0, 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch, self.started = epoch, self.clock()
        self.shown = self.started

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        now = self.clock()
        if batch == 0 or now - self.shown < self.every:
            return
        self.shown = now
        elapsed = now - self.started
        left = max(self.steps - batch, 0) * elapsed / batch
        print(f"epoch {self.epoch + 1}/{self.total_epochs}: step {batch}/{self.steps}, "
              f"{batch * self.batch_size / elapsed:.0f} examples/s, about {duration(left)} left in the epoch",
              file=self.stream or sys.stderr, flush=True)


def duration(seconds: float) -> str:
    """`seconds` as a person reads it: 42 s, 3 min 05 s, 2 h 07 min."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
