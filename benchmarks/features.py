"""Feature-step throughput: jibjib's pipeline vs. the VGGish reference, side by side.

Writes N synthetic 10 s WAV files (bird-like chirps in noise), then runs on
one core, in one process:
  reference: soundfile read + resampy kaiser_best + float64 log-mel + npz write
  jibjib:    jibjib.features.extract_file (read, checks, resample, float32
             log-mel, atomic npz write with the source hash), with the
             allocator setting the feature command uses
and prints the throughput of each in x real time per core, their ratio, and
the mean absolute log-mel difference between them.

    python benchmarks/features.py [--files 60] [--seconds 10] [--rate 44100]
"""

from __future__ import annotations

import os

# One core: set before numpy loads its BLAS.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import soundfile  # noqa: E402

from jibjib.core import fsutil  # noqa: E402
from jibjib.features.extract import extract_file, keep_freed_memory  # noqa: E402
from jibjib.features.frontend import reference_log_mel  # noqa: E402


def synthetic_song(seconds: float, rate: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    cycle = 0.4 + 0.2 * rng.random()
    phase = (t % cycle) / cycle
    freq = 2000 + 4000 * phase * rng.uniform(0.5, 1.0)
    song = np.sin(2 * np.pi * np.cumsum(freq) / rate) * (phase < 0.5)
    return (0.4 * song + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


def reference_step(wav: Path, npz: Path) -> np.ndarray:
    samples, rate = soundfile.read(str(wav), dtype="float64")
    log_mel = reference_log_mel(samples, rate)
    fsutil.save_npz(npz, log_mel=log_mel)
    return log_mel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=60)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=44100)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        wavs = []
        for i in range(args.files):
            wav = root / "wav" / f"song-{i}_1.wav"
            wav.parent.mkdir(exist_ok=True)
            soundfile.write(str(wav), synthetic_song(args.seconds, args.rate, i), args.rate, subtype="PCM_16")
            wavs.append(wav)
        audio_seconds = args.files * args.seconds

        keep_freed_memory()  # as `jibjib features` does; it helps both pipelines alike
        # Warm up both paths (resampy's numba compile, our filter tables) outside the timing.
        reference_step(wavs[0], root / "warm_ref.npz")
        extract_file(wavs[0], root / "warm.npz")

        start = time.perf_counter()
        for wav in wavs:
            reference_step(wav, root / "ref" / f"{wav.stem}.npz")
        reference_seconds = time.perf_counter() - start

        start = time.perf_counter()
        for wav in wavs:
            extract_file(wav, root / "ours" / f"{wav.stem}.npz")
        ours_seconds = time.perf_counter() - start

        diffs = [
            np.abs(np.load(root / "ours" / f"{w.stem}.npz")["log_mel"] - np.load(root / "ref" / f"{w.stem}.npz")["log_mel"])
            for w in wavs
        ]
        mean_diff = float(np.mean([d.mean() for d in diffs]))
        worst_band = float(np.max(np.mean([d.mean(axis=0) for d in diffs], axis=0)))

    ref_rate, our_rate = audio_seconds / reference_seconds, audio_seconds / ours_seconds
    print(f"files: {args.files} x {args.seconds:g} s at {args.rate} Hz, 16-bit mono ({audio_seconds:g} s of audio), one core")
    print(f"reference (resampy + float64 log-mel): {reference_seconds:7.2f} s  {ref_rate:8.0f}x real time")
    print(f"jibjib    (extract_file)             : {ours_seconds:7.2f} s  {our_rate:8.0f}x real time")
    print(f"speed-up: {our_rate / ref_rate:.1f}x")
    print(f"log-mel mean |difference|: {mean_diff:.2e} (worst band {worst_band:.2e})")


if __name__ == "__main__":
    main()
