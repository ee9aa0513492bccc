"""The marker files of the demo generators, which tell a complete, current output folder from any other.

A generator writes its marker last, so its presence means "complete"; before
it touches any file it writes a partial marker listing every file the run may
leave, so that the next run can clean up after a killed one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jibjib.core import fsutil


def read_marker(path: Path) -> dict[str, Any] | None:
    """The marker's content; {} if it exists but is unreadable (still a demo folder)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def files_intact(out: Path, files: Any) -> bool:
    """Whether every file a marker lists (name -> size in bytes) is in `out` at its recorded size."""
    if not isinstance(files, dict) or not files:
        return False
    for name, size in files.items():
        try:
            if (out / name).stat().st_size != size:
                return False
        except OSError:
            return False
    return True


def prepare_folder(out: Path, marker_name: str, partial_name: str, version: int, arguments: dict[str, Any],
                   what: str) -> set[str] | None:
    """Make `out` ready for a generator's run; None if it already holds the run's output.

    None when the marker says `out` holds the output of this `version` for
    these `arguments` and every file is there at its recorded size: nothing is
    to be written.  Otherwise `out` exists without stale temporary files, and
    the names returned are those an earlier run (complete, or killed with only
    its partial marker) may have left.  A non-empty `out` with neither marker
    is refused (FileExistsError, adding `what` to it), so that real recordings
    never get mixed with synthetic ones.
    """
    previous = read_marker(out / marker_name)
    if (previous and previous.get("version") == version and previous.get("arguments") == arguments
            and files_intact(out, previous.get("files"))):
        return None
    partial = read_marker(out / partial_name)
    if previous is None and partial is None and out.is_dir() and any(
            not p.name.startswith(".") for p in out.iterdir()):
        raise FileExistsError(f"{out} is not empty and holds no {marker_name}: refusing to add {what} to it")
    out.mkdir(parents=True, exist_ok=True)
    fsutil.remove_stale_temps(out)
    return set((previous or {}).get("files") or {}) | set((partial or {}).get("files") or {})
