"""The feature stage's npz files as later stages see them: where a file's npz is, and what it was computed from.

Free of TensorFlow, so the stages that only read these facts (packing, the
split, the embedding cache's staleness check) start quickly.
"""

from __future__ import annotations

import dataclasses
import os
import zipfile
from pathlib import Path

import numpy as np

from jibjib.core import fsutil


def feature_path(features_dir: str | os.PathLike, path: str) -> str:
    """The npz of a `split.tsv` path (relative to data_dir): <features_dir>/<label>/<stem>.npz."""
    return str(Path(features_dir) / Path(path).with_suffix(".npz"))


@dataclasses.dataclass(frozen=True)
class FeatureStamp:
    """What training needs to know about one npz without reading its log-mel."""

    frames: int
    content: str  # source SHA-256 and front-end fingerprint; the npz's own hash if it records neither


def feature_stamp(npz: str | os.PathLike) -> FeatureStamp:
    """Frames and content identity of a feature file, from its array headers and small members.

    The feature step stores the source file's SHA-256 and the front end's
    fingerprint in every npz; together (with the jibjib version) they
    determine the log-mel, so the log-mel itself need not be read or hashed.
    """
    with zipfile.ZipFile(npz) as archive:
        with archive.open("log_mel.npy") as member:
            version = np.lib.format.read_magic(member)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape = read_header(member)[0]

        def member(name: str) -> str | None:
            if f"{name}.npy" not in archive.namelist():
                return None
            with archive.open(f"{name}.npy") as f:
                return str(np.lib.format.read_array(f, allow_pickle=False))

        source, frontend = member("source_sha256"), member("frontend")
    content = f"{source}/{frontend}" if source and frontend else fsutil.sha256_file(npz)
    return FeatureStamp(int(shape[0]), content)
