"""`jibjib analyze`: every input file scored in turn with an analyzer, what became of each, and the progress log.

An unusable file gets a reason and the others are still analysed. Each file's
scores are handed to `write` (the tables, jibjib.analysis.outputs) and to the
scores folder as soon as the file is done, and then dropped: what a run keeps
of a file is its files.tsv row, so memory does not grow with the number of
files or their total length. With a scores folder, a recording whose score
file is still current is not analysed again (see `reusable`).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

from jibjib.core import fsutil
from jibjib.features.audio import AudioError
from jibjib.features.qc import ignore_reason
from jibjib.analysis.analyzer import Analyzer
from jibjib.analysis.scores import ScoreFileError, WindowScores, load_scores, save_scores, scores_path

PROGRESS_SECONDS = 10.0

ANALYSED, REUSED, REJECTED, IGNORED = "analysed", "reused", "rejected", "ignored"

class Written(NamedTuple):
    """What a writer made of one file's scores, for its files.tsv row."""

    detections: int
    table: str  # the per-file table written ('' for none)
    site: str = ""
    recorded_at: str = ""  # the recorder's clock at the file's start ('' when unknown)


# What becomes of a file's scores once they are known (a plain (detections, table) pair will do).
Writer = Callable[[str, WindowScores], "Written | tuple[int, str]"]


@dataclass(frozen=True)
class FileResult:
    """One input file: its name in the tables, what happened to it, and its files.tsv metadata (no scores)."""

    relative: str  # as the tables name it: relative to the analysed folder
    status: str
    reason: str = ""
    detail: str = ""
    seconds: float | None = None
    sample_rate: int | None = None
    channels: int | None = None
    windows: int | None = None
    sha256: str = ""
    detections: int | None = None
    table: str = ""
    path: Path | None = None  # as found; read back from a manifest, absolute (None before manifests had it)
    site: str = ""
    recorded_at: str = ""

    @classmethod
    def scored(cls, path: Path, relative: str, status: str, scores: WindowScores,
               written: "Written | tuple[int, str] | None") -> "FileResult":
        done = Written(*written) if written is not None else Written(None, "")  # type: ignore[arg-type]
        return cls(relative, status, seconds=round(scores.seconds, 4), sample_rate=scores.sample_rate,
                   channels=scores.channels, windows=int(scores.scores.shape[0]), sha256=scores.source_sha256,
                   detections=done.detections, table=done.table, path=path, site=done.site,
                   recorded_at=done.recorded_at)


def _clock(seconds: float) -> str:
    minutes, rest = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{rest:02d}" if hours else f"{minutes}:{rest:02d}"


def reusable(analyzer: Analyzer, npz: Path, path: Path, recorded_sha256: str = "") -> WindowScores | None:
    """The scores in `npz` if they are current for `path`: same export, engine and grid, and same content.

    The content is the workflow's `recorded_sha256` if given; else it is
    unchanged when the file's size, modification and change times are those
    the score file recorded (no read), and otherwise the file is hashed. A
    touched file whose content is the same gets its new times recorded, so it
    is hashed once, not on every run.
    """
    if not npz.is_file():
        return None
    try:
        stored = load_scores(npz)
    except ScoreFileError:
        return None  # damaged or foreign: analyse again
    if not analyzer.current(stored):
        return None
    if recorded_sha256:
        return stored if stored.source_sha256 == recorded_sha256 else None
    try:
        stat = fsutil.stat_key(path.stat())
    except OSError:
        return None
    if stored.source_stat == stat:
        return stored
    if stored.source_sha256 != fsutil.sha256_or(path, ""):
        return None
    touched = dataclasses.replace(stored, source_stat=stat)
    save_scores(npz, touched)
    return touched


class _Progress:
    """Lines on stderr while a long file is decoded, at most one per `every` seconds."""

    def __init__(self, relative: str, log: Callable[[str], None], every: float) -> None:
        self.relative, self.log, self.every = relative, log, every
        self.started = self.last = time.monotonic()

    def __call__(self, seconds: float) -> None:
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            speed = seconds / max(now - self.started, 1e-9)
            self.log(f"analyze: {self.relative}: {_clock(seconds)} decoded ({speed:.0f}x real time)")


def analyze_files(analyzer: Analyzer, inputs: list[tuple[Path, str]], scores_dir: Path | None = None,
                  recorded: dict[str, str] | None = None, write: Writer | None = None,
                  log: Callable[[str], None] | None = None,
                  progress_every: float = PROGRESS_SECONDS) -> list[FileResult]:
    """Score every input, in the order of their names; unusable files get a reason, the others are still analysed.

    Each file's scores go to `write` (its detections and table) and, with
    `scores_dir`, to its score file, reused on the next run while current;
    `recorded` maps names to the SHA-256 the workflow recorded, which spares
    hashing a file to find its score file current.
    """
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    results: list[FileResult] = []
    claimed: dict[str, str] = {}
    started = time.monotonic()
    audio_seconds = 0.0
    ordered = sorted(inputs, key=lambda item: item[1])
    for index, (path, relative) in enumerate(ordered, 1):
        reason = ignore_reason(Path(relative))
        if reason:
            results.append(FileResult(relative, IGNORED, reason, path=path))
            continue
        # a.wav and a.flac would share their table and score file.
        stem = Path(relative).with_suffix("").as_posix()
        if stem in claimed:
            results.append(FileResult(relative, REJECTED, "duplicate_name",
                                      f"same table and score file names as {claimed[stem]}", path=path))
            continue
        claimed[stem] = relative
        npz = scores_path(scores_dir, relative) if scores_dir is not None else None
        reused = reusable(analyzer, npz, path, (recorded or {}).get(relative, "")) if npz is not None else None
        if reused is not None:
            results.append(FileResult.scored(path, relative, REUSED, reused, write and write(relative, reused)))
            continue
        file_started = time.monotonic()
        try:
            scores = analyzer.score_file(path, _Progress(relative, log, progress_every))
        except (AudioError, OSError) as exc:
            reason, detail = ((exc.reason, exc.detail) if isinstance(exc, AudioError)
                              else ("unreadable", exc.strerror or str(exc)))
            results.append(FileResult(relative, REJECTED, reason, detail, path=path))
            if npz is not None:
                npz.unlink(missing_ok=True)  # its old scores would describe another content
            continue
        taken = time.monotonic() - file_started
        if npz is not None:
            save_scores(npz, scores)
        results.append(FileResult.scored(path, relative, ANALYSED, scores, write and write(relative, scores)))
        audio_seconds += scores.seconds
        log(f"analyze: {index}/{len(ordered)} {relative}: {_clock(scores.seconds)} of audio, "
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
