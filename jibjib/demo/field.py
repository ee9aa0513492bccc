"""Unlabelled demo field audio for self-training (self_training.audio_dir of resources/demo.yaml).

Recordings like the annotated demo soundscapes (jibjib.demo.soundscapes: a field bed under bouts of the
demo species' songs, two species overlapping, stretches without birds), but new renditions: their plans
and beds are drawn with file numbers from MAX_FILES on, which the annotated soundscapes (at most MAX_FILES
files) never use, so no song or bed repeats one of the evaluation soundscapes, nor of the training set
(whose streams have four entries). No selection tables: nobody labelled these.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from jibjib.core import fsutil
from jibjib.demo.markers import prepare_folder
from jibjib.demo.songs import make_species, species_names
from jibjib.demo.soundscapes import MAX_FILES, _encode, _plan_file, _render
from jibjib.demo.species import DEFAULT_SEED

FIELD_MARKER, FIELD_PARTIAL = ".field.json", ".field.partial.json"
FIELD_VERSION = 1
_LENGTH_STREAM = 13


def make_field_audio(out_dir: str | os.PathLike, n_species: int = 8, seed: int = DEFAULT_SEED, n_files: int = 4,
                     min_seconds: float = 90.0, max_seconds: float = 150.0) -> tuple[list[str], float]:
    """Write `n_files` unlabelled recordings `field<k>.<wav|flac|ogg|mp3>` to `out_dir`; (names, seconds).

    The species are those of `make_demo(..., n_species, seed)`. The same arguments give byte-identical
    files, and a folder already holding them is left as it is (its marker, as for the soundscapes).
    """
    if not 1 <= n_files <= MAX_FILES or not 30.0 <= min_seconds <= max_seconds:
        raise ValueError(f"field audio: 1 to {MAX_FILES} files of at least 30 s, not {n_files} of "
                         f"{min_seconds}-{max_seconds} s")
    arguments = {"n_species": n_species, "seed": seed, "n_files": n_files, "min_seconds": float(min_seconds),
                 "max_seconds": float(max_seconds)}
    species = [make_species(seed, i, name) for i, name in enumerate(species_names(seed, n_species))]
    lengths = np.random.default_rng([seed, _LENGTH_STREAM]).uniform(min_seconds, max_seconds, n_files).round(1)
    plans = []
    for k, seconds in enumerate(lengths):
        plan = _plan_file(seed, MAX_FILES + k, species, float(seconds))  # past every annotated soundscape
        plans.append(dataclasses.replace(plan, name=f"field{k + 1}{Path(plan.name).suffix}"))
    names, total = [p.name for p in plans], round(float(sum(p.seconds for p in plans)), 3)
    out = Path(out_dir)
    old = prepare_folder(out, FIELD_MARKER, FIELD_PARTIAL, FIELD_VERSION, arguments, "unlabelled field audio")
    if old is None:
        return names, total
    fsutil.write_json(out / FIELD_PARTIAL, {"files": dict.fromkeys(sorted(old | set(names)))})
    (out / FIELD_MARKER).unlink(missing_ok=True)
    sizes = {}
    for plan in plans:
        data = _encode(_render(seed, plan), plan)
        with fsutil.atomic_open(out / plan.name, "wb") as f:
            f.write(data)
        sizes[plan.name] = len(data)
    for name in sorted(old - set(names)):
        if isinstance(name, str) and name.startswith("field") and "/" not in name:
            (out / name).unlink(missing_ok=True)
    fsutil.write_json(out / FIELD_MARKER, {"generator": "jibjib.demo_field", "version": FIELD_VERSION,
                                           "arguments": arguments, "files": dict(sorted(sizes.items()))})
    (out / FIELD_PARTIAL).unlink()
    return names, total
