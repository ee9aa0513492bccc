"""A synthetic, deterministic bird-song data set, so `make demo` needs no network.

The layout copies the real xeno-canto-derived data: `<Genus_species>/` folders
holding `<Genus_species>-<recording>_<k>.wav`, the k-th fixed-length slice of a
recording.  Every species sings a song built from its own syllables (frequency
sweeps, chevrons, trills, harmonic notes) in its own register and rhythm, so a
CNN on log-mel patches can tell them apart; every recording varies pitch,
tempo, syllable counts, gaps, level, format and background noise, so it cannot
do so by memorising one waveform.  Song energy stays within 1-8 kHz; the
background (pink to brown noise, sometimes wind) spreads below and across it.

Only numpy, scipy and soundfile are used: the demo must run before any model
code (TensorFlow) is importable.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np
import scipy.fft
import soundfile

from jibjib.core import fsutil
from jibjib.demo.beds import _colored_noise, field_bed

__all__ = ["DemoSummary", "make_demo", "DEFAULT_SEED", "MARKER_NAME", "GENERATOR_VERSION"]

# Bump whenever the output of the same arguments changes, so an old demo
# folder is regenerated instead of being trusted by the marker.
GENERATOR_VERSION = 2
# Written last, so its presence means "complete" (the Makefile uses it as its target).
MARKER_NAME = ".demo.json"
# With the workflow's default split (seed 42, 0.7/0.15/0.15 by recording), this
# seed gives every demo species at least two recordings in val and in test, so
# the demo's evaluation has something to measure for each class
# (tests/test_demo.py checks it).
DEFAULT_SEED = 57
# Lists every file a run in progress may leave, so a killed run can be cleaned up.
PARTIAL_NAME = ".demo.partial.json"

SAMPLE_RATES = (22050, 32000, 44100, 48000)
SAMPLE_RATE_WEIGHTS = (0.30, 0.20, 0.35, 0.15)
SUBTYPES = ("PCM_16", "FLOAT", "PCM_24")
SUBTYPE_WEIGHTS = (0.75, 0.15, 0.10)
STEREO_PROBABILITY = 0.25
SNR_DB = (5.0, 30.0)
MIN_LAST_SLICE_SECONDS = 3.0
MAX_SPECIES = 200

# Design band of every syllable before per-recording pitch changes (at most
# +-4 % in all): keeps song energy inside 1-8 kHz and below VGGish's 7.5 kHz
# top mel edge.
BAND_LO_HZ, BAND_HI_HZ = 1200.0, 7000.0
# Species centre frequencies are spread over this range (log scale).
CENTER_LO_HZ, CENTER_HI_HZ = 1700.0, 5600.0
PITCH_SPREAD = 0.03   # per recording
PITCH_JITTER = 0.01   # per syllable

# Independent random streams per purpose: adding a feature to one stream must
# not shift the numbers drawn by another (names, plans, sounds).
_NAMES_STREAM, _SPECIES_STREAM, _PLAN_STREAM, _RENDER_STREAM, _BACKGROUND_STREAM = 1, 2, 3, 4, 5
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0
_KINDS = ("sweep", "trill", "harmonic", "chevron")
# The folder of recordings without birds (a default of labels.background).
BACKGROUND_FOLDER = "noise"
_FILE_RE = re.compile(rf"^(?P<species>[A-Z][a-z]+_[a-z]+|{BACKGROUND_FOLDER})/(?P=species)-\d+_\d+\.wav$")
BACKGROUND_RMS = 0.05  # the soundscapes' bed level; each recording varies it by +-10 dB


@dataclasses.dataclass(frozen=True)
class DemoSummary:
    """What `make_demo` produced (or found already in place)."""

    n_species: int
    n_recordings: int
    n_files: int
    seconds: float  # total audio duration of all files
    species: list[str]  # sorted, i.e. in class-id order
    n_background_files: int = 0  # in the background folder (noise/), counted in n_files too


# --------------------------------------------------------------------------
# Species: names and song templates


@dataclasses.dataclass(frozen=True)
class _Syllable:
    kind: str  # one of _KINDS
    seconds: float  # whole syllable; for trills one note
    f_start: float  # Hz; for chevrons f_end is the turning point
    f_end: float
    exponential: bool = False  # glide law of sweeps
    attack: float = 0.3  # fraction of the syllable spent rising
    gain: float = 1.0
    partials: tuple[float, ...] = (1.0,)  # harmonic amplitudes, fundamental first
    vibrato_hz: float = 0.0
    vibrato_depth: float = 0.0  # fraction of the frequency
    notes: int = 1  # trill notes
    note_gap: float = 0.0  # seconds of silence between trill notes


@dataclasses.dataclass(frozen=True)
class _Species:
    name: str
    syllables: tuple[_Syllable, ...]
    phrase: tuple[tuple[int, int], ...]  # (syllable index, typical repeats), in song order
    syllable_gap: float  # seconds between syllables of a song
    song_gap: float  # typical seconds between songs


_GENUS_STEMS = (
    "Acro", "Calli", "Chloro", "Cyano", "Dendro", "Eremo", "Helio", "Hylo", "Lepto", "Melano",
    "Micro", "Ortho", "Phyllo", "Poly", "Ptero", "Rhodo", "Sylvi", "Thryo", "Xantho", "Zono",
)
_GENUS_ENDINGS = (
    ("ornis", "f"), ("spiza", "f"), ("phila", "f"), ("sitta", "f"), ("cichla", "f"),
    ("thraupis", "f"), ("chelidon", "f"), ("dromus", "m"), ("cercus", "m"), ("phonus", "m"),
    ("ptilus", "m"), ("rhamphus", "m"), ("tyrannus", "m"), ("scopus", "m"),
)
# Adjective stems take -us (masculine genus) or -a (feminine), as Latin requires.
_ADJECTIVE_STEMS = (
    "alb", "aurat", "cinere", "flav", "fusc", "glauc", "lineat", "maculat", "melodic", "minut",
    "montan", "obscur", "pallid", "rubid", "ruf", "sonor", "striat", "tenu", "vari", "virid",
)
_INVARIANT_EPITHETS = (
    "alpestris", "brevis", "cantans", "gracilis", "palustris", "sibilans", "silvestris",
    "tinniens", "trillans", "vocalis",
)


def _species_names(seed: int, n: int) -> list[str]:
    """`n` distinct Latin-looking binomials; the first k do not depend on `n`."""
    rng = np.random.default_rng([seed, _NAMES_STREAM])
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < n:
        stem = _GENUS_STEMS[rng.integers(len(_GENUS_STEMS))]
        ending, gender = _GENUS_ENDINGS[rng.integers(len(_GENUS_ENDINGS))]
        if stem[-1] in "aeiou" and ending[0] in "aeiou":
            stem = stem[:-1]  # Acro + ornis -> Acrornis
        if rng.random() < 0.3:
            epithet = _INVARIANT_EPITHETS[rng.integers(len(_INVARIANT_EPITHETS))]
        else:
            epithet = _ADJECTIVE_STEMS[rng.integers(len(_ADJECTIVE_STEMS))] + ("us" if gender == "m" else "a")
        name = f"{stem}{ending}_{epithet}"
        if name not in seen:
            seen.add(name)
            names.append(name)
    return names


def _fit(lo: float, hi: float) -> tuple[float, float]:
    """Shift (lo, hi) into the design band, narrowing it only if it is wider than the band."""
    if hi > BAND_HI_HZ:
        lo, hi = lo * BAND_HI_HZ / hi, BAND_HI_HZ
    if lo < BAND_LO_HZ:
        lo, hi = BAND_LO_HZ, min(hi * BAND_LO_HZ / lo, BAND_HI_HZ)
    return lo, hi


def _make_syllable(rng: np.random.Generator, kind: str, center: float) -> _Syllable:
    mid = center * rng.uniform(0.85, 1.15)
    attack = float(rng.uniform(0.1, 0.5))
    gain = float(rng.uniform(0.6, 1.0))
    if kind == "sweep":
        span = rng.uniform(1.25, 1.9)
        lo, hi = _fit(mid / math.sqrt(span), mid * math.sqrt(span))
        start, end = (lo, hi) if rng.random() < 0.5 else (hi, lo)
        return _Syllable(kind, float(rng.uniform(0.06, 0.25)), start, end,
                         exponential=bool(rng.random() < 0.5), attack=attack, gain=gain)
    if kind == "chevron":
        span = rng.uniform(1.15, 1.5)
        lo, hi = _fit(mid / math.sqrt(span), mid * math.sqrt(span))
        start, turn = (lo, hi) if rng.random() < 0.6 else (hi, lo)
        return _Syllable(kind, float(rng.uniform(0.08, 0.2)), start, turn, attack=attack, gain=gain)
    if kind == "trill":
        span = rng.uniform(1.05, 1.3)
        lo, hi = _fit(mid / math.sqrt(span), mid * math.sqrt(span))
        # Most real trill notes are down-slurred; some go up.
        start, end = (hi, lo) if rng.random() < 0.7 else (lo, hi)
        return _Syllable(kind, float(rng.uniform(0.012, 0.035)), start, end, attack=attack, gain=gain,
                         notes=int(rng.integers(5, 15)), note_gap=float(rng.uniform(0.006, 0.03)))
    if kind == "harmonic":
        # `mid` becomes one of the first three partials, whichever keeps the
        # fundamental at or above 1.2 kHz and the second partial in the band.
        fits = [mid / h for h in (1, 2, 3) if BAND_LO_HZ <= mid / h <= BAND_HI_HZ / 2]
        f0 = fits[rng.integers(len(fits))] if fits else min(max(mid, BAND_LO_HZ), BAND_HI_HZ / 2)
        glide = rng.uniform(0.9, 1.12)
        f_end = min(max(f0 * glide, BAND_LO_HZ), BAND_HI_HZ / 2)
        top = max(f0, f_end) * (1.0 + 3.0 * PITCH_JITTER)
        n_partials = max(2, min(4, int(BAND_HI_HZ // top)))
        partials = (1.0,) + tuple(float(rng.uniform(0.15, 0.7) / k) for k in range(2, n_partials + 1))
        return _Syllable(kind, float(rng.uniform(0.1, 0.35)), f0, f_end, attack=attack, gain=gain,
                         partials=partials, vibrato_hz=float(rng.uniform(4.0, 14.0)),
                         vibrato_depth=float(rng.uniform(0.0, 0.02)))
    raise ValueError(f"unknown syllable kind {kind!r}")


def _make_species(seed: int, index: int, name: str) -> _Species:
    rng = np.random.default_rng([seed, index, _SPECIES_STREAM])
    # A golden-ratio walk over log frequency spreads any number of species
    # evenly, so no two land in the same register by chance.
    u = (0.5 + index * _GOLDEN + rng.uniform(-0.02, 0.02)) % 1.0
    center = CENTER_LO_HZ * (CENTER_HI_HZ / CENTER_LO_HZ) ** u
    # The main syllable type cycles, so neighbouring species never share it.
    kinds = [_KINDS[index % len(_KINDS)]]
    kinds += [str(k) for k in rng.choice(_KINDS, size=int(rng.integers(1, 4)))]
    syllables = tuple(_make_syllable(rng, kind, center) for kind in kinds)
    order = rng.permutation(len(syllables))
    phrase = tuple(
        (int(i), 1 if syllables[i].kind == "trill" else int(rng.integers(1, 4))) for i in order
    )
    return _Species(name, syllables, phrase,
                    syllable_gap=float(rng.uniform(0.02, 0.12)), song_gap=float(rng.uniform(0.8, 2.2)))


# --------------------------------------------------------------------------
# Synthesis


def _envelope(n: int, attack: float) -> np.ndarray:
    """Raised-cosine rise then fall; smooth edges keep onsets from splattering out of band."""
    rise = max(1, int(n * attack))
    fall = max(1, n - rise)
    up = 0.5 - 0.5 * np.cos(np.pi * np.arange(rise) / rise)
    down = 0.5 + 0.5 * np.cos(np.pi * (np.arange(fall) + 1) / fall)
    return np.concatenate([up, down])[:n]


def _tone(freq: np.ndarray, sr: int, partials: tuple[float, ...] = (1.0,)) -> np.ndarray:
    # Integrating the instantaneous frequency keeps the phase continuous through glides.
    phase = 2.0 * np.pi * np.cumsum(freq) / sr
    out = partials[0] * np.sin(phase)
    for k, amp in enumerate(partials[1:], 2):
        out += amp * np.sin(k * phase)
    return out / sum(partials)


def _glide(f_start: float, f_end: float, n: int, exponential: bool) -> np.ndarray:
    x = np.linspace(0.0, 1.0, n)
    if exponential:
        return f_start * (f_end / f_start) ** x
    return f_start + (f_end - f_start) * x


def _render_syllable(syl: _Syllable, sr: int, pitch: float, tempo: float,
                     rng: np.random.Generator) -> np.ndarray:
    n = max(8, int(syl.seconds / tempo * sr))
    if syl.kind == "sweep":
        wave = _tone(pitch * _glide(syl.f_start, syl.f_end, n, syl.exponential), sr)
        return syl.gain * wave * _envelope(n, syl.attack)
    if syl.kind == "chevron":
        x = np.sin(np.pi * np.linspace(0.0, 1.0, n))
        wave = _tone(pitch * (syl.f_start + (syl.f_end - syl.f_start) * x), sr)
        return syl.gain * wave * _envelope(n, syl.attack)
    if syl.kind == "harmonic":
        t = np.arange(n) / sr
        vibrato = 1.0 + syl.vibrato_depth * np.sin(2.0 * np.pi * syl.vibrato_hz * t)
        freq = pitch * _glide(syl.f_start, syl.f_end, n, True) * vibrato
        return syl.gain * _tone(freq, sr, syl.partials) * _envelope(n, syl.attack)
    if syl.kind == "trill":
        note = _tone(pitch * _glide(syl.f_start, syl.f_end, n, False), sr) * _envelope(n, 0.3)
        gap = np.zeros(int(syl.note_gap / tempo * sr))
        notes = max(2, int(round(syl.notes * rng.uniform(0.7, 1.3))))
        # Trills swell or fade a little, as a bird's breath runs out.
        contour = np.linspace(rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.0), notes)
        return syl.gain * np.concatenate([np.concatenate([a * note, gap]) for a in contour])
    raise ValueError(f"unknown syllable kind {syl.kind!r}")


def _render_song(species: _Species, sr: int, pitch: float, tempo: float,
                 rng: np.random.Generator) -> np.ndarray:
    gap = np.zeros(int(species.syllable_gap / tempo * sr))
    parts: list[np.ndarray] = []
    # Real songs are often broken off before the last phrase element.
    elements = species.phrase
    if len(elements) > 1 and rng.random() < 0.15:
        elements = elements[:-1]
    for syllable_index, repeats in elements:
        syl = species.syllables[syllable_index]
        count = max(1, repeats + int(rng.integers(-1, 2)))
        for _ in range(count):
            jitter = rng.uniform(1.0 - PITCH_JITTER, 1.0 + PITCH_JITTER)
            parts.append(_render_syllable(syl, sr, pitch * jitter, tempo, rng))
            parts.append(gap)
    return np.concatenate(parts)


def _background(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """One channel of field background: coloured noise plus, sometimes, gusty wind rumble."""
    noise = _colored_noise(rng, n, sr, alpha=rng.uniform(1.0, 2.0), knee_hz=rng.uniform(30.0, 200.0))
    if rng.random() < 0.5:
        wind = _colored_noise(rng, n, sr, alpha=2.0, knee_hz=20.0, cutoff_hz=rng.uniform(80.0, 600.0))
        # Gusts: a slow positive envelope interpolated from a point every half second.
        points = rng.uniform(0.0, 1.0, size=int(n / sr * 2) + 2) ** 2
        gusts = np.interp(np.arange(n), np.linspace(0, n, points.size), points)
        noise = noise + rng.uniform(0.5, 2.0) * wind * gusts
    return noise


@dataclasses.dataclass(frozen=True)
class _Recording:
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


def _plan(seed: int, species: list[_Species], recordings_per_species: int,
          slice_seconds: float, max_slices: int, background_recordings: int = 0) -> list[_Recording]:
    """Names, formats and lengths of every recording, without synthesising any audio.

    Background recordings (species index -1) come last, from a stream of
    their own, so adding them changes no species recording.
    """
    plans = []
    min_last = min(MIN_LAST_SLICE_SECONDS, slice_seconds)
    owners = [(s, sp.name, r, [seed, s, r, _PLAN_STREAM])
              for s, sp in enumerate(species) for r in range(recordings_per_species)]
    owners += [(-1, BACKGROUND_FOLDER, r, [seed, r, _BACKGROUND_STREAM, _PLAN_STREAM])
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
        plans.append(_Recording(s, r, name, number, sr, channels, subtype,
                                (full,) * (n_slices - 1) + (last,), snr_db))
    return plans


def _render_background(rec: _Recording, seed: int) -> np.ndarray:
    """A recording with no bird: a random field bed (wind, rain, insects, traffic, noise floor) as (samples, channels)."""
    rng = np.random.default_rng([seed, rec.recording_index, _BACKGROUND_STREAM, _RENDER_STREAM])
    gains = {"wind": float(rng.uniform(-6.0, 3.0)), "floor": float(rng.uniform(-40.0, -25.0))}
    for name, chance, low, high in (("rain", 0.4, -6.0, 2.0), ("insects", 0.6, -16.0, -4.0),
                                    ("traffic", 0.4, -8.0, 0.0)):
        if rng.random() < chance:
            gains[name] = float(rng.uniform(low, high))
    bed = field_bed(rng, rec.samples, rec.sample_rate, gains)
    bed *= BACKGROUND_RMS * 10.0 ** (rng.uniform(-10.0, 10.0) / 20.0) / max(float(np.sqrt(np.mean(bed**2))), 1e-12)
    return (bed * min(1.0, 0.95 / max(float(np.abs(bed).max()), 1e-12)))[:, None]


def _render_recording(species: _Species | None, rec: _Recording, seed: int) -> np.ndarray:
    """The whole recording as float64 (samples, channels), peak within [-0.95, 0.95]."""
    if species is None:
        return _render_background(rec, seed)
    rng = np.random.default_rng([seed, rec.species_index, rec.recording_index, _RENDER_STREAM])
    sr, n = rec.sample_rate, rec.samples
    pitch = rng.uniform(1.0 - PITCH_SPREAD, 1.0 + PITCH_SPREAD)
    tempo = rng.uniform(0.9, 1.1)
    song = np.zeros(n)
    # Songs start anywhere in the first 2 s, but early enough that even a
    # 1 s recording holds some song.
    t = int(rng.uniform(0.05, min(2.0, 0.3 * n / sr)) * sr)
    while t < n:
        chunk = _render_song(species, sr, pitch, tempo, rng) * rng.uniform(0.6, 1.0)
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


def _write_recording(out: Path, species: _Species | None, rec: _Recording, seed: int) -> dict[str, int]:
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


def _arguments(n_species: int, recordings_per_species: int, seed: int,
               slice_seconds: float, max_slices: int, background_recordings: int = 0) -> dict[str, Any]:
    def count(value: Any, name: str, low: int, high: int | None = None) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name} must be an integer, not {type(value).__name__}")
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise ValueError(f"{name} must be {bound}, not {value}")
        return int(value)

    slice_seconds = float(slice_seconds)
    # One VGGish patch needs 0.975 s; shorter slices would all be rejected.
    if not math.isfinite(slice_seconds) or not 1.0 <= slice_seconds <= 600.0:
        raise ValueError(f"slice_seconds must be between 1 and 600, not {slice_seconds}")
    return {
        "n_species": count(n_species, "n_species", 1, MAX_SPECIES),
        "recordings_per_species": count(recordings_per_species, "recordings_per_species", 1),
        "seed": count(seed, "seed", 0),
        "slice_seconds": slice_seconds,
        "max_slices": count(max_slices, "max_slices", 1),
        "background_recordings": count(background_recordings, "background_recordings", 0),
    }


def _read_marker(path: Path) -> dict[str, Any] | None:
    """The marker's content; {} if it exists but is unreadable (still a demo folder)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _intact(out: Path, files: Any) -> bool:
    if not isinstance(files, dict) or not files:
        return False
    for name, size in files.items():
        try:
            if (out / name).stat().st_size != size:
                return False
        except OSError:
            return False
    return True


def _remove_stale(out: Path, names: set[str]) -> None:
    """Delete files an earlier demo with other arguments made; nothing else."""
    for name in sorted(names):
        # The marker is only trusted for names we could have written ourselves.
        if not isinstance(name, str) or not _FILE_RE.match(name):
            continue
        (out / name).unlink(missing_ok=True)
        try:
            (out / name).parent.rmdir()
        except OSError:
            pass  # still holds other files


def _marker(arguments: dict[str, Any], files: dict[str, int | None],
            plans: list[_Recording]) -> dict[str, Any]:
    return {
        "generator": "jibjib.demo",
        "version": GENERATOR_VERSION,
        "arguments": arguments,
        "files": dict(sorted(files.items())),
        "recordings": [
            {"species": p.species, "recording": f"{p.species}-{p.number}", "sample_rate": p.sample_rate,
             "channels": p.channels, "subtype": p.subtype, "seconds": round(p.seconds, 4),
             "snr_db": p.snr_db, "files": p.files}
            for p in plans
        ],
    }


def make_demo(
    out_dir: str | os.PathLike,
    n_species: int = 8,
    recordings_per_species: int = 20,
    seed: int = DEFAULT_SEED,
    slice_seconds: float = 10.0,
    max_slices: int = 2,
    background_recordings: int = 0,
) -> DemoSummary:
    """Write a synthetic bird-song set to `out_dir/<Genus_species>/<Genus_species>-<n>_<k>.wav`.

    Each recording lasts 1 to `max_slices` slices of `slice_seconds` (the last
    one at least 3 s) and is cut into numbered files; `background_recordings`
    more, without birds, go to `out_dir/noise/` (a background folder).  The same arguments give
    byte-identical files.  If `out_dir` already holds a complete demo made with
    the same arguments (its `.demo.json` marker says so and every file is
    there at its recorded size), nothing is rewritten.  Files of an earlier
    demo with other arguments are removed; anything else is left alone, but a
    non-empty `out_dir` without a marker is refused (FileExistsError) so real
    recordings never get mixed with synthetic ones.
    """
    arguments = _arguments(n_species, recordings_per_species, seed, slice_seconds, max_slices, background_recordings)
    out = Path(out_dir)
    names = _species_names(arguments["seed"], arguments["n_species"])
    species = [_make_species(arguments["seed"], i, name) for i, name in enumerate(names)]
    plans = _plan(arguments["seed"], species, arguments["recordings_per_species"],
                  arguments["slice_seconds"], arguments["max_slices"], arguments["background_recordings"])
    summary = DemoSummary(
        n_species=len(species),
        n_recordings=len(plans),
        n_files=sum(len(p.files) for p in plans),
        n_background_files=sum(len(p.files) for p in plans if p.species_index < 0),
        seconds=round(sum(p.seconds for p in plans), 3),
        species=sorted(names),
    )

    marker_path, partial_path = out / MARKER_NAME, out / PARTIAL_NAME
    previous = _read_marker(marker_path)
    if (
        previous
        and previous.get("version") == GENERATOR_VERSION
        and previous.get("arguments") == arguments
        and _intact(out, previous.get("files"))
    ):
        return summary
    partial = _read_marker(partial_path)
    if previous is None and partial is None and out.is_dir() and any(
        not p.name.startswith(".") for p in out.iterdir()
    ):
        raise FileExistsError(f"{out} is not empty and holds no {MARKER_NAME}: refusing to add a demo to it")

    out.mkdir(parents=True, exist_ok=True)
    fsutil.remove_stale_temps(out)
    old = set((previous or {}).get("files") or {}) | set((partial or {}).get("files") or {})
    new = {name for p in plans for name in p.files}
    # Listing old and new names before touching any file means a run killed
    # half-way leaves nothing the next run would not know to remove; the
    # marker goes first so a half-rewritten folder is never taken as complete.
    fsutil.write_json(partial_path, _marker(arguments, dict.fromkeys(old | new), plans))
    marker_path.unlink(missing_ok=True)
    sizes: dict[str, int | None] = {}
    for rec in plans:
        sizes.update(_write_recording(out, species[rec.species_index] if rec.species_index >= 0 else None, rec,
                                      arguments["seed"]))
    _remove_stale(out, old - new)
    fsutil.write_json(marker_path, _marker(arguments, sizes, plans))
    partial_path.unlink()
    return summary
