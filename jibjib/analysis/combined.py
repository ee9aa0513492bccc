"""Tables for a whole deployment, made from detections.tsv by streaming it (one row at a time in memory).

`--format` names which (several at once are fine):

* `raven`: `detections.selections.txt`, Raven Pro's multi-file selection
  table: Selection, View, Channel, Begin Time (s), End Time (s), Low Freq (Hz),
  High Freq (Hz), Begin Path (the recording, absolute), File Offset (s) (the
  start within it), Begin File (its file name), the label column (`Species`
  unless named otherwise) and Score. Begin Time counts from the start of the
  first recording listed, the recordings listed one after another in the
  table's order, each with its whole duration, as Raven lays out the files of
  a table it opens; End Time is Begin Time plus the detection's length.
* `kaleidoscope`: `detections.kaleidoscope.csv`, the comma-separated layout of
  Wildlife Acoustics' Kaleidoscope (`id.csv`) that BirdNET-Analyzer also
  writes: INDIR (the analysed folder), FOLDER (the subfolder below it), IN FILE,
  CHANNEL (0: analyze mixes the channels), OFFSET and DURATION (seconds),
  DATE, TIME and HOUR (the recorder's clock at the detection's start; empty
  when unknown), AUTO ID (the label) and SCORE.
* `csv`: `detections.csv`, detections.tsv comma-separated with the
  recording's absolute `path` after `file`.

Recordings are as files.tsv lists them (`FileFacts`): their path and duration.
"""

from __future__ import annotations

import csv
import os
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Callable, Iterable, Iterator

from jibjib.core import fsutil
from jibjib.analysis import tables
from jibjib.analysis.analyze import FileResult
from jibjib.analysis.recorders import parse_clock

COMBINED_NAMES = {"raven": "detections.selections.txt", "kaleidoscope": "detections.kaleidoscope.csv",
                  "csv": "detections.csv"}
RAVEN_FILE_COLUMNS = ("Begin Path", "File Offset (s)", "Begin File")
KALEIDOSCOPE_COLUMNS = ("INDIR", "FOLDER", "IN FILE", "CHANNEL", "OFFSET", "DURATION", "DATE", "TIME", "HOUR",
                        "AUTO ID", "SCORE")


@dataclass(frozen=True)
class FileFacts:
    """What the combined tables need of a recording: where it is and how long it lasts."""

    path: str  # absolute, links not followed ('' when unknown: the tables then give its name in the analysis)
    seconds: float


def file_facts(results: Iterable[FileResult]) -> dict[str, FileFacts]:
    """Name in the tables -> facts, for the analysed and reused recordings."""
    return {r.relative: FileFacts(os.path.abspath(r.path) if r.path is not None else "", r.seconds or 0.0)
            for r in results if r.seconds is not None}


def combined_names(formats: Iterable[str]) -> list[str]:
    return [COMBINED_NAMES[f] for f in formats if f in COMBINED_NAMES]


def read_detections(path: str | os.PathLike) -> Iterator[dict[str, str]]:
    """detections.tsv rows, one at a time."""
    with open(path, newline="", encoding="utf-8") as f:
        yield from csv.DictReader(f, delimiter="\t")


def split_path(path: str, relative: str) -> tuple[str, str, str]:
    """(analysed folder, subfolder below it, file name) of a recording: Kaleidoscope's INDIR, FOLDER, IN FILE."""
    name, below = PurePosixPath(relative).name, PurePosixPath(relative).parts
    if not path:
        return "", str(PurePosixPath(relative).parent).removeprefix("."), name
    parts = Path(path).parts
    if len(parts) > len(below) and tuple(parts[-len(below):]) == below:
        return str(Path(*parts[: -len(below)])), "/".join(below[:-1]), name
    return str(Path(path).parent), "", Path(path).name


class _RavenRows:
    """Tab-separated rows as Raven reads them: cells verbatim, no quoting (a tab or line break in a name, which
    no cell could hold, becomes a space)."""

    def __init__(self, handle: IO[str]) -> None:
        self.handle = handle

    def writerow(self, cells: list[str]) -> None:
        self.handle.write("\t".join(" ".join(str(c).splitlines()).replace("\t", " ") for c in cells) + "\n")


class _Raven:
    def __init__(self, label_column: str, mel_range: tuple[float, float]) -> None:
        self.label_column, self.mel_range = label_column, mel_range
        self.number, self.offset, self.current = 0, 0.0, None  # the running start of the current recording

    def header(self) -> list[str]:
        return [*tables.RAVEN_SELECTION, *RAVEN_FILE_COLUMNS, self.label_column, "Score"]

    def row(self, d: dict[str, str], facts: FileFacts, previous: FileFacts | None) -> list[str]:
        if d["file"] != self.current:
            self.offset += previous.seconds if previous is not None else 0.0
            self.current = d["file"]
        self.number += 1
        start, end = float(d["start"]), float(d["end"])
        path = facts.path or d["file"]
        return [str(self.number), "Spectrogram 1", "1", f"{self.offset + start:.3f}", f"{self.offset + end:.3f}",
                f"{self.mel_range[0]:.1f}", f"{self.mel_range[1]:.1f}", path, d["start"],
                PurePosixPath(path.replace(os.sep, "/")).name, d["label"], d["score"]]


class _Kaleidoscope:
    def header(self) -> list[str]:
        return list(KALEIDOSCOPE_COLUMNS)

    def row(self, d: dict[str, str], facts: FileFacts, previous: FileFacts | None) -> list[str]:
        indir, folder, name = split_path(facts.path, d["file"])
        at = parse_clock(d.get("recorded_at", ""))
        when = [at.strftime("%Y-%m-%d"), at.strftime("%H:%M:%S"), str(at.hour)] if at else ["", "", ""]
        duration = f"{float(d['end']) - float(d['start']):.3f}"
        return [indir, folder, name, "0", d["start"], duration, *when, d["label"], d["score"]]


class _Csv:
    def __init__(self, columns: list[str]) -> None:
        self.columns = columns

    def header(self) -> list[str]:
        return [self.columns[0], "path", *self.columns[1:]]

    def row(self, d: dict[str, str], facts: FileFacts, previous: FileFacts | None) -> list[str]:
        return [d["file"], facts.path, *(d.get(c, "") for c in self.columns[1:])]


def write_combined_tables(out_dir: Path, detections: Path, facts: dict[str, FileFacts], formats: Iterable[str],
                          label_column: str, mel_range: tuple[float, float],
                          record: Callable[[str, str], None]) -> list[str]:
    """The combined tables of `formats` in out_dir, from detections.tsv in one pass; returns their names.

    `record(name, sha256)` notes each table's content before it is renamed into place (the ledger of
    jibjib.analysis.outputs)."""
    wanted = [f for f in formats if f in COMBINED_NAMES]
    if not wanted:
        return []
    with open(detections, newline="", encoding="utf-8") as f:
        columns = next(csv.reader(f, delimiter="\t"), ["file"])
    makers = {"raven": lambda: _Raven(label_column, mel_range), "kaleidoscope": _Kaleidoscope,
              "csv": lambda: _Csv(columns)}
    with ExitStack() as stack:
        outputs: list[tuple[str, IO[str], object, object]] = []
        for table_format in wanted:
            name = COMBINED_NAMES[table_format]
            fsutil.remove_dead_temps(out_dir / name)
            handle = stack.enter_context(fsutil.atomic_open(out_dir / name))
            writer = _RavenRows(handle) if table_format == "raven" else csv.writer(handle, lineterminator="\n")
            maker = makers[table_format]()
            writer.writerow(maker.header())
            outputs.append((name, handle, writer, maker))
        previous: FileFacts | None = None
        current = None
        for row in read_detections(detections):
            here = facts.get(row["file"], FileFacts("", 0.0))
            for _, _, writer, maker in outputs:
                writer.writerow(maker.row(row, here, previous if row["file"] != current else None))
            if row["file"] != current:
                previous, current = here, row["file"]
        for name, handle, _, _ in outputs:
            handle.flush()
            record(name, fsutil.sha256_file(handle.name))
    return [name for name, *_ in outputs]
