"""Streaming training input: tf.data pipelines that read the per-file npz lazily.

Only the list of file names is held in memory; patches are read by parallel
workers, mixed in a fixed-size shuffle buffer, augmented (jibjib.training.augment)
and prefetched, so memory does not grow with the number of files (the old code
loaded every patch up front).
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
from .params import VGGISH, FrontEnd
from .training.augment import Augmentation, augment_example, mixup_batch

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


def background_rows(files: pd.DataFrame) -> np.ndarray:
    """Which rows of `split_files` are background files (no species)."""
    return (files["class_ids"].map(len) == 0).to_numpy()


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


def examples_per_file(stamps: list[FeatureStamp], seq_len: int | None = None, short: str = "pad",
                      patch_frames: int = VGGISH.patch_frames) -> np.ndarray:
    """Training examples each file gives: patches (seq_len None, VGGish) or sequences of seq_len patches."""
    patches = np.array([stamp.frames // patch_frames for stamp in stamps], dtype=int)
    if seq_len is None:
        return patches
    return np.array([sequence_count(n, seq_len, short) for n in patches], dtype=int)


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


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """What the training input cuts, targets and augments (one model's settings)."""

    n_classes: int
    seq_len: int | None = None  # None: single patches (VGGish); else sequences of seq_len patches (ConvLSTM)
    short_files: str = "pad"
    multi_label: bool = False
    label_smoothing: float = 0.0
    class_balance: str = "weights"  # or "sampling": files drawn so every class gives as many examples
    shuffle_buffer: int = 4096
    augmentation: Augmentation = Augmentation(enabled=False)
    frontend: FrontEnd = VGGISH

    @property
    def unit_patches(self) -> int:
        return self.seq_len or 1


def file_targets(files: pd.DataFrame, spec: InputSpec) -> np.ndarray:
    """(files, classes) training targets before smoothing and mixup.

    Sigmoid outputs: multi-hot, all zero for a background file. Softmax: the
    file's class, and for a background file the uniform distribution over the
    species (Outlier Exposure): the model learns to spread its belief when it
    hears no bird, so no species reaches its threshold there.
    """
    targets = target_matrix(files["class_ids"], spec.n_classes)
    if not spec.multi_label:
        totals = targets.sum(axis=1, keepdims=True)
        targets = np.where(totals > 0, targets / np.maximum(totals, 1.0), 1.0 / spec.n_classes).astype(np.float32)
    return targets


def balanced_draw_weights(files: pd.DataFrame, examples: np.ndarray) -> np.ndarray:
    """Draw probability per file that gives every stratum (species, species set, background) equal examples.

    A file is drawn with probability proportional to 1 / (examples of its
    stratum): each stratum then yields the same number of examples in
    expectation, however many and however long its files.
    """
    strata = files["class_ids"].map(lambda ids: ",".join(map(str, ids)))
    totals = pd.Series(examples, index=files.index, dtype=float).groupby(strata).transform("sum").to_numpy()
    weights = np.where(totals > 0, 1.0 / np.maximum(totals, 1.0), 0.0)
    return weights / weights.sum()


def _load_units(path: bytes, seed: int, unit: int, short: str, random_offset: bool, tile: bool,
                patch_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """(k, unit, patch_frames, bands) examples of one file and their (k, unit) mask.

    With `random_offset` the patch grid starts at a random frame (seeded) in
    the first patch, as far as the file leaves room. `tile` repeats a short
    file until it fills one unit (for background recordings, which must not
    bring padding into a mix).
    """
    with np.load(path.decode(), allow_pickle=False) as z:
        log_mel = z["log_mel"]
    if tile and log_mel.shape[0] < unit * patch_frames:
        log_mel = np.tile(log_mel, (-(-unit * patch_frames // log_mel.shape[0]), 1))
    spare = log_mel.shape[0] - patch_frames
    if random_offset and spare > 0:
        offset = int(np.random.default_rng(seed & 0x7FFFFFFFFFFFFFFF).integers(0, min(patch_frames, spare + 1)))
        log_mel = log_mel[offset:]
    n = log_mel.shape[0] // patch_frames
    patches = log_mel[: n * patch_frames].reshape(n, patch_frames, log_mel.shape[1])
    return to_sequences(patches, unit, "skip" if tile else short)


def _seed_pairs(seed: int, rerandomize: bool) -> tf.data.Dataset:
    """An endless stream of stateless-op seeds (shape [2]), new each epoch when `rerandomize`."""
    return tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=rerandomize).batch(2)


def _read(paths: np.ndarray, targets: np.ndarray, spec: InputSpec, random_offset: bool, tile: bool):
    unit, frames, bands = spec.unit_patches, spec.frontend.patch_frames, spec.frontend.mel_bands
    paths, targets = tf.constant(paths), tf.constant(targets)

    def read(index: tf.Tensor, seed: tf.Tensor):
        units, mask = tf.numpy_function(
            lambda p, s: _load_units(p, int(s), unit, spec.short_files, random_offset, tile, frames),
            [tf.gather(paths, index), seed[0]], (tf.float32, tf.bool))
        units.set_shape([None, unit, frames, bands])
        mask.set_shape([None, unit])
        target = tf.tile(tf.gather(targets, index)[None], [tf.shape(units)[0], 1])
        return tf.data.Dataset.from_tensor_slices((units, mask, target))

    return read


def training_dataset(files: pd.DataFrame, spec: InputSpec, batch_size: int, training: bool,
                     seed: int = 0) -> tf.data.Dataset:
    """Batches of (inputs, targets (B, classes) float32) from a split's files.

    Inputs are patches (B, patch_frames, bands) for VGGish, or {"patches":
    (B, seq_len, patch_frames, bands), "mask": (B, seq_len)} for the ConvLSTM.
    Only the list of files is held in memory: files are read by parallel
    workers in a seeded order (reshuffled each epoch when `training`), their
    examples mixed in a fixed-size shuffle buffer. With `training` the
    augmentation of `spec` applies (background recordings are the split's
    files without a species), and `class_balance: sampling` draws files with
    replacement so that every class gives the same number of examples; without
    it every example comes once, unchanged, in file order.
    """
    aug = spec.augmentation.active() if training else Augmentation(enabled=False).active()
    paths = files["feature"].to_numpy(str)
    targets = file_targets(files, spec)
    n = len(files)
    order = tf.data.Dataset.range(n)
    if training and spec.class_balance == "sampling":
        examples = examples_per_file([feature_stamp(f) for f in paths], spec.seq_len, spec.short_files,
                                     spec.frontend.patch_frames)
        cdf = tf.constant(np.cumsum(balanced_draw_weights(files, examples)), tf.float64)
        draws = tf.data.Dataset.random(seed=seed + 1, rerandomize_each_iteration=True).take(n)
        # Dataset.random gives 32 random bits per element.
        order = draws.map(lambda r: tf.minimum(
            tf.searchsorted(cdf, [tf.cast(r % (1 << 32), tf.float64) / float(1 << 32)], side="right")[0], n - 1))
    elif training:
        order = order.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    ds = tf.data.Dataset.zip(order, _seed_pairs(seed + 2, training))
    ds = ds.interleave(_read(paths, targets, spec, aug.random_offsets, tile=False),
                       num_parallel_calls=AUTOTUNE, deterministic=True)
    if training:
        ds = ds.shuffle(spec.shuffle_buffer, seed=seed + 3, reshuffle_each_iteration=True)
        background = _background_stream(files, targets, spec, aug, seed)
        if background is not None:
            ds = tf.data.Dataset.zip(ds, background, _seed_pairs(seed + 4, True)).map(
                lambda example, bg, s: _augment(example, bg, s, aug, spec),
                num_parallel_calls=AUTOTUNE, deterministic=True)
        elif aug.changes_examples:
            ds = tf.data.Dataset.zip(ds, _seed_pairs(seed + 4, True)).map(
                lambda example, s: _augment(example, None, s, aug, spec),
                num_parallel_calls=AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size)
    if training and aug.mixup_probability > 0:
        ds = tf.data.Dataset.zip(ds, _seed_pairs(seed + 5, True)).map(
            lambda batch, s: _mixup(batch, s, aug), num_parallel_calls=AUTOTUNE, deterministic=True)
    smoothing = spec.label_smoothing if training else 0.0
    ds = ds.map(lambda units, mask, target: _model_io(units, mask, target, spec, smoothing))
    return ds.prefetch(AUTOTUNE)


def _background_stream(files: pd.DataFrame, targets: np.ndarray, spec: InputSpec, aug: Augmentation,
                       seed: int) -> tf.data.Dataset | None:
    """Endless random background units (from the files without a species), or None if there are none."""
    is_background = background_rows(files)
    if aug.background_probability <= 0 or not is_background.any():
        return None
    paths = files["feature"].to_numpy(str)[is_background]
    order = tf.data.Dataset.range(len(paths)).shuffle(len(paths), seed=seed + 6, reshuffle_each_iteration=True)
    ds = tf.data.Dataset.zip(order.repeat(), _seed_pairs(seed + 7, True))
    ds = ds.interleave(_read(paths, targets[is_background], spec, True, tile=True),
                       num_parallel_calls=AUTOTUNE, deterministic=True)
    return ds.shuffle(256, seed=seed + 8, reshuffle_each_iteration=True).map(lambda units, mask, target: units)


def _augment(example, background, seed, aug: Augmentation, spec: InputSpec):
    units, mask, target = example
    return augment_example(units, background, seed, aug, spec.frontend), mask, target


def _mixup(batch, seed, aug: Augmentation):
    units, mask, target = batch
    mixed_units, mixed_target = mixup_batch(units, target, seed, aug.mixup_probability, aug.mixup_alpha)
    partner_mask = tf.roll(mask, shift=1, axis=0)
    return mixed_units, mask | partner_mask, mixed_target


def _model_io(units, mask, target, spec: InputSpec, smoothing: float):
    if smoothing > 0:
        share = 0.5 if spec.multi_label else 1.0 / spec.n_classes
        target = target * (1.0 - smoothing) + smoothing * share
    if spec.seq_len is None:
        return units[:, 0], target
    return {"patches": units, "mask": mask}, target
