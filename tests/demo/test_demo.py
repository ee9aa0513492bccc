"""Tests of the synthetic demo set (jibjib.demo)."""

from __future__ import annotations

import json
import os
import re
import struct
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.signal
import soundfile

from conftest import REPO
from jibjib.demo import recordings as demo_recordings
from jibjib.demo import songs as demo_songs
from jibjib.demo import species as demo
from jibjib.features.audio import read_audio
from jibjib.demo.species import DEFAULT_SEED, MARKER_NAME, DemoSummary, make_demo

# Seed 1 at 3 x 3 holds every subtype, mono and stereo, and all four rates (see test_small_set_is_varied).
SMALL = dict(n_species=3, recordings_per_species=3, seed=1, slice_seconds=4.0, max_slices=3)
# The first 6 recordings of each of the 8 default species: a prefix of the default set.
MID = dict(n_species=8, recordings_per_species=6)
NAME_RE = re.compile(r"^(?P<species>[A-Z][a-z]+_[a-z]+)-(?P<number>\d+)_(?P<k>\d+)\.wav$")


def wav_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in wav_files(root)}


def recordings(root: Path) -> dict[str, list[Path]]:
    """Recording id -> its slice files in slice order."""
    found: dict[str, list[tuple[int, Path]]] = defaultdict(list)
    for path in wav_files(root):
        m = NAME_RE.match(path.name)
        assert m, path
        found[f"{m['species']}-{m['number']}"].append((int(m["k"]), path))
    return {rec: [p for _, p in sorted(parts)] for rec, parts in found.items()}


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[Path, DemoSummary]:
    out = tmp_path_factory.mktemp("small") / "birds"
    return out, make_demo(out, **SMALL)


@pytest.fixture(scope="module")
def mid(tmp_path_factory) -> tuple[Path, DemoSummary]:
    out = tmp_path_factory.mktemp("mid")
    return out, make_demo(out, **MID)


def test_deterministic(small, tmp_path):
    out, summary = small
    again = make_demo(tmp_path / "other", **SMALL)
    assert again == summary
    first, second = snapshot(out), snapshot(tmp_path / "other")
    assert first.keys() == second.keys()
    assert all(first[name] == second[name] for name in first)
    assert (out / MARKER_NAME).read_bytes() == (tmp_path / "other" / MARKER_NAME).read_bytes()


def test_other_seed_differs(small, tmp_path):
    _, summary = small
    other = make_demo(tmp_path, **{**SMALL, "seed": 2})
    assert other.species != summary.species


def test_layout_and_naming(small):
    out, summary = small
    species_dirs = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert species_dirs == summary.species
    assert len(set(summary.species)) == summary.n_species == SMALL["n_species"]
    files = wav_files(out)
    assert len(files) == summary.n_files
    for path in files:
        m = NAME_RE.match(path.name)
        assert m, path.name
        assert m["species"] == path.parent.name
        assert path.parent.parent == out
    recs = recordings(out)
    assert len(recs) == summary.n_recordings == SMALL["n_species"] * SMALL["recordings_per_species"]
    for rec, parts in recs.items():
        ks = [int(NAME_RE.match(p.name)["k"]) for p in parts]
        assert ks == list(range(1, len(ks) + 1)), rec
        assert 1 <= len(ks) <= SMALL["max_slices"]


def test_slice_lengths_and_total(small):
    out, summary = small
    total = 0.0
    for rec, parts in recordings(out).items():
        seconds = [soundfile.info(str(p)).duration for p in parts]
        total += sum(seconds)
        for s in seconds[:-1]:
            assert s == pytest.approx(SMALL["slice_seconds"], abs=1e-3), rec
        assert 3.0 - 1e-3 <= seconds[-1] <= SMALL["slice_seconds"] + 1e-3, rec
    assert total == pytest.approx(summary.seconds, abs=0.01)


def test_samples_finite_and_in_range_and_readable(small):
    out, _ = small
    for path in wav_files(out):
        data, _ = soundfile.read(str(path), dtype="float64", always_2d=True)
        assert data.shape[0] > 0
        assert np.isfinite(data).all(), path
        assert np.abs(data).max() <= 1.0, path
        assert np.abs(data).max() > 0.1, path  # peak-normalised, not near silence
        read_audio(path)  # the pipeline's own reader finds nothing to reject


def test_small_set_is_varied(small):
    out, _ = small
    infos = [soundfile.info(str(p)) for p in wav_files(out)]
    assert {i.subtype for i in infos} == {"PCM_16", "PCM_24", "FLOAT"}
    assert {i.channels for i in infos} == {1, 2}
    assert {i.format for i in infos} == {"WAV"}


def test_stereo_channels_differ(small):
    out, _ = small
    stereo = [p for p in wav_files(out) if soundfile.info(str(p)).channels == 2]
    assert stereo
    for path in stereo:
        data, sr = soundfile.read(str(path))
        assert not np.array_equal(data[:, 0], data[:, 1])
        # The same scene, not two: in the song band, one channel is the other
        # shifted by a few samples.  (Below 1 kHz, brown noise and wind make
        # any correlation of a few seconds meaningless.)
        sos = scipy.signal.butter(4, 1000.0, "highpass", fs=sr, output="sos")
        left, right = scipy.signal.sosfilt(sos, data, axis=0).T
        lags = range(-20, 21)
        best = max(np.dot(left[20:-20], np.roll(right, lag)[20:-20]) for lag in lags)
        assert best / np.sqrt(np.dot(left, left) * np.dot(right, right)) > 0.3, path


def test_float_files_carry_no_timestamp(small):
    out, _ = small
    floats = [p for p in wav_files(out) if soundfile.info(str(p)).subtype == "FLOAT"]
    assert floats
    for path in floats:
        raw = path.read_bytes()
        pos = raw.find(b"PEAK")
        assert pos > 0
        assert struct.unpack_from("<I", raw, pos + 12)[0] == 0


def test_default_set_mixes_formats(mid):
    # The full default plan, without synthesising it ...
    names = demo_songs.species_names(0, 8)
    species = [demo_songs.make_species(0, i, n) for i, n in enumerate(names)]
    plan = demo_recordings.plan_recordings(0, species, 12, 10.0, 3)
    assert {p.sample_rate for p in plan} == set(demo_recordings.SAMPLE_RATES)
    assert {p.subtype for p in plan} == set(demo_recordings.SUBTYPES)
    assert {p.channels for p in plan} == {1, 2}
    assert {len(p.slice_samples) for p in plan} == {1, 2, 3}
    # ... and what actually landed on disk for its first half.
    out, _ = mid
    infos = [soundfile.info(str(p)) for p in wav_files(out)]
    rates = {i.samplerate for i in infos}
    assert len(rates) >= 3 and rates <= set(demo_recordings.SAMPLE_RATES)
    assert {i.channels for i in infos} == {1, 2}
    subtypes = [i.subtype for i in infos]
    assert "FLOAT" in subtypes and "PCM_16" in subtypes
    assert subtypes.count("PCM_16") > len(subtypes) / 2  # most are plain 16-bit


def test_species_names():
    names = demo_songs.species_names(0, 40)
    assert len(set(names)) == 40
    assert all(re.fullmatch(r"[A-Z][a-z]{3,}_[a-z]{3,}", n) for n in names)
    assert demo_songs.species_names(0, 5) == names[:5]
    assert demo_songs.species_names(0, 40) == names


def band_fraction(x: np.ndarray, sr: int, lo: float = 1000.0, hi: float = 8000.0) -> float:
    freqs, psd = scipy.signal.welch(x, sr, nperseg=2048)
    return float(psd[(freqs >= lo) & (freqs <= hi)].sum() / psd.sum())


def test_clean_songs_within_band():
    rng = np.random.default_rng(123)
    kinds = set()
    for seed in range(2):
        for index, name in enumerate(demo_songs.species_names(seed, 8)):
            species = demo_songs.make_species(seed, index, name)
            kinds |= {s.kind for s in species.syllables}
            for sr in (22050, 48000):
                # The extremes of the per-recording pitch and tempo changes.
                for pitch, tempo in ((0.97, 0.9), (1.03, 1.1)):
                    song = demo_songs.render_song(species, sr, pitch, tempo, rng)
                    assert np.isfinite(song).all()
                    assert band_fraction(song, sr) > 0.99, (name, sr, pitch)
                    assert band_fraction(song, sr, 7600.0, sr / 2) < 1e-3, (name, sr, pitch)
    assert kinds == set(demo_songs.SYLLABLE_KINDS)


def mean_psd(x: np.ndarray, sr: int, n: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Averaged periodogram of non-overlapping Hann frames (scipy's welch is several times slower)."""
    frames = x[: x.size // n * n].reshape(-1, n) * scipy.signal.get_window("hann", n).astype(np.float32)
    return np.fft.rfftfreq(n, 1.0 / sr), np.mean(np.abs(np.fft.rfft(frames, axis=1)) ** 2, axis=0)


PSD_GRID = np.arange(0.0, 11025.0, 10.0)  # up to the lowest Nyquist frequency


@pytest.fixture(scope="module")
def mid_psd(mid) -> dict[str, np.ndarray]:
    """Recording id -> duration-weighted mean power spectrum of its slices (mono), on PSD_GRID."""
    out, _ = mid
    spectra = {}
    for rec, parts in sorted(recordings(out).items()):
        total = np.zeros(PSD_GRID.size)
        for path in parts:
            x, sr = soundfile.read(str(path), dtype="float32")
            freqs, psd = mean_psd(x if x.ndim == 1 else x.mean(axis=1), sr)
            total += np.interp(PSD_GRID, freqs, psd) * x.shape[0] / sr
        spectra[rec] = total
    return spectra


def test_recordings_with_little_noise_are_in_band(mid, mid_psd):
    out, _ = mid
    marker = json.loads((out / MARKER_NAME).read_text())
    quiet = [r["recording"] for r in marker["recordings"] if r["snr_db"] >= 20.0]
    assert len(quiet) >= 5
    band = (PSD_GRID >= 1000.0) & (PSD_GRID <= 8000.0)
    for rec in quiet:
        psd = mid_psd[rec]
        assert psd[band].sum() / psd.sum() > 0.9, rec


def test_species_separable_by_nearest_centroid(mid, mid_psd):
    _, summary = mid
    grid = np.geomspace(1000.0, 8000.0, 48)
    features, labels = [], []
    for rec, psd in sorted(mid_psd.items()):
        spectrum = np.log10(np.interp(grid, PSD_GRID, psd) + 1e-20)
        features.append(spectrum - spectrum.mean())  # level-free: only the spectral shape counts
        labels.append(rec.rsplit("-", 1)[0])
    features, labels = np.array(features), np.array(labels)
    assert len(labels) == summary.n_recordings
    correct = 0
    # Leave one recording out: its species' centroid is built without it.
    for i in range(len(labels)):
        keep = np.arange(len(labels)) != i
        centroids = {s: features[keep & (labels == s)].mean(axis=0) for s in summary.species}
        guess = min(centroids, key=lambda s: np.sum((features[i] - centroids[s]) ** 2))
        correct += guess == labels[i]
    assert correct / len(labels) > 0.9


def test_recordings_of_a_species_are_not_copies(mid):
    # The two cleanest recordings of each species: even without noise to tell
    # them apart, pitch, tempo and rhythm must differ, so that no lag lines
    # one up with the other.
    out, _ = mid
    marker = json.loads((out / MARKER_NAME).read_text())
    by_species: dict[str, list[dict]] = defaultdict(list)
    for rec in marker["recordings"]:
        by_species[rec["species"]].append(rec)
    sos = scipy.signal.butter(4, 1000.0, "highpass", fs=16000, output="sos")
    for species, recs in sorted(by_species.items()):
        clips = []
        for rec in sorted(recs, key=lambda r: -r["snr_db"])[:2]:
            x, sr = soundfile.read(str(out / rec["files"][0]), dtype="float64")
            x = scipy.signal.resample_poly(x if x.ndim == 1 else x.mean(axis=1), 16000, sr)
            x = scipy.signal.sosfilt(sos, x[: 16000 * 3])
            clips.append(x / np.linalg.norm(x))
        xcorr = scipy.signal.correlate(clips[0], clips[1], method="fft")
        assert np.abs(xcorr).max() < 0.5, species


def test_second_call_does_not_rewrite(tmp_path):
    out = tmp_path / "demo"
    first = make_demo(out, **SMALL)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    again = make_demo(out, **SMALL)
    assert again == first
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_missing_file_is_regenerated(tmp_path):
    out = tmp_path / "demo"
    make_demo(out, **SMALL)
    expected = snapshot(out)
    victim = wav_files(out)[2]
    victim.unlink()
    make_demo(out, **SMALL)
    assert snapshot(out) == expected


def test_other_arguments_replace_old_files(tmp_path):
    out = tmp_path / "demo"
    make_demo(out, **SMALL)
    fewer = make_demo(out, **{**SMALL, "n_species": 2, "recordings_per_species": 2})
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == fewer.species
    assert len(wav_files(out)) == fewer.n_files
    assert snapshot(out) == snapshot(_fresh(tmp_path / "fresh", n_species=2, recordings_per_species=2))


def _fresh(out: Path, **changes) -> Path:
    make_demo(out, **{**SMALL, **changes})
    return out


def die_after(monkeypatch, recordings: int) -> None:
    """Make make_demo stop like a killed run after writing `recordings` recordings."""
    real = demo_recordings.write_recording
    done = []

    def dying(*args, **kwargs):
        if len(done) == recordings:
            raise KeyboardInterrupt
        done.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(demo_recordings, "write_recording", dying)


def test_interrupted_run_is_not_trusted(tmp_path, monkeypatch):
    out = tmp_path / "demo"
    die_after(monkeypatch, 4)
    with pytest.raises(KeyboardInterrupt):
        make_demo(out, **SMALL)
    assert wav_files(out)
    assert not (out / MARKER_NAME).exists()  # so `make` will run make-demo again
    assert (out / demo.PARTIAL_NAME).exists()
    monkeypatch.undo()
    make_demo(out, **SMALL)
    assert snapshot(out) == snapshot(_fresh(tmp_path / "fresh"))
    assert [p.name for p in out.rglob(".*")] == [MARKER_NAME]  # no partial or temporary files left


def test_interrupted_rerun_with_other_arguments_cleans_up(tmp_path, monkeypatch):
    out = tmp_path / "demo"
    make_demo(out, **SMALL)
    die_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        make_demo(out, **{**SMALL, "seed": 5})
    assert not (out / MARKER_NAME).exists()  # the old marker no longer describes the folder
    monkeypatch.undo()
    make_demo(out, **{**SMALL, "n_species": 2})
    # Neither the third species of the first run nor the half-written seed-5 files survive.
    assert snapshot(out) == snapshot(_fresh(tmp_path / "fresh", n_species=2))


def test_refuses_foreign_folder(tmp_path):
    (tmp_path / "Turdus_merula").mkdir()
    (tmp_path / "Turdus_merula" / "Turdus_merula-1_1.wav").write_bytes(b"real data")
    with pytest.raises(FileExistsError):
        make_demo(tmp_path, **SMALL)
    assert (tmp_path / "Turdus_merula" / "Turdus_merula-1_1.wav").read_bytes() == b"real data"


@pytest.mark.parametrize(
    "changes, error",
    [
        ({"n_species": 0}, ValueError),
        ({"recordings_per_species": 0}, ValueError),
        ({"max_slices": 0}, ValueError),
        ({"seed": -1}, ValueError),
        ({"slice_seconds": 0.5}, ValueError),
        ({"slice_seconds": float("nan")}, ValueError),
        ({"n_species": 2.5}, TypeError),
    ],
)
def test_rejects_bad_arguments(tmp_path, changes, error):
    with pytest.raises(error):
        make_demo(tmp_path, **{**SMALL, **changes})
    assert not any(tmp_path.iterdir())


def test_default_demo_fills_every_split_for_every_species() -> None:
    """The demo's default seed with the workflow's default split config."""
    import yaml

    from jibjib.labels.split import assign_splits
    from jibjib.demo.recordings import plan_recordings
    from jibjib.demo.songs import make_species, species_names

    config = yaml.safe_load((REPO / "config.yaml").read_text())["split"]
    names = species_names(DEFAULT_SEED, 8)
    species = [make_species(DEFAULT_SEED, i, n) for i, n in enumerate(names)]
    plans = plan_recordings(DEFAULT_SEED, species, 20, 10.0, 2)
    qc = pd.DataFrame([{"path": f, "label": p.species, "status": "processed"} for p in plans for f in p.files])
    split = assign_splits(qc, config["fractions"], config["seed"], config["recording_pattern"])
    per_class = split.groupby(["label", "split"])["recording_id"].nunique().unstack().fillna(0)
    assert per_class.shape == (8, 3) and per_class.min().min() >= 2
