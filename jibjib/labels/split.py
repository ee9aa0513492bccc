"""Label index, leak-free stratified split and the safe label-map reader, built from the feature manifests.

Class ids come from the sorted label names, so every machine numbers the
classes the same way (the old code used `os.walk` order).  Splits are made per
unit, never per slice: a unit is a recording (all its slices, in every species
folder it appears in) together with every recording sharing a file's content.
Per species, train comes first, then val and test, then the shares; a ledger of
earlier assignments (see `assign_splits`) keeps adding files from moving any
existing recording, which no pure function of the file list could promise.

Folder names.  A folder named in `background` (case-insensitively: `noise`,
`background`, `other`, `silence` by default) holds non-event audio: its files
are trained on and split like a species, but it is never a class.  A folder
name listing several species separated by commas (`Parus_major,Turdus_merula`,
BirdNET's convention) trains every one of them as a positive; each named
species is a class even without a folder of its own.  split.tsv's `species`
column carries the species a file contains (empty for background).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import pickle
import re
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable

import pandas as pd

from jibjib.core import fsutil
from jibjib.core.errors import LabelError
from jibjib.core.settings import schema_default
from jibjib.features.qc import PROCESSED

SPLITS = ("train", "val", "test")
LABEL_COLUMNS = ["class_id", "label", "n_files", "n_recordings", "seconds"]
# `species`: the comma-joined classes of the file (sorted, as in labels.tsv); empty for a background folder.
SPLIT_COLUMNS = ["path", "label", "recording_id", "split", "species"]
LEDGER_COLUMNS = ["recording_id", "split", "settings"]
MAX_LOGGED_UNITS = 50  # a log is read by a person
# The schema's defaults, for callers that name no setting.
DEFAULT_MIN_EVAL_RECORDINGS: int = schema_default("split.min_eval_recordings")
DEFAULT_RECORDING_PATTERN: str = schema_default("split.recording_pattern")
DEFAULT_BACKGROUND: tuple[str, ...] = tuple(schema_default("labels.background"))
SPECIES_SEPARATOR = ","


def is_background(folder: str, background: Iterable[str] = DEFAULT_BACKGROUND) -> bool:
    """Whether a folder holds non-event audio: its name is one of `background`, in any case."""
    return folder.strip().casefold() in {name.strip().casefold() for name in background}


def folder_species(folder: str, background: Iterable[str] = DEFAULT_BACKGROUND) -> tuple[str, ...]:
    """The species a folder's files contain: () for a background folder, else the comma-separated
    names, stripped, without repeats, sorted (class order).

    LabelError for an empty name (`A,,B`, a trailing comma) or a background
    name among species: either is a typo that would otherwise make a class.
    """
    background = tuple(background)
    if is_background(folder, background):
        return ()
    names = [name.strip() for name in folder.split(SPECIES_SEPARATOR)]
    if not all(names):
        raise LabelError(f"folder {folder!r}: empty species name (species are separated by single commas)")
    mixed = [name for name in names if is_background(name, background)]
    if mixed:
        raise LabelError(f"folder {folder!r} names the background {mixed[0]!r} among species; a background "
                         "folder must be named on its own")
    return tuple(sorted(set(names)))


def species_column(folders: pd.Series, background: Iterable[str] = DEFAULT_BACKGROUND) -> pd.Series:
    """split.tsv's `species` for each file's folder (label)."""
    background = tuple(background)
    joined = {folder: SPECIES_SEPARATOR.join(folder_species(folder, background)) for folder in set(folders)}
    return folders.map(joined)


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


def _rank(seed: int, text: str) -> bytes:
    # A seeded order that no file listing or machine can change.
    return hashlib.sha256(f"{seed}\0{text}".encode()).digest()


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


def check_min_eval_recordings(fractions: dict[str, float], min_eval_recordings: int) -> None:
    """One train recording and one per evaluated split must fit into min_eval_recordings."""
    evaluated = [name for name in SPLITS[1:] if fractions[name] > 0]
    if min_eval_recordings < 1 + len(evaluated):
        raise LabelError(f"min_eval_recordings must be at least {1 + len(evaluated)} (one train recording"
                         + "".join(f" and one {name}" for name in evaluated) + f"), got {min_eval_recordings}")


def split_settings(fractions: dict[str, float], seed: int, min_eval_recordings: int,
                   recording_pattern: str = DEFAULT_RECORDING_PATTERN) -> str:
    """The ledger's `settings` value: assignments made under other settings are not reused."""
    text = json.dumps({"fractions": {name: float(fractions[name]) for name in SPLITS}, "seed": seed,
                       "min_eval_recordings": min_eval_recordings, "recording_pattern": recording_pattern},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def next_split(counts: dict[str, int], fractions: dict[str, float], min_eval_recordings: int,
               order: tuple[str, ...] = SPLITS) -> tuple[int, str]:
    """Where a species' next recording goes, from its counts so far, and how urgently (2, 1 or 0).

    Train first (2); then an empty val or test (1) once the recordings still to
    come before min_eval_recordings could not fill every empty one; otherwise
    the split furthest below its share (0).  Ties go by `order`.
    """
    if counts["train"] == 0:
        return 2, "train"
    n = sum(counts.values()) + 1
    empty = [name for name in order if name != "train" and fractions[name] > 0 and counts[name] == 0]
    forced = bool(empty) and len(empty) > min_eval_recordings - n
    return int(forced), max(empty if forced else order, key=lambda name: fractions[name] * n - counts[name])


@dataclasses.dataclass
class _Unit:
    """Recordings that must share a split: a recording id (in whichever species folders it appears)
    and every recording id that shares a file's content with it, transitively."""

    recordings: list[str]
    labels: list[str]
    rank: bytes
    split: str = ""


def _units(files: pd.DataFrame, seed: int) -> list[_Unit]:
    """The connected groups of recording ids (linked by a shared sha256), in seeded order."""
    parent = {r: r for r in files["recording_id"]}

    def root(r: str) -> str:
        while parent[r] != r:
            parent[r] = parent[parent[r]]
            r = parent[r]
        return r

    digests = files["sha256"].fillna("") if "sha256" in files else pd.Series("", index=files.index)
    shared = (digests != "") & digests.duplicated(keep=False)
    for _, recordings in files["recording_id"][shared].groupby(digests[shared]):
        first, *rest = sorted(set(recordings))
        for r in rest:
            parent[root(r)] = root(first)
    members: dict[str, list[str]] = {}
    for r in sorted(parent):
        members.setdefault(root(r), []).append(r)
    labels: dict[str, set[str]] = {}
    for r, label in zip(files["recording_id"], files["label"]):
        labels.setdefault(r, set()).add(label)
    units = [_Unit(rs, sorted(set().union(*(labels[r] for r in rs))), min(_rank(seed, r) for r in rs))
             for rs in members.values()]
    return sorted(units, key=lambda u: u.rank)


def assign_splits(
    qc: pd.DataFrame,
    fractions: dict[str, float],
    seed: int,
    recording_pattern: str = DEFAULT_RECORDING_PATTERN,
    min_eval_recordings: int = DEFAULT_MIN_EVAL_RECORDINGS,
    ledger: dict[str, str] | None = None,
    log: Callable[[str], None] = lambda line: None,
    background: Iterable[str] = DEFAULT_BACKGROUND,
) -> pd.DataFrame:
    """split.tsv rows: every processed file with its recording, split and species (`species_column`).

    The strata are the folders: a background folder is split by recording
    like a species (training needs some, and val and test need negatives for
    the thresholds and the evaluation), and a multi-species folder is a
    stratum of its own, so its recordings reach val and test as well.

    Units (see `_Unit`) the ledger (recording id -> split, from an earlier run
    under the same settings) knows keep their split; the others follow, in
    seeded hash order, `next_split` of the species that needs them most (the
    most urgent need, then the species with the fewest recordings).  A unit
    whose recordings the ledger had put in different splits (new identical
    content joined them) goes to train as a whole: nothing of it is left to
    leak into val or test.  Only when minimums are broken otherwise (recordings
    removed, such a merge) are units moved, each move logged.
    """
    check_fractions(fractions)
    check_min_eval_recordings(fractions, min_eval_recordings)
    background = tuple(background)
    ledger = ledger or {}
    files = processed_files(qc, recording_pattern)
    units = _units(files, seed)
    totals = Counter(label for unit in units for label in unit.labels)
    counts = {label: dict.fromkeys(SPLITS, 0) for label in totals}
    # Which of val and test wins a tie, per species: otherwise val would always get the odd recording.
    order = {label: SPLITS if _rank(seed, f"order\0{label}")[0] % 2 else ("train", "test", "val") for label in totals}

    def put(unit: _Unit, split: str) -> None:
        for label in unit.labels:
            if unit.split:
                counts[label][unit.split] -= 1
            counts[label][split] += 1
        unit.split = split

    def required(label: str, split: str) -> int:
        return int(split == "train" or (fractions[split] > 0 and totals[label] >= min_eval_recordings))

    new = []
    for unit in units:
        known = sorted({ledger[r] for r in unit.recordings if r in ledger}, key=SPLITS.index)
        if len(known) > 1:
            log(f"warning: {', '.join(unit.recordings)} have identical files but the ledger had them in "
                f"{' and '.join(known)}: all go to train")
            put(unit, "train")
        elif known:
            put(unit, known[0])
        else:
            new.append(unit)
    for unit in new:
        need = min(unit.labels, key=lambda label: (-next_split(counts[label], fractions, min_eval_recordings,
                                                                order[label])[0], totals[label], label))
        put(unit, next_split(counts[need], fractions, min_eval_recordings, order[need])[1])

    for label in sorted(totals):
        for split in SPLITS:
            if counts[label][split] >= required(label, split):
                continue
            donors = [u for u in units if label in u.labels and u.split != split
                      and all(counts[other][u.split] > required(other, u.split) for other in u.labels)]
            if not donors:
                log(f"warning: {label} has no {split} recording and none can be moved there")
                continue
            donor = max(donors, key=lambda u: (counts[label][u.split] - fractions[u.split] * totals[label], u.rank))
            log(f"warning: moved {', '.join(donor.recordings)} from {donor.split} to {split} "
                f"so that {label} has a {split} recording")
            put(donor, split)

    joined = [unit for unit in units if len(unit.recordings) > 1 or len(unit.labels) > 1]
    for unit in joined[:MAX_LOGGED_UNITS]:
        why = (["identical files"] if len(unit.recordings) > 1 else []) + (
            [f"in {folder_list(unit.labels)}"] if len(unit.labels) > 1 else [])
        log(f"kept together in {unit.split}: {', '.join(unit.recordings)} ({'; '.join(why)})")
    if len(joined) > MAX_LOGGED_UNITS:
        log(f"kept together: {len(joined) - MAX_LOGGED_UNITS} more groups (duplicate_of in the QC table lists them)")
    evaluated = [name for name in SPLITS[1:] if fractions[name] > 0]
    few = sorted(label for label in totals if totals[label] < min_eval_recordings)
    if evaluated and few:
        species = files["label"].drop_duplicates().map(lambda folder: len(folder_species(folder, background)) == 1)
        noun = "species" if species.all() else "folders"  # background and multi-species folders are strata too
        log(f"{len(few)} of {len(totals)} {noun} have fewer than {min_eval_recordings} recordings, too few to be "
            "evaluated: " + ", ".join(f"{folder_list([label])} ({totals[label]})" for label in few))
    split_of = {r: unit.split for unit in units for r in unit.recordings}
    files["split"] = files["recording_id"].map(split_of)
    files["species"] = species_column(files["label"], background)
    return files[SPLIT_COLUMNS]


def folder_list(folders: list[str]) -> str:
    """Folder names for a log line; a multi-species name is quoted, or its commas would split it."""
    return ", ".join(repr(folder) if SPECIES_SEPARATOR in folder else folder for folder in folders)


def read_ledger(path: str | Path, settings: str) -> tuple[dict[str, str], str]:
    """The splits an earlier run gave to recordings (if made under `settings`), and a line for the log."""
    path = Path(path)
    if not path.exists():
        return {}, f"no ledger {path} yet: split from scratch"
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        return {}, f"warning: ledger {path} ignored, unreadable ({exc}): split from scratch"
    if list(table.columns) != LEDGER_COLUMNS or not table["split"].isin(SPLITS).all():
        return {}, (f"warning: ledger {path} ignored, not a ledger (columns {', '.join(LEDGER_COLUMNS)}): "
                    "split from scratch")
    if (table["settings"] != settings).any():
        return {}, (f"ledger {path} ignored: written under other split settings (seed, fractions, "
                    "min_eval_recordings or recording_pattern); split from scratch")
    return dict(zip(table["recording_id"], table["split"])), f"ledger {path}: reused for {len(table)} recordings"


def write_ledger(path: str | Path, split: pd.DataFrame, settings: str) -> None:
    """Every current recording's split, for the next run to keep (recordings gone since are forgotten)."""
    table = split[["recording_id", "split"]].drop_duplicates().sort_values("recording_id", kind="stable")
    fsutil.write_tsv(path, table.assign(settings=settings)[LEDGER_COLUMNS])


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

