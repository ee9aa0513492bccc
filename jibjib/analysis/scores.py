"""Per-window scores of one recording: what `jibjib analyze --scores` writes and the soundscape evaluation reads.

One npz per audio file, `<scores dir>/<relative path without extension>.npz`:

    start, end       float64 (windows,)  seconds from the file's start
    scores           float32 (windows, classes)  the model's probabilities, uncalibrated
    labels           str (classes,)  class order
    sample_rate      int   the file's own rate
    channels         int
    seconds          float the file's duration
    source_sha256    str   the content the scores were computed from
    export_digest    str   the SavedModel graph and weights (see jibjib.analysis.analyzer.export_digest)
    hop_frames, window_frames  int  the window grid in log-mel frames (10 ms each for VGGish)

A score file is reused instead of re-analysing the recording only when the
source content, the export digest and the window grid are all the same.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jibjib.core import fsutil

# The keys a reader needs; files also carry export_digest and the grid, which decide reuse.
SCORE_KEYS = ("start", "end", "scores", "labels", "sample_rate", "seconds", "source_sha256")


@dataclass(frozen=True)
class WindowScores:
    start: np.ndarray  # float64 seconds, (windows,)
    end: np.ndarray
    scores: np.ndarray  # float32 (windows, classes)
    labels: list[str]
    seconds: float  # the file's duration
    sample_rate: int
    source_sha256: str
    channels: int = 0
    export_digest: str = ""
    hop_frames: int = 0
    window_frames: int = 0


def save_scores(path: str | os.PathLike, result: WindowScores) -> None:
    """Write one file's window scores atomically (a killed run leaves no half file to be reused)."""
    fsutil.save_npz(
        path,
        start=np.asarray(result.start, np.float64),
        end=np.asarray(result.end, np.float64),
        scores=np.asarray(result.scores, np.float32),
        labels=np.array(result.labels, dtype=np.str_),
        sample_rate=np.int64(result.sample_rate),
        channels=np.int64(result.channels),
        seconds=np.float64(result.seconds),
        source_sha256=np.str_(result.source_sha256),
        export_digest=np.str_(result.export_digest),
        hop_frames=np.int64(result.hop_frames),
        window_frames=np.int64(result.window_frames),
    )


class ScoreFileError(ValueError):
    """A score file that cannot be read or does not hold window scores."""


def load_scores(path: str | os.PathLike) -> WindowScores:
    """Read a score file written by `save_scores`; ScoreFileError if it is damaged or of another kind."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ScoreFileError(f"{path}: unreadable ({first})") from None
    missing = [k for k in SCORE_KEYS if k not in data]
    if missing:
        raise ScoreFileError(f"{path}: not a window score file: no {', '.join(missing)}")
    n = data["start"].shape[0] if data["start"].ndim == 1 else -1
    if n < 0 or data["end"].shape != (n,) or data["scores"].ndim != 2 or data["scores"].shape[0] != n \
            or data["scores"].shape[1] != data["labels"].shape[0]:
        raise ScoreFileError(f"{path}: start, end, scores and labels do not agree in shape")

    def optional(key: str, kind: type, default):
        return kind(data[key]) if key in data else default

    return WindowScores(
        data["start"].astype(np.float64), data["end"].astype(np.float64), data["scores"],
        [str(x) for x in data["labels"]], float(data["seconds"]), int(data["sample_rate"]),
        str(data["source_sha256"]), optional("channels", int, 0), optional("export_digest", str, ""),
        optional("hop_frames", int, 0), optional("window_frames", int, 0))


def scores_path(scores_dir: str | os.PathLike, relative: str) -> Path:
    """Where a file's scores go: its path relative to the analysed folder, extension replaced by .npz."""
    return Path(scores_dir) / Path(relative).with_suffix(".npz")
