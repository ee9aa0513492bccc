"""A teacher's window scores over the unlabelled recordings, and the pseudo-labels drawn from them.

Windows are the model's own unit (one patch for VGGish, `seq_len` patches for the ConvLSTM), cut as
`jibjib analyze` cuts them (jibjib.evaluation.evaluate.analysis_windows), by default without overlap. The
teacher's probabilities (sigmoid or softmax, as it was trained) are compared with the val split's window
thresholds (thresholds.tsv of its evaluation, `window_threshold`):

- positive: some species reaches `threshold_scale` x its threshold; the target is the teacher's whole
  probability vector (a soft target: what the teacher believes, not a rounded label);
- negative ("no species"): every species stays below `negative_scale` x its threshold (a species without a
  threshold of its own: below `negative_scale` x 0.5); the target is a background file's (all zeros with
  sigmoid outputs, uniform with softmax), and at most `negatives_per_positive` negatives per positive are
  kept, evenly spread;
- every other window is left out: the teacher is not sure.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from jibjib.core import fsutil
from jibjib.core.params import FrontEnd, WindowGrid
from jibjib.core.settings import RunSettings, SelfTrainingSettings
from jibjib.evaluation.evaluate import BATCH_PATCHES, analysis_windows, model_seq_len
from jibjib.evaluation.metrics import probabilities

PSEUDO_COLUMNS = ("file", "start_seconds", "end_seconds", "kind", "labels", "top_label", "top_score")
NEGATIVE_FALLBACK_THRESHOLD = 0.5  # for a species without a val window threshold of its own


def teacher_settings(model_dir: str | os.PathLike) -> RunSettings:
    """The settings the teacher was trained with (its train.json)."""
    trained = json.loads((Path(model_dir) / "train.json").read_text())
    return RunSettings.from_dict(trained["settings"])


def window_grid(seq_len: int | None, params: FrontEnd, hop_seconds: float | None) -> WindowGrid:
    """The windows cut from the unlabelled audio: the model's unit, every `hop_seconds` (default a whole window)."""
    patches = seq_len or 1
    if hop_seconds is None:
        hop_seconds = params.patch_frames * patches * params.hop_seconds
    return WindowGrid.for_model(params, patches, hop_seconds)


def window_scores(model: Any, manifest: pd.DataFrame, grid: WindowGrid, multi_label: bool) -> dict[str, np.ndarray]:
    """Every window of the manifest's processed files: `file` (row of the manifest), `start_frame` and the
    teacher's `probabilities` (windows x classes)."""
    seq_len = model_seq_len(model)
    n_classes = int(model.outputs[0].shape[-1])
    files, starts, scores = [], [], []
    for index, row in manifest.reset_index(drop=True).iterrows():
        if row["status"] != "processed":
            continue
        with np.load(row["feature"], allow_pickle=False) as z:
            windows = analysis_windows(z["log_mel"], grid, seq_len)
        if windows is None:
            continue
        logits = _predict(model, windows, seq_len)
        scores.append(probabilities(logits, multi_label=multi_label))
        files.append(np.full(len(logits), index))
        starts.append(np.arange(len(logits)) * grid.hop_frames)
    if not scores:
        return {"file": np.zeros(0, int), "start_frame": np.zeros(0, int), "probabilities": np.zeros((0, n_classes))}
    return {"file": np.concatenate(files), "start_frame": np.concatenate(starts),
            "probabilities": np.concatenate(scores)}


def _predict(model: Any, windows: Any, seq_len: int | None) -> np.ndarray:
    """Logits of one recording's windows, BATCH_PATCHES patches a forward pass (an hour is 3,750 patches)."""
    step = max(1, BATCH_PATCHES // (seq_len or 1))
    n = len(windows) if seq_len is None else len(windows[0])
    logits = []
    for start in range(0, n, step):
        part = (windows[start:start + step] if seq_len is None
                else {"patches": windows[0][start:start + step], "mask": windows[1][start:start + step]})
        logits.append(np.asarray(model.predict_on_batch(part), dtype=np.float64))
    return np.concatenate(logits)


def select_windows(scores: np.ndarray, thresholds: np.ndarray, settings: SelfTrainingSettings
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (positive, negative) over the windows of `scores` (windows x classes); `thresholds` has NaN
    for a species without a window threshold (never a positive)."""
    known = np.isfinite(thresholds)
    passes = known & (scores >= settings.threshold_scale * np.where(known, thresholds, np.inf))
    positive = passes.any(axis=1)
    ceiling = settings.negative_scale * np.where(known, thresholds, NEGATIVE_FALLBACK_THRESHOLD)
    negative = (scores < ceiling).all(axis=1) & ~positive
    kept = int(np.floor(positive.sum() * settings.negatives_per_positive))
    candidates = np.flatnonzero(negative)
    if len(candidates) > kept:
        chosen = candidates[np.unique(np.linspace(0, len(candidates) - 1, kept).round().astype(int))] if kept else []
        negative = np.zeros_like(negative)
        negative[chosen] = True
    return positive, negative


def pseudo_targets(scores: np.ndarray, positive: np.ndarray, negative: np.ndarray, multi_label: bool) -> np.ndarray:
    """Soft targets of the kept windows (positives then negatives, in window order within each)."""
    empty = np.zeros if multi_label else (lambda shape: np.full(shape, 1.0 / shape[1]))
    return np.concatenate([scores[positive], empty((int(negative.sum()), scores.shape[1]))]).astype(np.float32)


def write_pseudo_labels(out_npz: str | os.PathLike, out_tsv: str | os.PathLike, windows: dict[str, np.ndarray],
                        manifest: pd.DataFrame, classes: list[str], thresholds: np.ndarray,
                        settings: SelfTrainingSettings, seq_len: int | None, grid: WindowGrid,
                        multi_label: bool, mel_bands: int) -> pd.DataFrame:
    """The pseudo-labelled windows: their log-mel units, masks and soft targets (npz, what `jibjib train
    --pseudo-labels` reads) and one row each (tsv, PSEUDO_COLUMNS); returns the rows."""
    scores = windows["probabilities"]
    positive, negative = select_windows(scores, thresholds, settings)
    order = np.concatenate([np.flatnonzero(positive), np.flatnonzero(negative)])
    manifest = manifest.reset_index(drop=True)
    units = _units(manifest, windows["file"][order], windows["start_frame"][order], grid, seq_len, mel_bands)
    fsutil.save_npz(out_npz, units=units.astype(np.float16), mask=np.ones(units.shape[:2], bool),
                    targets=pseudo_targets(scores, positive, negative, multi_label), classes=np.array(classes))
    passes = scores >= settings.threshold_scale * np.where(np.isfinite(thresholds), thresholds, np.inf)
    frame_seconds, span = grid.frame_seconds, grid.window_frames * grid.frame_seconds
    start = windows["start_frame"][order] * frame_seconds
    rows = pd.DataFrame({
        "file": manifest["path"].to_numpy()[windows["file"][order]],
        "start_seconds": start.round(3), "end_seconds": (start + span).round(3),
        "kind": ["positive"] * int(positive.sum()) + ["negative"] * int(negative.sum()),
        "labels": [",".join(np.array(classes)[passes[i]]) for i in order],
        "top_label": np.array(classes)[scores[order].argmax(axis=1)] if len(order) else [],
        "top_score": scores[order].max(axis=1).round(4) if len(order) else []}, columns=list(PSEUDO_COLUMNS))
    fsutil.write_tsv(out_tsv, rows)
    return rows


def _units(manifest: pd.DataFrame, files: np.ndarray, starts: np.ndarray, grid: WindowGrid,
           seq_len: int | None, mel_bands: int) -> np.ndarray:
    """The log-mel of the chosen windows as training units (n, patches per unit, patch frames, mel_bands)."""
    units, loaded = [], {}
    for index, start in zip(files, starts):  # in the targets' order
        if index not in loaded:
            with np.load(manifest.loc[index, "feature"], allow_pickle=False) as z:
                loaded = {index: z["log_mel"]}  # one file at a time in memory
        units.append(loaded[index][start:start + grid.window_frames])
    patches = seq_len or 1
    stacked = np.stack(units) if units else np.zeros((0, grid.window_frames, mel_bands), np.float32)
    return stacked.reshape(len(stacked), patches, grid.window_frames // patches, mel_bands)
