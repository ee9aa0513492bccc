"""The `jibjib` command: what the Snakemake rules call, one subcommand per step.

Heavy imports (TensorFlow, pandas) happen inside the subcommands that need
them, and main() itself imports only jibjib.errors and jibjib.tflog (both
standard library only), so `jibjib features`, which runs once per shard of
species, imports neither.
"""

from __future__ import annotations

import argparse
import errno
import json
import sys
from pathlib import Path
from typing import NoReturn


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line: the message names the argument, `--help` has the rest."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _input_file(text: str) -> str:
    """An input file named on the command line, checked before any heavy import."""
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"{text} is a folder, not a file" if Path(text).is_dir()
                                         else f"{text} does not exist")
    return text


def _input_dir(text: str) -> str:
    if not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is not a folder" if Path(text).exists() else f"{text} does not exist")
    return text


def _json(option: str, text: str):
    """A JSON command-line value; bad JSON is the caller's mistake, reported in one line."""
    from jibjib.core.errors import InputError

    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{option}: not valid JSON ({exc})") from None


def _frontend(text: str | None):
    from jibjib.core.params import FrontEnd

    return FrontEnd.from_config(_json("--frontend", text) if text else None)


def _recording_pattern(args: argparse.Namespace) -> str:
    # Resolved here, not as the argparse default: jibjib.labels imports pandas,
    # which the features command must not pay for.
    from jibjib.labels.split import DEFAULT_RECORDING_PATTERN

    return DEFAULT_RECORDING_PATTERN if args.recording_pattern is None else args.recording_pattern


def _background(args: argparse.Namespace) -> tuple[str, ...]:
    """The background folder names of --background (comma-separated; '' for none)."""
    from jibjib.labels.split import DEFAULT_BACKGROUND

    if args.background is None:
        return DEFAULT_BACKGROUND
    return tuple(name.strip() for name in args.background.split(",") if name.strip())


def cmd_make_demo(args: argparse.Namespace) -> None:
    from jibjib.demo.species import DEFAULT_SEED, make_demo

    seed = DEFAULT_SEED if args.seed is None else args.seed
    summary = make_demo(args.out_dir, n_species=args.species, recordings_per_species=args.recordings, seed=seed,
                        background_recordings=args.background_recordings)
    print(
        f"demo set in {args.out_dir}: {summary.n_species} species, {summary.n_recordings} recordings, "
        f"{summary.n_files} files ({summary.n_background_files} in noise/, without birds), "
        f"{summary.seconds:.0f} s of audio",
        file=sys.stderr,
    )
    if args.soundscapes != "":
        from jibjib.demo.soundscapes import make_soundscapes

        # Beside the species folders, never inside: there it would be read as one more species.
        folder = args.soundscapes or str(Path(args.out_dir).parent / "demo_soundscapes")
        scapes = make_soundscapes(folder, n_species=args.species, seed=seed)
        print(f"demo soundscapes in {folder}: {scapes.n_files} files ({', '.join(scapes.files)}), "
              f"{scapes.seconds / 60:.1f} min, {scapes.n_calls} annotated calls", file=sys.stderr)


def _single_threaded_blas() -> None:
    """One BLAS thread: must run before numpy loads.

    Feature jobs run one per core side by side, and analyze's front end
    beside TensorFlow; BLAS's own threads on top oversubscribed the cores and
    made each feature job about 3x slower (2-core VM).
    """
    import os

    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(variable, "1")


def cmd_features(args: argparse.Namespace) -> None:
    _single_threaded_blas()
    from jibjib.features.extract import check_label, read_sources, update_species
    from jibjib.features.qc import write_manifest

    for label in args.label:
        check_label(label)
        if not (Path(args.data_dir) / label).is_dir():
            # Otherwise an empty manifest would look like a species with no files.
            raise FileNotFoundError(errno.ENOENT, "no such species folder", str(Path(args.data_dir) / label))
    sources = read_sources(args.sources) if args.sources else None
    rows = []
    for label in args.label:
        species_rows, _ = update_species(Path(args.data_dir), label, Path(args.features_dir),
                                         _frontend(args.frontend), sources=sources)
        rows += species_rows
    write_manifest(args.manifest, rows)


def cmd_pack(args: argparse.Namespace) -> None:
    from jibjib.packing import pack_shard

    counts = pack_shard(args.manifest, args.features_dir, args.array, args.index)
    print(f"pack {Path(args.manifest).stem}: {counts['files']} files, {counts['rows']} frames "
          f"({counts['read']} read from their npz, {counts['reused']} kept from the previous pack)", file=sys.stderr)


def cmd_embed(args: argparse.Namespace) -> None:
    _tensorflow_threads(args.threads)
    from jibjib.embeddings.cache import embed_shard

    counts = embed_shard(args.packed, args.cut, args.checkpoint, args.seed, args.array, args.index)
    weights = f"checkpoint {args.checkpoint}" if args.checkpoint else f"random weights of seed {args.seed}"
    print(f"embed {Path(args.packed).stem}: {counts['files']} files, {counts['patches']} patches, output of "
          f"{args.cut} ({weights}; {counts['computed']} computed, {counts['reused']} kept from the previous cache)",
          file=sys.stderr)


def cmd_qc(args: argparse.Namespace) -> None:
    import pandas as pd

    from jibjib.core import fsutil
    from jibjib.core.config import loose_files
    from jibjib.features.qc import IGNORED, QCRow, read_qc, sorted_table, to_frame, with_duplicates

    qc = read_qc(args.manifests)
    loose = to_frame([
        QCRow(path=name, label="", status=IGNORED, reason="hidden" if name.startswith(".") else "outside_species_folder")
        for name in loose_files(Path(args.data_dir))
    ])
    qc = with_duplicates(sorted_table(pd.concat([qc, loose], ignore_index=True) if len(loose) else qc))
    fsutil.write_tsv(args.out, qc)
    counts = qc["status"].value_counts()
    print(
        f"qc: files {counts.get('processed', 0)} processed, {counts.get('rejected', 0)} rejected, "
        f"{counts.get('ignored', 0)} ignored, {(qc['duplicate_of'] != '').sum()} identical to another (see {args.out})",
        file=sys.stderr,
    )


def cmd_labels(args: argparse.Namespace) -> None:
    from jibjib.core import fsutil
    from jibjib.labels.split import folder_species, label_index, load_label_map
    from jibjib.features.qc import read_qc

    def log(line: str) -> None:
        print(f"labels: {line}", file=sys.stderr)

    # The QC table is its own job's output, so that this one failing leaves the reasons to read.
    qc = read_qc([args.qc])
    label_map = load_label_map(args.label_map) if args.label_map else None
    background = _background(args)
    # Every folder has at least one file, hence rows; loose files have no label.
    folders = sorted(set(qc["label"]) - {""})
    index = label_index(qc, folders, label_map, _recording_pattern(args), background, log)
    fsutil.write_tsv(args.out, index)
    processed = qc[qc["status"] == "processed"]
    kinds = processed["label"].map(lambda folder: min(len(folder_species(folder, background)), 2))
    extra = [f"{n} {what}" for n, what in ((int((kinds == 0).sum()), "in background folders"),
                                            (int((kinds == 2).sum()), "in multi-species folders")) if n]
    log(f"{len(index)} classes from {len(processed)} usable files" + (f" ({', '.join(extra)})" if extra else "")
        + f" (see {args.qc})")


def cmd_split(args: argparse.Namespace) -> None:
    from jibjib.core import fsutil
    from jibjib.labels.split import (
        SPLITS, assign_splits, check_fractions, check_min_eval_recordings, folder_list, read_ledger, split_settings, write_ledger,
    )
    from jibjib.features.qc import read_qc

    def log(line: str) -> None:
        print(f"split: {line}", file=sys.stderr)

    fractions = {"train": args.train, "val": args.val, "test": args.test}
    check_fractions(fractions)  # before the ledger's log line: a bad setting is the only line
    check_min_eval_recordings(fractions, args.min_eval_recordings)
    pattern = _recording_pattern(args)
    settings = split_settings(fractions, args.seed, args.min_eval_recordings, pattern)
    ledger = {}
    if args.ledger:
        ledger, note = read_ledger(args.ledger, settings)
        log(note)
    split = assign_splits(read_qc(args.manifests), fractions, args.seed, pattern, args.min_eval_recordings,
                          ledger, log, _background(args))
    if args.ledger:
        # Before split.tsv: a split.tsv the ledger does not know could be undone by the next run.
        write_ledger(args.ledger, split, settings)
    fsutil.write_tsv(args.out, split)
    grouped = split.groupby("split")
    recordings, files = grouped["recording_id"].nunique(), grouped.size()
    log("recordings " + ", ".join(f"{name} {recordings.get(name, 0)}" for name in SPLITS)
        + "; files " + ", ".join(f"{name} {files.get(name, 0)}" for name in SPLITS))
    for what, rows in (("background", split[split["species"] == ""]),
                       ("multi-species", split[split["species"].str.contains(",", regex=False)])):
        if len(rows):
            # Negatives and several-species files need val and test too, or thresholds never see them.
            counts = rows.groupby("split").size()
            log(f"{what} files " + ", ".join(f"{name} {counts.get(name, 0)}" for name in SPLITS)
                + f" (folders {folder_list(sorted(set(rows['label'])))})")


def cmd_train(args: argparse.Namespace) -> None:
    _tensorflow_threads(args.threads)
    settings = _json("--settings", args.settings)  # before TensorFlow loads: a typo costs no wait
    from jibjib.training.run import train

    report = train(args.model, args.split, args.labels, args.features_dir, args.out_dir, settings, args.packed,
                   args.embeddings)
    if "worker" in report:  # another worker than the chief of a multi-worker run: the chief reports
        print(f"train {args.model}: worker {report['worker']} done", file=sys.stderr)
        return
    print(f"train {args.model}: {report['epochs_completed']} epochs in {report['seconds']} s", file=sys.stderr)


def _tensorflow_threads(threads: int) -> None:
    import os

    if threads:
        # Must happen before TensorFlow starts its thread pools.
        os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(threads))


def cmd_evaluate(args: argparse.Namespace) -> None:
    _tensorflow_threads(args.threads)
    from jibjib.evaluation.evaluate import evaluate, fmt

    report = evaluate(args.model_dir, args.labels, args.split, args.features_dir, args.out_dir,
                      target_precision=args.target_precision, top_k=args.top_k, report_name=args.report_name)
    f, background = report["file"], report["background"]
    quiet = (f", no species on {fmt(background['raw']['no_species_rate'])} of {background['n_files']} background "
             "files" if background["n_files"] else "")
    print(f"evaluate {report['model']}: {report['n_files']} test files, file top-1 {fmt(f['top1_accuracy'])}, "
          f"macro F1 {fmt(f['macro']['f1'])}, cmAP {fmt(f['cmap'])}{quiet} (see {args.out_dir}/report.md)",
          file=sys.stderr)


def cmd_export(args: argparse.Namespace) -> None:
    from jibjib.serving.export import export

    export(args.model_dir, args.eval_dir, args.labels, args.split, args.out, _frontend(args.frontend), args.top_k,
           tflite=args.tflite, legacy_serving=args.legacy_serving)


def cmd_predict(args: argparse.Namespace) -> int:
    from jibjib.serving.predict import Exported, load_thresholds, predict_files, to_tsv

    model = Exported(args.model)
    thresholds = None
    if args.thresholds is not None:
        thresholds = load_thresholds(args.thresholds or model.thresholds_path, model.labels, args.calibrated)
    results = predict_files(model, args.files, args.top_k, thresholds, args.calibrated)
    for failed in (r for r in results if r.error):
        print(f"jibjib predict: {failed.path}: {failed.error}", file=sys.stderr)
    if args.json:
        print(json.dumps([r.as_dict() for r in results], indent=2))
    else:
        sys.stdout.write(to_tsv(results))
    return 1 if any(r.error for r in results) else 0


def cmd_evaluate_soundscapes(args: argparse.Namespace) -> None:
    from jibjib.analysis.soundscapes import fmt, write_soundscape_report

    report = write_soundscape_report(args.scores, args.annotations, args.thresholds, args.out_dir, args.audio,
                                     args.model, args.threshold_column, args.figure, args.with_report)
    if args.audio and report["figure_note"]:
        print(f"jibjib evaluate-soundscapes: no figure: {report['figure_note']}", file=sys.stderr)
    m = report["macro"]
    print(f"evaluate-soundscapes {report['model']}: {report['n_files']} files, {report['calls']} calls, "
          f"window cmAP {fmt(report['cmap'])}, event recall {fmt(m['event_recall'])}, "
          f"false detections per hour {fmt(m['false_detections_per_hour'], 1)} (see {args.out_dir}/soundscapes.md)",
          file=sys.stderr)


def _table_settings(args: argparse.Namespace):
    from jibjib.analysis.analyze import TableSettings

    if args.min_score is not None and not 0.0 <= args.min_score <= 1.0:
        from jibjib.core.errors import InputError

        raise InputError(f"--min-score: {args.min_score:g} is not a probability between 0 and 1")
    return TableSettings(args.min_score, args.merge, args.format, Path(args.thresholds) if args.thresholds else None)


def _window_thresholds(export, settings) -> dict[str, float] | None:
    """The thresholds the tables use (None with a minimum score), read before any file is analysed."""
    from jibjib.analysis.tables import read_window_thresholds

    if settings.min_score is not None:
        return None
    return read_window_thresholds(settings.thresholds_path or export.thresholds_path)


def _write_tables(export, results, settings, thresholds, out_dir: str) -> int:
    from jibjib.analysis.analyze import write_outputs

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
    _single_threaded_blas()
    _tensorflow_threads(args.threads)
    settings = _table_settings(args)  # before TensorFlow loads: a bad option costs no wait
    from jibjib.analysis.analyze import REJECTED, Analyzer, analyze_files, find_inputs, write_manifest
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
    from jibjib.analysis.analyze import results_from_manifests
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
    p.add_argument("--format", choices=["raven", "audacity"], default="raven",
                   help="per-file table: Raven Pro selection table (default) or Audacity labels")
    p.add_argument("--thresholds", type=_input_file,
                   help="thresholds.tsv with a window_threshold column (default: the export's own)")


def _add_background(p: argparse.ArgumentParser) -> None:
    p.add_argument("--background", metavar="NAMES",
                   help="comma-separated folder names of non-event audio, matched in any case: trained on, never a "
                        "class ('' for none; default: noise,background,other,silence)")


def _add_dataset_inputs(p: argparse.ArgumentParser) -> None:
    """The label index, the split and the features: what training and evaluation read."""
    p.add_argument("--labels", required=True, type=_input_file, help="labels.tsv")
    p.add_argument("--split", required=True, type=_input_file, help="split.tsv")
    p.add_argument("--features-dir", required=True, type=_input_dir)


def build_parser() -> argparse.ArgumentParser:
    from jibjib import __version__

    parser = _Parser(prog="jibjib", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"jibjib {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("make-demo", help="write the synthetic demo bird set")
    p.add_argument("out_dir", help="folder to write <species>/<species>-<n>_<k>.wav into")
    p.add_argument("--species", type=int, default=8)
    p.add_argument("--recordings", type=int, default=20, help="recordings per species")
    p.add_argument("--background-recordings", type=int, default=40,
                   help="recordings without birds (wind, rain, insects, traffic) in OUT_DIR/noise/")
    p.add_argument("--seed", type=int, help="default: a seed whose demo fills every split")
    p.add_argument("--soundscapes", metavar="DIR",
                   help="folder for the annotated demo soundscapes (default: demo_soundscapes beside OUT_DIR; "
                        "'' for none)")
    p.set_defaults(func=cmd_make_demo)

    p = sub.add_parser("features", help="log-mel features for species folders (one shard)")
    p.add_argument("--data-dir", required=True, type=_input_dir)
    p.add_argument("--label", required=True, action="append",
                   help="species folder name below --data-dir; repeat for each species of the shard")
    p.add_argument("--features-dir", required=True, help="npz files go to <features-dir>/<label>/")
    p.add_argument("--manifest", required=True, help="QC rows of these species (TSV)")
    p.add_argument("--frontend", help="front-end parameters as JSON (default: VGGish)")
    p.add_argument("--sources", type=_input_file,
                   help="the shard's content signature (results/sources/<shard>.tsv): an npz is then current "
                        "if it was computed from the recorded SHA-256, or for a file listed by a stamp from the "
                        "file's own hash (default: size and mtime)")
    p.set_defaults(func=cmd_features)

    p = sub.add_parser("pack", help="one shard's log-mel packed into a float16 array and an index, for training")
    p.add_argument("--manifest", required=True, type=_input_file, help="the shard's QC rows (its processed files)")
    p.add_argument("--features-dir", required=True, type=_input_dir)
    p.add_argument("--array", required=True, help="the packed log-mel (.npy, float16 (frames, bands))")
    p.add_argument("--index", required=True, help="path, row, frames, content of each file (TSV)")
    p.set_defaults(func=cmd_pack)

    from jibjib.embeddings.cut import CACHEABLE_CUTS  # standard library only, like the rest of the parser

    p = sub.add_parser("embed", help="one packed shard through the frozen VGGish trunk: the embedding cache")
    p.add_argument("--packed", required=True, type=_input_file, help="the shard's packed index (jibjib pack)")
    p.add_argument("--cut", required=True, choices=CACHEABLE_CUTS,
                   help="the last frozen trunk layer, whose output is cached (fc2 for trainable: head)")
    p.add_argument("--checkpoint", help="vggish.checkpoint (default: random weights from --seed, as training has)")
    p.add_argument("--seed", type=int, default=0, help="train.seed: draws the random trunk without a checkpoint")
    p.add_argument("--array", required=True, help="the cached outputs (.npy, float32 (patches, floats))")
    p.add_argument("--index", required=True, help="path, row, patches, content, cut, trunk of each file (TSV)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for TensorFlow (0: all)")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("qc", help="the QC table (results/qc/files.tsv) from the species manifests")
    p.add_argument("--data-dir", required=True, type=_input_dir)
    p.add_argument("--manifests", nargs="+", required=True, type=_input_file)
    p.add_argument("--out", required=True, help="qc/files.tsv")
    p.set_defaults(func=cmd_qc)

    p = sub.add_parser("labels", help="label index from the QC table")
    p.add_argument("--qc", required=True, type=_input_file, help="qc/files.tsv (or species manifests' QC rows)")
    p.add_argument("--out", required=True, help="labels.tsv")
    p.add_argument("--label-map", type=_input_file, help="old bird_id_map.pickle (species -> database id)")
    p.add_argument("--recording-pattern", help="regex on the file stem, group `recording` (default: strip _<digits>)")
    _add_background(p)
    p.set_defaults(func=cmd_labels)

    p = sub.add_parser("split", help="stratified train/val/test split by recording")
    p.add_argument("--manifests", nargs="+", required=True, type=_input_file)
    p.add_argument("--out", required=True, help="split.tsv")
    # The defaults of config.yaml (split.*), so both ways of running agree.
    p.add_argument("--train", type=float, default=0.7)
    p.add_argument("--val", type=float, default=0.15)
    p.add_argument("--test", type=float, default=0.15)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--min-eval-recordings", type=int, default=3,
                   help="a species with this many recordings gets at least one in each of val and test")
    p.add_argument("--recording-pattern", help="regex on the file stem, group `recording` (default: strip _<digits>)")
    p.add_argument("--ledger", help="earlier assignments (split_ledger.tsv): read if present, then rewritten; "
                                    "without it the split is made from scratch")
    _add_background(p)
    p.set_defaults(func=cmd_split)

    p = sub.add_parser("train", help="train a model on the features")
    p.add_argument("--model", required=True, choices=["vggish", "convlstm"])
    _add_dataset_inputs(p)
    p.add_argument("--out-dir", required=True, help="model.keras, history.tsv, train.json and checkpoints/ go here")
    p.add_argument("--settings", required=True, help="training settings as JSON (see config.yaml)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for TensorFlow (0: all)")
    p.add_argument("--packed", nargs="+", metavar="INDEX_TSV",
                   help="read examples from these packed shards (jibjib pack) instead of each file's npz")
    p.add_argument("--embeddings", nargs="+", metavar="INDEX_TSV",
                   help="VGGish with a frozen trunk: train the layers after the cut from these embedding caches "
                        "(jibjib embed)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="metrics, figures and thresholds of a trained model on the test split")
    p.add_argument("--model-dir", required=True, type=_input_dir, help="results/models/<model>")
    _add_dataset_inputs(p)
    p.add_argument("--out-dir", required=True, help="results/eval/<model>")
    p.add_argument("--target-precision", type=float, default=0.9, help="per-class thresholds reach this on val")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--report-name", default="report.md", help="file name of the markdown report in --out-dir")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for TensorFlow (0: all)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("export", help="SavedModel for TensorFlow Serving, front end in the graph")
    p.add_argument("--model-dir", required=True, type=_input_dir, help="results/models/<model>")
    p.add_argument("--eval-dir", required=True, type=_input_dir, help="results/eval/<model>")
    p.add_argument("--labels", required=True, type=_input_file, help="labels.tsv")
    p.add_argument("--split", required=True, type=_input_file, help="split.tsv (counts for the model card)")
    p.add_argument("--frontend", help="front-end parameters as JSON (default: VGGish)")
    p.add_argument("--top-k", type=int, default=5, help="labels returned by the waveform signature")
    p.add_argument("--tflite", action="store_true",
                   help="also write model.tflite, model_fp16.tflite and model_int8.tflite (one window in, its scores out)")
    p.add_argument("--legacy-serving", action="store_true",
                   help="serving_default takes `inputs` (n, 96, 64) patches and returns `outputs` (n, classes), "
                        "as jibjib-query calls it; the waveform signature is then `waveform`")
    p.add_argument("--out", required=True, help="results/export/<model>/<version> (an integer version)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("evaluate-soundscapes", help="window scores of analyze --scores against annotated soundscapes")
    p.add_argument("--scores", required=True, type=_input_dir, help="the npz folder of jibjib analyze --scores")
    p.add_argument("--annotations", required=True,
                   help="a folder of Raven selection tables (<file>.selections.txt), one such table, or a TSV of "
                        "file, start, end, label")
    p.add_argument("--thresholds", required=True, type=_input_file, help="thresholds.tsv (column window_threshold)")
    p.add_argument("--threshold-column", default="window_threshold", help="the thresholds.tsv column to use")
    p.add_argument("--audio", type=_input_dir, help="the audio folder: draws the figure")
    p.add_argument("--figure", metavar="NAME", help="the figure's file name in --out-dir (default: "
                                                    "soundscape_<file>.png, after the file drawn)")
    p.add_argument("--out-dir", required=True, help="results/eval/<model>: soundscapes.json, soundscapes.md, figure")
    p.add_argument("--model", help="name in the report (default: the --out-dir folder's name)")
    p.add_argument("--with-report", type=_input_file, metavar="MD",
                   help="also write report.md in --out-dir: this report followed by the soundscape section")
    p.set_defaults(func=cmd_evaluate_soundscapes)

    p = sub.add_parser("analyze", help="detections in long field recordings, window by window, with an exported model")
    p.add_argument("--model", required=True, help="an export folder: results/export/<model>/<version>")
    p.add_argument("paths", nargs="*", metavar="PATH", help="audio files or folders (searched recursively)")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", help="folder for detections.tsv, files.tsv and a table per file")
    target.add_argument("--manifest", help="write only a files table here, no detections (the workflow's shard "
                                           "jobs; needs --scores)")
    p.add_argument("--hop", type=float, metavar="SECONDS", help="seconds between window starts (default: half a window)")
    p.add_argument("--scores", metavar="DIR",
                   help="keep every window's scores per file (npz) here; a file whose scores there are current "
                        "(same content, export and hop) is not analysed again")
    p.add_argument("--root", type=_input_dir, help="name files relative to this folder (default: the folder given)")
    p.add_argument("--sources", type=_input_file,
                   help="analyse the files of a content signature (path, size, content; paths relative to --root)")
    p.add_argument("--remove-other-scores", action="store_true",
                   help="delete score files in --scores of recordings not analysed in this run")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for TensorFlow (0: all)")
    _add_table_options(p)
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("analysis-tables", help="detections.tsv and per-file tables from the shard manifests of analyze")
    p.add_argument("--model", required=True, help="the export the scores came from (labels, thresholds)")
    p.add_argument("--scores", required=True, type=_input_dir, help="the npz folder of the shard jobs")
    p.add_argument("--manifests", nargs="+", required=True, type=_input_file, help="files tables of analyze --manifest")
    p.add_argument("--out", required=True, help="results/analysis/<model>")
    p.add_argument("--remove-other-scores", action="store_true",
                   help="delete score files in --scores of recordings no manifest lists")
    _add_table_options(p)
    p.set_defaults(func=cmd_analysis_tables)

    p = sub.add_parser("predict", help="top species of audio files (WAV, FLAC, Ogg, MP3), with an exported model")
    p.add_argument("--model", required=True, help="an export folder: results/export/<model>/<version>")
    p.add_argument("files", nargs="+", metavar="FILE", help="audio files, any sample rate")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--json", action="store_true", help="JSON instead of TSV")
    p.add_argument("--thresholds", nargs="?", const="", default=None, metavar="TSV",
                   help="mark species at or above their threshold as detected and list every detected species, "
                        "also below the top k (default TSV: the export's own)")
    p.add_argument("--calibrated", action="store_true",
                   help="temperature-scaled scores; --thresholds then uses the thresholds fitted on calibrated val "
                        "scores (calibrated_threshold)")
    p.set_defaults(func=cmd_predict)
    return parser


# Problems with the user's input or disk, not with the code: one line each.
# Anything else is a bug and keeps its traceback.
_MISSING_PATH_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def main(argv: list[str] | None = None) -> int:
    from jibjib.core.errors import USER_ERRORS
    from jibjib.core.tflog import native_output_captured, quiet_python_logging

    args = build_parser().parse_args(argv)
    quiet_python_logging()
    # TensorFlow's C++ start-up lines would otherwise sit between our one-line messages.
    with native_output_captured(f"jibjib {args.command}"):
        try:
            status = args.func(args)
        except USER_ERRORS as exc:
            message = str(exc)
        except _MISSING_PATH_ERRORS as exc:
            if exc.filename is None:
                raise
            message = f"{exc.filename}: {exc.strerror}"
        else:
            return status or 0
    print(f"jibjib {args.command}: error: {message}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
