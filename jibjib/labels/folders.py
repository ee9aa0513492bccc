"""What a data folder's name says: the species its files contain, or that it holds background audio.

A folder named in `background` (case-insensitively: `noise`, `background`,
`other`, `silence` by default) holds non-event audio: its files are trained on
and split like a species, but it is never a class.  A folder name listing
several species separated by commas (`Parus_major,Turdus_merula`, BirdNET's
convention) trains every one of them as a positive; each named species is a
class even without a folder of its own.  split.tsv's `species` column carries
the species a file contains (empty for background).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

from jibjib.core.errors import LabelError
from jibjib.core.settings import schema_default

if TYPE_CHECKING:  # only for the hints: reading folder names needs no pandas
    import pandas as pd

# The schema's default, for callers that name no setting.
DEFAULT_BACKGROUND: tuple[str, ...] = tuple(schema_default("labels.background"))
SPECIES_SEPARATOR = ","


def is_background(folder: str, background: Iterable[str] = DEFAULT_BACKGROUND) -> bool:
    """Whether a folder holds non-event audio: its name is one of `background`, in any case."""
    return folder.strip().casefold() in {name.strip().casefold() for name in background}


def folder_species(folder: str, background: Iterable[str] = DEFAULT_BACKGROUND) -> tuple[str, ...]:
    """The species a folder's files contain: () for a background folder, else the comma-separated
    names, stripped, without repeats, sorted (class order).

    LabelError for an empty name (`A,,B`, a trailing comma) or a background
    name among species: either is a typo that would otherwise make a class.
    """
    background = tuple(background)
    if is_background(folder, background):
        return ()
    names = [name.strip() for name in folder.split(SPECIES_SEPARATOR)]
    if not all(names):
        raise LabelError(f"folder {folder!r}: empty species name (species are separated by single commas)")
    mixed = [name for name in names if is_background(name, background)]
    if mixed:
        raise LabelError(f"folder {folder!r} names the background {mixed[0]!r} among species; a background "
                         "folder must be named on its own")
    return tuple(sorted(set(names)))


def species_column(folders: pd.Series, background: Iterable[str] = DEFAULT_BACKGROUND) -> pd.Series:
    """split.tsv's `species` for each file's folder (label)."""
    background = tuple(background)
    joined = {folder: SPECIES_SEPARATOR.join(folder_species(folder, background)) for folder in set(folders)}
    return folders.map(joined)


def folder_list(folders: list[str]) -> str:
    """Folder names for a log line; a multi-species name is quoted, or its commas would split it."""
    return ", ".join(repr(folder) if SPECIES_SEPARATOR in folder else folder for folder in folders)
