"""What `jibjib analyze` writes, file by file: the per-file tables, detections.tsv and files.tsv.

`TableWriter` writes a file's table and appends its detections the moment the
file's scores are known (jibjib.analysis.analyze calls it), so a run holds one
file's scores at a time. The workflow's shard jobs write their tables the same
way, and their detections to a shard file beside their manifest;
`merge_shards` then streams the shards' detections into detections.tsv.

Tables are never written over, nor deleted, unless jibjib wrote them as they
are: each writer records in `<out>/.jibjib-tables/<writer>.tsv` the name and
SHA-256 of every table it writes (before writing it), and a table whose
content matches none recorded for its name (a file of yours, or a table you
edited) stops the run before any work (`check_tables_are_ours`).

The formats are described in jibjib.analysis.tables.
"""

from __future__ import annotations

import csv
import hashlib
import heapq
import os
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterable, Iterator

from jibjib.core import fsutil
from jibjib.core.errors import InputError
from jibjib.features.qc import ignore_reason
from jibjib.analysis import tables
from jibjib.analysis.analyze import FileResult
from jibjib.analysis.scores import WindowScores

LEDGER_DIR = ".jibjib-tables"
LEDGER_COLUMNS = ("table", "sha256")


@dataclass(frozen=True)
class TableSettings:
    """How detections are chosen and written (the defaults: window thresholds, no merging, Raven)."""

    min_score: float | None = None  # instead of the window thresholds, for every species
    merge: bool = False
    table_format: str = "raven"
    thresholds_path: Path | None = None  # default: the export's assets/thresholds.tsv


def manifest_row(result: FileResult) -> dict[str, object]:
    """A files.tsv row; see jibjib.analysis.tables."""
    row = {"file": result.relative, "status": result.status, "reason": result.reason, "detail": result.detail,
           "detections": "" if result.detections is None else result.detections, "table": result.table}
    if result.windows is not None:
        row.update(seconds=result.seconds, sample_rate=result.sample_rate, channels=result.channels,
                   windows=result.windows, sha256=result.sha256)
    return row


def write_files_table(path: Path, results: Iterable[FileResult]) -> None:
    """files.tsv, or a shard job's manifest: one metadata row per file, sorted by file."""
    tables.write_text(path, tables.files_text([manifest_row(r) for r in results]))


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def recorded_tables(out_dir: Path) -> dict[str, set[str]]:
    """Table name -> the SHA-256 of every content jibjib recorded writing under it in out_dir."""
    known: dict[str, set[str]] = {}
    for ledger in sorted((out_dir / LEDGER_DIR).glob("*.tsv")):
        try:
            with open(ledger, newline="", encoding="utf-8") as f:
                for row in csv.reader(f, delimiter="\t"):
                    if len(row) == 2 and row[0] != "table":  # a line cut off by a kill has fewer cells
                        known.setdefault(row[0], set()).add(row[1])
        except (OSError, UnicodeDecodeError, csv.Error):
            continue
    return known


def _ours(path: Path, known: dict[str, set[str]], name: str) -> bool:
    """Whether the file at `path` is a table jibjib wrote under `name`, unchanged since."""
    try:
        return fsutil.sha256_file(path) in known.get(name, set())
    except OSError:
        return False


def check_tables_are_ours(out_dir: Path, names: Iterable[str], table_format: str) -> None:
    """InputError, before any work, if a table this run would write is there and is not one jibjib wrote."""
    known = recorded_tables(out_dir)
    foreign = []
    for relative in names:
        if ignore_reason(Path(relative)):
            continue
        name = tables.table_name(relative, table_format)
        path = out_dir / name
        if (path.exists() or path.is_symlink()) and not _ours(path, known, name):
            foreign.append(name)
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise InputError(f"{out_dir / foreign[0]}{more}: not a table jibjib wrote (or edited since): not "
                         "overwriting it; move it away or choose another --out")


class TableWriter:
    """Per-file tables and a streamed detections file, one analysed file at a time (a `jibjib.analysis.analyze.Writer`).

    Files must come in the order of their names, as analyze_files hands them
    over, so that the detections file is sorted without holding it. The
    detections file is written under a temporary name and renamed by `close`.
    """

    def __init__(self, out_dir: Path, detections_path: Path, writer_name: str, labels: list[str],
                 external_ids: list[str] | None, window_thresholds: dict[str, float] | None,
                 settings: TableSettings, mel_range: tuple[float, float]) -> None:
        self.out_dir, self.settings, self.mel_range = out_dir, settings, mel_range
        self.external_ids = external_ids
        self.thresholds = tables.thresholds_for(labels, window_thresholds, settings.min_score)
        self.written: set[str] = set()
        self.count = 0
        self._stack = ExitStack()
        (out_dir / LEDGER_DIR).mkdir(parents=True, exist_ok=True)
        self._ledger: IO[str] = self._stack.enter_context(
            open(out_dir / LEDGER_DIR / f"{writer_name}.tsv", "a", newline="", encoding="utf-8"))
        fsutil.remove_dead_temps(detections_path)  # a killed run's half-written detections
        self._detections = self._stack.enter_context(fsutil.atomic_open(detections_path))
        self._rows = csv.writer(self._detections, delimiter="\t", lineterminator="\n")
        self._rows.writerow(tables.detection_columns(external_ids is not None))

    def __call__(self, relative: str, scores: WindowScores) -> tuple[int, str]:
        """Write one file's table and append its detections; returns (detections, table name)."""
        found = tables.file_detections(relative, scores, self.thresholds, self.settings.merge, self.external_ids)
        name = tables.table_name(relative, self.settings.table_format)
        text = (tables.raven_text(found, *self.mel_range) if self.settings.table_format == "raven"
                else tables.audacity_text(found))
        # Recorded first: a kill between the two leaves a record of content never written, not a table we
        # would later take for a stranger's.
        csv.writer(self._ledger, delimiter="\t", lineterminator="\n").writerow([name, _sha256_text(text)])
        self._ledger.flush()
        tables.write_text(self.out_dir / name, text)
        self._rows.writerows(tables.detection_rows(found, self.external_ids is not None))
        self.written.add(name)
        self.count += len(found)
        return len(found), name

    def close(self) -> None:
        """Put the detections file in place (the ledger stays for the next run)."""
        self._stack.close()

    def abandon(self) -> None:
        """Drop the detections file (a failed run leaves the old one)."""
        self._stack.__exit__(RuntimeError, RuntimeError("abandoned"), None)


def finish_tables(out_dir: Path, current: set[str]) -> int:
    """After a complete run: delete the tables jibjib wrote earlier for files no longer analysed (unless edited
    since), and keep one record of the current tables; returns how many were deleted."""
    known = recorded_tables(out_dir)
    removed = 0
    for name in sorted(set(known) - current):
        path = out_dir / name
        if path.is_file() and _ours(path, known, name) and path.resolve().is_relative_to(out_dir.resolve()):
            path.unlink()
            removed += 1
    rows = []
    for name in sorted(current):
        try:
            digest = fsutil.sha256_file(out_dir / name)
        except OSError:
            continue
        if digest in known.get(name, set()):  # as written: a table edited since is no longer ours
            rows.append((name, digest))
    ledgers = out_dir / LEDGER_DIR
    tables.write_text(ledgers / "tables.tsv", fsutil.tsv_text(LEDGER_COLUMNS, rows))
    for ledger in ledgers.glob("*.tsv"):
        if ledger.name != "tables.tsv":
            ledger.unlink(missing_ok=True)
    return removed


def _detection_rows(path: Path) -> Iterator[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t")
        next(reader, None)
        yield from reader


def merge_shards(shard_detections: list[Path], out: Path) -> int:
    """The shards' detection files (each sorted by file, start, label; files apart) streamed into one; rows."""
    headers = set()
    for path in shard_detections:
        with open(path, newline="", encoding="utf-8") as f:
            headers.add(f.readline().rstrip("\n"))
    if len(headers) > 1:
        raise InputError(f"the shards' detection files have different columns: {sorted(headers)}")
    columns = (headers or {"\t".join(tables.detection_columns(False))}).pop().split("\t")
    count = 0
    with fsutil.atomic_open(out) as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(columns)
        for row in heapq.merge(*map(_detection_rows, shard_detections), key=tables.detection_order):
            writer.writerow(row)
            count += 1
    return count


def read_manifests(manifests: Iterable[str | os.PathLike]) -> list[FileResult]:
    """The shard jobs' files tables back, metadata only."""
    results = []
    for manifest in manifests:
        for row in tables.read_files_table(manifest):
            number = lambda key, kind: kind(row[key]) if row.get(key) else None  # noqa: E731
            results.append(FileResult(row["file"], row["status"], row.get("reason", ""), row.get("detail", ""),
                                      number("seconds", float), number("sample_rate", int), number("channels", int),
                                      number("windows", int), row.get("sha256", ""), number("detections", int),
                                      row.get("table", "")))
    return results
