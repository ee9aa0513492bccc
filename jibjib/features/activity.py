"""Call activity of each patch of a recording, from its log-mel alone: where in a focal clip the bird sings.

A focal clip is labelled as a whole, but the bird sings in part of it. The
activity score says which patches hold sound above the recording's own
background:

1. Each log-mel cell is taken to dB (log-mel is the natural log of a mel
   magnitude, so dB = 20 / ln 10 x log-mel) and averaged over SMOOTH_FRAMES
   frames around it (90 ms): the level of one 25 ms frame of noise varies by
   several dB, a call's lasts.
2. The noise floor of each mel band is the NOISE_PERCENTILE-th percentile of
   that band over all frames of the file: most of a focal clip between songs
   is background, so a low percentile is the background's level.
3. A frame's score is the mean, over its TOP_BANDS bands most above their
   floors, of the dB above the floor: a bird fills a few bands, and a mean
   over all 64 would dilute it with the bands it leaves empty.
4. A patch's score is the FRAME_QUANTILE quantile of its frames' scores: a
   call of a tenth of a patch (0.1 s) is enough, a single click is not.

The score is computed from float16-rounded log-mel, as the packed features
store it, so the per-file and the packed inputs agree to the last bit. It
costs one pass over the log-mel (a sort per band for the percentile), far
less than reading the audio; it is not stored in the feature files (which
stay as they are), but in the packed index (jibjib.packing) and computed
again where a file's npz is read. The threshold is train.activity_threshold_db.
"""

from __future__ import annotations

import math

import numpy as np

from jibjib.core.params import VGGISH

SMOOTH_FRAMES = 9
NOISE_PERCENTILE = 20.0
TOP_BANDS = 6
FRAME_QUANTILE = 0.9
DB_PER_LOG = 20.0 / math.log(10.0)
# The method's identity, stored beside the scores in the packed index: scores of another method are stale.
ACTIVITY_METHOD = f"smooth{SMOOTH_FRAMES}-p{NOISE_PERCENTILE:g}-top{TOP_BANDS}-q{FRAME_QUANTILE:g}"


def frame_activity(log_mel: np.ndarray) -> np.ndarray:
    """(frames,) dB above the file's per-band noise floor, in the frame's TOP_BANDS most raised bands."""
    db = np.asarray(log_mel, np.float16).astype(np.float32) * DB_PER_LOG
    if not len(db):
        return np.zeros(0, np.float32)
    db = _moving_average(db, SMOOTH_FRAMES)
    above = np.maximum(db - np.percentile(db, NOISE_PERCENTILE, axis=0, keepdims=True), 0.0)
    top = min(TOP_BANDS, above.shape[1])
    return np.partition(above, above.shape[1] - top, axis=1)[:, -top:].mean(axis=1)


def _moving_average(values: np.ndarray, width: int) -> np.ndarray:
    """Mean over `width` frames centred on each frame (the edge frames repeated), per band."""
    half = width // 2
    padded = np.concatenate([np.repeat(values[:1], half, 0), values, np.repeat(values[-1:], half, 0)])
    sums = np.cumsum(np.concatenate([np.zeros((1, values.shape[1]), values.dtype), padded]), axis=0, dtype=np.float64)
    return ((sums[width:] - sums[:-width]) / width).astype(np.float32)


def patch_activity(log_mel: np.ndarray, patch_frames: int = VGGISH.patch_frames) -> np.ndarray:
    """(patches,) activity score in dB of each whole patch of the grid from frame 0 (a partial tail has none)."""
    n = len(log_mel) // patch_frames
    frames = frame_activity(log_mel)[: n * patch_frames].reshape(n, patch_frames)
    if not n:
        return np.zeros(0, np.float32)
    # Rounded as the packed index stores it, so both inputs see the same score.
    return np.round(np.quantile(frames, FRAME_QUANTILE, axis=1), 1).astype(np.float32)


def format_activity(scores: np.ndarray) -> str:
    """Scores as the packed index stores them: dB with one decimal, space-separated ('' for no patch)."""
    return " ".join(f"{s:.1f}" for s in np.asarray(scores, float))


def parse_activity(text: str) -> np.ndarray:
    """The scores `format_activity` wrote."""
    return np.array(text.split(), np.float32) if text else np.zeros(0, np.float32)


def window_activity(log_mel: np.ndarray, window_frames: int, hop_frames: int, count: int,
                    patch_frames: int = VGGISH.patch_frames) -> np.ndarray:
    """(count,) activity of each window of a grid (every `hop_frames` from frame 0, `window_frames` long): the
    highest score of the whole patches it holds, each scored as `patch_activity` scores it (the noise floor is
    the whole file's)."""
    frames = frame_activity(log_mel)
    per_window = window_frames // patch_frames
    out = np.zeros(count, np.float32)
    for i in range(count):
        block = frames[i * hop_frames: i * hop_frames + per_window * patch_frames].reshape(per_window, patch_frames)
        out[i] = np.quantile(block, FRAME_QUANTILE, axis=1).max()
    return np.round(out, 1)
