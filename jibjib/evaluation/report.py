"""report.md of the evaluation: metrics.json in brief, in markdown."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd


def fmt(value: float | None) -> str:
    return "–" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.3f}"


def markdown_report(report: dict[str, Any], thresholds: pd.DataFrame) -> str:
    """The human-readable summary of metrics.json."""
    top_k = next(k for k in report["file"] if k.startswith("top") and k != "top1_accuracy")
    lines = [
        f"# {report['model']}: evaluation on the test split",
        "",
        f"{report['n_files']} test files ({report['files_without_patches']} too short to score), "
        f"{len(report['classes'])} classes, trunk initialisation: {report['trunk_initialisation']}, "
        f"{report['epochs_completed']} epochs. File score: {report['file_score']}.",
        "",
        *composition_lines(report),
        f"| level | top-1 | top-{top_k.removeprefix('top').removesuffix('_accuracy')} | macro P | macro R | macro F1 | cmAP "
        "| macro ROC-AUC | top-1 ECE | classwise ECE |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for level, name in (("file", "file"), ("patch", report["patch_unit"])):
        m = report[level]
        cells = [m["top1_accuracy"], m[top_k], *(m["macro"][k] for k in ("precision", "recall", "f1")), m["cmap"],
                 m["macro_roc_auc"], m["ece"], m["classwise_ece"]]
        lines.append(f"| {name} | " + " | ".join(fmt(v) for v in cells) + " |")
    lines += [
        "",
        calibration_sentence(report["calibration"]),
        "",
        threshold_sentence(report["thresholds"]),
        "",
        window_threshold_sentence(report["thresholds"]),
        "",
        evaluated_sentence(report),
        "",
        "## Per class (file level)",
        "",
        "| class | support | precision | recall | F1 | AP | ROC-AUC "
        f"| threshold for precision {report['thresholds']['target_precision']:g} (val) "
        "| status | test precision at threshold (95 % interval) | test recall at threshold "
        f"| window threshold ({report['thresholds']['window_unit']}) | window status |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    by_label = thresholds.set_index("label")
    for row in report["file"]["per_class"]:
        cells = [fmt(row[k]) for k in ("precision", "recall", "f1", "average_precision", "roc_auc")]
        at = by_label.loc[row["label"]]
        cells += [fmt(at["threshold"]), at["status"],
                  f"{fmt(at['test_precision'])} ({fmt(at['test_precision_low'])}–{fmt(at['test_precision_high'])})",
                  fmt(at["test_recall"]), fmt(at["window_threshold"]), at["window_status"]]
        lines.append(f"| {row['label']} | {row['support']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def calibration_sentence(cal: dict[str, Any]) -> str:
    """The temperature and what it does to the test ECEs, with why a fit at its bound is no failure."""
    headline = ("classwise" if cal["reliability_kind"] == "classwise" else "top-1")
    text = (f"Calibration: temperature {cal['temperature']:.3f} fitted on {cal['n_val_files']} val files; on the "
            f"test files top-1 ECE {fmt(cal['file_ece_before'])} before, {fmt(cal['file_ece_after'])} after, "
            f"classwise ECE {fmt(cal['file_classwise_ece_before'])} before, {fmt(cal['file_classwise_ece_after'])} "
            f"after ({headline} is the one this model's outputs call for; reliability.png draws it).")
    if cal["temperature_at_bound"]:
        text += (" The fit stopped at its bound: on these val files the likelihood keeps rising as the scores "
                 "sharpen (no val file has all its patches on the wrong side for a class), so val gives no "
                 "evidence of overconfidence; see docs/evaluation.md.")
    return text


def _test_outcome(summary: dict[str, Any], kind: str, name: str) -> str:
    """What the `kind` thresholds reach on test, as a phrase about `name`."""
    test = summary[kind]["test"]
    return (f"{name} precision {fmt(test['macro_precision'])}, recall {fmt(test['macro_recall'])} "
            f"over {test['classes']} species ({test['classes_reaching_target']} reach "
            f"{summary['target_precision']:g}, {test['classes_without_detections']} detect nothing)")


def _fallbacks(summary: dict[str, Any], kind: str) -> str:
    """How many species of `kind` have too few val files for a threshold of their own."""
    part = summary[kind]
    if not part["classes_with_fallback"]:
        return ""
    pooled = part["fallback_threshold"]
    return (f" {part['classes_with_fallback']} species have fewer than {summary['min_support']} val files and take "
            "the threshold fitted on all species pooled (status fallback" + (f", {pooled:.4f}" if pooled is not None
                                                                             else ": unreachable") + ").")


def threshold_sentence(summary: dict[str, Any]) -> str:
    target = f"{summary['target_precision']:g}"
    parts = [_test_outcome(summary, kind, f"{kind} scores") for kind in ("raw", "calibrated")]
    return (f"Thresholds for precision {target}, fitted on val, on the test files (macro over the species with a "
            "threshold and test files; a species detecting nothing counts as precision 0): " + "; ".join(parts)
            + f". {summary['raw']['classes_with_threshold']} species have a raw threshold and "
            f"{summary['calibrated']['classes_with_threshold']} a calibrated one; per species, with the precision's "
            "95 % interval, in thresholds.tsv." + _fallbacks(summary, "raw"))


def _window_labels(summary: dict[str, Any]) -> str:
    """How the windows were labelled (train.call_windows), as a clause."""
    if summary.get("call_windows") == "activity":
        return ("each labelled with its file's species where it holds an active patch (train.call_windows: "
                "activity; " + summary["window_labels"].split("activity: ", 1)[-1] + ")")
    return "each labelled with its file's species also where it holds no song"


def window_threshold_sentence(summary: dict[str, Any]) -> str:
    """The window thresholds (for `jibjib analyze`) in one sentence."""
    unit = summary["window_unit"]
    grid = (f" ({summary['window_seconds']:.2f} s every {summary['window_hop_seconds']:.2f} s, as analyze cuts them)"
            if "window_seconds" in summary else "")
    return (f"Window thresholds for precision {summary['target_precision']:g}, fitted on the raw probabilities of "
            f"the val windows{grid}, {_window_labels(summary)}, on the test windows: "
            + _test_outcome(summary, "window", "window")
            + f". {summary['window']['classes_with_threshold']} species have one (window_threshold in "
            f"thresholds.tsv; a window is one {unit})." + _fallbacks(summary, "window"))


def composition_lines(report: dict[str, Any]) -> list[str]:
    """What the test files hold beyond one species each, and the "no species" rate on background: report lines
    (none when every test file holds one species)."""
    n_background, n_multi = report.get("n_background_files", 0), report.get("n_multi_species_files", 0)
    if not n_background and not n_multi:
        return []
    lines = [f"Of the scored test files, {n_background} are background (a negative for every species) and {n_multi} "
             "hold several species (a positive for each); top-1, top-k, the confusion matrix and top-1 ECE count the "
             f"{report['file']['n_single_species']} single-species files, the per-class figures every file.", ""]
    if n_background:
        b = report["background"]
        lines += ["No species (background test files on which no species reaches its val threshold): "
                  f"{fmt(b['raw']['no_species_rate'])} with raw, {fmt(b['calibrated']['no_species_rate'])} with "
                  f"calibrated thresholds (mean top score {fmt(b['raw']['mean_top_score'])} raw, "
                  f"{fmt(b['calibrated']['mean_top_score'])} calibrated); {fmt(b['window']['no_species_rate'])} "
                  f"of their {b['window']['n']} analysis windows at the window thresholds.", ""]
    return lines


def evaluated_sentence(report: dict[str, Any]) -> str:
    no_test, no_val = report["species_without_test_files"], report["species_without_val_files"]
    if not no_test and not no_val:
        return "Every species has val and test files."
    parts = [f"no test file ({len(no_test)}, not evaluated): {', '.join(no_test)}" if no_test else "",
             f"no val file ({len(no_val)}, the pooled fallback threshold): {', '.join(no_val)}" if no_val else ""]
    return "Too few recordings: " + "; ".join(p for p in parts if p) + "."
