"""Helpers every subcommand module shares: argument types, thread settings, shared options."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def input_file(text: str) -> str:
    """An input file named on the command line, checked before any heavy import."""
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"{text} is a folder, not a file" if Path(text).is_dir()
                                         else f"{text} does not exist")
    return text

def input_dir(text: str) -> str:
    if not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is not a folder" if Path(text).exists() else f"{text} does not exist")
    return text

def parse_json(option: str, text: str):
    """A JSON command-line value; bad JSON is the caller's mistake, reported in one line."""
    from jibjib.core.errors import InputError

    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{option}: not valid JSON ({exc})") from None

def frontend_option(text: str | None):
    from jibjib.core.params import FrontEnd

    return FrontEnd.from_config(parse_json("--frontend", text) if text else None)

def recording_pattern(args: argparse.Namespace) -> str:
    # Resolved here, not as the argparse default: jibjib.labels.index imports pandas,
    # which the features command must not pay for.
    from jibjib.labels.index import DEFAULT_RECORDING_PATTERN

    return DEFAULT_RECORDING_PATTERN if args.recording_pattern is None else args.recording_pattern

def background_folders(args: argparse.Namespace) -> tuple[str, ...]:
    """The background folder names of --background (comma-separated; '' for none)."""
    from jibjib.labels.folders import DEFAULT_BACKGROUND

    if args.background is None:
        return DEFAULT_BACKGROUND
    return tuple(name.strip() for name in args.background.split(",") if name.strip())

def single_threaded_blas() -> None:
    """One BLAS thread: must run before numpy loads.

    Feature jobs run one per core side by side, and analyze's front end
    beside TensorFlow; BLAS's own threads on top oversubscribed the cores and
    made each feature job about 3x slower (2-core VM).
    """
    import os

    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(variable, "1")

def tensorflow_threads(threads: int) -> None:
    import os

    if threads:
        # Must happen before TensorFlow starts its thread pools.
        os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(threads))

def add_background(p: argparse.ArgumentParser) -> None:
    p.add_argument("--background", metavar="NAMES",
                   help="comma-separated folder names of non-event audio, matched in any case: trained on, never a "
                        "class ('' for none; default: noise,background,other,silence)")

def add_dataset_inputs(p: argparse.ArgumentParser) -> None:
    """The label index, the split and the features: what training and evaluation read."""
    p.add_argument("--labels", required=True, type=input_file, help="labels.tsv")
    p.add_argument("--split", required=True, type=input_file, help="split.tsv")
    p.add_argument("--features-dir", required=True, type=input_dir)
