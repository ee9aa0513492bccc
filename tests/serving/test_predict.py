"""predict's thresholds and detections on a stand-in for a loaded export; streaming and long files on
hand-built exports."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from jibjib import cli
from jibjib.serving import predict
from jibjib.features.audio import AudioError
from jibjib.core.errors import ExportError

LABELS = ["a", "b", "c", "d", "e", "f", "g"]
# Raw and calibrated scores rank the classes a..g alike; the thresholds below tell the two apart.
RAW = np.array([0.30, 0.20, 0.15, 0.12, 0.10, 0.08, 0.05])
CALIBRATED = np.array([0.22, 0.18, 0.16, 0.14, 0.12, 0.10, 0.08])
# a: detected only when calibrated; b: only raw; f (rank 6): both, raw exactly at its threshold.
THRESHOLDS = ("label\tthreshold\tstatus\tcalibrated_threshold\tcalibrated_status\n"
              "a\t0.5\tok\t0.2\tok\nb\t0.1\tok\t0.5\tok\nc\t\tunreachable\t\tunreachable\n"
              "d\t\tno_val_files\t\tno_val_files\ne\t\tunreachable\t\tunreachable\nf\t0.08\tok\t0.09\tok\n"
              "g\t\tunreachable\t\tunreachable\n")
OLD_THRESHOLDS = "label\tthreshold\tprecision\trecall\tsupport\tstatus\n" + "".join(
    f"{label}\t0.1\t1.0\t1.0\t2\tok\n" for label in LABELS)


class FakeExport:
    """What predict_files uses of `Exported`: labels, external_ids, file_scores(path, calibrated)."""

    labels = LABELS
    external_ids = None

    def __init__(self, thresholds_path: Path | None = None) -> None:
        self.thresholds_path = thresholds_path

    def file_scores(self, path: str, calibrated: bool = False) -> tuple[np.ndarray, str]:
        if path.endswith("bad.wav"):
            raise AudioError("unreadable: not a WAV file")
        if path.startswith("long"):
            return RAW, predict.WINDOW_MAX
        return (CALIBRATED if calibrated else RAW), predict.FILE_MEAN


@pytest.fixture
def tsv(tmp_path: Path) -> Path:
    path = tmp_path / "thresholds.tsv"
    path.write_text(THRESHOLDS)
    return path


def test_load_thresholds_picks_the_set_of_the_scores(tsv: Path) -> None:
    raw = predict.load_thresholds(tsv, LABELS)
    calibrated = predict.load_thresholds(tsv, LABELS, calibrated=True)
    assert raw[[0, 1, 5]].tolist() == [0.5, 0.1, 0.08] and calibrated[[0, 1, 5]].tolist() == [0.2, 0.5, 0.09]
    assert np.isnan(raw[2]) and np.isnan(calibrated[6])
    assert math.isnan(predict.load_thresholds(tsv, LABELS + ["new"])[-1])  # a class the table lacks: never detected


def test_old_thresholds_refuse_calibrated_scores(tmp_path: Path) -> None:
    old = tmp_path / "old.tsv"
    old.write_text(OLD_THRESHOLDS)
    assert predict.load_thresholds(old, LABELS).tolist() == [0.1] * len(LABELS)
    with pytest.raises(ExportError, match="no calibrated_threshold column"):
        predict.load_thresholds(old, LABELS, calibrated=True)


@pytest.mark.parametrize("calibrated, detected", [(False, ["b", "f"]), (True, ["a", "f"])])
def test_detections_below_the_top_k_are_reported_by_rank(tsv: Path, calibrated: bool, detected: list[str]) -> None:
    thresholds = predict.load_thresholds(tsv, LABELS, calibrated)
    results = predict.predict_files(FakeExport(), ["x.wav"], top_k=2, thresholds=thresholds, calibrated=calibrated)
    [result] = results
    assert [(row["rank"], row["label"], row["detected"]) for row in result.top] == [
        (1, "a", "a" in detected), (2, "b", "b" in detected), (6, "f", True)]
    assert result.detected == detected
    assert result.as_dict()["detected"] == detected
    table = pd.read_csv(io.StringIO(predict.to_tsv(results)), sep="\t")
    assert list(table["rank"]) == [1, 2, 6] and list(table["label"]) == ["a", "b", "f"]
    assert table["score"].tolist() == pytest.approx((CALIBRATED if calibrated else RAW)[[0, 1, 5]])


def test_without_thresholds_only_the_top_k() -> None:
    results = predict.predict_files(FakeExport(), ["x.wav", "bad.wav"], top_k=3)
    assert [row["rank"] for row in results[0].top] == [1, 2, 3] and results[0].detected is None
    assert "detected" not in results[0].as_dict() and results[1].error.startswith("unreadable")
    assert predict.to_tsv(results).splitlines()[0] == "file\trank\tlabel\tscore"


def test_cli_compares_calibrated_scores_with_calibrated_thresholds(tsv: Path, tmp_path: Path, monkeypatch,
                                                                   capsys) -> None:
    monkeypatch.setattr(predict, "Exported", lambda folder: FakeExport(tsv))
    assert cli.main(["predict", "--model", "export", "x.wav", "--top-k", "1", "--json", "--calibrated",
                     "--thresholds"]) == 0
    [prediction] = json.loads(capsys.readouterr().out)
    assert prediction["detected"] == ["a", "f"]
    assert [(row["label"], row["threshold"]) for row in prediction["predictions"]] == [("a", 0.2), ("f", 0.09)]

    old = tmp_path / "old.tsv"
    old.write_text(OLD_THRESHOLDS)
    assert cli.main(["predict", "--model", "export", "x.wav", "--calibrated", "--thresholds", str(old)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    [line] = captured.err.strip().splitlines()
    assert line.startswith(f"jibjib predict: error: {old} has no calibrated_threshold column")


# --- On exported models: streaming, and long files ------------------------------------------------------

@pytest.fixture(scope="module")
def tone_exports(tmp_path_factory) -> dict[str, Path]:
    from test_analyze import write_tone_export

    root = tmp_path_factory.mktemp("tone_exports")
    return {"patch": write_tone_export(root / "patch" / "1", None, [float("nan"), 0.5]),
            "sequence": write_tone_export(root / "sequence" / "1", 3, [float("nan"), 0.5])}


@pytest.mark.parametrize("kind", ["patch", "sequence"])
def test_a_file_read_in_chunks_scores_as_in_one_piece(tone_exports: dict[str, Path], tmp_path: Path,
                                                      kind: str) -> None:
    """50 s at 44.1 kHz: two chunks of about 30 s, each starting on a unit; the mean over the whole file."""
    from conftest import write_audio
    from test_analyze import soundscape

    path = write_audio(tmp_path / "clip.flac", soundscape(50.0, 44100, [(12.0, 14.0), (31.0, 40.0)]), 44100, "FLAC")
    model = predict.Exported(tone_exports[kind])
    for calibrated in (False, True):
        scores, scored_by = model.file_scores(path, calibrated)
        assert scored_by == predict.FILE_MEAN
        np.testing.assert_allclose(scores, model.scores(model.waveform(path), calibrated), atol=1e-5)


def test_a_long_file_is_decided_by_its_best_window(tone_exports: dict[str, Path], tmp_path: Path) -> None:
    """One 2 s call in 90 s: the file's mean is far below the threshold, its best window far above."""
    from conftest import REPO_ENV, write_audio
    from test_analyze import soundscape
    import subprocess
    import sys

    path = write_audio(tmp_path / "dawn.wav", soundscape(90.0, 16000, [(70.0, 72.0)]), 16000, "WAV")
    model = predict.Exported(tone_exports["patch"])
    scores, scored_by = model.file_scores(path)
    assert scored_by == predict.WINDOW_MAX and scores[1] > 0.9
    assert model.scores(model.waveform(path))[1] < 0.2  # the mean over all of it
    done = subprocess.run([sys.executable, "-m", "jibjib", "predict", "--model", str(tone_exports["patch"]), str(path),
                           "--thresholds"], capture_output=True, text=True, env=REPO_ENV, timeout=300)
    assert done.returncode == 0, done.stderr
    table = pd.read_csv(io.StringIO(done.stdout), sep="\t").set_index("label")
    # Compared with the window threshold (0.5), not the file threshold; "Other" has no window threshold.
    assert table.loc["Tone", ["threshold", "detected", "scored_by"]].tolist() == [0.5, True, "window_max"]
    assert not table.loc["Other", "detected"]


def test_predict_streams_long_files_in_bounded_memory(tone_exports: dict[str, Path], tmp_path: Path) -> None:
    """Peak RSS of predict on 20 minutes at 48 kHz against 2: read whole, the long file alone is 230 MB."""
    import re
    import subprocess
    import sys

    import soundfile

    from conftest import REPO, REPO_ENV
    from test_analyze import soundscape

    def peak(minutes: int) -> int:
        path = tmp_path / f"{minutes}.wav"
        with soundfile.SoundFile(path, "w", 48000, 1, "PCM_16") as f:
            for minute in range(minutes):
                f.write(soundscape(60.0, 48000, [(20.0, 25.0)], seed=minute))
        code = ("import re, sys; from jibjib.cli import main; rc = main(sys.argv[1:]); "
                "print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1]); sys.exit(rc)")
        done = subprocess.run([sys.executable, "-c", code, "predict", "--model", str(tone_exports["patch"]), str(path)],
                              capture_output=True, text=True, cwd=REPO, env=REPO_ENV, timeout=600)
        assert done.returncode == 0, done.stderr
        return int(re.findall(r"^\d+$", done.stdout, re.M)[-1]) * 1024

    short, long = peak(2), peak(20)
    assert long - short < 60e6, (short, long)
