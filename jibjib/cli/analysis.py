"""`jibjib analyze`, `jibjib analysis-tables` and `jibjib evaluate-soundscapes`: models on field recordings."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jibjib.core.settings import schema_default
from jibjib.cli.common import input_dir, input_file, single_threaded_blas, tensorflow_threads


def cmd_evaluate_soundscapes(args: argparse.Namespace) -> None:
    from jibjib.analysis.soundscape_report import fmt, write_soundscape_report
    from jibjib.analysis.soundscapes import DetectionSettings

    settings = _table_settings(args)  # the same checks as analyze's
    report = write_soundscape_report(args.scores, args.annotations, args.thresholds, args.out_dir, args.audio,
                                     args.model, args.threshold_column, args.figure, args.with_report,
                                     DetectionSettings(settings.merge, settings.min_score))
    if args.audio and report["figure_note"]:
        print(f"jibjib evaluate-soundscapes: no figure: {report['figure_note']}", file=sys.stderr)
    pooled = report["pooled"]
    print(f"evaluate-soundscapes {report['model']}: {report['n_files']} files, {report['calls']} calls, "
          f"window cmAP {fmt(report['cmap'])}, event recall {fmt(pooled['event_recall'])} pooled, "
          f"{fmt(report['macro']['event_recall'])} macro; false detections per hour "
          f"{fmt(pooled['false_detections_per_hour'], 1)} pooled (see {args.out_dir}/soundscapes.md)",
          file=sys.stderr)

def _table_settings(args: argparse.Namespace):
    from jibjib.analysis.outputs import TableSettings

    if args.min_score is not None and not 0.0 <= args.min_score <= 1.0:
        from jibjib.core.errors import InputError

        raise InputError(f"--min-score: {args.min_score:g} is not a probability between 0 and 1")
    return TableSettings(args.min_score, args.merge, getattr(args, "format", "raven"),
                         Path(args.thresholds) if args.thresholds else None)

def _window_thresholds(export, settings) -> dict[str, float] | None:
    """The thresholds the tables use (None with a minimum score), read before any file is analysed."""
    from jibjib.analysis.tables import read_window_thresholds

    if settings.min_score is not None:
        return None
    return read_window_thresholds(settings.thresholds_path or export.thresholds_path)

def _write_tables(export, results, settings, thresholds, out_dir: str) -> int:
    from jibjib.analysis.outputs import write_outputs

    params = export.params
    return write_outputs(Path(out_dir), results, export.labels, export.external_ids, thresholds, settings,
                         (params.fmin_hz, params.fmax_hz))

def _analysis_summary(results, detections: int, out: str) -> str:
    from jibjib.analysis.analyze import REJECTED

    rejected = sum(r.status == REJECTED for r in results)
    return (f"{sum(r.scores is not None for r in results)} files analysed, {rejected} rejected, "
            f"{detections} detections (see {out})")

def cmd_analyze(args: argparse.Namespace) -> int:
    # The front end runs in a thread beside TensorFlow's own: BLAS threads on top oversubscribed the cores
    # (a small model on 2 cores took 30 % longer).
    single_threaded_blas()
    tensorflow_threads(args.threads)
    settings = _table_settings(args)  # before TensorFlow loads: a bad option costs no wait
    from jibjib.analysis.analyze import REJECTED, analyze_files
    from jibjib.analysis.analyzer import Analyzer
    from jibjib.analysis.inputs import find_inputs
    from jibjib.analysis.outputs import write_manifest
    from jibjib.core.errors import InputError

    if args.sources:
        if not args.root:
            raise InputError("--sources needs --root, the folder its paths are relative to")
        from jibjib.features.extract import read_sources

        recorded = read_sources(args.sources)
        names = _signature_paths(args.sources)
        inputs = [(Path(args.root) / name, name) for name in names]
    else:
        if not args.paths:
            raise InputError("name the audio files or folders to analyse (or --sources)")
        recorded, inputs = None, find_inputs(args.paths, args.root)
    if args.manifest and not args.scores:
        raise InputError("--manifest writes no tables, so it needs --scores to keep the scores in")
    if args.remove_other_scores and not args.scores:
        raise InputError("--remove-other-scores needs --scores")
    analyzer = Analyzer(args.model, args.hop)
    thresholds = None if args.manifest else _window_thresholds(analyzer, settings)
    results = analyze_files(analyzer, inputs, Path(args.scores) if args.scores else None, recorded)
    for failed in (r for r in results if r.status == REJECTED):
        print(f"jibjib analyze: {failed.path}: {failed.reason}" + (f": {failed.detail}" if failed.detail else ""),
              file=sys.stderr)
    if args.remove_other_scores:
        _remove_other_scores(args.scores, results)
    if args.manifest:
        write_manifest(Path(args.manifest), results)
        return 0  # the workflow's shard job: the reasons are in the manifest, the other shards go on
    found = _write_tables(analyzer, results, settings, thresholds, args.out)
    print(f"analyze: {_analysis_summary(results, found, args.out)}", file=sys.stderr)
    return 1 if any(r.status == REJECTED for r in results) else 0

def _remove_other_scores(scores_dir: str, results) -> None:
    from jibjib.analysis.analyze import remove_orphan_scores
    from jibjib.analysis.scores import scores_path

    removed = remove_orphan_scores(Path(scores_dir), {scores_path(scores_dir, r.relative) for r in results})
    if removed:
        print(f"analyze: removed {removed} score files of recordings no longer analysed here", file=sys.stderr)

def _signature_paths(path: str) -> list[str]:
    import csv

    with open(path, newline="", encoding="utf-8") as f:
        return [row["path"] for row in csv.DictReader(f, delimiter="\t")]

def cmd_analysis_tables(args: argparse.Namespace) -> None:
    settings = _table_settings(args)
    from jibjib.analysis.outputs import results_from_manifests
    from jibjib.serving.exported import ExportAssets

    results = results_from_manifests(args.manifests, Path(args.scores))
    export = ExportAssets(args.model)
    thresholds = _window_thresholds(export, settings)
    if args.remove_other_scores:
        _remove_other_scores(args.scores, results)
    found = _write_tables(export, results, settings, thresholds, args.out)
    print(f"analysis-tables: {_analysis_summary(results, found, args.out)}", file=sys.stderr)

def _add_table_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--min-score", type=float, metavar="X",
                   help="detect every species at this score instead of at its window threshold")
    p.add_argument("--merge", action="store_true",
                   help="join consecutive detections of a species into one (first start, last end, highest score)")
    p.add_argument("--format", choices=["raven", "audacity"], default=schema_default("analyze.format"),
                   help="per-file table: Raven Pro selection table (default) or Audacity labels")
    p.add_argument("--thresholds", type=input_file,
                   help="thresholds.tsv with a window_threshold column (default: the export's own)")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("analyze", help="detections in long field recordings, window by window, with an exported model")
    p.add_argument("--model", required=True,
                   help="an export: results/export/<model> (its current version) or results/export/<model>/<version>")
    p.add_argument("paths", nargs="*", metavar="PATH", help="audio files or folders (searched recursively)")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", help="folder for detections.tsv, files.tsv and a table per file")
    target.add_argument("--manifest", help="write only a files table here, no detections (the workflow's shard "
                                           "jobs; needs --scores)")
    p.add_argument("--hop", type=float, metavar="SECONDS", help="seconds between window starts (default: half a window)")
    p.add_argument("--scores", metavar="DIR",
                   help="keep every window's scores per file (npz) here; a file whose scores there are current "
                        "(same content, export and hop) is not analysed again")
    p.add_argument("--root", type=input_dir, help="name files relative to this folder (default: the folder given)")
    p.add_argument("--sources", type=input_file,
                   help="analyse the files of a content signature (path, size, content; paths relative to --root)")
    p.add_argument("--remove-other-scores", action="store_true",
                   help="delete score files in --scores of recordings not analysed in this run")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for TensorFlow (0: all)")
    _add_table_options(p)
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("analysis-tables", help="detections.tsv and per-file tables from the shard manifests of analyze")
    p.add_argument("--model", required=True, help="the export the scores came from (labels, thresholds)")
    p.add_argument("--scores", required=True, type=input_dir, help="the npz folder of the shard jobs")
    p.add_argument("--manifests", nargs="+", required=True, type=input_file, help="files tables of analyze --manifest")
    p.add_argument("--out", required=True, help="results/analysis/<model>")
    p.add_argument("--remove-other-scores", action="store_true",
                   help="delete score files in --scores of recordings no manifest lists")
    _add_table_options(p)
    p.set_defaults(func=cmd_analysis_tables)

    p = sub.add_parser("evaluate-soundscapes", help="window scores of analyze --scores against annotated soundscapes")
    p.add_argument("--scores", required=True, type=input_dir, help="the npz folder of jibjib analyze --scores")
    p.add_argument("--annotations", required=True,
                   help="a folder of Raven selection tables (<file>.selections.txt), one such table, or a TSV of "
                        "file, start, end, label")
    p.add_argument("--thresholds", required=True, type=input_file, help="thresholds.tsv (column window_threshold)")
    p.add_argument("--threshold-column", default="window_threshold", help="the thresholds.tsv column to use")
    p.add_argument("--merge", action="store_true",
                   help="judge merged detections, as analyze --merge delivers them (default: one per window)")
    p.add_argument("--min-score", type=float, metavar="X",
                   help="detect every species at this score, as analyze --min-score (default: its window threshold)")
    p.add_argument("--audio", type=input_dir, help="the audio folder: draws the figure")
    p.add_argument("--figure", metavar="NAME", help="the figure's file name in --out-dir (default: "
                                                    "soundscape_<file>.png, after the file drawn)")
    p.add_argument("--out-dir", required=True, help="results/eval/<model>: soundscapes.json, soundscapes.md, figure")
    p.add_argument("--model", help="name in the report (default: the --out-dir folder's name)")
    p.add_argument("--with-report", type=input_file, metavar="MD",
                   help="also write report.md in --out-dir: this report followed by the soundscape section")
    p.set_defaults(func=cmd_evaluate_soundscapes)
