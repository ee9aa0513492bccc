"""A synthetic, deterministic bird-song data set, so `make demo` needs no network: `make_demo` and its marker.

The layout copies the real xeno-canto-derived data: `<Genus_species>/` folders
holding `<Genus_species>-<recording>_<k>.wav`, the k-th fixed-length slice of a
recording.  The species and their songs come from jibjib.demo.songs, the
recordings from jibjib.demo.recordings; this module checks the arguments,
keeps a folder that already holds the same demo, and writes the marker.

Only numpy, scipy and soundfile are used: the demo must run before any model
code (TensorFlow) is importable.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from jibjib.core import fsutil
from jibjib.demo import recordings
from jibjib.demo.markers import prepare_folder
from jibjib.demo.songs import make_species, species_names

__all__ = ["DemoSummary", "make_demo", "DEFAULT_SEED", "MARKER_NAME", "GENERATOR_VERSION"]

# Bump whenever the output of the same arguments changes, so an old demo
# folder is regenerated instead of being trusted by the marker.
GENERATOR_VERSION = 2
# Written last, so its presence means "complete" (the Makefile uses it as its target).
MARKER_NAME = ".demo.json"
# With the workflow's default split (seed 42, 0.7/0.15/0.15 by recording), this
# seed gives every demo species at least two recordings in val and in test, so
# the demo's evaluation has something to measure for each class
# (tests/demo/test_demo.py checks it).
DEFAULT_SEED = 57
# Lists every file a run in progress may leave, so a killed run can be cleaned up.
PARTIAL_NAME = ".demo.partial.json"

MAX_SPECIES = 200
_FILE_RE = re.compile(rf"^(?P<species>[A-Z][a-z]+_[a-z]+|{recordings.BACKGROUND_FOLDER})/(?P=species)-\d+_\d+\.wav$")


@dataclasses.dataclass(frozen=True)
class DemoSummary:
    """What `make_demo` produced (or found already in place)."""

    n_species: int
    n_recordings: int
    n_files: int
    seconds: float  # total audio duration of all files
    species: list[str]  # sorted, i.e. in class-id order
    n_background_files: int = 0  # in the background folder (noise/), counted in n_files too


def _arguments(n_species: int, recordings_per_species: int, seed: int,
               slice_seconds: float, max_slices: int, background_recordings: int = 0) -> dict[str, Any]:
    def count(value: Any, name: str, low: int, high: int | None = None) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name} must be an integer, not {type(value).__name__}")
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise ValueError(f"{name} must be {bound}, not {value}")
        return int(value)

    slice_seconds = float(slice_seconds)
    # One VGGish patch needs 0.975 s; shorter slices would all be rejected.
    if not math.isfinite(slice_seconds) or not 1.0 <= slice_seconds <= 600.0:
        raise ValueError(f"slice_seconds must be between 1 and 600, not {slice_seconds}")
    return {
        "n_species": count(n_species, "n_species", 1, MAX_SPECIES),
        "recordings_per_species": count(recordings_per_species, "recordings_per_species", 1),
        "seed": count(seed, "seed", 0),
        "slice_seconds": slice_seconds,
        "max_slices": count(max_slices, "max_slices", 1),
        "background_recordings": count(background_recordings, "background_recordings", 0),
    }


def _remove_stale(out: Path, names: set[str]) -> None:
    """Delete files an earlier demo with other arguments made; nothing else."""
    for name in sorted(names):
        # The marker is only trusted for names we could have written ourselves.
        if not isinstance(name, str) or not _FILE_RE.match(name):
            continue
        (out / name).unlink(missing_ok=True)
        try:
            (out / name).parent.rmdir()
        except OSError:
            pass  # still holds other files


def _marker(arguments: dict[str, Any], files: dict[str, int | None],
            plans: list[recordings.Recording]) -> dict[str, Any]:
    """The marker's content: the arguments, every file's size (None for a file not yet written) and the plan of
    every recording."""
    return {
        "generator": "jibjib.demo",
        "version": GENERATOR_VERSION,
        "arguments": arguments,
        "files": dict(sorted(files.items())),
        "recordings": [
            {"species": p.species, "recording": f"{p.species}-{p.number}", "sample_rate": p.sample_rate,
             "channels": p.channels, "subtype": p.subtype, "seconds": round(p.seconds, 4),
             "snr_db": p.snr_db, "files": p.files}
            for p in plans
        ],
    }


def make_demo(
    out_dir: str | os.PathLike,
    n_species: int = 8,
    recordings_per_species: int = 20,
    seed: int = DEFAULT_SEED,
    slice_seconds: float = 10.0,
    max_slices: int = 2,
    background_recordings: int = 0,
) -> DemoSummary:
    """Write a synthetic bird-song set to `out_dir/<Genus_species>/<Genus_species>-<n>_<k>.wav`.

    Each recording lasts 1 to `max_slices` slices of `slice_seconds` (the last
    one at least 3 s) and is cut into numbered files; `background_recordings`
    more, without birds, go to `out_dir/noise/` (a background folder).  The same arguments give
    byte-identical files.  If `out_dir` already holds a complete demo made with
    the same arguments (its `.demo.json` marker says so and every file is
    there at its recorded size), nothing is rewritten.  Files of an earlier
    demo with other arguments are removed; anything else is left alone, but a
    non-empty `out_dir` without a marker is refused (FileExistsError) so real
    recordings never get mixed with synthetic ones.
    """
    arguments = _arguments(n_species, recordings_per_species, seed, slice_seconds, max_slices, background_recordings)
    out = Path(out_dir)
    names = species_names(arguments["seed"], arguments["n_species"])
    species = [make_species(arguments["seed"], i, name) for i, name in enumerate(names)]
    plans = recordings.plan_recordings(arguments["seed"], species, arguments["recordings_per_species"],
                                       arguments["slice_seconds"], arguments["max_slices"],
                                       arguments["background_recordings"])
    summary = DemoSummary(
        n_species=len(species),
        n_recordings=len(plans),
        n_files=sum(len(p.files) for p in plans),
        n_background_files=sum(len(p.files) for p in plans if p.species_index < 0),
        seconds=round(sum(p.seconds for p in plans), 3),
        species=sorted(names),
    )

    old = prepare_folder(out, MARKER_NAME, PARTIAL_NAME, GENERATOR_VERSION, arguments, "a demo")
    if old is None:
        return summary
    marker_path, partial_path = out / MARKER_NAME, out / PARTIAL_NAME
    new = {name for p in plans for name in p.files}
    # Listing old and new names before touching any file means a run killed
    # half-way leaves nothing the next run would not know to remove; the
    # marker goes first so a half-rewritten folder is never taken as complete.
    fsutil.write_json(partial_path, _marker(arguments, dict.fromkeys(old | new), plans))
    marker_path.unlink(missing_ok=True)
    sizes: dict[str, int | None] = {}
    for rec in plans:
        sizes.update(recordings.write_recording(out, species[rec.species_index] if rec.species_index >= 0 else None,
                                                rec, arguments["seed"]))
    _remove_stale(out, old - new)
    fsutil.write_json(marker_path, _marker(arguments, sizes, plans))
    partial_path.unlink()
    return summary
