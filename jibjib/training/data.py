"""What a run trains on: its classes and the train and val files of split.tsv, checked, with their stamps
and (with train.call_windows activity) their patches' activity scores."""

from __future__ import annotations

import dataclasses
import os

import pandas as pd

from jibjib.core.errors import LabelError
from jibjib.core.settings import RunSettings
from jibjib.features.files import FeatureStamp
from jibjib.labels.tables import background_rows, split_files
from jibjib.packing import PackedFeatures
from jibjib.training.examples import file_stamps
from jibjib.training.windows import WindowRule, file_activity


@dataclasses.dataclass(frozen=True, eq=False)
class TrainingData:
    """The classes (labels.tsv order), the train and val files (`split_files` rows) and their feature stamps."""

    classes: list[str]
    train_files: pd.DataFrame
    val_files: pd.DataFrame
    train_stamps: list[FeatureStamp]
    val_stamps: list[FeatureStamp]
    packs: PackedFeatures | None  # the packed features, when the examples are read from them
    # Each file's patch activity (jibjib.features.activity); None with train.call_windows all.
    train_activity: list | None = None
    val_activity: list | None = None

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def files(self) -> pd.DataFrame:
        """Train then val files."""
        return pd.concat([self.train_files, self.val_files])

    @property
    def stamps(self) -> list[FeatureStamp]:
        return self.train_stamps + self.val_stamps

    @property
    def source(self) -> str:
        """Where the examples are read from: "packed" features or each file's "npz"."""
        return "packed" if self.packs is not None else "npz"


def load_data(run: RunSettings, split_tsv: str | os.PathLike, labels_tsv: str | os.PathLike,
              features_dir: str | os.PathLike, packed: list[str | os.PathLike] | None) -> TrainingData:
    """The run's classes and files; refuses files of several species under softmax, and an empty train split."""
    labels = pd.read_csv(labels_tsv, sep="\t", keep_default_na=False)
    train_files = split_files(split_tsv, labels_tsv, features_dir, "train")
    val_files = split_files(split_tsv, labels_tsv, features_dir, "val")
    several = sorted({path for f in (train_files, val_files) for path, ids in zip(f["path"], f["class_ids"])
                      if len(ids) > 1})
    if several and not run.net.multi_label:
        raise LabelError(f"a softmax model has one species per file, but {len(several)} of the files name several "
                         f"({several[0]}, ...); set multi_label: true")
    if not run.train.use_background:
        train_files, val_files = (f[~background_rows(f)].reset_index(drop=True) for f in (train_files, val_files))
    if train_files.empty:
        raise ValueError(f"{split_tsv} has no training files")
    packs = PackedFeatures.open(packed) if packed else None
    train_stamps, val_stamps = (file_stamps(f, packs) for f in (train_files, val_files))
    activity = ([file_activity(f, packs) for f in (train_files, val_files)] if WindowRule.of(run.train).uses_activity
                else [None, None])
    return TrainingData(labels["label"].astype(str).tolist(), train_files, val_files, train_stamps, val_stamps,
                        packs, *activity)
