"""Call windows: the active windows of species files are the species, inactive ones dropped or weak negatives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

tf = pytest.importorskip("tensorflow")

from jibjib.core import fsutil  # noqa: E402
from jibjib.features.activity import patch_activity  # noqa: E402
from jibjib.features.files import FeatureStamp  # noqa: E402
from jibjib.training.inputs import InputSpec, gathered_batches  # noqa: E402
from jibjib.training.windows import WindowRule, cut_file, window_examples  # noqa: E402

DROP = WindowRule("activity", 6.0, "drop", 0.3)
NEGATIVE = WindowRule("activity", 6.0, "negative", 0.25)


def test_sequences_start_at_active_patches():
    active = np.array([0, 0, 1, 0, 0, 0, 0, 1, 1, 0], bool)
    first, valid, flag = cut_file(10, 3, "pad", active)
    # Inactive 0-1, active 2-4, inactive 5-6 (up to the next active patch), active 7-9.
    assert first.tolist() == [0, 2, 5, 7]
    assert valid.tolist() == [2, 3, 2, 3]
    assert flag.tolist() == [False, True, False, True]
    first, valid, flag = cut_file(10, 3, "skip", active)
    assert first.tolist() == [2, 7]
    first, valid, flag = cut_file(10, 3, "pad", None)  # call_windows all: the plain grid
    assert first.tolist() == [0, 3, 6, 9] and valid.tolist() == [3, 3, 3, 1] and flag.all()


def test_drop_and_negative_in_examples():
    files = pd.DataFrame({"class_ids": [(0,), ()]})
    stamps = [FeatureStamp(96 * 4, ""), FeatureStamp(96 * 3, "")]
    activity = [np.array([1.0, 9.0, 2.0, 12.0], np.float32), np.array([0.0, 0.0, 0.0], np.float32)]
    dropped = window_examples(files, stamps, activity, 1, "pad", DROP, 96)
    # The species file keeps its active patches 1 and 3; the background file every patch, as negatives.
    assert dropped.file.tolist() == [0, 0, 1, 1, 1] and dropped.first.tolist() == [1, 3, 0, 1, 2]
    assert dropped.labelled.all() and (dropped.weight == 1).all()
    weak = window_examples(files, stamps, activity, 1, "pad", NEGATIVE, 96)
    assert weak.first.tolist() == [0, 1, 2, 3, 0, 1, 2]
    assert weak.labelled.tolist() == [False, True, False, True, True, True, True]
    assert weak.weight.tolist() == [0.25, 1.0, 0.25, 1.0, 1.0, 1.0, 1.0]
    every = window_examples(files, stamps, None, 1, "pad", WindowRule.every_window(), 96)
    assert len(every) == 7 and every.labelled.all()
    # The run's identity holds the examples: other scores, other labels, another digest.
    again = window_examples(files, stamps, [a.copy() for a in activity], 1, "pad", NEGATIVE, 96)
    moved = window_examples(files, stamps, [activity[0][::-1], activity[1]], 1, "pad", NEGATIVE, 96)
    assert weak.digest() == again.digest() != moved.digest() and weak.digest(dropped) != weak.digest()


def _log_mel(active_patches: list[int], patches: int, rng: np.random.Generator) -> np.ndarray:
    """Quiet noise, and a loud band-limited call in each patch of `active_patches`."""
    log_mel = np.log(0.01 + 0.02 * rng.random((patches * 96, 64))).astype(np.float32)
    for p in active_patches:
        log_mel[p * 96 + 20: p * 96 + 70, 30:38] = np.log(2.0)
    return log_mel


@pytest.fixture
def focal(tmp_path: Path) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for name, calls, ids in (("a.npz", [1, 3], (0,)), ("b.npz", [0], (1,)), ("bg.npz", [], ())):
        fsutil.save_npz(tmp_path / name, log_mel=_log_mel(calls, 4, rng))
        rows.append({"path": name, "feature": str(tmp_path / name), "class_ids": ids,
                     "label": name, "class_id": ids[0] if ids else -1})
    return pd.DataFrame(rows)


def test_activity_of_the_generated_files(focal: pd.DataFrame):
    with np.load(focal["feature"][0]) as z:
        assert np.flatnonzero(patch_activity(z["log_mel"]) >= 6.0).tolist() == [1, 3]


def _all(ds: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray | None]:
    targets, weights = [], []
    for batch, target in ds:
        targets.append(target.numpy())
        if "weight" in batch:
            weights.append(batch["weight"].numpy())
    return np.concatenate(targets), np.concatenate(weights) if weights else None


def _rows(targets: np.ndarray, weights: np.ndarray | None) -> list[tuple]:
    """(target..., weight) of every example, sorted: the per-file reader interleaves the files."""
    weights = np.ones(len(targets)) if weights is None else weights
    return sorted(tuple(t) + (float(w),) for t, w in zip(targets.tolist(), weights.tolist()))


@pytest.mark.parametrize("rule", [DROP, NEGATIVE], ids=["drop", "negative"])
def test_targets_and_weights_of_the_per_file_input(focal: pd.DataFrame, rule: WindowRule):
    spec = InputSpec(n_classes=2, multi_label=True, windows=rule)
    targets, weights = _all(gathered_batches(focal, spec, batch_size=4, training=False))
    if rule.inactive == "drop":
        # a: patches 1 and 3; b: patch 0; background: 4 patches, all negatives; no weights.
        assert weights is None
        assert _rows(targets, weights) == sorted([(1, 0, 1)] * 2 + [(0, 1, 1)] + [(0, 0, 1)] * 4)
    else:
        # a's patches 0 and 2 and b's 1 to 3 are weak negatives.
        assert _rows(targets, weights) == sorted([(1, 0, 1)] * 2 + [(0, 1, 1)] + [(0, 0, 1)] * 4
                                                 + [(0, 0, 0.25)] * 5)


def test_the_packed_input_gives_the_same_labels(focal: pd.DataFrame, tmp_path: Path):
    from jibjib.features.qc import QCRow, write_manifest
    from jibjib.packing import PackedFeatures, pack_shard

    features = tmp_path / "features"
    rows = []
    for path, feature in zip(focal["path"], focal["feature"]):
        wav = f"sp/{Path(path).stem}.wav"
        (features / "sp").mkdir(parents=True, exist_ok=True)
        Path(feature).rename(features / "sp" / path)
        rows.append(QCRow(path=wav, label="sp", status="processed"))
    write_manifest(tmp_path / "manifest.tsv", rows)
    pack_shard(tmp_path / "manifest.tsv", features, tmp_path / "p.npy", tmp_path / "p.tsv")
    packs = PackedFeatures.open([tmp_path / "p.tsv"])
    files = focal.assign(path=[r.path for r in rows], feature=[str(features / "sp" / p) for p in focal["path"]])
    spec = InputSpec(n_classes=2, multi_label=True, windows=NEGATIVE)
    packed = _all(gathered_batches(files, spec, batch_size=4, training=False, packs=packs))
    per_file = _all(gathered_batches(files, spec, batch_size=4, training=False))
    assert _rows(*packed) == _rows(*per_file)
    assert len(packed[0]) == 12 and sorted(packed[1].tolist()).count(0.25) == 5
    # A pack of before the activity column (the workflow may not repack it): scored from its own rows.
    index = pd.read_csv(tmp_path / "p.tsv", sep="\t", dtype=str, keep_default_na=False)
    index.drop(columns="activity").to_csv(tmp_path / "p.tsv", sep="\t", index=False)
    old = PackedFeatures.open([tmp_path / "p.tsv"])
    assert not old.has_activity
    assert _rows(*_all(gathered_batches(files, spec, batch_size=4, training=False, packs=old))) == _rows(*packed)


class _Cache:
    """The rows of an embedding cache of the focal files: 4 patches each, row = patch number in the cache."""

    def rows(self, paths):
        file_of = np.repeat(np.arange(len(paths)), 4).astype(np.int32)
        return np.zeros(len(file_of), np.int32), np.arange(len(file_of), dtype=np.int64), file_of


def test_the_cached_input_keeps_the_same_patches(focal: pd.DataFrame):
    from jibjib.training.inputs.cached import _window_patches

    spec = InputSpec(n_classes=2, multi_label=True, windows=DROP)
    _, rows, file_of, labelled, weight = _window_patches(focal, _Cache(), spec, None)
    assert rows.tolist() == [1, 3, 4, 8, 9, 10, 11] and file_of.tolist() == [0, 0, 1, 2, 2, 2, 2]
    assert labelled.all() and (weight == 1).all()
    spec = InputSpec(n_classes=2, multi_label=True, windows=NEGATIVE)
    _, rows, file_of, labelled, weight = _window_patches(focal, _Cache(), spec, None)
    assert rows.tolist() == list(range(12))
    assert (~labelled).nonzero()[0].tolist() == [0, 2, 5, 6, 7] and (weight[~labelled] == 0.25).all()


def test_convlstm_sequences_start_at_the_active_patches(focal: pd.DataFrame):
    """File a (calls in patches 1 and 3) gives sequences [1, 2] and [3, pad]; b (call in 0) gives [0, 1]."""
    spec = InputSpec(n_classes=2, seq_len=2, multi_label=True, windows=DROP)
    masks, firsts = [], []
    for batch, target in gathered_batches(focal.iloc[:2], spec, batch_size=8, training=False):
        masks += batch["mask"].numpy().tolist()
        firsts += [int(np.argmax(t)) for t in target.numpy()]
    with np.load(focal["feature"][0]) as z:
        a = z["log_mel"]
    assert sorted(zip(firsts, map(tuple, masks))) == [(0, (True, False)), (0, (True, True)), (1, (True, True))]
    # The sequence that starts at a's patch 1 holds its patches 1 and 2.
    for batch, _ in gathered_batches(focal.iloc[:1], spec, batch_size=8, training=False):
        units = batch["units"].numpy()
        assert np.array_equal(units[0, 0], a[96:192]) and np.array_equal(units[0, 1], a[192:288])
        assert np.array_equal(units[1, 0], a[288:384])


def test_a_run_trains_with_weak_negatives_and_union_mixing(tmp_path: Path):
    """jibjib train end to end with inactive windows as weighted negatives (sample weights through Keras) and the
    union mix; train.json says which window labels were used and counts every example."""
    import json
    import subprocess
    import sys

    from conftest import REPO
    from test_train import TINY_CONVLSTM, train_command, write_two_classes

    rng = np.random.default_rng(4)

    def log_mel(c: int, i: int) -> np.ndarray:
        calls = [1, 3] if i % 2 else [0]
        values = _log_mel(calls, 4, rng)
        values[:, 30:38] = values[:, 10 + 40 * c: 18 + 40 * c]  # each class calls in its own bands
        values[:, 10 + 40 * c: 18 + 40 * c] = _log_mel(calls, 4, rng)[:, 30:38]
        return values

    write_two_classes(tmp_path, 4, log_mel)
    settings = {**TINY_CONVLSTM, "epochs": 2, "multi_label": True, "call_windows": "activity",
                "inactive_windows": "negative", "inactive_weight": 0.3,
                "augment": {"enabled": True, "union_mix_probability": 1.0, "background_probability": 0.0}}
    result = subprocess.run(train_command(tmp_path, settings), capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "model" / "train.json").read_text())
    assert "weak negatives (weight 0.3)" in report["window_labels"]
    # Train files 0 to 2 of each class: calls in patch 0 (files 0, 2) or 1 and 3 (file 1), seq_len 2.
    # Patch 0 active: [0, 1] active, [2, 3] inactive; patches 1, 3 active: [0] inactive, [1, 2], [3] active.
    assert report["train_examples_per_class"] == [4, 4] and report["train_examples"] == 14
    history = pd.read_csv(tmp_path / "model" / "history.tsv", sep="\t")
    assert len(history) == 2 and np.isfinite(history[["loss", "val_loss"]].to_numpy()).all()
