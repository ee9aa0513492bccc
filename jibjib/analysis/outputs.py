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

import numpy as np

from jibjib.core import fsutil
from jibjib.core.errors import InputError
from jibjib.features.qc import ignore_reason
from jibjib.analysis import tables
from jibjib.analysis.analyze import FileResult, Written
from jibjib.analysis.recorders import Recorders, clock
from jibjib.analysis.scores import WindowScores
from jibjib.analysis.species_lists import SpeciesLists

LEDGER_DIR = ".jibjib-tables"
LEDGER_COLUMNS = ("table", "sha256")


@dataclass(frozen=True)
class TableSettings:
    """How detections are chosen and written (the defaults: window thresholds, no merging, Raven)."""

    min_score: float | None = None  # instead of the window thresholds, for every species
    merge: bool = False
    formats: tuple[str, ...] = ("raven",)
    thresholds_path: Path | None = None  # default: the export's assets/thresholds.tsv
    label_column: str = tables.DEFAULT_LABEL_COLUMN

    @property
    def per_file_formats(self) -> tuple[str, ...]:
        return tuple(f for f in self.formats if f in tables.PER_FILE_FORMATS)


def manifest_row(result: FileResult) -> dict[str, object]:
    """A files.tsv row; see jibjib.analysis.tables."""
    row = {"file": result.relative, "status": result.status, "reason": result.reason, "detail": result.detail,
           "detections": "" if result.detections is None else result.detections, "table": result.table,
           "site": result.site, "recorded_at": result.recorded_at,
           "path": os.path.abspath(result.path) if result.path is not None else ""}
    if result.windows is not None:
        row.update(seconds=result.seconds, sample_rate=result.sample_rate, channels=result.channels,
                   windows=result.windows, sha256=result.sha256)
    return row


def write_files_table(path: Path, results: Iterable[FileResult]) -> None:
    """files.tsv, or a shard job's manifest: one metadata row per file, sorted by file."""
    tables.write_text(path, tables.files_text([manifest_row(r) for r in results]))


def record_table(out_dir: Path, writer_name: str, name: str, sha256: str) -> None:
    """Note in the ledger that jibjib wrote `name` (relative to out_dir) with this content."""
    (out_dir / LEDGER_DIR).mkdir(parents=True, exist_ok=True)
    with open(out_dir / LEDGER_DIR / f"{writer_name}.tsv", "a", newline="", encoding="utf-8") as ledger:
        csv.writer(ledger, delimiter="\t", lineterminator="\n").writerow([name, sha256])


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


def check_tables_are_ours(out_dir: Path, names: Iterable[str], formats: tuple[str, ...],
                          combined: Iterable[str] = ()) -> None:
    """InputError, before any work, if a table this run would write (a per-file table of the recordings `names`
    in the per-file `formats`, or a `combined` table) is there and is not one jibjib wrote."""
    known = recorded_tables(out_dir)
    foreign = []
    wanted = [tables.table_name(relative, f) for relative in names if not ignore_reason(Path(relative))
              for f in formats if f in tables.PER_FILE_FORMATS]
    for name in [*wanted, *combined]:
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
                 settings: TableSettings, mel_range: tuple[float, float], recorders: Recorders | None = None,
                 species: SpeciesLists | None = None, paths: dict[str, Path] | None = None) -> None:
        self.out_dir, self.settings, self.mel_range = out_dir, settings, mel_range
        self.external_ids, self.labels = external_ids, labels
        self.recorders, self.species, self.paths = recorders or Recorders(), species, paths or {}
        self.thresholds = tables.thresholds_for(labels, window_thresholds, settings.min_score)
        self._site_thresholds: dict[str, np.ndarray] = {}
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

    def thresholds_at(self, site: str) -> np.ndarray:
        """The class thresholds at a site: NaN (never detected) for the species its list leaves out."""
        allowed = self.species.allowed(site) if self.species is not None else None
        if allowed is None:
            return self.thresholds
        if site not in self._site_thresholds:
            self._site_thresholds[site] = np.where([label in allowed for label in self.labels], self.thresholds,
                                                   np.nan)
        return self._site_thresholds[site]

    def record(self, name: str, sha256: str) -> None:
        """Note that jibjib writes `name` with this content (before it does: a kill between the two leaves a
        record of content never written, not a table we would later take for a stranger's)."""
        csv.writer(self._ledger, delimiter="\t", lineterminator="\n").writerow([name, sha256])
        self._ledger.flush()

    def __call__(self, relative: str, scores: WindowScores) -> Written:
        """Write one file's tables and append its detections; returns what files.tsv says of them."""
        path = self.paths.get(relative)
        site, started = self.recorders.site(relative), self.recorders.start(path, relative)
        found = tables.file_detections(relative, scores, self.thresholds_at(site), self.settings.merge,
                                       self.external_ids, site, started)
        names = []
        for table_format in self.settings.per_file_formats:
            name = tables.table_name(relative, table_format)
            text = (tables.raven_text(found, *self.mel_range, self.settings.label_column)
                    if table_format == "raven" else tables.audacity_text(found))
            self.record(name, _sha256_text(text))
            tables.write_text(self.out_dir / name, text)
            self.written.add(name)
            names.append(name)
        self._rows.writerows(tables.detection_rows(found, self.external_ids is not None))
        self.count += len(found)
        return Written(len(found), names[0] if names else "", site, clock(started, 0.0))

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
                                      row.get("table", ""), Path(row["path"]) if row.get("path") else None,
                                      row.get("site", ""), row.get("recorded_at", "")))
    return results
