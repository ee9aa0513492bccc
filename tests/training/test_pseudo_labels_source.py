"""The pseudo-labelled windows as an extra training source: appended to every batch, seeded, checked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from jibjib.core.errors import InputError
from jibjib.training.inputs import InputSpec
from jibjib.training.pseudo_labels import PseudoLabels, with_pseudo_labels

SPEC = InputSpec(n_classes=2, multi_label=True)
SHAPE = (1, 96, 64)


def labelled(seed: int) -> tf.data.Dataset:
    """Three batches of four labelled examples (targets [1, 0]), with background stretches."""
    units = np.zeros((12, *SHAPE), np.float32)
    batch = {"units": units, "mask": np.ones((12, 1), bool), "seed": np.arange(12, dtype=np.int64),
             "background": np.full((12, *SHAPE), -1.0, np.float32)}
    return tf.data.Dataset.from_tensor_slices((batch, np.tile([[1.0, 0.0]], (12, 1)).astype(np.float32))).batch(4)


def pseudo() -> PseudoLabels:
    """Five windows whose units and targets tell them apart: window k holds k + 1 and targets [0, k / 10]."""
    units = np.stack([np.full(SHAPE, k + 1.0) for k in range(5)]).astype(np.float16)
    targets = np.array([[0.0, k / 10] for k in range(5)], np.float32)
    return PseudoLabels(units, np.ones((5, 1), bool), targets)


def test_each_batch_gets_its_share_of_pseudo_labelled_windows() -> None:
    epoch = with_pseudo_labels(labelled, pseudo(), batch_size=4, share=0.5)
    batches = list(epoch(7).as_numpy_iterator())
    assert len(batches) == 3
    drawn = []
    for batch, targets in batches:
        assert batch["units"].shape == (6, *SHAPE) and batch["units"].dtype == np.float32
        assert batch["background"].shape == (6, *SHAPE) and batch["seed"].shape == (6,)
        assert (targets[:4] == [1.0, 0.0]).all()
        window = batch["units"][4:, 0, 0, 0].astype(int) - 1  # which pseudo window came
        assert np.allclose(targets[4:, 1], window / 10) and (targets[4:, 0] == 0).all()  # with its own target
        drawn += window.tolist()
    assert sorted(drawn[:5]) == [0, 1, 2, 3, 4]  # every window once before any repeats
    again = [t.tolist() for _, t in epoch(7).as_numpy_iterator()]
    assert again == [t.tolist() for _, t in batches]  # one seed, one epoch
    assert again != [t.tolist() for _, t in epoch(8).as_numpy_iterator()]


def test_windows_of_another_unit_or_label_set_are_refused(tmp_path: Path) -> None:
    windows = pseudo()
    np.savez(tmp_path / "p.npz", units=windows.units, mask=windows.mask, targets=windows.targets)
    assert len(PseudoLabels.load(tmp_path / "p.npz", SPEC, ["a", "b"])) == 5
    with pytest.raises(InputError, match="classes"):
        PseudoLabels.load(tmp_path / "p.npz", InputSpec(n_classes=3, multi_label=True), ["a", "b", "c"])
    with pytest.raises(InputError, match="units"):
        PseudoLabels.load(tmp_path / "p.npz", InputSpec(n_classes=2, seq_len=3, multi_label=True), ["a", "b"])
    # Same count, other names or order: the target columns would teach the wrong species.
    np.savez(tmp_path / "named.npz", units=windows.units, mask=windows.mask, targets=windows.targets,
             classes=np.array(["a", "b"]))
    assert len(PseudoLabels.load(tmp_path / "named.npz", SPEC, ["a", "b"])) == 5
    with pytest.raises(InputError, match=r"drawn for the classes \['a', 'b'\], but this run trains \['b', 'a'\]"):
        PseudoLabels.load(tmp_path / "named.npz", SPEC, ["b", "a"])


def test_weak_negative_weights_stay_and_pseudo_windows_count_in_full() -> None:
    def weighted(seed: int) -> tf.data.Dataset:
        return labelled(seed).map(lambda batch, targets: ({**batch, "weight": tf.fill([tf.shape(targets)[0]], 0.3)},
                                                          targets))

    for batch, _ in with_pseudo_labels(weighted, pseudo(), batch_size=4, share=0.5)(7).as_numpy_iterator():
        assert np.allclose(batch["weight"], [0.3] * 4 + [1.0] * 2)
