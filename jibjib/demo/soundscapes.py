"""Annotated demo soundscapes: minutes of field-like audio with the demo species' songs at known times.

The training demo (jibjib.demo) holds short focal recordings, one species
each, on which a model soon scores perfectly; these files are what a recorder
left in the field brings back instead.  Each one lays a background bed
(gusty wind, rain, stridulating insects, distant traffic, a microphone noise
floor) under bouts of the demo species' songs, newly rendered from the same
templates with random streams of their own (so never a file or a song of the
training set), at signal-to-noise ratios of 0 to 20 dB, with calls of two
species overlapping and stretches without any bird.  A Raven selection table
per file (`<name>.selections.txt`) is the truth.

SNR of a call: 10 log10 of the song's power over the bed's power, both taken
over the call's span (Begin to End Time) and within its frequency box (Low to
High Freq, the band holding 99 % of the song's energy); other birds are not
part of the background.  Measured in the band because a detector looks at a
spectrogram: wind rumble below 1 kHz carries most of the bed's power but hides
no song.

Formats and rates cycle: WAV 32 kHz, FLAC 44.1 kHz, Ogg Vorbis 48 kHz,
MP3 22.05 kHz, all mono.  Lossy files are encoded from the same mix, so their
truth holds too (libsndfile's Vorbis and MP3 decoders keep sample alignment).
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import re
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import scipy.fft
import soundfile

from jibjib.core import fsutil
from jibjib.demo.beds import field_bed
from jibjib.demo.markers import prepare_folder
from jibjib.demo.songs import PITCH_SPREAD, Species, make_species, render_song, species_names
from jibjib.demo.species import DEFAULT_SEED

__all__ = ["SoundscapeSummary", "make_soundscapes", "RAVEN_COLUMNS", "MARKER_NAME", "GENERATOR_VERSION", "SNR_DB"]

GENERATOR_VERSION = 1
MARKER_NAME = ".soundscapes.json"
PARTIAL_NAME = ".soundscapes.partial.json"
RAVEN_COLUMNS = ("Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)",
                 "High Freq (Hz)", "Species")
# (libsndfile format, subtype, suffix, sample rate), cycled over the files.
FORMATS = (("WAV", "PCM_16", ".wav", 32000), ("FLAC", "PCM_16", ".flac", 44100),
           ("OGG", "VORBIS", ".ogg", 48000), ("MP3", "MPEG_LAYER_III", ".mp3", 22050))
SNR_DB = (0.0, 20.0)
BED_RMS = 0.05  # about -26 dBFS, a quiet morning with the recorder's gain turned up
PEAK = 0.8  # lossy decoders overshoot a little: keep clear of full scale
ENERGY_BAND = 0.99  # share of a song's energy inside its frequency box
OVERLAP_PAIRS = 2  # per file with two species or more
BLOCK_FRAMES = 1 << 16  # libsndfile's Vorbis encoder crashes on large single writes
MAX_FILES = 50

# Streams of their own (three entries, the training set's have four), so no
# soundscape song repeats a training rendition.
_PLAN_STREAM, _BED_STREAM = 11, 12
_NAME_RE = re.compile(r"^site\d+(\.wav|\.flac|\.ogg|\.mp3|\.selections\.txt)$")


@dataclasses.dataclass(frozen=True)
class SoundscapeSummary:
    """What `make_soundscapes` produced (or found already in place)."""

    n_files: int
    seconds: float
    n_calls: int
    files: list[str]  # audio file names, in order


@dataclasses.dataclass(frozen=True)
class _Call:
    species: str
    offset: int  # first sample
    song: np.ndarray  # float32, trimmed to its first and last audible sample, unscaled
    low_hz: float
    high_hz: float
    band_power: float  # the song's power within [low_hz, high_hz]
    snr_db: float


@dataclasses.dataclass(frozen=True)
class _Soundscape:
    index: int
    name: str
    format: str
    subtype: str
    sample_rate: int
    samples: int
    species: tuple[str, ...]
    background: dict[str, float]  # component -> gain in dB before the bed is normalised
    bird_free: tuple[tuple[float, float], ...]
    calls: tuple[_Call, ...]  # sorted by offset

    @property
    def seconds(self) -> float:
        return self.samples / self.sample_rate

    def begin_end(self, call: _Call) -> tuple[float, float]:
        return call.offset / self.sample_rate, (call.offset + call.song.size) / self.sample_rate


# --------------------------------------------------------------------------
# Songs and where they go


def _band(song: np.ndarray, sr: int) -> tuple[float, float, float]:
    """(low, high, power within): the band between the 0.5 % and 99.5 % points of the song's energy."""
    power, freqs = _spectrum(song, sr)
    share = np.cumsum(power) / power.sum()
    tail = (1.0 - ENERGY_BAND) / 2.0
    low, high = float(freqs[np.searchsorted(share, tail)]), float(freqs[np.searchsorted(share, 1.0 - tail)])
    return low, high, _band_power(song, sr, low, high)


def _spectrum(x: np.ndarray, sr: int) -> tuple[np.ndarray, np.ndarray]:
    # Zero-padded to a fast length: a song of prime length would make the FFT crawl.
    size = scipy.fft.next_fast_len(x.size, real=True)
    return np.abs(scipy.fft.rfft(x, size)) ** 2 / (x.size * size), np.fft.rfftfreq(size, 1.0 / sr)


def _band_power(x: np.ndarray, sr: int, low: float, high: float) -> float:
    """Power of x between `low` and `high` Hz over the whole span of x (half its mean power if all in band)."""
    power, freqs = _spectrum(x, sr)
    return float(power[(freqs >= low) & (freqs <= high)].sum())


def _song(species: Species, sr: int, pitch: float, tempo: float, rng: np.random.Generator) -> np.ndarray:
    song = render_song(species, sr, pitch, tempo, rng)
    audible = np.flatnonzero(np.abs(song) > 1e-3 * np.abs(song).max())
    return song[audible[0] : audible[-1] + 1]


def _plan_file(seed: int, index: int, species: list[Species], seconds: float) -> _Soundscape:
    fmt, subtype, suffix, sr = FORMATS[index % len(FORMATS)]
    rng = np.random.default_rng([seed, index, _PLAN_STREAM])
    samples = int(round(seconds * sr))
    # File 0 is the chorus (the figure's choice); the others hold two to four species.
    count = min(len(species), 5 if index == 0 else int(rng.integers(2, 5)))
    chosen = sorted(int(i) for i in rng.choice(len(species), size=count, replace=False))

    free: list[tuple[float, float]] = []
    for _ in range(1 + (seconds > 150.0)):
        length = max(10.0, rng.uniform(0.08, 0.12) * seconds)
        for _attempt in range(50):
            begin = rng.uniform(2.0, seconds - length - 2.0)
            if all(begin + length + 5.0 < b or begin > e + 5.0 for b, e in free):
                free.append((round(begin, 3), round(begin + length, 3)))
                break

    calls: list[_Call] = []

    def place(s: int, begin: float, song: np.ndarray) -> bool:
        """Add the song unless it leaves the file, enters a bird-free stretch or meets its own species."""
        end = begin + song.size / sr
        if begin < 0.5 or end > seconds - 0.5 or any(begin < e and b < end for b, e in free):
            return False
        name = species[s].name
        # One bird does not sing over itself: keep 0.3 s between songs of a species.
        if any(c.species == name and begin < (c.offset + c.song.size) / sr + 0.3 and c.offset / sr - 0.3 < end
               for c in calls):
            return False
        # float32 halves what a set's songs hold in memory until they are mixed.
        calls.append(_Call(name, int(round(begin * sr)), song.astype(np.float32), *_band(song, sr),
                           snr_db=round(float(rng.uniform(*SNR_DB)), 2)))
        return True

    def individual() -> tuple[float, float]:
        return rng.uniform(1.0 - PITCH_SPREAD, 1.0 + PITCH_SPREAD), rng.uniform(0.9, 1.1)

    # Overlaps first, so a crowded file still gets them: b starts while a sings.
    for _ in range(OVERLAP_PAIRS if count > 1 else 0):
        for _attempt in range(100):
            a, b = (int(i) for i in rng.choice(chosen, size=2, replace=False))
            song_a, song_b = _song(species[a], sr, *individual(), rng), _song(species[b], sr, *individual(), rng)
            begin = rng.uniform(0.5, seconds)
            later = begin + rng.uniform(0.2, 0.6) * song_a.size / sr
            if place(a, begin, song_a):
                if place(b, later, song_b):
                    break
                calls.pop()
    for s in chosen:
        for _bout in range(int(rng.integers(1, 2 + int(seconds // 60)))):  # about one a minute
            pitch, tempo = individual()
            t = rng.uniform(0.5, seconds)
            for _song_number in range(int(rng.integers(3, 9))):
                song = _song(species[s], sr, pitch, tempo, rng)
                place(s, t, song)
                t += song.size / sr + species[s].song_gap * rng.uniform(0.6, 1.6) / tempo

    background = {"wind": round(float(rng.uniform(-3.0, 3.0)), 2), "floor": -35.0}
    if index % 2 == 1:
        background["rain"] = round(float(rng.uniform(-4.0, 2.0)), 2)
    if index % 4 != 2:
        background["insects"] = round(float(rng.uniform(-14.0, -6.0)), 2)
    if index % 2 == 0:
        background["traffic"] = round(float(rng.uniform(-6.0, 0.0)), 2)
    return _Soundscape(index, f"site{index + 1}{suffix}", fmt, subtype, sr, samples,
                       tuple(species[i].name for i in chosen), background, tuple(sorted(free)),
                       tuple(sorted(calls, key=lambda c: (c.offset, c.species))))


# --------------------------------------------------------------------------
# The mix


def _layers(seed: int, plan: _Soundscape) -> tuple[np.ndarray, np.ndarray]:
    """(bed, songs) as float64 (samples,), each song scaled to its SNR over the bed."""
    rng = np.random.default_rng([seed, plan.index, _BED_STREAM])
    n, sr = plan.samples, plan.sample_rate
    bed = field_bed(rng, n, sr, plan.background)
    bed *= BED_RMS / float(np.sqrt(np.mean(bed**2)))
    songs = np.zeros(n)
    for call in plan.calls:
        span = slice(call.offset, call.offset + call.song.size)
        power = _band_power(bed[span], sr, call.low_hz, call.high_hz)
        songs[span] += math.sqrt(power * 10.0 ** (call.snr_db / 10.0) / call.band_power) * call.song
    return bed, songs


def _render(seed: int, plan: _Soundscape) -> np.ndarray:
    """The mix, peak at most PEAK (scaling bed and songs alike keeps every SNR)."""
    bed, songs = _layers(seed, plan)
    bed += songs
    peak = float(np.abs(bed).max())
    return bed * (PEAK / peak) if peak > PEAK else bed


# --------------------------------------------------------------------------
# Files

_BIT_REVERSED = bytes(int(f"{b:08b}"[::-1], 2) for b in range(256))


def _ogg_crc(page: bytes) -> int:
    # Ogg's CRC-32 is zlib's without the bit reflection and the final inversion.
    raw = zlib.crc32(page.translate(_BIT_REVERSED), 0xFFFFFFFF) ^ 0xFFFFFFFF
    return int(f"{raw:032b}"[::-1], 2)


def _fixed_ogg_serial(data: bytes, serial: int) -> bytes:
    """Give every Ogg page the same stream serial number (libsndfile draws one from the clock).

    Without this, two runs with the same arguments would differ in every page header.
    """
    out = bytearray(data)
    pos = 0
    while pos + 27 <= len(out) and out[pos : pos + 4] == b"OggS":
        header = 27 + out[pos + 26]
        end = pos + header + sum(out[pos + 27 : pos + header])
        struct.pack_into("<II", out, pos + 14, serial, struct.unpack_from("<I", out, pos + 18)[0])
        out[pos + 22 : pos + 26] = bytes(4)
        struct.pack_into("<I", out, pos + 22, _ogg_crc(bytes(out[pos:end])))
        pos = end
    return bytes(out)


def _encode(mix: np.ndarray, plan: _Soundscape) -> bytes:
    # PCM is quantised here, not by libsndfile, so the rounding is ours and fixed.
    data = np.round(mix * 32767.0).astype(np.int16) if plan.subtype == "PCM_16" else mix.astype(np.float32)
    buf = io.BytesIO()
    with soundfile.SoundFile(buf, "w", plan.sample_rate, 1, subtype=plan.subtype, format=plan.format) as f:
        for start in range(0, data.size, BLOCK_FRAMES):
            f.write(data[start : start + BLOCK_FRAMES])
    return _fixed_ogg_serial(buf.getvalue(), 0x6A6A6A6A) if plan.format == "OGG" else buf.getvalue()


def raven_rows(plan: _Soundscape) -> list[list[Any]]:
    rows = []
    for number, call in enumerate(plan.calls, 1):
        begin, end = plan.begin_end(call)
        rows.append([number, "Spectrogram 1", 1, f"{begin:.4f}", f"{end:.4f}", f"{call.low_hz:.1f}",
                     f"{call.high_hz:.1f}", call.species])
    return rows


def _write(out: Path, seed: int, plan: _Soundscape) -> dict[str, int]:
    data = _encode(_render(seed, plan), plan)
    with fsutil.atomic_open(out / plan.name, "wb") as f:
        f.write(data)
    table = fsutil.tsv_text(RAVEN_COLUMNS, raven_rows(plan))
    table_name = f"{Path(plan.name).stem}.selections.txt"
    with fsutil.atomic_open(out / table_name) as f:
        f.write(table)
    return {plan.name: len(data), table_name: len(table.encode())}


def _describe(plan: _Soundscape) -> dict[str, Any]:
    calls = []
    for call in plan.calls:
        begin, end = plan.begin_end(call)
        calls.append({"species": call.species, "begin": round(begin, 4), "end": round(end, 4),
                      "low_hz": round(call.low_hz, 1), "high_hz": round(call.high_hz, 1), "snr_db": call.snr_db})
    return {"file": plan.name, "format": plan.format, "subtype": plan.subtype, "sample_rate": plan.sample_rate,
            "seconds": round(plan.seconds, 4), "species": list(plan.species), "background_db": plan.background,
            "bird_free": [list(span) for span in plan.bird_free], "calls": calls}


def _arguments(n_species: int, seed: int, n_files: int, min_seconds: float, max_seconds: float) -> dict[str, Any]:
    for name, value, low, high in (("n_species", n_species, 1, None), ("seed", seed, 0, None),
                                   ("n_files", n_files, 1, MAX_FILES)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low or (
                high is not None and value > high):
            raise ValueError(f"{name} must be an integer of at least {low}{f' and at most {high}' if high else ''}, "
                             f"not {value!r}")
    # A bird-free stretch of at least 10 s and songs around it need room.
    if not 30.0 <= float(min_seconds) <= float(max_seconds) <= 3600.0:
        raise ValueError(f"soundscape lengths must satisfy 30 <= min <= max <= 3600 s, not {min_seconds}-{max_seconds}")
    return {"n_species": int(n_species), "seed": int(seed), "n_files": int(n_files),
            "min_seconds": float(min_seconds), "max_seconds": float(max_seconds)}


def _lengths(arguments: dict[str, Any]) -> list[float]:
    rng = np.random.default_rng([arguments["seed"], _PLAN_STREAM])
    return [round(float(rng.uniform(arguments["min_seconds"], arguments["max_seconds"])), 1)
            for _ in range(arguments["n_files"])]


def make_soundscapes(
    out_dir: str | os.PathLike,
    n_species: int = 8,
    seed: int = DEFAULT_SEED,
    n_files: int = 5,
    min_seconds: float = 180.0,
    max_seconds: float = 300.0,
) -> SoundscapeSummary:
    """Write `n_files` soundscapes `site<k>.<wav|flac|ogg|mp3>` and their `site<k>.selections.txt` to `out_dir`.

    The species are the first `n_species` of `make_demo(..., n_species, seed)`:
    call make_demo with the same two values.  The same arguments give
    byte-identical files; a folder already holding them (its
    `.soundscapes.json` says so and every file has its recorded size) is left
    as it is, files of an earlier set with other arguments are removed, and a
    non-empty folder without the marker is refused (FileExistsError).  The
    marker also lists every call with its SNR and every bird-free stretch.
    """
    arguments = _arguments(n_species, seed, n_files, min_seconds, max_seconds)
    out = Path(out_dir)
    names = species_names(arguments["seed"], arguments["n_species"])
    species = [make_species(arguments["seed"], i, name) for i, name in enumerate(names)]
    plans = [_plan_file(arguments["seed"], k, species, seconds) for k, seconds in enumerate(_lengths(arguments))]
    summary = SoundscapeSummary(len(plans), round(sum(p.seconds for p in plans), 3),
                                sum(len(p.calls) for p in plans), [p.name for p in plans])

    old = prepare_folder(out, MARKER_NAME, PARTIAL_NAME, GENERATOR_VERSION, arguments, "soundscapes")
    if old is None:
        return summary
    marker_path, partial_path = out / MARKER_NAME, out / PARTIAL_NAME
    new = {name for p in plans for name in (p.name, f"{Path(p.name).stem}.selections.txt")}
    # As in jibjib.demo: every name a run may leave is on record before any file is touched.
    fsutil.write_json(partial_path, {"files": dict.fromkeys(sorted(old | new))})
    marker_path.unlink(missing_ok=True)
    sizes: dict[str, int] = {}
    for plan in plans:
        sizes.update(_write(out, arguments["seed"], plan))
    for name in sorted(old - new):
        if isinstance(name, str) and _NAME_RE.match(name):
            (out / name).unlink(missing_ok=True)
    fsutil.write_json(marker_path, {"generator": "jibjib.demo_soundscapes", "version": GENERATOR_VERSION,
                                    "arguments": arguments, "files": dict(sorted(sizes.items())),
                                    "snr_definition": "in-band song power over bed power across the call's span",
                                    "soundscapes": [_describe(p) for p in plans]})
    partial_path.unlink()
    return summary
