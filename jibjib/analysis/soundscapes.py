"""How well window scores find the annotated calls of long field recordings.

Inputs: the per-file window scores of `jibjib analyze --scores DIR`
(`DIR/<relative path without extension>.npz`), the per-species window
thresholds of thresholds.tsv, and annotations: Raven selection tables (one per
audio file, `<stem>.selections.txt` or `<stem>.Table.1.selections.txt`) or one
TSV with columns `file, start, end, label`.  Files are matched by their path
relative to the audio folder, without extension.

Definitions (metrics.py's conventions where they apply):

* A window is *positive* for a species when it overlaps one of that species'
  calls by at least half the shorter of the two (OVERLAP_SHARE), *negative*
  when it overlaps none of them, and left out of that species' window-level
  figures when it overlaps one by less (a window clipping the edge of a call
  is neither a miss nor a false alarm).
* Window level, per species: AP and ROC-AUC over all windows of all evaluated
  files pooled; at the species' window threshold (score >= threshold; a NaN
  threshold detects nothing) precision, recall and F1 of the windows.
* A *detection* is a run of consecutive windows of one species at or above its
  threshold (each starting before the previous one ends), merged into one
  span from the first window's start to the last one's end.
* Event recall: the share of a species' annotated calls that a detection of
  that species overlaps (by any amount).
* False detections per hour: the detections of a species that overlap none of
  its calls, divided by the hours of audio that no annotated call (of any
  label) covers.
* Species with calls in the evaluated files enter the macro averages (AP and
  ROC-AUC where defined; the threshold figures where the species also has a
  threshold); species never annotated are reported, with their false
  detections, but left out of them.  Files with scores but no annotations are
  not evaluated (listed); annotated files without scores are listed too.
"""

from __future__ import annotations

import csv
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from jibjib.core import fsutil
from jibjib.evaluation import metrics
from jibjib.features.audio import is_audio_file
from jibjib.core.errors import InputError
from jibjib.analysis.scores import ScoreFileError, WindowScores, load_scores
from jibjib.analysis.tables import detections, read_window_thresholds

__all__ = ["Call", "WindowScores", "read_annotations", "read_scores", "read_window_thresholds",
           "evaluate_soundscapes", "markdown_section", "write_soundscape_report", "OVERLAP_SHARE"]

OVERLAP_SHARE = 0.5
STRIP_SECONDS = 60.0
_RAVEN_RE = re.compile(r"^(?P<stem>.+?)(?:\.Table\.\d+)?\.selections\.txt$")
_BEGIN, _END = "Begin Time (s)", "End Time (s)"
# Raven's own default is "Annotation"; "Species" is what the demo and BirdNET write.
_RAVEN_LABELS = ("Species", "Annotation", "Label", "label", "species", "Class", "class")


@dataclass(frozen=True)
class Call:
    start: float
    end: float
    label: str
    low_hz: float | None = None
    high_hz: float | None = None


# --------------------------------------------------------------------------
# Reading


def recording_key(name: str) -> str:
    """A file's path as annotations and score folders name it: posix, relative, without an audio extension."""
    path = Path(name.replace("\\", "/").removeprefix("./"))
    return (path.with_suffix("") if is_audio_file(path) else path).as_posix()


def _numbers(table: pd.DataFrame, column: str, path: Path, lines: np.ndarray) -> np.ndarray:
    text = table[column].str.strip()
    values = pd.to_numeric(text, errors="coerce").to_numpy(float)
    bad = np.flatnonzero(~np.isfinite(values) & (text != "").to_numpy())
    if bad.size:
        raise InputError(f"{path}: line {lines[bad[0]]}: {column} {text.iat[bad[0]]!r} is not a number")
    return values


def _calls(path: Path, table: pd.DataFrame, lines: np.ndarray, begin: str, end: str, label: str,
           low: str | None = None, high: str | None = None) -> list[Call]:
    """The checked calls of a table whose rows are all calls, in row order; `lines` are the rows' file lines."""
    starts, ends = _numbers(table, begin, path, lines), _numbers(table, end, path, lines)
    lows = _numbers(table, low, path, lines) if low else np.full(len(table), np.nan)
    highs = _numbers(table, high, path, lines) if high else np.full(len(table), np.nan)
    calls = []
    for line, s, e, name, lo, hi in zip(lines, starts, ends, table[label].str.strip(), lows, highs):
        if math.isnan(s) or math.isnan(e) or not name:
            raise InputError(f"{path}: line {line}: {begin}, {end} and {label} must all be given")
        if s < 0 or e <= s:
            raise InputError(f"{path}: line {line}: a call must start at 0 s or later and end after it starts, "
                             f"not {s:g}-{e:g}")
        calls.append(Call(float(s), float(e), name, None if math.isnan(lo) else float(lo),
                          None if math.isnan(hi) else float(hi)))
    return calls


def _by_time(calls: list[Call]) -> list[Call]:
    return sorted(calls, key=lambda c: (c.start, c.end, c.label))


def _read_table(path: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """The table as text and the file line of each row (blank lines are skipped)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f, delimiter="\t"))
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not a UTF-8 text table ({exc.reason} at byte {exc.start})") from None
    if not rows or not any(rows[0]):
        raise InputError(f"{path}: not a tab-separated table with a header: the first line is empty")
    header = [name.strip() for name in rows[0]]
    lines, body = [], []
    for line, row in enumerate(rows[1:], 2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) > len(header):
            raise InputError(f"{path}: line {line}: {len(row)} tab-separated fields, the header has {len(header)}")
        lines.append(line)
        body.append(row + [""] * (len(header) - len(row)))  # editors drop trailing empty cells
    return pd.DataFrame(body, columns=header, dtype=str), np.array(lines, dtype=int)


def read_raven_table(path: str | os.PathLike) -> list[Call]:
    """The calls of one Raven selection table.

    Raven lists each selection once per view (Waveform 1, Spectrogram 1):
    only the spectrogram rows are kept when there are any.
    """
    path = Path(path)
    table, lines = _read_table(path)
    label = next((c for c in _RAVEN_LABELS if c in table.columns), None)
    missing = [c for c in (_BEGIN, _END) if c not in table.columns] + ([] if label else ["Species"])
    if missing:
        raise InputError(f"{path}: not a Raven selection table: no column {', '.join(missing)}")
    if "View" in table.columns and table["View"].str.startswith("Spectrogram").any():
        keep = table["View"].str.startswith("Spectrogram").to_numpy()
        table, lines = table[keep].reset_index(drop=True), lines[keep]
    return _by_time(_calls(path, table, lines, _BEGIN, _END, label,
                           *(c if c in table.columns else None for c in ("Low Freq (Hz)", "High Freq (Hz)"))))


def read_annotation_tsv(path: str | os.PathLike) -> dict[str, list[Call]]:
    """One TSV with columns file, start, end, label; a row with only `file` marks a file without calls."""
    path = Path(path)
    table, lines = _read_table(path)
    missing = [c for c in ("file", "start", "end", "label") if c not in table.columns]
    if missing:
        raise InputError(f"{path}: expected columns file, start, end, label; missing {', '.join(missing)}")
    names = table["file"].str.strip()
    if (names == "").any():
        raise InputError(f"{path}: line {lines[int(np.argmax(names == ''))]}: no file")
    bare = (table[["start", "end", "label"]] == "").all(axis=1).to_numpy()
    out: dict[str, list[Call]] = {recording_key(name): [] for name in names}
    calls = _calls(path, table[~bare].reset_index(drop=True), lines[~bare], "start", "end", "label")
    for name, call in zip(names[~bare], calls):
        out[recording_key(name)].append(call)
    return {key: _by_time(calls) for key, calls in sorted(out.items())}


def read_annotations(path: str | os.PathLike) -> dict[str, list[Call]]:
    """Recording key -> its calls, from a folder of Raven tables (searched recursively),
    one Raven table, or one TSV of file, start, end, label."""
    path = Path(path)
    if path.is_dir():
        found: dict[str, Path] = {}
        for table in sorted(path.rglob("*.selections.txt")):
            if any(part.startswith(".") for part in table.relative_to(path).parts):
                continue
            match = _RAVEN_RE.match(table.name)
            key = recording_key((table.parent.relative_to(path) / match["stem"]).as_posix())
            if key in found:
                raise InputError(f"{path}: two selection tables for {key}: {found[key].name} and {table.name}")
            found[key] = table
        if not found:
            raise InputError(f"{path}: no Raven selection table (<name>.selections.txt) in this folder")
        return {key: read_raven_table(table) for key, table in sorted(found.items())}
    if not path.is_file():
        raise FileNotFoundError(2, "No such file or directory", str(path))
    match = _RAVEN_RE.match(path.name)
    return {recording_key(match["stem"]): read_raven_table(path)} if match else read_annotation_tsv(path)


def read_scores(folder: str | os.PathLike) -> dict[str, WindowScores]:
    """Recording key -> its window scores, from `jibjib analyze --scores` npz files (searched recursively)."""
    folder = Path(folder)
    out: dict[str, WindowScores] = {}
    labels: list[str] | None = None
    for path in sorted(folder.rglob("*.npz")):
        if any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue  # temporary files of a writer
        try:
            scores = load_scores(path)
        except ScoreFileError as exc:
            raise InputError(str(exc)) from None
        if labels is None:
            labels = scores.labels
        elif scores.labels != labels:
            raise InputError(f"{path}: its labels differ from those of the other score files (another model?)")
        out[path.relative_to(folder).with_suffix("").as_posix()] = scores
    if not out:
        raise InputError(f"{folder}: no window score files (.npz, written by jibjib analyze --scores)")
    return out


# --------------------------------------------------------------------------
# Evaluation


def _overlaps(a_start: np.ndarray, a_end: np.ndarray, b_start: np.ndarray, b_end: np.ndarray) -> np.ndarray:
    """Seconds of overlap, (len(a), len(b))."""
    return np.clip(np.minimum(a_end[:, None], b_end[None, :]) - np.maximum(a_start[:, None], b_start[None, :]),
                   0.0, None)


def window_truth(start: np.ndarray, end: np.ndarray, calls: list[Call]) -> tuple[np.ndarray, np.ndarray]:
    """(positive, left out) per window for one species' calls: see the module's definitions."""
    if not calls:
        return np.zeros(start.size, bool), np.zeros(start.size, bool)
    c_start, c_end = np.array([c.start for c in calls]), np.array([c.end for c in calls])
    overlap = _overlaps(start, end, c_start, c_end)
    need = OVERLAP_SHARE * np.minimum((end - start)[:, None], (c_end - c_start)[None, :])
    # A nanosecond of slack: window and call times are sums of decimal seconds.
    positive = ((overlap >= need - 1e-9) & (overlap > 0)).any(axis=1)
    return positive, (overlap > 0).any(axis=1) & ~positive


def _covered_seconds(calls: list[Call], seconds: float) -> float:
    """Length of the union of the calls' spans within [0, seconds]."""
    total, reach = 0.0, 0.0
    for call in sorted(calls, key=lambda c: c.start):
        start, end = max(call.start, reach), min(call.end, seconds)
        if end > start:
            total += end - start
        reach = max(reach, min(call.end, seconds))
    return total


def evaluate_soundscapes(scores: dict[str, WindowScores], annotations: dict[str, list[Call]],
                         thresholds: dict[str, float]) -> dict[str, Any]:
    """soundscapes.json: the window-level and event-level figures described in the module docstring."""
    keys = sorted(set(scores) & set(annotations))
    if not keys:
        raise InputError("no file has both window scores and annotations: do the score files' names "
                         "(relative path without extension) match the annotated files'?")
    labels = scores[keys[0]].labels
    known = set(labels)
    unknown: dict[str, int] = {}
    for key in keys:
        for call in annotations[key]:
            if call.label not in known:
                unknown[call.label] = unknown.get(call.label, 0) + 1
    seconds = sum(scores[k].seconds for k in keys)
    unannotated = sum(scores[k].seconds - _covered_seconds(annotations[k], scores[k].seconds) for k in keys)
    hours = unannotated / 3600.0
    files = [{"file": k, "seconds": scores[k].seconds, "windows": int(scores[k].start.size),
              "calls": sum(c.label in known for c in annotations[k]),
              "species": sorted({c.label for c in annotations[k] if c.label in known}),
              "detections": 0, "false_detections": 0} for k in keys]

    per_species = []
    for c, label in enumerate(labels):
        threshold = float(thresholds.get(label, math.nan))
        positive, score, left_out = [], [], []
        detected_windows = true_windows = n_calls = hit_calls = n_detections = false = 0
        for key, summary in zip(keys, files):
            s = scores[key]
            calls = [call for call in annotations[key] if call.label == label]
            pos, out = window_truth(s.start, s.end, calls)
            col = s.scores[:, c].astype(np.float64)
            positive.append(pos[~out])
            score.append(col[~out])
            left_out.append(out)
            hit = ~out & (col >= threshold)  # NaN compares false: no threshold, no detection
            detected_windows += int(hit.sum())
            true_windows += int((hit & pos).sum())
            found = detections(s.start, s.end, col, threshold)
            spans = np.array([d[:2] for d in found]).reshape(-1, 2)
            touching = _overlaps(spans[:, 0], spans[:, 1], np.array([x.start for x in calls]),
                                 np.array([x.end for x in calls])) > 0
            wrong = int((~touching.any(axis=1)).sum())
            n_calls += len(calls)
            hit_calls += int(touching.any(axis=0).sum())
            n_detections += len(found)
            false += wrong
            summary["detections"] += len(found)
            summary["false_detections"] += wrong
        positive_all, score_all = np.concatenate(positive), np.concatenate(score)
        support = int(positive_all.sum())
        has_threshold = not math.isnan(threshold)
        precision = metrics._ratio(true_windows, detected_windows) if has_threshold else None
        if precision is None and has_threshold and support:
            precision = 0.0  # a threshold that finds nothing has not delivered
        recall = metrics._ratio(true_windows, support) if has_threshold else None
        per_species.append({
            "label": label,
            "calls": n_calls,
            "positive_windows": support,
            "left_out_windows": int(np.concatenate(left_out).sum()),
            "negative_windows": int(positive_all.size - support),
            "average_precision": metrics.average_precision(positive_all, score_all),
            "roc_auc": metrics.roc_auc(positive_all, score_all),
            "window_threshold": threshold if has_threshold else None,
            "detected_windows": detected_windows if has_threshold else None,
            "precision": precision,
            "recall": recall,
            "f1": metrics._f1(precision, recall),
            "detections": n_detections if has_threshold else None,
            "detected_calls": hit_calls if has_threshold else None,
            "event_recall": metrics._ratio(hit_calls, n_calls) if has_threshold else None,
            "false_detections": false if has_threshold else None,
            "false_detections_per_hour": metrics._ratio(false, hours) if has_threshold else None,
        })
    annotated = [row for row in per_species if row["calls"]]
    thresholded = [row for row in annotated if row["window_threshold"] is not None]
    with_threshold = [row for row in per_species if row["window_threshold"] is not None]
    all_false = sum(row["false_detections"] for row in with_threshold)
    windows = [scores[k] for k in keys]
    return {
        "overlap_share": OVERLAP_SHARE,
        "n_files": len(keys),
        "hours": seconds / 3600.0,
        "unannotated_hours": hours,
        "n_windows": int(sum(w.start.size for w in windows)),
        "window_seconds": _median([w.end - w.start for w in windows]),
        "hop_seconds": _median([np.diff(np.sort(w.start)) for w in windows]),
        "calls": sum(row["calls"] for row in per_species),
        "species_annotated": len(annotated),
        "species_not_annotated": [row["label"] for row in per_species if not row["calls"]],
        "species_without_threshold": [row["label"] for row in per_species if row["window_threshold"] is None],
        "unknown_labels": dict(sorted(unknown.items())),
        "files_without_annotations": sorted(set(scores) - set(annotations)),
        "annotated_files_without_scores": sorted(set(annotations) - set(scores)),
        "cmap": metrics._mean([row["average_precision"] for row in annotated]),
        "macro_roc_auc": metrics._mean([row["roc_auc"] for row in annotated]),
        "macro_species": len(thresholded),
        "macro": {key: metrics._mean([row[key] for row in thresholded])
                  for key in ("precision", "recall", "f1", "event_recall", "false_detections_per_hour")},
        "detected_calls": sum(row["detected_calls"] for row in thresholded),
        "thresholded_calls": sum(row["calls"] for row in thresholded),
        "false_detections": all_false,
        "false_detections_per_hour": metrics._ratio(all_false, hours) if with_threshold else None,
        "per_species": per_species,
        "files": files,
    }


def _median(parts: list[np.ndarray]) -> float | None:
    values = np.concatenate(parts) if parts else np.zeros(0)
    return float(np.median(values)) if values.size else None


# --------------------------------------------------------------------------
# Report


def fmt(value: float | None, digits: int = 3) -> str:
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
