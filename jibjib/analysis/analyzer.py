"""The analyzer: an exported model run over one long recording, window by window.

A recording is decoded, resampled and turned into log-mel block by block
(jibjib.features.audio, jibjib.features.frontend), cut into the model's own
windows (one 0.96 s patch for VGGish, `seq_len` patches for the ConvLSTM)
every hop (default: half a window; jibjib.core.params.WindowGrid), and the
windows go through the model in batches. Memory stays bounded whatever the
length: one decoded block, the frames of the window being filled, one batch,
and the file's scores (at 250 classes about 7.5 MB per hour at the default hop).
Only whole windows are scored: the audio after the last one (less than a hop)
is dropped, and a recording shorter than one window is refused as `too_short`.

Two engines run the model (`engine`): `savedmodel`, the export's
`log_mel_windows` signature in TensorFlow (on a GPU when there is one), and
`tflite`, the export's analysis TFLite file (export.tflite) in LiteRT on the
CPU: its int8 file where that agreed with the SavedModel on the val windows,
else its float32 file (the model card's `tflite.analysis`).

Score files record the model's digest (`export_digest` of the SavedModel, or
the SHA-256 of the TFLite file run) and the engine: a recording's scores are
reused only if computed from the same content, by the same model and engine
and on the same window grid (jibjib.analysis.scores).
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from jibjib.core import fsutil
from jibjib.features.audio import AudioError, open_audio
from jibjib.core.errors import ExportError, InputError
from jibjib.serving.exported import ExportAssets
from jibjib.features.extract import check_usable
from jibjib.features.frontend import LogMelStream
from jibjib.core.params import WindowGrid
from jibjib.features.resample import output_length
from jibjib.analysis.scores import SCORES_LAYOUT, WindowScores, rounded

ENGINES = ("savedmodel", "tflite")
# Patches per forward pass, as in evaluation: enough to keep a CPU busy, small for any GPU.
BATCH_PATCHES = 256
# LiteRT's: a batch reads VGGish's 66 MB of int8 dense weights once for all its windows (one window per call
# took 2.6 times as long per window, 2-core VM), and larger batches gained nothing.
LITERT_BATCH_PATCHES = 16
# Batches the front end may run ahead of the model (each 256 patches: about 6 MB).
PREFETCH_BATCHES = 4


def export_digest(export_dir: str | os.PathLike) -> str:
    """SHA-256 of what decides the scores: the graph (saved_model.pb) and the weights (variables/)."""
    folder = Path(export_dir)
    digest = hashlib.sha256()
    for path in [folder / "saved_model.pb", *sorted((folder / "variables").rglob("*"))]:
        if path.is_file():
            digest.update(f"{path.relative_to(folder).as_posix()}\0".encode())
            digest.update(bytes.fromhex(fsutil.sha256_file(path)))
    return digest.hexdigest()


class WindowCutter:
    """Cuts log-mel frames fed in pieces into the windows of a grid, as if the frames came in one piece."""

    def __init__(self, grid: WindowGrid, bands: int) -> None:
        self.grid = grid
        self.emitted = 0  # windows handed out so far
        self._buffer = np.zeros((0, bands), np.float32)
        self._offset = 0  # frame index of _buffer[0]

    def push(self, frames: np.ndarray) -> np.ndarray:
        """The windows (m, window frames, bands) that the new frames complete."""
        grid = self.grid
        buffer = np.concatenate([self._buffer, frames]) if self._buffer.shape[0] else frames
        m = grid.count(self._offset + buffer.shape[0]) - self.emitted
        if m > 0:
            first = self.emitted * grid.hop_frames - self._offset
            view = np.lib.stride_tricks.sliding_window_view(buffer, grid.window_frames, axis=0)
            windows = np.ascontiguousarray(view[first : first + m * grid.hop_frames : grid.hop_frames]
                                           .transpose(0, 2, 1))
            self.emitted += m
        else:
            windows = np.zeros((0, grid.window_frames, buffer.shape[1]), np.float32)
        # Keep the frames from the next window's start on; a copy, so the block itself is freed.
        cut = min(self.emitted * grid.hop_frames - self._offset, buffer.shape[0])
        self._buffer = buffer[cut:].copy()
        self._offset += cut
        return windows


class Analyzer(ExportAssets):
    """A loaded export, the engine that runs it and the window grid it is run on.

    `threads`: the CPU threads of the LiteRT engine (0: all); TensorFlow's are set by the caller before it loads.
    """

    def __init__(self, export_dir: str | os.PathLike, hop_seconds: float | None = None,
                 engine: str = "savedmodel", threads: int = 0) -> None:
        super().__init__(export_dir)
        if "window" not in self.card:
            raise ExportError(f"{self.folder} was exported before jibjib analyze existed (no window signature): "
                              "export the model again")
        patches = int(self.card["window"]["patches"])
        try:
            self.grid = WindowGrid.for_model(self.params, patches, hop_seconds)
        except ValueError as exc:
            raise InputError(f"--hop: {exc}") from None
        if engine == "tflite":
            from jibjib.serving.litert import LiteRTModel

            path = self.folder / analysis_file(self.folder, self.card)
            self.engine = path.name
            self.engine_choice = self.card["tflite"]["analysis"].get("choice", "")
            self.digest = fsutil.sha256_file(path)  # the file holds the graph and weights the scores come from
            self.batch_windows = max(1, LITERT_BATCH_PATCHES // patches)
            self._forward = LiteRTModel(path, threads)
        elif engine == "savedmodel":
            self.engine, self.engine_choice = engine, ""
            self.digest = export_digest(self.folder)
            self.batch_windows = max(1, BATCH_PATCHES // patches)
            self._tf, loaded = self.load_saved_model()
            self._signature = loaded.signatures["log_mel_windows"]
            self._forward = self._saved_model_scores
        else:
            raise InputError(f"--engine: {engine!r} is not one of {', '.join(ENGINES)}")

    @property
    def window_seconds(self) -> float:
        return self.grid.window_seconds

    @property
    def hop_seconds(self) -> float:
        return self.grid.hop_seconds

    @property
    def window_frames(self) -> int:
        return self.grid.window_frames

    @property
    def hop_frames(self) -> int:
        return self.grid.hop_frames

    def _saved_model_scores(self, windows: np.ndarray) -> np.ndarray:
        return self._signature(windows=self._tf.constant(windows, self._tf.float32))["scores"].numpy()

    def score_log_mel_windows(self, windows: np.ndarray) -> np.ndarray:
        """(n, window frames, bands) log-mel -> (n, classes) probabilities: the model's forward pass alone."""
        return self._forward(windows)

    def _check_length(self, frames: int, sample_rate: int) -> None:
        """A file with no whole window is refused like one without a whole patch."""
        seconds = frames / sample_rate
        n_frames = self.params.n_frames(output_length(frames, sample_rate, self.params.sample_rate))
        if self.grid.count(n_frames) == 0:
            raise AudioError("too_short", f"{seconds:.3f} s, one window needs {self.grid.span_seconds:.3f} s")

    def _window_batches(self, reader, progress: Callable[[float], None]) -> Iterator[np.ndarray]:
        """Batches of batch_windows log-mel windows (the last one smaller), as the blocks are decoded."""
        info = reader.info
        stream = LogMelStream(info.sample_rate, self.params, total=info.frames if info.exact else None)
        cutter = WindowCutter(self.grid, self.params.mel_bands)
        waiting: list[np.ndarray] = []
        count, decoded = 0, 0

        def cut(frames: np.ndarray, last: bool = False) -> Iterator[np.ndarray]:
            nonlocal waiting, count
            windows = cutter.push(frames)
            waiting.append(windows)
            count += windows.shape[0]
            if count >= self.batch_windows or (last and count):
                joined = np.concatenate(waiting)
                full = joined.shape[0] if last else count // self.batch_windows * self.batch_windows
                for first in range(0, full, self.batch_windows):
                    yield joined[first : min(first + self.batch_windows, full)]
                waiting, count = [joined[full:]], joined.shape[0] - full

        for block in reader.blocks():
            decoded += block.shape[0]
            progress(decoded / info.sample_rate)
            yield from cut(stream.feed(block))
        yield from cut(stream.flush(), last=True)

    def _prefetched(self, batches: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        """`batches`, computed in a thread while the model scores the previous ones.

        Decoding, resampling and log-mel run in numpy and libsndfile, which
        release the GIL, so the front end and the model overlap instead of
        taking turns (a small model on a 2-core machine otherwise waits for
        the front end about half the time).
        """
        handoff: queue.Queue = queue.Queue(maxsize=PREFETCH_BATCHES)
        stop = threading.Event()
        done = object()

        def hand_over(item: object) -> bool:
            """Put `item` unless the consumer has stopped (it no longer takes any: a plain put could block forever)."""
            while not stop.is_set():
                try:
                    handoff.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def produce() -> None:
            try:
                for batch in batches:
                    if not hand_over(batch):
                        return
                hand_over(done)
            except BaseException as exc:  # handed to the consumer, which raises it
                hand_over(exc)

        worker = threading.Thread(target=produce, name="jibjib-analyze-front-end", daemon=True)
        worker.start()
        try:
            while True:
                item = handoff.get()
                if item is done:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            worker.join()

    def score_file(self, path: str | os.PathLike, progress: Callable[[float], None] | None = None) -> WindowScores:
        """Every window's scores of one file (rounded as a score file keeps them); AudioError if it cannot be used.

        `progress`, if given, is called with the seconds of audio decoded so far.
        """
        parts: list[np.ndarray] = []
        with open_audio(path) as reader:
            check_usable(reader.info, self.params)  # the feature step's own checks
            if reader.info.exact:
                self._check_length(reader.info.frames, reader.info.sample_rate)
            for batch in self._prefetched(self._window_batches(reader, progress or (lambda seconds: None))):
                parts.append(rounded(self.score_log_mel_windows(batch)))
            info = reader.info  # with the decoded length, where the header had only an estimate
            check_usable(info, self.params)
            self._check_length(info.frames, info.sample_rate)
            sha256, stat = reader.sha256(), fsutil.stat_key(reader.stat)
        scores = np.concatenate(parts) if parts else np.zeros((0, len(self.labels)), np.float32)
        start, end = self.grid.times(0, scores.shape[0])
        return WindowScores(start, np.minimum(end, info.seconds), scores, self.labels, info.seconds,
                            info.sample_rate, sha256, info.channels, self.digest, self.grid.hop_frames,
                            self.grid.window_frames, stat if sha256 else None, self.engine)

    def current(self, scores: WindowScores) -> bool:
        """Whether stored scores were computed by this export and engine, on this grid, in today's layout."""
        return (scores.export_digest == self.digest and scores.engine == self.engine
                and scores.hop_frames == self.grid.hop_frames and scores.window_frames == self.grid.window_frames
                and scores.labels == self.labels and scores.layout == SCORES_LAYOUT)


def analysis_file(folder: Path, card: dict) -> str:
    """The TFLite file `--engine tflite` runs (the model card's `tflite.analysis.file`); ExportError if none."""
    analysis = (card.get("tflite") or {}).get("analysis")
    if not analysis or not (folder / analysis["file"]).is_file():
        raise ExportError(f"{folder} has no TFLite analysis file (windows.tflite): export the model with "
                          "export.tflite: true (jibjib export --tflite), or analyse with the savedmodel engine")
    return analysis["file"]
