"""The patch activity score: calls at known times are found, the silence between them is not."""

import numpy as np

from jibjib.features.activity import format_activity, parse_activity, patch_activity
from jibjib.features.frontend import waveform_to_log_mel

RATE = 16000
PATCH_SECONDS = 0.96


def _recording(call_patches: list[int], patches: int = 10, seed: int = 0) -> np.ndarray:
    """Quiet noise with a 3 kHz warble filling the middle 0.5 s of each patch in `call_patches`."""
    rng = np.random.default_rng(seed)
    n = int((patches * PATCH_SECONDS + 0.02) * RATE)
    audio = 0.003 * rng.standard_normal(n)
    t = np.arange(int(0.5 * RATE)) / RATE
    call = 0.3 * np.sin(2 * np.pi * (3000 + 300 * np.sin(2 * np.pi * 8 * t)) * t)
    for p in call_patches:
        start = int((p * PATCH_SECONDS + 0.23) * RATE)
        audio[start:start + len(call)] += call
    return audio.astype(np.float32)


def test_active_patches_are_the_ones_with_calls():
    calls = [1, 4, 5, 8]
    log_mel = waveform_to_log_mel(_recording(calls), RATE)
    scores = patch_activity(log_mel)
    assert len(scores) == 10
    active = scores >= 6.0  # the schema's default threshold
    assert np.flatnonzero(active).tolist() == calls
    assert scores[calls].min() > 15.0 and np.delete(scores, calls).max() < 5.0


def test_louder_background_moves_the_floor_not_the_answer():
    audio = _recording([2, 3], seed=1)
    audio += 0.02 * np.random.default_rng(5).standard_normal(len(audio)).astype(np.float32)
    scores = patch_activity(waveform_to_log_mel(audio, RATE))
    assert np.flatnonzero(scores >= 6.0).tolist() == [2, 3]


def test_the_packed_index_text_keeps_the_scores():
    scores = patch_activity(waveform_to_log_mel(_recording([0]), RATE))
    assert np.array_equal(parse_activity(format_activity(scores)), scores)
    assert parse_activity("").shape == (0,) and format_activity(np.zeros(0)) == ""
    assert patch_activity(np.zeros((50, 64), np.float32)).shape == (0,)  # shorter than a patch
