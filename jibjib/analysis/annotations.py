"""The annotated calls of field recordings: Raven selection tables and one-TSV annotations, read and checked.

Annotations come as Raven selection tables (one per audio file,
`<stem>.selections.txt` or `<stem>.Table.1.selections.txt`) or as one TSV
with columns `file, start, end, label`.  Files are named by their recording
key: the path relative to the audio folder, without extension.
"""

from __future__ import annotations

import csv
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from jibjib.core.errors import InputError
from jibjib.features.audio import is_audio_file
from jibjib.analysis.tables import TABLE_SUFFIX

_RAVEN_RE = re.compile(r"^(?P<stem>.+?)(?:\.Table\.\d+)?\.selections\.txt$")
_BEGIN, _END = "Begin Time (s)", "End Time (s)"
# Raven's own default is "Annotation"; "Species" is what the demo and BirdNET write.
_RAVEN_LABELS = ("Species", "Annotation", "Label", "label", "species", "Class", "class")


@dataclass(frozen=True)
class Call:
    """One annotated call: its span in seconds from the file's start, its label and, from a Raven table,
    its frequency box."""

    start: float
    end: float
    label: str
    low_hz: float | None = None
    high_hz: float | None = None


def recording_key(name: str) -> str:
    """A file's path as annotations and score folders name it: posix, relative, without an audio extension."""
    path = Path(name.replace("\\", "/").removeprefix("./"))
    return (path.with_suffix("") if is_audio_file(path) else path).as_posix()


def _numbers(table: pd.DataFrame, column: str, path: Path, lines: np.ndarray) -> np.ndarray:
    text = table[column].str.strip()
    values = pd.to_numeric(text, errors="coerce").to_numpy(float)
    bad = np.flatnonzero(~np.isfinite(values) & (text != "").to_numpy())
    if bad.size:
        raise InputError(f"{path}: line {lines[bad[0]]}: {column} {text.iat[bad[0]]!r} is not a number")
    return values


def _calls(path: Path, table: pd.DataFrame, lines: np.ndarray, begin: str, end: str, label: str,
           low: str | None = None, high: str | None = None) -> list[Call]:
    """The checked calls of a table whose rows are all calls, in row order; `lines` are the rows' file lines."""
    starts, ends = _numbers(table, begin, path, lines), _numbers(table, end, path, lines)
    lows = _numbers(table, low, path, lines) if low else np.full(len(table), np.nan)
    highs = _numbers(table, high, path, lines) if high else np.full(len(table), np.nan)
    calls = []
    for line, s, e, name, lo, hi in zip(lines, starts, ends, table[label].str.strip(), lows, highs):
        if math.isnan(s) or math.isnan(e) or not name:
            raise InputError(f"{path}: line {line}: {begin}, {end} and {label} must all be given")
        if s < 0 or e <= s:
            raise InputError(f"{path}: line {line}: a call must start at 0 s or later and end after it starts, "
                             f"not {s:g}-{e:g}")
        calls.append(Call(float(s), float(e), name, None if math.isnan(lo) else float(lo),
                          None if math.isnan(hi) else float(hi)))
    return calls


def _by_time(calls: list[Call]) -> list[Call]:
    return sorted(calls, key=lambda c: (c.start, c.end, c.label))


def _read_table(path: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """The table as text and the file line of each row (blank lines are skipped)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f, delimiter="\t"))
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not a UTF-8 text table ({exc.reason} at byte {exc.start})") from None
    if not rows or not any(rows[0]):
        raise InputError(f"{path}: not a tab-separated table with a header: the first line is empty")
    header = [name.strip() for name in rows[0]]
    lines, body = [], []
    for line, row in enumerate(rows[1:], 2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) > len(header):
            raise InputError(f"{path}: line {line}: {len(row)} tab-separated fields, the header has {len(header)}")
        lines.append(line)
        body.append(row + [""] * (len(header) - len(row)))  # editors drop trailing empty cells
    return pd.DataFrame(body, columns=header, dtype=str), np.array(lines, dtype=int)


def read_raven_table(path: str | os.PathLike) -> list[Call]:
    """The calls of one Raven selection table.

    Raven lists each selection once per view (Waveform 1, Spectrogram 1):
    only the spectrogram rows are kept when there are any.
    """
    path = Path(path)
    table, lines = _read_table(path)
    label = next((c for c in _RAVEN_LABELS if c in table.columns), None)
    missing = [c for c in (_BEGIN, _END) if c not in table.columns] + ([] if label else ["Species"])
    if missing:
        raise InputError(f"{path}: not a Raven selection table: no column {', '.join(missing)}")
    if "View" in table.columns and table["View"].str.startswith("Spectrogram").any():
        keep = table["View"].str.startswith("Spectrogram").to_numpy()
        table, lines = table[keep].reset_index(drop=True), lines[keep]
    return _by_time(_calls(path, table, lines, _BEGIN, _END, label,
                           *(c if c in table.columns else None for c in ("Low Freq (Hz)", "High Freq (Hz)"))))


def read_annotation_tsv(path: str | os.PathLike) -> dict[str, list[Call]]:
    """One TSV with columns file, start, end, label; a row with only `file` marks a file without calls."""
    path = Path(path)
    table, lines = _read_table(path)
    missing = [c for c in ("file", "start", "end", "label") if c not in table.columns]
    if missing:
        raise InputError(f"{path}: expected columns file, start, end, label; missing {', '.join(missing)}")
    names = table["file"].str.strip()
    if (names == "").any():
        raise InputError(f"{path}: line {lines[int(np.argmax(names == ''))]}: no file")
    bare = (table[["start", "end", "label"]] == "").all(axis=1).to_numpy()
    out: dict[str, list[Call]] = {recording_key(name): [] for name in names}
    calls = _calls(path, table[~bare].reset_index(drop=True), lines[~bare], "start", "end", "label")
    for name, call in zip(names[~bare], calls):
        out[recording_key(name)].append(call)
    return {key: _by_time(calls) for key, calls in sorted(out.items())}


def annotation_tables(path: str | os.PathLike) -> list[Path]:
    """The files read_annotations reads: the Raven tables below a folder (not hidden ones), or the file itself."""
    path = Path(path)
    if not path.is_dir():
        return [path] if path.is_file() else []
    # Hidden, or a table of jibjib analyze (<stem>.jibjib.selections.txt): not an annotation.
    return [table for table in sorted(path.rglob("*.selections.txt"))
            if not any(part.startswith(".") for part in table.relative_to(path).parts)
            and not table.name.endswith(TABLE_SUFFIX["raven"])]


def read_annotations(path: str | os.PathLike) -> dict[str, list[Call]]:
    """Recording key -> its calls, from a folder of Raven tables (searched recursively),
    one Raven table, or one TSV of file, start, end, label."""
    path = Path(path)
    if path.is_dir():
        found: dict[str, Path] = {}
        for table in annotation_tables(path):
            match = _RAVEN_RE.match(table.name)
            key = recording_key((table.parent.relative_to(path) / match["stem"]).as_posix())
            if key in found:
                raise InputError(f"{path}: two selection tables for {key}: {found[key].name} and {table.name}")
            found[key] = table
        if not found:
            raise InputError(f"{path}: no Raven selection table (<name>.selections.txt) in this folder")
        return {key: read_raven_table(table) for key, table in sorted(found.items())}
    if not path.is_file():
        raise FileNotFoundError(2, "No such file or directory", str(path))
    match = _RAVEN_RE.match(path.name)
    return {recording_key(match["stem"]): read_raven_table(path)} if match else read_annotation_tsv(path)
