"""The embedding cache of a frozen VGGish trunk: what it holds, when it is computed again, and the head it trains."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

tf = pytest.importorskip("tensorflow")

from conftest import PREPARATION_TARGETS, REPO_ENV, make_tree, run_snakemake  # noqa: E402
from jibjib.core import fsutil  # noqa: E402
from jibjib.core.settings import RunSettings, TrainSettings  # noqa: E402
from jibjib.models.checkpoint import _TF_TABLE_MAGIC  # noqa: E402
from jibjib.embeddings import CACHEABLE_CUTS, MAX_FLOATS_PER_PATCH, cache_plan  # noqa: E402
from jibjib.embeddings.compute import embed_shard  # noqa: E402
from jibjib.embeddings.reader import EmbeddingCache  # noqa: E402
from jibjib.embeddings.cut import _LAST_FROZEN  # noqa: E402
from jibjib.embeddings.trunk import frozen_part, frozen_weights_digest, head_model, seeded_trunk, trunk_of  # noqa: E402
from jibjib.models.loading import load_for_inference  # noqa: E402
from jibjib.models.vggish import vggish_trunk  # noqa: E402
from jibjib.packing import PackedFeatures, pack_shard  # noqa: E402
from jibjib.features.qc import QCRow, write_manifest  # noqa: E402

from test_reruns import planned  # noqa: E402

LABELS = ("Alpha_one", "Beta_two")
SEED = 3


def write_features(root: Path, n_files: int = 12) -> None:
    """log-mel npz of two classes (energy in the low or the high half of the bands), 1 to 3 patches each,
    with their split (train and val alternate by recording), labels and shard manifest."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n_files):
        label = LABELS[i % 2]
        path = f"{label}/{label}-{i}_1.wav"
        frames = 96 * (1 + i % 3) + 20
        values = rng.normal(0.0, 0.5, (frames, 64)).astype(np.float32) - 2.0
        values[:, :32] += 3.0 if label == LABELS[0] else 0.0
        values[:, 32:] += 3.0 if label == LABELS[1] else 0.0
        fsutil.save_npz(root / "features" / Path(path).with_suffix(".npz"), log_mel=values)
        rows.append({"path": path, "label": label, "species": label, "recording_id": f"r{i}",
                     "split": "val" if i % 4 >= 2 else "train"})
    pd.DataFrame(rows).to_csv(root / "split.tsv", sep="\t", index=False)
    pd.DataFrame({"class_id": [0, 1], "label": list(LABELS)}).to_csv(root / "labels.tsv", sep="\t", index=False)
    write_manifest(root / "manifest.tsv", [QCRow(path=r["path"], label=r["label"], status="processed") for r in rows])
    pack_shard(root / "manifest.tsv", root / "features", root / "packed/s.npy", root / "packed/s.tsv")


def embed(root: Path, cut: str = "fc2", seed: int = SEED) -> dict[str, int]:
    return embed_shard(root / "packed/s.tsv", cut, None, seed, root / "emb/s.npy", root / "emb/s.tsv")


def packed_patches(root: Path) -> tuple[np.ndarray, pd.DataFrame]:
    """Every file's patches from the pack (float16 read as float32, as training reads them), in index order."""
    packs = PackedFeatures.open([root / "packed/s.tsv"])
    blocks = []
    for row, frames in zip(packs.index["row"], packs.index["frames"]):
        n = int(frames) // 96
        blocks.append(packs.read(0, int(row), n * 96).reshape(n, 96, 64).astype(np.float32))
    index = packs.index.copy()
    packs.close()
    return np.concatenate(blocks), index


@pytest.fixture(scope="module")
def features(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("embeddings")
    write_features(root)
    return root


def test_cut_sizes_are_those_of_the_trunk() -> None:
    trunk = vggish_trunk()
    for trainable, (cut, floats) in _LAST_FROZEN.items():
        if cut is not None:
            assert frozen_part(trunk, cut).output.shape[-1] == floats, trainable
    assert CACHEABLE_CUTS == ("fc1_1", "fc1_2", "fc2")


def test_a_cut_that_cannot_be_cached_says_why() -> None:
    assert cache_plan("head", "auto").cut == "fc2" and cache_plan("head", "auto").reason is None
    assert cache_plan("fc1_2", "auto").cut == "fc1_1" and cache_plan("fc2", "auto").cut == "fc1_2"
    too_large = cache_plan("fc1_1", "auto")
    assert not too_large.used
    assert too_large.reason == (f"trainable: fc1_1 freezes the trunk up to conv4_2, whose output of 12,288 floats "
                                f"per patch exceeds the cache's limit of {MAX_FLOATS_PER_PATCH:,} (the cache pays "
                                "from fc1_2 on: trainable head, fc2 or fc1_2)")
    assert cache_plan("all", "auto").reason == "trainable: all leaves no trunk layer frozen"
    assert cache_plan("conv1", "auto").reason == "trainable: conv1 leaves no trunk layer frozen"
    assert cache_plan("head", "off").reason == cache_plan("head", False).reason == "vggish.embedding_cache is off"


def test_cache_is_what_the_frozen_trunk_computes(features: Path) -> None:
    counts = embed(features)
    patches, index = packed_patches(features)
    assert counts == {"files": 12, "computed": 12, "reused": 0, "patches": len(patches)}
    trunk = seeded_trunk(None, SEED)
    expected = trunk.predict(patches, batch_size=64, verbose=0)
    cache = EmbeddingCache.open([features / "emb/s.tsv"])
    cached, file_of = cache.gather(index["path"])
    assert cached.shape == (len(patches), 128)
    np.testing.assert_allclose(cached, expected, rtol=1e-5, atol=1e-5)
    assert np.abs(expected).max() > 1e-3  # not a trivially equal zero
    assert list(np.bincount(file_of)) == [int(f) // 96 for f in index["frames"]]
    # The trunk a training run builds (seeded, then the whole classifier) has the weights the cache names.
    from jibjib.models.build import build_model

    import keras

    keras.utils.set_random_seed(SEED)
    net = build_model(RunSettings.of("vggish", net={"head_units": 8, "multi_label": False, "checkpoint": None,
                                                    "trainable": "head", "dropout": 0.0}), 2)
    assert set(cache.index["trunk"]) == {frozen_weights_digest(trunk_of(net), "fc2")}
    assert frozen_weights_digest(seeded_trunk(None, SEED + 1), "fc2") not in set(cache.index["trunk"])


def test_only_changed_content_or_weights_are_computed_again(tmp_path: Path, features: Path) -> None:
    root = shutil.copytree(features, tmp_path / "copy")
    first = embed(root)
    before = EmbeddingCache.open([root / "emb/s.tsv"]).gather(
        pd.read_csv(root / "emb/s.tsv", sep="\t")["path"])[0].copy()
    inode = (root / "emb/s.npy").stat().st_ino
    assert embed(root)["computed"] == 0
    assert (root / "emb/s.npy").stat().st_ino == inode  # left as it was
    # One file's features change: only it goes through the trunk; the others are copied.
    changed = root / "features/Beta_two/Beta_two-3_1.npz"
    with np.load(changed) as z:
        fsutil.save_npz(changed, log_mel=z["log_mel"] + 1.0)
    pack_shard(root / "manifest.tsv", root / "features", root / "packed/s.npy", root / "packed/s.tsv")
    assert embed(root) == {**first, "computed": 1, "reused": 11}
    index = pd.read_csv(root / "emb/s.tsv", sep="\t")
    after = EmbeddingCache.open([root / "emb/s.tsv"]).gather(index["path"])[0]
    moved = np.repeat(index["path"].to_numpy() == "Beta_two/Beta_two-3_1.wav", index["patches"])
    np.testing.assert_array_equal(after[~moved], before[~moved])
    assert not np.allclose(after[moved], before[moved])
    # Other frozen weights (another seed of the random trunk, as another checkpoint would): all computed again.
    assert embed(root, seed=SEED + 1)["computed"] == 12
    # Another cut: all computed again, 4,096 floats a patch.
    assert embed(root, cut="fc1_2", seed=SEED + 1)["computed"] == 12
    assert EmbeddingCache.open([root / "emb/s.tsv"]).floats == 4096


def settings(**changes) -> RunSettings:
    base = {"seed": SEED, "head_units": 16, "multi_label": False, "checkpoint": None, "trainable": "head",
            "embedding_cache": "auto", "dropout": 0.0, "epochs": 20, "batch_size": 8, "learning_rate": 3e-2,
            "lr_schedule": "constant", "patience": 100, "class_balance": "weights", "shuffle_buffer": 64,
            "mixed_precision": False, "augment": {"enabled": False},
            "call_windows": "all"}  # stationary log-mel holds no calls: every window takes its file's label
    flat = {**base, **changes}
    shared = {field.name for field in dataclasses.fields(TrainSettings)}
    return RunSettings.of("vggish", {k: v for k, v in flat.items() if k in shared},
                          {k: v for k, v in flat.items() if k not in shared})


def train_run(root: Path, out: str, embeddings: bool = True, **changes) -> dict:
    """train.json's content of a VGGish run from the packed features (and the cache unless told)."""
    from jibjib.training.run import train

    return train(settings(**changes), root / "split.tsv", root / "labels.tsv", root / "features", root / out,
                 packed=[root / "packed/s.tsv"], embeddings=[root / "emb/s.tsv"] if embeddings else None).to_dict()


def test_head_trains_from_the_cache_and_ships_the_whole_classifier(tmp_path: Path, features: Path) -> None:
    root = shutil.copytree(features, tmp_path / "copy")
    embed(root)
    report = train_run(root, "model")
    assert report["input"] == "embeddings"
    assert report["embedding_cache"] == {"used": True, "cut": "fc2", "augmentation_not_applied": []}
    assert report["inputs"]["embeddings"] != "none"
    history = pd.read_csv(root / "model/history.tsv", sep="\t")
    assert history["loss"].iloc[-1] < 0.5 * history["loss"].iloc[0]
    assert history["val_accuracy"].iloc[-1] == 1.0
    # model.keras is the whole classifier: on log-mel patches it gives what its head gives on the cache.
    model = load_for_inference(root / "model/model.keras")
    patches, index = packed_patches(root)
    cached = EmbeddingCache.open([root / "emb/s.tsv"]).gather(index["path"])[0]
    through_trunk = model.predict(patches, batch_size=64, verbose=0)
    from_cache = head_model(model, "fc2").predict(cached, batch_size=64, verbose=0)
    np.testing.assert_allclose(through_trunk, from_cache, rtol=1e-4, atol=1e-4)
    targets = np.repeat(index["path"].str.startswith(LABELS[1]).to_numpy(int), index["frames"] // 96)
    assert (through_trunk.argmax(axis=1) == targets).mean() == 1.0


def test_mixup_only_sampling_smoothing_and_sigmoid_from_the_cache(tmp_path: Path, features: Path) -> None:
    root = shutil.copytree(features, tmp_path / "copy")
    embed(root)
    report = train_run(root, "model", epochs=2, multi_label=True, class_balance="sampling", label_smoothing=0.1,
                       augment={"enabled": True, "mixup_probability": 0.5})
    assert report["embedding_cache"]["augmentation_not_applied"] == [
        "random_offsets", "gain_db", "background_probability", "time_masks", "freq_masks", "union_mix_probability"]
    assert report["augmentation"]["mixup_probability"] == 0.5 and report["augmentation"]["union_mix_probability"] == 0
    assert report["augmentation"]["gain_db"] == 0.0 and report["augmentation"]["time_masks"] == 0
    assert report["epochs_completed"] == 2
    assert np.isfinite(pd.read_csv(root / "model/history.tsv", sep="\t")["loss"]).all()


def test_a_cache_of_other_weights_is_refused(tmp_path: Path, features: Path) -> None:
    root = shutil.copytree(features, tmp_path / "copy")
    embed(root, seed=SEED + 1)
    with pytest.raises(ValueError, match="computed with another frozen trunk than this run's"):
        train_run(root, "model", epochs=1)


def test_without_a_cacheable_cut_training_runs_through_the_trunk_and_says_why(tmp_path: Path,
                                                                              features: Path) -> None:
    root = shutil.copytree(features, tmp_path / "copy")
    embed(root)
    with pytest.raises(ValueError, match="cannot train from them: trainable: fc1_1 freezes the trunk up to conv4_2"):
        train_run(root, "model", trainable="fc1_1", epochs=1)
    report = train_run(root, "model", embeddings=False, trainable="fc1_1", epochs=1)
    assert report["input"] == "packed"
    assert report["embedding_cache"]["used"] is False
    assert report["embedding_cache"]["reason"].startswith("trainable: fc1_1 freezes the trunk up to conv4_2")


CACHE_RSS_CHILD = """
import re, sys
import pandas as pd
from jibjib.training.inputs import cached
from jibjib.training.inputs.spec import InputSpec
from jibjib.training.windows import WindowRule
# The cache names its trunk "t": no model is needed to check it is this run's.
cached.trunk_of = lambda net: None
cached.frozen_weights_digest = lambda trunk, cut: "t"
index = pd.read_csv(sys.argv[1], sep="\\t", dtype={"path": str})
files = pd.DataFrame({"path": index["path"], "class_ids": [(i % 2,) for i in range(len(index))]})
train, val = files.iloc[::2].reset_index(drop=True), files.iloc[1::2].reset_index(drop=True)
spec = InputSpec(windows=WindowRule.every_window(), n_classes=2)
train_batches, val_batches = cached.cached_datasets(None, "fc1_2", [sys.argv[1]], train, val, spec,
                                                   64)
rows = sum(int(x.shape[0]) for ds in (train_batches(0), val_batches) for x, _ in ds)
print(rows, re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read())[1])
"""


def write_wide_cache(root: Path, files: int, patches: int = 10, floats: int = 4096) -> Path:
    """A cache of the fc1_2 cut's width (16 kB a patch); its array a sparse file (nothing written but a few rows)."""
    root.mkdir(parents=True)
    array = np.lib.format.open_memmap(root / "s.npy", mode="w+", dtype="<f4", shape=(files * patches, floats))
    array[::101] = 1.0
    del array
    pd.DataFrame({"path": [f"Alpha_one/Alpha_one-{i}_1.wav" for i in range(files)], "row": np.arange(files) * patches,
                  "patches": patches, "content": "c", "cut": "fc1_2", "trunk": "t"}).to_csv(root / "s.tsv", sep="\t",
                                                                                            index=False)
    return root / "s.tsv"


def test_training_from_the_cache_reads_its_rows_without_holding_the_cache_in_memory(tmp_path: Path) -> None:
    """Peak RSS of a process that reads one epoch of train and val batches from a cache: the same for a cache
    four times larger (the old input copied every row of both splits into memory: 11 GB at 80,000 clips)."""
    peaks = []
    for files in (300, 1200):
        index = write_wide_cache(tmp_path / str(files), files)
        result = subprocess.run([sys.executable, "-c", CACHE_RSS_CHILD, str(index)], capture_output=True, text=True,
                                env=REPO_ENV, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        rows, peak_kb = (int(v) for v in result.stdout.split()[-2:])
        assert rows == files * 10
        peaks.append(peak_kb * 1024)
    # 150 MB more of cache rows would be 20 % more than the reading process's whole footprint.
    assert peaks[1] < 1.10 * peaks[0], [f"{p / 2**20:.0f} MB" for p in peaks]


# --- the workflow: what reruns the embed stage ---------------------------------------------------------------

CONFIG = {"models": ["vggish"], "features": {"shards": 2},
          "vggish": {"trainable": "head", "head_units": 4, "epochs": 1, "batch_size": 4}}
MODEL = "results/models/vggish/model.keras"


def test_cache_is_rebuilt_for_the_checkpoint_and_not_for_a_training_setting(tmp_path: Path) -> None:
    make_tree(tmp_path / "birds", {"Alpha_one": 2, "Beta_two": 2}, seconds=1.2, sample_rate=16000)
    config = {**CONFIG, "data_dir": str(tmp_path / "birds")}
    caches = ["results/embeddings/shard-00.tsv", "results/embeddings/shard-01.tsv"]
    run_snakemake(tmp_path, *caches, *PREPARATION_TARGETS, config=config)

    def plan(target: str = MODEL, train: dict | None = None, **vggish) -> dict[str, int]:
        changed = {**config, "vggish": {**config["vggish"], **vggish}, "train": train or {}}
        return planned(run_snakemake(tmp_path, "--dry-run", target, config=changed))

    assert plan() == {"train_vggish": 1}
    for training_setting in ({"learning_rate": 0.01}, {"epochs": 3}, {"head_units": 8}, {"dropout": 0.2}):
        assert plan(**training_setting) == {"train_vggish": 1}, training_setting
    assert plan(train={"label_smoothing": 0.1}).get("embed") is None
    assert plan(trainable="fc2")["embed"] == 2  # another cut
    assert plan(embedding_cache="off").get("embed") is None
    # A checkpoint (config checks read only its format; the dry run does not load it) reruns every shard.
    checkpoint = tmp_path / "vggish_model.ckpt"
    checkpoint.write_bytes(b"\0" * 64 + _TF_TABLE_MAGIC)
    assert plan(checkpoint=str(checkpoint))["embed"] == 2
    # Without a checkpoint train.seed draws the trunk: the cache is computed again, with other weights.
    before = set(pd.read_csv(tmp_path / caches[0], sep="\t")["trunk"])
    assert plan(caches[0], train={"seed": 5}) == {"embed": 1}
    run_snakemake(tmp_path, *caches, config={**config, "train": {"seed": 5}})
    after = set(pd.read_csv(tmp_path / caches[0], sep="\t")["trunk"])
    assert len(after) == 1 and after != before
    log = (tmp_path / "logs/embed/shard-00.log").read_text()
    assert "random weights of seed 5" in log and " 0 kept from the previous cache" in log, log
    # The rule trains the head from the cache and ships the whole classifier.
    run_snakemake(tmp_path, MODEL, config={**config, "train": {"seed": 5}})
    report = json.loads((tmp_path / "results/models/vggish/train.json").read_text())
    assert report["input"] == "embeddings" and report["embedding_cache"]["cut"] == "fc2"
    assert load_for_inference(tmp_path / MODEL).get_layer("vggish").get_layer("fc2") is not None
