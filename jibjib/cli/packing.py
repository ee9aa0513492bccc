"""`jibjib pack`: one feature shard packed into a float16 array and an index, for training."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jibjib.cli.common import input_dir, input_file


def cmd_pack(args: argparse.Namespace) -> None:
    from jibjib.packing import pack_shard

    counts = pack_shard(args.manifest, args.features_dir, args.array, args.index)
    print(f"pack {Path(args.manifest).stem}: {counts['files']} files, {counts['rows']} frames "
          f"({counts['read']} read from their npz, {counts['reused']} kept from the previous pack)", file=sys.stderr)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pack", help="one shard's log-mel packed into a float16 array and an index, for training")
    p.add_argument("--manifest", required=True, type=input_file, help="the shard's QC rows (its processed files)")
    p.add_argument("--features-dir", required=True, type=input_dir)
    p.add_argument("--array", required=True, help="the packed log-mel (.npy, float16 (frames, bands))")
    p.add_argument("--index", required=True, help="path, row, frames, content of each file (TSV)")
    p.set_defaults(func=cmd_pack)
