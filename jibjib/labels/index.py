"""The label index (labels.tsv) and the recording each usable file was cut from, read from the QC table.

Class ids come from the sorted label names, so every machine numbers the
classes the same way (the old code used `os.walk` order).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Iterable

import pandas as pd

from jibjib.core.errors import LabelError
from jibjib.core.settings import schema_default
from jibjib.features.qc import PROCESSED
from jibjib.labels.folders import DEFAULT_BACKGROUND, folder_species

LABEL_COLUMNS = ["class_id", "label", "n_files", "n_recordings", "seconds"]
# The schema's default, for callers that name no setting.
DEFAULT_RECORDING_PATTERN: str = schema_default("split.recording_pattern")


def recording_ids(paths: pd.Series, pattern: str = DEFAULT_RECORDING_PATTERN) -> pd.Series:
    """The recording each file was cut from, read from its file stem.

    `pattern` is matched against the stem; its group `recording` (or the first
    group, or the whole match) names the recording.  The default strips a
    trailing `_<digits>` slice number: `Turdus_merula-12345_3` -> `Turdus_merula-12345`.
    """
    regex = re.compile(pattern)
    group: str | int = "recording" if "recording" in regex.groupindex else (1 if regex.groups else 0)

    def one(path: str) -> str:
        stem = Path(path).stem
        match = regex.search(stem)
        return match.group(group) if match and match.group(group) else stem

    return paths.map(one)


def processed_files(qc: pd.DataFrame, recording_pattern: str = DEFAULT_RECORDING_PATTERN) -> pd.DataFrame:
    """The QC rows of the usable files, sorted by path, with the recording each was cut from (`recording_id`)."""
    files = qc[qc["status"] == PROCESSED].copy()
    files["recording_id"] = recording_ids(files["path"], recording_pattern)
    return files.sort_values("path", kind="stable").reset_index(drop=True)


def _reason_counts(rows: pd.DataFrame) -> str:
    """'empty: 2 files, too_short: 1 file' for one species' QC rows."""
    counts = rows["reason"].replace("", "no reason").value_counts().sort_index()
    return ", ".join(f"{reason}: {n} file{'s' if n != 1 else ''}" for reason, n in counts.items()) or "no files"


def label_index(
    qc: pd.DataFrame,
    folders: list[str],
    label_map: dict[str, int] | None = None,
    recording_pattern: str = DEFAULT_RECORDING_PATTERN,
    background: Iterable[str] = DEFAULT_BACKGROUND,
    log: Callable[[str], None] = lambda line: None,
) -> pd.DataFrame:
    """One row per species, class ids in sorted label order.

    `folders` are the folder names (QC labels); the species are every name
    they give (`folder_species`), background folders none.  A file of a
    multi-species folder counts for each of its species (n_files,
    n_recordings, seconds).  Fails if a species has no usable file, naming it:
    a class with no data cannot be trained and would silently shift nothing
    but confuse all.  A folder without usable audio whose species all have
    data elsewhere (and a background folder) only costs a warning: nothing is
    left untrained.
    """
    background = tuple(background)
    files = processed_files(qc, recording_pattern)
    species_of = {folder: folder_species(folder, background) for folder in folders}
    labels = sorted(set().union(*species_of.values()))
    holding = {label: [folder for folder in folders if label in species_of[folder]] for label in labels}
    used = set(files["label"])
    empty = [label for label in labels if not used & set(holding[label])]
    if empty:
        # The reasons go into the message itself: Snakemake deletes the outputs
        # of a failed job, the QC table included.
        raise LabelError(
            "no usable audio for species "
            + ", ".join(f"{label!r} ({_reason_counts(qc[qc['label'].isin(holding[label])])})" for label in empty)
            + "; fix or remove " + ("that folder" if len(empty) == 1 else "those folders")
        )
    for folder in sorted(set(folders) - used):
        kind, outcome = (("folder", "its species have data elsewhere") if species_of[folder]
                         else ("background folder", "training goes on without it"))
        log(f"warning: {kind} {folder!r} has no usable audio ({_reason_counts(qc[qc['label'] == folder])}); "
            + outcome)
    # One row per (file, species): a multi-species file counts for each of its species.
    per_species = files.assign(species=files["label"].map(species_of)).explode("species").dropna(subset=["species"])
    grouped = per_species.groupby("species")
    index = pd.DataFrame({
        "class_id": range(len(labels)),
        "label": labels,
        "n_files": [int(grouped.size()[label]) for label in labels],
        "n_recordings": [int(grouped["recording_id"].nunique()[label]) for label in labels],
        "seconds": [round(float(grouped["seconds"].sum()[label]), 3) for label in labels],
    })
    if label_map is not None:
        missing = [label for label in labels if label not in label_map]
        if missing:
            raise LabelError(f"label_map has no id for {', '.join(map(repr, missing))}")
        index["external_id"] = [label_map[label] for label in labels]
    return index
