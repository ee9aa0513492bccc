"""The feature step of one species folder: outputs, QC reasons, per-file staleness."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from conftest import REPO, chirp, write_wav
from jibjib.features import extract as features
from jibjib.core import fsutil
from jibjib.features.audio import open_audio
from jibjib.features.extract import extract_file, extract_species, sha256_file
from jibjib.features.frontend import waveform_to_log_mel
from jibjib.core.params import VGGISH
from jibjib.features.qc import IGNORED, PROCESSED, REJECTED, QCRow, to_frame, write_manifest

LABEL = "Turdus_merula"


@pytest.fixture
def species(tmp_path: Path) -> Path:
    data = tmp_path / "birds"
    for k in (1, 2, 3):
        write_wav(data / LABEL / f"{LABEL}-123_{k}.wav", chirp(2.0, 44100, seed=k), 44100)
    return data


def run(data: Path, tmp_path: Path, params=VGGISH):
    return extract_species(data, LABEL, tmp_path / "features", params)


def test_npz_contract(species: Path, tmp_path: Path) -> None:
    qc, stats = run(species, tmp_path)
    assert stats.computed == 3 and list(qc["status"]) == ["processed"] * 3
    row = qc.iloc[0]
    with np.load(row["feature"], allow_pickle=False) as z:
        log_mel = z["log_mel"]
        assert log_mel.dtype == np.float32 and log_mel.shape == (1 + (32000 - 400) // 160, 64)
        assert int(z["sample_rate"]) == 44100 and int(z["channels"]) == 1
        assert float(z["seconds"]) == pytest.approx(2.0)
        assert str(z["frontend"]) == VGGISH.fingerprint()
    samples, rate = soundfile.read(species / row["path"], dtype="float32")
    np.testing.assert_array_equal(log_mel, waveform_to_log_mel(samples, rate))
    assert row["path"] == f"{LABEL}/{LABEL}-123_1.wav"
    assert row["frames"] == log_mel.shape[0]


def test_stereo_is_averaged(tmp_path: Path) -> None:
    left, right = chirp(2.0, 32000, seed=1), chirp(2.0, 32000, f0=3000, seed=2)
    stereo = write_wav(tmp_path / "s.wav", np.stack([left, right], axis=1), 32000, "FLOAT")
    mono = write_wav(tmp_path / "m.wav", (left + right) / 2, 32000, "FLOAT")
    meta = extract_file(stereo, tmp_path / "s.npz")
    extract_file(mono, tmp_path / "m.npz")
    assert meta["channels"] == 2
    a, b = np.load(tmp_path / "s.npz")["log_mel"], np.load(tmp_path / "m.npz")["log_mel"]
    assert np.abs(a - b).max() < 1e-4


def _bad_files(folder: Path) -> dict[str, str]:
    """Write one file of each broken kind; returns name -> expected QC reason."""
    good = chirp(1.5, 16000)
    write_wav(folder / "ok.wav", good, 16000)
    whole = (folder / "ok.wav").read_bytes()
    (folder / "empty.wav").write_bytes(b"")
    (folder / "header.wav").write_bytes(whole[:30])
    (folder / "cut.wav").write_bytes(whole[: len(whole) // 2])
    (folder / "text.wav").write_text("not audio\n" * 20)
    soundfile.write(str(folder / "flac.wav"), good, 16000, format="FLAC")
    nan = good.copy()
    nan[100] = np.nan
    write_wav(folder / "nan.wav", nan, 16000, "FLOAT")
    write_wav(folder / "silence.wav", np.zeros(32000, np.float32), 16000)
    write_wav(folder / "short.wav", good[:15000], 16000)
    (folder / "notes.txt").write_text("field notes")
    (folder / ".DS_Store").write_bytes(b"\0\1")
    write_wav(folder / "._ok.wav", good, 16000)
    write_wav(folder / "ok.WAV", good, 16000)
    return {
        "ok.wav": "", "ok.WAV": "", "empty.wav": "empty", "header.wav": "unreadable", "cut.wav": "truncated",
        "text.wav": "unreadable", "flac.wav": "format_mismatch", "nan.wav": "non_finite",
        "silence.wav": "silent", "short.wav": "too_short", "notes.txt": "not_audio",
        ".DS_Store": "hidden", "._ok.wav": "hidden",
    }


def test_every_file_gets_a_row_and_a_reason(tmp_path: Path) -> None:
    expected = _bad_files(tmp_path / "birds" / LABEL)
    qc, stats = run(tmp_path / "birds", tmp_path)
    assert len(qc) == len(expected)
    reasons = {Path(p).name: r for p, r in zip(qc["path"], qc["reason"])}
    # ok.WAV and ok.wav map to the same npz: the one sorting second is refused.
    assert reasons.pop("ok.wav") == "duplicate_name" and reasons.pop("ok.WAV") == ""
    expected.pop("ok.wav"), expected.pop("ok.WAV")
    assert reasons == expected
    assert sorted(p.name for p in (tmp_path / "features" / LABEL).iterdir()) == ["ok.npz"]
    assert stats.computed == 1


def test_rerun_recomputes_only_what_changed(species: Path, tmp_path: Path) -> None:
    run(species, tmp_path)
    out = tmp_path / "features" / LABEL
    stamp = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}

    _, stats = run(species, tmp_path)
    assert (stats.computed, stats.current) == (0, 3)

    # An mtime-only change (a fresh checkout) is recognised by content.
    first = species / LABEL / f"{LABEL}-123_1.wav"
    os.utime(first, ns=(1, 1))
    _, stats = run(species, tmp_path)
    assert stats.computed == 0

    # A real edit recomputes that file alone.
    write_wav(species / LABEL / f"{LABEL}-123_2.wav", chirp(2.0, 44100, seed=99), 44100)
    _, stats = run(species, tmp_path)
    assert (stats.computed, stats.current) == (1, 2)
    assert (out / f"{LABEL}-123_1.npz").stat().st_mtime_ns == stamp[f"{LABEL}-123_1.npz"]

    # A removed file takes its npz with it.
    (species / LABEL / f"{LABEL}-123_3.wav").unlink()
    qc, stats = run(species, tmp_path)
    assert stats.removed == 1 and not (out / f"{LABEL}-123_3.npz").exists() and len(qc) == 2

    # Front-end parameters changed: everything recomputes.
    _, stats = run(species, tmp_path, dataclasses.replace(VGGISH, log_offset=0.001))
    assert stats.computed == 2


def test_truncated_npz_from_a_killed_run_is_not_trusted(species: Path, tmp_path: Path) -> None:
    run(species, tmp_path)
    npz = tmp_path / "features" / LABEL / f"{LABEL}-123_1.npz"
    good = npz.read_bytes()
    npz.write_bytes(good[: len(good) // 3])
    (npz.parent / f".{npz.name}.tmp-999").write_bytes(b"partial")
    _, stats = run(species, tmp_path)
    assert stats.computed == 1
    assert npz.read_bytes() == good
    assert not list(npz.parent.glob(".*"))


def test_symlinked_species_folder(species: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    shutil.move(species / LABEL, elsewhere)
    (species / LABEL).symlink_to(elsewhere, target_is_directory=True)
    qc, stats = run(species, tmp_path)
    assert stats.computed == 3 and set(qc["status"]) == {"processed"}


def test_feature_command_never_imports_tensorflow_or_pandas(species: Path, tmp_path: Path) -> None:
    """TensorFlow's import alone costs seconds and pandas' a quarter of one; the feature jobs pay neither."""
    code = (
        "import sys; from jibjib.cli import main; "
        f"rc = main(['features', '--data-dir', {str(species)!r}, '--label', {LABEL!r}, "
        f"'--features-dir', {str(tmp_path / 'f')!r}, '--manifest', {str(tmp_path / 'm.tsv')!r}]); "
        "assert rc == 0; heavy = {'tensorflow', 'resampy', 'pandas'} & set(sys.modules); assert not heavy, heavy"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "3 computed" in result.stderr


def test_manifest_is_written_as_pandas_would(tmp_path: Path) -> None:
    """The feature command writes its manifest with the csv module; readers and the
    byte-for-byte rerun comparisons expect what pandas wrote before."""
    rows = [
        QCRow("A/a-1_1.wav", "A", PROCESSED, sample_rate=44100, channels=2, seconds=round(np.float64(2.00001), 4),
              frames=198, feature="f/A/a-1_1.npz"),
        QCRow("A/b c_ä.wav", "A", PROCESSED, sample_rate=8000, channels=1, seconds=0.0001, frames=1, feature="x.npz"),
        QCRow("A/broken.wav", "A", REJECTED, "truncated", 'data chunk "declares"\t10\nbytes'),
        QCRow("A/.DS_Store", "A", IGNORED, "hidden"),
        QCRow("A/long.wav", "A", PROCESSED, sample_rate=192000, channels=6, seconds=1800.0, frames=179998,
              feature="l.npz"),
    ]
    for name, chosen in {"mixed": rows, "rejected only": rows[2:4], "none": []}.items():
        write_manifest(tmp_path / "csv.tsv", chosen)
        fsutil.write_tsv(tmp_path / "pandas.tsv", to_frame(chosen))
        assert (tmp_path / "csv.tsv").read_bytes() == (tmp_path / "pandas.tsv").read_bytes(), name


def test_recorded_hashes_decide_without_hashing(species: Path, tmp_path: Path, monkeypatch) -> None:
    """With the workflow's recorded SHA-256 (`--sources`), an npz is current if and only
    if it was computed from that content, whatever the file's size and mtime say."""
    run(species, tmp_path)
    wavs = sorted((species / LABEL).iterdir())
    recorded = {f"{LABEL}/{w.name}": sha256_file(w) for w in wavs}

    def no_hashing(path: Path) -> str:
        raise AssertionError(f"hashed {path}")

    monkeypatch.setattr(features, "sha256_file", no_hashing)
    for wav in wavs:
        os.utime(wav, ns=(1, 1))  # a checkout: new mtimes, same content
    _, stats = extract_species(species, LABEL, tmp_path / "features", sources=recorded)
    assert (stats.computed, stats.current) == (0, 3)

    # Same size, new content, old mtime restored (`cp -p`, `rsync -t`): the recorded hash changed.
    edited = wavs[1]
    write_wav(edited, chirp(2.0, 44100, seed=99), 44100)
    os.utime(edited, ns=(1, 1))
    assert edited.stat().st_size == wavs[0].stat().st_size
    # This module's sha256_file is the original: only the feature code's one is patched.
    recorded[f"{LABEL}/{edited.name}"] = new_sha = sha256_file(edited)
    _, stats = extract_species(species, LABEL, tmp_path / "features", sources=recorded)
    assert (stats.computed, stats.current) == (1, 2)
    npz = tmp_path / "features" / LABEL / edited.with_suffix(".npz").name
    with np.load(npz) as z:
        assert str(z["source_sha256"]) == new_sha
        samples, rate = soundfile.read(edited, dtype="float32")
        np.testing.assert_array_equal(z["log_mel"], waveform_to_log_mel(samples, rate))


def test_npz_records_the_content_it_read_not_the_recorded_hash(species: Path, tmp_path: Path) -> None:
    """A file changed after the workflow hashed it: the npz must name what it was computed from,
    so the next run (which records the new hash) finds it current, and never trusts a stale one."""
    wav = species / LABEL / f"{LABEL}-123_1.wav"
    recorded = {f"{LABEL}/{wav.name}": "0" * 64}  # hashed before a change the job then sees
    extract_species(species, LABEL, tmp_path / "features", sources=recorded)
    with np.load(tmp_path / "features" / LABEL / f"{LABEL}-123_1.npz") as z:
        assert str(z["source_sha256"]) == sha256_file(wav)
    _, stats = extract_species(species, LABEL, tmp_path / "features", sources={f"{LABEL}/{wav.name}": sha256_file(wav)})
    assert (stats.computed, stats.current) == (0, 3)


def test_files_not_hashed_by_the_workflow_are_judged_by_their_hash(species: Path, tmp_path: Path) -> None:
    """In the workflow (`sources` given) a file listed by a stamp has no recorded hash: an
    existing npz must then match the file's own hash, never just its size and mtime."""
    run(species, tmp_path)
    wavs = sorted((species / LABEL).iterdir())
    edited = wavs[1]
    stat = edited.stat()
    write_wav(edited, chirp(2.0, 44100, seed=99), 44100)  # same size, new content
    os.utime(edited, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert edited.stat().st_size == stat.st_size
    _, stats = extract_species(species, LABEL, tmp_path / "features")
    assert (stats.computed, stats.current) == (0, 3)  # by hand, size and mtime decide
    rows, stats = extract_species(species, LABEL, tmp_path / "features", sources={})
    assert (stats.computed, stats.current) == (1, 2)
    assert dict(zip(rows["path"], rows["sha256"]))[f"{LABEL}/{edited.name}"] == sha256_file(edited)


def test_a_file_written_while_open_gets_no_hash(tmp_path: Path) -> None:
    """Formats decoded by libsndfile are hashed in a second read: if the file changed in
    between, that hash would not describe the decoded bytes, so there is none."""
    wav = tmp_path / "float.wav"
    soundfile.write(wav, chirp(1.0, 16000), 16000, subtype="FLOAT")
    with open_audio(wav) as reader:
        for _ in reader.blocks():
            pass
        with open(wav, "ab") as f:
            f.write(b"\0" * 8)
        assert reader.sha256() == ""
    with open_audio(wav) as reader:
        for _ in reader.blocks():
            pass
        assert reader.sha256() == sha256_file(wav)
