"""The Snakemake workflow end to end on small generated trees."""

from __future__ import annotations

import pandas as pd

from conftest import PREPARATION_TARGETS as TARGETS
from conftest import chirp, make_tree, run_snakemake, write_wav
from jibjib.features.inventory import shard_of


def read(path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", keep_default_na=False)


def test_run_rerun_and_add_a_species(tmp_path) -> None:
    data = make_tree(tmp_path / "birds", {"Alpha_one": 3, "Beta_two": 3})
    (data / "README.txt").write_text("loose file")
    write_wav(data / "Beta_two" / "broken.wav", chirp(0.5, 22050), 22050)
    work = tmp_path / "work"
    work.mkdir()
    run_snakemake(work, *TARGETS, config={"data_dir": data})

    labels = read(work / "results/labels.tsv")
    assert list(labels.columns) == ["class_id", "label", "n_files", "n_recordings", "seconds"]
    assert list(labels["label"]) == ["Alpha_one", "Beta_two"] and list(labels["n_files"]) == [6, 6]
    qc = read(work / "results/qc/files.tsv")
    assert len(qc) == 14  # 12 good slices, one too short, one loose file
    assert dict(zip(qc["path"], qc["reason"]))["Beta_two/broken.wav"] == "too_short"
    assert dict(zip(qc["path"], qc["reason"]))["README.txt"] == "outside_species_folder"
    split = read(work / "results/split.tsv")
    assert len(split) == 12 and split.groupby("recording_id")["split"].nunique().max() == 1
    assert len(list((work / "results/features/Alpha_one").glob("*.npz"))) == 6
    for log in ("logs/labels.log", "logs/split.log", f"logs/features/{shard_of('Alpha_one', 16)}.log"):
        assert (work / log).exists()

    again = run_snakemake(work, *TARGETS, config={"data_dir": data})
    assert "Nothing to be done" in again.stdout + again.stderr

    old = {p: p.stat().st_mtime_ns for p in (work / "results/features").rglob("*")}
    make_tree(data, {"Gamma_three": 2})
    run_snakemake(work, *TARGETS, config={"data_dir": data})
    assert {p: p.stat().st_mtime_ns for p in old} == old
    assert len(list((work / "results/features/Gamma_three").glob("*.npz"))) == 4
    assert list(read(work / "results/labels.tsv")["label"]) == ["Alpha_one", "Beta_two", "Gamma_three"]


def test_training_jobs_ask_for_a_gpu(tmp_path) -> None:
    """The resource tags a SLURM profile or `--resources gpu=N` schedules by."""
    data = make_tree(tmp_path / "birds", {"Alpha_one": 1, "Beta_two": 1})
    plan = run_snakemake(tmp_path, "--dry-run", config={"data_dir": data}).stdout
    jobs = {block.split(":", 1)[0].strip(): block for block in plan.split("rule ")[1:]}
    for rule in ("train_vggish", "train_convlstm"):
        assert "gpu=1" in jobs[rule], jobs[rule]
    assert "gpu=" not in jobs["features"]
