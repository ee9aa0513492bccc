"""Teacher and students side by side: report.tsv, report.md and report.png of results/selftrain/<model>/.

Round 0 is the teacher (the model trained on the labelled data alone); round r the student trained on the
labelled data plus the windows its teacher (round r - 1) pseudo-labelled. Every figure comes from the
rounds' own evaluations (metrics.json of `jibjib evaluate`, on the same test split).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from jibjib.core import fsutil

REPORT_COLUMNS = ("round", "role", "pseudo_positives", "pseudo_negatives", "file_top1_accuracy", "file_macro_f1",
                  "file_cmap", "file_macro_roc_auc", "unit_cmap", "window_test_precision", "window_test_recall",
                  "soundscape_cmap", "soundscape_event_recall", "soundscape_false_detections_per_hour")


def round_row(round_number: int, metrics_json: str | os.PathLike, pseudo_tsv: str | os.PathLike | None,
              soundscapes_json: str | os.PathLike | None = None) -> dict:
    """One row of REPORT_COLUMNS from a round's metrics.json, (for a student) its pseudo_labels.tsv and (with
    annotated soundscapes) its soundscapes.json: cmAP, and pooled over all species event recall and false
    detections per hour."""
    metrics = json.loads(Path(metrics_json).read_text())
    kinds = (pd.read_csv(pseudo_tsv, sep="\t", keep_default_na=False)["kind"] if pseudo_tsv
             else pd.Series([], dtype=str))
    window = metrics["thresholds"]["window"]["test"]
    return {"round": round_number, "role": "student" if round_number else "teacher",
            "pseudo_positives": int((kinds == "positive").sum()) if pseudo_tsv else None,
            "pseudo_negatives": int((kinds == "negative").sum()) if pseudo_tsv else None,
            "file_top1_accuracy": metrics["file"]["top1_accuracy"], "file_macro_f1": metrics["file"]["macro"]["f1"],
            "file_cmap": metrics["file"]["cmap"], "file_macro_roc_auc": metrics["file"]["macro_roc_auc"],
            "unit_cmap": metrics["patch"]["cmap"], "window_test_precision": window["macro_precision"],
            "window_test_recall": window["macro_recall"], **_soundscape_figures(soundscapes_json)}


def _soundscape_figures(path: str | os.PathLike | None) -> dict:
    if not path:
        return dict.fromkeys(("soundscape_cmap", "soundscape_event_recall", "soundscape_false_detections_per_hour"))
    summary = json.loads(Path(path).read_text())
    return {"soundscape_cmap": summary["cmap"], "soundscape_event_recall": summary["pooled"]["event_recall"],
            "soundscape_false_detections_per_hour": summary["pooled"]["false_detections_per_hour"]}


def write_report(model: str, metrics: list[str | os.PathLike], pseudo: list[str | os.PathLike],
                 out_dir: str | os.PathLike, soundscapes: list[str | os.PathLike] | None = None) -> pd.DataFrame:
    """report.tsv, report.md and report.png of `model`: `metrics` (and `soundscapes`, if any) of rounds 0..R,
    `pseudo` of rounds 1..R."""
    if len(metrics) != len(pseudo) + 1 or (soundscapes and len(soundscapes) != len(metrics)):
        raise ValueError("one metrics.json (and soundscapes.json) per round and the teacher's, one "
                         "pseudo_labels.tsv per student round")
    rows = [round_row(r, path, pseudo[r - 1] if r else None, soundscapes[r] if soundscapes else None)
            for r, path in enumerate(metrics)]
    table = pd.DataFrame(rows, columns=list(REPORT_COLUMNS)).astype({"pseudo_positives": "Int64",
                                                                     "pseudo_negatives": "Int64"})
    out = Path(out_dir)
    fsutil.write_tsv(out / "report.tsv", table)
    with fsutil.atomic_open(out / "report.md") as f:
        f.write(markdown(model, table))
    _figure(out / "report.png", model, table)
    return table


def _cell(value: object) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and value != value):
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def markdown(model: str, table: pd.DataFrame) -> str:
    """The report as a markdown table with a sentence on the last round against the teacher."""
    lines = [f"# Self-training of {model}: teacher and students", "",
             "Round 0 is the teacher, trained on the labelled data; round r the student of round r - 1's "
             "pseudo-labels. On the test split: file_* of the file scores, unit_cmap of the model's units (patches "
             "or sequences), window_test_* what the val window thresholds reach on the windows analyze cuts; "
             "soundscape_* on the annotated soundscapes (event recall and false detections per hour pooled over "
             "the species).", "",
             "| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in table.astype(object).itertuples(index=False)]
    teacher, last = table.iloc[0], table.iloc[-1]
    column = "soundscape_cmap" if pd.notna(teacher["soundscape_cmap"]) else "unit_cmap"
    if len(table) > 1 and pd.notna(teacher[column]) and pd.notna(last[column]):
        change = last[column] - teacher[column]
        lines += ["", f"{column} of round {int(last['round'])}: {last[column]:.3f} "
                      f"({'+' if change >= 0 else ''}{change:.3f} against the teacher)."]
    return "\n".join(lines) + "\n"


def _figure(path: Path, model: str, table: pd.DataFrame) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 3.2))
    for column in ("file_cmap", "unit_cmap", "file_macro_f1", "soundscape_cmap", "soundscape_event_recall"):
        values = pd.to_numeric(table[column], errors="coerce")
        if values.notna().any():
            axis.plot(table["round"], values, marker="o", label=column)
    axis.set_xlabel("round (0: teacher)")
    axis.set_xticks(table["round"])
    axis.set_ylim(0, 1.02)
    axis.set_title(f"self-training of {model}")
    axis.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    fsutil.atomic_save(path, lambda target: figure.savefig(target, format="png", dpi=100))
    plt.close(figure)
