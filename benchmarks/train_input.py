"""Is the npz input pipeline a bottleneck for training, and does memory grow with the corpus?

1. Throughput: VGGish training steps fed by jibjib's streaming tf.data pipeline
   (lazy npz reads) vs. the same model fed from tensors already in memory.
   Prints examples/s for both and their ratio (target >= 0.9).
2. Memory: peak RSS of a whole `jibjib train` run (one epoch, ConvLSTM) on
   --memory-files and on 4x as many feature files, each in a fresh process.
   Prints both and the growth (target <= 20 %).

    python benchmarks/train_input.py [--files 48] [--steps 12] [--trainable all] [--memory-files 500]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from jibjib import fsutil  # noqa: E402

LABELS = ["Alpha_one", "Beta_two", "Gamma_three", "Delta_four"]


def make_corpus(root: Path, n_files: int, patches_per_file: int = 10) -> None:
    """Random log-mel npz files (10 s each) plus split.tsv and labels.tsv, all in train."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n_files):
        label = LABELS[i % len(LABELS)]
        path = f"{label}/{label}-{i}_1.wav"
        log_mel = rng.normal(-4, 1, (96 * patches_per_file + 38, 64)).astype(np.float32)
        fsutil.save_npz(root / "features" / Path(path).with_suffix(".npz"), log_mel=log_mel)
        rows.append({"path": path, "label": label, "recording_id": f"{label}-{i}", "split": "train"})
    pd.DataFrame(rows).to_csv(root / "split.tsv", sep="\t", index=False)
    pd.DataFrame({"class_id": range(len(LABELS)), "label": LABELS, "n_files": 1, "n_recordings": 1,
                  "seconds": 10.0}).to_csv(root / "labels.tsv", sep="\t", index=False)


def throughput(root: Path, steps: int, trainable: str, batch_size: int = 32) -> tuple[float, float]:
    import keras
    import tensorflow as tf

    from jibjib.data import InputSpec, load_patches, split_files, training_dataset
    from jibjib.models import vggish_classifier
    from jibjib.training.augment import Augmentation

    files = split_files(root / "split.tsv", root / "labels.tsv", root / "features", "train")
    spec = InputSpec(n_classes=len(LABELS), shuffle_buffer=1024, augmentation=Augmentation(enabled=False))
    streamed = training_dataset(files, spec, batch_size, training=True).map(lambda x, y: (x, tf.argmax(y, 1))).repeat()
    patches = np.concatenate([load_patches(f) for f in files["feature"]])
    class_ids = np.repeat(files["class_id"].to_numpy(), [len(load_patches(f)) for f in files["feature"]])
    in_memory = (tf.data.Dataset.from_tensor_slices((patches, class_ids)).shuffle(len(patches), seed=0)
                 .batch(batch_size).repeat().prefetch(tf.data.AUTOTUNE))

    # One model for both feeds, warmed on both, then timed alternately: the
    # first timed run of a fresh model would otherwise carry its warm-up.
    keras.utils.set_random_seed(0)
    model = vggish_classifier(len(LABELS), trainable=trainable)
    model.compile(keras.optimizers.Adam(1e-4), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    feeds = {"streamed": streamed, "in_memory": in_memory}
    for dataset in feeds.values():
        model.fit(dataset, steps_per_epoch=2, epochs=1, verbose=0)
    seconds = {name: 0.0 for name in feeds}
    for _ in range(2):
        for name, dataset in feeds.items():
            start = time.perf_counter()
            model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)
            seconds[name] += time.perf_counter() - start
    return 2 * steps * batch_size / seconds["streamed"], 2 * steps * batch_size / seconds["in_memory"]


def peak_memory_mb(root: Path) -> float:
    """Peak RSS of one `jibjib train` run in a fresh process."""
    settings = {"seed": 0, "class_balance": "weights", "mixed_precision": False, "shuffle_buffer": 256,
                "seq_len": 10, "short_files": "pad", "conv_filters": [8, 16], "lstm_units": 16, "dense_units": 16,
                "dropout": 0.0, "multi_label": False, "epochs": 1, "batch_size": 16, "learning_rate": 1e-3,
                "patience": 1}
    code = (
        "import json, resource, sys; from jibjib.train import train; "
        f"train('convlstm', {str(root / 'split.tsv')!r}, {str(root / 'labels.tsv')!r}, "
        f"{str(root / 'features')!r}, {str(root / 'model')!r}, json.loads({json.dumps(settings)!r})); "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return int(out.stdout.strip().splitlines()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=48, help="feature files (10 patches each)")
    parser.add_argument("--steps", type=int, default=12, help="timed training steps per feed")
    parser.add_argument("--trainable", default="all", help="vggish.trainable for the throughput run")
    parser.add_argument("--memory-files", type=int, default=500,
                        help="files of the 1x memory run; large enough that holding them would show")
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        small, large = Path(tmp, "small"), Path(tmp, "large")
        make_corpus(small, args.files)
        streamed, in_memory = throughput(small, args.steps, args.trainable)
        print(f"VGGish training (trainable={args.trainable}, batch 32, 2 x {args.steps} steps per feed, alternating):")
        print(f"  streamed from npz : {streamed:7.1f} examples/s")
        print(f"  tensors in memory : {in_memory:7.1f} examples/s")
        print(f"  ratio             : {streamed / in_memory:.2f} (target >= 0.9)")
        if not args.skip_memory:
            make_corpus(small_mem := Path(tmp, "memory_1x"), args.memory_files)
            make_corpus(large, 4 * args.memory_files)
            one, four = peak_memory_mb(small_mem), peak_memory_mb(large)
            megabytes = 4 * args.memory_files * 998 * 64 * 4 / 2**20
            print(f"Peak memory of a training run (ConvLSTM, one epoch; the 4x features total {megabytes:.0f} MB):")
            print(f"  {args.memory_files:5d} files : {one:7.0f} MB")
            print(f"  {4 * args.memory_files:5d} files : {four:7.0f} MB")
            print(f"  growth      : {100 * (four / one - 1):+.1f} % (target <= 20 %)")


if __name__ == "__main__":
    main()
