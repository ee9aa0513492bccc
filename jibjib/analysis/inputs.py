"""The audio files to analyse: the files and folders given, each with the name the tables give it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from jibjib.core.errors import InputError
from jibjib.features.audio import CONTAINERS
from jibjib.features.qc import ignore_reason, species_files


def find_inputs(paths: Iterable[str | os.PathLike], root: str | os.PathLike | None = None) -> list[tuple[Path, str]]:
    """(file, name in the tables) for the files and folders given, folders searched recursively.

    Names are relative to `root` if given; else relative to the folder given
    (with several folders or files given, prefixed by that folder's name, so
    that recorders naming files by time do not collide); a file given by
    itself is named by its file name.  A name is the path below the folder as
    listed, symbolic links not followed: a link to a recording elsewhere is
    named where the link is, and a link whose target is missing is kept (the
    analysis lists it as unreadable).  Hidden files and files that are not
    audio are kept, to be listed as ignored; a path given twice counts once.
    InputError if nothing given is audio.
    """
    given_paths = [Path(p) for p in paths]
    found: list[tuple[Path, str]] = []
    seen: set[str] = set()
    for given in given_paths:
        if given.is_dir():
            files, base = species_files(given), given
            prefix = Path(os.path.abspath(given)).name if len(given_paths) > 1 and root is None else ""
        elif given.is_file() or given.is_symlink():
            files, base, prefix = [given], given.parent, ""
        else:
            raise FileNotFoundError(2, "no such file or folder", str(given))
        anchor = os.path.abspath(root if root is not None else base)
        for path in files:
            # abspath, not resolve: normalised, links kept, so a link is named where it is.
            absolute = os.path.abspath(path)
            if absolute in seen:
                continue
            seen.add(absolute)
            relative = os.path.relpath(absolute, anchor)
            if relative == os.pardir or relative.startswith(os.pardir + os.sep):
                raise InputError(f"{path} is not below --root {root}")
            relative = Path(relative).as_posix()
            found.append((path, f"{prefix}/{relative}" if prefix else relative))
    if all(ignore_reason(Path(name)) for _, name in found):
        raise InputError(f"no audio files ({', '.join(CONTAINERS)}) in {', '.join(map(str, given_paths))}")
    return found
