"""Training runs end to end on tiny data: outputs, learning, and resume after a kill."""

from __future__ import annotations

import dataclasses
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
from jibjib.core import fsutil
from jibjib.training.windows import WindowRule  # noqa: E402

EVERY_WINDOW = WindowRule.every_window()  # the tests' log-mel is no audio: the plain grid, every window labelled

# Training mechanics (learning, resume, best epoch) without augmentation, whose effect on learning
# test_robust_training measures; 16 dense units, as 8 all died on some CPUs (a flat loss of ln 2).
TINY_CONVLSTM = {
    "seed": 1, "class_balance": "weights", "mixed_precision": False, "shuffle_buffer": 64,
    "seq_len": 2, "short_files": "pad", "conv_filters": [4], "lstm_units": 8, "dense_units": 16,
    "dropout": 0.0, "multi_label": False, "epochs": 40, "batch_size": 4, "learning_rate": 0.01, "patience": 40,
    "augment": {"enabled": False},
    "call_windows": "all",  # stationary test log-mel holds no calls: every window takes its file's label
}


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    """Two classes told apart by which mel bands are loud; split, labels and npz features."""
    rng = np.random.default_rng(0)

    def log_mel(c: int, i: int) -> np.ndarray:
        values = rng.normal(-4, 0.5, (96 * 3, 64)).astype(np.float32)
        values[:, 32 * c:32 * c + 32] += 3.0
        return values

    return write_two_classes(tmp_path, 6, log_mel)


def write_two_classes(root: Path, per_class: int, log_mel) -> Path:
    """npz features `log_mel(class, i)` of `per_class` files of each of two classes (the last one of each in
    val), their split.tsv and labels.tsv."""
    rows = []
    for c, label in enumerate(["Alpha_one", "Beta_two"]):
        for i in range(per_class):
            path = f"{label}/{label}-{i}_1.wav"
            fsutil.save_npz(root / "features" / Path(path).with_suffix(".npz"), log_mel=log_mel(c, i))
            rows.append({"path": path, "label": label, "recording_id": f"{label}-{i}",
                         "split": "val" if i == per_class - 1 else "train"})
    pd.DataFrame(rows).to_csv(root / "split.tsv", sep="\t", index=False)
    pd.DataFrame({"class_id": [0, 1], "label": ["Alpha_one", "Beta_two"], "n_files": per_class,
                  "n_recordings": per_class, "seconds": 17.3}).to_csv(root / "labels.tsv", sep="\t", index=False)
    return root


def run_settings(settings: dict) -> dict:
    """jibjib train's --settings of a ConvLSTM run from flat test settings: each key in its section."""
    from jibjib.core.settings import TrainSettings

    shared = {field.name for field in dataclasses.fields(TrainSettings)}
    return {"model": "convlstm", "train": {key: value for key, value in settings.items() if key in shared},
            "convlstm": {key: value for key, value in settings.items() if key not in shared}}


def train_command(root: Path, settings: dict) -> list[str]:
    return [sys.executable, "-m", "jibjib", "train", "--model", "convlstm", "--labels", str(root / "labels.tsv"),
            "--split", str(root / "split.tsv"), "--features-dir", str(root / "features"),
            "--out-dir", str(root / "model"), "--settings", json.dumps(run_settings(settings)), "--threads", "2"]


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
    assert report["devices"] == {"replicas": 1, "gpus": 0, "workers": 1, "jit_compile": False,
                                 "steps_per_execution": 1}  # train.jit_compile and steps_per_execution auto, on CPU
    # model.keras is the classifier alone: the augmentation ran in the trainer's step and is not saved.
    import keras

    assert keras.models.load_model(tiny / "model" / "model.keras", compile=False).name == "convlstm_classifier"
    assert "epoch 12/12" in result.stderr
    # What a person follows: the rate (warm-up over the first epoch, then cosine down) and val cmAP, per
    # epoch in history.tsv and in TensorBoard.
    assert history["learning_rate"].iloc[0] == pytest.approx(settings["learning_rate"], rel=0.05)
    rate = history["learning_rate"]
    assert (np.diff(rate) <= 0).all() and rate.iloc[-1] < 0.02 * settings["learning_rate"]
    assert history["val_cmap"].between(0, 1).all()
    assert {"train/epoch_learning_rate", "train/epoch_loss", "validation/epoch_cmap",
            "validation/epoch_loss"} <= tensorboard_tags(tiny / "model" / "tensorboard")

    # Other settings: the saved state belongs to another run and is not resumed.
    changed = {**settings, "epochs": 2, "learning_rate": 0.005}
    result = subprocess.run(train_command(tiny, changed), capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming" not in result.stderr
    assert list(pd.read_csv(tiny / "model" / "history.tsv", sep="\t")["epoch"]) == [1, 2]
    report = json.loads((tiny / "model" / "train.json").read_text())
    assert not report["resumed"] and not report["reused"]
    assert report["resume_refused_because"] == "changed since it was saved: the training settings"


def test_a_finished_run_of_the_same_inputs_is_reused_and_an_edited_input_retrains(tiny: Path) -> None:
    """A rerun whose inputs are the same in content (a split.tsv rewritten as it was, another
    checkpoint_every_epochs or steps_per_execution) ships the finished run's model without training; an edited
    split retrains."""
    settings = {**TINY_CONVLSTM, "epochs": 2}
    assert subprocess.run(train_command(tiny, settings), capture_output=True, cwd=REPO, timeout=600).returncode == 0
    out = tiny / "model"
    trained = {name: (out / name).read_bytes() for name in ("model.keras", "history.tsv")}
    split = tiny / "split.tsv"
    split.write_text(split.read_text())  # rewritten unchanged: Snakemake reruns the job for its new mtime
    (out / "model.keras").unlink()  # Snakemake deletes a job's outputs before running it
    unchanged_result = {**settings, "checkpoint_every_epochs": 2, "steps_per_execution": 2}
    result = subprocess.run(train_command(tiny, unchanged_result), capture_output=True, text=True, cwd=REPO,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "reusing the finished run of the same inputs" in result.stderr and "epoch 1/" not in result.stderr
    assert {name: (out / name).read_bytes() for name in trained} == trained
    report = json.loads((out / "train.json").read_text())
    assert report["reused"] and not report["resumed"]
    assert report["settings"]["train"]["checkpoint_every_epochs"] == report["settings"]["train"]["steps_per_execution"] \
        == 2
    assert report["best_epoch"] and report["epochs_completed"] == 2

    # One file moved from val to train: a new split, trained from epoch 1.
    table = pd.read_csv(split, sep="\t")
    table.loc[table["recording_id"] == "Alpha_one-5", "split"] = "train"
    table.to_csv(split, sep="\t", index=False)
    result = subprocess.run(train_command(tiny, settings), capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "starting at epoch 1 (changed since it was saved: split.tsv" in result.stderr
    report = json.loads((out / "train.json").read_text())
    assert not report["reused"] and report["n_train_files"] == 11


def tensorboard_tags(folder: Path) -> set[str]:
    """<run>/<tag> of every scalar in the TensorBoard logs below `folder`."""
    import tensorflow as tf

    return {f"{events.parent.name}/{value.tag}" for events in folder.rglob("events.out.tfevents.*")
            for event in tf.compat.v1.train.summary_iterator(str(events)) for value in event.summary.value}


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


def kill_after_epoch(root: Path, settings: dict, epoch: int) -> int:
    """Start a training run, SIGKILL it once `epoch` epochs are saved; the epochs saved by then."""
    process = subprocess.Popen(train_command(root, settings), cwd=REPO, env=REPO_ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = root / "model" / "checkpoints" / "state.json"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if state.exists() and json.loads(state.read_text())["epoch"] >= epoch:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    saved = json.loads(state.read_text())["epoch"]
    assert epoch <= saved < settings["epochs"], "the run was not killed mid-training"
    return saved


def test_resume_is_refused_when_a_feature_file_changed(tiny: Path) -> None:
    settings = {**TINY_CONVLSTM, "epochs": 20}
    kill_after_epoch(tiny, settings, 2)
    # Same name and shape, other content: labels and split stay byte-identical.
    npz = tiny / "features" / "Alpha_one" / "Alpha_one-0_1.npz"
    with np.load(npz) as z:
        log_mel = z["log_mel"]
    fsutil.save_npz(npz, log_mel=log_mel[::-1].copy())
    result = subprocess.run(train_command(tiny, {**settings, "epochs": 2}), capture_output=True, text=True,
                            cwd=REPO, env=REPO_ENV, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    # The epoch count is a setting too; what must be named is the data.
    assert "starting at epoch 1" in result.stderr and "the feature files" in result.stderr
    report = json.loads((tiny / "model" / "train.json").read_text())
    assert not report["resumed"] and "the feature files" in report["resume_refused_because"]
    assert re.findall(r"epoch (\d+)/", result.stderr)[0] == "1"


@pytest.fixture
def misleading_val(tiny: Path) -> Path:
    """`tiny` with val files that sound like Alpha_one but are labelled Beta_two: the
    better the model learns, the worse its val_loss, so the best epoch comes early."""
    split = pd.read_csv(tiny / "split.tsv", sep="\t")
    split.loc[split["recording_id"] == "Alpha_one-5", "split"] = "val"
    split.loc[split["recording_id"] == "Alpha_one-5", "label"] = "Beta_two"
    split.loc[split["recording_id"] == "Beta_two-5", "split"] = "train"
    split.to_csv(tiny / "split.tsv", sep="\t", index=False)
    return tiny


def val_loss_of_saved_model(root: Path, settings: dict) -> float:
    """The class-weighted val loss of model.keras, computed here as training defines it."""
    import keras

    from jibjib.evaluation.metrics import softmax
    from jibjib.labels.tables import split_files
    from jibjib.training.inputs import InputSpec, training_dataset

    report = json.loads((root / "model" / "train.json").read_text())
    model = keras.models.load_model(root / "model" / "model.keras", compile=False)
    val = split_files(root / "split.tsv", root / "labels.tsv", root / "features", "val")
    losses = []
    spec = InputSpec(windows=EVERY_WINDOW, n_classes=len(report["classes"]), seq_len=settings["seq_len"])
    for inputs, targets in training_dataset(val, spec, 4, training=False):
        p = softmax(model.predict_on_batch(inputs))
        y = targets.numpy().argmax(axis=1)
        losses += list(-np.log(p[np.arange(len(y)), y]) * np.array(report["class_weights"])[y])
    return float(np.mean(losses))


@pytest.mark.parametrize("every", [1, 3])
def test_resumed_run_ships_the_best_epoch_of_the_whole_run(misleading_val: Path, every: int) -> None:
    """Also when the state is saved every 3 epochs: the best weights wait on the device for the next save."""
    root = misleading_val
    settings = {**TINY_CONVLSTM, "epochs": 10, "patience": 10, "checkpoint_every_epochs": every, "monitor": "val_loss"}
    killed_at = kill_after_epoch(root, settings, 4)
    assert killed_at % every == 0
    result = subprocess.run(train_command(root, settings), capture_output=True, text=True, cwd=REPO,
                            env=REPO_ENV, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming from the last saved epoch" in result.stderr
    history = pd.read_csv(root / "model" / "history.tsv", sep="\t")
    assert list(history["epoch"]) == list(range(1, 11))
    best = int(history.loc[history["val_loss"].idxmin(), "epoch"])
    assert best <= killed_at, "the test needs a best epoch before the kill"
    report = json.loads((root / "model" / "train.json").read_text())
    assert report["resumed"] and report["best_epoch"] == best
    assert report["best_val_loss"] == pytest.approx(history["val_loss"].min(), rel=1e-6)
    # The shipped weights are that epoch's: their val loss is the one logged for it.
    assert val_loss_of_saved_model(root, settings) == pytest.approx(history["val_loss"].min(), rel=1e-4)
    assert history["val_loss"].iloc[-1] > 1.05 * history["val_loss"].min()
    # A finished run frees its saved states and is never resumed; it keeps its model and report for a rerun.
    checkpoints = root / "model" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir() if p.name != "history.tsv") == \
        ["model.keras", "state.json", "train.json"]
    assert json.loads((checkpoints / "state.json").read_text())["finished"]


def test_early_stop_counter_survives_a_resume(tiny: Path) -> None:
    """Patience counts epochs without improvement across the kill, not from the restart."""
    from jibjib.training.state import RunState

    state = RunState(tiny, {"model": "m"}, "val_loss", patience=3)
    state.epoch, state.wait, state.best, state.best_epoch = 5, 2, 0.5, 3
    state._write_meta(weights="state-0005.weights.h5")
    again = RunState(tiny, {"model": "m"}, "val_loss", patience=3)
    assert again.resumed and again.saved["wait"] == 2 and again.saved["best_epoch"] == 3


def test_swapped_checkpoint_under_the_same_path_refuses_the_resume(tmp_path: Path) -> None:
    from jibjib.training.state import RunState, checkpoint_digest

    checkpoint = tmp_path / "vggish_model.ckpt"
    checkpoint.write_bytes(b"one set of weights")
    inputs = {"model": "vggish", "vggish_checkpoint": checkpoint_digest(checkpoint)}
    state = RunState(tmp_path, inputs, "val_loss", patience=3)
    state.epoch = 2
    state._write_meta(weights="state-0002.weights.h5")
    assert RunState(tmp_path, dict(inputs), "val_loss", 3).resumed
    checkpoint.write_bytes(b"another set of weights")  # same path, same length class: other content
    swapped = {**inputs, "vggish_checkpoint": checkpoint_digest(checkpoint)}
    refused = RunState(tmp_path, swapped, "val_loss", 3)
    assert not refused.resumed and "vggish.checkpoint" in refused.refused_because
    # A V2 prefix is hashed over its index and data files.
    (tmp_path / "v2.ckpt-1.index").write_bytes(b"index")
    (tmp_path / "v2.ckpt-1.data-00000-of-00001").write_bytes(b"data")
    before = checkpoint_digest(tmp_path / "v2.ckpt-1")
    (tmp_path / "v2.ckpt-1.data-00000-of-00001").write_bytes(b"DATA")
    assert checkpoint_digest(tmp_path / "v2.ckpt-1") != before


def test_class_weights_count_examples_not_files() -> None:
    from jibjib.features.files import FeatureStamp
    from jibjib.training.examples import class_weights, example_counts

    # Alpha_one: one long file of 4 patches; Beta_two: two files of one patch.
    stamps = [FeatureStamp(96 * 4 + 10, "a"), FeatureStamp(96, "b"), FeatureStamp(100, "c")]
    class_ids = [(0,), (1,), (1,)]
    patches = example_counts(stamps, class_ids, 3, seq_len=None, short="pad")
    assert patches.tolist() == [4, 2, 0]
    weights = class_weights(patches)
    assert weights[1] == pytest.approx(2 * weights[0]) and weights[2] == 1.0
    assert np.dot(weights[:2], patches[:2]) / patches.sum() == pytest.approx(1.0)  # mean 1 over examples
    sequences = example_counts(stamps, class_ids, 3, seq_len=3, short="pad")
    assert sequences.tolist() == [2, 2, 0]
    skipped = example_counts(stamps, class_ids, 3, seq_len=3, short="skip")
    assert skipped.tolist() == [1, 0, 0]
    # A file of two species counts for both; a background file for none.
    mixed = example_counts(stamps, [(0, 1), (), (2,)], 3, seq_len=None, short="pad")
    assert mixed.tolist() == [4, 4, 1]


def test_weighted_loss_weights_train_and_val_alike() -> None:
    import keras

    from jibjib.models.losses import ClassWeightedCrossentropy

    logits = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]], np.float32)
    y = np.array([0, 1, 1])
    weights = [0.5, 2.0]
    ce = -np.log(np.exp(logits[np.arange(3), y]) / np.exp(logits).sum(axis=1))
    loss = ClassWeightedCrossentropy(weights)
    assert float(loss(np.eye(2)[y], logits)) == pytest.approx(np.mean(ce * np.array(weights)[y]), rel=1e-5)
    # A uniform target (background under softmax) weighs the mean of the class weights.
    uniform = np.full((1, 2), 0.5, np.float32)
    log_p = logits[:1] - np.log(np.exp(logits[:1]).sum())
    assert float(loss(uniform, logits[:1])) == pytest.approx(-(0.5 * log_p).sum() * 1.25, rel=1e-5)
    # Multi-label: the positive term of each class carries its weight, negatives weigh 1.
    target = np.eye(2)[y]
    p = 1 / (1 + np.exp(-logits))
    bce = -(target * np.log(p) * np.array(weights) + (1 - target) * np.log(1 - p))
    multi = ClassWeightedCrossentropy(weights, multi_label=True)
    assert float(multi(target, logits)) == pytest.approx(bce.mean(), rel=1e-5)
    restored = keras.losses.deserialize(keras.losses.serialize(multi))
    assert restored.class_weights == weights and restored.multi_label


def test_val_cmap_improves_upwards_and_val_loss_breaks_its_ties(tmp_path: Path) -> None:
    """cmAP saturates at 1.0 on easy validation sets: an epoch that equals the best one improves it only
    with a lower val_loss, so patience counts from the last real improvement."""
    import keras

    from jibjib.training.state import RunState

    state = RunState(tmp_path, {"model": "m"}, "val_cmap", patience=10, total_epochs=10, save_every=100,
                     writes=False)
    inputs = keras.Input((2,))
    state.set_model(keras.Model(inputs, keras.layers.Dense(1)(inputs)))
    for epoch, (cmap, loss) in enumerate([(0.5, 0.9), (0.8, 0.7), (0.8, 0.6), (0.8, 0.65), (0.7, 0.3)]):
        state.on_epoch_end(epoch, {"loss": 1.0, "val_cmap": cmap, "val_loss": loss})
    assert (state.best_epoch, state.best, state.wait) == (3, 0.8, 2)


def test_a_class_left_without_examples_by_short_files_skip_stops_the_run(tiny: Path) -> None:
    import tensorflow as tf

    from jibjib.core.errors import ConfigError
    from jibjib.core.settings import RunSettings
    from jibjib.training.data import load_data
    from jibjib.training.distribute import Distribution
    from jibjib.training.plan import plan_input

    alone = Distribution(tf.distribute.get_strategy(), workers=1, worker=0)
    every = {"call_windows": "all"}
    for seq_len, short in ((4, "pad"), (3, "skip")):  # every file has 3 patches
        run = RunSettings.of("convlstm", every, {"seq_len": seq_len, "short_files": short})
        plan_input(run, load_data(run, tiny / "split.tsv", tiny / "labels.tsv", tiny / "features", None), None, alone)
    run = RunSettings.of("convlstm", every, {"seq_len": 4, "short_files": "skip"})
    with pytest.raises(ConfigError, match=r"^2 class\(es\) have training files but no training example, every file "
                                          r"shorter than seq_len \(4 patches\) and convlstm.short_files is skip"):
        plan_input(run, load_data(run, tiny / "split.tsv", tiny / "labels.tsv", tiny / "features", None), None, alone)
    # The tiny files are stationary noise: no patch is active, so call windows leave the classes no example.
    run = RunSettings.of("convlstm", {"call_windows": "activity"}, {"seq_len": 3, "short_files": "pad"})
    with pytest.raises(ConfigError, match=r"without a patch whose activity reaches train.activity_threshold_db"):
        plan_input(run, load_data(run, tiny / "split.tsv", tiny / "labels.tsv", tiny / "features", None), None, alone)
