"""What a split's files give as training examples, counted and cut without TensorFlow.

A file gives patches (VGGish) or sequences of patches (ConvLSTM); these
functions count them from the files' stamps (no log-mel read), cut one
file's patches into sequences, weigh the classes by their examples and draw
files so that every class gives as many. Evaluation cuts its inputs with the
same `load_patches` and `to_sequences`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from jibjib.core.params import VGGISH
from jibjib.features.files import FeatureStamp, feature_stamp
from jibjib.labels.tables import target_matrix
from jibjib.packing import PackedFeatures

if TYPE_CHECKING:
    from jibjib.training.inputs.spec import InputSpec


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


def sequence_count(n_patches: int, seq_len: int, short: str) -> int:
    """How many sequences `to_sequences` cuts from a file of `n_patches` patches (none without a patch)."""
    if short == "skip":
        return n_patches // seq_len
    return -(-n_patches // seq_len)


def examples_per_file(stamps: list[FeatureStamp], seq_len: int | None, short: str,
                      patch_frames: int = VGGISH.patch_frames) -> np.ndarray:
    """Training examples each file gives: patches (seq_len None, VGGish) or sequences of seq_len patches."""
    patches = np.array([stamp.frames // patch_frames for stamp in stamps], dtype=int)
    if seq_len is None:
        return patches
    return np.array([sequence_count(n, seq_len, short) for n in patches], dtype=int)


def class_weights(examples: np.ndarray) -> np.ndarray:
    """Inverse-frequency weight of each class, from its number of training examples.

    Examples are what the loss averages over (patches for VGGish, sequences
    for the ConvLSTM), so they are counted, not files: a class of long
    recordings would otherwise be weighted as if it were rare. The weights
    average 1 over the training examples; a class without examples gets 1.
    """
    counts = np.asarray(examples, dtype=float)
    present = max(int((counts > 0).sum()), 1)
    return np.where(counts > 0, counts.sum() / (present * np.maximum(counts, 1)), 1.0)


def to_sequences(patches: np.ndarray, seq_len: int, short: str,
                 silence: float = VGGISH.silence) -> tuple[np.ndarray, np.ndarray]:
    """Cut one file's patches into (k, seq_len, ...) sequences and a (k, seq_len) mask.

    Files shorter than `seq_len` are padded with the padding masked out
    (`short="pad"`) or give no sequence (`short="skip"`); longer files give one
    sequence per `seq_len` patches, the remainder padded. Padding is
    `silence`, the log-mel of a silent frame (log-mel 0 would be a loud one),
    and sits at the end: every mask is right-padded and has a real patch, as
    cuDNN's LSTM requires (a file without a patch gives no sequence).
    """
    n = patches.shape[0]
    # With skip, a short remainder is dropped like a short file.
    k = sequence_count(n, seq_len, short)
    padded = np.full((k * seq_len, *patches.shape[1:]), silence, np.float32)
    used = min(n, k * seq_len)
    padded[:used] = patches[:used]
    mask = np.zeros(k * seq_len, bool)
    mask[:used] = True
    return padded.reshape(k, seq_len, *patches.shape[1:]), mask.reshape(k, seq_len)


def file_targets(files: pd.DataFrame, spec: "InputSpec") -> np.ndarray:
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


def example_counts(stamps: list[FeatureStamp], class_ids: "pd.Series | list[tuple[int, ...]]", n_classes: int,
                   seq_len: int | None, short: str) -> np.ndarray:
    """Training examples per class (a multi-species file counts for each of its species, background for none)."""
    units = examples_per_file(stamps, seq_len, short)
    return (target_matrix(class_ids, n_classes) * units[:, None]).sum(axis=0)
