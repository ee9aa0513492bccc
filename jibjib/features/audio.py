"""Reading audio files in blocks, with a specific reason for every file we cannot use.

A corpus of tens of thousands of field recordings always holds some broken
files; each one becomes a row in the QC table instead of a crash.  Samples are
read in blocks of at most BLOCK_FRAMES, so an hour-long recording costs no
more memory than a ten-second slice.

libsndfile decodes WAV, FLAC, Ogg (Vorbis, Opus) and MP3, and recognises a
file by its content; the name must say the same (CONTAINERS), or the file is
refused as `format_mismatch`: a misnamed file is more often a mix-up than a
choice.

A file cut off in transfer must be fetched again, not trained on as a
shorter recording (`truncated`), but only WAV states its length in bytes, so
each container is checked its own way.  WAV: the data chunk against the file
size.  Ogg: the last page must be whole and end the stream (libsndfile takes
the length from the last page it finds).  FLAC and MP3 with a Xing/Info/VBRI
header: decoding must reach the header's frame count (a FLAC damaged on the
way looks the same to libsndfile: its decoder loses sync).  MP3 without such
a header, whose length libsndfile only estimates: the last frame must be whole.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import stat
import struct
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Iterator

import numpy as np

from jibjib.core import fsutil
from jibjib.features.readhook import ReadHook

if TYPE_CHECKING:
    import soundfile

# soundfile (and libsndfile with it) is imported where files are opened: the
# config checks, which only list files, would otherwise pay for it.

# Containers libsndfile may find behind a `.wav` name that we treat as WAV.
WAV_FORMATS = frozenset({"WAV", "WAVEX", "RF64", "W64"})
# The accepted names, with the libsndfile formats (and subtypes, None: any)
# each may hold; in this order the first that fits a misnamed file is suggested.
CONTAINERS: dict[str, tuple[frozenset[str], frozenset[str] | None]] = {
    ".wav": (WAV_FORMATS, None),
    ".flac": (frozenset({"FLAC"}), None),
    ".opus": (frozenset({"OGG"}), frozenset({"OPUS"})),
    ".ogg": (frozenset({"OGG"}), None),
    ".oga": (frozenset({"OGG"}), None),
    ".mp3": (frozenset({"MP3"}), None),
}
AUDIO_SUFFIXES = frozenset(CONTAINERS)
FLOAT_SUBTYPES = {"FLOAT", "DOUBLE"}
# Frames per block: about 22 s at 48 kHz, so a typical 10 s slice is read in
# one piece (the fastest way) while long files stay within a few tens of MB.
BLOCK_FRAMES = 1 << 20
# libsndfile's frame count for a FLAC whose header does not state its length (written while streaming).
_UNKNOWN_LENGTH = (1 << 63) - 1


class AudioError(Exception):
    """A file that cannot be used; `reason` is a short code for the QC table."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def is_audio_file(path: str | os.PathLike) -> bool:
    """Whether the name is one of AUDIO_SUFFIXES (any case): the files the workflow reads."""
    return Path(path).suffix.lower() in CONTAINERS


@dataclasses.dataclass(frozen=True)
class AudioInfo:
    """What the header says, checked against the file.

    `exact` is False when the header only lets libsndfile estimate `frames`
    (MP3 without a Xing/Info/VBRI header): then
    the count is known once `blocks()` has run to the end, and the reader's
    `info` is replaced by one with the decoded count.
    """

    sample_rate: int
    channels: int
    frames: int
    format: str
    subtype: str
    exact: bool = True

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


def _ogg_cut_off(raw: BinaryIO, file_size: int) -> str:
    """Why an Ogg file is cut off ('' if its last page is whole and flagged end-of-stream)."""
    size = min(file_size, 65307)  # the largest possible page
    raw.seek(file_size - size)
    tail = raw.read(size)
    # The last page is the one that ends at the end of the file: a capture
    # pattern inside packet data would have to parse to that end by chance.
    start = tail.rfind(b"OggS")
    while start >= 0:
        page = tail[start:]
        if len(page) >= 27 and 27 + page[26] + sum(page[27:27 + page[26]]) == len(page):
            return "" if page[5] & 4 else "the stream ends without an end-of-stream page"
        start = tail.rfind(b"OggS", 0, start)
    return "the last Ogg page is cut off"


# MPEG audio Layer III frame headers: kbit/s by bitrate index for MPEG-1 and
# for MPEG-2/2.5, sample rates by version bits (3: MPEG-1, 2: MPEG-2, 0: MPEG-2.5).
_MP3_KBPS = ((0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
             (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160))
_MP3_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}


def _mp3_frame(header: bytes) -> tuple[int, int] | None:
    """(bytes, samples) of the Layer III frame that `header` (4 bytes) starts, None if it starts none."""
    if len(header) < 4 or header[0] != 0xFF or header[1] & 0xE6 != 0xE2:  # frame sync, Layer III
        return None
    version, kbps, rate = header[1] >> 3 & 3, header[2] >> 4, header[2] >> 2 & 3
    if version == 1 or kbps in (0, 15) or rate == 3:
        return None
    samples = 1152 if version == 3 else 576
    size = samples // 8 * _MP3_KBPS[version != 3][kbps] * 1000 // _MP3_RATES[version][rate] + (header[2] >> 1 & 1)
    return size, samples


def _headerless_mp3(raw: BinaryIO, file_size: int) -> tuple[int, bool] | None:
    """For a Layer III stream without a Xing/Info/VBRI header in its first frame: the samples of
    its frames and whether the last runs past the end of the file.  None if the header is there
    (libsndfile's length is then exact) or the stream is not one we can walk."""
    raw.seek(0)
    start, head = 0, raw.read(10)
    if head[:3] == b"ID3" and len(head) == 10:  # ID3v2 tag: syncsafe size, optional footer
        start = 10 + (head[6] << 21 | head[7] << 14 | head[8] << 7 | head[9]) + (10 if head[5] & 0x10 else 0)
    raw.seek(start)
    first = raw.read(8192)
    sync = next((i for i in range(len(first) - 3) if _mp3_frame(first[i:i + 4])), None)
    if sync is None or any(tag in first[sync + 4:sync + 48] for tag in (b"Xing", b"Info", b"VBRI")):
        return None
    stream = first[sync + 1:sync + 3]  # version and sample rate: a frame of another stream ends the walk
    pos, samples, base, buffer = start + sync, 0, 0, b""
    while pos + 4 <= file_size:
        if pos + 4 > base + len(buffer):
            raw.seek(pos)
            base, buffer = pos, raw.read(1 << 20)
        header = buffer[pos - base:pos - base + 4]
        frame = _mp3_frame(header)
        if frame is None or header[1] != stream[0] or header[2] & 0x0C != stream[1] & 0x0C:
            break  # ID3v1 or APE tags, or junk: the stream ends here
        pos, samples = pos + frame[0], samples + frame[1]
    return samples, pos > file_size


def _soundfile():
    import soundfile

    return soundfile


class AudioReader:
    """An open audio file whose header has passed every check that needs no decoding.

    Use `open_audio`; `blocks()` then yields the samples.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._raw: BinaryIO = open(path, "rb", buffering=0)
        except OSError as exc:  # no permission, a dangling symlink: the input's fault
            raise AudioError("unreadable", _open_failure(path, exc)) from None
        self._sound: soundfile.SoundFile | None = None
        # Of the file as opened, so it describes the bytes we decode.
        self.stat = os.fstat(self._raw.fileno())
        # Decoding reads every byte anyway, so the bytes are hashed on the way
        # (the fast path's own reads, libsndfile's through a ReadHook) instead
        # of reading the file a second time: bytes [0, _hashed) are in _hash.
        self._hash = hashlib.sha256()
        self._hashed = 0
        try:
            self.info, self._pcm16_offset = self._check_header()
        except BaseException:
            self.close()
            raise

    def _check_header(self) -> tuple[AudioInfo, int | None]:
        file_size = self.stat.st_size
        if file_size == 0:
            raise AudioError("empty", "0 bytes")
        soundfile = _soundfile()
        try:
            self._sound = soundfile.SoundFile(ReadHook(self._raw.fileno(), self.stat.st_size, self._hash_read))
        except (soundfile.LibsndfileError, RuntimeError) as exc:
            raise AudioError("unreadable", _short(exc, stat.S_ISREG(self.stat.st_mode))) from None
        f = self._sound
        _check_container(self.path.suffix.lower(), f.format, f.subtype)
        frames, exact, pcm16 = f.frames, True, None
        if f.format in WAV_FORMATS:
            data = _riff_data_chunk(self._raw, file_size)
            # Streaming writers leave 0 or 0xFFFFFFFF when the length is unknown.
            if data and data[1] not in (0, 0xFFFFFFFF) and file_size - data[0] < data[1]:
                # libsndfile would silently read what is there.
                raise AudioError("truncated", f"data chunk declares {data[1]} bytes, file holds {file_size - data[0]}")
            # Plain 16-bit PCM decodes straight from the bytes: several times
            # faster than libsndfile's float conversion, and the same values.
            pcm16 = data[0] if data and f.subtype == "PCM_16" and f.format == "WAV" else None
        elif f.format == "OGG" and (cut := _ogg_cut_off(self._raw, file_size)):
            raise AudioError("truncated", cut)
        elif f.format == "MP3" and (walked := _headerless_mp3(self._raw, file_size)) is not None:
            if walked[1]:
                raise AudioError("truncated", "the last MPEG frame runs past the end of the file")
            # libsndfile estimates the length from the first frame's bitrate
            # and reads no further: of a VBR file that can be a fraction.
            if walked[0] > frames + 1152:
                raise AudioError("unsupported_format", f"MP3 without a Xing/VBRI header whose bitrate varies: "
                                 f"libsndfile would read {frames / f.samplerate:.3f} s of its "
                                 f"{walked[0] / f.samplerate:.3f} s")
            exact = False
        elif f.format == "FLAC" and frames == _UNKNOWN_LENGTH:
            # soundfile then fails on the last block (it seeks past what libFLAC can find).
            raise AudioError("unsupported_format", "FLAC whose header does not state its length "
                             "(written while streaming); re-encode it with `flac`")
        if exact and frames == 0:
            raise AudioError("no_samples", "header only")
        return AudioInfo(int(f.samplerate), f.channels, frames, f.format, f.subtype, exact), pcm16

    def blocks(self, block_frames: int | None = None) -> Iterator[np.ndarray]:
        """float32 samples in [-1, 1] (int PCM scaled by 1/2^(bits-1)), (n,) or (n, channels).

        Raises AudioError `non_finite` at the first block with NaN/Inf,
        `truncated` if decoding ends or fails before the header's frame count
        (or, without an exact count, fails at all), and `no_samples` if a file
        without an exact count decodes to nothing.
        """
        info, done = self.info, 0
        block_frames = block_frames or BLOCK_FRAMES  # looked up now, so tests can shrink it
        if self._pcm16_offset is not None:
            self._hash_through(self._pcm16_offset)  # the header
            self._raw.seek(self._pcm16_offset)
        elif self._sound.tell():  # a second pass (libFLAC cannot seek in every cut-off file)
            try:
                self._sound.seek(0)
            except (_soundfile().LibsndfileError, RuntimeError) as exc:
                raise self._decode_error(exc, 0) from None
        while done < info.frames or not info.exact:
            wanted = min(block_frames, info.frames - done) if info.exact else block_frames
            block = self._read_pcm16(wanted) if self._pcm16_offset is not None else self._read_decoded(wanted, done)
            got = block.shape[0]
            if got < wanted and info.exact:
                raise AudioError("truncated", f"header declares {info.frames} frames, file holds {done + got}")
            if info.subtype in FLOAT_SUBTYPES and not np.isfinite(block).all():
                first = done + int(np.flatnonzero(~np.isfinite(block).reshape(got, -1).all(axis=1))[0])
                raise AudioError("non_finite", f"NaN/Inf samples, the first at {first / info.sample_rate:.3f} s")
            done += got
            if got:
                yield block
            if got < wanted:
                break
        if not info.exact:
            if not done:
                raise AudioError("no_samples", "no audio frames decoded")
            self.info = dataclasses.replace(info, frames=done, exact=True)
        if self._pcm16_offset is not None:
            self._hash_through(self.stat.st_size)  # chunks after the samples

    def sha256(self) -> str:
        """SHA-256 of the file's bytes ('' if they changed while the file was open).

        After `blocks()` this reads at most what decoding did not (a tag after
        the samples); without it, the whole file.
        """
        self._hash_through(self.stat.st_size)
        # If the file was written since it was opened, the bytes hashed are not
        # those decoded, and no hash is better than a wrong one.
        if fsutil.stat_key(os.fstat(self._raw.fileno())) != fsutil.stat_key(self.stat):
            return ""
        return self._hash.hexdigest()

    def _hash_read(self, position: int, content: memoryview) -> None:
        """Hash what a read of `content` at byte `position` adds to the bytes hashed so far in order."""
        end = position + len(content)
        if position <= self._hashed < end:
            self._hash.update(content[self._hashed - position:])
            self._hashed = end

    def _hash_through(self, end: int) -> None:
        """Hash the bytes from the last one hashed up to byte `end`, in bounded pieces (the file position stays)."""
        while self._hashed < end:
            piece = os.pread(self._raw.fileno(), min(end - self._hashed, 1 << 20), self._hashed)
            if not piece:
                return
            self._hash_read(self._hashed, memoryview(piece))

    def _read_pcm16(self, frames: int) -> np.ndarray:
        channels = self.info.channels
        pcm = np.empty(frames * channels, "<i2")
        position = self._raw.tell()
        got = self._raw.readinto(memoryview(pcm).cast("B")) or 0
        self._hash_read(position, memoryview(pcm).cast("B")[:got])
        samples = pcm[: got // (2 * channels) * channels].astype(np.float32)
        samples *= np.float32(1 / 32768)
        return samples.reshape(-1, channels) if channels > 1 else samples

    def _read_decoded(self, frames: int, done: int) -> np.ndarray:
        soundfile = _soundfile()
        try:
            return self._sound.read(frames, dtype="float32", always_2d=False)
        except (soundfile.LibsndfileError, RuntimeError) as exc:
            raise self._decode_error(exc, done) from None

    def _decode_error(self, exc: Exception, done: int) -> AudioError:
        info = self.info
        if info.format in WAV_FORMATS:
            return AudioError("unreadable", _short(exc))
        try:
            done = max(done, self._sound.tell())  # where the decoder stopped, or -1 after a failed seek
        except (_soundfile().LibsndfileError, RuntimeError):
            pass
        # A compressed stream cut off and one damaged on the way both make the decoder lose sync.
        of = f" of the {info.seconds:.3f} s the header declares" if info.exact else ""
        return AudioError("truncated", f"decoding fails at {done / info.sample_rate:.3f} s{of}, "
                          f"cut off or damaged ({_short(exc)})")

    def close(self) -> None:
        if self._sound is not None:
            self._sound.close()
        self._raw.close()

    def __enter__(self) -> "AudioReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _fits(suffix: str, format: str, subtype: str) -> bool:
    formats, subtypes = CONTAINERS[suffix]
    return format in formats and (subtypes is None or subtype in subtypes)


def _check_container(suffix: str, format: str, subtype: str) -> None:
    """The data must be what the name says (see the module docstring)."""
    if suffix in CONTAINERS and _fits(suffix, format, subtype):
        return
    found = f"{format}/{subtype} data" if format == "OGG" else f"{format} data"
    named = f"in a {suffix} file" if suffix else "in a file without a suffix"
    right = next((s for s in CONTAINERS if _fits(s, format, subtype)), None)
    if right is None:
        raise AudioError("unsupported_format", f"{found} {named}")
    raise AudioError("format_mismatch", f"{found} {named} (rename it to {right})")


def open_audio(path: str | os.PathLike) -> AudioReader:
    """Open an audio file and check its header; use as a context manager.

    Raises AudioError with reason `empty`, `unreadable`, `unsupported_format`,
    `format_mismatch`, `truncated` or `no_samples`.
    """
    return AudioReader(Path(path))


def read_audio(path: str | os.PathLike) -> Audio:
    """The whole file at once (for tests and small files; the feature step streams)."""
    with open_audio(path) as reader:
        blocks = list(reader.blocks())
        info = reader.info
    samples = blocks[0] if len(blocks) == 1 else np.concatenate(blocks)
    return Audio(samples, info.sample_rate, info.channels, info.subtype)


def _open_failure(path: Path, exc: OSError) -> str:
    """Why a file cannot be opened; a symbolic link whose target is missing says so."""
    if path.is_symlink() and not path.exists():
        return f"broken symbolic link to {os.readlink(path)}"
    return exc.strerror or str(exc)


def _short(exc: Exception, regular_file: bool = False) -> str:
    # libsndfile messages may repeat the file name, which the QC row already has.
    text = str(exc)
    if ": " in text and text.startswith("Error opening"):
        text = text.split(": ", 1)[1]
    # What libsndfile's MPEG probe says of any file it cannot make sense of, pipe or not.
    if regular_file and text.startswith("File does not exist or is not a regular file"):
        text = "Format not recognised."
    return " ".join(text.split())[:200]
