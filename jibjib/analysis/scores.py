"""Per-window scores of one recording: what `jibjib analyze --scores` writes and the soundscape evaluation reads.

One compressed npz per audio file, `<scores dir>/<relative path without extension>.npz`:

    start, end       float64 (windows,)  seconds from the file's start (end: start + the window's span)
    scores           float16 (windows, classes)  the model's probabilities, uncalibrated
    labels           str (classes,)  class order
    sample_rate      int   the file's own rate
    channels         int
    seconds          float the file's duration
    source_sha256    str   the content the scores were computed from
    source_size, source_mtime_ns, source_ctime_ns  int  the file's stat when it was read
    export_digest    str   the SavedModel's graph and weights (jibjib.analysis.analyzer.export_digest),
                           or the TFLite file run
    engine           str   what computed the scores: `savedmodel`, or the TFLite file's name
    hop_frames, window_frames  int  the window grid in log-mel frames (10 ms each for VGGish)
    layout           int   SCORES_LAYOUT: files of an older layout are analysed again

Scores are kept as float16 (about three significant digits: steps of 0.0005
near 1, finer towards 0) in a deflated archive: at 250 classes that is about a
quarter of float32's 7.5 MB per hour of audio at the default hop, before
compression.  The tables are made from the same rounded scores (`rounded`), so
a file analysed now and one whose scores are reused give the same detections.

A score file is reused instead of re-analysing the recording only when the
source content, the export digest, the engine, the window grid and the layout
are all the same; the content is known without reading the file when its
size, modification and change times are those recorded (any write changes the
change time), and otherwise by hashing it.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jibjib.core import fsutil

# 2: float16 scores, compressed; end = start + the window's span (0.975 s, not 0.96 s); stat and engine recorded.
SCORES_LAYOUT = 2
# The keys a reader needs; files also carry export_digest, the engine and the grid, which decide reuse.
SCORE_KEYS = ("start", "end", "scores", "labels", "sample_rate", "seconds", "source_sha256")


@dataclass(frozen=True)
class WindowScores:
    start: np.ndarray  # float64 seconds, (windows,)
    end: np.ndarray
    scores: np.ndarray  # float32 (windows, classes), float16 values (see rounded)
    labels: list[str]
    seconds: float  # the file's duration
    sample_rate: int
    source_sha256: str
    channels: int = 0
    export_digest: str = ""
    hop_frames: int = 0
    window_frames: int = 0
    source_stat: tuple[int, int, int] | None = None  # size, mtime_ns, ctime_ns of the file as read
    engine: str = ""
    layout: int = SCORES_LAYOUT


def rounded(scores: np.ndarray) -> np.ndarray:
    """float32 scores rounded to what a score file keeps (float16)."""
    return np.asarray(scores, np.float32).astype(np.float16).astype(np.float32)


def save_scores(path: str | os.PathLike, result: WindowScores) -> None:
    """Write one file's window scores atomically (a killed run leaves no half file to be reused)."""
    size, mtime_ns, ctime_ns = result.source_stat or (-1, -1, -1)
    fsutil.save_npz(
        path,
        compress=True,
        start=np.asarray(result.start, np.float64),
        end=np.asarray(result.end, np.float64),
        scores=np.asarray(result.scores, np.float32).astype(np.float16),
        labels=np.array(result.labels, dtype=np.str_),
        sample_rate=np.int64(result.sample_rate),
        channels=np.int64(result.channels),
        seconds=np.float64(result.seconds),
        source_sha256=np.str_(result.source_sha256),
        source_size=np.int64(size),
        source_mtime_ns=np.int64(mtime_ns),
        source_ctime_ns=np.int64(ctime_ns),
        export_digest=np.str_(result.export_digest),
        engine=np.str_(result.engine),
        hop_frames=np.int64(result.hop_frames),
        window_frames=np.int64(result.window_frames),
        layout=np.int64(SCORES_LAYOUT),
    )


class ScoreFileError(ValueError):
    """A score file that cannot be read or does not hold window scores."""


def load_scores(path: str | os.PathLike) -> WindowScores:
    """Read a score file written by `save_scores` (scores as float32); ScoreFileError if damaged or of another kind."""
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

    stat = tuple(int(data[k]) for k in ("source_size", "source_mtime_ns", "source_ctime_ns")) \
        if "source_ctime_ns" in data else None
    return WindowScores(
        data["start"].astype(np.float64), data["end"].astype(np.float64), data["scores"].astype(np.float32),
        [str(x) for x in data["labels"]], float(data["seconds"]), int(data["sample_rate"]),
        str(data["source_sha256"]), optional("channels", int, 0), optional("export_digest", str, ""),
        optional("hop_frames", int, 0), optional("window_frames", int, 0), stat, optional("engine", str, ""),
        optional("layout", int, 1))


def scores_path(scores_dir: str | os.PathLike, relative: str) -> Path:
    """Where a file's scores go: its path relative to the analysed folder, extension replaced by .npz."""
    return Path(scores_dir) / Path(relative).with_suffix(".npz")
