"""The evaluation step: score a trained model on the test split and write its report.

Scores are computed per patch (VGGish) or per sequence of patches (ConvLSTM)
and averaged into one score per file, because users act on files.  The
validation split is used only to fit the calibration temperature and the
per-class thresholds; every reported figure is measured on the test split,
including what the val-fitted thresholds reach there.  Temperature scaling
changes the order of file scores (a mean of patch probabilities), so the
calibrated scores get thresholds of their own.

Window thresholds are for `jibjib analyze`, which scores long recordings one
window (the model's unit: a patch for VGGish, seq_len patches for the
ConvLSTM) every hop: they are fitted on the raw probabilities of the windows
analyze would cut from the val files (every whole window of its grid, at
analyze's hop; no zero-padded tail, which analyze never scores), not on the
units the file scores average.  The window labels follow the run's
train.call_windows (jibjib.training.windows), so the thresholds are fitted
on the labels the model learnt: with `activity` a window of a species file
is that species only where it holds an active patch (jibjib.features.activity,
the file's own noise floor); its other windows are left out (inactive_windows
drop) or are negatives (negative).  With `all` every window takes its file's
label: a window of a focal recording that holds no song still counts as that
species, which lowers the window recall of a model that rightly misses it.
A call of another species in a window's background counts as a false
detection of that other species either way.

The truth of a file is its set of classes (split.tsv's `species`): a file of
a background folder is a negative for every class, a file of a multi-species
folder a positive for each of its species.  Top-1 accuracy, the confusion
matrix and the top-1 ECE count the single-species files only (see
jibjib.evaluation.metrics);
metrics.json's `background` says how often nothing reaches its threshold on
the background files ("no species", what predict and analyze then report).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd

from jibjib.core import fsutil
from jibjib.core.params import VGGISH, FrontEnd, WindowGrid
from jibjib.core.settings import RunSettings
from jibjib.evaluation import metrics, thresholds as fitting
from jibjib.evaluation.report import markdown_report
from jibjib.features.activity import window_activity
from jibjib.labels.tables import split_files, target_matrix
from jibjib.training.examples import load_patches, to_sequences
from jibjib.training.windows import WindowRule

# Patches per forward pass: large enough to keep a CPU busy, small enough for
# any GPU; memory does not grow with the size of the split.
BATCH_PATCHES = 256


Example = Any  # a model input: patches (n, 96, 64), or (patches (n, L, 96, 64), mask (n, L)) for a ConvLSTM


def unit_examples(npz: str, seq_len: int | None) -> Example | None:
    """The units a file's score averages: its non-overlapping patches from frame 0 (a partial tail dropped),
    for a ConvLSTM grouped in sequences of seq_len, the last one zero-padded and masked; None without a patch."""
    patches = load_patches(npz)
    if patches.shape[0] == 0:
        return None  # too short for one patch: no score (reported as files_without_patches)
    # Inference always pads: `short_files: skip` only keeps short files out of training.
    return patches if seq_len is None else to_sequences(patches, seq_len, "pad")


def analysis_windows(log_mel: np.ndarray, grid: WindowGrid, seq_len: int | None) -> Example | None:
    """The windows `jibjib analyze` scores in these frames: every whole window of the grid, all patches real
    (none padded, none masked); None without a whole window."""
    n = grid.count(log_mel.shape[0])
    if n == 0:
        return None
    view = np.lib.stride_tricks.sliding_window_view(log_mel, grid.window_frames, axis=0)[::grid.hop_frames][:n]
    windows = np.ascontiguousarray(view.transpose(0, 2, 1), dtype=np.float32)  # (n, window frames, bands)
    if seq_len is None:
        return windows
    patches = windows.reshape(n, seq_len, grid.window_frames // seq_len, log_mel.shape[1])
    return patches, np.ones((n, seq_len), bool)


def _batches(files: pd.DataFrame, examples: Callable[[str], Example | None],
             seq_len: int | None) -> Iterator[tuple[Any, np.ndarray]]:
    """Model inputs in batches of about BATCH_PATCHES patches, with the file each example came from."""
    inputs, owners, size = [], [], 0
    for index, npz in enumerate(files["feature"]):
        example = examples(npz)
        if example is None:
            continue
        n = len(example) if seq_len is None else len(example[0])
        inputs.append(example)
        owners.append(np.full(n, index))
        size += n * (seq_len or 1)
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


def score_files(model: Any, files: pd.DataFrame, grid: WindowGrid | None = None,
                activity: list[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Logits of every unit of `files` (with `grid`: of every analysis window) and the row of `files` each
    belongs to. `activity`, with `grid`: a list that gets each scored window's activity score (one array a
    file with a window, jibjib.features.activity.window_activity)."""
    seq_len = model_seq_len(model)
    if grid is None:
        examples = functools.partial(unit_examples, seq_len=seq_len)
    else:
        def examples(npz: str) -> Example | None:
            with np.load(npz, allow_pickle=False) as z:
                windows = analysis_windows(z["log_mel"], grid, seq_len)
                if windows is not None and activity is not None:
                    count = len(windows) if seq_len is None else len(windows[0])
                    activity.append(window_activity(z["log_mel"], grid.window_frames, grid.hop_frames, count))
                return windows
    logits, owners = [], []
    for inputs, owner in _batches(files, examples, seq_len):
        logits.append(np.asarray(model.predict_on_batch(inputs), dtype=np.float64))
        owners.append(owner)
    n_classes = int(model.outputs[0].shape[-1])
    if not logits:
        return np.zeros((0, n_classes)), np.zeros(0, int)
    return np.concatenate(logits), np.concatenate(owners)


@dataclasses.dataclass
class ScoredSplit:
    """The logits of one split's units (patches or sequences) and analysis windows, tied to their files."""

    files: pd.DataFrame  # the files with at least one patch, in split.tsv order
    logits: np.ndarray  # (units, classes)
    owner: np.ndarray  # row of `files` for each unit
    unscored: int  # files too short for one patch
    window_logits: np.ndarray  # (windows, classes): the windows analyze cuts (analysis_windows)
    window_owner: np.ndarray  # row of `files` for each window
    window_activity: np.ndarray | None = None  # (windows,) activity score in dB of each window

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
    def unit_truth(self) -> np.ndarray:
        """The classes of each unit: its file's, the only label there is."""
        return self.truth[self.owner]

    def unit_scores(self, multi_label: bool = False) -> np.ndarray:
        """Raw (temperature 1) probabilities of each unit."""
        return metrics.probabilities(self.logits, multi_label=multi_label)


@dataclasses.dataclass(frozen=True)
class Labelled:
    """Score rows (one per file or per window) and the truth of each row (classes, or a bool matrix of them);
    `file_support`: the files behind each class's positive rows, where rows are windows."""

    y: np.ndarray
    scores: np.ndarray
    file_support: np.ndarray | None = None


def score_split(model: Any, files: pd.DataFrame, grid: WindowGrid) -> ScoredSplit:
    logits, owner = score_files(model, files)
    activity: list[np.ndarray] = []
    window_logits, window_owner = score_files(model, files, grid, activity)
    scored = np.unique(owner)
    # Renumber owners to the files that have patches (a file with a whole window has a whole patch).
    return ScoredSplit(files.iloc[scored].reset_index(drop=True), logits, np.searchsorted(scored, owner),
                       len(files) - len(scored), window_logits, np.searchsorted(scored, window_owner),
                       np.concatenate(activity) if activity else np.zeros(0, np.float32))


@dataclasses.dataclass(frozen=True)
class ThresholdRule:
    """How thresholds are fitted (evaluate.target_precision, evaluate.min_threshold_support) and the window grid
    of the window thresholds (the one analyze uses: analyze.hop_seconds)."""

    target_precision: float = 0.9
    min_support: int = 1
    window_unit: str = "patch"
    grid: WindowGrid | None = None
    windows: WindowRule = dataclasses.field(default_factory=WindowRule.every_window)  # train.call_windows of the run


def evaluate(
    model_dir: str | os.PathLike,
    labels_tsv: str | os.PathLike,
    split_tsv: str | os.PathLike,
    features_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    target_precision: float = 0.9,
    top_k: int = 5,
    report_name: str = "report.md",
    min_threshold_support: int = 1,
    params: FrontEnd = VGGISH,
    hop_seconds: float | None = None,
) -> dict[str, Any]:
    """Write metrics.json, report.md (`report_name`), file_scores.tsv, confusion.tsv, thresholds.tsv and figures
    to out_dir; window thresholds on the windows analyze cuts at `hop_seconds` (None: its default)."""
    from jibjib.models.loading import load_for_inference  # TensorFlow: only where it is needed

    model_dir, out = Path(model_dir), Path(out_dir)
    trained = json.loads((model_dir / "train.json").read_text())
    model = load_for_inference(model_dir / "model.keras")  # float32 also after mixed precision
    run = RunSettings.from_dict(trained["settings"])
    multi_label = run.net.multi_label
    classes = pd.read_csv(labels_tsv, sep="\t", keep_default_na=False)["label"].astype(str).tolist()
    seq_len = model_seq_len(model)
    unit = "patch" if seq_len is None else "sequence"
    rule = ThresholdRule(target_precision, min_threshold_support, unit,
                         WindowGrid.for_model(params, seq_len or 1, hop_seconds), WindowRule.of(run.train))

    def scored(split: str) -> ScoredSplit:
        files = split_files(split_tsv, labels_tsv, features_dir, split)
        print(f"evaluate {trained['model']}: scoring {len(files)} {split} files", file=sys.stderr, flush=True)
        return score_split(model, files, rule.grid)

    val, test = scored("val"), scored("test")
    temperature = metrics.fit_temperature(val.logits, val.owner, val.truth, multi_label)
    test_kinds = threshold_scores(test, temperature, multi_label, rule.windows)
    thresholds, threshold_report = threshold_table(threshold_scores(val, temperature, multi_label, rule.windows),
                                                   test_kinds, classes, rule)
    file_level = metrics.classification_metrics(test.truth, test_kinds["raw"].scores, classes, top_k)
    calibration, reliability = calibration_summary(test, test_kinds, temperature, multi_label, len(val.files))
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
        "patch": metrics.classification_metrics(test.unit_truth, test.unit_scores(multi_label), classes, top_k),
        "n_background_files": file_level["n_background"],
        "n_multi_species_files": file_level["n_multi_species"],
        "single_species_metrics": ("top-1 and top-k accuracy, confusion and top-1 ECE count the single-species "
                                   "files (n_single_species); per-class precision, recall and F1 of the top-1 "
                                   "species count the files with a species (a multi-species file is a positive for "
                                   "each of its species); AP, ROC-AUC, classwise ECE and thresholds take every "
                                   "file, a background file a negative for every species; background files are "
                                   "judged in `background`"),
        "background": background_summary(test_kinds, thresholds),
        "calibration": calibration,
        "thresholds": threshold_report,
        **too_few_recordings(split_tsv, classes),
    }
    write_outputs(out, report, test, test_kinds["raw"].scores, thresholds, model_dir, reliability, report_name)
    return report


def calibration_summary(test: ScoredSplit, kinds: dict[str, Labelled], temperature: float, multi_label: bool,
                        n_val_files: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """metrics.json's `calibration`, and the reliability tables before and after temperature scaling: top-1
    for a softmax model, classwise (every class on every file) for sigmoid outputs, whose top score is one of
    several independent probabilities."""
    raw, calibrated = kinds["raw"].scores, kinds["calibrated"].scores
    top1 = {"uncalibrated": metrics.expected_calibration_error(test.y, raw),
            "calibrated": metrics.expected_calibration_error(test.y, calibrated)}
    classwise = {"uncalibrated": metrics.classwise_calibration_error(test.truth, raw),
                 "calibrated": metrics.classwise_calibration_error(test.truth, calibrated)}
    low, high = metrics.TEMPERATURE_BOUNDS
    summary = {
        "temperature": temperature,
        "temperature_at_bound": not (low * 1.01 < temperature < high / 1.01),
        "fitted_on": "val",
        "n_val_files": n_val_files,
        "ece_bins": metrics.ECE_BINS,
        "file_ece_before": top1["uncalibrated"]["ece"],
        "file_ece_after": top1["calibrated"]["ece"],
        "file_classwise_ece_before": classwise["uncalibrated"]["ece"],
        "file_classwise_ece_after": classwise["calibrated"]["ece"],
        "reliability_kind": "classwise" if multi_label else "top1",
    }
    return summary, {**(classwise if multi_label else top1), "kind": summary["reliability_kind"]}


def write_outputs(out: Path, report: dict[str, Any], test: ScoredSplit, test_scores: np.ndarray,
                  thresholds: pd.DataFrame, model_dir: Path, reliability: dict[str, Any], report_name: str) -> None:
    """The evaluation's files (see docs/outputs.md), each renamed into place; `test_scores`: the test file scores."""
    from jibjib.evaluation import figures

    classes, model = report["classes"], report["model"]
    species = test.files["species"] if "species" in test.files else test.files["label"]
    scores_table = pd.DataFrame({"path": test.files["path"], "label": test.files["label"], "species": species,
                                 "predicted": [classes[i] for i in test_scores.argmax(axis=1)]})
    scores_table[[f"score_{c}" for c in classes]] = test_scores
    fsutil.write_tsv(out / "file_scores.tsv", scores_table)
    confusion = pd.DataFrame(report["file"]["confusion"], index=classes, columns=classes)
    fsutil.write_tsv(out / "confusion.tsv", confusion.rename_axis("true \\ predicted").reset_index())
    fsutil.write_tsv(out / "thresholds.tsv", thresholds)
    figures.confusion_matrix(out / "confusion.png", confusion.to_numpy(), classes, f"{model}: test files")
    figures.reliability_diagram(out / "reliability.png", reliability, report["calibration"]["temperature"])
    history = pd.read_csv(model_dir / "history.tsv", sep="\t")
    figures.training_curves(out / "training_curves.png", history, model)
    fsutil.write_json(out / "metrics.json", report)
    with fsutil.atomic_open(out / report_name) as f:
        f.write(markdown_report(report, thresholds))


# The kinds of score thresholds are fitted on, and the prefix of their columns in thresholds.tsv.
THRESHOLD_KINDS = {"raw": "", "calibrated": "calibrated_", "window": "window_"}


def window_truth(split: ScoredSplit, windows: WindowRule) -> tuple[np.ndarray, np.ndarray]:
    """(windows, classes) truth of the analysis windows under the window rule, and which windows count: with
    call_windows all every window has its file's classes; with activity a species file's inactive windows
    are left out (drop) or have none (negative). Background windows count as negatives either way."""
    truth = split.truth[split.window_owner]
    kept = np.ones(len(truth), bool)
    if windows.uses_activity and split.window_activity is not None:
        active = split.window_activity >= windows.threshold_db
        if windows.inactive == "drop":
            kept = active | ~truth.any(axis=1)
        truth = truth & active[:, None]
    return truth, kept


def threshold_scores(split: ScoredSplit, temperature: float, multi_label: bool,
                     windows: WindowRule | None = None) -> dict[str, Labelled]:
    """The scores of `split` each kind of threshold (THRESHOLD_KINDS) is fitted on or measured with: file
    scores, raw and calibrated, and the raw probabilities of the windows analyze cuts (each window labelled
    by `windows`, see window_truth; the minimum support counts the files)."""
    truth = split.truth
    labels, kept = window_truth(split, windows or WindowRule.every_window())
    return {"raw": Labelled(truth, split.file_scores(1.0, multi_label)),
            "calibrated": Labelled(truth, split.file_scores(temperature, multi_label)),
            "window": Labelled(labels[kept], metrics.probabilities(split.window_logits[kept], multi_label=multi_label),
                               file_support=truth.sum(axis=0))}


def background_summary(test: dict[str, Labelled], thresholds: pd.DataFrame) -> dict[str, Any]:
    """metrics.json's `background`: per kind of score (THRESHOLD_KINDS), on the test files (windows) that
    contain no species, how often no species reaches its val threshold ("no species") and the mean top score."""
    summary: dict[str, Any] = {}
    for kind, prefix in THRESHOLD_KINDS.items():
        rows = ~metrics.truth_matrix(test[kind].y, test[kind].scores.shape[1]).any(axis=1)
        summary[kind] = fitting.no_species(test[kind].scores[rows], thresholds[f"{prefix}threshold"].to_numpy(float))
    return {"n_files": summary["raw"]["n"], **summary}


def _kind_columns(fitted: pd.DataFrame, on_test: pd.DataFrame, prefix: str, with_support: bool) -> dict[str, Any]:
    """One kind's columns of thresholds.tsv, in their order: val figures, then test figures."""
    columns = ["threshold", "precision", "precision_low", "precision_high", "recall"] + (
        ["support"] if with_support else []) + ["status"]
    out = {prefix + column: fitted[column] for column in columns}
    if with_support:
        out[f"{prefix}test_support"] = on_test["support"]
    out[f"{prefix}test_detections"] = on_test["detections"].astype("Int64")
    for column in ("precision", "precision_low", "precision_high", "recall"):
        out[f"{prefix}test_{column}"] = on_test[column].astype(float)
    return out


def threshold_table(val: dict[str, Labelled], test: dict[str, Labelled], classes: list[str],
                    rule: ThresholdRule) -> tuple[pd.DataFrame, dict[str, Any]]:
    """thresholds.tsv and metrics.json's `thresholds`: per class and per kind of score (THRESHOLD_KINDS: raw
    and calibrated file scores, raw window probabilities), the threshold fitted on val (jibjib.evaluation.
    thresholds) and the precision and recall it reaches on test."""
    table = pd.DataFrame({"label": classes})
    summary: dict[str, Any] = {"target_precision": rule.target_precision, "min_support": rule.min_support,
                               "fitted_on": "val", "applied_to": "test"}
    for kind, prefix in THRESHOLD_KINDS.items():
        fitted = pd.DataFrame(fitting.precision_thresholds(
            val[kind].y, val[kind].scores, classes, rule.target_precision, min_support=rule.min_support,
            support=val[kind].file_support))
        tested = fitting.threshold_outcomes(test[kind].y, test[kind].scores, fitted["threshold"].to_numpy(float),
                                            classes, rule.target_precision)
        on_test = pd.DataFrame(tested.pop("per_class"))
        # Calibrated scores rank the same files as raw ones, so their supports would repeat the raw columns.
        table = table.assign(**_kind_columns(fitted, on_test, prefix, kind != "calibrated"))
        fallback = fitted.loc[fitted["status"] == "fallback", "threshold"]
        summary[kind] = {"classes_with_threshold": int(fitted["status"].isin(["ok", "fallback"]).sum()),
                         "classes_with_own_threshold": int((fitted["status"] == "ok").sum()),
                         "classes_with_fallback": int(fitted["status"].str.startswith("fallback").sum()),
                         "fallback_threshold": float(fallback.iloc[0]) if len(fallback) else None, "test": tested}
    # Kept from before the calibrated set existed (the model card carries it): raw classes reaching the target on val.
    summary["classes_reaching_target"] = summary["raw"]["classes_with_own_threshold"]
    summary["window_unit"] = rule.window_unit
    if rule.grid is not None:
        summary.update(window_seconds=rule.grid.window_seconds, window_hop_seconds=rule.grid.hop_seconds)
    summary["window_labels"] = ("each window analyze would cut (every whole window at its hop, no padding), "
                                "labelled by train.call_windows " + rule.windows.describe())
    summary["call_windows"] = rule.windows.call_windows
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
