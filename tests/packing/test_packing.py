"""The packed training input: every patch once per epoch in a new exact shuffle, and packs updated by content."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

tf = pytest.importorskip("tensorflow")

from jibjib.core import fsutil  # noqa: E402
from jibjib.labels.tables import split_files  # noqa: E402
from jibjib.training.inputs import InputSpec, training_dataset  # noqa: E402
from jibjib.training.windows import WindowRule  # noqa: E402
from jibjib.features.activity import parse_activity, patch_activity  # noqa: E402
from jibjib.packing import PackedFeatures, pack_shard  # noqa: E402
from jibjib.features.qc import QCRow, write_manifest  # noqa: E402
from jibjib.core.settings import AugmentSettings  # noqa: E402

EVERY_WINDOW = WindowRule.every_window()  # the tests' log-mel is no audio: the plain grid, every window labelled

OFF = AugmentSettings.from_dict({"enabled": False})


def write_file(features: Path, path: str, number: int, frames: int) -> None:
    """Band 0 holds the file's number, band 1 the frame index: a patch tells where it was cut."""
    values = np.zeros((frames, 64), np.float32)
    values[:, 0] = number
    values[:, 1] = np.arange(frames)
    fsutil.save_npz(features / Path(path).with_suffix(".npz"), log_mel=values)


def make_split(root: Path, n_files: int = 12) -> pd.DataFrame:
    features = root / "features"
    rows = []
    for i in range(n_files):
        label = ("Alpha_one", "Beta_two")[i % 2]
        path = f"{label}/{label}-{i}_1.wav"
        write_file(features, path, i, 96 * (1 + i % 4) + 17)
        rows.append({"path": path, "label": label, "species": label, "recording_id": f"r{i}", "split": "train"})
    pd.DataFrame(rows).to_csv(root / "split.tsv", sep="\t", index=False)
    pd.DataFrame({"class_id": [0, 1], "label": ["Alpha_one", "Beta_two"]}).to_csv(root / "labels.tsv", sep="\t",
                                                                                 index=False)
    write_manifest(root / "manifest.tsv", [QCRow(path=r["path"], label=r["label"], status="processed") for r in rows])
    return split_files(root / "split.tsv", root / "labels.tsv", features, "train")


def pack(root: Path) -> dict[str, int]:
    return pack_shard(root / "manifest.tsv", root / "features", root / "packed/s.npy", root / "packed/s.tsv")


def epoch_patches(dataset: tf.data.Dataset) -> list[tuple[int, int]]:
    """(file number, first frame) of every patch of one pass, in order."""
    cut = []
    for patches, _ in dataset:
        values = patches.numpy() if not isinstance(patches, dict) else patches["patches"].numpy()[:, 0]
        cut += [(int(f), int(t)) for f, t in zip(values[:, 0, 0], values[:, 0, 1])]
    return cut


def test_every_patch_once_per_epoch_in_a_new_exact_shuffle(tmp_path: Path) -> None:
    files = make_split(tmp_path)
    pack(tmp_path)
    packs = PackedFeatures.open([tmp_path / "packed/s.tsv"])
    expected = sorted((i, 96 * k) for i in range(12) for k in range(1 + i % 4))
    spec = InputSpec(windows=EVERY_WINDOW, n_classes=2, augmentation=OFF)
    dataset = training_dataset(files, spec, 8, training=True, seed=3, packs=packs)
    first, second = epoch_patches(dataset), epoch_patches(dataset)
    assert sorted(first) == expected and sorted(second) == expected
    assert first != second
    # An exact shuffle: the first batch comes from many files, not from the few a buffer would hold.
    assert len({f for f, _ in first[:8]}) >= 5
    # Without training: each patch once, in file order (by path), as the npz reader gives it.
    in_order = epoch_patches(training_dataset(files, spec, 8, training=False, packs=packs))
    assert in_order == epoch_patches(training_dataset(files, spec, 8, training=False))
    assert sorted(in_order) == expected


def test_sequences_are_cut_and_padded_as_from_the_npz(tmp_path: Path) -> None:
    files = make_split(tmp_path)
    pack(tmp_path)
    packs = PackedFeatures.open([tmp_path / "packed/s.tsv"])
    spec = InputSpec(windows=EVERY_WINDOW, n_classes=2, seq_len=3, augmentation=OFF)
    for (a, _), (b, _) in zip(training_dataset(files, spec, 4, training=False, packs=packs),
                              training_dataset(files, spec, 4, training=False), strict=True):
        assert np.array_equal(a["mask"], b["mask"]) and np.array_equal(a["patches"], b["patches"])


def test_the_pack_holds_the_log_mel_in_float16(tmp_path: Path) -> None:
    make_split(tmp_path, n_files=2)
    rng = np.random.default_rng(0)
    values = rng.normal(-3.0, 2.0, (300, 64)).astype(np.float32)
    fsutil.save_npz(tmp_path / "features/Alpha_one/Alpha_one-0_1.npz", log_mel=values)
    pack(tmp_path)
    packs = PackedFeatures.open([tmp_path / "packed/s.tsv"])
    where = packs.locate(["Alpha_one/Alpha_one-0_1.wav"]).iloc[0]
    stored = packs.read(int(where["array"]), int(where["row"]), int(where["frames"]))
    assert stored.dtype == np.float16 and np.array_equal(stored, values.astype(np.float16))
    assert np.abs(stored - values).max() <= 2.0 ** -11 * np.abs(values).max() * 2


def test_adding_a_recording_repacks_by_content(tmp_path: Path) -> None:
    make_split(tmp_path)
    assert pack(tmp_path) == {"files": 12, "read": 12, "reused": 0, "rows": sum(96 * (1 + i % 4) + 17 for i in range(12))}
    array, index = tmp_path / "packed/s.npy", tmp_path / "packed/s.tsv"
    before = array.read_bytes()
    # The same files again: nothing is read or written (only the times move on, for the workflow).
    os.utime(array, (0, 0))
    assert pack(tmp_path)["read"] == 0 and array.read_bytes() == before and array.stat().st_mtime > 0

    # One recording more: only it is read from its npz, the others are copied from the old pack.
    rows = [QCRow(path=p, label=p.split("/")[0], status="processed")
            for p in pd.read_csv(index, sep="\t")["path"]]
    write_file(tmp_path / "features", "Alpha_one/Alpha_one-99_1.wav", 99, 200)
    rows.append(QCRow(path="Alpha_one/Alpha_one-99_1.wav", label="Alpha_one", status="processed"))
    write_manifest(tmp_path / "manifest.tsv", rows)
    counts = pack(tmp_path)
    assert (counts["files"], counts["read"], counts["reused"]) == (13, 1, 12)
    packs = PackedFeatures.open([index])
    added = packs.locate(["Alpha_one/Alpha_one-99_1.wav"]).iloc[0]
    assert added["frames"] == 200
    assert (packs.read(int(added["array"]), int(added["row"]), 200)[:, 0] == 99).all()

    # A recording whose content changed (a new source hash) is read again; one rejected drops out.
    npz = tmp_path / "features/Beta_two/Beta_two-1_1.npz"
    fsutil.save_npz(npz, log_mel=np.full((150, 64), 7.0, np.float32), source_sha256=np.array("new"),
                    frontend=np.array("fp"))
    rows = [r for r in rows if r.path != "Alpha_one/Alpha_one-0_1.wav"]
    write_manifest(tmp_path / "manifest.tsv", rows)
    counts = pack(tmp_path)
    assert (counts["files"], counts["read"], counts["reused"]) == (12, 1, 11)
    packs = PackedFeatures.open([index])
    changed = packs.locate(["Beta_two/Beta_two-1_1.wav"]).iloc[0]
    assert changed["content"] == "new/fp" and (packs.read(int(changed["array"]), int(changed["row"]), 150) == 7).all()
    with pytest.raises(KeyError, match="not in the packed features"):
        packs.locate(["Alpha_one/Alpha_one-0_1.wav"])


def test_a_pack_without_activity_scores_gets_them_from_its_own_rows(tmp_path: Path) -> None:
    """An index of before the activity column is upgraded from the pack's rows: no npz is read, the array kept."""

    make_split(tmp_path)
    pack(tmp_path)
    array, index = tmp_path / "packed/s.npy", tmp_path / "packed/s.tsv"
    scored = pd.read_csv(index, sep="\t", dtype=str, keep_default_na=False)
    scored.drop(columns="activity").to_csv(index, sep="\t", index=False)
    before = array.read_bytes()
    # Until it is packed again, a reader scores the old pack's files from their rows.
    assert not PackedFeatures.open([index]).has_activity
    from_rows = PackedFeatures.open([index]).locate_activity(scored["path"])
    assert [a.tolist() for a in from_rows] == [parse_activity(text).tolist() for text in scored["activity"]]
    counts = pack(tmp_path)
    assert counts["read"] == 0 and counts["reused"] == 12 and array.read_bytes() == before
    upgraded = pd.read_csv(index, sep="\t", dtype=str, keep_default_na=False)
    assert upgraded["activity"].tolist() == scored["activity"].tolist()
    packs = PackedFeatures.open([index])
    where = packs.locate(scored["path"][:1]).iloc[0]
    rows = packs.read(int(where["array"]), int(where["row"]), int(where["frames"]))
    assert np.array_equal(packs.locate_activity(scored["path"][:1])[0], patch_activity(rows))
    assert len(parse_activity(upgraded["activity"][0])) == int(where["frames"]) // 96


def test_scores_of_another_activity_method_are_stale(tmp_path: Path) -> None:
    """Scores stamped by another method are computed again from the rows, by the next pack and by readers."""
    make_split(tmp_path)
    pack(tmp_path)
    array, index = tmp_path / "packed/s.npy", tmp_path / "packed/s.tsv"
    current = pd.read_csv(index, sep="\t", dtype=str, keep_default_na=False)
    current.assign(activity="99.0", activity_method="an-older-method").to_csv(index, sep="\t", index=False)
    stale = PackedFeatures.open([index])
    assert not stale.has_activity
    assert [a.tolist() for a in stale.locate_activity(current["path"])] == [
        parse_activity(text).tolist() for text in current["activity"]]
    before = array.read_bytes()
    assert pack(tmp_path)["read"] == 0 and array.read_bytes() == before
    assert pd.read_csv(index, sep="\t", dtype=str, keep_default_na=False).equals(current)


def test_shards_with_and_without_scores_read_together(tmp_path: Path) -> None:
    """After an upgrade the workflow repacks only the shards whose files changed: old and new indexes mix."""
    make_split(tmp_path)
    pack(tmp_path)
    index = pd.read_csv(tmp_path / "packed/s.tsv", sep="\t", dtype=str, keep_default_na=False)
    old = tmp_path / "packed/old.tsv"
    (tmp_path / "packed/old.npy").write_bytes((tmp_path / "packed/s.npy").read_bytes())
    index.drop(columns=["activity", "activity_method"]).assign(path=lambda t: "old/" + t["path"]).to_csv(
        old, sep="\t", index=False)
    packs = PackedFeatures.open([tmp_path / "packed/s.tsv", old])
    scores = packs.locate_activity([index["path"][0], "old/" + index["path"][0]])
    assert np.array_equal(scores[0], scores[1]) and len(scores[0]) > 0


def test_background_is_mixed_into_packed_batches(tmp_path: Path) -> None:
    """Background stretches (a recording shorter than a patch repeated) raise every magnitude they are added to."""
    make_split(tmp_path)
    rng = np.random.default_rng(1)
    split = pd.read_csv(tmp_path / "split.tsv", sep="\t")
    split.loc[len(split)] = {"path": "noise/noise-50_1.wav", "label": "noise", "species": "", "recording_id": "r50",
                             "split": "train"}
    split.to_csv(tmp_path / "split.tsv", sep="\t", index=False)
    for path, frames in [*((p, 96 * (1 + i % 4) + 17) for i, p in enumerate(split["path"][:-1])),
                         ("noise/noise-50_1.wav", 40)]:
        fsutil.save_npz(tmp_path / "features" / Path(path).with_suffix(".npz"),
                        log_mel=rng.normal(-3.0, 1.0, (frames, 64)).astype(np.float32))
    write_manifest(tmp_path / "manifest.tsv", [QCRow(path=p, label=p.split("/")[0], status="processed")
                                               for p in split["path"]])
    pack(tmp_path)
    packs = PackedFeatures.open([tmp_path / "packed/s.tsv"])
    files = split_files(tmp_path / "split.tsv", tmp_path / "labels.tsv", tmp_path / "features", "train")
    quiet = AugmentSettings.from_dict({"random_offsets": False, "gain_db": 0.0, "time_masks": 0, "freq_masks": 0,
                                       "mixup_probability": 0.0, "union_mix_probability": 0.0,
                                       "background_probability": 0.0})
    noisy = dataclasses.replace(quiet, background_probability=1.0, background_snr_db=(0.0, 0.0))

    def epoch(aug: AugmentSettings) -> np.ndarray:
        spec = InputSpec(windows=EVERY_WINDOW, n_classes=2, augmentation=aug)
        return np.concatenate([x.numpy() for x, _ in training_dataset(files, spec, 8, training=True, seed=1,
                                                                          packs=packs)])

    plain, mixed = epoch(quiet), epoch(noisy)
    # The background recording, shorter than a patch, is no example of its own.
    assert plain.shape == mixed.shape == (sum(1 + i % 4 for i in range(12)), 96, 64)
    assert np.isfinite(mixed).all() and (mixed >= plain - 1e-5).all() and (mixed > plain + 0.1).mean() > 0.5
