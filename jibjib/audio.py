"""Reading WAV files in blocks, with a specific reason for every file we cannot use.

A corpus of tens of thousands of field recordings always holds some broken
files; each one becomes a row in the QC table instead of a crash.  Samples are
read in blocks of at most BLOCK_FRAMES, so an hour-long recording costs no
more memory than a ten-second slice.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import struct
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np
import soundfile

from . import fsutil

# Containers libsndfile may find behind a `.wav` name that we treat as WAV.
WAV_FORMATS = {"WAV", "WAVEX", "RF64", "W64"}
FLOAT_SUBTYPES = {"FLOAT", "DOUBLE"}
# Frames per block: about 22 s at 48 kHz, so a typical 10 s slice is read in
# one piece (the fastest way) while long files stay within a few tens of MB.
BLOCK_FRAMES = 1 << 20


class AudioError(Exception):
    """A file that cannot be used; `reason` is a short code for the QC table."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclasses.dataclass(frozen=True)
class WavInfo:
    """What the header says, checked against the file size."""

    sample_rate: int
    channels: int
    frames: int
    format: str
    subtype: str

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate


@dataclasses.dataclass(frozen=True)
class Audio:
    samples: np.ndarray  # float32, (n,) mono or (n, channels)
    sample_rate: int
    channels: int
    subtype: str

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


def _riff_data_chunk(raw: BinaryIO, file_size: int) -> tuple[int, int] | None:
    """(offset, declared size) of a RIFF/WAVE file's data chunk, or None."""
    raw.seek(0)
    head = raw.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    pos = 12
    while pos + 8 <= file_size:
        raw.seek(pos)
        chunk_id, chunk_size = struct.unpack("<4sI", raw.read(8))
        if chunk_id == b"data":
            return pos + 8, chunk_size
        pos += 8 + chunk_size + (chunk_size & 1)
    return None


class WavReader:
    """An open WAV file whose header has passed every check that needs no decoding.

    Use `open_wav`; `blocks()` then yields the samples.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._raw: BinaryIO = open(path, "rb", buffering=0)
        except OSError as exc:  # no permission, a dangling symlink: the input's fault
            raise AudioError("unreadable", exc.strerror or str(exc)) from None
        self._sound: soundfile.SoundFile | None = None
        # Of the file as opened, so it describes the bytes we decode.
        self.stat = os.fstat(self._raw.fileno())
        # The fast path reads every byte in order anyway, so it hashes them on
        # the way instead of reading the file a second time (see sha256()).
        self._hash = hashlib.sha256()
        self._hashed = 0
        try:
            self.info, self._pcm16_offset = self._check_header()
        except BaseException:
            self.close()
            raise

    def _check_header(self) -> tuple[WavInfo, int | None]:
        file_size = self.stat.st_size
        if file_size == 0:
            raise AudioError("empty", "0 bytes")
        try:
            self._sound = soundfile.SoundFile(str(self.path))
        except (soundfile.LibsndfileError, RuntimeError) as exc:
            raise AudioError("unreadable", _short(exc)) from None
        f = self._sound
        if f.format not in WAV_FORMATS:
            raise AudioError("unsupported_format", f"{f.format} data in a .wav file")
        data = _riff_data_chunk(self._raw, file_size)
        # Streaming writers leave 0 or 0xFFFFFFFF when the length is unknown.
        if data and data[1] not in (0, 0xFFFFFFFF) and file_size - data[0] < data[1]:
            # libsndfile would silently read what is there; a file cut off in
            # transfer should be fetched again, not trained on as if whole.
            raise AudioError("truncated", f"data chunk declares {data[1]} bytes, file holds {file_size - data[0]}")
        if f.frames == 0:
            raise AudioError("no_samples", "header only")
        info = WavInfo(int(f.samplerate), f.channels, f.frames, f.format, f.subtype)
        # Plain 16-bit PCM decodes straight from the bytes: several times faster
        # than libsndfile's float conversion, and the same values.
        pcm16 = data[0] if data and info.subtype == "PCM_16" and info.format == "WAV" else None
        return info, pcm16

    def blocks(self, block_frames: int | None = None) -> Iterator[np.ndarray]:
        """float32 samples in [-1, 1] (int PCM scaled by 1/2^(bits-1)), (n,) or (n, channels).

        Raises AudioError `non_finite` at the first block with NaN/Inf and
        `truncated` if the file ends before the header's frame count.
        """
        info, done = self.info, 0
        block_frames = block_frames or BLOCK_FRAMES  # looked up now, so tests can shrink it
        self._hash, self._hashed = hashlib.sha256(), 0
        if self._pcm16_offset is not None:
            self._raw.seek(0)
            self._hash_through(self._pcm16_offset)  # the header
        else:
            self._sound.seek(0)
        while done < info.frames:
            wanted = min(block_frames, info.frames - done)
            block = self._read_pcm16(wanted) if self._pcm16_offset is not None else self._read_decoded(wanted)
            if block.shape[0] < wanted:
                raise AudioError("truncated", f"header declares {info.frames} frames, file holds {done + block.shape[0]}")
            if info.subtype in FLOAT_SUBTYPES and not np.isfinite(block).all():
                first = done + int(np.flatnonzero(~np.isfinite(block).reshape(wanted, -1).all(axis=1))[0])
                raise AudioError("non_finite", f"NaN/Inf samples, the first at {first / info.sample_rate:.3f} s")
            done += wanted
            yield block
        if self._pcm16_offset is not None:
            self._hash_through(self.stat.st_size)  # chunks after the samples

    def sha256(self) -> str:
        """SHA-256 of the file's bytes ('' if they changed while the file was open)."""
        if self._hashed != self.stat.st_size:  # blocks() not used, or not the fast path
            self._raw.seek(0)
            digest = hashlib.file_digest(self._raw, "sha256").hexdigest()
            # A second read: if the file was written since it was opened, these
            # are not the bytes decoded, and no hash is better than a wrong one.
            if fsutil.stat_key(os.fstat(self._raw.fileno())) != fsutil.stat_key(self.stat):
                return ""
            return digest
        return self._hash.hexdigest()

    def _hash_bytes(self, content: bytes | memoryview) -> None:
        self._hash.update(content)
        self._hashed += len(content)

    def _hash_through(self, end: int) -> None:
        """Hash the raw file from its current position up to byte `end`, in bounded pieces."""
        while self._hashed < end:
            piece = self._raw.read(min(end - self._hashed, 1 << 20))
            if not piece:
                return
            self._hash_bytes(piece)

    def _read_pcm16(self, frames: int) -> np.ndarray:
        channels = self.info.channels
        pcm = np.empty(frames * channels, "<i2")
        got = self._raw.readinto(memoryview(pcm).cast("B")) or 0
        self._hash_bytes(memoryview(pcm).cast("B")[:got])
        samples = pcm[: got // (2 * channels) * channels].astype(np.float32)
        samples *= np.float32(1 / 32768)
        return samples.reshape(-1, channels) if channels > 1 else samples

    def _read_decoded(self, frames: int) -> np.ndarray:
        try:
            return self._sound.read(frames, dtype="float32", always_2d=False)
        except (soundfile.LibsndfileError, RuntimeError) as exc:
            raise AudioError("unreadable", _short(exc)) from None

    def close(self) -> None:
        if self._sound is not None:
            self._sound.close()
        self._raw.close()

    def __enter__(self) -> "WavReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_wav(path: str | os.PathLike) -> WavReader:
    """Open and check a WAV file's header; use as a context manager.

    Raises AudioError with reason `empty`, `unreadable`, `unsupported_format`,
    `truncated` or `no_samples`.
    """
    return WavReader(Path(path))


def read_wav(path: str | os.PathLike) -> Audio:
    """The whole file at once (for tests and small files; the feature step streams)."""
    with open_wav(path) as wav:
        blocks = list(wav.blocks())
        info = wav.info
    samples = blocks[0] if len(blocks) == 1 else np.concatenate(blocks)
    return Audio(samples, info.sample_rate, info.channels, info.subtype)


def _short(exc: Exception) -> str:
    # libsndfile messages may repeat the file name, which the QC row already has.
    text = str(exc)
    if ": " in text and text.startswith("Error opening"):
        text = text.split(": ", 1)[1]
    return " ".join(text.split())[:200]
