"""Computing one shard's embedding cache from its packed features (`jibjib embed`).

The layout of a cache is described in jibjib.embeddings.reader. The input
is the shard's pack (jibjib.packing), so the trunk sees the same float16
log-mel as training through the trunk does. A file is computed again only
when its content or the frozen weights changed; the others are copied from
the previous cache, and when nothing changed both outputs are left as they
are (their times updated).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from jibjib.core import fsutil
from jibjib.core.params import VGGISH
from jibjib.embeddings.reader import DTYPE, INDEX_COLUMNS, EmbeddingCache
from jibjib.packing import PackedFeatures

BATCH_PATCHES = 256  # patches through the trunk per call


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
