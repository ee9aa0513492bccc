"""The self-training chain in the workflow: teacher -> window scores -> pseudo-labels -> students -> report,
and only what is stale reruns when the unlabelled audio changes (content, not times)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import SPECIES, TINY, chirp, make_tree, run_snakemake, write_wav
from test_reruns import planned

RATE = 16000
REPORT = "results/selftrain/convlstm/report.md"
# What each round of students redoes: train, evaluate, export, and evaluate on the annotated soundscapes.
STUDENT_JOBS = {"train_student": 1, "evaluate_student": 1, "export_student": 1, "soundscape_scores_student": 1,
                "evaluate_soundscapes_student": 1}
STUDENT_CHAIN = {"unlabelled_features": 1, "window_scores": 2, "pseudo_labels": 2,
                 **{job: 2 for job in STUDENT_JOBS}, "selftrain_report": 1}


def field_file(path: Path, seed: int) -> None:
    """Four seconds of calls of the tiny set's species (their chirps), one after the other."""
    parts = [chirp(1.3, RATE, f0=1500 + 700 * k, seed=seed + k) for k in range(3)]
    write_wav(path, np.concatenate(parts), RATE)


# Paths relative to the work folder, so that a copy of it is the same run.
CONFIG = {**TINY, "data_dir": "birds", "models": ["convlstm"], "convlstm": {**TINY["convlstm"], "multi_label": True},
          "self_training": {"audio_dir": "field", "rounds": 2, "negatives_per_positive": 2.0},
          "soundscapes": {"audio_dir": "scapes", "annotations": "annotations.tsv"}}


def annotated_soundscape(work: Path) -> None:
    """scapes/scape.wav: each species' chirps for 1.3 s between quiet stretches, and its annotations."""
    quiet, parts, rows, t = np.zeros(int(2.0 * RATE), np.float32), [], ["file\tstart\tend\tlabel"], 0.0
    for k, label in enumerate(SPECIES):
        parts += [quiet, chirp(1.3, RATE, f0=1500 + 700 * k, seed=70 + k)]
        rows.append(f"scape.wav\t{t + 2.0:.2f}\t{t + 3.3:.2f}\t{label}")
        t += 3.3
    write_wav(work / "scapes" / "scape.wav", np.concatenate([*parts, quiet]), RATE)
    (work / "annotations.tsv").write_text("\n".join(rows) + "\n")


def npz_states(work: Path) -> dict[Path, tuple[int, int]]:
    return {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (work / "results/selftrain/features").rglob("*.npz")}


@pytest.fixture(scope="module")
def selftrained(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("selftrain")
    make_tree(work / "birds", SPECIES, seconds=2.0, sample_rate=RATE)
    for k in range(2):
        field_file(work / "field" / f"rec{k}.wav", seed=50 + 10 * k)
    annotated_soundscape(work)
    run_snakemake(work, REPORT, config=CONFIG)
    return work


def test_the_chain_writes_every_round_and_the_report(selftrained: Path) -> None:
    out = selftrained / "results/selftrain/convlstm"
    table = pd.read_csv(out / "report.tsv", sep="\t")
    assert table["round"].tolist() == [0, 1, 2] and table["role"].tolist() == ["teacher", "student", "student"]
    assert table["file_cmap"].between(0, 1).all() and table["soundscape_cmap"].between(0, 1).all()
    assert table["soundscape_false_detections_per_hour"].notna().all()
    for r in (1, 2):
        rows = pd.read_csv(out / f"round-{r}/pseudo_labels.tsv", sep="\t", keep_default_na=False)
        assert set(rows["kind"]) <= {"positive", "negative"}
        assert table.loc[r, "pseudo_positives"] == (rows["kind"] == "positive").sum()
        log = (selftrained / f"logs/selftrain/convlstm/round-{r}/train.log").read_text()
        assert f"{len(rows)} pseudo-labelled windows" in log
        assert (out / f"round-{r}/model/model.keras").exists() and (out / f"round-{r}/eval/thresholds.tsv").exists()
    assert "| round |" in (out / "report.md").read_text() and (out / "report.png").stat().st_size > 0


def test_only_stale_reruns_after_adding_one_unlabelled_file(selftrained: Path, tmp_path: Path) -> None:
    work = Path(shutil.copytree(selftrained, tmp_path / "work", copy_function=shutil.copy2))
    plan = lambda: planned(run_snakemake(work, "--dry-run", REPORT, config=CONFIG))  # noqa: E731
    assert plan() == {}
    os.utime(work / "field" / "rec0.wav")  # a new time, the same content: nothing to do
    assert plan() == {}
    teacher = (work / "results/models/convlstm/model.keras").stat().st_mtime_ns
    before = npz_states(work)
    field_file(work / "field" / "rec2.wav", seed=90)
    assert plan() == STUDENT_CHAIN  # the teacher and its evaluation are not in it
    run_snakemake(work, REPORT, config=CONFIG)
    after = npz_states(work)
    assert {p.name for p, state in after.items() if before.get(p) != state} == {"rec2.wav.npz"}
    assert (work / "results/models/convlstm/model.keras").stat().st_mtime_ns == teacher
    scored = pd.read_csv(work / "results/selftrain/unlabelled.tsv", sep="\t")
    assert "rec2.wav" in scored["path"].tolist()
    assert plan() == {}


def test_a_setting_reruns_what_it_chooses(selftrained: Path) -> None:
    def plan(self_training: dict) -> dict[str, int]:
        settings = {**CONFIG, "self_training": {**CONFIG["self_training"], **self_training}}
        return planned(run_snakemake(selftrained, "--dry-run", REPORT, config=settings))

    # One more round: its own chain, from the last student's scores on.
    assert plan({"rounds": 3}) == {"window_scores": 1, "pseudo_labels": 1, **STUDENT_JOBS, "selftrain_report": 1}
    # Other thresholds: every round's pseudo-labels and what follows; round 1's scores stay.
    chain = {job: count for job, count in STUDENT_CHAIN.items() if job != "unlabelled_features"}
    assert plan({"threshold_scale": 1.2}) == {**chain, "window_scores": 1}
