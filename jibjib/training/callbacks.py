"""The chief's per-epoch log: history.tsv under checkpoints/, rewritten each epoch, and a progress line."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import keras
import pandas as pd

from jibjib.core import fsutil


class EpochLog(keras.callbacks.Callback):
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
