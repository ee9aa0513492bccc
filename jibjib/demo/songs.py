"""The demo species and their songs: Latin-looking names, song templates built of syllables, and their synthesis.

Every species sings a song built from its own syllables (frequency sweeps,
chevrons, trills, harmonic notes) in its own register and rhythm, so a CNN on
log-mel patches can tell them apart.  Song energy stays within 1-8 kHz.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

# Design band of every syllable before per-recording pitch changes (at most
# +-4 % in all): keeps song energy inside 1-8 kHz and below VGGish's 7.5 kHz
# top mel edge.
BAND_LO_HZ, BAND_HI_HZ = 1200.0, 7000.0
# Species centre frequencies are spread over this range (log scale).
CENTER_LO_HZ, CENTER_HI_HZ = 1700.0, 5600.0
PITCH_SPREAD = 0.03   # per recording
PITCH_JITTER = 0.01   # per syllable

# Independent random streams per purpose: adding a feature to one stream must
# not shift the numbers drawn by another (names, plans, sounds).  All the demo
# set's streams are numbered here, so that none is used twice (jibjib.demo.recordings
# draws from the last three).
NAMES_STREAM, SPECIES_STREAM, PLAN_STREAM, RENDER_STREAM, BACKGROUND_STREAM = 1, 2, 3, 4, 5
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0
SYLLABLE_KINDS = ("sweep", "trill", "harmonic", "chevron")


# --------------------------------------------------------------------------
# Species: names and song templates


@dataclasses.dataclass(frozen=True)
class Syllable:
    """One syllable of a species' song template, before a recording's pitch and tempo changes."""

    kind: str  # one of SYLLABLE_KINDS
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
class Species:
    """A demo species' song template: its syllables and the phrase they are sung in."""

    name: str
    syllables: tuple[Syllable, ...]
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


def species_names(seed: int, n: int) -> list[str]:
    """`n` distinct Latin-looking binomials; the first k do not depend on `n`."""
    rng = np.random.default_rng([seed, NAMES_STREAM])
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


def _make_syllable(rng: np.random.Generator, kind: str, center: float) -> Syllable:
    mid = center * rng.uniform(0.85, 1.15)
    attack = float(rng.uniform(0.1, 0.5))
    gain = float(rng.uniform(0.6, 1.0))
    if kind == "sweep":
        span = rng.uniform(1.25, 1.9)
        lo, hi = _fit(mid / math.sqrt(span), mid * math.sqrt(span))
        start, end = (lo, hi) if rng.random() < 0.5 else (hi, lo)
        return Syllable(kind, float(rng.uniform(0.06, 0.25)), start, end,
                         exponential=bool(rng.random() < 0.5), attack=attack, gain=gain)
    if kind == "chevron":
        span = rng.uniform(1.15, 1.5)
        lo, hi = _fit(mid / math.sqrt(span), mid * math.sqrt(span))
        start, turn = (lo, hi) if rng.random() < 0.6 else (hi, lo)
        return Syllable(kind, float(rng.uniform(0.08, 0.2)), start, turn, attack=attack, gain=gain)
    if kind == "trill":
        span = rng.uniform(1.05, 1.3)
        lo, hi = _fit(mid / math.sqrt(span), mid * math.sqrt(span))
        # Most real trill notes are down-slurred; some go up.
        start, end = (hi, lo) if rng.random() < 0.7 else (lo, hi)
        return Syllable(kind, float(rng.uniform(0.012, 0.035)), start, end, attack=attack, gain=gain,
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
        return Syllable(kind, float(rng.uniform(0.1, 0.35)), f0, f_end, attack=attack, gain=gain,
                         partials=partials, vibrato_hz=float(rng.uniform(4.0, 14.0)),
                         vibrato_depth=float(rng.uniform(0.0, 0.02)))
    raise ValueError(f"unknown syllable kind {kind!r}")


def make_species(seed: int, index: int, name: str) -> Species:
    """The song template of the `index`-th species of a seed's demo set."""
    rng = np.random.default_rng([seed, index, SPECIES_STREAM])
    # A golden-ratio walk over log frequency spreads any number of species
    # evenly, so no two land in the same register by chance.
    u = (0.5 + index * _GOLDEN + rng.uniform(-0.02, 0.02)) % 1.0
    center = CENTER_LO_HZ * (CENTER_HI_HZ / CENTER_LO_HZ) ** u
    # The main syllable type cycles, so neighbouring species never share it.
    kinds = [SYLLABLE_KINDS[index % len(SYLLABLE_KINDS)]]
    kinds += [str(k) for k in rng.choice(SYLLABLE_KINDS, size=int(rng.integers(1, 4)))]
    syllables = tuple(_make_syllable(rng, kind, center) for kind in kinds)
    order = rng.permutation(len(syllables))
    phrase = tuple(
        (int(i), 1 if syllables[i].kind == "trill" else int(rng.integers(1, 4))) for i in order
    )
    return Species(name, syllables, phrase,
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


def _render_syllable(syl: Syllable, sr: int, pitch: float, tempo: float,
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


def render_song(species: Species, sr: int, pitch: float, tempo: float,
                rng: np.random.Generator) -> np.ndarray:
    """One song of a species at `sr` Hz, its pitch and tempo scaled, each syllable then followed by the
    species' syllable gap."""
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
