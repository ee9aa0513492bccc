"""Training over several replicas on one machine, as over several GPUs: JIBJIB_CPU_REPLICAS splits the CPU.

Each multi-replica training runs as `python -m jibjib train` in its own
process, as users run it: the logical devices must exist before TensorFlow
starts. A partial last batch used to be split over the replicas greedily
(ceil(n / replicas) each), which left some of them an empty share: NaN
BatchNorm statistics on a GPU, a crashing max-pool gradient on the CPU.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import REPO, REPO_ENV
from jibjib.core import fsutil
from test_train import tiny  # noqa: F401 - the fixture

REPLICAS = 4
BATCH = 8  # the global batch: 2 examples per replica
# The smallest of each model: VGGish trains its head through a frozen random trunk; ConvLSTM sequences of 2.
SETTINGS = {
    "vggish": {"trainable": "head", "head_units": 8, "embedding_cache": "off", "dropout": 0.0},
    "convlstm": {"seq_len": 2, "conv_filters": [4], "lstm_units": 8, "dense_units": 8, "dropout": 0.0},
}
PATCHES_PER_EXAMPLE = {"vggish": 1, "convlstm": 2}


def corpus(root: Path, model: str, train: int, val: int) -> Path:
    """Two classes told apart by which mel bands are loud; `train` and `val` examples, one file each."""
    rng = np.random.default_rng(0)
    rows = []
    for split, count in (("train", train), ("val", val)):
        for i in range(count):
            c, label = i % 2, ("Alpha_one", "Beta_two")[i % 2]
            log_mel = rng.normal(-4, 0.5, (96 * PATCHES_PER_EXAMPLE[model], 64)).astype(np.float32)
            log_mel[:, 32 * c:32 * c + 32] += 3.0
            path = f"{label}/{label}-{split}{i}_1.wav"
            fsutil.save_npz(root / "features" / Path(path).with_suffix(".npz"), log_mel=log_mel)
            rows.append({"path": path, "label": label, "recording_id": f"{label}-{split}{i}", "split": split})
    pd.DataFrame(rows).to_csv(root / "split.tsv", sep="\t", index=False)
    pd.DataFrame({"class_id": [0, 1], "label": ["Alpha_one", "Beta_two"], "n_files": 1, "n_recordings": 1,
                  "seconds": 1.0}).to_csv(root / "labels.tsv", sep="\t", index=False)
    return root


def replica_run(root: Path, model: str, out: str = "model") -> list[str]:
    """`jibjib train` of `model` on the corpus at `root`: 2 epochs, batch BATCH, one thread."""
    settings = {"model": model,
                # Stationary log-mel holds no calls: every window takes its file's label, as the counts assume.
                "train": {"seed": 1, "augment": {"enabled": False}, "lr_schedule": "constant", "monitor": "val_loss",
                          "call_windows": "all"},
                model: {**SETTINGS[model], "epochs": 2, "patience": 2, "batch_size": BATCH, "learning_rate": 0.01}}
    return [sys.executable, "-m", "jibjib", "train", "--model", model, "--labels", str(root / "labels.tsv"),
            "--split", str(root / "split.tsv"), "--features-dir", str(root / "features"),
            "--out-dir", str(root / out), "--settings", json.dumps(settings), "--threads", "1"]


def train_side_by_side(runs: list[tuple[list[str], int]]) -> list[tuple[int, str]]:
    """Each (command, replicas) in its own process, all at once (each is a few seconds of mostly start-up on
    one thread); their return codes and stderr, in order."""
    processes = [subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO,
                                  env={**REPO_ENV, "JIBJIB_CPU_REPLICAS": str(replicas)})
                 for command, replicas in runs]
    stderrs = [process.communicate(timeout=600)[1] for process in processes]
    return [(process.returncode, stderr) for process, stderr in zip(processes, stderrs)]


@pytest.mark.parametrize("model", ["vggish", "convlstm"])
def test_each_model_trains_over_four_replicas_whatever_the_last_batch(tmp_path: Path, model: str) -> None:
    """Examples mod (batch x replicas) of 1, 2 and 3 (the last batch too small for every replica to get
    one), in training and validation alike: finite losses, a best epoch, every val example seen."""
    roots = [corpus(tmp_path / str(remainder), model, train=BATCH + remainder, val=BATCH + remainder)
             for remainder in (1, 2, 3)]
    for root, (returncode, stderr) in zip(roots, train_side_by_side([(replica_run(root, model), REPLICAS)
                                                                     for root in roots])):
        assert returncode == 0, stderr[-3000:]
        assert f"batch {BATCH} on {REPLICAS} replica(s)" in stderr
        report = json.loads((root / "model" / "train.json").read_text())
        assert report["devices"]["replicas"] == REPLICAS and report["best_epoch"] is not None
        history = pd.read_csv(root / "model" / "history.tsv", sep="\t")
        assert len(history) == 2 and np.isfinite(history.drop(columns="epoch").to_numpy()).all(), history


def test_four_replicas_train_what_one_does(tmp_path: Path) -> None:
    """Full training batches (equal shares: each step's loss is the mean over its examples on any number of
    replicas) and a model without BatchNorm (VGGish: per-replica batch statistics would differ): the same
    epochs as on one replica. The val split's last batch (3 examples) joins the one before it."""
    root = corpus(tmp_path, "vggish", train=2 * BATCH, val=BATCH + 3)
    runs = [(replica_run(root, "vggish", out=f"model{n}"), n) for n in (1, REPLICAS)]
    for returncode, stderr in train_side_by_side(runs):
        assert returncode == 0, stderr[-3000:]
    one, four = (pd.read_csv(root / f"model{n}" / "history.tsv", sep="\t") for n in (1, REPLICAS))
    for column in ("loss", "val_loss", "val_accuracy", "val_cmap"):
        assert four[column].to_numpy() == pytest.approx(one[column].to_numpy(), rel=1e-4), column


def test_one_line_when_the_batch_does_not_split_over_the_replicas(tmp_path: Path) -> None:
    from jibjib.core.errors import ConfigError
    from jibjib.core.settings import RunSettings
    from jibjib.training.plan import global_batch

    run = RunSettings.of("convlstm", net={"batch_size": 10})
    assert global_batch(run, 2) == 10
    with pytest.raises(ConfigError, match=r"convlstm.batch_size: 10 does not split over the 4 replicas"):
        global_batch(run, 4)
    # Per replica, as before, only when the learning rate is scaled with the replicas.
    assert global_batch(RunSettings.of("convlstm", {"lr_scaling": "linear"}, {"batch_size": 10}), 4) == 40


def test_the_learning_rate_is_the_configured_one_unless_scaled() -> None:
    from jibjib.core.settings import RunSettings
    from jibjib.training.schedule import peak_learning_rate

    rates = {scaling: peak_learning_rate(RunSettings.of("vggish", {"lr_scaling": scaling},
                                                        {"learning_rate": 1e-4}), 4)
             for scaling in ("none", "sqrt", "linear")}
    assert rates == pytest.approx({"none": 1e-4, "sqrt": 2e-4, "linear": 4e-4})


def test_validation_shares_cover_every_example_once_and_every_replica() -> None:
    from jibjib.training.distribute import val_replica_batches

    for examples in range(4, 40):
        for batch in (4, 8, 12):
            shares = val_replica_batches(examples, batch, 4)
            steps = [shares[i:i + 4] for i in range(0, len(shares), 4)]
            assert sum(shares) == examples and min(shares) >= 1
            assert all(max(step) - min(step) <= 1 and sum(step) < batch + 4 for step in steps)
    assert val_replica_batches(9, 8, 4) == [3, 2, 2, 2]  # 8 + 1: the 1 joins the batch before it
    assert val_replica_batches(13, 8, 4) == [2, 2, 2, 2, 2, 1, 1, 1]


def test_training_batches_are_cut_to_equal_shares() -> None:
    import tensorflow as tf

    from jibjib.training.distribute import even_shares

    batches = tf.data.Dataset.range(8 + 7).batch(8).map(lambda x: ({"x": x}, x))
    sizes = [int(y.shape[0]) for _, y in even_shares(batches, 4)]
    assert sizes == [8, 4]
    assert [int(y.shape[0]) for _, y in even_shares(tf.data.Dataset.range(11).batch(8).map(lambda x: (x, x)), 4)] \
        == [8]


def test_a_single_process_uses_gpus_per_task_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    import tensorflow as tf

    from jibjib.training import distribute

    gpus = [f"/physical_device:GPU:{i}" for i in range(4)]
    visible = {}
    monkeypatch.delenv(distribute.CPU_REPLICAS, raising=False)
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: gpus if kind == "GPU" else [])
    monkeypatch.setattr(tf.config, "set_visible_devices", lambda devices, kind: visible.update({kind: devices}))
    assert distribute.local_devices(2) == ["/gpu:0", "/gpu:1"] and visible == {"GPU": gpus[:2]}
    assert distribute.local_devices(0) == [] and visible == {"GPU": []}
    visible.clear()
    assert distribute.local_devices(None) == [f"/gpu:{i}" for i in range(4)] and visible == {}
    monkeypatch.setenv(distribute.CPU_REPLICAS, "2")
    with pytest.raises(Exception, match="machine without GPUs"):
        distribute.local_devices(1)


def test_a_nan_loss_stops_the_run_with_one_line(tmp_path: Path) -> None:
    from jibjib.core.errors import USER_ERRORS, TrainingError
    from jibjib.training.state import RunState

    state = RunState(tmp_path, {"model": "m"}, "val_loss", patience=3)
    with pytest.raises(TrainingError, match=r"epoch 2: val_loss nan: training diverged") as raised:
        state.on_epoch_end(1, {"loss": 0.5, "val_loss": math.nan})
    assert isinstance(raised.value, USER_ERRORS)
    assert state.best_epoch == 0 and not (tmp_path / "state.json").exists()


def test_a_run_killed_on_one_device_count_is_not_resumed_on_another(tiny: Path) -> None:  # noqa: F811
    """The replicas are part of the run's identity: the resume is refused, and train.json says why."""
    from test_epochs import DIES_AFTER_FIRST_SAVE
    from test_train import TINY_CONVLSTM, train_command

    command = train_command(tiny, {**TINY_CONVLSTM, "epochs": 2})
    died = subprocess.run([sys.executable, "-c", DIES_AFTER_FIRST_SAVE, *command[3:]], capture_output=True, text=True,
                          cwd=REPO, env=REPO_ENV, timeout=600)
    assert died.returncode == 9, died.stderr[-3000:]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600,
                            env={**REPO_ENV, "JIBJIB_CPU_REPLICAS": "2"})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tiny / "model" / "train.json").read_text())
    assert not report["resumed"] and report["devices"]["replicas"] == 2
    assert report["resume_refused_because"] == "changed since it was saved: the replicas (1 then, 2 now)"
