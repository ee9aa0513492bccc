"""`jibjib predict`: score audio files (WAV, FLAC, Ogg, MP3) with an exported model.

Files at any sample rate are read and resampled with the feature step's own
code, then handed to the export's waveform signature (`waveform`, or
`serving_default` of an export without it) as 16 kHz mono; the log-mel front
end runs inside the exported graph.  A file that cannot be
scored gets one line on stderr and the others are still scored.  With
thresholds, raw scores are compared with the thresholds fitted on raw val
scores and calibrated scores with those fitted on calibrated ones, and every
detected species is reported, also below the top k.  A file on which no
species reaches its threshold (background, say: an export never has a
background class) is marked `no_species`: its top k rows stay, for review,
none of them detected.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from jibjib.features.audio import AudioError, open_audio, to_mono
from jibjib.core.errors import ExportError
from jibjib.serving.exported import ExportAssets
from jibjib.features.extract import check_usable
from jibjib.core.params import FrontEnd
from jibjib.features.resample import resample


@dataclass
class Prediction:
    path: str
    # rank, label, score, [external_id], [threshold, detected]: the top k, then detections below them, by rank
    top: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    detected: list[str] | None = None  # with thresholds: every detected label, by rank

    @property
    def no_species(self) -> bool | None:
        """With thresholds: True when no species reaches its threshold (None without thresholds or scores)."""
        return None if self.detected is None else not self.detected

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.path, "predictions": self.top,
                **({"detected": self.detected, "no_species": self.no_species} if self.detected is not None else {}),
                **({"error": self.error} if self.error else {})}


class Exported(ExportAssets):
    """A loaded export: the serving function, its front-end parameters, labels and thresholds."""

    def __init__(self, export_dir: str | os.PathLike) -> None:
        super().__init__(export_dir)
        self._tf, loaded = self.load_saved_model()
        # A legacy export (export.legacy_serving) serves patches by default and the waveform under its name.
        self._serve = loaded.signatures.get("waveform") or loaded.signatures["serving_default"]

    def waveform(self, path: str | os.PathLike) -> np.ndarray:
        """The file as float32 mono at the model's sample rate; AudioError if unusable."""
        return read_waveform(path, self.params)

    def scores(self, waveform: np.ndarray, calibrated: bool = False) -> np.ndarray:
        outputs = self._serve(waveform=self._tf.constant(waveform[None, :]))
        return outputs["calibrated_scores" if calibrated else "scores"].numpy()[0]


def read_waveform(path: str | os.PathLike, params: FrontEnd) -> np.ndarray:
    """A file as float32 mono at `params.sample_rate`, read and resampled as the feature step does; AudioError if
    unusable."""
    with open_audio(path) as reader:
        # The feature step's own checks: predict refuses what training never saw.
        check_usable(reader.info, params)
        mono = np.concatenate([to_mono(block) for block in reader.blocks()]).astype(np.float32, copy=False)
        check_usable(reader.info, params)  # again with the decoded length, where the header only estimated it
        rate = reader.info.sample_rate
    return mono if rate == params.sample_rate else resample(mono, rate, params.sample_rate)


def load_thresholds(path: str | os.PathLike, labels: list[str], calibrated: bool = False) -> np.ndarray:
    """Per-class thresholds for raw or calibrated scores, in class order; NaN (never detected) where there is none."""
    table = pd.read_csv(path, sep="\t", keep_default_na=False, na_values=["nan", "NaN", ""])
    column = "calibrated_threshold" if calibrated else "threshold"
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


def predict_files(model: Exported, files: list[str], top_k: int = 5, thresholds: np.ndarray | None = None,
                  calibrated: bool = False) -> list[Prediction]:
    """The top-k species of each file; with thresholds (for the kind of scores asked for), each row also says
    whether the class is detected, and every detected class below the top k gets a row too."""
    results = []
    for path in files:
        result = Prediction(path)
        try:
            scores = model.scores(model.waveform(path), calibrated)
        except AudioError as exc:
            result.error = str(exc)
        except OSError as exc:
            result.error = f"unreadable: {exc.strerror or exc}"
        else:
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
        results.append(result)
    return results


def to_tsv(results: list[Prediction]) -> str:
    """One row per (file, rank) reported; failed files have no rows (their error goes to stderr).
    With thresholds, `no_species` repeats on each of a file's rows whether none of its species is detected."""
    rows = [{"file": r.path, **row, **({"no_species": r.no_species} if r.detected is not None else {})}
            for r in results for row in r.top]
    columns = ["file", "rank", "label", "score"] + [c for c in ("external_id", "threshold", "detected", "no_species")
                                                    if any(c in row for row in rows)]
    return pd.DataFrame(rows, columns=columns).to_csv(sep="\t", index=False, lineterminator="\n")
