"""`jibjib features` (one shard's log-mel) and `jibjib qc` (the table that accounts for every file)."""

from __future__ import annotations

import argparse
import sys
import errno
from pathlib import Path

from jibjib.cli.common import frontend_option, input_dir, input_file, single_threaded_blas


def cmd_features(args: argparse.Namespace) -> None:
    single_threaded_blas()
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
                                         frontend_option(args.frontend), sources=sources)
        rows += species_rows
    write_manifest(args.manifest, rows)

def cmd_qc(args: argparse.Namespace) -> None:
    import pandas as pd

    from jibjib.core import fsutil
    from jibjib.features.qc import loose_files
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


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("features", help="log-mel features for species folders (one shard)")
    p.add_argument("--data-dir", required=True, type=input_dir)
    p.add_argument("--label", required=True, action="append",
                   help="species folder name below --data-dir; repeat for each species of the shard")
    p.add_argument("--features-dir", required=True, help="npz files go to <features-dir>/<label>/")
    p.add_argument("--manifest", required=True, help="QC rows of these species (TSV)")
    p.add_argument("--frontend", help="front-end parameters as JSON (default: VGGish)")
    p.add_argument("--sources", type=input_file,
                   help="the shard's content signature (results/sources/<shard>.tsv): an npz is then current "
                        "if it was computed from the recorded SHA-256, or for a file listed by a stamp from the "
                        "file's own hash (default: size and mtime)")
    p.set_defaults(func=cmd_features)

    p = sub.add_parser("qc", help="the QC table (results/qc/files.tsv) from the species manifests")
    p.add_argument("--data-dir", required=True, type=input_dir)
    p.add_argument("--manifests", nargs="+", required=True, type=input_file)
    p.add_argument("--out", required=True, help="qc/files.tsv")
    p.set_defaults(func=cmd_qc)
