"""`jibjib review` and `jibjib verify`: detections checked by a person, and what the checks say of each species."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jibjib.core.settings import schema_default
from jibjib.cli.common import input_dir, input_file


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is below 0")
    return value


def _precision(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a precision between 0 and 1 (both excluded)")
    return value


def cmd_review(args: argparse.Namespace) -> None:
    from jibjib.analysis.review import write_review
    from jibjib.core.errors import InputError

    analysis = Path(args.analysis)
    for name in ("detections.tsv", "files.tsv"):
        if not (analysis / name).is_file():
            raise InputError(f"--analysis: {analysis} has no {name} (the folder jibjib analyze --out wrote)")
    if args.score_bins < 1:
        raise InputError("--score-bins: at least 1")
    items = write_review(analysis, Path(args.out), args.top, args.score_bins, args.per_bin, args.seed,
                         Path(args.audio) if args.audio else None, args.title)
    missing = sum(1 for item in items if item["note"])
    print(f"review: {len(items)} detections of {len({i['label'] for i in items})} species on "
          f"{Path(args.out) / 'index.html'}" + (f"; {missing} without a clip (see items.tsv)" if missing else ""),
          file=sys.stderr)


def _known_labels(args: argparse.Namespace) -> tuple[set[str], str]:
    """The labels verifications may name, and whose they are."""
    from jibjib.core.errors import InputError

    if args.model:
        from jibjib.serving.exported import ExportAssets

        return set(ExportAssets(args.model).labels), "the model"
    if args.analysis:
        from jibjib.analysis.combined import read_detections

        detections = Path(args.analysis) / "detections.tsv"
        if not detections.is_file():
            raise InputError(f"--analysis: {args.analysis} has no detections.tsv")
        return {row["label"] for row in read_detections(detections)}, f"the analysis in {args.analysis}"
    raise InputError("name the labels the verifications may use: --analysis (the analysis reviewed) or --model")


def cmd_verify(args: argparse.Namespace) -> None:
    from jibjib.analysis.verify import read_verifications, write_verification

    verifications = read_verifications(args.verifications, *_known_labels(args))
    rows = write_verification(verifications, Path(args.out), args.target_precision)
    with_threshold = sum(1 for row in rows if row[9])
    print(f"verify: {len(verifications)} verifications of {len(rows)} species; {with_threshold} with a threshold "
          f"for precision {args.target_precision:g} (see {Path(args.out) / 'verification.tsv'})", file=sys.stderr)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    review = schema_default("analyze.review")
    p = sub.add_parser("review", help="a page to verify an analysis' detections in the browser (offline)")
    p.add_argument("--analysis", required=True, type=input_dir,
                   help="the folder of jibjib analyze --out (detections.tsv, files.tsv)")
    p.add_argument("--out", required=True, help="the page's folder: index.html, clips/, spectrograms/, items.tsv")
    p.add_argument("--top", type=_count, default=review["top"], help="best detections per species (%(default)s)")
    p.add_argument("--score-bins", type=_count, default=review["score_bins"],
                   help="score bins per species for the random sample (%(default)s)")
    p.add_argument("--per-bin", type=_count, default=review["per_bin"],
                   help="detections drawn at random per score bin (%(default)s)")
    p.add_argument("--seed", type=int, default=review["seed"], help="seed of the random sample (%(default)s)")
    p.add_argument("--audio", type=input_dir,
                   help="the analysed folder, if the recordings moved (default: the paths in files.tsv)")
    p.add_argument("--title", help="the page's title (default: Review: <analysis folder>)")
    p.set_defaults(func=cmd_review)

    p = sub.add_parser("verify", help="each species' precision and a threshold from verified detections")
    p.add_argument("--verifications", required=True, type=input_file,
                   help="verifications.csv of the review page: file, start, end, label, score, verdict")
    p.add_argument("--out", required=True, help="folder for verification.tsv and figures/")
    p.add_argument("--target-precision", type=_precision, default=schema_default("analyze.target_precision"),
                   help="the precision threshold_for_target reaches on the fit (%(default)s)")
    p.add_argument("--analysis", type=input_dir, help="the analysis reviewed: its labels are the ones allowed")
    p.add_argument("--model", help="or an export: its labels are the ones allowed")
    p.set_defaults(func=cmd_verify)
