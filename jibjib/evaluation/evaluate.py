"""The evaluation step: score a trained model on the test split and write its report.

Scores are computed per patch (VGGish) or per sequence of patches (ConvLSTM)
and averaged into one score per file, because users act on files.  The
validation split is used only to fit the calibration temperature and the
per-class thresholds; every reported figure is measured on the test split,
including what the val-fitted thresholds reach there.  Temperature scaling
changes the order of file scores (a mean of patch probabilities), so the
calibrated scores get thresholds of their own.

Window thresholds are for `jibjib analyze`, which scores long recordings one
window (the model's unit) at a time: they are fitted on the raw probabilities
of the val split's patches (VGGish) or sequences (ConvLSTM).  The data holds
no labels finer than a file, so every window takes its file's label: a
window of a focal recording that holds no song still counts as that species,
and a call of another species in its background counts as a false detection
of that other species.  Songless windows the model rightly misses lower the
window recall; background calls lower the window precision, so it is a lower
bound and the thresholds err on the high side, as long as the model does not
score a recording's songless windows high for the recording's species
(learning the recording rather than the song), which would raise it.

The truth of a file is its set of classes (split.tsv's `species`): a file of
a background folder is a negative for every class, a file of a multi-species
folder a positive for each of its species.  Top-1 accuracy, the confusion
matrix and the ECE count the single-species files only (see jibjib.metrics);
metrics.json's `background` says how often nothing reaches its threshold on
the background files ("no species", what predict and analyze then report).
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

from jibjib.core import fsutil
from jibjib.core.settings import RunSettings
from jibjib.evaluation import metrics
from jibjib.labels.tables import split_files, target_matrix
from jibjib.training.examples import load_patches, to_sequences

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
        """The one class of each file, -1 for background and multi-species files (see `truth`)."""
        return self.files["class_id"].to_numpy()

    @property
    def truth(self) -> np.ndarray:
        """(files, classes) bool: the classes each file contains (none for background)."""
        n_classes = self.logits.shape[1]
        if "class_ids" not in self.files:  # a table without the multi-class column: its single classes
            return metrics.truth_matrix(self.y, n_classes)
        return target_matrix(self.files["class_ids"].tolist(), n_classes).astype(bool)

    def file_scores(self, temperature: float = 1.0, multi_label: bool = False) -> np.ndarray:
        return metrics.file_scores(self.logits, self.owner, len(self.files), temperature, multi_label)

    @property
    def unit_y(self) -> np.ndarray:
        """The class of each unit: its file's, the only label there is."""
        return self.y[self.owner]

    @property
    def unit_truth(self) -> np.ndarray:
        """The classes of each unit: its file's."""
        return self.truth[self.owner]

    def unit_scores(self, multi_label: bool = False) -> np.ndarray:
        """Raw (temperature 1) probabilities of each unit."""
        return metrics.probabilities(self.logits, multi_label=multi_label)


@dataclasses.dataclass(frozen=True)
class Labelled:
    """Score rows (one per file or per window) and the truth of each row (classes, or a bool matrix of them)."""

    y: np.ndarray
    scores: np.ndarray


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
    report_name: str = "report.md",
) -> dict[str, Any]:
    """Write metrics.json, report.md (`report_name`), file_scores.tsv, confusion.tsv, thresholds.tsv and figures
    to out_dir."""
    from jibjib.evaluation import figures
    from jibjib.models.loading import load_for_inference  # TensorFlow: only where it is needed

    model_dir, out = Path(model_dir), Path(out_dir)
    trained = json.loads((model_dir / "train.json").read_text())
    model = load_for_inference(model_dir / "model.keras")  # float32 also after mixed precision
    multi_label = RunSettings.from_dict(trained["settings"]).net.multi_label
    classes = pd.read_csv(labels_tsv, sep="\t", keep_default_na=False)["label"].astype(str).tolist()
    unit = "patch" if model_seq_len(model) is None else "sequence"

    def scored(split: str) -> ScoredSplit:
        files = split_files(split_tsv, labels_tsv, features_dir, split)
        print(f"evaluate {trained['model']}: scoring {len(files)} {split} files", file=sys.stderr, flush=True)
        return score_split(model, files)

    val, test = scored("val"), scored("test")
    temperature = metrics.fit_temperature(val.logits, val.owner, val.truth, multi_label)
    test_kinds = threshold_scores(test, temperature, multi_label)
    test_scores, test_calibrated = test_kinds["raw"].scores, test_kinds["calibrated"].scores
    thresholds, threshold_report = threshold_table(threshold_scores(val, temperature, multi_label), test_kinds,
                                                   classes, target_precision, unit)
    file_level = metrics.classification_metrics(test.truth, test_scores, classes, top_k)
    reliability = {
        "uncalibrated": metrics.expected_calibration_error(test.y, test_scores),
        "calibrated": metrics.expected_calibration_error(test.y, test_calibrated),
    }
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
        "patch": metrics.classification_metrics(test.unit_truth, test_kinds["window"].scores, classes, top_k),
        "n_background_files": file_level["n_background"],
        "n_multi_species_files": file_level["n_multi_species"],
        "single_species_metrics": ("top-1 and top-k accuracy, confusion and ECE count the single-species files "
                                   "(n_single_species); per-class precision, recall and F1 of the top-1 species "
                                   "count the files with a species (a multi-species file is a positive for each of "
                                   "its species); AP, ROC-AUC and thresholds rank every file, a background file "
                                   "a negative for every species; background files are judged in `background`"),
        "background": background_summary(test_kinds, thresholds),
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
        "thresholds": threshold_report,
        **too_few_recordings(split_tsv, classes),
    }

    species = test.files["species"] if "species" in test.files else test.files["label"]
    scores_table = pd.DataFrame({"path": test.files["path"], "label": test.files["label"], "species": species,
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
    with fsutil.atomic_open(out / report_name) as f:
        f.write(markdown_report(report, thresholds))
    return report


# The kinds of score thresholds are fitted on, and the prefix of their columns in thresholds.tsv.
THRESHOLD_KINDS = {"raw": "", "calibrated": "calibrated_", "window": "window_"}


def threshold_scores(split: ScoredSplit, temperature: float, multi_label: bool) -> dict[str, Labelled]:
    """The scores of `split` each kind of threshold (THRESHOLD_KINDS) is fitted on or measured with."""
    return {"raw": Labelled(split.truth, split.file_scores(1.0, multi_label)),
            "calibrated": Labelled(split.truth, split.file_scores(temperature, multi_label)),
            "window": Labelled(split.unit_truth, split.unit_scores(multi_label))}


def background_summary(test: dict[str, Labelled], thresholds: pd.DataFrame) -> dict[str, Any]:
    """metrics.json's `background`: per kind of score (THRESHOLD_KINDS), on the test files (windows) that
    contain no species, how often no species reaches its val threshold ("no species") and the mean top score."""
    summary: dict[str, Any] = {}
    for kind, prefix in THRESHOLD_KINDS.items():
        rows = ~metrics.truth_matrix(test[kind].y, test[kind].scores.shape[1]).any(axis=1)
        summary[kind] = metrics.no_species(test[kind].scores[rows], thresholds[f"{prefix}threshold"].to_numpy(float))
    return {"n_files": summary["raw"]["n"], **summary}


def threshold_table(val: dict[str, Labelled], test: dict[str, Labelled], classes: list[str],
                    target_precision: float, window_unit: str) -> tuple[pd.DataFrame, dict[str, Any]]:
    """thresholds.tsv and metrics.json's `thresholds`: per class and per kind of score (THRESHOLD_KINDS: raw
    and calibrated file scores, raw window probabilities), the threshold fitted on val and the precision and
    recall it reaches on test."""
    table = pd.DataFrame({"label": classes})
    summary: dict[str, Any] = {"target_precision": target_precision, "fitted_on": "val", "applied_to": "test"}
    for kind, prefix in THRESHOLD_KINDS.items():
        fitted = pd.DataFrame(metrics.precision_thresholds(val[kind].y, val[kind].scores, classes, target_precision))
        tested = metrics.threshold_outcomes(test[kind].y, test[kind].scores, fitted["threshold"].to_numpy(float),
                                            classes, target_precision)
        on_test = pd.DataFrame(tested.pop("per_class"))
        # Calibrated scores rank the same files as raw ones, so their supports would repeat the raw columns.
        with_support = kind != "calibrated"
        # The raw columns keep their old names and order, and the other kinds follow it.
        for column in ["threshold", "precision", "recall"] + (["support"] if with_support else []) + ["status"]:
            table[prefix + column] = fitted[column]
        if with_support:
            table[f"{prefix}test_support"] = on_test["support"]
        table[f"{prefix}test_detections"] = on_test["detections"].astype("Int64")
        for column in ("precision", "recall"):
            table[f"{prefix}test_{column}"] = on_test[column].astype(float)
        summary[kind] = {"classes_with_threshold": int((fitted["status"] == "ok").sum()), "test": tested}
    # Kept from before the calibrated set existed (the model card carries it): raw classes reaching the target on val.
    summary["classes_reaching_target"] = summary["raw"]["classes_with_threshold"]
    summary["window_unit"] = window_unit
    summary["window_labels"] = (f"each {window_unit} takes its file's label, also where it holds no song "
                                "(the data has no finer labels)")
    summary["per_class"] = json.loads(table.to_json(orient="records", double_precision=15))
    return table, summary


def too_few_recordings(split_tsv: str | os.PathLike, classes: list[str]) -> dict[str, list[str]]:
    """The species split.tsv gives no test file (no test figures) or no val file (no thresholds);
    a file of a multi-species folder counts for each of its species."""
    split = pd.read_csv(split_tsv, sep="\t", dtype=str, keep_default_na=False)
    species = split["species"] if "species" in split else split["label"]
    present = split.assign(species=species.str.split(",")).explode("species").groupby("split")["species"].agg(set)
    return {f"species_without_{name}_files": [c for c in classes if c not in present.get(name, set())]
            for name in ("test", "val")}


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
        *composition_lines(report),
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
        threshold_sentence(report["thresholds"]),
        "",
        window_threshold_sentence(report["thresholds"]),
        "",
        evaluated_sentence(report),
        "",
        "## Per class (file level)",
        "",
        "| class | support | precision | recall | F1 | AP | ROC-AUC "
        f"| threshold for precision {report['thresholds']['target_precision']:g} (val) "
        "| test precision at threshold | test recall at threshold "
        f"| window threshold ({report['thresholds']['window_unit']}) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    by_label = thresholds.set_index("label")
    for row in report["file"]["per_class"]:
        cells = [row[k] for k in ("precision", "recall", "f1", "average_precision", "roc_auc")]
        cells += [by_label.at[row["label"], k]
                  for k in ("threshold", "test_precision", "test_recall", "window_threshold")]
        lines.append(f"| {row['label']} | {row['support']} | " + " | ".join(fmt(v) for v in cells) + " |")
    return "\n".join(lines) + "\n"


def _test_outcome(summary: dict[str, Any], kind: str, name: str) -> str:
    """What the `kind` thresholds reach on test, as a phrase about `name`."""
    test = summary[kind]["test"]
    return (f"{name} precision {fmt(test['macro_precision'])}, recall {fmt(test['macro_recall'])} "
            f"over {test['classes']} species ({test['classes_reaching_target']} reach "
            f"{summary['target_precision']:g}, {test['classes_without_detections']} detect nothing)")


def threshold_sentence(summary: dict[str, Any]) -> str:
    target = f"{summary['target_precision']:g}"
    parts = [_test_outcome(summary, kind, f"{kind} scores") for kind in ("raw", "calibrated")]
    return (f"Thresholds for precision {target}, fitted on val, on the test files (macro over the species with a "
            "threshold and test files; a species detecting nothing counts as precision 0): " + "; ".join(parts)
            + f". {summary['raw']['classes_with_threshold']} species have a raw threshold and "
            f"{summary['calibrated']['classes_with_threshold']} a calibrated one; per species in thresholds.tsv.")


def window_threshold_sentence(summary: dict[str, Any]) -> str:
    """The window thresholds (for `jibjib analyze`) in one sentence."""
    unit = summary["window_unit"]
    units = {"patch": "patches", "sequence": "sequences"}[unit]
    return (f"Window thresholds for precision {summary['target_precision']:g}, fitted on the raw probabilities of "
            f"the val {units}, each {unit} labelled with its file's species also where it holds no song, on the "
            f"test {units}: " + _test_outcome(summary, "window", "window")
            + f". {summary['window']['classes_with_threshold']} species have one (window_threshold in "
            "thresholds.tsv).")


def composition_lines(report: dict[str, Any]) -> list[str]:
    """What the test files hold beyond one species each, and the "no species" rate on background: report lines
    (none when every test file holds one species)."""
    n_background, n_multi = report.get("n_background_files", 0), report.get("n_multi_species_files", 0)
    if not n_background and not n_multi:
        return []
    lines = [f"Of the scored test files, {n_background} are background (a negative for every species) and {n_multi} "
             "hold several species (a positive for each); top-1, top-k, the confusion matrix and ECE count the "
             f"{report['file']['n_single_species']} single-species files, the per-class figures every file.", ""]
    if n_background:
        b = report["background"]
        lines += ["No species (background test files on which no species reaches its val threshold): "
                  f"{fmt(b['raw']['no_species_rate'])} with raw, {fmt(b['calibrated']['no_species_rate'])} with "
                  f"calibrated thresholds (mean top score {fmt(b['raw']['mean_top_score'])} raw, "
                  f"{fmt(b['calibrated']['mean_top_score'])} calibrated); {fmt(b['window']['no_species_rate'])} "
                  f"of their {b['window']['n']} {report['patch_unit']} windows at the window thresholds.", ""]
    return lines


def evaluated_sentence(report: dict[str, Any]) -> str:
    no_test, no_val = report["species_without_test_files"], report["species_without_val_files"]
    if not no_test and not no_val:
        return "Every species has val and test files."
    parts = [f"no test file ({len(no_test)}, not evaluated): {', '.join(no_test)}" if no_test else "",
             f"no val file ({len(no_val)}, no threshold): {', '.join(no_val)}" if no_val else ""]
    return "Too few recordings: " + "; ".join(p for p in parts if p) + "."
