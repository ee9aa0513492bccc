"""Compute a shard's embedding cache from its packed features; read caches back for training.

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

The input is the shard's pack (jibjib.packed), so the trunk sees the same
float16 log-mel as training through the trunk does. A file is computed
again only when its content or the frozen weights changed; the others are
copied from the previous cache, and when nothing changed both outputs are
left as they are (their times updated).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pandas as pd

from jibjib.core import fsutil
from jibjib.packing import PackedFeatures
from jibjib.core.params import VGGISH

INDEX_COLUMNS = ["path", "row", "patches", "content", "cut", "trunk"]
DTYPE = np.dtype("<f4")
BATCH_PATCHES = 256  # patches through the trunk per call


def _read_index(path: str | os.PathLike) -> pd.DataFrame:
    index = pd.read_csv(path, sep="\t", dtype={"path": str, "content": str, "cut": str, "trunk": str},
                        keep_default_na=False)
    return index.astype({"row": np.int64, "patches": np.int64})


@dataclasses.dataclass
class EmbeddingCache:
    """The caches of several shards: a joint index and the arrays (memory-mapped)."""

    index: pd.DataFrame  # INDEX_COLUMNS plus `array`: which array holds the rows
    arrays: list[np.ndarray]
    floats: int

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
        by_path = self.index.set_index("path")
        missing = [p for p in paths if p not in by_path.index]
        if missing:
            raise KeyError(f"{len(missing)} files are not in the embedding cache ({missing[0]}, ...): "
                           "run jibjib embed on their shards again")
        return by_path.loc[list(paths)].reset_index()

    def keys(self) -> set[tuple[str, str]]:
        """The (cut, trunk digest) pairs the caches were computed with."""
        return set(zip(self.index["cut"], self.index["trunk"]))

    def gather(self, paths: "pd.Series | list[str]") -> tuple[np.ndarray, np.ndarray]:
        """Every patch's cached output of these files, in memory ((patches, floats) float32),
        and the position in `paths` of the file each row belongs to."""
        where = self.locate(paths)
        counts = where["patches"].to_numpy(np.int64)
        out = np.empty((int(counts.sum()), self.floats), DTYPE)
        at = 0
        for array, row, count in zip(where["array"], where["row"], counts):
            out[at: at + count] = self.arrays[int(array)][int(row): int(row) + int(count)]
            at += int(count)
        return out, np.repeat(np.arange(len(where)), counts).astype(np.int32)


def embed_shard(packed_index: str | os.PathLike, cut: str, checkpoint: str | os.PathLike | None, seed: int,
                array_path: str | os.PathLike, index_path: str | os.PathLike) -> dict[str, int]:
    """Cache the frozen trunk's output (up to `cut`) for every patch of one packed shard.

    The trunk is the one training starts from (`checkpoint`, or random
    weights from `seed`). Returns counts: files, computed, reused, patches.
    """
    import tensorflow as tf  # the workflow's parse-time users of this package need no TensorFlow

    from jibjib.embeddings.trunk import frozen_part, frozen_weights_digest, seeded_trunk

    array_path, index_path = Path(array_path), Path(index_path)
    trunk = seeded_trunk(checkpoint, seed)
    trunk_digest = frozen_weights_digest(trunk, cut)
    model = frozen_part(trunk, cut)
    floats = int(model.output.shape[-1])
    frames = VGGISH.patch_frames

    packs = PackedFeatures.open([packed_index])
    try:
        where = packs.index
        patches = (where["frames"].to_numpy(np.int64) // frames)
        rows = np.concatenate([[0], np.cumsum(patches)]).astype(np.int64)
        index = pd.DataFrame({"path": where["path"].to_numpy(str), "row": rows[:-1], "patches": patches,
                              "content": where["content"].to_numpy(str), "cut": cut, "trunk": trunk_digest},
                             columns=INDEX_COLUMNS)

        previous = _previous_cache(index_path)
        if previous is not None and previous.index[INDEX_COLUMNS].equals(index[INDEX_COLUMNS]):
            for path in (array_path, index_path):
                os.utime(path)
            return {"files": len(index), "computed": 0, "reused": len(index), "patches": int(rows[-1])}
        old = {} if previous is None else {
            (p, c, n): r for p, c, n, r, k, t in previous.index[["path", "content", "patches", "row", "cut", "trunk"]]
            .itertuples(index=False) if k == cut and t == trunk_digest}

        run = tf.function(lambda x: model(x, training=False),
                          input_signature=[tf.TensorSpec([None, frames, packs.bands], tf.float32)])
        counts = {"computed": 0, "reused": 0}

        def write(tmp: Path) -> None:
            if not rows[-1]:  # a memory map cannot be empty
                np.save(tmp, np.empty((0, floats), DTYPE))
                return
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=DTYPE, shape=(int(rows[-1]), floats))
            pending: list[tuple[int, np.ndarray]] = []  # (first output row, log-mel patches)

            def flush() -> None:
                if not pending:
                    return
                batch = np.concatenate([block for _, block in pending]).astype(np.float32)
                result = np.concatenate([run(batch[i: i + BATCH_PATCHES]).numpy()
                                         for i in range(0, len(batch), BATCH_PATCHES)])
                at = 0
                for first, block in pending:
                    out[first: first + len(block)] = result[at: at + len(block)]
                    at += len(block)
                pending.clear()

            queued = 0
            for number, (path, content, n) in enumerate(zip(index["path"], index["content"], patches)):
                kept = old.get((path, content, int(n)))
                if kept is not None:
                    out[rows[number]: rows[number] + n] = previous.arrays[0][kept: kept + n]
                    counts["reused"] += 1
                    continue
                counts["computed"] += 1
                if n == 0:
                    continue
                log_mel = packs.read(int(where["array"].iat[number]), int(where["row"].iat[number]), int(n) * frames)
                pending.append((int(rows[number]), log_mel.reshape(int(n), frames, packs.bands)))
                queued += int(n)
                if queued >= 8 * BATCH_PATCHES:
                    flush()
                    queued = 0
            flush()
            out.flush()
            del out

        fsutil.atomic_save(array_path, write)
    finally:
        packs.close()
    fsutil.write_tsv(index_path, index)
    return {"files": len(index), **counts, "patches": int(rows[-1])}


def _previous_cache(index_path: Path) -> EmbeddingCache | None:
    """The shard's cache from an earlier run, if it is intact; None otherwise."""
    if not (index_path.exists() and index_path.with_suffix(".npy").exists()):
        return None
    try:
        return EmbeddingCache.open([index_path])
    except (OSError, ValueError, KeyError):
        return None
