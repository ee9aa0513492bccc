"""`jibjib analyze`: score long field recordings window by window with an exported model.

A recording is decoded, resampled and turned into log-mel block by block
(jibjib.audio, jibjib.frontend), cut into the model's own windows (one 0.96 s
patch for VGGish, `seq_len` patches for the ConvLSTM) every hop (default: half
a window; jibjib.params.WindowGrid), and the windows go through the export's
`log_mel_windows` signature in batches.  Memory stays bounded whatever the
length: one decoded block, the frames of the window being filled, one batch,
and the scores (a few hundred kB per hour).  Only whole windows are scored:
the audio after the last one (less than a hop) is dropped, and a recording
shorter than one window is refused as `too_short`.

With a scores folder, a recording whose score file was computed from the same
content, by the same export (graph and weights) and on the same window grid
is not analysed again (jibjib.analysis.scores).
"""

from __future__ import annotations

import hashlib
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from jibjib.core import fsutil
from jibjib.features.audio import CONTAINERS, AudioError, open_audio
from jibjib.core.errors import ExportError, InputError
from jibjib.serving.exported import ExportAssets
from jibjib.features.extract import check_usable
from jibjib.features.frontend import LogMelStream
from jibjib.core.params import WindowGrid
from jibjib.features.qc import ignore_reason, species_files
from jibjib.features.resample import output_length
from jibjib.analysis import tables
from jibjib.analysis.scores import ScoreFileError, WindowScores, load_scores, save_scores, scores_path

# Patches per forward pass, as in evaluation: enough to keep a CPU busy, small for any GPU.
BATCH_PATCHES = 256
PROGRESS_SECONDS = 10.0
# Batches the front end may run ahead of the model (each 256 patches: about 6 MB).
PREFETCH_BATCHES = 4

ANALYSED, REUSED, REJECTED, IGNORED = "analysed", "reused", "rejected", "ignored"


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


@dataclass(frozen=True)
class FileResult:
    """One input file: where it is, what happened, and its scores if it has any."""

    path: Path | None  # None when read back from a manifest
    relative: str  # as the tables name it: relative to the analysed folder
    status: str
    reason: str = ""
    detail: str = ""
    scores: WindowScores | None = None
    seconds_taken: float = 0.0


class Analyzer(ExportAssets):
    """A loaded export and the window grid it is run on."""

    def __init__(self, export_dir: str | os.PathLike, hop_seconds: float | None = None) -> None:
        super().__init__(export_dir)
        if "window" not in self.card:
            raise ExportError(f"{self.folder} was exported before jibjib analyze existed (no window signature): "
                              "export the model again")
        patches = int(self.card["window"]["patches"])
        try:
            self.grid = WindowGrid.for_model(self.params, patches, hop_seconds)
        except ValueError as exc:
            raise InputError(f"--hop: {exc}") from None
        self.batch_windows = max(1, BATCH_PATCHES // patches)
        self.digest = export_digest(self.folder)

        self._tf, loaded = self.load_saved_model()
        self._forward = loaded.signatures["log_mel_windows"]

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

    def score_log_mel_windows(self, windows: np.ndarray) -> np.ndarray:
        """(n, window frames, bands) log-mel -> (n, classes) probabilities: the model's forward pass alone."""
        return self._forward(windows=self._tf.constant(windows, self._tf.float32))["scores"].numpy()

    def _check_length(self, frames: int, sample_rate: int) -> None:
        """A file with no whole window is refused like one without a whole patch."""
        seconds = frames / sample_rate
        n_frames = self.params.n_frames(output_length(frames, sample_rate, self.params.sample_rate))
        if self.grid.count(n_frames) == 0:
            raise AudioError("too_short", f"{seconds:.3f} s, one window needs {self.window_seconds:.2f} s")

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
        """Every window's scores of one file; AudioError if it cannot be used.

        `progress`, if given, is called with the seconds of audio decoded so far.
        """
        parts: list[np.ndarray] = []
        with open_audio(path) as reader:
            check_usable(reader.info, self.params)  # the feature step's own checks
            if reader.info.exact:
                self._check_length(reader.info.frames, reader.info.sample_rate)
            for batch in self._prefetched(self._window_batches(reader, progress or (lambda seconds: None))):
                parts.append(self.score_log_mel_windows(batch))
            info = reader.info  # with the decoded length, where the header had only an estimate
            check_usable(info, self.params)
            self._check_length(info.frames, info.sample_rate)
            sha256 = reader.sha256()
        scores = np.concatenate(parts) if parts else np.zeros((0, len(self.labels)), np.float32)
        start, end = self.grid.times(0, scores.shape[0])
        return WindowScores(start, np.minimum(end, info.seconds), scores.astype(np.float32), self.labels,
                            info.seconds, info.sample_rate, sha256, info.channels, self.digest,
                            self.grid.hop_frames, self.grid.window_frames)

    def reusable(self, npz: Path, sha256: str) -> WindowScores | None:
        """The scores in `npz` if they were computed from this content, by this export, on this grid."""
        if not npz.is_file():
            return None
        try:
            scores = load_scores(npz)
        except ScoreFileError:
            return None  # damaged or foreign: analyse again
        same = (scores.source_sha256 == sha256 and scores.export_digest == self.digest
                and scores.hop_frames == self.grid.hop_frames and scores.window_frames == self.grid.window_frames
                and scores.labels == self.labels)
        return scores if same else None


def find_inputs(paths: Iterable[str | os.PathLike], root: str | os.PathLike | None = None) -> list[tuple[Path, str]]:
    """(file, name in the tables) for the files and folders given, folders searched recursively.

    Names are relative to `root` if given; else relative to the folder given
    (with several folders or files given, prefixed by that folder's name, so
    that recorders naming files by time do not collide); a file given by
    itself is named by its file name.  Hidden files and files that are not
    audio are kept, to be listed as ignored; a file given twice counts once.
    InputError if nothing given is audio.
    """
    given_paths = [Path(p) for p in paths]
    found: list[tuple[Path, str]] = []
    seen: set[Path] = set()
    for given in given_paths:
        if given.is_dir():
            files, base = species_files(given), given
            prefix = given.resolve().name if len(given_paths) > 1 and root is None else ""
        elif given.is_file():
            files, base, prefix = [given], given.parent, ""
        else:
            raise FileNotFoundError(2, "no such file or folder", str(given))
        for path in files:
            if path.resolve() in seen:
                continue
            seen.add(path.resolve())
            anchor = Path(root) if root is not None else base
            try:
                relative = path.resolve().relative_to(anchor.resolve()).as_posix()
            except ValueError:
                raise InputError(f"{path} is not below --root {anchor}") from None
            found.append((path, f"{prefix}/{relative}" if prefix else relative))
    if all(ignore_reason(Path(name)) for _, name in found):
        raise InputError(f"no audio files ({', '.join(CONTAINERS)}) in {', '.join(map(str, given_paths))}")
    return found


def _clock(seconds: float) -> str:
    minutes, rest = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{rest:02d}" if hours else f"{minutes}:{rest:02d}"


def analyze_files(analyzer: Analyzer, inputs: list[tuple[Path, str]], scores_dir: Path | None = None,
                  recorded: dict[str, str] | None = None, log: Callable[[str], None] | None = None,
                  progress_every: float = PROGRESS_SECONDS) -> list[FileResult]:
    """Score every input; unusable files get a reason, the others are still analysed.

    With `scores_dir`, each file's scores are written there and reused on the
    next run when still current; `recorded` maps names to the SHA-256 the
    workflow recorded, which spares hashing a file to find its score file current.
    """
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    results: list[FileResult] = []
    claimed: dict[str, str] = {}
    started = time.monotonic()
    audio_seconds = 0.0
    for index, (path, relative) in enumerate(inputs, 1):
        reason = ignore_reason(Path(relative))
        if reason:
            results.append(FileResult(path, relative, IGNORED, reason))
            continue
        # a.wav and a.flac would share their table and score file.
        stem = Path(relative).with_suffix("").as_posix()
        if stem in claimed:
            results.append(FileResult(path, relative, REJECTED, "duplicate_name",
                                      f"same table and score file names as {claimed[stem]}"))
            continue
        claimed[stem] = relative
        npz = scores_path(scores_dir, relative) if scores_dir is not None else None
        if npz is not None:
            known = (recorded or {}).get(relative) or (fsutil.sha256_or(path, "") if npz.is_file() else "")
            reused = analyzer.reusable(npz, known) if known else None
            if reused is not None:
                results.append(FileResult(path, relative, REUSED, scores=reused))
                continue
        file_started = last = time.monotonic()

        def progress(seconds: float) -> None:
            nonlocal last
            now = time.monotonic()
            if now - last >= progress_every:
                last = now
                speed = seconds / max(now - file_started, 1e-9)
                log(f"analyze: {relative}: {_clock(seconds)} decoded ({speed:.0f}x real time)")

        try:
            scores = analyzer.score_file(path, progress)
        except AudioError as exc:
            results.append(FileResult(path, relative, REJECTED, exc.reason, exc.detail))
            if npz is not None:
                npz.unlink(missing_ok=True)  # its old scores would describe another content
            continue
        except OSError as exc:
            results.append(FileResult(path, relative, REJECTED, "unreadable", exc.strerror or str(exc)))
            if npz is not None:
                npz.unlink(missing_ok=True)
            continue
        taken = time.monotonic() - file_started
        if npz is not None:
            save_scores(npz, scores)
        results.append(FileResult(path, relative, ANALYSED, scores=scores, seconds_taken=taken))
        audio_seconds += scores.seconds
        log(f"analyze: {index}/{len(inputs)} {relative}: {_clock(scores.seconds)} of audio, "
            f"{scores.scores.shape[0]} windows in {taken:.1f} s ({scores.seconds / max(taken, 1e-9):.0f}x real time)")
    counts = {status: sum(r.status == status for r in results) for status in (ANALYSED, REUSED, REJECTED, IGNORED)}
    elapsed = time.monotonic() - started
    log(f"analyze: {len(results)} files: " + ", ".join(f"{n} {status}" for status, n in counts.items())
        + f"; {_clock(audio_seconds)} of audio analysed in {elapsed:.1f} s")
    return results


def remove_orphan_scores(scores_dir: Path, keep: set[Path]) -> int:
    """Delete score files of recordings no longer analysed here, so none outlives its recording."""
    removed = 0
    for npz in scores_dir.rglob("*.npz"):
        if npz not in keep and not any(part.startswith(".") for part in npz.relative_to(scores_dir).parts):
            npz.unlink()
            removed += 1
    return removed




@dataclass(frozen=True)
class TableSettings:
    """How detections are chosen and written (the defaults: window thresholds, no merging, Raven)."""

    min_score: float | None = None  # instead of the window thresholds, for every species
    merge: bool = False
    table_format: str = "raven"
    thresholds_path: Path | None = None  # default: the export's assets/thresholds.tsv


def manifest_row(result: FileResult, detections: int | str = "", table: str = "") -> dict[str, object]:
    """A files.tsv row; see jibjib.analysis.tables."""
    row: dict[str, object] = {"file": result.relative, "status": result.status, "reason": result.reason,
                              "detail": result.detail, "detections": detections, "table": table}
    s = result.scores
    if s is not None:
        row.update(seconds=round(s.seconds, 4), sample_rate=s.sample_rate, channels=s.channels,
                   windows=int(s.scores.shape[0]), sha256=s.source_sha256)
    return row


def write_manifest(path: Path, results: list[FileResult]) -> None:
    """The shard jobs' files table: what each file became, without the detections (the tables come later)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with fsutil.atomic_open(path) as f:
        f.write(tables.files_text([manifest_row(r) for r in results]))


def results_from_manifests(manifests: Iterable[str | os.PathLike], scores_dir: Path) -> list[FileResult]:
    """The shard jobs' results back, with the scores they wrote; InputError if a score file is missing or damaged."""
    results = []
    for manifest in manifests:
        for row in tables.read_files_table(manifest):
            scores = None
            if row["status"] in (ANALYSED, REUSED):
                try:
                    scores = load_scores(scores_path(scores_dir, row["file"]))
                except ScoreFileError as exc:
                    raise InputError(f"{exc} (listed in {manifest}; rerun the analysis)") from None
            results.append(FileResult(None, row["file"], row["status"], row.get("reason", ""),
                                      row.get("detail", ""), scores))
    return results


def write_outputs(out_dir: Path, results: list[FileResult], analyzer_labels: list[str],
                  external_ids: list[str] | None, window_thresholds: dict[str, float] | None,
                  settings: TableSettings, mel_range: tuple[float, float]) -> int:
    """detections.tsv, one table per analysed file and files.tsv in out_dir; returns the number of detections.

    Tables that an earlier run wrote for files no longer analysed are removed (only those).
    """
    thresholds = tables.thresholds_for(analyzer_labels, window_thresholds, settings.min_score)
    before = tables.tables_written_before(out_dir)
    everything: list[tables.Detection] = []
    rows, written = [], set()
    for result in results:
        if result.scores is None:
            rows.append(manifest_row(result))
            continue
        found = tables.file_detections(result.relative, result.scores, thresholds, settings.merge, external_ids)
        everything += found
        name = tables.table_name(result.relative, settings.table_format)
        text = (tables.raven_text(found, *mel_range) if settings.table_format == "raven"
                else tables.audacity_text(found))
        tables.write_text(out_dir / name, text)
        written.add(name)
        rows.append(manifest_row(result, len(found), name))
    tables.remove_stale_tables(out_dir, before, written)
    tables.remember_tables(out_dir, written)
    tables.write_text(out_dir / "detections.tsv", tables.detections_text(everything, external_ids is not None))
    tables.write_text(out_dir / "files.tsv", tables.files_text(rows))
    return len(everything)
