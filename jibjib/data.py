"""Streaming training input: tf.data pipelines that read the per-file npz lazily.

Only the list of file names is held in memory; patches are read by parallel
workers, mixed in a fixed-size shuffle buffer and prefetched, so memory does not
grow with the number of files (the old code loaded every patch up front).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf

from .params import VGGISH

AUTOTUNE = tf.data.AUTOTUNE


def feature_path(features_dir: str | os.PathLike, path: str) -> str:
    """The npz of a `split.tsv` path (relative to data_dir): <features_dir>/<label>/<stem>.npz."""
    return str(Path(features_dir) / Path(path).with_suffix(".npz"))


def split_files(split_tsv: str | os.PathLike, labels_tsv: str | os.PathLike,
                features_dir: str | os.PathLike, split: str) -> pd.DataFrame:
    """Rows of one split: path, label, recording_id, feature, class_id (sorted by path)."""
    table = pd.read_csv(split_tsv, sep="\t", dtype=str, keep_default_na=False)
    labels = pd.read_csv(labels_tsv, sep="\t", keep_default_na=False)
    class_of = dict(zip(labels["label"].astype(str), labels["class_id"].astype(int)))
    rows = table[table["split"] == split].copy()
    rows["feature"] = [feature_path(features_dir, p) for p in rows["path"]]
    rows["class_id"] = rows["label"].map(class_of).astype(int)
    return rows.sort_values("path", kind="stable").reset_index(drop=True)


def load_patches(npz: str | bytes, patch_frames: int = VGGISH.patch_frames) -> np.ndarray:
    """Non-overlapping (patch_frames, bands) patches of one file; a partial tail is dropped."""
    with np.load(npz.decode() if isinstance(npz, bytes) else npz, allow_pickle=False) as z:
        log_mel = z["log_mel"]
    n = log_mel.shape[0] // patch_frames
    return log_mel[: n * patch_frames].reshape(n, patch_frames, log_mel.shape[1])


def class_weights(class_ids: np.ndarray, n_classes: int) -> dict[int, float]:
    """Inverse-frequency weights averaging 1 over the examples (absent classes get 1)."""
    counts = np.bincount(class_ids, minlength=n_classes).astype(float)
    weights = np.where(counts > 0, counts.sum() / (n_classes * np.maximum(counts, 1)), 1.0)
    return {c: float(w) for c, w in enumerate(weights)}


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
    if n < seq_len and short == "skip":
        return np.zeros((0, seq_len, *patches.shape[1:]), np.float32), np.zeros((0, seq_len), bool)
    k = max(1, -(-n // seq_len))
    if n > seq_len and n % seq_len and short == "skip":
        k = n // seq_len  # with skip, the short remainder is dropped like a short file
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
