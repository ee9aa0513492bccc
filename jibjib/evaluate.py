"""The evaluation step: score a trained model on the test split and write its report.

Scores are computed per patch (VGGish) or per sequence of patches (ConvLSTM)
and averaged into one score per file, because users act on files.  The
validation split is used only to fit the calibration temperature and the
per-class thresholds; every reported figure is measured on the test split.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

from . import fsutil, metrics
from .data import load_patches, split_files, to_sequences

# Patches per forward pass: large enough to keep a CPU busy, small enough for
# any GPU; memory does not grow with the size of the split.
BATCH_PATCHES = 256


def _batches(files: pd.DataFrame, seq_len: int | None) -> Iterator[tuple[Any, np.ndarray]]:
    """Model inputs in batches of about BATCH_PATCHES patches, with the file each example came from."""
    inputs, owners, size = [], [], 0
    for index, npz in enumerate(files["feature"]):
        patches = load_patches(npz)
        if patches.shape[0] == 0:
            continue  # too short for one patch: no score (reported as files_without_patches)
        if seq_len is None:
            example = patches
        else:
            # Inference always pads: `short_files: skip` only keeps short files out of training.
            example = to_sequences(patches, seq_len, "pad")
        n = len(example) if seq_len is None else len(example[0])
        inputs.append(example)
        owners.append(np.full(n, index))
        size += patches.shape[0]
        if size >= BATCH_PATCHES:
            yield _stack(inputs, seq_len), np.concatenate(owners)
            inputs, owners, size = [], [], 0
    if inputs:
        yield _stack(inputs, seq_len), np.concatenate(owners)


def _stack(inputs: list, seq_len: int | None) -> Any:
    if seq_len is None:
        return np.concatenate(inputs)
    return {"patches": np.concatenate([s for s, _ in inputs]), "mask": np.concatenate([m for _, m in inputs])}


def model_seq_len(model: Any) -> int | None:
    """Patches per sequence for a ConvLSTM (two inputs), None for a per-patch model."""
    return int(model.inputs[0].shape[1]) if len(model.inputs) > 1 else None


def score_files(model: Any, files: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Logits of every patch (or sequence) of `files` and the row of `files` each belongs to."""
    seq_len = model_seq_len(model)
    logits, owners = [], []
    for inputs, owner in _batches(files, seq_len):
        logits.append(np.asarray(model.predict_on_batch(inputs), dtype=np.float64))
        owners.append(owner)
    n_classes = int(model.outputs[0].shape[-1])
    if not logits:
        return np.zeros((0, n_classes)), np.zeros(0, int)
    return np.concatenate(logits), np.concatenate(owners)


@dataclasses.dataclass
class ScoredSplit:
    """The logits of one split's patches (or sequences), tied to the files they came from."""

    files: pd.DataFrame  # the files with at least one patch, in split.tsv order
    logits: np.ndarray  # (units, classes)
    owner: np.ndarray  # row of `files` for each unit
    unscored: int  # files too short for one patch

    @property
    def y(self) -> np.ndarray:
        return self.files["class_id"].to_numpy()

    def file_scores(self, temperature: float = 1.0, multi_label: bool = False) -> np.ndarray:
        return metrics.file_scores(self.logits, self.owner, len(self.files), temperature, multi_label)


def score_split(model: Any, files: pd.DataFrame) -> ScoredSplit:
    logits, owner = score_files(model, files)
    scored = np.unique(owner)
    # Renumber owners to the files that have patches.
    return ScoredSplit(files.iloc[scored].reset_index(drop=True), logits, np.searchsorted(scored, owner),
                       len(files) - len(scored))


def evaluate(
    model_dir: str | os.PathLike,
    labels_tsv: str | os.PathLike,
    split_tsv: str | os.PathLike,
    features_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    target_precision: float = 0.9,
    top_k: int = 5,
) -> dict[str, Any]:
    """Write metrics.json, report.md, file_scores.tsv, confusion.tsv, thresholds.tsv and figures to out_dir."""
    import keras

    from . import figures

    model_dir, out = Path(model_dir), Path(out_dir)
    trained = json.loads((model_dir / "train.json").read_text())
    model = keras.models.load_model(model_dir / "model.keras", compile=False)
    multi_label = bool(trained["settings"].get("multi_label", False))
    classes = pd.read_csv(labels_tsv, sep="\t", keep_default_na=False)["label"].astype(str).tolist()
    unit = "patch" if model_seq_len(model) is None else "sequence"

    def scored(split: str) -> ScoredSplit:
        files = split_files(split_tsv, labels_tsv, features_dir, split)
        print(f"evaluate {trained['model']}: scoring {len(files)} {split} files", file=sys.stderr, flush=True)
        return score_split(model, files)

    val, test = scored("val"), scored("test")
    temperature = metrics.fit_temperature(val.logits, val.owner, val.y, multi_label)
    test_scores = test.file_scores(1.0, multi_label)
    thresholds = pd.DataFrame(metrics.precision_thresholds(
        val.y, val.file_scores(1.0, multi_label), classes, target_precision))
    file_level = metrics.classification_metrics(test.y, test_scores, classes, top_k)
    reliability = {
        "uncalibrated": metrics.expected_calibration_error(test.y, test_scores),
        "calibrated": metrics.expected_calibration_error(test.y, test.file_scores(temperature, multi_label)),
    }
    unit_scores = metrics.probabilities(test.logits, multi_label=multi_label)
    report = {
        "model": trained["model"],
        "split": "test",
        "classes": classes,
        "trunk_initialisation": trained.get("trunk_initialisation"),
        "epochs_completed": trained.get("epochs_completed"),
        "n_files": len(test.files) + test.unscored,
        "files_without_patches": test.unscored,
        "file_score": f"mean of the {unit} probabilities of the file",
        "file": file_level,
        "patch_unit": unit,
        "patch": metrics.classification_metrics(test.y[test.owner], unit_scores, classes, top_k),
        "calibration": {
            "temperature": temperature,
            "temperature_at_bound": not (
                metrics.TEMPERATURE_BOUNDS[0] * 1.01 < temperature < metrics.TEMPERATURE_BOUNDS[1] / 1.01),
            "fitted_on": "val",
            "n_val_files": len(val.files),
            "ece_bins": metrics.ECE_BINS,
            "file_ece_before": reliability["uncalibrated"]["ece"],
            "file_ece_after": reliability["calibrated"]["ece"],
        },
        "thresholds": {"target_precision": target_precision, "fitted_on": "val",
                       "classes_reaching_target": int((thresholds["status"] == "ok").sum())},
    }

    scores_table = pd.DataFrame({"path": test.files["path"], "label": test.files["label"],
                                 "predicted": [classes[i] for i in test_scores.argmax(axis=1)]})
    scores_table[[f"score_{c}" for c in classes]] = test_scores
    fsutil.write_tsv(out / "file_scores.tsv", scores_table)
    confusion = pd.DataFrame(file_level["confusion"], index=classes, columns=classes)
    fsutil.write_tsv(out / "confusion.tsv", confusion.rename_axis("true \\ predicted").reset_index())
    fsutil.write_tsv(out / "thresholds.tsv", thresholds)
    figures.confusion_matrix(out / "confusion.png", confusion.to_numpy(), classes, f"{trained['model']}: test files")
    figures.reliability_diagram(out / "reliability.png", reliability, temperature)
    history = pd.read_csv(model_dir / "history.tsv", sep="\t")
    figures.training_curves(out / "training_curves.png", history, trained["model"])
    fsutil.write_json(out / "metrics.json", report)
    with fsutil.atomic_open(out / "report.md") as f:
        f.write(markdown_report(report, thresholds))
    return report


def fmt(value: float | None) -> str:
    return "–" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.3f}"


def markdown_report(report: dict[str, Any], thresholds: pd.DataFrame) -> str:
    """The human-readable summary of metrics.json."""
    top_k = next(k for k in report["file"] if k.startswith("top") and k != "top1_accuracy")
    lines = [
        f"# {report['model']}: evaluation on the test split",
        "",
        f"{report['n_files']} test files ({report['files_without_patches']} too short to score), "
        f"{len(report['classes'])} classes, trunk initialisation: {report['trunk_initialisation']}, "
        f"{report['epochs_completed']} epochs. File score: {report['file_score']}.",
        "",
        f"| level | top-1 | top-{top_k.removeprefix('top').removesuffix('_accuracy')} | macro P | macro R | macro F1 | cmAP "
        "| macro ROC-AUC | ECE |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for level, name in (("file", "file"), ("patch", report["patch_unit"])):
        m = report[level]
        cells = [m["top1_accuracy"], m[top_k], *(m["macro"][k] for k in ("precision", "recall", "f1")), m["cmap"], m["macro_roc_auc"], m["ece"]]
        lines.append(f"| {name} | " + " | ".join(fmt(v) for v in cells) + " |")
    cal = report["calibration"]
    lines += [
        "",
        f"Calibration: temperature {cal['temperature']:.3f} fitted on {cal['n_val_files']} val files; "
        f"file-level ECE on test {fmt(cal['file_ece_before'])} before, {fmt(cal['file_ece_after'])} after."
        + (" The fit stopped at its bound: the val split gives too little evidence to calibrate on."
           if cal["temperature_at_bound"] else ""),
        "",
        "## Per class (file level)",
        "",
        "| class | support | precision | recall | F1 | AP | ROC-AUC "
        f"| threshold for precision {report['thresholds']['target_precision']:g} (val) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    threshold_of = dict(zip(thresholds["label"], thresholds["threshold"]))
    for row in report["file"]["per_class"]:
        cells = [row[k] for k in ("precision", "recall", "f1", "average_precision", "roc_auc")]
        cells.append(threshold_of.get(row["label"]))
        lines.append(f"| {row['label']} | {row['support']} | " + " | ".join(fmt(v) for v in cells) + " |")
    return "\n".join(lines) + "\n"
