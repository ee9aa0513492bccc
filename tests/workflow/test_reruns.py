"""Only stale work reruns: each realistic change to data or config, and what it must redo.

Plans are read from dry runs (`Job stats` counts per rule); work actually done
is read from the npz files themselves: a rewritten npz is a new inode (every
write renames a temporary file into place).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import chirp, make_tree, run_snakemake, write_wav
from jibjib.features.extract import update_species
from jibjib.features.inventory import refresh_signatures, shard_of, shard_species
from jibjib.features.qc import species_files, write_manifest

DATA_TARGETS = ["results/labels.tsv", "results/split.tsv"]
RATE = 16000
SECONDS = 1.2  # one 0.96 s patch needs 0.975 s
DOWNSTREAM = {"qc": 1, "labels": 1, "split": 1}
TINY_CONVLSTM = {
    "models": ["convlstm"],
    "convlstm": {"seq_len": 1, "conv_filters": [4], "lstm_units": 4, "dense_units": 4,
                 "epochs": 1, "batch_size": 4, "patience": 1},
    "train": {"shuffle_buffer": 16},
}


def planned(result) -> dict[str, int]:
    """Jobs per rule a dry run would run ({} when there is nothing to do)."""
    text = result.stdout + result.stderr
    if "Nothing to be done" in text:
        return {}
    table = text.split("Job stats:", 1)[1].split("total", 1)[0]
    return {rule: int(count) for rule, count in re.findall(r"^(\w+)\s+(\d+)$", table, re.MULTILINE)}


def npz_files(work: Path) -> dict[Path, tuple[int, int]]:
    return {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (work / "results/features").rglob("*.npz")}


def rewritten(before: dict[Path, tuple[int, int]], after: dict[Path, tuple[int, int]]) -> set[str]:
    """Names of npz files written since `before` (new or replaced)."""
    return {p.name for p, state in after.items() if before.get(p) != state}


class Run:
    """A small tree with features, labels and split built once; `data_dir` is relative to `work`."""

    def __init__(self, work: Path, config: dict | None = None) -> None:
        self.work = work
        self.data = work / "birds"
        self.config = {"data_dir": "birds", **(config or {})}

    def plan(self, *targets: str, config: dict | None = None, args: tuple[str, ...] = ()) -> dict[str, int]:
        result = run_snakemake(self.work, "--dry-run", *args, *(targets or DATA_TARGETS),
                               config={**self.config, **(config or {})})
        return planned(result)

    def run(self, *targets: str, config: dict | None = None):
        return run_snakemake(self.work, *(targets or DATA_TARGETS), config={**self.config, **(config or {})})


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Run:
    pristine = Run(tmp_path_factory.mktemp("pristine"))
    make_tree(pristine.data, {"Alpha_one": 2, "Beta_two": 2}, seconds=SECONDS, sample_rate=RATE)
    pristine.run()
    assert len(npz_files(pristine.work)) == 8
    return pristine


@pytest.fixture
def built(pristine: Run, tmp_path: Path) -> Run:
    """A copy of the finished run, Snakemake's records included; copy2 keeps every mtime."""
    work = shutil.copytree(pristine.work, tmp_path / "work", copy_function=shutil.copy2)
    return Run(work)


def test_nothing_changed_runs_nothing(built: Run) -> None:
    before = npz_files(built.work)
    assert built.plan() == {}
    built.run()
    assert rewritten(before, npz_files(built.work)) == set()


def test_added_file_computes_only_that_file(built: Run) -> None:
    before = npz_files(built.work)
    write_wav(built.data / "Alpha_one" / "Alpha_one-200_1.wav", chirp(SECONDS, RATE, seed=99), RATE)
    assert built.plan() == {"features": 1, **DOWNSTREAM}
    built.run()
    assert rewritten(before, npz_files(built.work)) == {"Alpha_one-200_1.npz"}
    assert "Alpha_one/Alpha_one-200_1.wav" in (built.work / "results/split.tsv").read_text()


def test_removed_file_drops_its_features(built: Run) -> None:
    before = npz_files(built.work)
    (built.data / "Beta_two" / "Beta_two-100_2.wav").unlink()
    assert built.plan() == {"features": 1, **DOWNSTREAM}
    built.run()
    after = npz_files(built.work)
    assert {p.name for p in set(before) - set(after)} == {"Beta_two-100_2.npz"}
    assert rewritten(before, after) == set()
    assert "Beta_two-100_2.wav" not in (built.work / "results/split.tsv").read_text()


def test_modified_file_recomputes_only_that_file(built: Run) -> None:
    before = npz_files(built.work)
    # Same length, so the same size: only the content tells the change.
    write_wav(built.data / "Alpha_one" / "Alpha_one-101_2.wav", chirp(SECONDS, RATE, f0=4000, seed=7), RATE)
    assert built.plan() == {"features": 1, **DOWNSTREAM}
    built.run()
    assert rewritten(before, npz_files(built.work)) == {"Alpha_one-101_2.npz"}


def test_modified_file_with_restored_mtime_is_recomputed(built: Run) -> None:
    """`cp -p` or `rsync -t` can write new content under the old mtime and size; the ctime
    still moves, so the shard is planned, and the job, judging by the recorded SHA-256
    rather than size and mtime, recomputes that npz (and only it)."""
    wav = built.data / "Beta_two" / "Beta_two-101_1.wav"
    old = wav.stat()
    before = npz_files(built.work)
    write_wav(wav, chirp(SECONDS, RATE, f0=5000, seed=8), RATE)
    os.utime(wav, ns=(old.st_atime_ns, old.st_mtime_ns))
    assert wav.stat().st_size == old.st_size
    assert built.plan() == {"features": 1, **DOWNSTREAM}
    built.run()
    assert rewritten(before, npz_files(built.work)) == {"Beta_two-101_1.npz"}
    with np.load(built.work / "results/features/Beta_two/Beta_two-101_1.npz", allow_pickle=False) as z:
        assert str(z["source_sha256"]) == hashlib.sha256(wav.read_bytes()).hexdigest()


def test_frontend_change_recomputes_every_file(built: Run) -> None:
    before = npz_files(built.work)
    changed = {"frontend": {"log_offset": 0.001}}
    assert built.plan(config=changed) == {"features": 2, **DOWNSTREAM}
    built.run(config=changed)
    after = npz_files(built.work)
    assert rewritten(before, after) == {p.name for p in before}
    with np.load(next(iter(after)), allow_pickle=False) as z:
        assert '"log_offset": 0.001' in str(z["frontend_params"])


def test_shard_count_change_keeps_features_and_forgets_old_shards(built: Run) -> None:
    """Another features.shards reruns the shards but keeps every npz. An edit made under
    the other count and reverted afterwards must still reach the npz once the old
    count is back: the old shards' manifests are not taken for current."""
    before = npz_files(built.work)
    one = {"features": {"shards": 1}}
    assert built.plan(config=one) == {"features": 1, **DOWNSTREAM}
    built.run(config=one)
    assert rewritten(before, npz_files(built.work)) == set()

    wav = built.data / "Alpha_one" / "Alpha_one-101_2.wav"
    original = wav.read_bytes()
    write_wav(wav, chirp(SECONDS, RATE, f0=4000, seed=7), RATE)
    built.run(config=one)
    wav.write_bytes(original)  # a checkout of the old file
    assert built.plan() == {"features": 2, **DOWNSTREAM}
    built.run()
    with np.load(built.work / "results/features/Alpha_one/Alpha_one-101_2.npz", allow_pickle=False) as z:
        assert str(z["source_sha256"]) == hashlib.sha256(original).hexdigest()


# Snakemake itself forgives a newer input whose checksum it recorded, but only
# for files up to --max-checksum-file-size (1 MB): a 10 s 44.1 kHz slice is
# 0.9 MB, longer or stereo recordings are more. Limit 0 makes these small test
# files behave like large ones, so only our content signatures can save the run.
LARGE_FILES = ("--max-checksum-file-size", "0")


@pytest.mark.parametrize("profile", [(), ("--workflow-profile", "none")], ids=["default-profile", "no-profile"])
def test_touching_every_wav_recomputes_nothing(built: Run, profile: tuple[str, ...]) -> None:
    """A git checkout rewrites every file's mtime; content decides, with or without the profile."""
    before = npz_files(built.work)
    later = before[next(iter(before))][1] + 10**9
    for wav in built.data.rglob("*.wav"):
        os.utime(wav, ns=(later, later))
    first = run_snakemake(built.work, "--dry-run", *profile, *LARGE_FILES, *DATA_TARGETS, config=built.config)
    assert planned(first) == {}
    assert "sources: hashed 8 of 8 files" in first.stderr
    # The stat cache took the new mtimes: the next run hashes nothing.
    second = run_snakemake(built.work, *profile, *LARGE_FILES, *DATA_TARGETS, config=built.config)
    assert "Nothing to be done" in second.stdout + second.stderr
    assert "sources: hashed" not in second.stderr
    assert rewritten(before, npz_files(built.work)) == set()


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Run:
    trained = Run(tmp_path_factory.mktemp("trained"), TINY_CONVLSTM)
    make_tree(trained.data, {"Alpha_one": 3, "Beta_two": 3}, seconds=SECONDS, sample_rate=RATE)
    trained.run("results/models/convlstm/model.keras")
    return trained


def test_checkout_keeps_features_and_model(trained: Run) -> None:
    model = trained.work / "results/models/convlstm/model.keras"
    before, model_before = npz_files(trained.work), model.stat().st_mtime_ns
    for wav in trained.data.rglob("*.wav"):
        wav.touch()
    assert trained.plan("results/models/convlstm/model.keras", args=LARGE_FILES) == {}
    run_snakemake(trained.work, *LARGE_FILES, "results/models/convlstm/model.keras", config=trained.config)
    assert model.stat().st_mtime_ns == model_before
    assert rewritten(before, npz_files(trained.work)) == set()


def test_training_only_change_keeps_features(trained: Run) -> None:
    retrain = {"convlstm": {**TINY_CONVLSTM["convlstm"], "epochs": 2}}
    assert trained.plan("results/models/convlstm/model.keras", config=retrain) == {"train_convlstm": 1}


def test_shards_are_stable_and_independent() -> None:
    """A species' shard depends on its name alone (CRC-32, the same on every machine and
    Python), so adding species moves no existing one and reruns at most one shard."""
    assert [shard_of(name, 16) for name in ("Alpha_one", "Beta_two", "Turdus_merula")] == \
        ["shard-08", "shard-01", "shard-14"]
    assert shard_of("Turdus_merula", 1000) == "shard-006" and shard_of("Turdus_merula", 1) == "shard-00"
    names = [f"Species_{i:03d}" for i in range(60)]
    before = shard_species(names[:50], 16)
    after = shard_species(names, 16)
    assert sum(len(species) for species in after.values()) == 60
    assert all(set(species) <= set(after[shard]) for shard, species in before.items())


def test_signatures_change_with_content_only(tmp_path: Path) -> None:
    """A file is first listed by a stamp and hashed by its feature job; later it is hashed
    here when its stat moved, and its row changes only when its content did."""
    data = make_tree(tmp_path / "birds", {"Alpha_one": 1, "Beta_two": 1}, seconds=SECONDS, sample_rate=RATE)
    (data / "Alpha_one" / ".DS_Store").write_bytes(b"finder")
    too_short = data / "Beta_two" / "short.wav"
    write_wav(too_short, chirp(0.5, RATE), RATE)
    signatures, manifests = tmp_path / "sources", tmp_path / "manifests"
    shards = {label: shard_of(label, 16) for label in ("Alpha_one", "Beta_two")}
    assert len(set(shards.values())) == 2

    def refresh():
        inventory = {label: species_files(data / label) for label in shards}
        return refresh_signatures(data, inventory, signatures, manifests, 16, workers=2)

    def signature(label: str) -> dict[str, str]:
        text = (signatures / f"{shards[label]}.tsv").read_text()
        return dict(line.split("\t")[::2] for line in text.splitlines()[1:])

    first = refresh()
    assert (first.files, first.new_files, first.hashed_files) == (6, 5, 0)
    assert sorted(first.changed_shards) == sorted(shards.values())
    assert signature("Alpha_one")["Alpha_one/.DS_Store"] == "-"
    assert all(v.startswith("stat:") for k, v in signature("Beta_two").items())
    assert refresh().new_files == refresh().hashed_files == 0

    # Before any feature job recorded a hash, a stat change can only be a new stamp.
    edited = data / "Beta_two" / "Beta_two-100_1.wav"
    edited.touch()
    assert refresh().changed_shards == [shards["Beta_two"]]

    for label in shards:  # what the feature jobs do
        rows, _ = update_species(data, label, tmp_path / "features")
        write_manifest(manifests / f"{shards[label]}.tsv", rows)
    stamped = signature("Beta_two")

    copied = tmp_path / "copy.wav"
    shutil.copy2(edited, copied)
    os.replace(copied, edited)  # new inode and ctime, same bytes
    (data / "Alpha_one" / ".DS_Store").write_bytes(b"finder wrote again")  # ignored: listed, not hashed
    too_short.touch()  # rejected, but its hash is recorded all the same
    again = refresh()
    assert (again.new_files, again.hashed_files, again.changed_shards) == (0, 2, [])
    assert signature("Beta_two") == stamped
    assert refresh().hashed_files == 0

    # Same size, old mtime restored: the new content is hashed and the row says so.
    stat = edited.stat()
    content = bytearray(edited.read_bytes())
    content[-2:] = bytes([content[-2] ^ 1, content[-1]])
    edited.write_bytes(bytes(content))
    os.utime(edited, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    changed = refresh()
    assert (changed.hashed_files, changed.changed_shards) == (1, [shards["Beta_two"]])
    assert signature("Beta_two")["Beta_two/Beta_two-100_1.wav"] == hashlib.sha256(content).hexdigest()


def test_shards_without_species_are_forgotten(tmp_path: Path) -> None:
    """Files of a shard that holds no species now are deleted: after `features.shards`
    changes and changes back, an old manifest must not pass for current."""
    data = make_tree(tmp_path / "birds", {"Alpha_one": 1, "Beta_two": 1}, seconds=SECONDS, sample_rate=RATE)
    signatures, manifests = tmp_path / "sources", tmp_path / "manifests"
    inventory = {label: species_files(data / label) for label in ("Alpha_one", "Beta_two")}
    refresh_signatures(data, inventory, signatures, manifests, 16)
    for shard in ("shard-08", "shard-01"):
        (manifests / f"{shard}.tsv").parent.mkdir(exist_ok=True)
        (manifests / f"{shard}.tsv").write_text("path\tsha256\n")
    assert {p.name for p in signatures.glob("*.tsv")} == {"shard-08.tsv", "shard-01.tsv"}

    refresh_signatures(data, inventory, signatures, manifests, 1)
    for folder in (signatures, signatures / ".stat-cache", manifests):
        assert {p.name for p in folder.glob("*.tsv")} <= {"shard-00.tsv"}, folder


def model_weights(work: Path) -> list[np.ndarray]:
    import keras

    return keras.models.load_model(work / "results/models/convlstm/model.keras", compile=False).get_weights()


def assert_trained_from_scratch(run: Run, before: list[np.ndarray], changed: str) -> list[np.ndarray]:
    """The last training started at epoch 1 because `changed` changed, and shipped other weights than
    `before`; returns the new weights."""
    log = (run.work / "logs/train/convlstm.log").read_text()
    assert f"starting at epoch 1 (changed since it was saved: {changed}" in log, log
    assert re.findall(r"^epoch (\d+)/", log, re.MULTILINE) == ["1", "2"], log
    weights = model_weights(run.work)
    assert any(not np.array_equal(a, b) for a, b in zip(before, weights))
    return weights


def assert_reused(run: Run, before: list[np.ndarray]) -> None:
    """The last training job shipped the finished run's model without training."""
    log = (run.work / "logs/train/convlstm.log").read_text()
    assert "reusing the finished run of the same inputs" in log and not re.findall(r"^epoch ", log, re.MULTILINE), log
    assert json.loads((run.work / "results/models/convlstm/train.json").read_text())["reused"]
    assert all(np.array_equal(a, b) for a, b in zip(before, model_weights(run.work)))


def test_retraining_reuses_only_a_finished_run_of_the_same_inputs(tmp_path: Path) -> None:
    config = {**TINY_CONVLSTM, "convlstm": {**TINY_CONVLSTM["convlstm"], "epochs": 2, "patience": 2}}
    run = Run(tmp_path, config)
    make_tree(run.data, {"Alpha_one": 3, "Beta_two": 3}, seconds=SECONDS, sample_rate=RATE)
    model = "results/models/convlstm/model.keras"
    run.run(model)
    weights = model_weights(run.work)

    # A same-length content edit of one training WAV: labels.tsv and split.tsv stay byte-identical.
    tables = {name: (run.work / name).read_bytes() for name in DATA_TARGETS}
    split = pd.read_csv(run.work / "results/split.tsv", sep="\t", dtype=str, keep_default_na=False)
    edited = split.loc[split["split"] == "train", "path"].iloc[0]
    write_wav(run.data / edited, chirp(SECONDS, RATE, f0=300, f1=900, seed=99), RATE)
    run.run(model)
    assert {name: (run.work / name).read_bytes() for name in DATA_TARGETS} == tables
    weights = assert_trained_from_scratch(run, weights, "the feature files")

    # A front-end change recomputes the features, and the training starts over.
    run.config["frontend"] = {"log_offset": 0.02}
    run.run(model)
    weights = assert_trained_from_scratch(run, weights, "the feature files")

    # split.tsv rewritten as it was (a large one: Snakemake trusts no checksum over 1 MB) reruns the job,
    # which keeps the finished model; so does --forcerun with nothing changed.
    os.utime(run.work / "results/split.tsv")
    assert run.plan(model, args=LARGE_FILES) == {"train_convlstm": 1}
    run_snakemake(run.work, *LARGE_FILES, model, config=run.config)
    assert_reused(run, weights)
    run.run(model, "--forcerun", "train_convlstm")
    assert_reused(run, weights)


def test_a_replaced_vggish_checkpoint_is_an_input_of_train_vggish(tmp_path: Path) -> None:
    """Its content is in the run's identity; as an input of the rule, replacing it at the same path
    reruns the training (with the default trainable: all, no embed job stands between them)."""
    checkpoint = tmp_path / "vggish_model.ckpt"
    checkpoint.write_bytes(b"weights" + bytes.fromhex("57fb808b247547db"))  # the footer of a TF checkpoint
    run = Run(tmp_path, {"models": ["vggish"], "vggish": {"checkpoint": str(checkpoint)}})
    make_tree(run.data, {"Alpha_one": 2, "Beta_two": 2}, seconds=SECONDS, sample_rate=RATE)
    result = run_snakemake(run.work, "--dry-run", "results/models/vggish/model.keras", config=run.config)
    block = (result.stdout + result.stderr).split("rule train_vggish:", 1)[1]
    inputs = next(line for line in block.splitlines() if line.strip().startswith("input:"))
    assert str(checkpoint) in inputs, inputs


def test_added_recording_repacks_only_its_shard(trained: Run, tmp_path: Path) -> None:
    """The new file's shard is packed again, reading only that file's npz; the other shard's pack is untouched."""
    run = Run(shutil.copytree(trained.work, tmp_path / "work", copy_function=shutil.copy2), TINY_CONVLSTM)
    model = "results/models/convlstm/model.keras"
    packs = {p.name: p.stat().st_mtime_ns for p in (run.work / "results/packed").glob("*.npy")}
    write_wav(run.data / "Alpha_one" / "Alpha_one-300_1.wav", chirp(SECONDS, RATE, seed=98), RATE)
    assert run.plan(model) == {"features": 1, "pack": 1, **DOWNSTREAM, "train_convlstm": 1}
    run.run(model)
    shard = shard_of("Alpha_one", 16)
    after = {p.name: p.stat().st_mtime_ns for p in (run.work / "results/packed").glob("*.npy")}
    assert {name for name in after if after[name] != packs.get(name)} == {f"{shard}.npy"}
    assert "7 files" in (log := (run.work / f"logs/pack/{shard}.log").read_text())  # 3 recordings of 2 files, 1 new
    assert "1 read from their npz, 6 kept from the previous pack" in log
    assert "Alpha_one/Alpha_one-300_1.wav" in (run.work / f"results/packed/{shard}.tsv").read_text()
