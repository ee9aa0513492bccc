"""The features of the unlabelled recordings of self_training.audio_dir, one npz per file, reused by content.

The extraction is the feature stage's own (jibjib.features.extract.extract_file, the same front end); an npz
is kept while the SHA-256 of its recording and the front end's fingerprint are unchanged, so adding one
recording computes one file. A file that cannot be used gets a row with its reason, not a crash.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from jibjib.core import fsutil
from jibjib.core.params import FrontEnd
from jibjib.features.audio import AudioError, is_audio_file
from jibjib.features.extract import extract_file
from jibjib.features.qc import is_hidden, species_files

MANIFEST_COLUMNS = ("path", "feature", "sha256", "seconds", "frames", "status", "reason")


def unlabelled_files(audio_dir: Path) -> list[Path]:
    """The audio files below `audio_dir` (recursively, hidden ones left out), sorted."""
    return [path for path in species_files(audio_dir)
            if is_audio_file(path) and not is_hidden(path.relative_to(audio_dir))]


def _reusable(npz: Path, sha256: str, params: FrontEnd) -> int | None:
    """The frames of `npz` if it holds the features of content `sha256` under `params`, else None."""
    if not npz.exists():
        return None
    try:
        with np.load(npz, allow_pickle=False) as z:
            if str(z["source_sha256"]) == sha256 and str(z["frontend"]) == params.fingerprint():
                return int(z["log_mel"].shape[0])
    except (OSError, KeyError, ValueError):
        return None
    return None


def update_unlabelled(audio_dir: str | os.PathLike, features_dir: str | os.PathLike,
                      manifest: str | os.PathLike, params: FrontEnd) -> pd.DataFrame:
    """Features of every recording below `audio_dir` in `features_dir` (<relative path>.npz); writes and returns
    the manifest (MANIFEST_COLUMNS: status `processed` or `rejected` with its reason). Returns also how many
    files were computed, in the frame's attrs["computed"]."""
    root, out = Path(audio_dir), Path(features_dir)
    rows, computed, keep = [], 0, set()
    for source in unlabelled_files(root):
        relative = source.relative_to(root).as_posix()
        npz = out / f"{relative}.npz"
        keep.add(npz)
        sha256 = fsutil.sha256_or(source, "")  # "" for a file that cannot be read: extract_file says why
        row = {"path": relative, "feature": str(npz), "sha256": sha256, "seconds": "", "frames": "",
               "status": "processed", "reason": ""}
        frames = _reusable(npz, sha256, params) if sha256 else None
        if frames is None:
            try:
                info = extract_file(source, npz, params)
            except AudioError as exc:
                npz.unlink(missing_ok=True)  # the features of what the file held before
                rows.append({**row, "feature": "", "status": "rejected", "reason": str(exc)})
                continue
            frames, computed = info["frames"], computed + 1
        with np.load(npz, allow_pickle=False) as z:
            row.update(seconds=round(float(z["seconds"]), 3), frames=frames)
        rows.append(row)
    for stale in out.rglob("*.npz") if out.exists() else ():  # recordings no longer in audio_dir
        if stale not in keep:
            stale.unlink()
    table = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
    fsutil.write_tsv(manifest, table)
    table.attrs["computed"] = computed
    return table
