"""`jibjib predict`: score audio files (WAV, FLAC, Ogg, MP3) with an exported model.

Files at any sample rate are read and resampled with the feature step's own
code, block by block, and handed to the export as 16 kHz mono in chunks of
about 30 s that start on the model's units (patches, or sequences of
patches), so memory does not grow with the length of a file and the scores
are those of the whole file in one piece; the log-mel front end runs inside
the exported graph. A file that cannot be scored gets one line on stderr and
the others are still scored.

A file's score is the mean of its unit probabilities (the export's `waveform`
signature, or `serving_default` of an export without it), as the evaluation
scores a clip, and with thresholds it is compared with the thresholds fitted
on val files' scores (raw or calibrated, as asked). The mean of a long
recording says little about a call in it, so a file longer than
LONG_FILE_SECONDS is scored by its windows instead, as `jibjib analyze` does:
each class's highest window score (the `windows` signature, windows one
window apart), compared with the window thresholds (`window_threshold`), and
reported as `scored_by: window_max` (raw scores: window thresholds are fitted
on raw window scores). Every detected species is reported, also below the top
k. A file on which no species reaches its threshold (background, say: an
export never has a background class) is marked `no_species`: its top k rows
stay, for review, none of them detected.
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import pandas as pd

from jibjib.features.audio import AudioError, open_audio, to_mono
from jibjib.core.errors import ExportError
from jibjib.serving.exported import ExportAssets
from jibjib.features.extract import check_usable
from jibjib.core.params import FrontEnd
from jibjib.features.resample import StreamResampler

# Longer files are scored by their windows (see the module docstring): six of the 10 s clips the original
# corpus was cut into, well above the clips thresholds are fitted on.
LONG_FILE_SECONDS = 60.0
# About this much audio per call of the model.
CHUNK_SECONDS = 30.0
FILE_MEAN, WINDOW_MAX = "file_mean", "window_max"


@dataclass
class Prediction:
    path: str
    # rank, label, score, [external_id], [threshold, detected]: the top k, then detections below them, by rank
    top: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    detected: list[str] | None = None  # with thresholds: every detected label, by rank
    scored_by: str = FILE_MEAN

    @property
    def no_species(self) -> bool | None:
        """With thresholds: True when no species reaches its threshold (None without thresholds or scores)."""
        return None if self.detected is None else not self.detected

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.path, "predictions": self.top,
                **({"scored_by": self.scored_by} if not self.error else {}),
                **({"detected": self.detected, "no_species": self.no_species} if self.detected is not None else {}),
                **({"error": self.error} if self.error else {})}


def stream_waveform(path: str | os.PathLike, params: FrontEnd, on_open=None) -> Iterator[np.ndarray]:
    """A file as float32 mono at `params.sample_rate`, in pieces, read and resampled as the feature step does;
    AudioError if unusable. `on_open(info)` is called once the header is checked."""
    with open_audio(path) as reader:
        # The feature step's own checks: predict refuses what training never saw.
        check_usable(reader.info, params)
        info = reader.info
        if on_open is not None:
            on_open(info)
        rate = info.sample_rate
        resampler = (StreamResampler(rate, params.sample_rate, info.frames if info.exact else None)
                     if rate != params.sample_rate else None)
        for block in reader.blocks():
            mono = np.asarray(to_mono(block), np.float32)
            yield resampler.push(mono) if resampler else mono
        check_usable(reader.info, params)  # again with the decoded length, where the header only estimated it
        if resampler:
            yield resampler.finish()


def read_waveform(path: str | os.PathLike, params: FrontEnd) -> np.ndarray:
    """A whole file as float32 mono at `params.sample_rate` (for tests and benchmarks; predict streams)."""
    pieces = list(stream_waveform(path, params))
    return np.concatenate(pieces) if pieces else np.zeros(0, np.float32)


def unit_chunks(pieces: Iterator[np.ndarray], params: FrontEnd, unit_patches: int) -> Iterator[tuple[np.ndarray, int]]:
    """(chunk, patches in it) of a waveform fed in pieces: each chunk starts on a unit (unit_patches patches)
    and holds whole units plus the samples its last frame reads, so the chunks' patches are the whole
    waveform's; the last chunk holds what is left (skipped when it is not one whole patch)."""
    unit = unit_patches * params.patch_frames * params.hop_samples
    units = max(1, int(CHUNK_SECONDS * params.sample_rate) // unit)
    size = units * unit + params.window_samples - params.hop_samples
    buffer = np.zeros(0, np.float32)
    for piece in pieces:
        buffer = np.concatenate([buffer, piece]) if buffer.shape[0] else piece
        while buffer.shape[0] >= size:
            yield buffer[:size], units * unit_patches
            buffer = buffer[units * unit:]  # the next chunk's first frame starts here
    patches = params.n_frames(buffer.shape[0]) // params.patch_frames
    if patches:
        yield buffer, patches


class Exported(ExportAssets):
    """A loaded export: the serving function, its front-end parameters, labels and thresholds."""

    def __init__(self, export_dir: str | os.PathLike) -> None:
        super().__init__(export_dir)
        self._tf, loaded = self.load_saved_model()
        # A legacy export (export.legacy_serving) serves patches by default and the waveform under its name.
        self._serve = loaded.signatures.get("waveform") or loaded.signatures["serving_default"]
        self._windows = loaded.signatures.get("windows")
        # Chunks must hold whole units (a ConvLSTM pads only a file's last sequence); exports made before
        # the window existed name it only in their training settings.
        settings = self.card.get("training", {}).get("settings", {})
        self.unit_patches = int(self.card.get("window", {}).get(
            "patches", settings.get("seq_len", 1) if self.card.get("model") == "convlstm" else 1))

    def waveform(self, path: str | os.PathLike) -> np.ndarray:
        """The file as float32 mono at the model's sample rate; AudioError if unusable."""
        return read_waveform(path, self.params)

    def scores(self, waveform: np.ndarray, calibrated: bool = False) -> np.ndarray:
        outputs = self._serve(waveform=self._tf.constant(waveform[None, :]))
        return outputs["calibrated_scores" if calibrated else "scores"].numpy()[0]

    def file_scores(self, path: str | os.PathLike, calibrated: bool = False) -> tuple[np.ndarray, str]:
        """(scores, FILE_MEAN or WINDOW_MAX) of one file, streamed; AudioError if unusable."""
        length: list[float] = []
        pieces = stream_waveform(path, self.params, on_open=lambda info: length.append(info.seconds))
        chunks = unit_chunks(pieces, self.params, self.unit_patches)
        first = next(chunks, None)  # opens the file: its length decides how it is scored
        if first is None:
            raise AudioError("too_short", "no whole patch")
        if length[0] > LONG_FILE_SECONDS and self._windows is not None:
            hop = self._tf.constant(self.unit_patches * self.params.patch_frames * self.params.hop_seconds)
            best = None
            for chunk, patches in itertools.chain([first], chunks):
                if patches < self.unit_patches:
                    continue  # no whole window: analyze drops this tail too
                window = self._windows(waveform=self._tf.constant(chunk[None, :]), hop_seconds=hop)
                top = window["scores"].numpy()[0].max(axis=0)
                best = top if best is None else np.maximum(best, top)
            return best, WINDOW_MAX
        total, units = None, 0
        for chunk, patches in itertools.chain([first], chunks):
            # The mean over the chunk's units, weighed by them: the mean over all of the file's units.
            n = -(-patches // self.unit_patches)
            part = self.scores(chunk, calibrated).astype(np.float64) * n
            total, units = (part, n) if total is None else (total + part, units + n)
        return (total / units).astype(np.float32), FILE_MEAN


def load_thresholds(path: str | os.PathLike, labels: list[str], calibrated: bool = False,
                    column: str | None = None) -> np.ndarray:
    """Per-class thresholds for raw or calibrated scores (or of `column`), in class order; NaN (never detected)
    where there is none."""
    table = pd.read_csv(path, sep="\t", keep_default_na=False, na_values=["nan", "NaN", ""])
    column = column or ("calibrated_threshold" if calibrated else "threshold")
    if "label" not in table.columns:
        raise ExportError(f"{path}: expected columns label and threshold")
    if column not in table.columns:
        if calibrated and "threshold" in table.columns:
            # Raw thresholds on calibrated scores would detect at another precision than the one fitted.
            raise ExportError(f"{path} has no calibrated_threshold column (written before calibrated thresholds "
                              "existed): re-run the evaluation and export, or predict without --calibrated")
        raise ExportError(f"{path}: expected columns label and {column}")
    by_label = dict(zip(table["label"].astype(str), table[column].astype(float)))
    return np.array([by_label.get(label, math.nan) for label in labels])


def window_thresholds(path: str | os.PathLike, labels: list[str]) -> np.ndarray | None:
    """The window thresholds of a thresholds table, for long files (None if the table has none)."""
    try:
        return load_thresholds(path, labels, column="window_threshold")
    except ExportError:
        return None


def predict_files(model: Exported, files: list[str], top_k: int = 5, thresholds: np.ndarray | None = None,
                  calibrated: bool = False, long_thresholds: np.ndarray | None = None) -> list[Prediction]:
    """The top-k species of each file; with thresholds (for the kind of scores asked for), each row also says
    whether the class is detected, and every detected class below the top k gets a row too. A long file
    (scored by its windows) is compared with `long_thresholds`, the window thresholds (none: never detected)."""
    results = []
    for path in files:
        result = Prediction(path)
        try:
            scores, result.scored_by = model.file_scores(path, calibrated)
        except AudioError as exc:
            result.error = str(exc)
        except OSError as exc:
            result.error = f"unreadable: {exc.strerror or exc}"
        else:
            limits = thresholds
            if thresholds is not None and result.scored_by == WINDOW_MAX:
                limits = long_thresholds if long_thresholds is not None else np.full(len(scores), math.nan)
            _rank(result, scores, model, top_k, limits)
        results.append(result)
    return results


def _rank(result: Prediction, scores: np.ndarray, model: Exported, top_k: int, thresholds: np.ndarray | None) -> None:
    # NaN compares false: a class without a threshold is never detected.
    detected = np.zeros(len(scores), bool) if thresholds is None else scores >= thresholds
    for rank, c in enumerate(np.argsort(-scores, kind="stable"), start=1):
        if rank > top_k and not detected[c]:
            continue
        row: dict[str, Any] = {"rank": rank, "label": model.labels[c], "score": round(float(scores[c]), 6)}
        if model.external_ids is not None:
            row["external_id"] = model.external_ids[c]
        if thresholds is not None:
            threshold = float(thresholds[c])
            row["threshold"] = None if math.isnan(threshold) else threshold
            row["detected"] = bool(detected[c])
        result.top.append(row)
    if thresholds is not None:
        result.detected = [row["label"] for row in result.top if row["detected"]]


def to_tsv(results: list[Prediction]) -> str:
    """One row per (file, rank) reported; failed files have no rows (their error goes to stderr).
    With thresholds, `no_species` repeats on each of a file's rows whether none of its species is detected;
    `scored_by` (file_mean or window_max) is there when a long file was scored by its windows."""
    rows = [{"file": r.path, **row, "scored_by": r.scored_by,
             **({"no_species": r.no_species} if r.detected is not None else {})}
            for r in results for row in r.top]
    columns = ["file", "rank", "label", "score"] + [c for c in ("external_id", "threshold", "detected", "no_species")
                                                    if any(c in row for row in rows)]
    if any(r.scored_by == WINDOW_MAX for r in results if r.top):
        columns.append("scored_by")
    return pd.DataFrame(rows, columns=columns).to_csv(sep="\t", index=False, lineterminator="\n")
