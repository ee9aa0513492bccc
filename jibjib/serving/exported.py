"""An export folder as its readers see it: shared by `jibjib predict` and `jibjib analyze`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from jibjib.core.errors import ExportError
from jibjib.core.params import FrontEnd
from jibjib.serving.publish import resolve_export


class ExportAssets:
    """What an export says about itself (model card, front end, labels, thresholds), without loading the model.

    `export_dir`: a version folder, or a model's export folder (or its current.json): its current version.
    """

    def __init__(self, export_dir: str | os.PathLike) -> None:
        folder = resolve_export(export_dir)
        card_path = folder / "assets" / "model_card.json"
        if not (folder / "saved_model.pb").is_file() or not card_path.is_file():
            raise ExportError(f"{folder} is not a jibjib export (expected saved_model.pb and assets/model_card.json; "
                              "point --model at results/export/<model> or results/export/<model>/<version>)")
        import pandas as pd

        self.folder = folder
        self.card = json.loads(card_path.read_text())
        self.params = FrontEnd.from_config({k: v for k, v in self.card["frontend"].items() if k != "fingerprint"})
        labels = pd.read_csv(folder / "assets" / "labels.tsv", sep="\t", keep_default_na=False)
        self.labels = labels["label"].astype(str).tolist()
        self.external_ids = labels["external_id"].tolist() if "external_id" in labels else None
        self.thresholds_path = folder / "assets" / "thresholds.tsv"

    def load_saved_model(self) -> tuple[Any, Any]:
        """(tensorflow, the loaded SavedModel), TensorFlow's chatter quietened; loading runs no code from the folder."""
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf

        from jibjib.core.tflog import quiet_python_logging

        quiet_python_logging()
        return tf, tf.saved_model.load(str(self.folder))
