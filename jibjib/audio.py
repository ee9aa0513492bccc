"""Reading WAV files, with a specific reason for every file we cannot use.

A corpus of tens of thousands of field recordings always holds some broken
files; each one becomes a row in the QC table instead of a crash.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import struct
from pathlib import Path

import numpy as np
import soundfile

# Containers libsndfile may find behind a `.wav` name that we treat as WAV.
WAV_FORMATS = {"WAV", "WAVEX", "RF64", "W64"}
FLOAT_SUBTYPES = {"FLOAT", "DOUBLE"}


class AudioError(Exception):
    """A file that cannot be used; `reason` is a short code for the QC table."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclasses.dataclass(frozen=True)
class Audio:
    samples: np.ndarray  # float32, (n,) mono or (n, channels)
    sample_rate: int
    channels: int
    subtype: str
    sha256: str  # of the file's bytes

    @property
    def seconds(self) -> float:
        return self.samples.shape[0] / self.sample_rate

    def mono(self) -> np.ndarray:
        """Channels averaged, as the VGGish reference does."""
        return to_mono(self.samples)


def to_mono(samples: np.ndarray) -> np.ndarray:
    """Average the channels of (n, channels) samples; (n,) samples pass through."""
    samples = np.asarray(samples)
    if samples.ndim == 1:
        return samples
    # Column by column: numpy's mean over a short last axis is ~20x slower.
    total = samples[:, 0].copy()
    for channel in range(1, samples.shape[1]):
        total += samples[:, channel]
    total *= total.dtype.type(1 / samples.shape[1])
    return total


def _riff_data_chunk(content: bytes) -> tuple[int, int] | None:
    """(offset, declared size) of a RIFF/WAVE file's data chunk, or None."""
    if len(content) < 12 or content[:4] != b"RIFF" or content[8:12] != b"WAVE":
        return None
    pos = 12
    while pos + 8 <= len(content):
        chunk_id, chunk_size = struct.unpack_from("<4sI", content, pos)
        if chunk_id == b"data":
            return pos + 8, chunk_size
        pos += 8 + chunk_size + (chunk_size & 1)
    return None


def read_wav(path: str | os.PathLike) -> Audio:
    """Read a WAV file as float32 samples in [-1, 1] (int PCM scaled by 1/2^(bits-1)).

    Raises AudioError with reason `empty`, `unreadable`, `unsupported_format`,
    `truncated`, `no_samples` or `non_finite`.
    """
    content = Path(path).read_bytes()
    if not content:
        raise AudioError("empty", "0 bytes")
    try:
        with soundfile.SoundFile(io.BytesIO(content)) as f:
            if f.format not in WAV_FORMATS:
                raise AudioError("unsupported_format", f"{f.format} data in a .wav file")
            data = _riff_data_chunk(content)
            # Streaming writers leave 0 or 0xFFFFFFFF when the length is unknown.
            if data and data[1] not in (0, 0xFFFFFFFF) and len(content) - data[0] < data[1]:
                # libsndfile would silently read what is there; a file cut off in
                # transfer should be fetched again, not trained on as if whole.
                raise AudioError("truncated", f"data chunk declares {data[1]} bytes, file holds {len(content) - data[0]}")
            subtype, sample_rate, channels, frames = f.subtype, f.samplerate, f.channels, f.frames
            if subtype == "PCM_16" and data and f.format == "WAV":
                # Plain 16-bit PCM decodes straight from the bytes: several times
                # faster than libsndfile's float conversion, and the same values.
                samples = np.frombuffer(content, "<i2", frames * channels, data[0]).astype(np.float32)
                samples *= np.float32(1 / 32768)
                if channels > 1:
                    samples = samples.reshape(frames, channels)
            else:
                samples = f.read(dtype="float32", always_2d=False)
    except (soundfile.LibsndfileError, RuntimeError) as exc:
        raise AudioError("unreadable", _short(exc)) from None
    if samples.shape[0] == 0:
        raise AudioError("no_samples", "header only")
    if subtype in FLOAT_SUBTYPES and not np.isfinite(samples).all():
        bad = int(np.count_nonzero(~np.isfinite(samples)))
        raise AudioError("non_finite", f"{bad} NaN/Inf samples")
    return Audio(samples, int(sample_rate), channels, subtype, hashlib.sha256(content).hexdigest())


def _short(exc: Exception) -> str:
    # libsndfile messages may repeat the file name, which the QC row already has.
    text = str(exc)
    if ": " in text and text.startswith("Error opening"):
        text = text.split(": ", 1)[1]
    return " ".join(text.split())[:200]
