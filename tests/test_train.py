"""Training runs end to end on tiny data: outputs, learning, and resume after a kill."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import REPO, REPO_ENV
from jibjib import fsutil

TINY_CONVLSTM = {
    "seed": 1, "class_balance": "weights", "mixed_precision": False, "shuffle_buffer": 64,
    "seq_len": 2, "short_files": "pad", "conv_filters": [4], "lstm_units": 8, "dense_units": 8,
    "dropout": 0.0, "multi_label": False, "epochs": 40, "batch_size": 4, "learning_rate": 0.01, "patience": 40,
}


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    """Two classes told apart by which mel bands are loud; split, labels and npz features."""
    rng = np.random.default_rng(0)
    rows = []
    for c, label in enumerate(["Alpha_one", "Beta_two"]):
        for i in range(6):
            log_mel = rng.normal(-4, 0.5, (96 * 3, 64)).astype(np.float32)
            log_mel[:, 32 * c:32 * c + 32] += 3.0
            path = f"{label}/{label}-{i}_1.wav"
            fsutil.save_npz(tmp_path / "features" / Path(path).with_suffix(".npz"), log_mel=log_mel)
            rows.append({"path": path, "label": label, "recording_id": f"{label}-{i}",
                         "split": "val" if i == 5 else "train"})
    pd.DataFrame(rows).to_csv(tmp_path / "split.tsv", sep="\t", index=False)
    pd.DataFrame({"class_id": [0, 1], "label": ["Alpha_one", "Beta_two"], "n_files": 6, "n_recordings": 6,
                  "seconds": 17.3}).to_csv(tmp_path / "labels.tsv", sep="\t", index=False)
    return tmp_path


def train_command(root: Path, settings: dict) -> list[str]:
    return [sys.executable, "-m", "jibjib", "train", "--model", "convlstm", "--labels", str(root / "labels.tsv"),
            "--split", str(root / "split.tsv"), "--features-dir", str(root / "features"),
            "--out-dir", str(root / "model"), "--settings", json.dumps(settings), "--threads", "2"]


def epochs_done(root: Path) -> int:
    history = root / "model" / "checkpoints" / "history.tsv"
    return len(pd.read_csv(history, sep="\t")) if history.exists() else 0


def test_training_learns_and_writes_its_outputs(tiny: Path) -> None:
    settings = {**TINY_CONVLSTM, "epochs": 12}
    result = subprocess.run(train_command(tiny, settings), capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    history = pd.read_csv(tiny / "model" / "history.tsv", sep="\t")
    assert list(history["epoch"]) == list(range(1, 13))
    assert history["loss"].iloc[-3:].mean() < 0.5 * history["loss"].iloc[0]
    report = json.loads((tiny / "model" / "train.json").read_text())
    assert report["classes"] == ["Alpha_one", "Beta_two"] and not report["resumed"]
    assert (tiny / "model" / "model.keras").stat().st_size > 0
    assert "epoch 12/12" in result.stderr

    # Other settings: the saved state belongs to another run and is not resumed.
    changed = {**settings, "epochs": 2, "learning_rate": 0.005}
    result = subprocess.run(train_command(tiny, changed), capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming" not in result.stderr
    assert list(pd.read_csv(tiny / "model" / "history.tsv", sep="\t")["epoch"]) == [1, 2]


def test_killed_training_resumes_from_its_last_epoch(tiny: Path) -> None:
    process = subprocess.Popen(train_command(tiny, TINY_CONVLSTM), cwd=REPO, env=REPO_ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while epochs_done(tiny) < 3 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = epochs_done(tiny)
    assert 3 <= done < TINY_CONVLSTM["epochs"], "the run was not killed mid-training"
    assert not (tiny / "model" / "model.keras").exists()

    result = subprocess.run(train_command(tiny, TINY_CONVLSTM), capture_output=True, text=True, cwd=REPO,
                            env=REPO_ENV, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming from the last saved epoch" in result.stderr
    history = pd.read_csv(tiny / "model" / "history.tsv", sep="\t")
    assert list(history["epoch"]) == list(range(1, TINY_CONVLSTM["epochs"] + 1))
    # The second run trained only what the first had not finished (at most the
    # epoch it was killed in after logging it, before saving it, runs again).
    resumed_epochs = [int(e) for e in re.findall(r"epoch (\d+)/", result.stderr)]
    assert min(resumed_epochs) >= done and max(resumed_epochs) == TINY_CONVLSTM["epochs"]
    assert json.loads((tiny / "model" / "train.json").read_text())["resumed"]
