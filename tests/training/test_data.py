"""Streaming input: every training file once per epoch, sequences, class weights."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

tf = pytest.importorskip("tensorflow")

from jibjib.core import fsutil  # noqa: E402
from jibjib.core.settings import AugmentSettings  # noqa: E402
from jibjib.labels.tables import split_files  # noqa: E402
from jibjib.training.examples import class_weights, to_sequences  # noqa: E402
from jibjib.training.inputs import InputSpec, training_dataset  # noqa: E402
from jibjib.training.windows import WindowRule  # noqa: E402

EVERY_WINDOW = WindowRule.every_window()  # the tests' log-mel is no audio: the plain grid, every window labelled

PLAIN = AugmentSettings.from_dict({"enabled": False})


@pytest.fixture
def corpus(tmp_path: Path):
    """npz files whose every value is the file's number, so each patch names its file."""
    features = tmp_path / "features"
    rows = []
    for i in range(12):
        label = ["Alpha_one", "Beta_two", "Gamma_three"][i % 3]
        frames = 96 * (1 + i % 4) + 17  # 1..4 patches and a partial tail
        path = f"{label}/{label}-{i}_1.wav"
        fsutil.save_npz(features / Path(path).with_suffix(".npz"),
                        log_mel=np.full((frames, 64), i, np.float32))
        rows.append({"path": path, "label": label, "recording_id": f"{label}-{i}",
                     "split": "train" if i < 9 else "test"})
    pd.DataFrame(rows).to_csv(tmp_path / "split.tsv", sep="\t", index=False)
    pd.DataFrame({"class_id": [0, 1, 2], "label": ["Alpha_one", "Beta_two", "Gamma_three"],
                  "n_files": 4, "n_recordings": 4, "seconds": 1.0}).to_csv(tmp_path / "labels.tsv", sep="\t", index=False)
    return split_files(tmp_path / "split.tsv", tmp_path / "labels.tsv", features, "train")


def test_every_training_patch_once_per_epoch(corpus: pd.DataFrame) -> None:
    spec = InputSpec(windows=EVERY_WINDOW, n_classes=3, shuffle_buffer=7, augmentation=PLAIN)
    ds = training_dataset(corpus, spec, batch_size=5, training=True, seed=3)
    expected = Counter({i: 1 + i % 4 for i in range(9)})
    orders = []
    for _ in range(2):
        seen: Counter = Counter()
        order = []
        for patches, targets in ds:
            assert patches.shape[1:] == (96, 64)
            for patch, target in zip(patches.numpy(), targets.numpy()):
                file_number = int(patch[0, 0])
                assert (patch == file_number).all() and target.argmax() == file_number % 3 and target.max() == 1
                seen[file_number] += 1
                order.append(file_number)
        assert seen == expected
        orders.append(order)
    assert orders[0] != orders[1]  # reshuffled between epochs


def test_sequences_pad_mask_and_skip() -> None:
    patches = np.arange(3 * 2 * 2, dtype=np.float32).reshape(3, 2, 2)
    seqs, mask = to_sequences(patches, seq_len=4, short="pad")
    assert seqs.shape == (1, 4, 2, 2) and mask.tolist() == [[True, True, True, False]]
    assert (seqs[0, 3] == np.float32(np.log(0.01))).all()  # padding is the log-mel of silence
    assert to_sequences(patches, seq_len=4, short="skip")[0].shape[0] == 0
    seqs, mask = to_sequences(np.ones((9, 2, 2), np.float32), seq_len=4, short="pad")
    assert seqs.shape[0] == 3 and mask.sum() == 9
    assert to_sequences(np.ones((9, 2, 2), np.float32), seq_len=4, short="skip")[0].shape[0] == 2


def test_sequence_dataset_covers_every_file(corpus: pd.DataFrame) -> None:
    ds = training_dataset(corpus, InputSpec(windows=EVERY_WINDOW, n_classes=3, seq_len=2), batch_size=4, training=False)
    counts: Counter = Counter()
    for inputs, targets in ds:
        for seq, mask in zip(inputs["patches"].numpy(), inputs["mask"].numpy()):
            counts[int(seq[0, 0, 0])] += int(mask.sum())
            assert (seq[~mask] == np.float32(np.log(0.01))).all()  # padding is silence
    assert counts == Counter({i: 1 + i % 4 for i in range(9)})


def test_class_weights_balance_the_classes() -> None:
    weights = class_weights(np.array([3, 1, 0]))
    assert weights[0] * 3 == pytest.approx(weights[1] * 1)
    assert weights[2] == 1.0


def test_feature_stamp_reads_headers_not_data(tmp_path: Path) -> None:
    from jibjib.features.files import feature_stamp

    plain = tmp_path / "plain.npz"
    fsutil.save_npz(plain, log_mel=np.zeros((250, 64), np.float32))
    stamped = tmp_path / "stamped.npz"
    fsutil.save_npz(stamped, log_mel=np.zeros((250, 64), np.float32), source_sha256=np.str_("ab"),
                    frontend=np.str_("fp"))
    assert feature_stamp(stamped) == feature_stamp(stamped).__class__(250, "ab/fp")
    # Without the feature step's stamps the file's own bytes identify it.
    assert feature_stamp(plain).content == fsutil.sha256_file(plain)


def test_padding_is_silence_and_a_file_without_a_patch_gives_no_sequence() -> None:
    """Padding is the log-mel of silence; no sequence is all padding (cuDNN's LSTM refuses one)."""
    from jibjib.core.params import VGGISH

    seqs, mask = to_sequences(np.zeros((5, 2, 2), np.float32), seq_len=3, short="pad")
    assert mask.tolist() == [[True, True, True], [True, True, False]]
    assert (seqs[1, 2] == np.float32(np.log(VGGISH.log_offset))).all()
    for short in ("pad", "skip"):
        seqs, mask = to_sequences(np.zeros((0, 2, 2), np.float32), seq_len=3, short=short)
        assert seqs.shape == (0, 3, 2, 2) and mask.shape == (0, 3)
