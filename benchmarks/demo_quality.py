"""File-level macro-F1 of the trained models on the test split (run after `make demo`).

Issue 3 asks both demo models to reach file-level macro-F1 >= 0.8. A file's
score is the mean softmax over its patches (VGGish) or its sequences
(ConvLSTM); the predicted class is the highest mean. The evaluate stage will
report this and much more; this script only checks the training target.

    python benchmarks/demo_quality.py [--results results]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from jibjib.data import load_patches, split_files, to_sequences  # noqa: E402


def file_scores(model: keras.Model, name: str, npz: str, seq_len: int) -> np.ndarray:
    patches = load_patches(npz)
    inputs = patches if name == "vggish" else dict(zip(("patches", "mask"), to_sequences(patches, seq_len)))
    logits = model.predict(inputs, verbose=0)
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (probabilities / probabilities.sum(axis=1, keepdims=True)).mean(axis=0)


def macro_f1(truth: np.ndarray, predicted: np.ndarray, n_classes: int) -> float:
    scores = []
    for c in range(n_classes):
        tp = np.sum((predicted == c) & (truth == c))
        wrong = np.sum((predicted == c) != (truth == c))  # false positives + false negatives
        scores.append(2 * tp / (2 * tp + wrong) if tp + wrong else 1.0)
    return float(np.mean(scores))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="results")
    args = parser.parse_args()
    results = Path(args.results)
    files = split_files(results / "split.tsv", results / "labels.tsv", results / "features", "test")
    n_classes = len(pd.read_csv(results / "labels.tsv", sep="\t"))
    for name in ("vggish", "convlstm"):
        path = results / "models" / name / "model.keras"
        if not path.exists():
            print(f"{name}: no {path}")
            continue
        model = keras.models.load_model(path)
        seq_len = model.inputs[0].shape[1]
        predicted = np.array([file_scores(model, name, f, seq_len).argmax() for f in files["feature"]])
        truth = files["class_id"].to_numpy()
        print(f"{name}: {len(files)} test files, file accuracy {np.mean(predicted == truth):.3f}, "
              f"file macro-F1 {macro_f1(truth, predicted, n_classes):.3f} (target >= 0.8)")


if __name__ == "__main__":
    main()
