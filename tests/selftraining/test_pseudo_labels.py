"""Pseudo-labels from a toy teacher on generated field audio with calls at known times."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest

from conftest import write_wav
from jibjib.core.params import VGGISH
from jibjib.core.settings import SelfTrainingSettings
from jibjib.features.frontend import hertz_to_mel
from jibjib.selftraining.pseudo import (pseudo_targets, select_windows, window_grid, window_scores,
                                       write_pseudo_labels)
from jibjib.selftraining.unlabelled import update_unlabelled

RATE = 16000
CALLS = {"Alpha_one": (1000.0, (1.0, 3.0)), "Beta_two": (4000.0, (6.0, 8.0))}  # tone (Hz), calling (s)
SECONDS = 12.0
WINDOW = 0.96  # one VGGish patch


def field_recording(seed: int) -> np.ndarray:
    """Quiet noise with each species' tone over its calling stretch."""
    t = np.arange(int(SECONDS * RATE)) / RATE
    audio = 0.001 * np.random.default_rng(seed).standard_normal(t.size)
    for hz, (start, end) in CALLS.values():
        audio += 0.3 * np.sin(2 * np.pi * hz * t) * ((t >= start) & (t < end))
    return audio.astype(np.float32)


def band_of(hz: float) -> int:
    edges = np.linspace(hertz_to_mel(VGGISH.fmin_hz), hertz_to_mel(VGGISH.fmax_hz), VGGISH.mel_bands + 2)
    return int(np.argmin(np.abs(edges[1:-1] - hertz_to_mel(hz))))


def toy_teacher() -> keras.Model:
    """Mean log-mel per band -> one logit per species: its tone's band above the window's average band."""
    patches = keras.Input((VGGISH.patch_frames, VGGISH.mel_bands))
    weights = np.full((VGGISH.mel_bands, len(CALLS)), -1.0 / VGGISH.mel_bands, np.float32)
    for c, (hz, _) in enumerate(CALLS.values()):
        weights[band_of(hz), c] += 1.0
    dense = keras.layers.Dense(len(CALLS))
    model = keras.Model(patches, dense(keras.layers.GlobalAveragePooling1D()(patches)))
    dense.set_weights([weights, np.full(len(CALLS), -3.0, np.float32)])
    return model


def calling(start: float) -> str | None:
    """The species calling through the whole window starting at `start`; '' for a window with no call."""
    for label, (_, (begin, end)) in CALLS.items():
        if begin <= start and start + WINDOW <= end:
            return label
        if start < end and start + WINDOW > begin:
            return None  # part of a call: either answer is fair
    return ""


@pytest.fixture
def scored(tmp_path: Path) -> tuple[pd.DataFrame, dict, Path]:
    audio = tmp_path / "field"
    write_wav(audio / "site1" / "rec1.wav", field_recording(1), RATE)
    manifest = update_unlabelled(audio, tmp_path / "features", tmp_path / "manifest.tsv", VGGISH)
    grid = window_grid(None, VGGISH, None)
    return manifest, window_scores(toy_teacher(), manifest, grid, multi_label=True), tmp_path


def test_positives_are_the_calls_and_negatives_the_quiet_windows(scored) -> None:
    manifest, windows, tmp_path = scored
    settings = SelfTrainingSettings.from_dict({"audio_dir": "field", "negatives_per_positive": 100.0})
    thresholds = np.array([0.5, 0.5])
    grid = window_grid(None, VGGISH, None)
    rows = write_pseudo_labels(tmp_path / "pseudo.npz", tmp_path / "pseudo.tsv", windows, manifest,
                               list(CALLS), thresholds, settings, None, grid, multi_label=True,
                               mel_bands=VGGISH.mel_bands)
    assert len(windows["file"]) == int(SECONDS // WINDOW) - (1 if SECONDS % WINDOW < 0.015 else 0)
    expected = {round(k * WINDOW, 3): calling(k * WINDOW) for k in range(len(windows["file"]))}
    got = dict(zip(rows["start_seconds"], rows["labels"].where(rows["kind"] == "positive", "")))
    for start, label in expected.items():
        if label is not None:
            assert got.get(start) == label, (start, label, got)
    for start, label in got.items():  # a positive overlaps a call of its species (partly: either is fair)
        if label:
            begin, end = CALLS[label][1]
            assert start < end and start + WINDOW > begin, (start, label)
    with np.load(tmp_path / "pseudo.npz") as z:
        assert z["units"].shape == (len(rows), 1, VGGISH.patch_frames, VGGISH.mel_bands)
        targets = z["targets"]
    positive = (rows["kind"] == "positive").to_numpy()
    # Soft targets: the teacher's probabilities, not rounded; negatives are all-zero ("no species").
    assert np.all(targets[~positive] == 0)
    assert np.all((targets[positive].max(axis=1) >= 0.5) & (targets[positive].max(axis=1) < 1.0))
    own = [list(CALLS).index(label) for label in rows.loc[positive, "labels"]]
    assert np.all(targets[positive].argmax(axis=1) == own)
    # The units are the windows' own log-mel: the call's band is loud in a positive, quiet in a negative.
    with np.load(tmp_path / "pseudo.npz") as z:
        loud = z["units"][positive, 0].astype(np.float32).mean(axis=1)
        quiet = z["units"][~positive, 0].astype(np.float32).mean(axis=1)
    assert np.all(loud[np.arange(len(own)), [band_of(list(CALLS.values())[c][0]) for c in own]] >
                  quiet[:, [band_of(hz) for hz, _ in CALLS.values()]].max())


def test_unsure_windows_are_left_out_and_negatives_capped() -> None:
    scores = np.array([[0.9, 0.0], [0.45, 0.0], [0.2, 0.01], [0.01, 0.01], [0.02, 0.0], [0.0, 0.03], [0.6, 0.7]])
    settings = SelfTrainingSettings.from_dict({"audio_dir": "x", "negatives_per_positive": 1.0})
    positive, negative = select_windows(scores, np.array([0.5, np.nan]), settings)
    assert positive.tolist() == [True, False, False, False, False, False, True]  # no threshold: never positive
    assert negative.sum() == 2 and not (negative & positive).any()
    assert np.flatnonzero(negative).tolist() == [3, 5]  # of 3, 4, 5 (below 0.25 x 0.5 everywhere), spread
    assert select_windows(scores, np.array([0.5, np.nan]),
                          SelfTrainingSettings.from_dict({"audio_dir": "x", "negatives_per_positive": 5.0}))[1].sum() == 3


def test_features_are_reused_by_content(tmp_path: Path) -> None:
    audio = tmp_path / "field"
    write_wav(audio / "a.wav", field_recording(1), RATE)
    first = update_unlabelled(audio, tmp_path / "features", tmp_path / "manifest.tsv", VGGISH)
    write_wav(audio / "b.wav", field_recording(2), RATE)
    (audio / "broken.wav").write_bytes(b"not audio")
    second = update_unlabelled(audio, tmp_path / "features", tmp_path / "manifest.tsv", VGGISH)
    assert first.attrs["computed"] == 1 and second.attrs["computed"] == 1
    assert second.set_index("path").loc["broken.wav", "status"] == "rejected"
    assert second.set_index("path").loc["broken.wav", "reason"]
    (audio / "a.wav").unlink()
    third = update_unlabelled(audio, tmp_path / "features", tmp_path / "manifest.tsv", VGGISH)
    assert third.attrs["computed"] == 0 and not (tmp_path / "features" / "a.wav.npz").exists()
    (audio / "b.wav").write_bytes(b"RIFF, but no longer audio")  # a file that went bad loses its old features
    fourth = update_unlabelled(audio, tmp_path / "features", tmp_path / "manifest.tsv", VGGISH)
    assert fourth.set_index("path").loc["b.wav", "status"] == "rejected"
    assert not (tmp_path / "features" / "b.wav.npz").exists()


def test_negatives_take_a_background_files_target() -> None:
    scores = np.array([[0.7, 0.2, 0.1], [0.02, 0.01, 0.01]])
    positive, negative = np.array([True, False]), np.array([False, True])
    sigmoid = pseudo_targets(scores, positive, negative, multi_label=True)
    softmax = pseudo_targets(scores, positive, negative, multi_label=False)
    assert np.allclose(sigmoid, [[0.7, 0.2, 0.1], [0, 0, 0]])  # "no species": every output off
    assert np.allclose(softmax, [[0.7, 0.2, 0.1], [1 / 3] * 3])  # as the background folders under softmax


def test_long_recordings_are_scored_in_batches_with_the_same_result(scored, monkeypatch) -> None:
    import jibjib.selftraining.pseudo as pseudo

    manifest, whole, _ = scored
    monkeypatch.setattr(pseudo, "BATCH_PATCHES", 5)  # 12 windows in three passes
    batched = window_scores(toy_teacher(), manifest, window_grid(None, VGGISH, None), multi_label=True)
    assert np.allclose(batched["probabilities"], whole["probabilities"], atol=1e-6)
    assert (batched["start_frame"] == whole["start_frame"]).all()


def test_a_teacher_that_passes_nothing_writes_an_empty_set_of_the_front_end_shape(scored) -> None:
    """No species reaches its threshold: no positive, so no negative either; the empty units still have the
    front end's bands (a 40-band front end gets 40, not a default), so a student loads the set."""
    manifest, windows, tmp_path = scored
    settings = SelfTrainingSettings.from_dict({"audio_dir": "field"})
    rows = write_pseudo_labels(tmp_path / "none.npz", tmp_path / "none.tsv", windows, manifest, list(CALLS),
                               np.array([np.nan, np.nan]), settings, None, window_grid(None, VGGISH, None),
                               multi_label=True, mel_bands=40)
    assert rows.empty
    with np.load(tmp_path / "none.npz") as z:
        assert z["units"].shape == (0, 1, VGGISH.patch_frames, 40) and z["targets"].shape == (0, len(CALLS))
