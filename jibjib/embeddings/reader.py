"""Reading embedding caches back: the joint index of several shards' caches and their rows for training.

Layout, per feature shard (results/embeddings/<shard>.npy and <shard>.tsv):

- `<shard>.npy`: float32 (patches, floats): the output of the last frozen
  trunk layer (`cut`) for every 96-frame patch of every file, at the fixed
  patch grid from frame 0 (a partial tail dropped, as the training input
  does), files one after the other in index order. float32 as the trunk
  computes it: 512 bytes a patch for the 128-d embedding of a frozen trunk.
- `<shard>.tsv`: INDEX_COLUMNS, one row per file: its split.tsv `path`, its
  first `row` in the array, its `patches`, its feature `content` (from the
  pack's index: source SHA-256 and front end), the `cut` layer and the
  `trunk` digest (SHA-256 of the frozen weights, jibjib.embeddings.trunk).

Training reads rows with positioned reads (`os.preadv`) straight into each
batch's buffer, as the packed input does (jibjib.packing): the pages stay in
the kernel's page cache, not in the process's memory, so a training process
does not grow with the cache (at the fc1 cuts, 16 kB a patch, a corpus of
80,000 ten-second clips caches 11 GB).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pandas as pd

from jibjib.packing.shards import index_rows

INDEX_COLUMNS = ["path", "row", "patches", "content", "cut", "trunk"]
DTYPE = np.dtype("<f4")


def _read_index(path: str | os.PathLike) -> pd.DataFrame:
    index = pd.read_csv(path, sep="\t", dtype={"path": str, "content": str, "cut": str, "trunk": str},
                        keep_default_na=False)
    return index.astype({"row": np.int64, "patches": np.int64})


@dataclasses.dataclass
class EmbeddingCache:
    """The caches of several shards: a joint index and the arrays (memory-mapped)."""

    index: pd.DataFrame  # INDEX_COLUMNS plus `array`: which array holds the rows
    arrays: list[np.ndarray]  # memory maps (an empty shard's array in memory)
    floats: int
    _fds: dict[int, int] = dataclasses.field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, index_paths: list[str | os.PathLike]) -> "EmbeddingCache":
        """Open the caches whose index files are given (each array beside its index, same stem, .npy)."""
        frames, arrays, widths = [], [], set()
        for number, index_path in enumerate(map(Path, index_paths)):
            index = _read_index(index_path)
            # A memory map cannot be empty: an empty shard's array is read whole.
            array = np.load(index_path.with_suffix(".npy"), mmap_mode="r" if index["patches"].sum() else None,
                            allow_pickle=False)
            if array.ndim != 2 or array.dtype != DTYPE or array.shape[0] != int(index["patches"].sum()):
                raise ValueError(f"{index_path.with_suffix('.npy')}: not the cache its index describes "
                                 "(run jibjib embed again)")
            index["array"] = number
            frames.append(index)
            arrays.append(array)
            if len(index):
                widths.add(array.shape[1])
        if len(widths) > 1:
            raise ValueError(f"embedding caches of different widths: {sorted(widths)}")
        joint = (pd.concat(frames, ignore_index=True) if frames
                 else pd.DataFrame(columns=[*INDEX_COLUMNS, "array"]))
        return cls(joint, arrays, widths.pop() if widths else 0)

    def locate(self, paths: "pd.Series | list[str]") -> pd.DataFrame:
        """INDEX_COLUMNS and array of each path, in the order given."""
        return index_rows(self.index, paths, "the embedding cache", "run jibjib embed on their shards again")

    def keys(self) -> set[tuple[str, str]]:
        """The (cut, trunk digest) pairs the caches were computed with."""
        return set(zip(self.index["cut"], self.index["trunk"]))

    def rows(self, paths: "pd.Series | list[str]") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Where every patch of these files is, a few numbers a patch: its array, its row in the array, and
        the position in `paths` of the file it belongs to (files in the order given)."""
        where = self.locate(paths)
        counts = where["patches"].to_numpy(np.int64)
        file_of = np.repeat(np.arange(len(where)), counts)
        first = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        within = np.arange(len(file_of)) - first[file_of]
        return (where["array"].to_numpy(np.int32)[file_of], where["row"].to_numpy(np.int64)[file_of] + within,
                file_of.astype(np.int32))

    def read(self, arrays: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """The cached outputs at (arrays[i], rows[i]), (len(rows), floats) float32: one positioned read each."""
        out = np.empty((len(rows), self.floats), DTYPE)
        size = self.floats * DTYPE.itemsize
        for i, (array, row) in enumerate(zip(arrays.tolist(), rows.tolist())):
            source = self.arrays[array]
            got = os.preadv(self._fd(array), [memoryview(out[i]).cast("B")], source.offset + row * size)
            if got != size:
                raise OSError(f"{source.filename}: short read at row {row} ({got} of {size} bytes)")
        return out

    def _fd(self, array: int) -> int:
        """A file descriptor of array `array`'s .npy (opened on first use, closed with the cache)."""
        if array not in self._fds:
            self._fds[array] = os.open(self.arrays[array].filename, os.O_RDONLY)
        return self._fds[array]

    def __del__(self) -> None:  # the datasets that read a cache own it for their lifetime
        for fd in getattr(self, "_fds", {}).values():
            os.close(fd)

    def gather(self, paths: "pd.Series | list[str]") -> tuple[np.ndarray, np.ndarray]:
        """Every patch's cached output of these files, in memory ((patches, floats) float32),
        and the position in `paths` of the file each row belongs to. For checks and small sets: training
        reads batches with `rows` and `read` instead, so its memory does not grow with the cache."""
        where = self.locate(paths)
        counts = where["patches"].to_numpy(np.int64)
        out = np.empty((int(counts.sum()), self.floats), DTYPE)
        at = 0
        for array, row, count in zip(where["array"], where["row"], counts):
            out[at: at + count] = self.arrays[int(array)][int(row): int(row) + int(count)]
            at += int(count)
        return out, np.repeat(np.arange(len(where)), counts).astype(np.int32)
