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
from jibjib.analysis.soundscapes import DetectionSettings, spans, evaluate_soundscapes, hit_matrix, read_scores
from jibjib.analysis.tables import file_detections, read_window_thresholds, thresholds_for

STRIP_SECONDS = 60.0


def fmt(value: float | None, digits: int = 3) -> str:
    """A figure for a table, with `digits` decimals; a dash where there is none (None or NaN)."""
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def definition_text(report: dict[str, Any]) -> str:
    """The section's paragraph on what was evaluated and how a detection is judged."""
    settings = report["detection_settings"]
    threshold = (f"a score of {settings['min_score']:g} (analyze.min_score)" if settings["min_score"] is not None
                 else "the species' window threshold")
    rows = ("each run of consecutive windows at or above it, merged into one span (analyze.merge)" if settings["merge"]
            else "each window at or above it (analyze.merge is off)")
    share = f"{report['overlap_share']:.0%} of the shorter of the two"
    return (f"{report['n_files']} files, {report['hours']:.2f} h ({report['unannotated_hours']:.2f} h without an "
            f"annotated call), {report['calls']} calls of {report['species_annotated']} species; windows of "
            f"{fmt(report['window_seconds'], 2)} s every {fmt(report['hop_seconds'], 2)} s. Detections are what "
            f"analyze delivers: at {threshold}, {rows}. A detection is true when it overlaps a call of its species "
            f"by at least {share}, false otherwise; event recall is the share of calls found, each detection finding "
            f"at most one call (matched one to one); false detections are counted per hour of all audio and, those "
            "overlapping no annotated call, per hour without any. A window is positive for a species when it overlaps "
            f"one of its calls by at least {share}, negative when it overlaps none, and left out of that species' "
            "window figures otherwise.")


def markdown_section(report: dict[str, Any]) -> str:
    """The soundscape section of report.md."""
    m, pooled = report["macro"], report["pooled"]
    lines = [
        "## Annotated soundscapes",
        "",
        definition_text(report),
        "",
        "| | cmAP | ROC-AUC | window precision | window recall | window F1 | event recall | false detections / h "
        "| false detections / h without calls |",
        "|---|---|---|---|---|---|---|---|---|",
        "| macro over species | " + " | ".join(
            [fmt(report["cmap"]), fmt(report["macro_roc_auc"])]
            + [fmt(m[k]) for k in ("precision", "recall", "f1", "event_recall")]
            + [fmt(m[k], 1) for k in ("false_detections_per_hour", "false_detections_per_unannotated_hour")]) + " |",
        "| pooled over calls and detections | – | – | – | – | – | " + " | ".join(
            [fmt(pooled["event_recall"])]
            + [fmt(pooled[k], 1) for k in ("false_detections_per_hour", "false_detections_per_unannotated_hour")])
        + " |",
        "",
        f"Window level, pooled over the files; the threshold figures at the delivered thresholds. Macro averages over "
        f"the {report['species_annotated']} annotated species (the threshold figures over the {report['macro_species']} "
        f"of them with a threshold). Pooled: {pooled['detected_calls']} of {pooled['calls']} calls found, "
        f"{pooled['false_detections']} of {pooled['detections']} detections false: "
        f"{pooled['false_detections_unannotated']} where no call is annotated, "
        f"{pooled['false_detections_partial_call']} on part of a call of their species (less than the hit share), "
        f"{pooled['false_detections_other_calls']} on other species' calls only.",
        "",
        "| species | calls | positive windows | AP | ROC-AUC | threshold | precision | recall | F1 "
        "| detections | event recall | false detections | per hour |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["per_species"]:
        cells = [fmt(row[k]) for k in ("average_precision", "roc_auc", "window_threshold", "precision", "recall",
                                        "f1")]
        counts = ["–" if row[k] is None else str(row[k]) for k in ("detections", "false_detections")]
        lines.append(f"| {row['label']} | {row['calls']} | {row['positive_windows']} | " + " | ".join(cells)
                     + f" | {counts[0]} | {fmt(row['event_recall'])} | {counts[1]} "
                     f"| {fmt(row['false_detections_per_hour'], 1)} |")
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
                  "species: annotated calls (boxes, and the upper bar of each lane), detections as delivered (lower "
                  "bar: dark when true, red when false) and window scores with the threshold (dashed)."]
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
                            with_report: str | os.PathLike | None = None,
                            settings: DetectionSettings = DetectionSettings()) -> dict[str, Any]:
    """Write soundscapes.json, soundscapes.md and, with `audio_dir`, the figure to `out_dir`
    (`figure_name`, by default soundscape_<file>.png after the file drawn); with `with_report`
    (the test split's report) also report.md, that report followed by the soundscape section.
    `settings`: how analyze delivers detections (analyze.merge, analyze.min_score)."""
    out = Path(out_dir)
    scores = read_scores(scores_dir)
    annotations = read_annotations(annotations_path)
    thresholds = read_window_thresholds(thresholds_tsv, threshold_column)
    report = evaluate_soundscapes(scores, annotations, thresholds, settings)
    report["model"] = model or out.resolve().name
    report.update(figure=None, figure_strip=None, figure_note="no audio folder given")
    if audio_dir is not None:
        per_class = thresholds_for(next(iter(scores.values())).labels, thresholds, settings.min_score)
        report.update(_figure(out, scores, annotations, per_class, settings.merge, Path(audio_dir), report["model"],
                              figure_name))
    fsutil.write_json(out / "soundscapes.json", report)
    section = markdown_section(report)
    with fsutil.atomic_open(out / "soundscapes.md") as f:
        f.write(section)
    if with_report is not None:
        with fsutil.atomic_open(out / "report.md") as f:
            f.write(Path(with_report).read_text(encoding="utf-8").rstrip("\n") + "\n\n" + section)
    return report


def _figure(out: Path, scores: dict[str, WindowScores], annotations: dict[str, list[Call]],
            thresholds: np.ndarray, merge: bool, audio_dir: Path, model: str, name: str | None) -> dict[str, Any]:
    """The strip of one file: its audio, calls, delivered detections (true or false) and window scores;
    `thresholds` per class as analyze detects."""
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
    delivered = file_detections(key, s, thresholds, merge)
    lanes = sorted({c.label for c in calls if c.label in labels}
                   | {d.label for d in delivered if d.end > start and d.start < end})
    tracks = []
    for label in lanes:
        i = labels.index(label)
        own = [c for c in annotations[key] if c.label == label]
        mine = [d for d in delivered if d.label == label and d.end > start and d.start < end]
        true = hit_matrix(*spans(mine), *spans(own)).any(axis=1)
        tracks.append({"label": label, "centres": (s.start[inside] + s.end[inside]) / 2,
                       "scores": s.scores[inside, i], "threshold": float(thresholds[i]),
                       "detections": [(d.start, d.end, bool(t)) for d, t in zip(mine, true)]})
    name = name or f"soundscape_{Path(key).name}.png"
    figures.soundscape_strip(out / name, samples, rate, start, calls, tracks,
                             f"{model}: {key} ({path.suffix[1:].upper()}, {rate} Hz), {start:.0f}–{end:.0f} s")
    return {"figure": name, "figure_strip": {"file": key, "start": start, "end": end}, "figure_note": None}
