"""The leak-free stratified train/val/test split (split.tsv) and the checks of its settings.

Splits are made per unit, never per slice: a unit is a recording (all its
slices, in every species folder it appears in) together with every recording
sharing a file's content.  Per species, train comes first, then val and test,
then the shares; a ledger of earlier assignments (jibjib.labels.ledger, see
`assign_splits`) keeps adding files from moving any existing recording, which
no pure function of the file list could promise.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter
from typing import Callable, Iterable

import pandas as pd

from jibjib.core.errors import LabelError
from jibjib.core.settings import schema_default
from jibjib.labels.folders import DEFAULT_BACKGROUND, folder_list, folder_species, species_column
from jibjib.labels.index import DEFAULT_RECORDING_PATTERN, processed_files

SPLITS = ("train", "val", "test")
# `species`: the comma-joined classes of the file (sorted, as in labels.tsv); empty for a background folder.
SPLIT_COLUMNS = ["path", "label", "recording_id", "split", "species"]
MAX_LOGGED_UNITS = 50  # a log is read by a person
# The schema's default, for callers that name no setting.
DEFAULT_MIN_EVAL_RECORDINGS: int = schema_default("split.min_eval_recordings")


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


class _Tally:
    """How many units of each stratum (folder) every split holds, kept current as units are placed,
    and the rules that decide from it where a unit goes."""

    def __init__(self, units: list[_Unit], fractions: dict[str, float], min_eval_recordings: int,
                 seed: int) -> None:
        self.fractions = fractions
        self.min_eval_recordings = min_eval_recordings
        self.totals = Counter(label for unit in units for label in unit.labels)
        self.counts = {label: dict.fromkeys(SPLITS, 0) for label in self.totals}
        # Which of val and test wins a tie, per species: otherwise val would always get the odd recording.
        self.order = {label: SPLITS if _rank(seed, f"order\0{label}")[0] % 2 else ("train", "test", "val")
                      for label in self.totals}

    def put(self, unit: _Unit, split: str) -> None:
        """Place `unit` in `split`, moving it out of the split it had."""
        for label in unit.labels:
            if unit.split:
                self.counts[label][unit.split] -= 1
            self.counts[label][split] += 1
        unit.split = split

    def required(self, label: str, split: str) -> int:
        """The units a stratum must have in a split: one in train, one in each evaluated split once it is big
        enough."""
        return int(split == "train"
                   or (self.fractions[split] > 0 and self.totals[label] >= self.min_eval_recordings))

    def next_split_of(self, label: str) -> tuple[int, str]:
        """`next_split` of one stratum, from its counts so far."""
        return next_split(self.counts[label], self.fractions, self.min_eval_recordings, self.order[label])

    def split_for_new(self, unit: _Unit) -> str:
        """The next split of the stratum that needs the unit most: the most urgent need, then the stratum with
        the fewest recordings."""
        need = min(unit.labels, key=lambda label: (-self.next_split_of(label)[0], self.totals[label], label))
        return self.next_split_of(need)[1]


def _place_from_ledger(units: list[_Unit], ledger: dict[str, str], tally: _Tally,
                       log: Callable[[str], None]) -> list[_Unit]:
    """Put the units the ledger knows back into their split; returns the others, in their order."""
    new = []
    for unit in units:
        known = sorted({ledger[r] for r in unit.recordings if r in ledger}, key=SPLITS.index)
        if len(known) > 1:
            log(f"warning: {', '.join(unit.recordings)} have identical files but the ledger had them in "
                f"{' and '.join(known)}: all go to train")
            tally.put(unit, "train")
        elif known:
            tally.put(unit, known[0])
        else:
            new.append(unit)
    return new


def _restore_minimums(units: list[_Unit], tally: _Tally, log: Callable[[str], None]) -> None:
    """Move a unit into each split a stratum lacks, from a split where every stratum of the unit can spare it."""
    counts, totals = tally.counts, tally.totals
    for label in sorted(totals):
        for split in SPLITS:
            if counts[label][split] >= tally.required(label, split):
                continue
            donors = [u for u in units if label in u.labels and u.split != split
                      and all(counts[other][u.split] > tally.required(other, u.split) for other in u.labels)]
            if not donors:
                log(f"warning: {label} has no {split} recording and none can be moved there")
                continue
            donor = max(donors,
                        key=lambda u: (counts[label][u.split] - tally.fractions[u.split] * totals[label], u.rank))
            log(f"warning: moved {', '.join(donor.recordings)} from {donor.split} to {split} "
                f"so that {label} has a {split} recording")
            tally.put(donor, split)


def _log_joined_units(units: list[_Unit], log: Callable[[str], None]) -> None:
    """Say which recordings were kept together, and why (the first MAX_LOGGED_UNITS groups)."""
    joined = [unit for unit in units if len(unit.recordings) > 1 or len(unit.labels) > 1]
    for unit in joined[:MAX_LOGGED_UNITS]:
        why = (["identical files"] if len(unit.recordings) > 1 else []) + (
            [f"in {folder_list(unit.labels)}"] if len(unit.labels) > 1 else [])
        log(f"kept together in {unit.split}: {', '.join(unit.recordings)} ({'; '.join(why)})")
    if len(joined) > MAX_LOGGED_UNITS:
        log(f"kept together: {len(joined) - MAX_LOGGED_UNITS} more groups (duplicate_of in the QC table lists them)")


def _log_too_few_to_evaluate(files: pd.DataFrame, tally: _Tally, background: tuple[str, ...],
                             log: Callable[[str], None]) -> None:
    """Name the strata with fewer than min_eval_recordings recordings, which val and test may lack."""
    totals, min_eval_recordings = tally.totals, tally.min_eval_recordings
    evaluated = [name for name in SPLITS[1:] if tally.fractions[name] > 0]
    few = sorted(label for label in totals if totals[label] < min_eval_recordings)
    if evaluated and few:
        species = files["label"].drop_duplicates().map(lambda folder: len(folder_species(folder, background)) == 1)
        noun = "species" if species.all() else "folders"  # background and multi-species folders are strata too
        log(f"{len(few)} of {len(totals)} {noun} have fewer than {min_eval_recordings} recordings, too few to be "
            "evaluated: " + ", ".join(f"{folder_list([label])} ({totals[label]})" for label in few))


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
    files = processed_files(qc, recording_pattern)
    units = _units(files, seed)
    tally = _Tally(units, fractions, min_eval_recordings, seed)
    for unit in _place_from_ledger(units, ledger or {}, tally, log):
        tally.put(unit, tally.split_for_new(unit))
    _restore_minimums(units, tally, log)
    _log_joined_units(units, log)
    _log_too_few_to_evaluate(files, tally, background, log)

    split_of = {r: unit.split for unit in units for r in unit.recordings}
    files["split"] = files["recording_id"].map(split_of)
    files["species"] = species_column(files["label"], background)
    return files[SPLIT_COLUMNS]
