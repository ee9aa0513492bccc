"""The VGGish front end: conformance with the reference numbers, fidelity to resampy and through FLAC/MP3/Vorbis."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import soundfile

from conftest import write_audio
from jibjib.features.audio import read_audio
from jibjib.features.frontend import log_mel, reference_log_mel, to_patches, waveform_to_log_mel
from jibjib.core.params import VGGISH
from jibjib.features.resample import resample

resampy = pytest.importorskip("resampy")


def test_upstream_smoke_sine() -> None:
    """VGGish's smoke test input: 3 s of 1 kHz at 44.1 kHz."""
    t = np.linspace(0, 3, int(3 * 44100))
    x = np.sin(2 * np.pi * 1000 * t)
    for pipeline in (waveform_to_log_mel, reference_log_mel):
        patches = to_patches(pipeline(x, 44100))
        assert patches.shape == (3, 96, 64)
        assert patches.mean() == pytest.approx(-3.43, abs=0.01)
        assert patches.std() == pytest.approx(2.13, abs=0.01)


@pytest.mark.parametrize("rate", [22050, 32000, 44100, 48000, 8000, 11025, 1000, 192000])
def test_resampler_matches_resampy(rate: int) -> None:
    rng = np.random.default_rng(rate)
    t = np.arange(int(1.3 * rate)) / rate
    x = 0.3 * rng.standard_normal(t.size) + 0.5 * np.sin(2 * np.pi * (300 + 2000 * t) * t)
    expected = resampy.resample(x, rate, 16000, filter="kaiser_best")
    got = resample(x.astype(np.float32), rate, 16000)
    assert got.dtype == np.float32 and got.shape == expected.shape
    assert np.abs(got - expected).max() < 5e-6


def _pykanto_recordings() -> dict[int, list[Path]]:
    spec = importlib.util.find_spec("pykanto")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("pykanto (real bird recordings) is not installed: run `make setup`")
    data = Path(spec.submodule_search_locations[0]) / "data"
    by_rate: dict[int, list[Path]] = {}
    for path in sorted(data.rglob("*")):
        if path.suffix.lower() == ".wav":
            by_rate.setdefault(soundfile.info(str(path)).samplerate, []).append(path)
    return by_rate


@pytest.mark.parametrize("rate", [22050, 32000, 44100, 48000])
def test_fidelity_on_real_bird_recordings(rate: int) -> None:
    """Mean |log-mel difference| to the reference <= 1e-4 overall and in every band."""
    recordings = _pykanto_recordings()[rate][:4]
    differences = []
    for path in recordings:
        samples, sr = soundfile.read(str(path), dtype="float32")
        samples = samples[: 12 * sr]
        ours, reference = waveform_to_log_mel(samples, sr), reference_log_mel(samples, sr)
        assert ours.dtype == np.float32 and ours.shape == reference.shape
        differences.append(np.abs(ours - reference))
    per_band = np.concatenate(differences).mean(axis=0)
    assert per_band.shape == (64,)
    assert per_band.max() <= 1e-4, f"worst band {per_band.argmax()}: {per_band.max():.2e}"


def test_stereo_and_float_input_follow_the_reference() -> None:
    rng = np.random.default_rng(1)
    stereo = (0.2 * rng.standard_normal((44100, 2))).astype(np.float32)
    stereo[:, 1] *= 0.3
    ours, reference = waveform_to_log_mel(stereo, 44100), reference_log_mel(stereo, 44100)
    assert np.abs(ours - reference).mean(axis=0).max() <= 1e-4
    mono = waveform_to_log_mel(stereo.mean(axis=1), 44100)
    np.testing.assert_allclose(ours, mono, atol=1e-5)


def test_16k_input_bypasses_resampling() -> None:
    x = (0.1 * np.random.default_rng(2).standard_normal(16000)).astype(np.float32)
    np.testing.assert_array_equal(waveform_to_log_mel(x, 16000), log_mel(x))
    assert log_mel(x).shape == (1 + (16000 - 400) // 160, 64)


def test_short_input_and_partial_patches() -> None:
    assert log_mel(np.zeros(399, np.float32)).shape == (0, 64)
    assert log_mel(np.zeros(400, np.float32)).shape == (1, 64)
    frames = np.arange(250 * 64, dtype=np.float32).reshape(250, 64)
    patches = to_patches(frames)
    assert patches.shape == (2, 96, 64)
    np.testing.assert_array_equal(patches[1, 0], frames[96])
    assert VGGISH.min_samples == 15600


@pytest.mark.parametrize("rate", [22050, 32000, 44100, 48000])
def test_compressed_copies_of_real_bird_recordings(tmp_path: Path, rate: int) -> None:
    """FLAC gives the same log-mel as the WAV; MP3 and Vorbis at high quality stay within a mean
    |difference| of 0.1 (measured: MP3 0.025-0.055, Vorbis 0.007-0.056, the most at 22.05 kHz)."""
    for path in _pykanto_recordings()[rate][:2]:
        samples, _ = soundfile.read(str(path), dtype="int16", frames=12 * rate)
        reference = waveform_to_log_mel(samples.astype(np.float32) / 32768, rate)
        soundfile.write(str(tmp_path / "x.flac"), samples, rate)
        np.testing.assert_array_equal(waveform_to_log_mel(read_audio(tmp_path / "x.flac").samples, rate), reference)
        for suffix, container, subtype in (("mp3", "MP3", None), ("ogg", "OGG", "VORBIS")):
            lossy = write_audio(tmp_path / f"x.{suffix}", samples.astype(np.float32) / 32768, rate, container, subtype,
                                compression_level=0.0)
            got = waveform_to_log_mel(read_audio(lossy).samples, rate)
            assert got.shape == reference.shape
            assert np.abs(got - reference).mean() < 0.1, (path.name, suffix)
