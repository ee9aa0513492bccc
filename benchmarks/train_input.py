"""Can the training input feed a GPU? Throughput of the CPU side of the input alone, packed against per-file npz.

The augmentation runs in the training step, on the device that trains
(jibjib.training.trainer); the CPU side only gathers examples (and, with
the augmentation on, a stretch of a background recording beside each and a
seed per example): jibjib.training.inputs.gathered_batches.

1. Patches/s of one training epoch of each input as the CPU delivers it,
   without a model, from files on disk: the per-file npz reader and the
   packed features (jibjib.packing), each without and with the default
   augmentation, each with a cold page cache (the files dropped from it
   before the pass) and a warm one. Targets on 2 cores: packed >= 50,000
   patches/s without augmentation and with it, >= 5x the npz reader.
2. For reference: the default augmentation's own throughput on the CPU
   (augment_gathered over gathered batches held in memory, on all cores),
   and the packed input with the augmentation applied on the CPU
   (training_dataset: where it ran before it moved into the training step).
3. Peak RSS of a fresh process that runs one packed epoch with the default
   augmentation over the corpus and over 4x the corpus (target: within 10 %).

    python benchmarks/train_input.py [--files 1500] [--patches 10] [--batch 64] [--skip-memory]

Beside each warm figure: patches per second of the process's own CPU time
(all its threads). The wall-clock figures are the targets', but on a machine
shared with other jobs they swing by half between runs; the CPU time much less.

The last line reads `input pipeline: <N> patches/s without augmentation, <M>
with it (<R>x the per-file npz reader)`: packed, warm cache.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from jibjib.core import fsutil  # noqa: E402
from jibjib.features.qc import QCRow, write_manifest  # noqa: E402

LABELS = ["Alpha_one", "Beta_two", "Gamma_three", "Delta_four"]


def make_corpus(root: Path, n_files: int, patches_per_file: int) -> None:
    """Random log-mel npz files (a partial patch at the end of each), one in ten a background recording,
    all in train; their QC manifest, split.tsv, labels.tsv and the packed features."""
    from jibjib.packing import pack_shard

    rng = np.random.default_rng(0)
    rows = []
    for i in range(n_files):
        label = "noise" if i % 10 == 9 else LABELS[i % len(LABELS)]
        path = f"{label}/{label}-{i}_1.wav"
        log_mel = rng.normal(-4, 1, (96 * patches_per_file + 38, 64)).astype(np.float32)
        fsutil.save_npz(root / "features" / Path(path).with_suffix(".npz"), log_mel=log_mel)
        rows.append({"path": path, "label": label, "species": "" if label == "noise" else label,
                     "recording_id": f"{label}-{i}", "split": "train"})
    pd.DataFrame(rows).to_csv(root / "split.tsv", sep="\t", index=False)
    pd.DataFrame({"class_id": range(len(LABELS)), "label": LABELS}).to_csv(root / "labels.tsv", sep="\t", index=False)
    write_manifest(root / "manifest.tsv", [QCRow(path=r["path"], label=r["label"], status="processed") for r in rows])
    pack_shard(root / "manifest.tsv", root / "features", root / "packed/shard-00.npy", root / "packed/shard-00.tsv")


def drop_from_page_cache(root: Path) -> None:
    """Evict the corpus's files from the page cache (written back first), so the next pass reads the disk."""
    os.sync()
    for path in root.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def datasets(root: Path, batch: int, augmented: bool) -> dict:
    """The CPU side of each training input (gathered batches), and the packed one augmented on the CPU."""
    from jibjib.core.settings import AugmentSettings
    from jibjib.labels.tables import split_files
    from jibjib.packing import PackedFeatures
    from jibjib.training.inputs import InputSpec, gathered_batches, training_dataset
    from jibjib.training.windows import WindowRule

    files = split_files(root / "split.tsv", root / "labels.tsv", root / "features", "train")
    spec = InputSpec(windows=WindowRule.every_window(),  # synthetic log-mel: the plain grid
                     n_classes=len(LABELS), multi_label=True,
                     augmentation=AugmentSettings.from_dict({"enabled": augmented}))
    packs = PackedFeatures.open([root / "packed/shard-00.tsv"])
    return {"npz": gathered_batches(files, spec, batch, training=True, seed=0),
            "packed": gathered_batches(files, spec, batch, training=True, seed=0, packs=packs),
            "packed, augmented on the CPU": training_dataset(files, spec, batch, training=True, seed=0, packs=packs)}


def epoch_rate(dataset, cpu: list[float] | None = None) -> float:
    """Patches/s of one pass; appends the patches per second of this process's CPU time to `cpu` if given
    (a figure other jobs on a shared machine disturb less than the wall clock)."""
    start, used, patches = time.perf_counter(), time.process_time(), 0
    for inputs, _ in dataset:
        patches += int((inputs["units"] if isinstance(inputs, dict) else inputs).shape[0])
    if cpu is not None:
        cpu.append(patches / (time.process_time() - used))
    return patches / (time.perf_counter() - start)


def throughput(root: Path, batch: int) -> dict[tuple[str, bool, str], float]:
    """patches/s by (input, augmented, cache)."""
    rates = {}
    for augmented in (False, True):
        feeds = datasets(root, batch, augmented)
        if not augmented:
            del feeds["packed, augmented on the CPU"]  # the same as packed: nothing to augment
        for name, dataset in feeds.items():
            epoch_rate(dataset.take(3))  # builds the pipeline's functions
            drop_from_page_cache(root)
            rates[name, augmented, "cold"] = epoch_rate(dataset)
            cpu: list[float] = []
            rates[name, augmented, "warm"] = max(epoch_rate(dataset, cpu), epoch_rate(dataset, cpu))
            rates[name, augmented, "cpu"] = max(cpu)
    return rates


def augmentation_rate(root: Path, batch: int) -> float:
    """patches/s of the default augmentation alone on the CPU: over an epoch's gathered batches held in memory,
    mapped on every core as the CPU input once ran it."""
    import tensorflow as tf

    from jibjib.core.params import VGGISH
    from jibjib.core.settings import AugmentSettings
    from jibjib.training.augment import augment_gathered

    aug = AugmentSettings.from_dict({"enabled": True})
    held = datasets(root, batch, augmented=True)["packed"].cache()
    epoch_rate(held)  # reads the epoch into memory
    augmented = held.map(lambda b, t: augment_gathered(b, t, aug, VGGISH), num_parallel_calls=tf.data.AUTOTUNE)
    epoch_rate(augmented.take(3))
    return max(epoch_rate(augmented), epoch_rate(augmented))


def peak_rss_child(root: str, batch: int) -> None:
    epoch_rate(datasets(Path(root), batch, augmented=True)["packed"])
    print(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text())[1])


def peak_rss_mb(root: Path, batch: int) -> float:
    """Peak RSS (VmHWM) of one augmented packed epoch over the corpus at `root`, in a fresh process."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, __file__, "--rss-child", str(root), "--batch", str(batch)],
                         capture_output=True, text=True, env=env, check=True)
    return int(out.stdout.strip().splitlines()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1500, help="feature files of the corpus")
    parser.add_argument("--patches", type=int, default=10, help="patches per file (plus a partial one)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--rss-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        return peak_rss_child(args.rss_child, args.batch)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

    with tempfile.TemporaryDirectory(dir=os.environ.get("JIBJIB_BENCH_DIR")) as tmp:
        one = Path(tmp, "1x")
        started = time.perf_counter()
        make_corpus(one, args.files, args.patches)
        patches = args.files * args.patches
        print(f"corpus: {args.files} files, {patches} patches ({patches * 96 * 64 * 4 / 2**20:.0f} MB of float32 "
              f"log-mel; written and packed in {time.perf_counter() - started:.0f} s), batch {args.batch}, "
              f"{os.cpu_count()} cores")
        rates = throughput(one, args.batch)
        print(f"{'input (CPU side)':30} {'augmentation':13} {'cold cache':>12} {'warm cache':>12} "
              f"{'warm, per CPU-s':>16}   (patches/s)")
        for augmented in (False, True):
            for name in ("npz", "packed", "packed, augmented on the CPU"):
                if (name, augmented, "warm") in rates:
                    print(f"{name:30} {'default' if augmented else 'none':13} "
                          f"{rates[name, augmented, 'cold']:12,.0f} {rates[name, augmented, 'warm']:12,.0f} "
                          f"{rates[name, augmented, 'cpu']:16,.0f}")
        print(f"{'the augmentation alone, on the CPU':44} {augmentation_rate(one, args.batch):26,.0f}")
        for augmented in (False, True):
            packed, npz = rates["packed", augmented, "warm"], rates["npz", augmented, "warm"]
            print(f"packed {'with' if augmented else 'without'} augmentation: {packed:,.0f} patches/s "
                  f"(target >= 50,000: {'met' if packed >= 50_000 else 'missed'}), {packed / npz:.1f}x the npz "
                  f"reader (target >= 5x: {'met' if packed >= 5 * npz else 'missed'})")
        if not args.skip_memory:
            four = Path(tmp, "4x")
            make_corpus(four, 4 * args.files, args.patches)
            small, large = peak_rss_mb(one, args.batch), peak_rss_mb(four, args.batch)
            growth = 100 * (large / small - 1)
            print(f"peak RSS of an augmented packed epoch: {small:.0f} MB ({args.files} files), {large:.0f} MB "
                  f"({4 * args.files} files): {growth:+.1f} % (target within 10 %: "
                  f"{'met' if abs(growth) <= 10 else 'missed'})")
        plain, augmented = rates["packed", False, "warm"], rates["packed", True, "warm"]
        print(f"input pipeline: {plain:.0f} patches/s without augmentation, {augmented:.0f} with it "
              f"({plain / rates['npz', False, 'warm']:.1f}x the per-file npz reader)")


if __name__ == "__main__":
    main()
