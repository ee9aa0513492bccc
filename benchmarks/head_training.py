"""Is head training from the embedding cache worth its stage? One epoch from the cache against one through the trunk.

On generated log-mel files (all in train, packed as the workflow packs
them), VGGish with `trainable: head` and random trunk weights:

1. the one-off embedding pass (jibjib embed's function on the shard);
2. the same training run twice, from the cache and through the frozen trunk
   (embedding_cache off), with the same examples, batch size and settings,
   augmentation off in both (only mixup could apply to the cache). The
   figure per run is its fastest epoch after the first (which traces the
   graphs), from history.tsv.

Target: >= 100x faster per epoch from the cache.

    python benchmarks/head_training.py [--files 300] [--patches 3] [--batch 32] [--epochs 3]

The last line reads `head training: <X> s per epoch from the cache, <Y> s
through the frozen trunk (<R>x); embedding pass <Z> s`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from jibjib.core import fsutil  # noqa: E402
from jibjib.core.settings import RunSettings  # noqa: E402
from jibjib.features.qc import QCRow, write_manifest  # noqa: E402

LABELS = ["Alpha_one", "Beta_two", "Gamma_three", "Delta_four"]


def make_corpus(root: Path, n_files: int, patches_per_file: int) -> None:
    """Random log-mel npz files (a partial patch at the end of each), all in train; their QC manifest,
    split.tsv, labels.tsv and the packed features."""
    from jibjib.packing import pack_shard

    rng = np.random.default_rng(0)
    rows = []
    for i in range(n_files):
        label = LABELS[i % len(LABELS)]
        path = f"{label}/{label}-{i}_1.wav"
        log_mel = rng.normal(-4, 1, (96 * patches_per_file + 38, 64)).astype(np.float32)
        log_mel[:, 16 * (i % 4): 16 * (i % 4 + 1)] += 2.0  # something for the head to learn
        fsutil.save_npz(root / "features" / Path(path).with_suffix(".npz"), log_mel=log_mel)
        rows.append({"path": path, "label": label, "species": label, "recording_id": f"{label}-{i}",
                     "split": "train"})
    pd.DataFrame(rows).to_csv(root / "split.tsv", sep="\t", index=False)
    pd.DataFrame({"class_id": range(len(LABELS)), "label": LABELS}).to_csv(root / "labels.tsv", sep="\t", index=False)
    write_manifest(root / "manifest.tsv", [QCRow(path=r["path"], label=r["label"], status="processed") for r in rows])
    pack_shard(root / "manifest.tsv", root / "features", root / "packed/shard-00.npy", root / "packed/shard-00.tsv")


def settings(args: argparse.Namespace, cache: str) -> RunSettings:
    return RunSettings.of(
        "vggish",
        train={"seed": 0, "lr_schedule": "constant", "class_balance": "weights", "shuffle_buffer": 4096,
               "mixed_precision": False, "augment": {"enabled": False}},
        net={"head_units": 100, "multi_label": False, "checkpoint": None, "trainable": "head",
             "embedding_cache": cache, "dropout": 0.0, "epochs": args.epochs, "batch_size": args.batch,
             "learning_rate": 1e-3, "patience": 100})


def epoch_seconds(root: Path, out: str, args: argparse.Namespace, cache: str) -> tuple[float, list[float]]:
    """(fastest epoch after the first, every epoch) of one training run, in seconds, from its history."""
    from jibjib.training.run import train

    train(settings(args, cache), root / "split.tsv", root / "labels.tsv", root / "features", root / out,
          packed=[root / "packed/shard-00.tsv"],
          embeddings=[root / "embeddings/shard-00.tsv"] if cache == "auto" else None)
    history = pd.read_csv(root / out / "history.tsv", sep="\t")
    later = history["seconds"].iloc[1:]
    return float(later.min() if len(later) else history["seconds"].iloc[0]), history["seconds"].tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=300)
    parser.add_argument("--patches", type=int, default=3, help="patches per file")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3, help="per run; the first traces the graphs")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from jibjib.embeddings.compute import embed_shard

    with tempfile.TemporaryDirectory(prefix="head-training-") as tmp:
        root = Path(tmp)
        make_corpus(root, args.files, args.patches)
        patches = args.files * args.patches
        print(f"corpus: {args.files} files, {patches} patches; batch {args.batch}, {args.epochs} epochs per run",
              flush=True)
        started = time.monotonic()
        counts = embed_shard(root / "packed/shard-00.tsv", "fc2", None, 0, root / "embeddings/shard-00.npy",
                             root / "embeddings/shard-00.tsv")
        embed_s = time.monotonic() - started
        print(f"embedding pass: {embed_s:.1f} s ({counts['patches']} patches, {counts['patches'] / embed_s:.0f} "
              "patches/s, trunk built and weights hashed included)", flush=True)
        cached, cached_all = epoch_seconds(root, "from-cache", args, "auto")
        print(f"from the cache: {cached:.2f} s per epoch ({patches / max(cached, 1e-9):.0f} patches/s; "
              f"every epoch: {', '.join(f'{s:.2f}' for s in cached_all)} s)", flush=True)
        trunk, trunk_all = epoch_seconds(root, "through-trunk", args, "off")
        print(f"through the frozen trunk: {trunk:.2f} s per epoch ({patches / trunk:.0f} patches/s; "
              f"every epoch: {', '.join(f'{s:.1f}' for s in trunk_all)} s)", flush=True)
        print(f"head training: {cached:.2f} s per epoch from the cache, {trunk:.1f} s through the frozen trunk "
              f"({trunk / max(cached, 1e-9):.0f}x); embedding pass {embed_s:.1f} s")


if __name__ == "__main__":
    main()
