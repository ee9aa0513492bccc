"""Error classes for problems the user must fix, in a module that imports nothing heavy.

`jibjib.cli.main` reports each of them as one line; importing them from here
keeps pandas, scipy and TensorFlow out of commands that do not need them.
The modules that raise them re-export them under their old names.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration problem, phrased as one line naming the key."""


class LabelError(ValueError):
    """A problem with the labels or split that the user must fix."""


class ExportError(ValueError):
    """The --model folder is not a jibjib export."""


class InputError(ValueError):
    """A command-line value that cannot be used (a species label that is not a folder name, bad JSON)."""


class OutputError(OSError):
    """A write that failed; the message names the path."""


class TrainingError(RuntimeError):
    """A training run that cannot go on (a NaN or infinite loss): the message names the epoch and the remedy."""


# What `jibjib` reports as one line instead of a traceback.
USER_ERRORS = (ConfigError, LabelError, ExportError, InputError, OutputError, TrainingError)
