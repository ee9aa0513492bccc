"""The `jibjib` command: what the Snakemake rules call, one subcommand per step.

One module per stage (jibjib/cli/<stage>.py) holds its subcommands and their
options. Heavy imports (TensorFlow, pandas) happen inside the subcommands
that need them, and the parser itself imports only the standard library and
the config schema, so `jibjib features`, which runs once per shard of
species, imports neither.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from jibjib.cli import (analysis, demo, embeddings, evaluation, features, labels, packing, review, selftraining,
                        serving, training)

# In the order of the workflow's data flow (the demo set first: it is where a first run starts).
STAGES = (demo, features, packing, embeddings, labels, training, evaluation, selftraining, serving, analysis, review)


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line: the message names the argument, `--help` has the rest."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from jibjib import __version__

    parser = _Parser(prog="jibjib", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"jibjib {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for stage in STAGES:
        stage.add_parsers(sub)
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
