"""What `jibjib analyze` writes: the detection tables and files.tsv, and the shard jobs' manifests read back.

The formats are described in jibjib.analysis.tables.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from jibjib.core import fsutil
from jibjib.core.errors import InputError
from jibjib.analysis import tables
from jibjib.analysis.analyze import ANALYSED, REUSED, FileResult
from jibjib.analysis.scores import ScoreFileError, load_scores, scores_path


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
