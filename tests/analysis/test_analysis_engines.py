"""`jibjib analyze --engine tflite`: the export's analysis TFLite files, which one runs, and what it finds.

Hand-built exports as in test_analysis_scale: the "Tone" model (no weights: its
int8 file computes what its float32 file does) and a 250-class one whose dense
layer the int8 file quantises. The tiny workflow's real models are checked in
test_tflite.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import write_audio
from test_analysis_scale import wide_export
from test_analyze import analyze_cli, soundscape, write_tone_export
from jibjib.analysis.analyze import ANALYSED, REUSED, analyze_files
from jibjib.analysis.analyzer import Analyzer
from jibjib.analysis.inputs import find_inputs
from jibjib.features.frontend import waveform_to_log_mel
from jibjib.serving import tflite
from jibjib.serving.litert import LiteRTModel


def log_mel_windows(seconds: float, tones: list[tuple[float, float]], seed: int = 0) -> np.ndarray:
    """Whole one-patch windows, one window apart, of a soundscape: stand-ins for the val split's windows."""
    log_mel = waveform_to_log_mel(soundscape(seconds, 16000, tones, seed=seed), 16000)
    n = log_mel.shape[0] // 96
    return log_mel[:n * 96].reshape(n, 96, 64)


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("engines")
    val = np.concatenate([log_mel_windows(20.0, [(2.0, 6.0)], seed=s) for s in range(3)])
    return {"tone": write_tone_export(root / "tone" / "1", None, [float("nan"), 0.5], analysis_windows=val),
            "wide": wide_export(root / "wide" / "1", analysis_windows=val),
            "plain": write_tone_export(root / "plain" / "1", None, [float("nan"), 0.5])}


def test_the_card_records_the_int8_agreement_and_the_file_analyze_runs(exports: dict[str, Path]) -> None:
    for kind in ("tone", "wide"):
        section = json.loads((exports[kind] / "assets" / "model_card.json").read_text())["tflite"]["analysis"]
        assert set(section["files"]) == {"windows.tflite", "windows_int8.tflite"}
        assert section["val_windows"] == 60 and section["int8_min_agreement"] == 0.99
        assert section["int8_top1_agreement"] >= 0.99 and section["file"] == "windows_int8.tflite", section
        assert Analyzer(exports[kind], engine="tflite").engine == "windows_int8.tflite"
    wide = exports["wide"]
    # The int8 file quantises the dense layer's weights: it is smaller, and its scores differ a little.
    assert (wide / "windows_int8.tflite").stat().st_size < (wide / "windows.tflite").stat().st_size / 2
    windows = log_mel_windows(10.0, [], seed=9)
    exact, quantised = (LiteRTModel(wide / name, threads=1)(windows) for name in ("windows.tflite",
                                                                                  "windows_int8.tflite"))
    assert 0 < np.abs(exact - quantised).max() < 0.05


def test_below_the_agreement_the_float32_file_runs_and_the_card_says_why(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(tflite, "INT8_MIN_AGREEMENT", 1.01)  # no int8 file can reach it
    export = wide_export(tmp_path / "wide" / "1", analysis_windows=log_mel_windows(20.0, [(2.0, 6.0)]))
    section = json.loads((export / "assets" / "model_card.json").read_text())["tflite"]["analysis"]
    assert section["file"] == "windows.tflite" and section["choice"].startswith("float32: ")
    assert "below 101%" in section["choice"] and Analyzer(export, engine="tflite").engine == "windows.tflite"
    no_val = wide_export(tmp_path / "no_val" / "1", analysis_windows=np.zeros((0, 96, 64), np.float32))
    section = json.loads((no_val / "assets" / "model_card.json").read_text())["tflite"]["analysis"]
    assert section["file"] == "windows.tflite" and section["int8_top1_agreement"] is None


def test_the_tflite_engine_finds_what_the_saved_model_finds(exports: dict[str, Path], tmp_path: Path) -> None:
    audio = tmp_path / "in"
    write_audio(audio / "one.flac", soundscape(40.0, 44100, [(5.0, 7.0), (20.0, 24.0)], channels=2), 44100, "FLAC")
    write_audio(audio / "two.wav", soundscape(12.0, 16000, [(3.0, 4.0)]), 16000, "WAV")
    tables = {}
    for engine in ("savedmodel", "tflite"):
        out = tmp_path / engine
        done = analyze_cli("--model", str(exports["tone"]), "--engine", engine, "--out", str(out), "--merge",
                           str(audio))
        assert done.returncode == 0, done.stderr
        tables[engine] = pd.read_csv(out / "detections.tsv", sep="\t")
    assert len(tables["tflite"]) == 3
    pd.testing.assert_frame_equal(tables["tflite"].drop(columns="score"), tables["savedmodel"].drop(columns="score"))
    np.testing.assert_allclose(tables["tflite"]["score"], tables["savedmodel"]["score"], atol=2e-3)


def test_scores_of_one_engine_are_not_reused_by_the_other(exports: dict[str, Path], tmp_path: Path) -> None:
    audio, scores = tmp_path / "in", tmp_path / "scores"
    write_audio(audio / "a.wav", soundscape(4.0, 16000, [(1.0, 2.0)]), 16000, "WAV")
    statuses = lambda engine: [r.status for r in analyze_files(Analyzer(exports["tone"], engine=engine),  # noqa: E731
                                                               find_inputs([audio]), scores)]
    assert statuses("savedmodel") == [ANALYSED] and statuses("savedmodel") == [REUSED]
    assert statuses("tflite") == [ANALYSED] and statuses("tflite") == [REUSED]


def test_an_export_without_tflite_files_is_refused_with_one_line(exports: dict[str, Path], tmp_path: Path) -> None:
    audio = write_audio(tmp_path / "a.wav", soundscape(3.0, 16000, []), 16000, "WAV")
    done = analyze_cli("--model", str(exports["plain"]), "--engine", "tflite", "--out", str(tmp_path / "out"),
                       str(audio))
    (line,) = done.stderr.strip().splitlines()
    assert done.returncode == 1 and "has no TFLite analysis file" in line and "export.tflite" in line, done.stderr
    assert not (tmp_path / "out" / "files.tsv").exists()
