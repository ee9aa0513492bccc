"""Checks of the data folder and the split settings that JSON schema cannot express.

They run when the Snakefile is parsed, so a bad tree or setting costs one
clear line before any heavy work starts.
"""

from __future__ import annotations

import re
from pathlib import Path

from jibjib.core.errors import ConfigError, LabelError
from jibjib.core.settings import Settings, SplitSettings
from jibjib.features.audio import CONTAINERS
from jibjib.features.qc import ignore_reason, species_files


def discover_species(data_dir: Path) -> list[str]:
    """Species folder names below data_dir (hidden folders skipped), sorted."""
    return sorted(p.name for p in data_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def check_data_dir(data_dir: Path, background: tuple[str, ...], demo_hint: str = "") -> dict[str, list[Path]]:
    """The folders (species, multi-species, background) and every file in each; fails on a tree we cannot
    train on.  A background folder without audio files is allowed: it only adds negatives."""
    from jibjib.labels.folders import folder_species

    if not data_dir.exists():
        hint = f" (create the demo set with `{demo_hint}`)" if demo_hint else ""
        raise ConfigError(f"data_dir: {data_dir} does not exist{hint}")
    if not data_dir.is_dir():
        raise ConfigError(f"data_dir: {data_dir} is not a folder")
    folders = discover_species(data_dir)
    if not folders:
        raise ConfigError(f"data_dir: {data_dir} has no species folders (expected {data_dir}/<Genus_species>/*.wav)")
    try:
        species_of = {folder: folder_species(folder, background) for folder in folders}
    except LabelError as exc:
        raise ConfigError(f"data_dir: {exc}") from None
    species = sorted(set().union(*species_of.values()))
    if len(species) < 2:
        named = [folder for folder in folders if species_of[folder]]
        what = (f"only one species folder ({named[0]})" if len(named) == 1 and len(species_of[named[0]]) == 1
                else f"only {len(species)} species ({', '.join(species) or 'every folder is background'})")
        raise ConfigError(f"data_dir: {data_dir} has {what}; a classifier needs two or more")
    inventory = {label: species_files(data_dir / label) for label in folders}
    for label, files in inventory.items():
        folder = data_dir / label
        if species_of[label] and not any(not ignore_reason(f.relative_to(folder)) for f in files):
            raise ConfigError(f"data_dir: species folder {folder} has no audio files ({', '.join(CONTAINERS)})")
    return inventory


def inventory_species(folders: list[str], background: tuple[str, ...]) -> list[str]:
    """The classes the folders name (background folders none), sorted."""
    from jibjib.labels.folders import folder_species

    return sorted(set().union(*(folder_species(folder, background) for folder in folders)))


def check_multi_species(settings: Settings, folders: list[str]) -> None:
    """A folder naming several species trains each as a positive: only sigmoid (multi_label) outputs can."""
    from jibjib.labels.folders import folder_species

    multi = [folder for folder in folders if len(folder_species(folder, settings.labels.background)) > 1]
    softmax = [model for model in settings.models if not getattr(settings, model).multi_label]
    if multi and softmax:
        raise ConfigError(f"{softmax[0]}.multi_label: false, but data_dir folder {multi[0]} names several species; "
                          "set multi_label: true for every trained model (a softmax output cannot train several "
                          "species as positives of one file)")


def check_split(split: SplitSettings) -> None:
    from jibjib.labels.split import check_fractions, check_min_eval_recordings  # pandas: only where it is needed

    fractions = split.fractions.as_dict()
    try:
        check_fractions(fractions)
    except LabelError as exc:
        raise ConfigError(f"split.fractions: {exc}") from None
    try:
        check_min_eval_recordings(fractions, split.min_eval_recordings)
    except LabelError as exc:
        raise ConfigError(f"split.min_eval_recordings: {str(exc).removeprefix('min_eval_recordings ')}") from None
    try:
        re.compile(split.recording_pattern)
    except re.error as exc:
        raise ConfigError(f"split.recording_pattern: not a valid regular expression ({exc})") from None


def check_label_map(path: str | None, species: list[str]) -> None:
    if not path:
        return
    from jibjib.labels.label_map import load_label_map

    try:
        mapping = load_label_map(path)
    except LabelError as exc:
        raise ConfigError(f"label_map: {exc}") from None
    missing = [s for s in species if s not in mapping]
    if missing:
        raise ConfigError(f"label_map: {path} has no id for species {', '.join(missing[:5])}"
                          + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
