"""Streaming training input: tf.data pipelines that read the per-file npz lazily.

Only the list of file names is held in memory; patches are read by parallel
workers, mixed in a fixed-size shuffle buffer, augmented (jibjib.training.augment)
and prefetched, so memory does not grow with the number of files (the old code
loaded every patch up front).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf

from jibjib.features.files import FeatureStamp, feature_path, feature_stamp  # noqa: F401 - re-exported
from jibjib.core.params import VGGISH, FrontEnd
from jibjib.packing import PackedFeatures
from jibjib.training.augment import Augmentation, augment_batch, mixup_batch

AUTOTUNE = tf.data.AUTOTUNE
READ_EXAMPLES = 256  # examples read and augmented together (a multiple of the batch)


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


def file_stamps(files: pd.DataFrame, packs: PackedFeatures | None = None) -> list[FeatureStamp]:
    """Frames and content of each file: from the packs' index if given (no npz is opened), else from the npz."""
    if packs is None:
        return [feature_stamp(f) for f in files["feature"]]
    where = packs.locate(files["path"])
    return [FeatureStamp(int(n), c) for n, c in zip(where["frames"], where["content"])]


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


def seed_pairs(seed: int, rerandomize: bool) -> tf.data.Dataset:
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
                     seed: int = 0, packs: PackedFeatures | None = None) -> tf.data.Dataset:
    """Batches of (inputs, targets (B, classes) float32) from a split's files.

    Inputs are patches (B, patch_frames, bands) for VGGish, or {"patches":
    (B, seq_len, patch_frames, bands), "mask": (B, seq_len)} for the ConvLSTM.
    With `packs` (jibjib.packed) examples are gathered from the packed
    features, a whole batch per read, in an exact shuffle of all examples of
    the split; without, each file's npz is read by parallel workers in a
    seeded order and its examples mixed in a fixed-size shuffle buffer.
    Either way memory does not grow with the corpus beyond a few numbers per
    example. With `training` the examples are reshuffled each epoch and the
    augmentation of `spec` applies (background recordings are the split's
    files without a species); `class_balance: sampling` draws examples with
    replacement so that every class gives the same number. Without
    `training` every example comes once, unchanged, in file order.
    """
    aug = spec.augmentation.active() if training else Augmentation(enabled=False).active()
    targets = file_targets(files, spec)
    # Read and augment several batches at once, then split them: fewer, larger ops per example.
    read_size = batch_size * max(1, READ_EXAMPLES // batch_size)
    if packs is not None:
        ds = _packed_batches(files, targets, packs, spec, aug, read_size, training, seed)
    else:
        ds = _npz_batches(files, targets, spec, aug, read_size, training, seed)
    if training and (aug.background_probability > 0 and background_rows(files).any() or aug.changes_examples):
        ds = tf.data.Dataset.zip(ds, seed_pairs(seed + 4, True)).map(
            lambda batch, s: _augment(batch, s, aug, spec), num_parallel_calls=AUTOTUNE, deterministic=True)
    if training and aug.mixup_probability > 0:
        ds = tf.data.Dataset.zip(ds, seed_pairs(seed + 5, True)).map(
            lambda batch, s: _mixup(batch, s, aug), num_parallel_calls=AUTOTUNE, deterministic=True)
    smoothing = spec.label_smoothing if training else 0.0
    ds = ds.map(lambda batch: _model_io(batch, spec, smoothing))
    if read_size != batch_size:
        ds = ds.rebatch(batch_size)
    return ds.prefetch(AUTOTUNE)


def _npz_batches(files: pd.DataFrame, targets: np.ndarray, spec: InputSpec, aug: Augmentation, batch_size: int,
                 training: bool, seed: int) -> tf.data.Dataset:
    """Batches {units, mask, target[, background]} read file by file from the npz."""
    paths = files["feature"].to_numpy(str)
    n = len(files)
    order = tf.data.Dataset.range(n)
    if training and spec.class_balance == "sampling":
        examples = examples_per_file([feature_stamp(f) for f in paths], spec.seq_len, spec.short_files,
                                     spec.frontend.patch_frames)
        order = _weighted_draws(balanced_draw_weights(files, examples), n, seed + 1)
    elif training:
        order = order.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    ds = tf.data.Dataset.zip(order, seed_pairs(seed + 2, training))
    ds = ds.interleave(_read(paths, targets, spec, aug.random_offsets, tile=False),
                       num_parallel_calls=AUTOTUNE, deterministic=True)
    if training:
        ds = ds.shuffle(spec.shuffle_buffer, seed=seed + 3, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).map(lambda units, mask, target: {"units": units, "mask": mask, "target": target})
    background = _npz_background(files, targets, spec, aug, seed) if training else None
    if background is None:
        return ds
    return tf.data.Dataset.zip(ds, background.batch(batch_size)).map(
        lambda batch, bg: {**batch, "background": bg[: tf.shape(batch["units"])[0]]})


def _weighted_draws(weights: np.ndarray, count: int, seed: int) -> tf.data.Dataset:
    """`count` indices drawn with replacement by `weights` (summing to 1), new each epoch."""
    cdf = tf.constant(np.cumsum(weights), tf.float64)
    draws = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).take(count)
    # Dataset.random gives 32 random bits per element.
    return draws.map(lambda r: tf.minimum(
        tf.searchsorted(cdf, [tf.cast(r % (1 << 32), tf.float64) / float(1 << 32)], side="right")[0],
        len(weights) - 1))


def _npz_background(files: pd.DataFrame, targets: np.ndarray, spec: InputSpec, aug: Augmentation,
                    seed: int) -> tf.data.Dataset | None:
    """Endless random background units (from the files without a species), or None if there are none."""
    is_background = background_rows(files)
    if aug.background_probability <= 0 or not is_background.any():
        return None
    paths = files["feature"].to_numpy(str)[is_background]
    order = tf.data.Dataset.range(len(paths)).shuffle(len(paths), seed=seed + 6, reshuffle_each_iteration=True)
    ds = tf.data.Dataset.zip(order.repeat(), seed_pairs(seed + 7, True))
    ds = ds.interleave(_read(paths, targets[is_background], spec, True, tile=True),
                       num_parallel_calls=AUTOTUNE, deterministic=True)
    return ds.shuffle(256, seed=seed + 8, reshuffle_each_iteration=True).map(lambda units, mask, target: units)


@dataclasses.dataclass(frozen=True)
class PackedExamples:
    """Every example of a split in the packed features: where it starts and how many patches are real.

    A few numbers per example (the corpus's log-mel stays on disk): example e
    is `valid[e]` patches from row `start[e]` of array `array[e]`, belonging
    to file `file[e]`, whose rows end at `file_end[e]`.
    """

    array: np.ndarray
    start: np.ndarray
    valid: np.ndarray
    file: np.ndarray
    file_end: np.ndarray

    @classmethod
    def of(cls, files: pd.DataFrame, packs: PackedFeatures, spec: InputSpec) -> "PackedExamples":
        where = packs.locate(files["path"])
        frames = where["frames"].to_numpy(np.int64)
        unit_rows = spec.unit_patches * spec.frontend.patch_frames
        counts = examples_per_file([FeatureStamp(int(n), "") for n in frames], spec.seq_len, spec.short_files,
                                   spec.frontend.patch_frames)
        file = np.repeat(np.arange(len(files)), counts)
        first = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        k = np.arange(len(file)) - np.repeat(first, counts)  # the example's place in its file
        patches = frames // spec.frontend.patch_frames
        valid = np.minimum(spec.unit_patches, patches[file] - k * spec.unit_patches)
        rows = where["row"].to_numpy(np.int64)
        return cls(array=where["array"].to_numpy(np.int32)[file], start=rows[file] + k * unit_rows,
                   valid=np.maximum(valid, 0).astype(np.int32), file=file.astype(np.int32),
                   file_end=(rows + frames)[file])

    def __len__(self) -> int:
        return len(self.file)


def example_order(files: pd.DataFrame, example_file: np.ndarray, class_balance: str, training: bool,
                  seed: int) -> tf.data.Dataset:
    """The example indices (int64) of one epoch, example i belonging to file `example_file[i]` of `files`.

    Training: a permutation of every example, new each epoch (an exact
    shuffle across files), or with class_balance "sampling" as many draws in
    which every stratum is as likely as the others and every example of a
    stratum equally likely. Otherwise every example once, in order.
    """
    n = len(example_file)
    if training and class_balance == "sampling":
        weights = balanced_draw_weights(files, np.bincount(example_file, minlength=len(files)))[example_file]
        return _weighted_draws(weights / weights.sum(), n, seed + 1)
    if training:
        shuffled = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).take(1).flat_map(
            lambda s: tf.data.Dataset.from_tensor_slices(
                tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64), tf.stack([s, 0]))))
        # flat_map hides the length; said (and checked), Keras knows an epoch's steps and does not warn of
        # input that "ran out" at the end of every epoch.
        return shuffled.apply(tf.data.experimental.assert_cardinality(n))
    return tf.data.Dataset.range(n)


def _packed_batches(files: pd.DataFrame, targets: np.ndarray, packs: PackedFeatures, spec: InputSpec,
                    aug: Augmentation, batch_size: int, training: bool, seed: int) -> tf.data.Dataset:
    """Batches {units, mask, target[, background]} gathered from the packed features, one read call per batch."""
    examples = PackedExamples.of(files, packs, spec)
    order = example_order(files, examples.file, spec.class_balance, training, seed)
    background = None
    if training and aug.background_probability > 0 and background_rows(files).any():
        is_background = background_rows(files)
        where = packs.locate(files.loc[is_background, "path"])
        background = (where["array"].to_numpy(np.int32), where["row"].to_numpy(np.int64),
                      where["frames"].to_numpy(np.int64))
    gather = _PackedGather(packs, examples, background, spec, random_offsets=training and aug.random_offsets)
    targets = tf.constant(targets)
    file_of = tf.constant(examples.file)
    frames, bands = spec.frontend.patch_frames, packs.bands

    def read(ids: tf.Tensor, batch_seed: tf.Tensor) -> dict[str, tf.Tensor]:
        out = tf.numpy_function(gather, [ids, batch_seed],
                                (tf.float16, tf.bool, tf.float16) if background else (tf.float16, tf.bool))
        units = tf.cast(tf.ensure_shape(out[0], [None, spec.unit_patches, frames, bands]), tf.float32)
        batch = {"units": units, "mask": tf.ensure_shape(out[1], [None, spec.unit_patches]),
                 "target": tf.gather(targets, tf.gather(file_of, ids))}
        if background:
            batch["background"] = tf.cast(tf.ensure_shape(out[2], [None, spec.unit_patches, frames, bands]),
                                          tf.float32)
        return batch

    seeds = tf.data.Dataset.random(seed=seed + 2, rerandomize_each_iteration=training)
    return tf.data.Dataset.zip(order.batch(batch_size), seeds).map(
        read, num_parallel_calls=AUTOTUNE, deterministic=True)


class _PackedGather:
    """The numpy side of a packed batch: reads each example's rows from its pack into one buffer."""

    def __init__(self, packs: PackedFeatures, examples: PackedExamples,
                 background: tuple[np.ndarray, np.ndarray, np.ndarray] | None, spec: InputSpec,
                 random_offsets: bool) -> None:
        self.packs, self.examples, self.background = packs, examples, background
        self.unit, self.frames = spec.unit_patches, spec.frontend.patch_frames
        self.random_offsets = random_offsets

    def __call__(self, ids: np.ndarray, seed: np.ndarray) -> tuple[np.ndarray, ...]:
        ex, unit, frames, bands = self.examples, self.unit, self.frames, self.packs.bands
        rng = np.random.default_rng(int(seed) & 0x7FFFFFFFFFFFFFFF)
        count = len(ids)
        units = np.zeros((count, unit * frames, bands), np.float16)
        valid = ex.valid[ids]
        start = ex.start[ids]
        if self.random_offsets:
            # Up to one patch later, as far as the file leaves room after the example's real patches.
            room = np.minimum(frames - 1, ex.file_end[ids] - (start + valid * frames))
            start = start + (rng.random(count) * (np.maximum(room, 0) + 1)).astype(np.int64)
        for i, (array, row, patches) in enumerate(zip(ex.array[ids], start, valid)):
            self.packs.read(int(array), int(row), int(patches) * frames, units[i, : patches * frames])
        mask = np.arange(unit)[None, :] < valid[:, None]
        out = (units.reshape(count, unit, frames, bands), mask)
        if self.background is None:
            return out
        return (*out, self._background(rng, count))

    def _background(self, rng: np.random.Generator, count: int) -> np.ndarray:
        """`count` random stretches of background recordings, a unit long (a short recording repeated)."""
        arrays, rows, lengths = self.background
        need = self.unit * self.frames
        out = np.empty((count, need, self.packs.bands), np.float16)
        for i, pick in enumerate(rng.integers(0, len(arrays), count)):
            length = int(lengths[pick])
            if length >= need:
                offset = int(rng.integers(0, length - need + 1))
                self.packs.read(int(arrays[pick]), int(rows[pick]) + offset, need, out[i])
            elif length > 0:
                whole = self.packs.read(int(arrays[pick]), int(rows[pick]), length)
                out[i] = np.resize(whole, (need, whole.shape[1]))
            else:
                out[i] = 0
        return out.reshape(count, self.unit, self.frames, self.packs.bands)


def _augment(batch: dict[str, tf.Tensor], seed: tf.Tensor, aug: Augmentation, spec: InputSpec) -> dict[str, tf.Tensor]:
    units = augment_batch(batch["units"], batch.get("background"), seed, aug, spec.frontend)
    return {"units": units, "mask": batch["mask"], "target": batch["target"]}


def _mixup(batch: dict[str, tf.Tensor], seed: tf.Tensor, aug: Augmentation) -> dict[str, tf.Tensor]:
    units, target = mixup_batch(batch["units"], batch["target"], seed, aug.mixup_probability, aug.mixup_alpha)
    return {"units": units, "mask": batch["mask"] | tf.roll(batch["mask"], shift=1, axis=0), "target": target}


def _model_io(batch: dict[str, tf.Tensor], spec: InputSpec, smoothing: float):
    target = batch["target"]
    if smoothing > 0:
        share = 0.5 if spec.multi_label else 1.0 / spec.n_classes
        target = target * (1.0 - smoothing) + smoothing * share
    if spec.seq_len is None:
        return batch["units"][:, 0], target
    return {"patches": batch["units"], "mask": batch["mask"]}, target
