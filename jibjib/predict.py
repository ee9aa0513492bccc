"""`jibjib predict`: score WAV files with an exported model.

Files at any sample rate are read and resampled with the feature step's own
code, then handed to the export's `serving_default` signature as 16 kHz mono;
the log-mel front end runs inside the exported graph.  A file that cannot be
scored gets one line on stderr and the others are still scored.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .audio import AudioError, open_wav, to_mono
from .errors import ExportError
from .features import check_usable
from .params import FrontEnd
from .resample import resample


@dataclass
class Prediction:
    path: str
    top: list[dict[str, Any]] = field(default_factory=list)  # label, score, [external_id], [threshold, detected]
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.path, "predictions": self.top, **({"error": self.error} if self.error else {})}


class Exported:
    """A loaded export: the serving function, its front-end parameters, labels and thresholds."""

    def __init__(self, export_dir: str | os.PathLike) -> None:
        folder = Path(export_dir)
        card_path = folder / "assets" / "model_card.json"
        if not (folder / "saved_model.pb").is_file() or not card_path.is_file():
            raise ExportError(f"{folder} is not a jibjib export (expected saved_model.pb and assets/model_card.json; "
                              "point --model at results/export/<model>/<version>)")
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf

        self.card = json.loads(card_path.read_text())
        frontend = {k: v for k, v in self.card["frontend"].items() if k != "fingerprint"}
        self.params = FrontEnd.from_config(frontend)
        labels = pd.read_csv(folder / "assets" / "labels.tsv", sep="\t", keep_default_na=False)
        self.labels = labels["label"].astype(str).tolist()
        self.external_ids = labels["external_id"].tolist() if "external_id" in labels else None
        self.thresholds_path = folder / "assets" / "thresholds.tsv"
        # A SavedModel is a graph and weights: loading it runs no Python code from the folder.
        self._serve = tf.saved_model.load(str(folder)).signatures["serving_default"]
        self._tf = tf

    def waveform(self, path: str | os.PathLike) -> np.ndarray:
        """The file as float32 mono at the model's sample rate; AudioError if unusable."""
        with open_wav(path) as wav:
            # The feature step's own checks: predict refuses what training never saw.
            check_usable(wav.info, self.params)
            mono = np.concatenate([to_mono(block) for block in wav.blocks()]).astype(np.float32, copy=False)
            rate = wav.info.sample_rate
        return mono if rate == self.params.sample_rate else resample(mono, rate, self.params.sample_rate)

    def scores(self, waveform: np.ndarray, calibrated: bool = False) -> np.ndarray:
        outputs = self._serve(waveform=self._tf.constant(waveform[None, :]))
        return outputs["calibrated_scores" if calibrated else "scores"].numpy()[0]


def load_thresholds(path: str | os.PathLike, labels: list[str]) -> np.ndarray:
    """Per-class thresholds in class order; NaN (never detected) for classes without one."""
    table = pd.read_csv(path, sep="\t", keep_default_na=False, na_values=["nan", "NaN", ""])
    if not {"label", "threshold"} <= set(table.columns):
        raise ExportError(f"{path}: expected columns label and threshold")
    by_label = dict(zip(table["label"].astype(str), table["threshold"].astype(float)))
    return np.array([by_label.get(label, math.nan) for label in labels])


def predict_files(model: Exported, files: list[str], top_k: int = 5, thresholds: np.ndarray | None = None,
                  calibrated: bool = False) -> list[Prediction]:
    """The top-k species of each file; with thresholds, each row also says whether the class is detected."""
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
            for c in np.argsort(-scores, kind="stable")[: min(top_k, len(scores))]:
                row: dict[str, Any] = {"label": model.labels[c], "score": round(float(scores[c]), 6)}
                if model.external_ids is not None:
                    row["external_id"] = model.external_ids[c]
                if thresholds is not None:
                    threshold = float(thresholds[c])
                    row["threshold"] = None if math.isnan(threshold) else threshold
                    row["detected"] = bool(not math.isnan(threshold) and scores[c] >= threshold)
                result.top.append(row)
        results.append(result)
    return results


def to_tsv(results: list[Prediction]) -> str:
    """One row per (file, rank); failed files have no rows (their error goes to stderr)."""
    rows = [{"file": r.path, "rank": rank, **row} for r in results for rank, row in enumerate(r.top, start=1)]
    columns = ["file", "rank", "label", "score"] + [c for c in ("external_id", "threshold", "detected")
                                                    if any(c in row for row in rows)]
    return pd.DataFrame(rows, columns=columns).to_csv(sep="\t", index=False, lineterminator="\n")
