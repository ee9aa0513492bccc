"""Pack a feature shard's npz files into one float16 array file plus an index; read rows back by offset.

Layout, per feature shard (results/packed/<shard>.npy and <shard>.tsv):

- `<shard>.npy`: a standard .npy file, float16 (rows, bands): every file's
  log-mel frames one after the other, in index order. float16 halves the
  bytes read per patch; log-mel values (about -5 to 8) keep 3 significant
  digits, far below the noise of any recording.
- `<shard>.tsv`: INDEX_COLUMNS, one row per packed file: its split.tsv
  `path`, its first `row` in the array, its `frames`, its feature
  `content` (source SHA-256 and front end, see jibjib.feature_files) and
  the `activity` score of each of its patches (jibjib.features.activity:
  dB, space-separated), computed here from the packed float16 rows, and the
  `activity_method` that computed them.

A pack written before the index had `activity`, or by another activity
method, is upgraded in place: the scores are computed from its own rows (no
npz is read, the array is kept). Until it is, readers score such a shard's
files from its rows themselves (PackedFeatures.locate_activity).

The pack does not depend on the split or the labels: moving a recording to
another split, or renaming a species in the labels, repacks nothing. Only a
shard whose files changed is packed again, and in it only the changed files
are read from their npz; the rest are copied from the previous pack.

Rows are read with positioned reads (`os.preadv`) straight into the
caller's buffer, not through a memory map: the pages stay in the kernel's page
cache and not in the process's resident memory, so a reader's memory does not
grow with the corpus, and the GIL is released while the kernel copies.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pandas as pd

from jibjib.core import fsutil
from jibjib.features.activity import ACTIVITY_METHOD, format_activity, parse_activity, patch_activity
from jibjib.features.files import feature_path, feature_stamp
from jibjib.features.qc import PROCESSED, read_qc

INDEX_COLUMNS = ["path", "row", "frames", "content", "activity", "activity_method"]
IDENTITY_COLUMNS = ["path", "row", "frames", "content"]  # what decides whether a pack is still current
DTYPE = np.dtype("<f2")


def _header_offset(path: Path) -> tuple[int, tuple[int, int]]:
    """Byte offset of the data in a .npy file, and its shape (checked to be float16, C order)."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(f)
        if dtype != DTYPE or fortran or len(shape) != 2:
            raise ValueError(f"{path}: not a packed float16 (rows, bands) array")
        return f.tell(), shape


def _read_index(path: Path) -> pd.DataFrame:
    index = pd.read_csv(path, sep="\t", dtype={"path": str, "content": str, "activity": str, "activity_method": str}, keep_default_na=False)
    return index.astype({"row": np.int64, "frames": np.int64})


def pack_shard(manifest: str | os.PathLike, features_dir: str | os.PathLike, array_path: str | os.PathLike,
               index_path: str | os.PathLike) -> dict[str, int]:
    """Pack the processed files of one shard's QC manifest; returns counts (files, read, reused, rows).

    When the previous pack holds exactly these files with this content, both
    outputs are left as they are (only their times are updated, so the
    workflow sees them current).
    """
    array_path, index_path = Path(array_path), Path(index_path)
    qc = read_qc([manifest])
    paths = sorted(qc.loc[qc["status"] == PROCESSED, "path"])
    npz = [feature_path(features_dir, p) for p in paths]
    stamps = [feature_stamp(f) for f in npz]
    rows = np.concatenate([[0], np.cumsum([s.frames for s in stamps])]).astype(np.int64)
    index = pd.DataFrame({"path": paths, "row": rows[:-1], "frames": [s.frames for s in stamps],
                          "content": [s.content for s in stamps]}, columns=IDENTITY_COLUMNS)

    previous = _previous_pack(array_path, index_path)
    if previous is not None and previous.index[IDENTITY_COLUMNS].equals(index):
        if _current_activity(previous.index).all():
            for path in (array_path, index_path):
                os.utime(path)
        else:  # a pack of before the activity column, or of another method: scored from its own rows
            index["activity"] = [format_activity(patch_activity(previous.read(0, row, n)))
                                 for row, n in zip(index["row"], index["frames"])]
            index["activity_method"] = ACTIVITY_METHOD
            previous.close()
            os.utime(array_path)
            fsutil.write_tsv(index_path, index[INDEX_COLUMNS])
        return {"files": len(index), "read": 0, "reused": len(index), "rows": int(rows[-1])}
    activity = []

    bands = _bands(npz, previous)
    old = {} if previous is None else {(p, c, n): r for p, c, n, r in
                                       previous.index[["path", "content", "frames", "row"]].itertuples(index=False)}
    read = reused = 0

    def write(tmp: Path) -> None:
        nonlocal read, reused
        with open(tmp, "wb") as f:
            np.lib.format.write_array_header_1_0(
                f, {"descr": DTYPE.str, "fortran_order": False, "shape": (int(rows[-1]), bands)})
            for path, stamp, source in zip(paths, stamps, npz):
                kept = old.get((path, stamp.content, stamp.frames))
                if kept is not None:
                    block = previous.read(0, kept, stamp.frames)
                    reused += 1
                else:
                    with np.load(source, allow_pickle=False) as z:
                        block = z["log_mel"].astype(DTYPE)
                    if block.shape != (stamp.frames, bands):
                        raise ValueError(f"{source}: log-mel {block.shape}, expected ({stamp.frames}, {bands})")
                    read += 1
                activity.append(format_activity(patch_activity(block)))
                f.write(block.tobytes())

    try:
        fsutil.atomic_save(array_path, write)
    finally:
        if previous is not None:
            previous.close()
    index["activity"] = activity
    index["activity_method"] = ACTIVITY_METHOD
    fsutil.write_tsv(index_path, index[INDEX_COLUMNS])
    return {"files": len(index), "read": read, "reused": reused, "rows": int(rows[-1])}


def _bands(npz: list[str], previous: "PackedFeatures | None") -> int:
    if npz:
        with np.load(npz[0], allow_pickle=False) as z:
            return int(z["log_mel"].shape[1])
    return previous.bands if previous is not None else 64


def _previous_pack(array_path: Path, index_path: Path) -> "PackedFeatures | None":
    """The shard's pack from an earlier run, if it is intact; None otherwise."""
    if not (array_path.exists() and index_path.exists()):
        return None
    try:
        pack = PackedFeatures.open([index_path])
    except (OSError, ValueError, KeyError):
        return None
    if pack.total_rows[0] != int((pack.index["frames"]).sum()):
        pack.close()
        return None
    return pack


def index_rows(index: pd.DataFrame, paths: "pd.Series | list[str]", source: str, remedy: str) -> pd.DataFrame:
    """The rows of a store's `index` (a `path` column) for `paths`, in the order given; a KeyError naming the
    first missing path, the `source` and the `remedy` when any is not there."""
    by_path = index.set_index("path")
    missing = [p for p in paths if p not in by_path.index]
    if missing:
        raise KeyError(f"{len(missing)} files are not in {source} ({missing[0]}, ...): {remedy}")
    return by_path.loc[list(paths)].reset_index()


@dataclasses.dataclass
class PackedFeatures:
    """The packs of several shards: a joint index and positioned reads of their rows."""

    index: pd.DataFrame  # INDEX_COLUMNS plus `array`: which array file holds the rows
    arrays: list[Path]
    bands: int
    total_rows: list[int]
    _fds: list[int]
    _offsets: list[int]

    @classmethod
    def open(cls, index_paths: list[str | os.PathLike]) -> "PackedFeatures":
        """Open the packs whose index files are given (each array beside its index, same stem, .npy)."""
        frames, arrays, fds, offsets, totals, bands = [], [], [], [], [], set()
        try:
            for number, index_path in enumerate(map(Path, index_paths)):
                array = index_path.with_suffix(".npy")
                offset, (rows, width) = _header_offset(array)
                index = _read_index(index_path)
                index["array"] = number
                frames.append(index)
                arrays.append(array)
                offsets.append(offset)
                totals.append(rows)
                if rows:
                    bands.add(width)
                fds.append(os.open(array, os.O_RDONLY))
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        if len(bands) > 1:
            raise ValueError(f"packs of different band counts: {sorted(bands)}")
        joint = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=[*INDEX_COLUMNS, "array"])
        return cls(joint, arrays, bands.pop() if bands else 64, totals, fds, offsets)

    def locate(self, paths: "pd.Series | list[str]") -> pd.DataFrame:
        """array, row, frames and content of each path (split.tsv paths), in the order given."""
        where = index_rows(self.index, paths, "the packed features", "pack the feature shards again")
        return where[["path", "array", "row", "frames", "content"]]

    @property
    def has_activity(self) -> bool:
        """Whether every file's activity scores in the index are current (packs of before them, or of another
        activity method, are not)."""
        return bool(_current_activity(self.index).all())

    def locate_activity(self, paths: "pd.Series | list[str]") -> list[np.ndarray]:
        """Each path's patch activity scores: from the index where current, else scored from its packed rows
        (a shard the workflow has not packed again since the scores or their method changed)."""
        where = self.index.assign(current=_current_activity(self.index)).set_index("path").loc[list(paths)]
        return [parse_activity(text) if current else patch_activity(self.read(int(array), int(row), int(frames)))
                for text, current, array, row, frames in
                zip(where.get("activity", [""] * len(where)), where["current"], where["array"], where["row"],
                    where["frames"])]

    def read(self, array: int, row: int, count: int, out: np.ndarray | None = None) -> np.ndarray:
        """`count` rows from `row` of one array, into `out` ((count, bands) float16, C-contiguous) if given."""
        if out is None:
            out = np.empty((count, self.bands), DTYPE)
        if count:
            wanted = count * self.bands * DTYPE.itemsize
            got = os.preadv(self._fds[array], [memoryview(out).cast("B")],
                            self._offsets[array] + row * self.bands * DTYPE.itemsize)
            if got != wanted:
                raise OSError(f"{self.arrays[array]}: short read at row {row} ({got} of {wanted} bytes)")
        return out

    def read_each(self, arrays: np.ndarray, rows: np.ndarray, counts: np.ndarray, out: np.ndarray) -> None:
        """Read `counts[i]` rows from row `rows[i]` of array `arrays[i]` into the start of `out[i]`, for every i.

        `out` is (n, at least max(counts), bands) float16, C-contiguous: the
        reads of a whole batch in one call, with the per-read work of `read`
        done once (the training input gathers this way, hundreds of examples
        per call).
        """
        fds, offsets, row_bytes = self._fds, self._offsets, self.bands * DTYPE.itemsize
        flat = memoryview(out).cast("B")
        stride = out[0].nbytes if len(out) else 0
        for i, (array, row, count) in enumerate(zip(arrays.tolist(), rows.tolist(), counts.tolist())):
            wanted = count * row_bytes
            if wanted and os.preadv(fds[array], [flat[i * stride: i * stride + wanted]],
                                    offsets[array] + row * row_bytes) != wanted:
                raise OSError(f"{self.arrays[array]}: short read at row {row} (of {count} rows)")

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []

    def __del__(self) -> None:  # the datasets that read a pack own it for their lifetime
        if getattr(self, "_fds", None):
            self.close()


def _current_activity(index: pd.DataFrame) -> pd.Series:
    """Per row of a packed index: whether its activity scores are there and of this activity method."""
    if "activity_method" not in index or "activity" not in index:
        return pd.Series(False, index=index.index)
    return index["activity_method"].eq(ACTIVITY_METHOD) & index["activity"].notna()
