"""Annotated soundscapes: the demo generator, the annotation readers, the evaluation and its figure."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile

from jibjib.demo import soundscapes as demo_soundscapes
from jibjib.core import fsutil
from jibjib.analysis.annotations import Call, read_annotations
from jibjib.analysis.soundscape_report import pick_strip, write_soundscape_report
from jibjib.analysis.scores import WindowScores
from jibjib.analysis.soundscapes import DetectionSettings, evaluate_soundscapes, hit_matrix, read_scores, window_truth
from jibjib.analysis.tables import detections
from jibjib.cli import main
from jibjib.demo.songs import make_species, species_names
from jibjib.demo.soundscapes import MARKER_NAME, RAVEN_COLUMNS, make_soundscapes
from jibjib.core.errors import InputError

SMALL = dict(n_species=3, seed=5, n_files=4, min_seconds=40.0, max_seconds=50.0)
HEADER = "\t".join(RAVEN_COLUMNS)


def write_scores(folder: Path, key: str, scores: np.ndarray, labels: list[str], seconds: float,
                 start: np.ndarray | None = None) -> None:
    start = np.arange(len(scores), dtype=float) if start is None else start
    fsutil.save_npz(folder / f"{key}.npz", start=start, end=start + 1.0, scores=np.asarray(scores, np.float32),
                    labels=np.array(labels), sample_rate=np.int64(16000), seconds=np.float64(seconds),
                    source_sha256=np.str_("0" * 64))


def raven(path: Path, rows: list[tuple[float, float, str]], view: str = "Spectrogram 1") -> None:
    lines = [HEADER] + [f"{i}\t{view}\t1\t{s}\t{e}\t2000\t5000\t{label}" for i, (s, e, label) in enumerate(rows, 1)]
    path.write_text("\n".join(lines) + "\n")


# --------------------------------------------------------------------------
# The evaluation on a case worked out by hand
#
# Windows of 1 s, hop 1 s: window i of a file is [i, i+1].  Labels A, B, C.  Two spans hit when they overlap
# by at least half the shorter of the two.
# f1 (10 s) holds four calls:
#   A1 [1.2, 2.9]: w1 overlaps 0.8 s, w2 0.9 s, both >= half of min(1, 1.7) = 0.5 -> positive
#   A2 [6.8, 7.1]: w6 overlaps 0.2 >= 0.15 -> positive; w7 overlaps 0.1 < 0.15 -> left out for A
#   B1 [2.5, 4.5]: w2 0.5 (exactly half), w3 1.0, w4 0.5 -> positive (A1 and B1 overlap: two species at once)
#   B2 [8.0, 8.4]: w8 0.4 >= 0.2 -> positive; w7 only touches it at 8.0 -> negative
# f2 (10 s) is annotated and bird-free; f3 has scores but no table; f4 a table but no scores.
# 20 s evaluated, 20/3600 h.  Annotated audio: [1.2, 4.5] + [6.8, 7.1] + [8.0, 8.4] = 4.0 s, so 6 + 10 = 16 s
# = 16/3600 h without calls.
#
# Window level.
# A (threshold 0.6); windows kept: all but f1 w7.  Positives f1 w1 (0.9), w2 (0.6), w6 (0.4).
#   Ranked: 0.9 P, 0.75 N (f2 w4), 0.7 N (w3), 0.65 N (w9), 0.6 P, 0.4 P.
#   AP = (1/1 + 2/5 + 3/6) / 3 = 0.633333.  ROC-AUC: 16 negatives; below 0.9: 16, below 0.6: 13,
#   below 0.4: 13 -> 42/48 = 0.875.  Windows >= 0.6 (kept): w1, w2, w3, w9, f2 w4 -> P = 2/5, R = 2/3, F1 = 0.5.
# B (threshold 0.8); no window left out.  Positives w2 (0.3), w3 (0.9), w4 (0.8), w8 (0.4); 16 negatives.
#   Ranked: 0.9 P, 0.85 N (w5), 0.8 P, 0.4 P, 0.3 P -> AP = (1 + 2/3 + 3/4 + 4/5) / 4 = 0.804167.
#   ROC-AUC: below 0.9: 16, the other three: 15 each -> 61/64 = 0.953125.
#   Windows >= 0.8: w3, w4, w5 -> P = 2/3, R = 2/4, F1 = 4/7.
#
# Event level, as analyze delivers by default: one detection per window at or above the threshold.
# A: f1 w1, w2 hit A1 (true); w3 hits nothing (false, inside B1's call); w7 overlaps A2 by 0.1 < 0.15 (false,
#   though it touches A2: any overlap counted before); w9 false; f2 w4 false.  6 detections, 4 false; A1 found
#   (once, by w1 or w2), A2 missed: event recall 1/2.  False per hour 4 / (20/3600) = 720.  Overlapping no call
#   of any label: w9 and f2 w4 -> 2 / (16/3600) = 450 per hour without calls.
# B: w3, w4 hit B1 (w4 exactly half); w5 false, in call-free audio.  3 detections, 1 false; B2 missed: 1/2.
#   180 per hour; 225 per hour without calls.
# C (threshold 0.5) is never annotated: its one detection (f1 w5) is false, in call-free audio: 180 and 225,
#   and C stays out of the macro averages.
# Macro over A and B: cmAP 0.71875, ROC-AUC 0.9140625, P 0.533333, R 0.583333, F1 0.535714, event recall 0.5,
#   false detections per hour 450, per hour without calls 337.5.
# Pooled: 2 of 4 calls found; 10 detections, 6 false -> 1080 per hour; 4 in call-free audio -> 900.
#
# With analyze.merge: A's detections are [1, 4] (hits A1: 1.7 >= 0.85), [7, 8], [9, 10], f2 [4, 5] (3 false);
# B's one [3, 6] hits B1 (1.5 >= 1.0): no false detection; C's [5, 6] false.

A = [0.1, 0.9, 0.6, 0.7, 0.2, 0.3, 0.4, 0.8, 0.1, 0.65]
B = [0.2, 0.1, 0.3, 0.9, 0.8, 0.85, 0.1, 0.2, 0.4, 0.1]
C = [0.0, 0.0, 0.0, 0.0, 0.0, 0.7, 0.0, 0.0, 0.0, 0.0]


@pytest.fixture()
def hand_case(tmp_path: Path) -> dict[str, Path]:
    scores, tables, audio = tmp_path / "scores", tmp_path / "tables", tmp_path / "audio"
    for folder in (scores, tables, audio):
        folder.mkdir()
    f2 = np.full((10, 3), 0.05)
    f2[4, 0] = 0.75
    write_scores(scores, "f1", np.stack([A, B, C], axis=1), ["A", "B", "C"], 10.0)
    write_scores(scores, "f2", f2, ["A", "B", "C"], 10.0)
    write_scores(scores, "f3", np.ones((10, 3)), ["A", "B", "C"], 10.0)
    raven(tables / "f1.selections.txt", [(1.2, 2.9, "A"), (2.5, 4.5, "B"), (6.8, 7.1, "A"), (8.0, 8.4, "B")])
    raven(tables / "f2.selections.txt", [])
    raven(tables / "f4.Table.1.selections.txt", [(1.0, 2.0, "A")])
    thresholds = tmp_path / "thresholds.tsv"
    thresholds.write_text("label\tthreshold\twindow_threshold\nA\t0.9\t0.6\nB\t0.9\t0.8\nC\t0.9\t0.5\n")
    noise = np.random.default_rng(0).normal(0, 0.05, 10 * 8000)
    soundfile.write(audio / "f1.wav", noise, 8000)
    return {"scores": scores, "tables": tables, "thresholds": thresholds, "audio": audio, "out": tmp_path / "eval"}


def test_hand_worked_case(hand_case):
    report = write_soundscape_report(hand_case["scores"], hand_case["tables"], hand_case["thresholds"],
                                     hand_case["out"], model="toy")
    a, b, c = report["per_species"]
    assert (a["positive_windows"], a["left_out_windows"], a["negative_windows"]) == (3, 1, 16)
    assert a["average_precision"] == pytest.approx(1.9 / 3)
    assert a["roc_auc"] == pytest.approx(0.875)
    assert (a["detected_windows"], a["precision"], a["recall"], a["f1"]) == (5, pytest.approx(0.4),
                                                                             pytest.approx(2 / 3), pytest.approx(0.5))
    assert (a["detections"], a["true_detections"], a["false_detections"]) == (6, 2, 4)
    assert (a["detected_calls"], a["event_recall"]) == (1, 0.5)
    assert a["false_detections_per_hour"] == pytest.approx(720.0)
    assert (a["false_detections_unannotated"], a["false_detections_per_unannotated_hour"]) == (2, pytest.approx(450))
    # A's four false detections: f1 [3, 4] on B's call only, [7, 8] on 0.1 s of A's 0.3 s call (under half),
    # f1 [9, 10] and f2 [4, 5] where no call is.
    assert (a["false_detections_partial_call"], a["false_detections_other_calls"]) == (1, 1)
    assert (b["positive_windows"], b["left_out_windows"]) == (4, 0)
    assert b["average_precision"] == pytest.approx((1 + 2 / 3 + 3 / 4 + 4 / 5) / 4)
    assert b["roc_auc"] == pytest.approx(61 / 64)
    assert (b["precision"], b["recall"], b["f1"]) == (pytest.approx(2 / 3), 0.5, pytest.approx(4 / 7))
    assert (b["detections"], b["false_detections"], b["event_recall"]) == (3, 1, 0.5)
    assert (b["false_detections_per_hour"], b["false_detections_per_unannotated_hour"]) == (
        pytest.approx(180.0), pytest.approx(225.0))
    assert (c["calls"], c["average_precision"], c["recall"], c["event_recall"]) == (0, None, None, None)
    assert (c["false_detections"], c["false_detections_per_hour"]) == (1, pytest.approx(180.0))
    assert report["cmap"] == pytest.approx(0.71875)
    assert report["macro_roc_auc"] == pytest.approx(0.9140625)
    assert report["macro"] == pytest.approx({"precision": 0.8 / 1.5, "recall": 7 / 12, "f1": (0.5 + 4 / 7) / 2,
                                             "event_recall": 0.5, "false_detections_per_hour": 450.0,
                                             "false_detections_per_unannotated_hour": 337.5})
    assert report["pooled"] == pytest.approx({
        "calls": 4, "detected_calls": 2, "event_recall": 0.5, "detections": 10, "false_detections": 6,
        "false_detections_per_hour": 1080.0, "false_detections_unannotated": 4,
        "false_detections_per_unannotated_hour": 900.0, "false_detections_partial_call": 1,
        "false_detections_other_calls": 1})
    assert (report["hours"], report["unannotated_hours"]) == (pytest.approx(20 / 3600), pytest.approx(16 / 3600))
    assert report["detection_settings"] == {"merge": False, "min_score": None}
    assert report["species_not_annotated"] == ["C"]
    assert report["files_without_annotations"] == ["f3"]
    assert report["annotated_files_without_scores"] == ["f4"]
    assert (report["n_files"], report["calls"], report["window_seconds"], report["hop_seconds"]) == (2, 4, 1.0, 1.0)
    assert [f["detections"] for f in report["files"]] == [9, 1]
    assert report["figure"] is None
    saved = json.loads((hand_case["out"] / "soundscapes.json").read_text())
    assert saved["pooled"]["event_recall"] == 0.5 and saved["model"] == "toy"
    section = (hand_case["out"] / "soundscapes.md").read_text()
    assert section.startswith("## Annotated soundscapes") and "| A | 2 | 3 | 0.633 |" in section
    assert "each window at or above it (analyze.merge is off)" in section
    assert "1 on part of a call of their species (less than the hit share), 1 on other species' calls only" in section
    assert "Never annotated (reported, not in the macro averages): C." in section


def test_merged_detections_are_judged_as_analyze_merges_them(hand_case):
    report = write_soundscape_report(hand_case["scores"], hand_case["tables"], hand_case["thresholds"],
                                     hand_case["out"], settings=DetectionSettings(merge=True))
    a, b, c = report["per_species"]
    assert (a["detections"], a["false_detections"], a["event_recall"]) == (4, 3, 0.5)
    assert (b["detections"], b["false_detections"], b["event_recall"]) == (1, 0, 0.5)
    assert (c["detections"], c["false_detections"]) == (1, 1)
    assert report["pooled"]["false_detections"] == 4 and report["detection_settings"]["merge"] is True
    # A minimum score for every species, as analyze.min_score: at 0.85 A keeps w1 (0.9), B w3 and w5.
    strict = evaluate_soundscapes(read_scores(hand_case["scores"]), read_annotations(hand_case["tables"]),
                                  {}, DetectionSettings(min_score=0.85))
    assert [row["detections"] for row in strict["per_species"]] == [1, 2, 0]
    assert [row["window_threshold"] for row in strict["per_species"]] == [0.85] * 3


def test_a_detection_finds_one_call_and_must_overlap_enough():
    """Three 1 s calls of X at 0, 2 and 4 s in a 10 s file.  One merged detection spanning the chorus [0, 5]
    hits all three but finds one (one to one); three window detections find all three.  A detection that
    only clips a call (0.2 s of a 1 s call) is false; the same false detections count per hour of all audio,
    and none is in call-free audio here, so the rate without calls is 0 (it was infinite or undefined when
    every false detection was divided by the call-free hours only)."""
    calls = {"f": [Call(0.0, 1.0, "X"), Call(2.0, 3.0, "X"), Call(4.0, 5.0, "X")]}

    def report_for(starts: list[float], ends: list[float]) -> dict:
        start, end = np.array(starts), np.array(ends)
        scores = WindowScores(start, end, np.ones((start.size, 1), np.float32), ["X"], 10.0, 16000, "0" * 64)
        return evaluate_soundscapes({"f": scores}, calls, {"X": 0.5}, DetectionSettings(merge=True))

    chorus = report_for([0.0, 1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0, 5.0])["per_species"][0]
    assert (chorus["detections"], chorus["detected_calls"], chorus["false_detections"]) == (1, 1, 0)
    apart = report_for([0.0, 2.0, 4.0], [1.0, 3.0, 5.0])["per_species"][0]
    assert (apart["detections"], apart["detected_calls"], apart["event_recall"]) == (3, 3, 1.0)
    clipping = report_for([0.8, 2.0], [1.8, 3.0])
    row = clipping["per_species"][0]
    assert (row["detections"], row["false_detections"], row["detected_calls"]) == (2, 1, 1)
    assert row["false_detections_per_hour"] == pytest.approx(360.0)  # 1 in 10 s
    assert row["false_detections_unannotated"] == 0 and row["false_detections_per_unannotated_hour"] == 0.0
    assert (row["false_detections_partial_call"], row["false_detections_other_calls"]) == (1, 0)
    everything = {"f": [Call(0.0, 10.0, "Y"), *calls["f"]]}  # a chorus of another species over the whole file
    start = np.array([6.0])
    scores = WindowScores(start, start + 1.0, np.ones((1, 2), np.float32), ["X", "Y"], 10.0, 16000, "0" * 64)
    busy = evaluate_soundscapes({"f": scores}, everything, {"X": 0.5, "Y": 2.0})
    assert busy["unannotated_hours"] == 0.0
    assert busy["pooled"]["false_detections_per_hour"] == pytest.approx(360.0)
    assert busy["pooled"]["false_detections_per_unannotated_hour"] is None
    assert (busy["pooled"]["false_detections_other_calls"], busy["pooled"]["false_detections_partial_call"]) == (1, 0)


def test_event_counts_agree_with_sed_eval():
    """DCASE's event scoring (sed_eval, onset collar 0.5 s, offset collar max(0.5 s, half the call)) on a
    case where its collars and our overlap rule accept the same pairs: calls found one to one, and its
    insertions (detections matched to no call) = our false detections + detections on a call found already."""
    sed_eval = pytest.importorskip("sed_eval")

    calls = {"f1": [Call(1.0, 3.0, "A"), Call(6.0, 7.0, "A"), Call(2.0, 4.0, "B")],
             "f2": [Call(5.0, 8.0, "B")]}
    # A: two detections on the first call (one finds it, one is a duplicate), one far from any call;
    # B: one on f1's call, one matching nothing in f2.
    found = {"f1": [(1.1, 3.1, "A"), (0.9, 2.9, "A"), (8.0, 9.0, "A"), (2.2, 4.1, "B")], "f2": [(1.0, 2.0, "B")]}
    labels = ["A", "B"]
    scores = {}
    for key, rows in found.items():
        start, end = np.array([r[0] for r in rows]), np.array([r[1] for r in rows])
        scores[key] = WindowScores(start, end, np.array([[r[2] == x for x in labels] for r in rows], np.float32),
                                   labels, 10.0, 16000, "0" * 64)
    report = evaluate_soundscapes(scores, calls, {"A": 0.5, "B": 0.5})

    dcase = sed_eval.sound_event.EventBasedMetrics(event_label_list=labels, t_collar=0.5, percentage_of_length=0.5)
    for key in found:
        reference = [{"file": key, "event_label": c.label, "event_onset": c.start, "event_offset": c.end}
                     for c in calls[key]]
        estimated = [{"file": key, "event_label": x, "event_onset": s, "event_offset": e} for s, e, x in found[key]]
        for ref in reference:  # the two rules accept the same pairs here: what makes the counts comparable
            for est in estimated:
                ours = est["event_label"] == ref["event_label"] and bool(hit_matrix(
                    np.array([est["event_onset"]]), np.array([est["event_offset"]]),
                    np.array([ref["event_onset"]]), np.array([ref["event_offset"]]))[0, 0])
                theirs = est["event_label"] == ref["event_label"] and dcase.validate_onset(ref, est, 0.5) \
                    and dcase.validate_offset(ref, est, 0.5, 0.5)
                assert ours == theirs, (ref, est)
        dcase.evaluate(reference, estimated)
    for row in report["per_species"]:
        counts = dcase.class_wise[row["label"]]
        assert (row["calls"], row["detections"], row["detected_calls"]) == (counts["Nref"], counts["Nsys"],
                                                                            counts["Ntp"])
        assert row["detections"] - row["detected_calls"] == counts["Nfp"]
        assert row["event_recall"] == pytest.approx(counts["Ntp"] / counts["Nref"])
    a, b = report["per_species"]
    assert (a["false_detections"], a["true_detections"], b["false_detections"]) == (1, 2, 1)


def test_cli_writes_report_and_figure(hand_case, capsys):
    args = ["evaluate-soundscapes", "--scores", str(hand_case["scores"]), "--annotations", str(hand_case["tables"]),
            "--thresholds", str(hand_case["thresholds"]), "--audio", str(hand_case["audio"]),
            "--out-dir", str(hand_case["out"])]
    assert main(args) == 0
    report = json.loads((hand_case["out"] / "soundscapes.json").read_text())
    assert report["figure"] == "soundscape_f1.png" and report["model"] == "eval"
    assert report["figure_strip"] == {"file": "f1", "start": 0.0, "end": 10.0}
    png = (hand_case["out"] / "soundscape_f1.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    assert "(soundscape_f1.png)" in (hand_case["out"] / "soundscapes.md").read_text()
    assert "event recall 0.500 pooled, 0.500 macro" in capsys.readouterr().err
    assert main(args + ["--figure", "soundscape.png"]) == 0
    assert (hand_case["out"] / "soundscape.png").is_file()


def test_cli_one_line_errors(hand_case, capsys):
    (hand_case["tables"] / "f1.selections.txt").write_text(f"{HEADER}\n1\tSpectrogram 1\t1\t1.0\tsoon\t1\t2\tA\n")
    args = ["evaluate-soundscapes", "--scores", str(hand_case["scores"]), "--annotations", str(hand_case["tables"]),
            "--thresholds", str(hand_case["thresholds"]), "--out-dir", str(hand_case["out"])]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "f1.selections.txt: line 2: End Time (s) 'soon' is not a number" in err
    hand_case["thresholds"].write_text("label\tthreshold\nA\t0.5\n")
    raven(hand_case["tables"] / "f1.selections.txt", [])
    assert main(args) == 1
    assert "expected columns label and window_threshold" in capsys.readouterr().err


def test_detections_merge_only_touching_runs():
    start = np.array([0.0, 0.5, 1.0, 3.0, 5.0, 5.5])
    end = start + 1.0
    score = np.array([0.9, 0.7, 0.2, 0.8, 0.6, 0.95])
    assert detections(start, end, score, 0.5) == [(0.0, 1.5, 0.9), (3.0, 4.0, 0.8), (5.0, 6.5, 0.95)]
    assert detections(start, end, score, float("nan")) == []
    # Windows 1 s long every 2 s do not touch: each detected one is its own detection.
    assert len(detections(np.array([0.0, 2.0]), np.array([1.0, 3.0]), np.array([1.0, 1.0]), 0.5)) == 2


def test_window_truth_leaves_out_edges():
    start = np.arange(4.0)
    positive, left_out = window_truth(start, start + 1.0, [Call(0.9, 2.0, "A")])
    # w0 overlaps 0.1 of a 1.1 s call (needs 0.5): left out; w1 is inside it.
    assert positive.tolist() == [False, True, False, False]
    assert left_out.tolist() == [True, False, False, False]


# --------------------------------------------------------------------------
# Annotation readers


def test_raven_folder(tmp_path):
    (tmp_path / "plot" / "sub").mkdir(parents=True)
    # Raven lists every selection once per view; only the spectrogram rows count.
    (tmp_path / "plot" / "sub" / "rec.Table.1.selections.txt").write_text(
        "Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tLow Freq (Hz)\tHigh Freq (Hz)\tAnnotation\n"
        "1\tWaveform 1\t1\t5.0\t6.0\t\t\tB\n1\tSpectrogram 1\t1\t5.0\t6.0\t1000\t3000\tB\n"
        "2\tWaveform 1\t1\t1.0\t2.5\t\t\tA\n2\tSpectrogram 1\t1\t1.0\t2.5\t2000\t4000\tA\n\n")
    raven(tmp_path / "plot" / "dawn.wav.selections.txt", [(0.5, 1.0, "A")])
    found = read_annotations(tmp_path / "plot")
    assert found == {"dawn": [Call(0.5, 1.0, "A", 2000.0, 5000.0)],
                     "sub/rec": [Call(1.0, 2.5, "A", 2000.0, 4000.0), Call(5.0, 6.0, "B", 1000.0, 3000.0)]}
    assert read_annotations(tmp_path / "plot" / "dawn.wav.selections.txt") == {"dawn": found["dawn"]}


def test_annotation_tsv(tmp_path):
    path = tmp_path / "truth.tsv"
    path.write_text("file\tstart\tend\tlabel\nsite/b.flac\t3\t4.5\tX\nsite/b.flac\t1\t2\tY\n"
                    "./a.wav\t0\t1\tX\nquiet.mp3\t\t\t\n")
    assert read_annotations(path) == {"a": [Call(0.0, 1.0, "X")], "quiet": [],
                                      "site/b": [Call(1.0, 2.0, "Y"), Call(3.0, 4.5, "X")]}


@pytest.mark.parametrize("name, text, message", [
    ("a.selections.txt", "Selection\tBegin Time (s)\tSpecies\n1\t0\tA\n", "no column End Time (s)"),
    ("a.selections.txt", "Begin Time (s)\tEnd Time (s)\tComment\n0\t1\tx\n", "no column Species"),
    ("a.selections.txt", "View\tBegin Time (s)\tEnd Time (s)\tSpecies\nWaveform 1\t0\t1\tA\nSpectrogram 1\t0\t1\tA\n"
                         "Waveform 1\t3\t2\tA\nSpectrogram 1\t3\t2\tA\n",
     "line 5: a call must start at 0 s or later and end after it starts, not 3-2"),
    ("a.selections.txt", "Begin Time (s)\tEnd Time (s)\tSpecies\n1\t2\t\n", "line 2: Begin Time (s), End Time (s) "
                                                                          "and Species must all be given"),
    ("a.selections.txt", "Begin Time (s)\tEnd Time (s)\tSpecies\n1\t2\tA\textra\n",
     "line 2: 4 tab-separated fields, the header has 3"),
    ("a.selections.txt", "", "not a tab-separated table with a header"),
    ("a.selections.txt", "Begin Time (s)\tEnd Time (s)\tSpecies\n1\t2\t\xe9\n".encode("latin-1"), "not a UTF-8"),
    ("t.tsv", "file\tbegin\tend\tlabel\na\t0\t1\tA\n", "expected columns file, start, end, label; missing start"),
    ("t.tsv", "file\tstart\tend\tlabel\na\t0\t1\tA\n\t0\t1\tA\n", "line 3: no file"),
    ("t.tsv", "file\tstart\tend\tlabel\na\t0\t1\tA\nb\t-1\t1\tA\n", "line 3: a call must start at 0 s"),
    ("t.tsv", "file\tstart\tend\tlabel\na\tnan\t1\tA\n", "line 2: start 'nan' is not a number"),
])
def test_malformed_annotations(tmp_path, name, text, message):
    (tmp_path / name).write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(InputError) as raised:
        read_annotations(tmp_path / name)
    assert message in str(raised.value) and "\n" not in str(raised.value)
    assert str(raised.value).startswith(str(tmp_path / name))


def test_annotation_folder_errors(tmp_path):
    with pytest.raises(InputError, match="no Raven selection table"):
        read_annotations(tmp_path)
    raven(tmp_path / "a.selections.txt", [])
    raven(tmp_path / "a.Table.1.selections.txt", [])
    with pytest.raises(InputError, match="two selection tables for a"):
        read_annotations(tmp_path)


def test_score_files_checked(tmp_path):
    write_scores(tmp_path, "a", np.zeros((3, 2)), ["A", "B"], 3.0)
    write_scores(tmp_path, "b", np.zeros((3, 2)), ["A", "C"], 3.0)
    with pytest.raises(InputError, match="labels differ"):
        read_scores(tmp_path)
    (tmp_path / "b.npz").unlink()
    np.savez(tmp_path / "c.npz", start=np.zeros(2))
    with pytest.raises(InputError, match="c.npz: not a window score file: no end, scores"):
        read_scores(tmp_path)
    (tmp_path / "c.npz").write_bytes(b"PK\x03\x04 broken")
    with pytest.raises(InputError, match="c.npz: unreadable"):
        read_scores(tmp_path)


# --------------------------------------------------------------------------
# The demo soundscapes


@pytest.fixture(scope="module")
def scapes(tmp_path_factory) -> tuple[Path, dict, float]:
    out = tmp_path_factory.mktemp("scapes") / "demo_soundscapes"
    began = time.perf_counter()
    make_soundscapes(out, **SMALL)
    return out, json.loads((out / MARKER_NAME).read_text()), time.perf_counter() - began


def test_files_and_formats(scapes):
    out, marker, seconds = scapes
    described = marker["soundscapes"]
    assert [d["file"] for d in described] == ["site1.wav", "site2.flac", "site3.ogg", "site4.mp3"]
    for d in described:
        info = soundfile.info(str(out / d["file"]))
        assert (info.format, info.samplerate, info.channels) == (d["format"], d["sample_rate"], 1)
        assert info.frames == round(d["seconds"] * d["sample_rate"])
        assert SMALL["min_seconds"] <= d["seconds"] <= SMALL["max_seconds"]
        samples, _ = soundfile.read(str(out / d["file"]))
        assert 0.01 < float(np.sqrt(np.mean(samples**2))) and np.abs(samples).max() < 1.0
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == sorted(
        [d["file"] for d in described] + [f"site{k}.selections.txt" for k in range(1, 5)])
    # About 3 min of audio in all: seconds, not minutes, even on a busy machine.
    assert seconds < 30.0


def test_truth_tables_match_the_audio(scapes):
    out, marker, _ = scapes
    truth = read_annotations(out)
    species = set(species_names(SMALL["seed"], SMALL["n_species"]))
    for d in marker["soundscapes"]:
        calls = truth[Path(d["file"]).stem]
        assert len(calls) == len(d["calls"]) >= 5
        assert {c.label for c in calls} == set(d["species"]) <= species
        for call, described in zip(calls, sorted(d["calls"], key=lambda c: (c["begin"], c["end"]))):
            assert 0.5 <= call.start < call.end <= d["seconds"] - 0.5
            assert (call.start, call.end) == (described["begin"], described["end"])
            assert 1000.0 <= call.low_hz < call.high_hz <= 8000.0
        assert (out / f"{Path(d['file']).stem}.selections.txt").read_text().splitlines()[0].split("\t") == \
            list(RAVEN_COLUMNS)


def test_snr_overlaps_and_bird_free_stretches(scapes):
    _, marker, _ = scapes
    snrs = [c["snr_db"] for d in marker["soundscapes"] for c in d["calls"]]
    assert 0.0 <= min(snrs) < 4.0 and 16.0 < max(snrs) <= 20.0
    for d in marker["soundscapes"]:
        calls = d["calls"]
        mixed = [(a, b) for i, a in enumerate(calls) for b in calls[i + 1:]
                 if a["species"] != b["species"] and a["begin"] < b["end"] and b["begin"] < a["end"]]
        assert len(mixed) >= demo_soundscapes.OVERLAP_PAIRS
        for begin, end in d["bird_free"]:
            assert end - begin >= 10.0 - 1e-9
            assert not any(c["begin"] < end and begin < c["end"] for c in calls)
        for name in d["species"]:  # a bird does not sing over itself
            own = [c for c in calls if c["species"] == name]
            assert all(x["end"] < y["begin"] for x, y in zip(own, own[1:]))
        assert d["background_db"].keys() >= {"wind", "floor"}
    assert {k for d in marker["soundscapes"] for k in d["background_db"]} == {"wind", "floor", "rain", "insects",
                                                                              "traffic"}


def test_snr_is_measured_in_the_call_band(scapes):
    """The file holds the bed plus songs, each scaled to its SNR over the bed in the call's span and box."""
    out, marker, _ = scapes
    species = [make_species(SMALL["seed"], i, n)
               for i, n in enumerate(species_names(SMALL["seed"], SMALL["n_species"]))]
    plans = [demo_soundscapes._plan_file(SMALL["seed"], k, species, d["seconds"])
             for k, d in enumerate(marker["soundscapes"])]
    measured, expected = [], []
    for plan in plans:
        bed, songs = demo_soundscapes._layers(SMALL["seed"], plan)
        # Where songs overlap, the songs layer holds both: check the calls sung alone.
        for c in plan.calls:
            if not any(o is not c and o.offset < c.offset + c.song.size and c.offset < o.offset + o.song.size
                       for o in plan.calls):
                span = slice(c.offset, c.offset + c.song.size)
                measured.append(10 * np.log10(demo_soundscapes._band_power(songs[span], plan.sample_rate, c.low_hz,
                                                                            c.high_hz)
                                              / demo_soundscapes._band_power(bed[span], plan.sample_rate, c.low_hz,
                                                                             c.high_hz)))
                expected.append(c.snr_db)
    assert len(measured) >= 8 and measured == pytest.approx(expected, abs=0.01)
    # ... and that mix, limited to the peak, is what the WAV holds (16-bit rounding aside).
    samples, _ = soundfile.read(str(out / "site1.wav"))
    plan = plans[0]
    assert np.abs(samples - demo_soundscapes._render(SMALL["seed"], plan)).max() < 1 / 32767


def test_deterministic_and_kept(scapes, tmp_path):
    out, marker, _ = scapes
    again = tmp_path / "again"
    make_soundscapes(again, **SMALL)
    for name in marker["files"]:
        assert (again / name).read_bytes() == (out / name).read_bytes(), name
    before = {p.name: p.stat().st_mtime_ns for p in again.iterdir()}
    make_soundscapes(again, **SMALL)
    assert {p.name: p.stat().st_mtime_ns for p in again.iterdir()} == before
    other = tmp_path / "other"
    make_soundscapes(other, **{**SMALL, "seed": 6, "n_files": 1})
    assert (other / "site1.wav").read_bytes() != (out / "site1.wav").read_bytes()
    # Fewer files replace the old set's; a folder of someone else's files is refused.
    make_soundscapes(again, **{**SMALL, "n_files": 2})
    assert sorted(p.name for p in again.iterdir() if not p.name.startswith(".")) == [
        "site1.selections.txt", "site1.wav", "site2.flac", "site2.selections.txt"]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "recording.wav").write_bytes(b"")
    with pytest.raises(FileExistsError):
        make_soundscapes(tmp_path / "mine", **SMALL)


def test_make_demo_writes_soundscapes_beside_the_species(tmp_path, monkeypatch, capsys):
    small = demo_soundscapes.make_soundscapes
    monkeypatch.setattr(demo_soundscapes, "make_soundscapes", lambda folder, **kw: small(
        folder, **{**kw, "n_files": 1, "min_seconds": 30.0, "max_seconds": 30.0}))
    assert main(["make-demo", str(tmp_path / "birds"), "--species", "2", "--recordings", "1", "--background-recordings", "1"]) == 0
    # Not inside the data folder, where it would be taken for a species; the background folder is.
    folders = sorted(p.name for p in (tmp_path / "birds").iterdir() if p.is_dir())
    assert folders == sorted(species_names(57, 2)) + ["noise"]
    assert {c.label for c in read_annotations(tmp_path / "demo_soundscapes")["site1"]} <= set(species_names(57, 2))
    assert "demo soundscapes in" in capsys.readouterr().err
    assert main(["make-demo", str(tmp_path / "x" / "birds"), "--species", "2", "--recordings", "1",
                 "--soundscapes", ""]) == 0
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["birds"]


def test_oracle_scores_on_the_demo_and_the_figure(scapes, tmp_path):
    """Scores that are the truth itself score perfectly, through every format's table; the chorus is drawn."""
    out, marker, _ = scapes
    truth = read_annotations(out)
    labels = species_names(SMALL["seed"], SMALL["n_species"])
    for d in marker["soundscapes"]:
        key = Path(d["file"]).stem
        start = np.arange(0.0, d["seconds"] - 0.96, 0.48)
        scores = np.stack([window_truth(start, start + 0.96, [c for c in truth[key] if c.label == label])[0]
                           for label in labels], axis=1).astype(float)
        fsutil.save_npz(tmp_path / "scores" / f"{key}.npz", start=start, end=start + 0.96,
                        scores=scores.astype(np.float32), labels=np.array(labels),
                        sample_rate=np.int64(d["sample_rate"]), seconds=np.float64(d["seconds"]),
                        source_sha256=np.str_(fsutil.sha256_file(out / d["file"])))
    (tmp_path / "thresholds.tsv").write_text("label\twindow_threshold\n" + "".join(f"{x}\t0.5\n" for x in labels))
    report = write_soundscape_report(tmp_path / "scores", out, tmp_path / "thresholds.tsv", tmp_path / "eval",
                                     audio_dir=out)
    assert report["cmap"] == 1.0 and report["macro"]["precision"] == 1.0 and report["macro"]["recall"] == 1.0
    assert report["macro"]["event_recall"] == 1.0 and report["pooled"]["false_detections"] == 0
    richest = max(marker["soundscapes"], key=lambda d: (len(d["species"]), len(d["calls"])))
    assert report["figure"] == f"soundscape_{Path(richest['file']).stem}.png"
    assert (tmp_path / "eval" / report["figure"]).stat().st_size > 20_000


def test_pick_strip_prefers_the_most_species():
    calls = {"a": [Call(1, 2, "X"), Call(3, 4, "X"), Call(5, 6, "X")],
             "b": [Call(10, 11, "X"), Call(100, 101, "Y"), Call(130, 131, "Z"), Call(150, 151, "Q")]}
    key, start, end = pick_strip(calls, ["a", "b"], {"X", "Y", "Z"}, {"a": 60.0, "b": 200.0})
    assert (key, start, end) == ("b", 98.0, 158.0)


# --------------------------------------------------------------------------
# The workflow's soundscape evaluation: what analyze delivers, rerun by content


def test_the_workflow_judges_what_analyze_delivers_and_reruns_by_content(tiny_workflow, tmp_path):
    import os
    import shutil

    import pandas as pd

    from conftest import TINY, chirp, run_snakemake, write_wav

    workdir = tmp_path / "workflow"
    shutil.copytree(tiny_workflow, workdir, symlinks=True)
    scapes = workdir / "scapes"
    samples = np.random.default_rng(0).normal(0, 0.001, 20 * 16000).astype(np.float32)
    samples[4 * 16000: 6 * 16000] += chirp(2.0, 16000, f0=1500)  # Alpha_one's song in the tiny set
    write_wav(scapes / "site.wav", samples, 16000)
    table = scapes / "site.selections.txt"
    raven(table, [(4.0, 6.0, "Alpha_one")])
    config = {**TINY, "data_dir": str(workdir / "birds"), "models": ["vggish"],
              "soundscapes": {"audio_dir": str(scapes)}, "analyze": {"min_score": 0.3}}
    run_snakemake(workdir, config=config)
    eval_dir = workdir / "results" / "eval" / "vggish"
    summary = json.loads((eval_dir / "soundscapes.json").read_text())
    delivered = pd.read_csv(eval_dir / "soundscapes" / "detections.tsv", sep="\t")
    # analyze.merge is off by default: one row per window at the default hop, and those rows are judged.
    assert summary["detection_settings"] == {"merge": False, "min_score": 0.3}
    assert summary["hop_seconds"] == pytest.approx(0.48)
    assert summary["pooled"]["detections"] == len(delivered) > 0
    assert (workdir / "results" / "soundscapes" / "sources" / "shard-00.tsv").is_file()

    # A checkout that sets new times on the recordings and tables reruns nothing.
    for path in scapes.iterdir():
        os.utime(path)
    assert "Nothing to be done" in run_snakemake(workdir, config=config).stderr
    # A corrected table reruns the evaluation, not the analysis.
    analysed = (eval_dir / "soundscapes" / "files.tsv").stat().st_mtime_ns
    raven(table, [(4.0, 6.0, "Alpha_one"), (12.0, 13.0, "Beta_two")])
    run_snakemake(workdir, config=config)
    assert json.loads((eval_dir / "soundscapes.json").read_text())["calls"] == 2
    assert (eval_dir / "soundscapes" / "files.tsv").stat().st_mtime_ns == analysed
    # analyze.merge on: the analysis and the evaluation both deliver and judge merged rows.
    run_snakemake(workdir, config={**config, "analyze": {"min_score": 0.3, "merge": True}})
    merged = json.loads((eval_dir / "soundscapes.json").read_text())
    assert merged["detection_settings"]["merge"] is True
    assert merged["pooled"]["detections"] == len(pd.read_csv(eval_dir / "soundscapes" / "detections.tsv", sep="\t"))
    assert merged["pooled"]["detections"] < summary["pooled"]["detections"]
