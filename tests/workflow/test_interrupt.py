"""A workflow killed at random points ends, after reruns, where an uninterrupted run ends.

The whole process group (Snakemake and its jobs) gets SIGKILL, as from the
OOM killer or a lost node: no handler runs, so only writing to a temporary
name and renaming it into place keeps outputs whole. Each rerun clears the
stale lock and reruns the jobs Snakemake marked incomplete, as a user would.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from conftest import REPO_ENV, make_tree, run_snakemake, snakemake_command
from jibjib.core.fsutil import TMP_MARK

SEED = 6  # draws every kill point: a failure replays with the same targets
SPECIES = {"Alpha_one": 6, "Beta_two": 6, "Gamma_three": 6}  # recordings of two 16 s slices each
N_FILES = 2 * sum(SPECIES.values())
EPOCHS = 6
# The smallest ConvLSTM: the test is about files, not learning.
CONFIG = {
    "models": ["convlstm"],
    "train": {"seed": 1, "shuffle_buffer": 64},
    "convlstm": {"seq_len": 2, "conv_filters": [4], "lstm_units": 8, "dense_units": 8, "dropout": 0.0,
                 "epochs": EPOCHS, "batch_size": 4, "patience": EPOCHS},
}
MODEL = Path("results/models/convlstm")
TRAIN_LOG = Path("logs/train/convlstm.log")
POLL_SECONDS = 0.002  # a feature file takes about 10 ms; the kill should land within the next one
RUN_TIMEOUT = 300


def feature_files(work: Path) -> list[Path]:
    """Complete npz files (temporary names excluded)."""
    return sorted(p for p in (work / "results/features").rglob("*.npz") if TMP_MARK not in p.name)


def saved_epoch(work: Path) -> int:
    """The epoch a rerun resumes after (0: none saved)."""
    state = work / MODEL / "checkpoints/state.json"
    return json.loads(state.read_text())["epoch"] if state.exists() else 0


def unlock(work: Path, config: dict) -> None:
    """A killed Snakemake leaves its lock behind; --unlock is the documented way out."""
    run_snakemake(work, "--unlock", config=config)


def run_until_killed(work: Path, config: dict, kill_point: Callable[[], bool], delay: float) -> None:
    """Rerun the workflow; once kill_point() holds, wait `delay` s and SIGKILL its process group."""
    unlock(work, config)
    process = subprocess.Popen(snakemake_command(work, "--rerun-incomplete", config=config), env=REPO_ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + RUN_TIMEOUT
        while not kill_point():
            assert process.poll() is None, "the run finished before its kill point"
            assert time.monotonic() < deadline, "the kill point was never reached"
            time.sleep(POLL_SECONDS)
        time.sleep(delay)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def assert_no_truncated_npz(work: Path) -> None:
    """Whatever a kill left under a final name must be a whole feature file."""
    for npz in feature_files(work):
        with np.load(npz) as data:
            assert data["log_mel"].shape[1] == 64, npz


def epochs_logged(work: Path) -> list[int]:
    return [int(n) for n in re.findall(r"^epoch (\d+)/", (work / TRAIN_LOG).read_text(), re.MULTILINE)]


def assert_resumed_after(work: Path, epoch: int) -> None:
    """The last training run picked up after `epoch` instead of starting over."""
    log = (work / TRAIN_LOG).read_text()
    assert "resuming from the last saved epoch" in log, log
    assert epochs_logged(work)[0] == epoch + 1, log


def test_killed_runs_end_like_an_uninterrupted_run(tmp_path: Path) -> None:
    config = {**CONFIG, "data_dir": make_tree(tmp_path / "birds", SPECIES, seconds=16.0)}
    rng = random.Random(SEED)
    work = tmp_path / "killed"
    work.mkdir()

    # During features: after a random number of new npz files, plus a random part of the next one.
    for _ in range(3):
        target = len(feature_files(work)) + rng.randint(1, 6)
        run_until_killed(work, config, lambda: len(feature_files(work)) >= target, delay=rng.uniform(0, 0.02))
        assert_no_truncated_npz(work)
        assert len(feature_files(work)) < N_FILES and not (work / "results/labels.tsv").exists(), \
            "the kill missed the feature stage"

    # During training: after a new epoch was saved, plus a random part of the next epoch (or its save).
    resumed_from = None
    for _ in range(2):
        before = saved_epoch(work)
        run_until_killed(work, config, lambda: saved_epoch(work) > before, delay=rng.uniform(0, 0.8))
        if resumed_from is not None:
            assert_resumed_after(work, resumed_from)
        assert not (work / MODEL / "model.keras").exists(), "the kill missed the training"
        resumed_from = saved_epoch(work)
    assert 0 < resumed_from < EPOCHS

    unlock(work, config)
    finished = run_snakemake(work, "--rerun-incomplete", config=config)
    assert "Nothing to be done" not in finished.stderr
    assert_resumed_after(work, resumed_from)

    reference = tmp_path / "uninterrupted"
    reference.mkdir()
    run_snakemake(reference, config=config)

    # Features byte for byte, and every table, as the uninterrupted run wrote them.
    names = [p.relative_to(reference) for p in feature_files(reference)]
    assert len(names) == N_FILES
    assert [p.relative_to(work) for p in feature_files(work)] == names
    tables = [p.relative_to(reference) for p in (reference / "results/manifests").glob("*.tsv")]
    assert tables
    for name in names + tables + [Path("results/labels.tsv"), Path("results/split.tsv"),
                                  Path("results/qc/files.tsv")]:
        assert (work / name).read_bytes() == (reference / name).read_bytes(), name

    # Training: every epoch once, and the finished run says it resumed.
    for run, resumed in ((work, True), (reference, False)):
        history = pd.read_csv(run / MODEL / "history.tsv", sep="\t")
        assert list(history["epoch"]) == list(range(1, EPOCHS + 1))
        report = json.loads((run / MODEL / "train.json").read_text())
        assert report["resumed"] is resumed and report["epochs_completed"] == EPOCHS
        assert (run / MODEL / "model.keras").stat().st_size > 0
    assert epochs_logged(reference) == list(range(1, EPOCHS + 1))

    leftovers = list(work.rglob(f"*{TMP_MARK}*"))
    assert leftovers == [], leftovers
