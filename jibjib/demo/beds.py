"""Field background beds for the synthetic demo data: wind, rain, insects, distant traffic, a noise floor.

Shared by the demo soundscapes (the bed under their songs) and the demo
set's background folder (the same kinds of sound with no bird), each drawing
from random streams of its own.
"""

from __future__ import annotations

import numpy as np
import scipy.fft
import scipy.signal


def colored_noise(rng: np.random.Generator, n: int, sr: int, alpha: float, knee_hz: float,
                   cutoff_hz: float | None = None) -> np.ndarray:
    """Unit-power noise with a 1/f^alpha power spectrum, flat below `knee_hz`.

    The knee stands in for a microphone's low cut, without which brown noise
    would be all sub-audible drift.
    """
    size = scipy.fft.next_fast_len(n, real=True)  # a prime length would make the FFT crawl
    freqs = np.fft.rfftfreq(size, 1.0 / sr)
    shape = np.exp(np.log(knee_hz**2 + freqs**2) * (-alpha / 4.0))
    if cutoff_hz is not None:
        rolloff = (freqs / cutoff_hz) ** 2
        rolloff **= 4  # 8th-order low-pass magnitude: wind stays well below 1 kHz
        shape /= np.sqrt(1.0 + rolloff)
    shape[0] = 0.0
    spectrum = rng.standard_normal(2 * freqs.size).view(np.complex128)
    spectrum *= shape
    noise = scipy.fft.irfft(spectrum, size)[:n]
    return noise / max(float(np.sqrt(np.dot(noise, noise) / n)), 1e-12)



def _wind(rng: np.random.Generator, n: int, sr: float) -> np.ndarray:
    wind = colored_noise(rng, n, sr, alpha=2.0, knee_hz=20.0, cutoff_hz=rng.uniform(150.0, 500.0))
    return wind * _slow(rng, n, sr, 1.5, 0.2, 1.0) ** 2


def _traffic(rng: np.random.Generator, n: int, sr: float) -> np.ndarray:
    """A distant road: low rumble with a swell as each vehicle passes."""
    rumble = colored_noise(rng, n, sr, alpha=2.0, knee_hz=30.0, cutoff_hz=rng.uniform(200.0, 400.0))
    seconds = n / sr
    coarse = np.arange(0.0, seconds + 1.0, 0.25)
    swell = np.full(coarse.size, 0.3)
    for centre in rng.uniform(0.0, seconds, size=rng.poisson(seconds / 30.0)):
        swell += rng.uniform(0.5, 2.0) * np.exp(-0.5 * ((coarse - centre) / rng.uniform(2.0, 6.0)) ** 2)
    return rumble * np.interp(np.arange(n) / sr, coarse, swell)


def _rain(rng: np.random.Generator, n: int, sr: float) -> np.ndarray:
    """Drops (broadband clicks: thousands of faint ones a second, hundreds of louder), in showers."""
    rain = np.zeros(n)
    for rate, level, spread in ((rng.uniform(3000.0, 6000.0), 0.15, 0.3), (rng.uniform(200.0, 1000.0), 1.0, 0.8)):
        drops = np.zeros(n)
        count = rng.poisson(rate * n / sr)
        np.add.at(drops, rng.integers(0, n, size=count), rng.lognormal(np.log(level), spread, size=count))
        # A click and its exponential recovery: a smooth spectrum, flat above about 1/(2 pi tau) (a noise
        # burst instead would give every drop the same random comb, seen as stripes).
        tau = rng.uniform(0.0002, 0.0008) * sr
        click = np.diff(np.exp(-np.arange(int(6 * tau) + 2) / tau))
        rain += scipy.signal.oaconvolve(drops, click)[:n]
    rain *= _slow(rng, n, sr, 20.0, 0.3, 1.0) / max(float(np.sqrt(np.mean(rain**2))), 1e-12)
    return rain


def _insects(rng: np.random.Generator, n: int, sr: float) -> np.ndarray:
    """One or two crickets: a narrow-band carrier pulsed tens of times a second, in chirps, in bouts."""
    out = np.zeros(n)
    coarse = np.arange(0, n + 8, 8) / sr  # the envelopes vary slowly enough for every 8th sample
    for _ in range(int(rng.integers(1, 3))):
        carrier = rng.uniform(3000.0, min(9500.0, 0.42 * sr))
        drift_hz, pulse_hz, chirp_hz = rng.uniform(0.05, 0.2), rng.uniform(25.0, 70.0), rng.uniform(0.5, 3.0)
        # A low gate makes chirps of a few pulses, a high one a near-continuous katydid-like trill.
        gate, level = rng.uniform(-0.8, 0.4), rng.uniform(0.5, 1.0)
        pulses = (0.5 - 0.5 * np.cos(2.0 * np.pi * pulse_hz * coarse)) ** 2
        chirps = 0.5 + 0.5 * np.tanh(8.0 * (np.cos(2.0 * np.pi * chirp_hz * coarse) - gate))
        bouts = np.clip(np.interp(coarse, *_points(rng, n / sr, 15.0, -0.5, 1.5)), 0.0, 1.0)
        envelope = level * pulses * chirps * bouts
        # The phase of a carrier drifting by 0.4 %, integrated in closed form; smooth enough to interpolate too.
        phase = 2.0 * np.pi * carrier * (coarse - 0.004 * np.cos(2.0 * np.pi * drift_hz * coarse)
                                         / (2.0 * np.pi * drift_hz))
        for start in range(0, n, 1 << 20):  # in blocks: full-length temporaries would cost 100 MB each
            t = np.arange(start, min(n, start + (1 << 20))) / sr
            out[start : start + t.size] += np.sin(np.interp(t, coarse, phase)) * np.interp(t, coarse, envelope)
    return out / max(float(np.sqrt(np.mean(out**2))), 1e-12)


def _points(rng: np.random.Generator, seconds: float, every: float, low: float, high: float
            ) -> tuple[np.ndarray, np.ndarray]:
    """(times, values) of random points `every` seconds apart, covering `seconds`."""
    values = rng.uniform(low, high, size=int(seconds / every) + 3)
    return np.arange(values.size) * every, values


def _slow(rng: np.random.Generator, n: int, sr: float, every: float, low: float, high: float) -> np.ndarray:
    """A smooth envelope through random points `every` seconds apart, at every sample."""
    return np.interp(np.arange(n) / sr, *_points(rng, n / sr, every, low, high))


# Wind and traffic lie below 1 kHz: made at about 2 kHz and upsampled, they cost a twentieth.
_LOW_COMPONENTS = {"traffic": _traffic, "wind": _wind}
_COMPONENTS = {"floor": lambda rng, n, sr: rng.standard_normal(n), "insects": _insects, "rain": _rain}
_LOW_RATE = 2000


def field_bed(rng: np.random.Generator, n: int, sr: int, gains_db: dict[str, float]) -> np.ndarray:
    """(n,) float64: the named components (keys of COMPONENT_NAMES) at their gains, summed, not normalised."""
    factor = max(1, sr // _LOW_RATE)
    low = np.zeros(n // factor + 1)
    for name in (name for name in _LOW_COMPONENTS if name in gains_db):
        low += 10.0 ** (gains_db[name] / 20.0) * _LOW_COMPONENTS[name](rng, low.size, sr / factor)
    bed = scipy.signal.resample_poly(low, factor, 1)[:n]
    for name in (name for name in _COMPONENTS if name in gains_db):
        bed += 10.0 ** (gains_db[name] / 20.0) * _COMPONENTS[name](rng, n, sr)
    return bed


COMPONENT_NAMES = (*_LOW_COMPONENTS, *_COMPONENTS)
