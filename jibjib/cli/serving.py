"""`jibjib export` (SavedModel, TFLite) and `jibjib predict` (top species of audio files)."""

from __future__ import annotations

import argparse
import json
import sys

from jibjib.core.settings import schema_default
from jibjib.cli.common import frontend_option, input_dir, input_file


def cmd_export(args: argparse.Namespace) -> None:
    if args.keep_versions < 1:
        from jibjib.core.errors import InputError

        raise InputError(f"--keep-versions: at least 1, not {args.keep_versions}")
    from jibjib.serving.export import export

    export(args.model_dir, args.eval_dir, args.labels, args.split, args.out, frontend_option(args.frontend), args.top_k,
           tflite=args.tflite, legacy_serving=args.legacy_serving, version=args.version,
           keep_versions=args.keep_versions, features_dir=args.features_dir)


def export_version(text: str) -> int | str:
    """--version: `auto` or a version number of at least 1."""
    if text == "auto":
        return text
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is neither auto nor a version number (1, 2, ...)")
    return int(text)

def cmd_predict(args: argparse.Namespace) -> int:
    from jibjib.serving.predict import Exported, load_thresholds, predict_files, to_tsv, window_thresholds

    model = Exported(args.model)
    thresholds = long_thresholds = None
    if args.thresholds is not None:
        table = args.thresholds or model.thresholds_path
        thresholds = load_thresholds(table, model.labels, args.calibrated)
        long_thresholds = window_thresholds(table, model.labels)
    results = predict_files(model, args.files, args.top_k, thresholds, args.calibrated, long_thresholds)
    for failed in (r for r in results if r.error):
        print(f"jibjib predict: {failed.path}: {failed.error}", file=sys.stderr)
    if args.json:
        print(json.dumps([r.as_dict() for r in results], indent=2))
    else:
        sys.stdout.write(to_tsv(results))
    return 1 if any(r.error for r in results) else 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="SavedModel for TensorFlow Serving, front end in the graph")
    p.add_argument("--model-dir", required=True, type=input_dir, help="results/models/<model>")
    p.add_argument("--eval-dir", required=True, type=input_dir, help="results/eval/<model>")
    p.add_argument("--labels", required=True, type=input_file, help="labels.tsv")
    p.add_argument("--split", required=True, type=input_file, help="split.tsv (counts for the model card)")
    p.add_argument("--frontend", help="front-end parameters as JSON (default: VGGish)")
    p.add_argument("--top-k", type=int, default=schema_default("export.top_k"), help="labels returned by the waveform signature")
    p.add_argument("--tflite", action="store_true",
                   help="also write model.tflite, model_fp16.tflite and model_int8.tflite (one window in, its scores out)")
    p.add_argument("--features-dir", type=input_dir,
                   help="results/features: with --tflite, the val split's windows the int8 analysis file is "
                        "checked on (without it the analysis runs the float32 file)")
    p.add_argument("--legacy-serving", action="store_true",
                   help="serving_default takes `inputs` (n, 96, 64) patches and returns `outputs` (n, classes), "
                        "as jibjib-query calls it; the waveform signature is then `waveform`")
    p.add_argument("--out", required=True,
                   help="results/export/<model>: the version folders and current.json go in it")
    p.add_argument("--version", type=export_version, default=schema_default("export.version"),
                   help="TF Serving version folder: a number, or auto (default): a new number when the model, "
                        "its evaluation or the export settings changed, else the current version kept")
    p.add_argument("--keep-versions", type=int, default=schema_default("export.keep_versions"),
                   help="with --version auto: version folders kept (older ones are removed)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("predict", help="top species of audio files (WAV, FLAC, Ogg, MP3), with an exported model")
    p.add_argument("--model", required=True,
                   help="an export: results/export/<model> (its current version) or results/export/<model>/<version>")
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
