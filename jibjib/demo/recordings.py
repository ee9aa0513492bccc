"""The demo set's recordings: the plan of every recording, and each one rendered and written as WAV slices.

Every recording varies pitch, tempo, syllable counts, gaps, level, format and
background noise, so a model cannot tell the species apart by memorising one
waveform; the background (pink to brown noise, sometimes wind) spreads below
and across the songs.  A recording is cut into the numbered slices of the real
xeno-canto-derived data, `<Genus_species>/<Genus_species>-<recording>_<k>.wav`.
"""

from __future__ import annotations

import dataclasses
import io
import math
import struct
from pathlib import Path

import numpy as np
import soundfile

from jibjib.core import fsutil
from jibjib.demo.beds import colored_noise, field_bed
from jibjib.demo.songs import (
    BACKGROUND_STREAM, PITCH_SPREAD, PLAN_STREAM, RENDER_STREAM, Species, render_song,
)

SAMPLE_RATES = (22050, 32000, 44100, 48000)
SAMPLE_RATE_WEIGHTS = (0.30, 0.20, 0.35, 0.15)
SUBTYPES = ("PCM_16", "FLOAT", "PCM_24")
SUBTYPE_WEIGHTS = (0.75, 0.15, 0.10)
STEREO_PROBABILITY = 0.25
SNR_DB = (5.0, 30.0)
MIN_LAST_SLICE_SECONDS = 3.0
# The folder of recordings without birds (a default of labels.background).
BACKGROUND_FOLDER = "noise"
BACKGROUND_RMS = 0.05  # the soundscapes' bed level; each recording varies it by +-10 dB


@dataclasses.dataclass(frozen=True)
class Recording:
    """One planned recording, without its audio: species, number, format, slice lengths and SNR.

    `species_index` is -1 for a recording of the background folder.
    """

    species_index: int
    recording_index: int
    species: str
    number: int
    sample_rate: int
    channels: int
    subtype: str
    slice_samples: tuple[int, ...]
    snr_db: float

    @property
    def files(self) -> list[str]:
        stem = f"{self.species}/{self.species}-{self.number}"
        return [f"{stem}_{k}.wav" for k in range(1, len(self.slice_samples) + 1)]

    @property
    def samples(self) -> int:
        return sum(self.slice_samples)

    @property
    def seconds(self) -> float:
        return self.samples / self.sample_rate


def plan_recordings(seed: int, species: list[Species], recordings_per_species: int,
                    slice_seconds: float, max_slices: int, background_recordings: int = 0) -> list[Recording]:
    """Names, formats and lengths of every recording, without synthesising any audio.

    Background recordings (species index -1) come last, from a stream of
    their own, so adding them changes no species recording.
    """
    plans = []
    min_last = min(MIN_LAST_SLICE_SECONDS, slice_seconds)
    owners = [(s, sp.name, r, [seed, s, r, PLAN_STREAM])
              for s, sp in enumerate(species) for r in range(recordings_per_species)]
    owners += [(-1, BACKGROUND_FOLDER, r, [seed, r, BACKGROUND_STREAM, PLAN_STREAM])
               for r in range(background_recordings)]
    used: dict[int, set[int]] = {}
    for s, name, r, stream in owners:
        rng = np.random.default_rng(stream)
        number = int(rng.integers(10_000, 1_000_000))
        while number in used.setdefault(s, set()):
            number += 1
        used[s].add(number)
        sr = int(rng.choice(SAMPLE_RATES, p=SAMPLE_RATE_WEIGHTS))
        channels = 2 if rng.random() < STEREO_PROBABILITY and s >= 0 else 1
        subtype = str(rng.choice(SUBTYPES, p=SUBTYPE_WEIGHTS))
        n_slices = int(rng.integers(1, max_slices + 1))
        full = int(round(slice_seconds * sr))
        last = min(full, int(round(rng.uniform(min_last, slice_seconds) * sr)))
        snr_db = round(float(rng.uniform(*SNR_DB)), 2)
        plans.append(Recording(s, r, name, number, sr, channels, subtype,
                               (full,) * (n_slices - 1) + (last,), snr_db))
    return plans


def _background(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """One channel of field background: coloured noise plus, sometimes, gusty wind rumble."""
    noise = colored_noise(rng, n, sr, alpha=rng.uniform(1.0, 2.0), knee_hz=rng.uniform(30.0, 200.0))
    if rng.random() < 0.5:
        wind = colored_noise(rng, n, sr, alpha=2.0, knee_hz=20.0, cutoff_hz=rng.uniform(80.0, 600.0))
        # Gusts: a slow positive envelope interpolated from a point every half second.
        points = rng.uniform(0.0, 1.0, size=int(n / sr * 2) + 2) ** 2
        gusts = np.interp(np.arange(n), np.linspace(0, n, points.size), points)
        noise = noise + rng.uniform(0.5, 2.0) * wind * gusts
    return noise


def _render_background(rec: Recording, seed: int) -> np.ndarray:
    """A recording with no bird: a random field bed (wind, rain, insects, traffic, noise floor) as (samples, channels)."""
    rng = np.random.default_rng([seed, rec.recording_index, BACKGROUND_STREAM, RENDER_STREAM])
    gains = {"wind": float(rng.uniform(-6.0, 3.0)), "floor": float(rng.uniform(-40.0, -25.0))}
    for name, chance, low, high in (("rain", 0.4, -6.0, 2.0), ("insects", 0.6, -16.0, -4.0),
                                    ("traffic", 0.4, -8.0, 0.0)):
        if rng.random() < chance:
            gains[name] = float(rng.uniform(low, high))
    bed = field_bed(rng, rec.samples, rec.sample_rate, gains)
    bed *= BACKGROUND_RMS * 10.0 ** (rng.uniform(-10.0, 10.0) / 20.0) / max(float(np.sqrt(np.mean(bed**2))), 1e-12)
    return (bed * min(1.0, 0.95 / max(float(np.abs(bed).max()), 1e-12)))[:, None]


def _render_recording(species: Species | None, rec: Recording, seed: int) -> np.ndarray:
    """The whole recording as float64 (samples, channels), peak within [-0.95, 0.95]."""
    if species is None:
        return _render_background(rec, seed)
    rng = np.random.default_rng([seed, rec.species_index, rec.recording_index, RENDER_STREAM])
    sr, n = rec.sample_rate, rec.samples
    pitch = rng.uniform(1.0 - PITCH_SPREAD, 1.0 + PITCH_SPREAD)
    tempo = rng.uniform(0.9, 1.1)
    song = np.zeros(n)
    # Songs start anywhere in the first 2 s, but early enough that even a
    # 1 s recording holds some song.
    t = int(rng.uniform(0.05, min(2.0, 0.3 * n / sr)) * sr)
    while t < n:
        chunk = render_song(species, sr, pitch, tempo, rng) * rng.uniform(0.6, 1.0)
        end = min(n, t + chunk.size)
        song[t:end] += chunk[: end - t]
        t += chunk.size + int(species.song_gap * rng.uniform(0.6, 1.6) / tempo * sr)
    if rec.channels == 2:
        # A second microphone a few centimetres away: slightly later (0.02-0.3 ms), slightly quieter.
        delay = max(1, int(round(sr * rng.uniform(2e-5, 3e-4))))
        other = np.concatenate([np.zeros(delay), song[:-delay]]) * rng.uniform(0.75, 1.0)
        clean = np.stack([song, other], axis=1)
        common, own = _background(rng, n, sr), _background(rng, n, sr)
        rho = rng.uniform(0.3, 0.9)
        noise = np.stack([common, rho * common + math.sqrt(1.0 - rho**2) * own], axis=1)
    else:
        clean = song[:, None]
        noise = _background(rng, n, sr)[:, None]
    signal_power = float(np.mean(clean**2))
    noise_power = float(np.mean(noise**2))
    if signal_power > 0.0:
        noise *= math.sqrt(signal_power / noise_power / 10.0 ** (rec.snr_db / 10.0))
    mix = clean + noise
    peak = float(np.max(np.abs(mix)))
    return mix * (rng.uniform(0.3, 0.95) / peak)


# --------------------------------------------------------------------------
# Files


def _encode_wav(samples: np.ndarray, sr: int, subtype: str) -> bytes:
    """WAV bytes; quantised here, not by libsndfile, so rounding is ours and fixed."""
    if subtype == "PCM_16":
        data: np.ndarray = np.round(samples * 32767.0).astype(np.int16)
    elif subtype == "PCM_24":
        # libsndfile keeps the top 24 bits of int32 input.
        data = np.round(samples * 8388607.0).astype(np.int32) << 8
    elif subtype == "FLOAT":
        data = samples.astype(np.float32)
    else:
        raise ValueError(f"unsupported subtype {subtype!r}")
    buf = io.BytesIO()
    soundfile.write(buf, data, sr, subtype=subtype, format="WAV")
    return _clear_peak_timestamp(buf.getvalue())


def _clear_peak_timestamp(wav: bytes) -> bytes:
    """Zero the write time libsndfile stamps into the PEAK chunk of float WAVs.

    Without this, two runs with the same arguments would differ in those four bytes.
    """
    out = bytearray(wav)
    pos = 12
    while pos + 8 <= len(out):
        chunk_id, size = struct.unpack_from("<4sI", out, pos)
        if chunk_id == b"PEAK" and size >= 8:
            out[pos + 12 : pos + 16] = bytes(4)  # after the 4-byte version
        if chunk_id == b"data":
            break
        pos += 8 + size + (size & 1)
    return bytes(out)


def write_recording(out: Path, species: Species | None, rec: Recording, seed: int) -> dict[str, int]:
    """Render a recording (of the background folder when `species` is None) and write its slices below `out`;
    returns each file's size in bytes, for the marker."""
    audio = _render_recording(species, rec, seed)
    sizes = {}
    start = 0
    for name, count in zip(rec.files, rec.slice_samples):
        piece = audio[start : start + count]
        start += count
        data = _encode_wav(piece[:, 0] if rec.channels == 1 else piece, rec.sample_rate, rec.subtype)
        with fsutil.atomic_open(out / name, "wb") as f:
            f.write(data)
        sizes[name] = len(data)
    return sizes
