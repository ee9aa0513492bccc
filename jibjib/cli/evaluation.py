"""`jibjib evaluate`: metrics, figures and thresholds of a trained model on the test split."""

from __future__ import annotations

import argparse
import sys

from jibjib.core.settings import schema_default
from jibjib.cli.common import add_dataset_inputs, frontend_option, input_dir, tensorflow_threads


def cmd_evaluate(args: argparse.Namespace) -> None:
    tensorflow_threads(args.threads)
    params = frontend_option(args.frontend)
    if args.hop is not None and not args.hop > 0:
        from jibjib.core.errors import InputError

        raise InputError(f"--hop: must be a positive number of seconds, not {args.hop:g}")
    from jibjib.evaluation.evaluate import evaluate
    from jibjib.evaluation.report import fmt

    report = evaluate(args.model_dir, args.labels, args.split, args.features_dir, args.out_dir,
                      target_precision=args.target_precision, top_k=args.top_k, report_name=args.report_name,
                      min_threshold_support=args.min_threshold_support, params=params, hop_seconds=args.hop)
    f, background = report["file"], report["background"]
    quiet = (f", no species on {fmt(background['raw']['no_species_rate'])} of {background['n_files']} background "
             "files" if background["n_files"] else "")
    print(f"evaluate {report['model']}: {report['n_files']} test files, file top-1 {fmt(f['top1_accuracy'])}, "
          f"macro F1 {fmt(f['macro']['f1'])}, cmAP {fmt(f['cmap'])}{quiet} (see {args.out_dir}/report.md)",
          file=sys.stderr)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="metrics, figures and thresholds of a trained model on the test split")
    p.add_argument("--model-dir", required=True, type=input_dir, help="results/models/<model>")
    add_dataset_inputs(p)
    p.add_argument("--out-dir", required=True, help="results/eval/<model>")
    p.add_argument("--target-precision", type=float, default=schema_default("evaluate.target_precision"), help="per-class thresholds reach this on val")
    p.add_argument("--min-threshold-support", type=int, default=schema_default("evaluate.min_threshold_support"),
                   help="val files a species needs for thresholds of its own; fewer take the pooled threshold")
    p.add_argument("--top-k", type=int, default=schema_default("evaluate.top_k"))
    p.add_argument("--frontend", help="front-end parameters as JSON (default: VGGish): the window grid's frames")
    p.add_argument("--hop", type=float, metavar="SECONDS",
                   help="window thresholds on windows every this many seconds, as analyze --hop (default: half a "
                        "window)")
    p.add_argument("--report-name", default="report.md", help="file name of the markdown report in --out-dir")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for TensorFlow (0: all)")
    p.set_defaults(func=cmd_evaluate)
