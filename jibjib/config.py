"""Checks on the workflow configuration that JSON schema cannot express.

They run when the Snakefile is parsed, so a bad config costs one clear line
before any heavy work starts.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .qc import ignore_reason, species_files
from .labels import LabelError, load_label_map


class ConfigError(ValueError):
    """A configuration problem, phrased as one line naming the key."""


def discover_species(data_dir: Path) -> list[str]:
    """Species folder names below data_dir (hidden folders skipped), sorted."""
    return sorted(p.name for p in data_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def loose_files(data_dir: Path) -> list[str]:
    """Files directly in data_dir: they belong to no species, QC lists them as ignored."""
    return sorted(p.name for p in data_dir.iterdir() if not p.is_dir())


def check_data_dir(data_dir: Path, demo_hint: str = "") -> dict[str, list[Path]]:
    """The species folders and every file in each; fails on a tree we cannot train on."""
    if not data_dir.exists():
        hint = f" (create the demo set with `{demo_hint}`)" if demo_hint else ""
        raise ConfigError(f"data_dir: {data_dir} does not exist{hint}")
    if not data_dir.is_dir():
        raise ConfigError(f"data_dir: {data_dir} is not a folder")
    species = discover_species(data_dir)
    if not species:
        raise ConfigError(f"data_dir: {data_dir} has no species folders (expected {data_dir}/<Genus_species>/*.wav)")
    if len(species) < 2:
        raise ConfigError(f"data_dir: {data_dir} has only one species folder ({species[0]}); a classifier needs two or more")
    inventory = {label: species_files(data_dir / label) for label in species}
    for label, files in inventory.items():
        folder = data_dir / label
        if not any(not ignore_reason(f.relative_to(folder)) for f in files):
            raise ConfigError(f"data_dir: species folder {folder} has no .wav files")
    return inventory


def check_split(split: dict[str, Any]) -> None:
    fractions = split["fractions"]
    total = sum(fractions.values())
    if abs(total - 1.0) > 1e-6:
        raise ConfigError(
            "split.fractions: train + val + test must add up to 1, got "
            + " + ".join(f"{fractions[k]:g}" for k in ("train", "val", "test"))
            + f" = {total:g}"
        )
    try:
        re.compile(split["recording_pattern"])
    except re.error as exc:
        raise ConfigError(f"split.recording_pattern: not a valid regular expression ({exc})") from None


def check_label_map(path: str | None, species: list[str]) -> None:
    if not path:
        return
    try:
        mapping = load_label_map(path)
    except LabelError as exc:
        raise ConfigError(f"label_map: {exc}") from None
    missing = [s for s in species if s not in mapping]
    if missing:
        raise ConfigError(f"label_map: {path} has no id for species {', '.join(missing[:5])}"
                          + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))


def check_checkpoint(path: str | None) -> None:
    """The VGGish checkpoint must exist: a V1 file, or a V2 prefix with its .index."""
    if path and not Path(path).is_file() and not Path(f"{path}.index").is_file():
        raise ConfigError(f"vggish.checkpoint: {path} does not exist (neither a checkpoint file nor a prefix.index)")


def check_config(config: dict[str, Any], demo_hint: str = "") -> dict[str, list[Path]]:
    """Run every check; returns the species inventory (label -> files)."""
    inventory = check_data_dir(Path(config["data_dir"]), demo_hint)
    check_split(config["split"])
    check_label_map(config.get("label_map"), sorted(inventory))
    if "vggish" in config.get("models", []):
        check_checkpoint(config.get("vggish", {}).get("checkpoint"))
    return inventory
