"""predict's thresholds and detections, on a stand-in for a loaded export (no SavedModel needed)."""

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
    """What predict_files uses of `Exported`: labels, external_ids, waveform(path), scores(waveform, calibrated)."""

    labels = LABELS
    external_ids = None

    def __init__(self, thresholds_path: Path | None = None) -> None:
        self.thresholds_path = thresholds_path

    def waveform(self, path: str) -> np.ndarray:
        if path.endswith("bad.wav"):
            raise AudioError("unreadable: not a WAV file")
        return np.zeros(16000, np.float32)

    def scores(self, waveform: np.ndarray, calibrated: bool = False) -> np.ndarray:
        return CALIBRATED if calibrated else RAW


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
