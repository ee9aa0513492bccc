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
    from jibjib.analysis.tables import check_label_column, parse_formats

    if args.min_score is not None and not 0.0 <= args.min_score <= 1.0:
        from jibjib.core.errors import InputError

        raise InputError(f"--min-score: {args.min_score:g} is not a probability between 0 and 1")
    return TableSettings(args.min_score, args.merge, parse_formats(getattr(args, "format", None) or ["raven"]),
                         Path(args.thresholds) if args.thresholds else None,
                         check_label_column(getattr(args, "label_column", "Species")))


def _recorders(args: argparse.Namespace):
    """The site and time patterns, checked (one line naming the option) before any audio is read."""
    from jibjib.analysis.recorders import PatternError, checked_recorders
    from jibjib.core.errors import InputError

    try:
        return checked_recorders(args.site_pattern, args.time_pattern, ("--site-pattern", "--time-pattern"))
    except PatternError as exc:
        raise InputError(str(exc)) from None


def _deployment_tables(out: Path, detections: Path, results, settings, mel_range, writer_name: str) -> set[str]:
    """The combined tables and activity.tsv/png of a finished analysis; returns the combined tables' names."""
    from jibjib.analysis.activity import write_activity_outputs
    from jibjib.analysis.combined import file_facts, write_combined_tables
    from jibjib.analysis.outputs import record_table

    names = write_combined_tables(out, detections, file_facts(results), settings.formats, settings.label_column,
                                  mel_range, lambda name, sha: record_table(out, writer_name, name, sha))
    write_activity_outputs(out, detections)
    return set(names)

def _window_thresholds(export, settings) -> dict[str, float] | None:
    """The thresholds the tables use (None with a minimum score), read before any file is analysed."""
    from jibjib.analysis.tables import read_window_thresholds

    if settings.min_score is not None:
        return None
    return read_window_thresholds(settings.thresholds_path or export.thresholds_path)

def _analysis_summary(results, detections: int, out: str) -> str:
    from jibjib.analysis.analyze import ANALYSED, REJECTED, REUSED

    rejected = sum(r.status == REJECTED for r in results)
    analysed = sum(r.status in (ANALYSED, REUSED) for r in results)
    return f"{analysed} files analysed, {rejected} rejected, {detections} detections (see {out})"

def _inputs(args: argparse.Namespace):
    """(file, name) of every input, and the SHA-256 the workflow recorded by name (None outside it)."""
    from jibjib.analysis.inputs import find_inputs
    from jibjib.core.errors import InputError

    if args.sources:
        if not args.root:
            raise InputError("--sources needs --root, the folder its paths are relative to")
        from jibjib.features.extract import read_sources

        return [(Path(args.root) / name, name) for name in _signature_paths(args.sources)], read_sources(args.sources)
    if not args.paths:
        raise InputError("name the audio files or folders to analyse (or --sources)")
    return find_inputs(args.paths, args.root), None

def _check_options(args: argparse.Namespace) -> None:
    from jibjib.core.errors import InputError

    if args.manifest and not (args.scores and args.detections):
        raise InputError("--manifest (a shard job) needs --scores and --detections: its tables come later")
    if args.detections and not args.manifest:
        raise InputError("--detections is the shard jobs' detections file: it needs --manifest")
    if args.remove_other_scores and not args.scores:
        raise InputError("--remove-other-scores needs --scores")

def cmd_analyze(args: argparse.Namespace) -> int:
    # The front end runs in a thread beside the model's own: BLAS threads on top oversubscribed the cores
    # (a small model on 2 cores took 30 % longer).
    single_threaded_blas()
    if args.engine == "savedmodel":
        tensorflow_threads(args.threads)
    settings = _table_settings(args)  # before the model loads: a bad option costs no wait
    _check_options(args)
    recorders = _recorders(args)
    from jibjib.analysis.analyze import REJECTED, analyze_files
    from jibjib.analysis.analyzer import Analyzer
    from jibjib.analysis.combined import combined_names
    from jibjib.analysis.outputs import TableWriter, check_tables_are_ours, finish_tables, write_files_table
    from jibjib.analysis.species_lists import SpeciesLists
    from jibjib.features.qc import ignore_reason
    from jibjib.serving.exported import ExportAssets

    inputs, recorded = _inputs(args)
    out = Path(args.out)
    export = ExportAssets(args.model)
    species = SpeciesLists(args.species_list, export.labels)
    species.check_sites((recorders.site(name), name) for _, name in inputs if not ignore_reason(Path(name)))
    check_tables_are_ours(out, [name for _, name in inputs], settings.formats,
                          [] if args.manifest else combined_names(settings.formats))
    thresholds = _window_thresholds(export, settings)
    analyzer = Analyzer(args.model, args.hop, args.engine, args.threads)
    if analyzer.engine_choice:
        print(f"analyze: the tflite engine runs {analyzer.engine} ({analyzer.engine_choice})", file=sys.stderr)
    detections = Path(args.detections) if args.manifest else out / "detections.tsv"
    writer_name = Path(args.manifest).stem if args.manifest else "analyze"
    mel_range = (analyzer.params.fmin_hz, analyzer.params.fmax_hz)
    writer = TableWriter(out, detections, writer_name, analyzer.labels, analyzer.external_ids, thresholds, settings,
                         mel_range, recorders, species, {name: path for path, name in inputs})
    try:
        results = analyze_files(analyzer, inputs, Path(args.scores) if args.scores else None, recorded, writer)
    except BaseException:
        writer.abandon()
        raise
    writer.close()
    for failed in (r for r in results if r.status == REJECTED):
        print(f"jibjib analyze: {failed.path}: {failed.reason}" + (f": {failed.detail}" if failed.detail else ""),
              file=sys.stderr)
    if args.remove_other_scores:
        _remove_other_scores(args.scores, results)
    if args.manifest:
        write_files_table(Path(args.manifest), results)
        return 0  # the workflow's shard job: the reasons are in the manifest, the other shards go on
    write_files_table(out / "files.tsv", results)
    combined = _deployment_tables(out, detections, results, settings, mel_range, writer_name)
    finish_tables(out, writer.written | combined)
    print(f"analyze: {_analysis_summary(results, writer.count, args.out)}", file=sys.stderr)
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
    from jibjib.analysis.analyze import ANALYSED, REUSED
    from jibjib.analysis.combined import combined_names
    from jibjib.analysis.outputs import (check_tables_are_ours, finish_tables, merge_shards, read_manifests,
                                         write_files_table)
    from jibjib.analysis.tables import table_name

    settings = _table_settings(args)
    if args.remove_other_scores and not args.scores:
        from jibjib.core.errors import InputError

        raise InputError("--remove-other-scores needs --scores")
    out = Path(args.out)
    check_tables_are_ours(out, [], (), combined_names(settings.formats))
    results = read_manifests(args.manifests)
    found = merge_shards([Path(p) for p in args.detections], out / "detections.tsv")
    write_files_table(out / "files.tsv", results)
    combined = _deployment_tables(out, out / "detections.tsv", results, settings, tuple(args.mel_range),
                                  "analysis-tables")
    finish_tables(out, combined | {table_name(r.relative, f) for r in results if r.status in (ANALYSED, REUSED)
                                   for f in settings.per_file_formats})
    if args.remove_other_scores:
        _remove_other_scores(args.scores, results)
    print(f"analysis-tables: {_analysis_summary(results, found, args.out)}", file=sys.stderr)

def _add_format_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", action="append", metavar="FORMATS",
                   help="the tables, comma-separated or repeated: raven (a Raven Pro selection table per file and "
                        "detections.selections.txt for all), audacity (Audacity labels per file), kaleidoscope "
                        "(detections.kaleidoscope.csv), csv (detections.csv); default: "
                        + ",".join(schema_default("analyze.format")))
    p.add_argument("--label-column", default=schema_default("analyze.label_column"), metavar="NAME",
                   help="the Raven tables' label column (default: %(default)s)")


def _add_table_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--min-score", type=float, metavar="X",
                   help="detect every species at this score instead of at its window threshold")
    p.add_argument("--merge", action="store_true",
                   help="join consecutive detections of a species into one (first start, last end, highest score)")
    _add_format_options(p)
    p.add_argument("--thresholds", type=input_file,
                   help="thresholds.tsv with a window_threshold column (default: the export's own)")
    p.add_argument("--species-list", metavar="PATH",
                   help="report only these species: a file of labels, one a line, or a folder of <site>.txt lists")
    p.add_argument("--site-pattern", metavar="REGEX",
                   help="a file's site: this regex's `site` group, searched in its name below the analysed folder "
                        "(default: its first folder)")
    p.add_argument("--time-pattern", metavar="REGEX",
                   help="a file's start time: this regex's named groups date and time (or year, month, day, hour, "
                        "minute, second), searched in its name (default: AudioMoth and Song Meter names, GUANO)")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("analyze", help="detections in long field recordings, window by window, with an exported model")
    p.add_argument("--model", required=True,
                   help="an export: results/export/<model> (its current version) or results/export/<model>/<version>")
    p.add_argument("paths", nargs="*", metavar="PATH", help="audio files or folders (searched recursively)")
    p.add_argument("--out", required=True, help="folder for detections.tsv, files.tsv and a table per file")
    p.add_argument("--manifest", help="a shard job of the workflow: its files table goes here and its detections to "
                                      "--detections, not to --out (needs --scores)")
    p.add_argument("--detections", help="with --manifest: the shard's detections file")
    p.add_argument("--engine", choices=["savedmodel", "tflite"], default=schema_default("analyze.engine"),
                   help="savedmodel: the SavedModel in TensorFlow (a GPU if there is one); tflite: the export's "
                        "analysis TFLite file in LiteRT on the CPU (needs an export made with export.tflite)")
    p.add_argument("--hop", type=float, metavar="SECONDS", help="seconds between window starts (default: half a window)")
    p.add_argument("--scores", metavar="DIR",
                   help="keep every window's scores per file (npz) here; a file whose scores there are current "
                        "(same content, export, engine and hop) is not analysed again")
    p.add_argument("--root", type=input_dir, help="name files relative to this folder (default: the folder given)")
    p.add_argument("--sources", type=input_file,
                   help="analyse the files of a content signature (path, size, content; paths relative to --root)")
    p.add_argument("--remove-other-scores", action="store_true",
                   help="delete score files in --scores of recordings not analysed in this run")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for the model (0: all)")
    _add_table_options(p)
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("analysis-tables", help="detections.tsv and files.tsv from the shard jobs of analyze --manifest")
    p.add_argument("--manifests", nargs="+", required=True, type=input_file, help="files tables of analyze --manifest")
    p.add_argument("--detections", nargs="+", required=True, type=input_file,
                   help="the shards' detections files (analyze --detections)")
    p.add_argument("--out", required=True, help="results/analysis/<model>: where the shards wrote their tables")
    p.add_argument("--scores", help="the npz folder of the shard jobs (for --remove-other-scores; it may not exist "
                                    "yet when no file could be analysed)")
    p.add_argument("--remove-other-scores", action="store_true",
                   help="delete score files in --scores of recordings no manifest lists")
    _add_format_options(p)
    p.add_argument("--mel-range", nargs=2, type=float, default=[125.0, 7500.0], metavar=("LOW", "HIGH"),
                   help="Low and High Freq (Hz) of the combined Raven table (default: VGGish's 125 7500)")
    p.set_defaults(func=cmd_analysis_tables, min_score=None, merge=False, thresholds=None)

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
