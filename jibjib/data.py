"""Streaming training input: tf.data pipelines that read the per-file npz lazily.

Only the list of file names is held in memory; patches are read by parallel
workers, mixed in a fixed-size shuffle buffer and prefetched, so memory does not
grow with the number of files (the old code loaded every patch up front).
"""

from __future__ import annotations

import dataclasses
import os
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf

from . import fsutil
from .params import VGGISH

AUTOTUNE = tf.data.AUTOTUNE


def feature_path(features_dir: str | os.PathLike, path: str) -> str:
    """The npz of a `split.tsv` path (relative to data_dir): <features_dir>/<label>/<stem>.npz."""
    return str(Path(features_dir) / Path(path).with_suffix(".npz"))


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


def target_matrix(class_ids: "pd.Series | list[tuple[int, ...]]", n_classes: int) -> np.ndarray:
    """(files, n_classes) float32 multi-hot targets; a background file's row is all zero."""
    targets = np.zeros((len(class_ids), n_classes), np.float32)
    for row, ids in enumerate(class_ids):
        targets[row, list(ids)] = 1.0
    return targets


def load_patches(npz: str | bytes, patch_frames: int = VGGISH.patch_frames) -> np.ndarray:
    """Non-overlapping (patch_frames, bands) patches of one file; a partial tail is dropped."""
    with np.load(npz.decode() if isinstance(npz, bytes) else npz, allow_pickle=False) as z:
        log_mel = z["log_mel"]
    n = log_mel.shape[0] // patch_frames
    return log_mel[: n * patch_frames].reshape(n, patch_frames, log_mel.shape[1])


@dataclasses.dataclass(frozen=True)
class FeatureStamp:
    """What training needs to know about one npz without reading its log-mel."""

    frames: int
    content: str  # source SHA-256 and front-end fingerprint; the npz's own hash if it records neither


def feature_stamp(npz: str | os.PathLike) -> FeatureStamp:
    """Frames and content identity of a feature file, from its array headers and small members.

    The feature step stores the source file's SHA-256 and the front end's
    fingerprint in every npz; together (with the jibjib version) they
    determine the log-mel, so the log-mel itself need not be read or hashed.
    """
    with zipfile.ZipFile(npz) as archive:
        with archive.open("log_mel.npy") as member:
            version = np.lib.format.read_magic(member)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape = read_header(member)[0]

        def member(name: str) -> str | None:
            if f"{name}.npy" not in archive.namelist():
                return None
            with archive.open(f"{name}.npy") as f:
                return str(np.lib.format.read_array(f, allow_pickle=False))

        source, frontend = member("source_sha256"), member("frontend")
    content = f"{source}/{frontend}" if source and frontend else fsutil.sha256_file(npz)
    return FeatureStamp(int(shape[0]), content)


def sequence_count(n_patches: int, seq_len: int, short: str = "pad") -> int:
    """How many sequences `to_sequences` cuts from a file of `n_patches` patches."""
    if short == "skip":
        return n_patches // seq_len
    return max(1, -(-n_patches // seq_len))


def class_weights(example_counts: np.ndarray) -> np.ndarray:
    """Inverse-frequency weight of each class, from its number of training examples.

    Examples are what the loss averages over (patches for VGGish, sequences
    for the ConvLSTM), so they are counted, not files: a class of long
    recordings would otherwise be weighted as if it were rare. The weights
    average 1 over the training examples; a class without examples gets 1.
    """
    counts = np.asarray(example_counts, dtype=float)
    present = max(int((counts > 0).sum()), 1)
    return np.where(counts > 0, counts.sum() / (present * np.maximum(counts, 1)), 1.0)


def _stream(files: pd.DataFrame, read, batch_size: int, shuffle: bool, seed: int,
            shuffle_buffer: int) -> tf.data.Dataset:
    """Files (shuffled each epoch) -> `read` in parallel -> examples -> shuffle buffer -> batches."""
    ds = tf.data.Dataset.from_tensor_slices((files["feature"].to_numpy(str), files["class_id"].to_numpy(np.int32)))
    if shuffle:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(read, num_parallel_calls=AUTOTUNE, deterministic=not shuffle).unbatch()
    if shuffle:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(AUTOTUNE)


def patch_dataset(
    files: pd.DataFrame,
    batch_size: int,
    shuffle: bool = True,
    seed: int = 0,
    shuffle_buffer: int = 4096,
    patch_frames: int = VGGISH.patch_frames,
    bands: int = VGGISH.mel_bands,
) -> tf.data.Dataset:
    """(patches (B, patch_frames, bands), class ids (B,)) for the VGGish classifier."""

    def read(path: tf.Tensor, class_id: tf.Tensor):
        patches = tf.numpy_function(lambda p: load_patches(p, patch_frames), [path], tf.float32)
        patches.set_shape([None, patch_frames, bands])
        return patches, tf.fill([tf.shape(patches)[0]], class_id)

    return _stream(files, read, batch_size, shuffle, seed, shuffle_buffer)


def to_sequences(patches: np.ndarray, seq_len: int, short: str = "pad") -> tuple[np.ndarray, np.ndarray]:
    """Cut one file's patches into (k, seq_len, ...) sequences and a (k, seq_len) mask.

    Files shorter than `seq_len` are zero-padded with the padding masked out
    (`short="pad"`) or give no sequence (`short="skip"`); longer files give one
    sequence per `seq_len` patches, the remainder padded.
    """
    n = patches.shape[0]
    # With skip, a short remainder is dropped like a short file.
    k = sequence_count(n, seq_len, short)
    padded = np.zeros((k * seq_len, *patches.shape[1:]), np.float32)
    used = min(n, k * seq_len)
    padded[:used] = patches[:used]
    mask = np.zeros(k * seq_len, bool)
    mask[:used] = True
    return padded.reshape(k, seq_len, *patches.shape[1:]), mask.reshape(k, seq_len)


def sequence_dataset(
    files: pd.DataFrame,
    batch_size: int,
    seq_len: int = 10,
    short: str = "pad",
    shuffle: bool = True,
    seed: int = 0,
    shuffle_buffer: int = 512,
    patch_frames: int = VGGISH.patch_frames,
    bands: int = VGGISH.mel_bands,
) -> tf.data.Dataset:
    """({"patches": (B, seq_len, patch_frames, bands), "mask": (B, seq_len)}, class ids) for the ConvLSTM."""

    def load(path: bytes) -> tuple[np.ndarray, np.ndarray]:
        return to_sequences(load_patches(path, patch_frames), seq_len, short)

    def read(path: tf.Tensor, class_id: tf.Tensor):
        seqs, mask = tf.numpy_function(load, [path], (tf.float32, tf.bool))
        seqs.set_shape([None, seq_len, patch_frames, bands])
        mask.set_shape([None, seq_len])
        return {"patches": seqs, "mask": mask}, tf.fill([tf.shape(seqs)[0]], class_id)

    return _stream(files, read, batch_size, shuffle, seed, shuffle_buffer)
