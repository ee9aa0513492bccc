"""`jibjib analyze`: every input file scored in turn with an analyzer, what became of each, and the progress log.

An unusable file gets a reason and the others are still analysed; with a
scores folder, a recording whose score file is still current is not analysed
again (see jibjib.analysis.analyzer).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from jibjib.core import fsutil
from jibjib.features.audio import AudioError
from jibjib.features.qc import ignore_reason
from jibjib.analysis.analyzer import Analyzer
from jibjib.analysis.scores import WindowScores, save_scores, scores_path

PROGRESS_SECONDS = 10.0

ANALYSED, REUSED, REJECTED, IGNORED = "analysed", "reused", "rejected", "ignored"


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
