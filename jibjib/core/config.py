"""Checks on the workflow configuration that JSON schema cannot express.

They run when the Snakefile is parsed, so a bad config costs one clear line
before any heavy work starts.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from jibjib.features.audio import CONTAINERS
from jibjib.core.errors import ConfigError, LabelError
from jibjib.features.qc import ignore_reason, species_files


def discover_species(data_dir: Path) -> list[str]:
    """Species folder names below data_dir (hidden folders skipped), sorted."""
    return sorted(p.name for p in data_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def loose_files(data_dir: Path) -> list[str]:
    """Files below data_dir that belong to no species, relative to data_dir, sorted.

    Those directly in data_dir, and everything inside a hidden top-level
    folder (`.Trashes/`, `.git/`): QC lists each one as ignored, so the table
    keeps one row per file found.
    """
    found = []
    for entry in data_dir.iterdir():
        if not entry.is_dir():
            found.append(entry.name)
        elif entry.name.startswith("."):
            found.extend(f.relative_to(data_dir).as_posix() for f in species_files(entry))
    return sorted(found)


def check_data_dir(data_dir: Path, demo_hint: str = "",
                   background: tuple[str, ...] | None = None) -> dict[str, list[Path]]:
    """The folders (species, multi-species, background) and every file in each; fails on a tree we cannot
    train on.  A background folder without audio files is allowed: it only adds negatives."""
    from jibjib.labels.split import DEFAULT_BACKGROUND, folder_species

    background = DEFAULT_BACKGROUND if background is None else background
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
    from jibjib.labels.split import folder_species

    return sorted(set().union(*(folder_species(folder, background) for folder in folders)))


def check_multi_species(config: dict[str, Any], folders: list[str], background: tuple[str, ...]) -> None:
    """A folder naming several species trains each as a positive: only sigmoid (multi_label) outputs can."""
    from jibjib.labels.split import folder_species

    multi = [folder for folder in folders if len(folder_species(folder, background)) > 1]
    softmax = [model for model in config.get("models", []) if not config.get(model, {}).get("multi_label", False)]
    if multi and softmax:
        raise ConfigError(f"{softmax[0]}.multi_label: false, but data_dir folder {multi[0]} names several species; "
                          "set multi_label: true for every trained model (a softmax output cannot train several "
                          "species as positives of one file)")


def check_split(split: dict[str, Any]) -> None:
    from jibjib.labels.split import check_fractions, check_min_eval_recordings  # pandas: only where it is needed

    try:
        check_fractions(split["fractions"])
    except LabelError as exc:
        raise ConfigError(f"split.fractions: {exc}") from None
    try:
        check_min_eval_recordings(split["fractions"], split["min_eval_recordings"])
    except LabelError as exc:
        raise ConfigError(f"split.min_eval_recordings: {str(exc).removeprefix('min_eval_recordings ')}") from None
    try:
        re.compile(split["recording_pattern"])
    except re.error as exc:
        raise ConfigError(f"split.recording_pattern: not a valid regular expression ({exc})") from None


def check_label_map(path: str | None, species: list[str]) -> None:
    if not path:
        return
    from jibjib.labels.split import load_label_map

    try:
        mapping = load_label_map(path)
    except LabelError as exc:
        raise ConfigError(f"label_map: {exc}") from None
    missing = [s for s in species if s not in mapping]
    if missing:
        raise ConfigError(f"label_map: {path} has no id for species {', '.join(missing[:5])}"
                          + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))


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


def _existing_folder(key: str, value: str, demo_hint: str = "") -> Path:
    folder = Path(value)
    if not folder.exists():
        hint = f" (create the demo soundscapes with `{demo_hint}`)" if demo_hint else ""
        raise ConfigError(f"{key}: {folder} does not exist{hint}")
    if not folder.is_dir():
        raise ConfigError(f"{key}: {folder} is not a folder")
    return folder


def analysis_models(config: dict[str, Any]) -> list[str]:
    """The models the analysis stage runs (none without analyze.input_dir)."""
    section = config.get("analyze", {})
    if not section.get("input_dir"):
        return []
    return list(config["models"] if section.get("models") is None else section["models"])


def check_analysis(config: dict[str, Any], demo_hint: str = "") -> dict[str, list[Path]]:
    """The analysis and soundscape settings; returns the recordings to analyse (relative path -> [file])."""
    recordings: dict[str, list[Path]] = {}
    section = config.get("analyze", {})
    if section.get("input_dir"):
        not_trained = sorted(set(analysis_models(config)) - set(config["models"]))
        if not_trained:
            raise ConfigError(f"analyze.models: {', '.join(not_trained)} not among the trained models "
                              f"({', '.join(config['models'])})")
        folder = _existing_folder("analyze.input_dir", section["input_dir"], demo_hint)
        recordings = {path.relative_to(folder).as_posix(): [path] for path in species_files(folder)}
        if all(ignore_reason(Path(name)) for name in recordings):
            raise ConfigError(f"analyze.input_dir: {folder} has no audio files ({', '.join(CONTAINERS)})")
    scapes = config.get("soundscapes", {})
    if scapes.get("audio_dir"):
        folder = _existing_folder("soundscapes.audio_dir", scapes["audio_dir"], demo_hint)
        if not any(not ignore_reason(p.relative_to(folder)) for p in species_files(folder)):
            raise ConfigError(f"soundscapes.audio_dir: {folder} has no audio files ({', '.join(CONTAINERS)})")
        if scapes.get("annotations") and not Path(scapes["annotations"]).exists():
            raise ConfigError(f"soundscapes.annotations: {scapes['annotations']} does not exist")
    return recordings


def check_augmentation(section: dict[str, Any] | None) -> None:
    """Ranges the schema cannot order: [low, high] with low <= high."""
    for key in ("background_snr_db", "lowpass_hz"):
        low, high = (section or {}).get(key, (0.0, 0.0))
        if low > high:
            raise ConfigError(f"train.augment.{key}: must be [low, high] with low <= high, got [{low:g}, {high:g}]")


def check_config(config: dict[str, Any], demo_hint: str = "") -> dict[str, list[Path]]:
    """Run every check; returns the species inventory (label -> files).

    A file or folder the checks cannot read (an unreadable data_dir or
    label_map, say) is a ConfigError naming it, like every other problem.
    """
    from jibjib.labels.split import DEFAULT_BACKGROUND  # pandas: only where it is needed

    try:
        background = tuple(config.get("labels", {}).get("background", DEFAULT_BACKGROUND))
        inventory = check_data_dir(Path(config["data_dir"]), demo_hint, background)
        check_multi_species(config, sorted(inventory), background)
        check_split(config["split"])
        check_label_map(config.get("label_map"), inventory_species(sorted(inventory), background))
        if "vggish" in config.get("models", []):
            check_checkpoint(config.get("vggish", {}).get("checkpoint"))
        check_augmentation(config.get("train", {}).get("augment"))
    except OSError as exc:
        if exc.filename is None:
            raise
        raise ConfigError(f"{exc.filename}: {exc.strerror}") from None
    return inventory
