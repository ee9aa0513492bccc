"""Call windows: which examples of a split's files are cut, which take their file's label, and their weights.

A focal file is labelled as a whole; with `train.call_windows: activity`
only its active windows (jibjib.features.activity: a patch whose activity
score reaches `train.activity_threshold_db`) are its species. Its inactive
windows are dropped, or kept as weak negatives (no species, loss weight
`train.inactive_weight`) with `train.inactive_windows: negative`. Files
without a species (background) give every window of their grid as negatives,
as before. With `call_windows: all` every window takes its file's label.

Examples are single patches (VGGish) or sequences of `seq_len` patches
(ConvLSTM). With activity a species file's sequences are cut on its active
stretches: a sequence starts at each active patch not yet inside a sequence
and takes the next seq_len patches; the patches between are cut into
inactive sequences from where the last active one ended. A sequence is
active when it starts at an active patch. With `all` the grid is the plain
one (sequence k starts at patch k x seq_len).
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pandas as pd

from jibjib.core.settings import TrainSettings
from jibjib.features.activity import patch_activity
from jibjib.features.files import FeatureStamp
from jibjib.labels.tables import target_matrix
from jibjib.packing import PackedFeatures


@dataclasses.dataclass(frozen=True)
class WindowRule:
    """train.call_windows and its settings, as the inputs and the evaluation apply them."""

    call_windows: str  # activity | all
    threshold_db: float
    inactive: str  # drop | negative
    inactive_weight: float

    @classmethod
    def of(cls, train: TrainSettings) -> "WindowRule":
        """The rule of a run's `train` settings."""
        return cls(train.call_windows, train.activity_threshold_db, train.inactive_windows, train.inactive_weight)

    @classmethod
    def every_window(cls) -> "WindowRule":
        """call_windows all: every window takes its file's label (the labels before call windows existed)."""
        return cls("all", 0.0, "drop", 1.0)

    @property
    def uses_activity(self) -> bool:
        return self.call_windows == "activity"

    @property
    def weighs(self) -> bool:
        """Whether examples carry loss weights other than 1 (weak negatives)."""
        return self.uses_activity and self.inactive == "negative" and self.inactive_weight != 1.0

    def describe(self) -> str:
        """One line for metrics.json and train.json: which window labels were used."""
        if not self.uses_activity:
            return "all: every window takes its file's label"
        return (f"activity: a window of a species file is that species when its activity score reaches "
                f"{self.threshold_db:g} dB; inactive windows " + (
                    "dropped" if self.inactive == "drop" else f"are weak negatives (weight {self.inactive_weight:g})"))


def file_activity(files: pd.DataFrame, packs: PackedFeatures | None = None) -> list[np.ndarray]:
    """Each file's patch activity scores: from the packed index if given (a shard packed before the scores,
    or by another activity method, is scored from its own rows), else from its npz (one read of the log-mel)."""
    if packs is not None:
        return packs.locate_activity(files["path"])
    out = []
    for feature in files["feature"]:
        with np.load(feature, allow_pickle=False) as z:
            out.append(patch_activity(z["log_mel"]))
    return out


def cut_file(n_patches: int, unit: int, short: str, active: np.ndarray | None) -> tuple[np.ndarray, ...]:
    """(first patch, real patches, active) of each example of one file of `n_patches` patches.

    `active` None: the plain grid, every example active. Else sequences are
    cut on the active stretches (the module's docstring). With `short`
    "skip" an example of fewer than `unit` patches is left out (except a
    single patch, unit 1, which is always whole).
    """
    if active is None:
        k = n_patches // unit if short == "skip" else -(-n_patches // unit)
        first = np.arange(k) * unit
        return first, np.minimum(unit, n_patches - first), np.ones(k, bool)
    firsts, flags = [], []
    i = 0
    while i < n_patches:
        if active[i]:
            firsts.append(i)
            flags.append(True)
            i += unit
            continue
        stop = i
        while stop < n_patches and not active[stop]:
            stop += 1
        for start in range(i, stop, unit):
            firsts.append(start)
            flags.append(False)
        i = stop
    first = np.array(firsts, np.int64)
    # An inactive run's last sequence ends where the next active patch starts.
    ends = np.minimum(first + unit, n_patches)
    flag = np.array(flags, bool)
    nxt = np.r_[first[1:], n_patches]
    ends = np.where(flag, ends, np.minimum(ends, nxt))
    valid = ends - first
    keep = valid == unit if short == "skip" else valid > 0
    return first[keep], valid[keep], flag[keep]


@dataclasses.dataclass(frozen=True)
class WindowExamples:
    """Every example of a split: its file, first patch, real patches, whether it takes its file's label, and
    its loss weight. `labelled` false: a weak negative (no species)."""

    file: np.ndarray
    first: np.ndarray
    valid: np.ndarray
    labelled: np.ndarray
    weight: np.ndarray

    def __len__(self) -> int:
        return len(self.file)

    def per_file(self, n_files: int) -> np.ndarray:
        return np.bincount(self.file, minlength=n_files)

    def digest(self, *others: "WindowExamples") -> str:
        """SHA-256 of these examples (and `others`'): where each is cut, its label and weight."""
        sha = hashlib.sha256()
        for examples in (self, *others):
            for part in (examples.file, examples.first, examples.valid, examples.labelled, examples.weight):
                sha.update(np.ascontiguousarray(part).tobytes())
            sha.update(b"|")
        return sha.hexdigest()


def window_examples(files: pd.DataFrame, stamps: list[FeatureStamp], activity: list[np.ndarray] | None,
                    unit: int, short: str, rule: WindowRule, patch_frames: int) -> WindowExamples:
    """The examples of `files` under `rule` (activity: each file's patch scores; needed with call_windows
    activity)."""
    species = np.array([len(ids) > 0 for ids in files["class_ids"]], bool)
    parts = []
    for i, stamp in enumerate(stamps):
        n = stamp.frames // patch_frames
        active = None
        if rule.uses_activity and species[i]:
            active = np.asarray(activity[i][:n]) >= rule.threshold_db
        first, valid, flag = cut_file(n, unit, short, active)
        if rule.inactive == "drop":
            first, valid, flag = first[flag], valid[flag], flag[flag]
        weight = np.where(flag, 1.0, rule.inactive_weight).astype(np.float32)
        parts.append((np.full(len(first), i, np.int32), first, valid, flag, weight))
    if not parts:
        return WindowExamples(*(np.zeros(0, t) for t in (np.int32, np.int64, np.int64, bool, np.float32)))
    return WindowExamples(*(np.concatenate(p) for p in zip(*parts)))


def negative_target(n_classes: int, multi_label: bool) -> np.ndarray:
    """The target of a window without a species: all zero (sigmoid), uniform (softmax, as background files)."""
    return np.full(n_classes, 0.0 if multi_label else 1.0 / n_classes, np.float32)


def class_examples(files: pd.DataFrame, examples: WindowExamples, n_classes: int) -> np.ndarray:
    """Labelled examples per class (a multi-species file's counts for each of its species)."""
    counts = np.bincount(examples.file[examples.labelled], minlength=len(files))
    return (target_matrix(files["class_ids"], n_classes) * counts[:, None]).sum(axis=0)
