"""A split's files as tables: one split's rows with their classes, background rows and multi-hot targets.

What training and evaluation both read of split.tsv and labels.tsv; free of
TensorFlow.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from jibjib.features.files import feature_path


def split_files(split_tsv: str | os.PathLike, labels_tsv: str | os.PathLike,
                features_dir: str | os.PathLike, split: str) -> pd.DataFrame:
    """Rows of one split: path, label, recording_id, feature, class_ids, class_id (sorted by path).

    `class_ids` holds the classes a file's `species` (comma-separated, from
    split.tsv) name: one for a species folder, several for a folder naming
    several species, none for a background folder. `class_id` is the one class
    of a single-species file and -1 otherwise. A split.tsv without a `species`
    column (written before background folders existed) reads its `label`.
    """
    table = pd.read_csv(split_tsv, sep="\t", dtype=str, keep_default_na=False)
    labels = pd.read_csv(labels_tsv, sep="\t", keep_default_na=False)
    class_of = dict(zip(labels["label"].astype(str), labels["class_id"].astype(int)))
    rows = table[table["split"] == split].copy()
    species = rows["species"] if "species" in rows else rows["label"]
    rows["feature"] = [feature_path(features_dir, p) for p in rows["path"]]
    rows["class_ids"] = [tuple(class_of[name] for name in names.split(",") if name) for names in species]
    rows["class_id"] = [ids[0] if len(ids) == 1 else -1 for ids in rows["class_ids"]]
    return rows.sort_values("path", kind="stable").reset_index(drop=True)


def background_rows(files: pd.DataFrame) -> np.ndarray:
    """Which rows of `split_files` are background files (no species)."""
    return (files["class_ids"].map(len) == 0).to_numpy()


def target_matrix(class_ids: "pd.Series | list[tuple[int, ...]]", n_classes: int) -> np.ndarray:
    """(files, n_classes) float32 multi-hot targets; a background file's row is all zero."""
    targets = np.zeros((len(class_ids), n_classes), np.float32)
    for row, ids in enumerate(class_ids):
        targets[row, list(ids)] = 1.0
    return targets
