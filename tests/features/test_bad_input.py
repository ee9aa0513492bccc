"""Bad, odd and hostile input: every kind of file gets a defined outcome.

The corpus is generated here.  Each file is either processed, and then checked
against a clean equivalent, or rejected/ignored with a specific reason in
results/qc/files.tsv.  Long files must not cost memory in proportion to their
length, and a failed write must name its path and leave no partial file.
"""

from __future__ import annotations

import hashlib
import os
import resource
import signal
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile

from conftest import PREPARATION_TARGETS as TARGETS
from conftest import REPO_ENV, feature_command_peak_rss, run_snakemake, write_audio, write_wav
from jibjib.features import audio
from jibjib.core import fsutil
from jibjib.features.audio import read_audio
from jibjib.core.errors import ConfigError
from jibjib.labels.checks import check_data_dir
from jibjib.labels.folders import DEFAULT_BACKGROUND
from jibjib.features.extract import extract_file, extract_species, min_sample_rate
from jibjib.features.frontend import LogMelStream, waveform_to_log_mel
from jibjib.core.params import VGGISH
from jibjib.features.qc import read_qc
from jibjib.features.resample import output_length


def tones(seconds: float, rate: int, noise: float = 0.0) -> np.ndarray:
    """Three amplitude-modulated tones well inside 125-7500 Hz: the same sound at any rate >= 16 kHz.

    `noise` adds white noise of that standard deviation (not band-limited, so
    only for comparisons at one rate).
    """
    t = np.arange(round(seconds * rate)) / rate
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 1.7 * t)
    mix = 0.25 * np.sin(2 * np.pi * 1000 * t) + 0.15 * np.sin(2 * np.pi * 2500 * t) + 0.1 * np.sin(2 * np.pi * 5000 * t)
    mix += noise * np.random.default_rng(0).standard_normal(t.size)
    return (envelope * mix).astype(np.float32)


def features_of(path: Path, tmp_path: Path) -> np.ndarray:
    npz = tmp_path / "out" / (path.stem + ".npz")
    extract_file(path, npz)
    with np.load(npz) as z:
        return z["log_mel"]


def rejection(path: Path, tmp_path: Path) -> str:
    with pytest.raises(audio.AudioError) as caught:
        extract_file(path, tmp_path / "out" / "rejected.npz")
    assert not (tmp_path / "out" / "rejected.npz").exists()
    return caught.value.reason


# --- Sample formats, channels and rates against a clean equivalent -------------------------

# Largest |log-mel difference| to the 16-bit file (measured: 0.011 for every
# subtype but 8-bit, all of it the 16-bit file's own quantisation noise in
# the quietest bands).  8-bit quantisation noise is 48 dB louder and lifts
# the quiet bands, so 8-bit is held to the bands with mel energy above 2
# (measured: 0.039).
SUBTYPE_TOLERANCE = {"PCM_24": 0.02, "PCM_32": 0.02, "FLOAT": 0.02, "DOUBLE": 0.02, "PCM_U8": 0.06}


@pytest.mark.parametrize("subtype", sorted(SUBTYPE_TOLERANCE))
def test_sample_formats_match_the_16_bit_file(tmp_path: Path, subtype: str) -> None:
    signal_ = tones(2.0, 22050, noise=0.01)
    reference = features_of(write_wav(tmp_path / "pcm16.wav", signal_, 22050, "PCM_16"), tmp_path)
    other = write_wav(tmp_path / f"{subtype}.wav", signal_, 22050, subtype)
    got = features_of(other, tmp_path)
    assert got.shape == reference.shape
    loud = reference > np.log(2.0) if subtype == "PCM_U8" else np.ones_like(reference, bool)
    assert loud.mean() > 0.05  # the comparison covers real signal
    assert np.abs(got - reference)[loud].max() < SUBTYPE_TOLERANCE[subtype]
    # Decoding (scale, the unsigned 8-bit offset) agrees with libsndfile's own, sample for sample.
    expected, _ = soundfile.read(str(other), dtype="float32")
    np.testing.assert_array_equal(read_audio(other).samples, expected)


def test_six_channels_are_averaged(tmp_path: Path) -> None:
    rate = 32000
    t = np.arange(2 * rate) / rate
    channels = np.stack([0.3 * np.sin(2 * np.pi * f * t) for f in (500, 1200, 2000, 3100, 4400, 6000)], axis=1)
    six = write_wav(tmp_path / "six.wav", channels.astype(np.float32), rate, "PCM_16")
    quantised, _ = soundfile.read(str(six), dtype="float64")
    mono = write_wav(tmp_path / "mono.wav", quantised.mean(axis=1).astype(np.float32), rate, "FLOAT")
    assert np.abs(features_of(six, tmp_path) - features_of(mono, tmp_path)).max() < 1e-4
    with np.load(tmp_path / "out" / "six.npz") as z:
        assert int(z["channels"]) == 6


@pytest.mark.parametrize("rate", [192000, 44100])
def test_other_rates_are_resampled_to_the_16k_equivalent(tmp_path: Path, rate: int) -> None:
    reference = features_of(write_wav(tmp_path / "16k.wav", tones(3.0, 16000), 16000, "FLOAT"), tmp_path)
    got = features_of(write_wav(tmp_path / f"{rate}.wav", tones(3.0, rate), rate, "FLOAT"), tmp_path)
    assert got.shape == reference.shape
    # Away from the ends, where resampling sees zeros beyond the signal.
    inner = slice(5, -5)
    assert np.abs(got[inner] - reference[inner]).max() < 0.02


def test_sample_rates_too_low_for_the_mel_range_are_rejected(tmp_path: Path) -> None:
    lowest = min_sample_rate(VGGISH)
    assert 3000 < lowest < 8000  # the upper half of 125-7500 Hz on the mel scale starts near 1.9 kHz
    one_khz = np.sin(2 * np.pi * 200 * np.arange(3000) / 1000).astype(np.float32)
    assert rejection(write_wav(tmp_path / "1k.wav", one_khz, 1000), tmp_path) == "sample_rate_too_low"
    just_enough = int(np.ceil(lowest))
    samples = np.sin(2 * np.pi * 300 * np.arange(2 * just_enough) / just_enough).astype(np.float32)
    assert features_of(write_wav(tmp_path / "enough.wav", samples, just_enough), tmp_path).shape[1] == 64


@pytest.mark.parametrize("rate", [16000, 44100])
def test_one_patch_is_the_shortest_usable_file(tmp_path: Path, rate: int) -> None:
    # The fewest source samples that resample to one patch (15,600 samples at 16 kHz).
    n = next(k for k in range(VGGISH.min_samples * rate // 16000 - 2, 10**6)
             if output_length(k, rate, 16000) >= VGGISH.min_samples)
    signal_ = tones(1.0, rate)
    assert features_of(write_wav(tmp_path / "one.wav", signal_[:n], rate), tmp_path).shape == (96, 64)
    assert rejection(write_wav(tmp_path / "less.wav", signal_[: n - 1], rate), tmp_path) == "too_short"


# --- Block-wise processing ------------------------------------------------------------------

def assert_same_features(got: np.ndarray, expected: np.ndarray) -> None:
    """Equal up to float32 rounding, compared as mel energies.

    Not bit for bit: matrix products over a different number of rows round
    differently in the last bits (resampled samples differ by ~1e-6
    relative), and the log lifts that to ~1e-4 in bands near the 0.01 floor.
    """
    assert got.shape == expected.shape
    np.testing.assert_allclose(np.exp(got), np.exp(expected), rtol=1e-5, atol=1e-5)

@pytest.mark.parametrize("rate", [16000, 22050, 44100, 48000, 192000])
def test_blocks_of_any_size_give_the_whole_file_result(rate: int) -> None:
    rng = np.random.default_rng(rate)
    signal_ = tones(7.0, rate) + np.float32(0.05) * rng.standard_normal(7 * rate).astype(np.float32)
    whole = waveform_to_log_mel(signal_, rate)
    stream = LogMelStream(rate)
    cuts = np.cumsum(rng.choice([1, 7, 399, 401, 1000, 4410, 65537], size=400))
    cuts = np.unique(np.append(cuts[cuts < signal_.size], signal_.size))
    for block in np.split(signal_, cuts[:-1]):
        stream.push(block)
    streamed = stream.finish()
    assert streamed.shape == whole.shape == (VGGISH.n_frames(output_length(signal_.size, rate, 16000)), 64)
    assert_same_features(streamed, whole)


@pytest.mark.parametrize(("subtype", "channels"), [("PCM_16", 1), ("PCM_16", 2), ("PCM_24", 1), ("FLOAT", 2)])
def test_small_read_blocks_give_the_same_features(tmp_path: Path, monkeypatch, subtype: str, channels: int) -> None:
    """The fast 16-bit path and libsndfile's path, split into many blocks at odd places."""
    signal_ = np.stack([tones(5.0, 44100) * (0.5 + c) for c in range(channels)], axis=1).squeeze()
    path = write_wav(tmp_path / "x.wav", signal_, 44100, subtype)
    in_one_block = features_of(path, tmp_path)
    monkeypatch.setattr(audio, "BLOCK_FRAMES", 10007)
    assert_same_features(features_of(path, tmp_path), in_one_block)
    with np.load(tmp_path / "out" / "x.npz") as z:  # hashed while reading, on the fast path
        assert str(z["source_sha256"]) == hashlib.sha256(path.read_bytes()).hexdigest()
    expected, _ = soundfile.read(str(path), dtype="float32")
    np.testing.assert_array_equal(read_audio(path).samples, expected)


def _write_long(path: Path, minutes: float, rate: int = 48000) -> Path:
    """A 16-bit mono file written piece by piece, so the test process stays small too."""
    piece = tones(30.0, rate)  # every component completes whole cycles in 30 s: repeats seamlessly
    with soundfile.SoundFile(str(path), "w", rate, 1, "PCM_16") as f:
        for _ in range(int(minutes * 2)):
            f.write(piece)
    return path


def test_a_30_minute_file_in_bounded_memory(tmp_path: Path) -> None:
    data = tmp_path / "birds"
    (data / "short").mkdir(parents=True)
    (data / "long").mkdir(parents=True)
    _write_long(data / "short" / "three_minutes.wav", 3)
    _write_long(data / "long" / "thirty_minutes.wav", 30)
    short_peak = feature_command_peak_rss(data, "short", tmp_path)
    long_peak = feature_command_peak_rss(data, "long", tmp_path)
    # Holding the extra 27 minutes as float32 would take 311 MB (float64 twice
    # that).  What may grow is the log-mel result itself: 1.5 MB a minute.
    extra_float32 = 27 * 60 * 48000 * 4
    assert long_peak - short_peak < extra_float32 / 2, (short_peak, long_peak)

    with np.load(tmp_path / "features" / "long" / "thirty_minutes.npz") as z:
        long_mel = z["log_mel"]
    assert long_mel.shape == (VGGISH.n_frames(30 * 60 * 16000), 64)
    # The stream crossed many block boundaries: the first three minutes match
    # the three-minute file except for its last frames, which saw the end.
    with np.load(tmp_path / "features" / "short" / "three_minutes.npz") as z:
        short_mel = z["log_mel"]
    assert_same_features(long_mel[: short_mel.shape[0] - 10], short_mel[:-10])


# --- The corpus, end to end -----------------------------------------------------------------

PROCESSED = ("processed", "")


def _riff_with_data_size(good: bytes, size: int) -> bytes:
    data = good.find(b"data")
    return good[: data + 4] + struct.pack("<I", size) + good[data + 8:]


def make_corpus(root: Path) -> tuple[Path, dict[str, tuple[str, str]]]:
    """Write the bad-input corpus; returns data_dir and path -> (status, reason) for every file."""
    data = root / "birds"
    expected: dict[str, tuple[str, str]] = {}

    def put(relative: str, outcome: tuple[str, str], samples=None, rate: int = 22050,
            subtype: str = "PCM_16", content: bytes | None = None, **write) -> Path:
        path = data / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is not None:
            path.write_bytes(content)
        else:
            soundfile.write(str(path), tones(2.0, rate) if samples is None else samples, rate, subtype=subtype, **write)
        expected[relative] = outcome
        return path

    for k in (1, 2):
        for rec in (10, 11):
            put(f"Alpha_one/Alpha_one-{rec}_{k}.wav", PROCESSED)
    bad = "Bad_cases"
    good = put(f"{bad}/Bad_cases-1_1.wav", PROCESSED).read_bytes()
    put(f"{bad}/Bad_cases-1_2.wav", PROCESSED)
    put(f"{bad}/zero_bytes.wav", ("rejected", "empty"), content=b"")
    put(f"{bad}/cut_in_header.wav", ("rejected", "unreadable"), content=good[:20])
    put(f"{bad}/cut_in_data.wav", ("rejected", "truncated"), content=good[: len(good) * 2 // 3])
    put(f"{bad}/header_only.wav", ("rejected", "no_samples"), content=_riff_with_data_size(good[:44], 0))
    # A streaming writer's "length unknown" marker: the data up to the end of the file counts.
    put(f"{bad}/unknown_length.wav", PROCESSED, content=_riff_with_data_size(good, 0xFFFFFFFF))
    put(f"{bad}/text.wav", ("rejected", "unreadable"), content=b"field notes, not audio\n" * 40)
    for container in ("MP3", "FLAC", "OGG"):
        put(f"{bad}/{container.lower()}_inside.wav", ("rejected", "format_mismatch"),
            rate=44100 if container == "MP3" else 22050, subtype=None, format=container)
    put(f"{bad}/flac_data.mp3", ("rejected", "format_mismatch"), subtype=None, format="FLAC")
    put(f"{bad}/aiff_inside.wav", ("rejected", "unsupported_format"), format="AIFF")
    # The compressed formats, whole and cut off (see jibjib.audio for how each cut is found).
    compressed = {"2_1.flac": ("FLAC", "PCM_24", 22050), "2_2.MP3": ("MP3", None, 44100),
                  "3_1.ogg": ("OGG", "VORBIS", 22050), "3_2.opus": ("OGG", "OPUS", 48000)}
    for name, (container, subtype, rate) in compressed.items():
        whole = write_audio(data / bad / f"Bad_cases-{name}", tones(2.0, rate), rate, container, subtype).read_bytes()
        expected[f"{bad}/Bad_cases-{name}"] = PROCESSED
        put(f"{bad}/cut_{name}", ("rejected", "truncated"), content=whole[: len(whole) * 2 // 3])
    put(f"{bad}/twin.wav", ("rejected", "duplicate_name"))
    write_audio(data / bad / "twin.flac", tones(2.0, 22050), 22050, "FLAC")  # sorts first: keeps twin.npz
    expected[f"{bad}/twin.flac"] = PROCESSED
    for subtype in ("PCM_U8", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"):
        put(f"{bad}/{subtype.lower()}.wav", PROCESSED, subtype=subtype)
    for value in ("nan", "inf"):
        samples = tones(2.0, 22050)
        samples[30000] = float(value)
        put(f"{bad}/{value}.wav", ("rejected", "non_finite"), samples, subtype="FLOAT")
    put(f"{bad}/silence.wav", ("rejected", "silent"), np.zeros(44100, np.float32))
    put(f"{bad}/six_channels.wav", PROCESSED, np.tile(tones(2.0, 22050)[:, None], (1, 6)) / 2)
    put(f"{bad}/rate_1k.wav", ("rejected", "sample_rate_too_low"), rate=1000)
    put(f"{bad}/rate_192k.wav", PROCESSED, rate=192000)
    put(f"{bad}/shorter_than_a_patch.wav", ("rejected", "too_short"), tones(0.9, 22050))
    put(f"{bad}/same_name.wav", ("rejected", "duplicate_name"))
    put(f"{bad}/same_name.WAV", PROCESSED)  # sorts first, so it keeps same_name.npz
    put(f"{bad}/notes.txt", ("ignored", "not_audio"), content=b"notes")
    put(f"{bad}/.DS_Store", ("ignored", "hidden"), content=b"\0\0\0\1Bud1")
    put(f"{bad}/._Bad_cases-1_1.wav", ("ignored", "hidden"), content=b"\0\5\26\7AppleDouble")
    (data / bad / "gone.wav").symlink_to(root / "nowhere.wav")
    expected[f"{bad}/gone.wav"] = ("rejected", "unreadable")

    # Names: non-ASCII, spaces, shell syntax, an upper-case suffix, a sub-folder.
    put("Grünfink Chloris/Lied am Morgen ü_1.wav", PROCESSED)
    put("Grünfink Chloris/Lied am Morgen ü_2.WAV", PROCESSED)
    put("Grünfink Chloris/Band 2/Ruf_1.wav", PROCESSED)
    put("Odd $(touch PWNED) 'q' \"dq\" `x`/a;b|c&d_1.wav", PROCESSED)
    put("Odd $(touch PWNED) 'q' \"dq\" `x`/$HOME_2.wav", PROCESSED)

    # A species folder that is a symlink to recordings kept elsewhere.
    elsewhere = root / "elsewhere" / "Linked_one"
    write_wav(elsewhere / "Linked_one-5_1.wav", tones(2.0, 16000), 16000)
    write_wav(elsewhere / "Linked_one-5_2.wav", tones(2.0, 16000), 16000)
    (data / "Linked_one").symlink_to(elsewhere, target_is_directory=True)
    expected.update({f"Linked_one/Linked_one-5_{k}.wav": PROCESSED for k in (1, 2)})

    # Files that belong to no species.
    put(".DS_Store", ("ignored", "hidden"), content=b"\0")
    put("README.txt", ("ignored", "outside_species_folder"), content=b"about")
    put("loose.wav", ("ignored", "outside_species_folder"))
    # Hidden top-level folders are no species, but their files are found, so they get rows too.
    put(".Trashes/501/x.wav", ("ignored", "hidden"))
    put(".git/HEAD", ("ignored", "hidden"), content=b"ref: refs/heads/main\n")

    # A species folder whose name looks like an option to the commands the rules run.
    put("-Dash_bird/-Dash_bird-7_1.wav", PROCESSED)
    return data, expected


def every_file(data: Path) -> set[str]:
    found = set()
    for folder, _, files in os.walk(data, followlinks=True):
        found.update((Path(folder) / name).relative_to(data).as_posix() for name in files)
    return found


def test_workflow_accounts_for_every_file(tmp_path: Path) -> None:
    data, expected = make_corpus(tmp_path)
    assert every_file(data) == set(expected)
    work = tmp_path / "work"
    work.mkdir()
    run_snakemake(work, *TARGETS, config={"data_dir": data})

    qc = read_qc([work / "results/qc/files.tsv"])
    assert len(qc) == len(expected) and set(qc["path"]) == set(expected)  # one row per file
    assert dict(zip(qc["path"], zip(qc["status"], qc["reason"]))) == expected
    rows = qc.set_index("path")
    assert rows.loc["Bad_cases/six_channels.wav", "channels"] == 6
    assert rows.loc["Bad_cases/rate_192k.wav", "sample_rate"] == 192000
    assert rows.loc["Bad_cases/unknown_length.wav", "frames"] == rows.loc["Bad_cases/Bad_cases-1_1.wav", "frames"]
    assert rows.loc["Bad_cases/cut_in_data.wav", "detail"].startswith("data chunk declares")
    assert rows.loc["Bad_cases/Bad_cases-2_1.flac", "frames"] == rows.loc["Bad_cases/Bad_cases-1_1.wav", "frames"]
    assert rows.loc["Bad_cases/Bad_cases-3_2.opus", "sample_rate"] == 48000
    as_written = pd.read_csv(work / "results/qc/files.tsv", sep="\t", dtype=str).set_index("path")
    assert list(as_written.loc["Bad_cases/six_channels.wav", ["sample_rate", "channels"]]) == ["22050", "6"]

    features = work / "results" / "features"
    processed = qc[qc["status"] == "processed"]
    assert sorted(processed["feature"]) == sorted(
        (Path("results/features") / p).with_suffix(".npz").as_posix() for p in processed["path"])
    written = {p.relative_to(work).as_posix() for p in features.rglob("*") if p.is_file() and p.suffix == ".npz"}
    assert written == set(processed["feature"])  # nothing for rejected files, no temporary leftovers
    assert not [p for p in work.rglob("*") if fsutil.TMP_MARK in p.name]
    assert not list(tmp_path.rglob("PWNED"))  # no folder name ever reached a shell unquoted
    labels = pd.read_csv(work / "results/labels.tsv", sep="\t")
    assert list(labels["label"]) == sorted(["-Dash_bird", "Alpha_one", "Bad_cases", "Grünfink Chloris",
                                            "Linked_one", "Odd $(touch PWNED) 'q' \"dq\" `x`"])


def test_empty_species_folder_stops_before_any_work(tmp_path: Path) -> None:
    """An empty folder is a species with no usable file: the config check names it (issue 6, item 3)."""
    data, _ = make_corpus(tmp_path)
    (data / "Empty_one").mkdir()
    with pytest.raises(ConfigError, match="Empty_one"):
        check_data_dir(data, DEFAULT_BACKGROUND)
    qc, stats = extract_species(data, "Empty_one", tmp_path / "features")
    assert len(qc) == 0 and stats.computed == 0


# --- Hostile species names and failed writes ------------------------------------------------

@pytest.mark.parametrize("label", ["..", ".", "", "../Alpha_one", "/etc", "a/../.."])
def test_a_label_cannot_lead_outside_the_features_folder(tmp_path: Path, label: str) -> None:
    data = tmp_path / "birds"
    write_wav(data / "Alpha_one" / "a.wav", tones(2.0, 16000), 16000)
    bystander = tmp_path / "precious.npz"  # the stale-npz cleanup must never reach it
    bystander.write_bytes(b"keep")
    with pytest.raises(ValueError, match="not a plain folder name"):
        extract_species(data, label, tmp_path / "features")
    assert bystander.read_bytes() == b"keep" and not (tmp_path / "features").exists()


def test_temp_copies_of_killed_writers_are_removed_but_live_ones_kept(tmp_path: Path) -> None:
    """A kill while labels.tsv or a manifest is written leaves `.<name>.tmp-<pid>...`;
    the next write of that file removes it, but never a temp another live process is writing."""
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
    dead = int(finished.stdout)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        target = tmp_path / "labels.tsv"
        stale = tmp_path / f".labels.tsv{fsutil.TMP_MARK}{dead}.tsv"
        writing = tmp_path / f".labels.tsv{fsutil.TMP_MARK}{live.pid}.tsv"
        other = tmp_path / f".split.tsv{fsutil.TMP_MARK}{dead}.tsv"  # another file's: its own write cleans it
        for temp in (stale, writing, other):
            temp.write_text("partial")
        fsutil.write_tsv(target, pd.DataFrame({"a": [1]}))
        assert target.read_text() == "a\n1\n"
        assert not stale.exists() and writing.exists() and other.exists()
        fsutil.write_rows(tmp_path / "split.tsv", ["a"], [["1"]])
        assert not other.exists()
    finally:
        live.kill()
        live.wait()


def _ignore_file_size_signal_and_limit_writes(limit: int):
    def preexec() -> None:
        # Root ignores permissions, but not this: a write past the limit fails with EFBIG
        # (the signal that would kill the process is ignored), as a full disk fails with ENOSPC.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return preexec


def test_a_failed_write_names_the_path_and_leaves_no_partial_file(tmp_path: Path) -> None:
    data = tmp_path / "birds"
    write_wav(data / "Alpha_one" / "a.wav", tones(10.0, 16000), 16000)
    features = tmp_path / "features"
    command = [sys.executable, "-m", "jibjib", "features", "--data-dir", str(data), "--label", "Alpha_one",
               "--features-dir", str(features), "--manifest", str(tmp_path / "Alpha_one.tsv")]
    subprocess.run(command, check=True, capture_output=True, env=REPO_ENV)
    npz, manifest = features / "Alpha_one" / "a.npz", tmp_path / "Alpha_one.tsv"
    old, old_manifest = npz.read_bytes(), manifest.read_bytes()
    assert len(old) > 200_000  # 1,000 frames of 64 float32: far beyond the limit below

    write_wav(data / "Alpha_one" / "a.wav", tones(10.0, 16000)[::-1].copy(), 16000)  # must be recomputed
    result = subprocess.run(command, capture_output=True, text=True, env=REPO_ENV,
                            preexec_fn=_ignore_file_size_signal_and_limit_writes(64 * 1024))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == f"jibjib features: error: cannot write {npz}: File too large"
    assert "Traceback" not in result.stderr
    assert npz.read_bytes() == old  # the old complete file, never a partial one
    assert sorted(p.name for p in npz.parent.iterdir()) == ["a.npz"]
    assert manifest.read_bytes() == old_manifest  # the job failed: no new QC rows claim success


@pytest.mark.parametrize("conflict", ["folder_is_a_file", "file_is_a_folder"])
def test_an_output_path_taken_by_something_else(tmp_path: Path, conflict: str) -> None:
    """Fails as root too: no permission bits involved."""
    data = tmp_path / "birds"
    write_wav(data / "Alpha_one" / "a.wav", tones(2.0, 16000), 16000)
    features = tmp_path / "features"
    npz = features / "Alpha_one" / "a.npz"
    if conflict == "folder_is_a_file":
        features.mkdir()
        (features / "Alpha_one").write_bytes(b"in the way")
    else:
        (npz / "inside").mkdir(parents=True)
    with pytest.raises(fsutil.OutputError, match=f"cannot write {npz}: "):
        extract_species(data, "Alpha_one", features)
    leftovers = [p for p in features.rglob("*") if fsutil.TMP_MARK in p.name]
    assert not leftovers
