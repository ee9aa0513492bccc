"""A review item's audio clip (WAV) and spectrogram (PNG), cut from its recording.

The clip holds the detection with CONTEXT_SECONDS of audio either side (less
at the file's ends), the detection itself cut to at most
MAX_DETECTION_SECONDS (a merged run can span minutes); channels averaged, at
the recording's own sample rate, 16-bit PCM. Only the clip's samples are read
(the file is sought, not decoded from its start where the format allows), so
a page costs little however long the recordings.

The spectrogram (magnitude in dB, the loudest bin white-hot, 80 dB of range,
0 Hz to the lower of 12 kHz and the Nyquist frequency) draws the detection's
start and end as white dotted lines.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jibjib.core import fsutil

CONTEXT_SECONDS = 1.0
MAX_DETECTION_SECONDS = 10.0
TOP_HZ = 12000.0
IMAGE_COLUMNS = 480
DYNAMIC_RANGE_DB = 80.0


@dataclass(frozen=True)
class Clip:
    samples: np.ndarray  # float32 mono
    sample_rate: int
    start: float  # seconds into the recording of the clip's first sample
    detection: tuple[float, float]  # the detection's span within the clip, seconds

    @property
    def seconds(self) -> float:
        return self.samples.size / self.sample_rate


def read_clip(path: str | os.PathLike, start: float, end: float) -> Clip:
    """The clip of a detection from `start` to `end` seconds into the recording (OSError, or soundfile's
    RuntimeError, if it cannot be read)."""
    import soundfile

    with soundfile.SoundFile(str(path)) as f:
        rate = int(f.samplerate)
        shown_end = min(end, start + MAX_DETECTION_SECONDS)
        first = max(0, int(round((start - CONTEXT_SECONDS) * rate)))
        last = int(round((shown_end + CONTEXT_SECONDS) * rate))
        if f.frames > 0:
            last = min(last, f.frames)
        f.seek(first)
        data = f.read(max(0, last - first), dtype="float32", always_2d=True)
    mono = data.mean(axis=1).astype(np.float32) if data.size else np.zeros(0, np.float32)
    offset = first / rate
    return Clip(mono, rate, offset, (start - offset, shown_end - offset))


def write_wav(path: Path, clip: Clip) -> None:
    import soundfile

    peak = float(np.max(np.abs(clip.samples))) if clip.samples.size else 0.0
    samples = clip.samples / peak if peak > 1.0 else clip.samples  # no clipping where a float file went over 1
    fsutil.atomic_save(path, lambda tmp: soundfile.write(str(tmp), samples, clip.sample_rate, subtype="PCM_16",
                                                         format="WAV"))


def spectrogram_db(clip: Clip) -> tuple[np.ndarray, float]:
    """(frequency bins from 0 Hz up, time columns) in dB below the loudest bin, and the seconds per column."""
    n_fft = 512 if clip.sample_rate <= 24000 else 1024
    samples = clip.samples if clip.samples.size >= n_fft else np.pad(clip.samples, (0, n_fft - clip.samples.size))
    hop = max(1, (samples.size - n_fft) // (IMAGE_COLUMNS - 1)) if samples.size > n_fft else 1
    frames = np.lib.stride_tricks.sliding_window_view(samples, n_fft)[::hop]
    power = np.abs(np.fft.rfft(frames * np.hanning(n_fft).astype(np.float32), axis=1)) ** 2
    top = int(min(TOP_HZ, clip.sample_rate / 2) / (clip.sample_rate / n_fft)) + 1
    db = 10 * np.log10(np.maximum(power[:, :top].T, 1e-12))
    return np.maximum(db - db.max(), -DYNAMIC_RANGE_DB), hop / clip.sample_rate


def write_spectrogram(path: Path, clip: Clip) -> None:
    from matplotlib import colormaps
    from matplotlib.image import imsave

    db, column_seconds = spectrogram_db(clip)
    rgb = colormaps["magma"]((db + DYNAMIC_RANGE_DB) / DYNAMIC_RANGE_DB)[::-1, :, :3]
    for edge in clip.detection:
        column = int(round(edge / column_seconds))
        if 0 <= column < rgb.shape[1]:
            rgb[::3, column, :] = 1.0  # dotted: every third pixel
    fsutil.atomic_save(path, lambda tmp: imsave(str(tmp), rgb, format="png"))
