"""Where a VGGish checkpoint is, and whether it is one: read at parse time, so no TensorFlow here.

A file the config points at is refused by its format (its first and last
bytes) before any library that could run code from it opens it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from jibjib.core.errors import ConfigError


# The footer of TensorFlow's table format (kTableMagicNumber, little-endian):
# the last 8 bytes of a V1 checkpoint file and of a V2 checkpoint's .index.
_TF_TABLE_MAGIC = bytes.fromhex("57fb808b247547db")
# Leading bytes of files people mistake for a checkpoint, to say what was given instead.
_OTHER_FORMATS = {
    b"\x89HDF": "an HDF5 file (a Keras .h5 model?)",
    b"PK\x03\x04": "a zip archive (a .keras model?)",
    b"\x80": "a Python pickle",
}


def checkpoint_prefix(path: str) -> str:
    """Accept a V2 checkpoint's ``.index`` or data file name for its prefix."""
    match = re.fullmatch(r"(.+)\.(?:index|data-\d{5}-of-\d{5})", path)
    if match and not os.path.isfile(path + ".index") and os.path.isfile(match[1] + ".index"):
        return match[1]
    return path


def checkpoint_problem(path: str) -> str | None:
    """Why `path` (a V1 file or V2 prefix) is not a TensorFlow checkpoint; None if it is one.

    Only the file's first and last bytes are read: a Keras model, a pickle or
    anything else the config points at is refused by its format before a
    library that could run code from it ever opens it.
    """
    if os.path.isdir(path):
        return "not a readable TF checkpoint (a folder; give the V1 checkpoint file or the V2 prefix)"
    table = Path(path) if os.path.isfile(path) else Path(f"{path}.index")
    if not table.is_file():
        return f"no such checkpoint (neither a V1 file nor a V2 {path}.index)"
    with open(table, "rb") as f:
        head = f.read(len(_TF_TABLE_MAGIC))
        f.seek(max(table.stat().st_size - len(_TF_TABLE_MAGIC), 0))
        if f.read() == _TF_TABLE_MAGIC:
            return None
    kind = next((name for magic, name in _OTHER_FORMATS.items() if head.startswith(magic)), None)
    why = (f"{table.name} is {kind}; only TensorFlow checkpoints are read" if kind
           else f"{table.name} lacks the TensorFlow checkpoint footer: truncated, or another format")
    return f"not a readable TF checkpoint ({why})"


def check_checkpoint(path: str | None) -> None:
    """The VGGish checkpoint must be a TensorFlow checkpoint: a V1 file, or a V2 prefix with its .index."""
    problem = checkpoint_problem(checkpoint_prefix(path)) if path else None
    if problem:
        raise ConfigError(f"vggish.checkpoint: {path}: {problem}")


def checkpoint_files(path: str) -> list[Path]:
    """The files of a checkpoint: the V1 file, or a V2 prefix's index and data shards (sorted)."""
    prefix = Path(checkpoint_prefix(str(path)))
    return [prefix] if prefix.is_file() else sorted(prefix.parent.glob(f"{prefix.name}.*"))
