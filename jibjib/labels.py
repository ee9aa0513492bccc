"""Label index, leak-free split and the QC table, built from the feature manifests.

Class ids come from the sorted label names, so every machine numbers the
classes the same way (the old code used `os.walk` order).  Splits are drawn per
recording, not per slice, from a seeded hash, so slices of one recording never
straddle train and test, and adding files never moves an existing recording.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import re
from pathlib import Path

import pandas as pd

from .errors import LabelError
from .qc import PROCESSED

SPLITS = ("train", "val", "test")
LABEL_COLUMNS = ["class_id", "label", "n_files", "n_recordings", "seconds"]
SPLIT_COLUMNS = ["path", "label", "recording_id", "split"]
DEFAULT_RECORDING_PATTERN = r"^(?P<recording>.+?)(?:_\d+)?$"


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
    files = qc[qc["status"] == PROCESSED].copy()
    files["recording_id"] = recording_ids(files["path"], recording_pattern)
    return files.sort_values("path", kind="stable").reset_index(drop=True)


def _reason_counts(rows: pd.DataFrame) -> str:
    """'empty: 2 files, too_short: 1 file' for one species' QC rows."""
    counts = rows["reason"].replace("", "no reason").value_counts().sort_index()
    return ", ".join(f"{reason}: {n} file{'s' if n != 1 else ''}" for reason, n in counts.items()) or "no files"


def label_index(
    qc: pd.DataFrame,
    species: list[str],
    label_map: dict[str, int] | None = None,
    recording_pattern: str = DEFAULT_RECORDING_PATTERN,
) -> pd.DataFrame:
    """One row per species, class ids in sorted label order.

    Fails if a species folder yielded no usable file, naming it: a class with
    no data cannot be trained and would silently shift nothing but confuse all.
    """
    files = processed_files(qc, recording_pattern)
    labels = sorted(species)
    empty = [label for label in labels if not (files["label"] == label).any()]
    if empty:
        # The reasons go into the message itself: Snakemake deletes the outputs
        # of a failed job, the QC table included.
        raise LabelError(
            "no usable audio for species "
            + ", ".join(f"{label!r} ({_reason_counts(qc[qc['label'] == label])})" for label in empty)
            + "; fix or remove " + ("that folder" if len(empty) == 1 else "those folders")
        )
    grouped = files.groupby("label")
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


def _unit_hash(seed: int, label: str, recording: str) -> float:
    digest = hashlib.sha256(f"{seed}\0{label}\0{recording}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def check_fractions(fractions: dict[str, float]) -> None:
    """Split shares must be non-negative and add up to 1, or recordings would silently fall into test."""
    negative = [name for name in SPLITS if fractions[name] < 0]
    if negative:
        raise LabelError("fractions must not be negative, got "
                         + ", ".join(f"{name} {fractions[name]:g}" for name in negative))
    total = sum(fractions[name] for name in SPLITS)
    if abs(total - 1.0) > 1e-6:
        raise LabelError("train + val + test must add up to 1, got "
                         + " + ".join(f"{fractions[name]:g}" for name in SPLITS) + f" = {total:g}")


def assign_splits(
    qc: pd.DataFrame,
    fractions: dict[str, float],
    seed: int,
    recording_pattern: str = DEFAULT_RECORDING_PATTERN,
) -> pd.DataFrame:
    """split.tsv rows: every processed file with its recording and split.

    Each recording draws a number in [0, 1) from a hash of (seed, label,
    recording id) alone, so its split never depends on which other files exist.
    """
    check_fractions(fractions)
    files = processed_files(qc, recording_pattern)
    train_edge = fractions["train"]
    val_edge = train_edge + fractions["val"]

    def split_of(label: str, recording: str) -> str:
        u = _unit_hash(seed, label, recording)
        return "train" if u < train_edge else "val" if u < val_edge else "test"

    files["split"] = [split_of(label, rec) for label, rec in zip(files["label"], files["recording_id"])]
    return files[SPLIT_COLUMNS]


class _DataOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle API
        raise pickle.UnpicklingError(f"the pickle asks for {module}.{name}, only plain data is accepted")


def load_label_map(path: str | Path) -> dict[str, int]:
    """Read the old `bird_id_map.pickle` (species -> database id) without running pickle code.

    Only the built-in data opcodes are allowed, so a pickle that tries to import
    or call anything is refused before it can act.
    """
    path = Path(path)
    try:
        data = _DataOnlyUnpickler(io.BytesIO(path.read_bytes()), encoding="utf-8").load()
    except FileNotFoundError:
        raise LabelError(f"{path} does not exist") from None
    except (pickle.UnpicklingError, EOFError, ValueError, UnicodeDecodeError) as exc:
        raise LabelError(f"{path} refused: {exc}") from None
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in data.items()
    ):
        raise LabelError(f"{path} must be a dict of species name -> integer id")
    return data

