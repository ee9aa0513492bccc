"""`jibjib labels` (the label index) and `jibjib split` (train/val/test by recording)."""

from __future__ import annotations

import argparse
import sys

from jibjib.core.settings import schema_default
from jibjib.cli.common import add_background, background_folders, input_file, recording_pattern


def cmd_labels(args: argparse.Namespace) -> None:
    from jibjib.core import fsutil
    from jibjib.labels.folders import folder_species
    from jibjib.labels.index import label_index
    from jibjib.labels.label_map import load_label_map
    from jibjib.features.qc import read_qc

    def log(line: str) -> None:
        print(f"labels: {line}", file=sys.stderr)

    # The QC table is its own job's output, so that this one failing leaves the reasons to read.
    qc = read_qc([args.qc])
    label_map = load_label_map(args.label_map) if args.label_map else None
    background = background_folders(args)
    # Every folder has at least one file, hence rows; loose files have no label.
    folders = sorted(set(qc["label"]) - {""})
    index = label_index(qc, folders, label_map, recording_pattern(args), background, log)
    fsutil.write_tsv(args.out, index)
    processed = qc[qc["status"] == "processed"]
    kinds = processed["label"].map(lambda folder: min(len(folder_species(folder, background)), 2))
    extra = [f"{n} {what}" for n, what in ((int((kinds == 0).sum()), "in background folders"),
                                            (int((kinds == 2).sum()), "in multi-species folders")) if n]
    log(f"{len(index)} classes from {len(processed)} usable files" + (f" ({', '.join(extra)})" if extra else "")
        + f" (see {args.qc})")

def cmd_split(args: argparse.Namespace) -> None:
    from jibjib.core import fsutil
    from jibjib.labels.folders import folder_list
    from jibjib.labels.ledger import read_ledger, split_settings, write_ledger
    from jibjib.labels.split import SPLITS, assign_splits, check_fractions, check_min_eval_recordings
    from jibjib.features.qc import read_qc

    def log(line: str) -> None:
        print(f"split: {line}", file=sys.stderr)

    fractions = {"train": args.train, "val": args.val, "test": args.test}
    check_fractions(fractions)  # before the ledger's log line: a bad setting is the only line
    check_min_eval_recordings(fractions, args.min_eval_recordings)
    pattern = recording_pattern(args)
    settings = split_settings(fractions, args.seed, args.min_eval_recordings, pattern)
    ledger = {}
    if args.ledger:
        ledger, note = read_ledger(args.ledger, settings)
        log(note)
    split = assign_splits(read_qc(args.manifests), fractions, args.seed, pattern, args.min_eval_recordings,
                          ledger, log, background_folders(args))
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


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("labels", help="label index from the QC table")
    p.add_argument("--qc", required=True, type=input_file, help="qc/files.tsv (or species manifests' QC rows)")
    p.add_argument("--out", required=True, help="labels.tsv")
    p.add_argument("--label-map", type=input_file, help="old bird_id_map.pickle (species -> database id)")
    p.add_argument("--recording-pattern", help="regex on the file stem, group `recording` (default: strip _<digits>)")
    add_background(p)
    p.set_defaults(func=cmd_labels)

    p = sub.add_parser("split", help="stratified train/val/test split by recording")
    p.add_argument("--manifests", nargs="+", required=True, type=input_file)
    p.add_argument("--out", required=True, help="split.tsv")
    # The schema's defaults (split.*), so both ways of running agree.
    fractions = schema_default("split.fractions")
    p.add_argument("--train", type=float, default=fractions["train"])
    p.add_argument("--val", type=float, default=fractions["val"])
    p.add_argument("--test", type=float, default=fractions["test"])
    p.add_argument("--seed", type=int, default=schema_default("split.seed"))
    p.add_argument("--min-eval-recordings", type=int, default=schema_default("split.min_eval_recordings"),
                   help="a species with this many recordings gets at least one in each of val and test")
    p.add_argument("--recording-pattern", help="regex on the file stem, group `recording` (default: strip _<digits>)")
    p.add_argument("--ledger", help="earlier assignments (split_ledger.tsv): read if present, then rewritten; "
                                    "without it the split is made from scratch")
    add_background(p)
    p.set_defaults(func=cmd_split)
