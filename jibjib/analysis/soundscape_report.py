"""The soundscape report: soundscapes.json, its markdown section (soundscapes.md, report.md) and the figure.

The figure draws one stretch of one annotated file (the one with the most
annotated species): the audio, the annotated calls, the detections and the
window scores against each species' threshold.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from jibjib.core import fsutil
from jibjib.features.audio import is_audio_file
from jibjib.analysis.annotations import Call, read_annotations
from jibjib.analysis.scores import WindowScores
from jibjib.analysis.soundscapes import evaluate_soundscapes, read_scores
from jibjib.analysis.tables import detections, read_window_thresholds

STRIP_SECONDS = 60.0


def fmt(value: float | None, digits: int = 3) -> str:
    """A figure for a table, with `digits` decimals; a dash where there is none (None or NaN)."""
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def markdown_section(report: dict[str, Any]) -> str:
    """The soundscape section of report.md."""
    m = report["macro"]
    lines = [
        "## Annotated soundscapes",
        "",
        f"{report['n_files']} files, {report['hours']:.2f} h ({report['unannotated_hours']:.2f} h without an annotated "
        f"call), {report['calls']} calls of {report['species_annotated']} species; windows of "
        f"{fmt(report['window_seconds'], 2)} s every {fmt(report['hop_seconds'], 2)} s. A window is positive for a "
        f"species when it overlaps one of its calls by at least {report['overlap_share']:.0%} of the shorter of the "
        "two, negative when it overlaps none, and left out of that species' window figures otherwise. A detection is a "
        "run of consecutive windows at or above the species' window threshold; event recall is the share of calls a "
        "detection overlaps; a detection overlapping no call of its species is false, counted per hour of audio "
        "without any annotated call.",
        "",
        "| cmAP | macro ROC-AUC | macro precision | macro recall | macro F1 | event recall | false detections / h |",
        "|---|---|---|---|---|---|---|",
        "| " + " | ".join([fmt(report["cmap"]), fmt(report["macro_roc_auc"])]
                         + [fmt(m[k]) for k in ("precision", "recall", "f1", "event_recall")]
                         + [fmt(m["false_detections_per_hour"], 1)]) + " |",
        "",
        f"Window level, pooled over the files; precision, recall, F1 and event recall at the window thresholds. "
        f"Macro averages over the {report['species_annotated']} annotated species (the threshold figures over the "
        f"{report['macro_species']} of them with a threshold). All species together: {report['detected_calls']} of "
        f"{report['thresholded_calls']} calls found, {report['false_detections']} false detections "
        f"({fmt(report['false_detections_per_hour'], 1)} per hour).",
        "",
        "| species | calls | positive windows | AP | ROC-AUC | window threshold | precision | recall | F1 "
        "| event recall | false detections | per hour |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["per_species"]:
        cells = [fmt(row[k]) for k in ("average_precision", "roc_auc", "window_threshold", "precision", "recall",
                                        "f1", "event_recall")]
        false = "–" if row["false_detections"] is None else str(row["false_detections"])
        lines.append(f"| {row['label']} | {row['calls']} | {row['positive_windows']} | " + " | ".join(cells)
                     + f" | {false} | {fmt(row['false_detections_per_hour'], 1)} |")
    notes = [
        ("Never annotated (reported, not in the macro averages)", report["species_not_annotated"]),
        ("Without a window threshold (no detections)", report["species_without_threshold"]),
        ("Labels the model does not know (their calls count as annotated audio only)",
         [f"{k} ({v} calls)" for k, v in report["unknown_labels"].items()]),
        ("Files with scores but no annotations (not evaluated)", report["files_without_annotations"]),
        ("Annotated files without scores (not evaluated)", report["annotated_files_without_scores"]),
    ]
    lines += [""] + [f"{title}: {', '.join(names)}." for title, names in notes if names]
    if report.get("figure"):
        strip = report["figure_strip"]
        lines += ["", f"![{strip['file']}: truth and detections]({report['figure']})", "",
                  f"{strip['file']}, {strip['start']:.0f}–{strip['end']:.0f} s, the stretch with the most annotated "
                  "species: annotated calls (boxes, and the upper bar of each lane), detections (lower bar: dark "
                  "when they overlap a call of their species, red when false) and window scores with the threshold "
                  "(dashed)."]
    elif report.get("figure_note"):
        lines += ["", f"No figure: {report['figure_note']}."]
    return "\n".join(lines) + "\n"


def find_audio(audio_dir: str | os.PathLike, key: str) -> Path | None:
    """The audio file of a recording key: `<audio_dir>/<key>.<any audio extension>`."""
    base = Path(audio_dir) / key
    if not base.parent.is_dir():
        return None
    for path in sorted(base.parent.iterdir()):
        if path.stem == base.name and is_audio_file(path) and path.is_file():
            return path
    return None


def pick_strip(annotations: dict[str, list[Call]], keys: list[str], known: set[str], seconds: dict[str, float],
               length: float = STRIP_SECONDS) -> tuple[str, float, float]:
    """(file, start, end): the file with the most annotated species and the stretch of it with the most."""
    def rank(calls: list[Call]) -> tuple[int, int]:
        calls = [c for c in calls if c.label in known]
        return len({c.label for c in calls}), len(calls)

    key = min(keys, key=lambda k: (*(-x for x in rank(annotations[k])), k))
    duration = seconds[key]
    best = (0.0, (-1, -1))
    for start in sorted({0.0} | {max(0.0, min(c.start - 2.0, duration - length)) for c in annotations[key]}):
        inside = [c for c in annotations[key] if c.start < start + length and c.end > start]
        if rank(inside) > best[1]:
            best = (start, rank(inside))
    return key, best[0], min(duration, best[0] + length)


def write_soundscape_report(scores_dir: str | os.PathLike, annotations_path: str | os.PathLike,
                            thresholds_tsv: str | os.PathLike, out_dir: str | os.PathLike,
                            audio_dir: str | os.PathLike | None = None, model: str | None = None,
                            threshold_column: str = "window_threshold",
                            figure_name: str | None = None,
                            with_report: str | os.PathLike | None = None) -> dict[str, Any]:
    """Write soundscapes.json, soundscapes.md and, with `audio_dir`, the figure to `out_dir`
    (`figure_name`, by default soundscape_<file>.png after the file drawn); with `with_report`
    (the test split's report) also report.md, that report followed by the soundscape section."""
    out = Path(out_dir)
    scores = read_scores(scores_dir)
    annotations = read_annotations(annotations_path)
    thresholds = read_window_thresholds(thresholds_tsv, threshold_column)
    report = evaluate_soundscapes(scores, annotations, thresholds)
    report["model"] = model or out.resolve().name
    report.update(figure=None, figure_strip=None, figure_note="no audio folder given")
    if audio_dir is not None:
        report.update(_figure(out, scores, annotations, thresholds, Path(audio_dir), report["model"], figure_name))
    fsutil.write_json(out / "soundscapes.json", report)
    section = markdown_section(report)
    with fsutil.atomic_open(out / "soundscapes.md") as f:
        f.write(section)
    if with_report is not None:
        with fsutil.atomic_open(out / "report.md") as f:
            f.write(Path(with_report).read_text(encoding="utf-8").rstrip("\n") + "\n\n" + section)
    return report


def _figure(out: Path, scores: dict[str, WindowScores], annotations: dict[str, list[Call]],
            thresholds: dict[str, float], audio_dir: Path, model: str, name: str | None) -> dict[str, Any]:
    import soundfile

    from jibjib.evaluation import figures  # matplotlib: only where a figure is drawn

    keys = sorted(set(scores) & set(annotations))
    labels = scores[keys[0]].labels
    key, start, end = pick_strip(annotations, keys, set(labels), {k: scores[k].seconds for k in keys})
    path = find_audio(audio_dir, key)
    if path is None:
        return {"figure": None, "figure_note": f"no audio file for {key} in {audio_dir}"}
    try:
        with soundfile.SoundFile(str(path)) as f:
            rate = f.samplerate
            # In an MP3, libmpg123 reports the bit reservoir it lacks after a seek on fd 2; the
            # CLI catches native output, and the first frame's few milliseconds do not show.
            f.seek(int(start * rate))
            samples = f.read(int((end - start) * rate), dtype="float32", always_2d=True).mean(axis=1)
    except (RuntimeError, OSError, soundfile.LibsndfileError) as exc:
        return {"figure": None, "figure_note": f"{path}: unreadable ({exc})"}
    s = scores[key]
    inside = (s.end > start) & (s.start < end)
    calls = [c for c in annotations[key] if c.end > start and c.start < end]
    lanes = sorted({c.label for c in calls if c.label in labels}
                   | {label for i, label in enumerate(labels)
                      if np.any(s.scores[inside, i] >= thresholds.get(label, math.nan))})
    tracks = []
    for label in lanes:
        i = labels.index(label)
        threshold = float(thresholds.get(label, math.nan))
        own = [c for c in annotations[key] if c.label == label]
        found = []
        for d_start, d_end, _ in detections(s.start, s.end, s.scores[:, i].astype(np.float64), threshold):
            if d_end > start and d_start < end:
                found.append((d_start, d_end, any(c.start < d_end and c.end > d_start for c in own)))
        tracks.append({"label": label, "centres": (s.start[inside] + s.end[inside]) / 2,
                       "scores": s.scores[inside, i], "threshold": threshold, "detections": found})
    name = name or f"soundscape_{Path(key).name}.png"
    figures.soundscape_strip(out / name, samples, rate, start, calls, tracks,
                             f"{model}: {key} ({path.suffix[1:].upper()}, {rate} Hz), {start:.0f}–{end:.0f} s")
    return {"figure": name, "figure_strip": {"file": key, "start": start, "end": end}, "figure_note": None}
