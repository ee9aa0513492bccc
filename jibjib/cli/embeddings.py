"""`jibjib embed`: one packed shard through the frozen VGGish trunk (the embedding cache)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jibjib.cli.common import input_file, tensorflow_threads


def cmd_embed(args: argparse.Namespace) -> None:
    tensorflow_threads(args.threads)
    from jibjib.embeddings.compute import embed_shard

    counts = embed_shard(args.packed, args.cut, args.checkpoint, args.seed, args.array, args.index)
    weights = f"checkpoint {args.checkpoint}" if args.checkpoint else f"random weights of seed {args.seed}"
    print(f"embed {Path(args.packed).stem}: {counts['files']} files, {counts['patches']} patches, output of "
          f"{args.cut} ({weights}; {counts['computed']} computed, {counts['reused']} kept from the previous cache)",
          file=sys.stderr)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    from jibjib.embeddings.cut import CACHEABLE_CUTS  # standard library only, like the rest of the parser

    p = sub.add_parser("embed", help="one packed shard through the frozen VGGish trunk: the embedding cache")
    p.add_argument("--packed", required=True, type=input_file, help="the shard's packed index (jibjib pack)")
    p.add_argument("--cut", required=True, choices=CACHEABLE_CUTS,
                   help="the last frozen trunk layer, whose output is cached (fc2 for trainable: head)")
    p.add_argument("--checkpoint", help="vggish.checkpoint (default: random weights from --seed, as training has)")
    p.add_argument("--seed", type=int, default=0, help="train.seed: draws the random trunk without a checkpoint")
    p.add_argument("--array", required=True, help="the cached outputs (.npy, float32 (patches, floats))")
    p.add_argument("--index", required=True, help="path, row, patches, content, cut, trunk of each file (TSV)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for TensorFlow (0: all)")
    p.set_defaults(func=cmd_embed)
