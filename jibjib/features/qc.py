"""The QC table: one row for every file found below data_dir, and what became of it.

Columns (results/qc/files.tsv and the per-shard results/manifests/<shard>.tsv):
path (relative to data_dir), label, status (processed / rejected / ignored),
reason (a short code, empty when processed), detail (free text), sample_rate,
channels, seconds (of the source file), frames (log-mel frames at 100/s),
feature (the npz path), sha256 (of the source file the npz was computed from).
results/qc/files.tsv alone adds duplicate_of: the first path (in sorted order)
with the same sha256, empty for that first file and for files without a twin;
the split keeps such files, and their whole recordings, in one split.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING

from jibjib.core import fsutil
from jibjib.features.audio import is_audio_file

if TYPE_CHECKING:
    import pandas as pd

# pandas is imported only by the functions that build DataFrames: the feature
# command writes its manifest without it, since the import alone costs a
# quarter of a second in every feature job.

QC_COLUMNS = [
    "path", "label", "status", "reason", "detail",
    "sample_rate", "channels", "seconds", "frames", "feature", "sha256",
]
TEXT_COLUMNS = ["path", "label", "status", "reason", "detail", "feature", "sha256"]
PROCESSED, REJECTED, IGNORED = "processed", "rejected", "ignored"


@dataclasses.dataclass
class QCRow:
    path: str
    label: str
    status: str
    reason: str = ""
    detail: str = ""
    sample_rate: int | None = None
    channels: int | None = None
    seconds: float | None = None
    frames: int | None = None
    feature: str = ""
    sha256: str = ""


INTEGER_COLUMNS = ["sample_rate", "channels", "frames"]


def _with_integer_columns(frame: pd.DataFrame) -> pd.DataFrame:
    # Nullable integers: rejected rows have no rate, and plain int columns
    # with gaps would turn into floats ("22050.0") in the TSV.
    return frame.astype({c: "Int64" for c in INTEGER_COLUMNS})


def to_frame(rows: list[QCRow]) -> pd.DataFrame:
    import pandas as pd

    return _with_integer_columns(pd.DataFrame([dataclasses.asdict(r) for r in rows], columns=QC_COLUMNS))


def _cell(value: object) -> str:
    """A value as pandas writes it in `to_frame(...).to_csv`: '' for missing, repr for floats."""
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(float(value))  # float(): a numpy scalar's repr would name its type
    return str(value)


def write_manifest(path: str | os.PathLike, rows: list[QCRow]) -> None:
    """Write QC rows as TSV, byte for byte as `fsutil.write_tsv(path, to_frame(rows))` would."""
    fsutil.write_rows(path, QC_COLUMNS, [[_cell(v) for v in dataclasses.astuple(row)] for row in rows])


def read_qc(paths: list[str | os.PathLike]) -> pd.DataFrame:
    """Concatenate QC tables (TSV with QC_COLUMNS)."""
    import pandas as pd

    frames = [pd.read_csv(p, sep="\t", dtype={c: str for c in TEXT_COLUMNS}) for p in paths]
    frames = [f for f in frames if len(f)]
    if not frames:
        return to_frame([])
    qc = pd.concat(frames, ignore_index=True)[QC_COLUMNS]
    qc[TEXT_COLUMNS] = qc[TEXT_COLUMNS].fillna("")
    return _with_integer_columns(qc)


def sorted_table(qc: pd.DataFrame) -> pd.DataFrame:
    """Rows by path (both `read_qc` and `to_frame` give integer columns their nullable type)."""
    return qc.sort_values("path", kind="stable").reset_index(drop=True)[QC_COLUMNS]


def with_duplicates(qc: pd.DataFrame) -> pd.DataFrame:
    """`qc` plus the column duplicate_of (see the module docstring)."""
    hashed = qc[qc["sha256"] != ""]
    first = hashed.groupby("sha256")["path"].transform("min")
    duplicate_of = first.where(first != hashed["path"], "").reindex(qc.index, fill_value="")
    return qc.assign(duplicate_of=duplicate_of)


def is_hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def ignore_reason(relative: Path) -> str:
    """Why a file is not an input ('' if it is an audio file we should read, see jibjib.audio.CONTAINERS)."""
    if is_hidden(relative):
        return "hidden"
    if not is_audio_file(relative):
        return "not_audio"
    return ""


def species_files(species_dir: Path) -> list[Path]:
    """Every file below a species folder (hidden ones too, so QC can list them), sorted."""
    found = []
    for root, dirs, files in os.walk(species_dir, followlinks=True):
        dirs.sort()
        found.extend(Path(root, name) for name in files)
    return sorted(found)


def loose_files(data_dir: Path) -> list[str]:
    """Files below data_dir that belong to no species, relative to data_dir, sorted.

    Those directly in data_dir, and everything inside a hidden top-level
    folder (`.Trashes/`, `.git/`): QC lists each one as ignored, so the table
    keeps one row per file found.
    """
    found = []
    for entry in data_dir.iterdir():
        if not entry.is_dir():
            found.append(entry.name)
        elif entry.name.startswith("."):
            found.extend(f.relative_to(data_dir).as_posix() for f in species_files(entry))
    return sorted(found)
