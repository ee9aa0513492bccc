"""Where the frozen part of VGGish ends, and whether its output is small enough to cache.

No TensorFlow here: the workflow decides at parse time whether the embed
stage runs. The sizes are those of jibjib.models.vggish.vggish_trunk, checked
against the built model by tests/embeddings/test_embeddings.py.
"""

from __future__ import annotations

import dataclasses

# 4,096 floats (16 kB) per 0.96 s patch: fc1's outputs qualify, no conv or
# pool output does (the smallest, pool4's, is 12,288). Beyond that the cache
# would be larger than the log-mel it replaces (6,144 floats per patch) and
# the head would spend its time reading it, not computing.
MAX_FLOATS_PER_PATCH = 4096

# Each trainable choice: the last frozen trunk layer and its output's floats per patch.
# "head": the whole trunk frozen, its 128-d embedding cached.
_LAST_FROZEN: dict[str, tuple[str | None, int]] = {
    "all": (None, 0),
    "conv1": (None, 0),
    "conv2": ("conv1", 48 * 32 * 64),  # conv1 through pool1
    "conv3_1": ("conv2", 24 * 16 * 128),
    "conv3_2": ("conv3_1", 24 * 16 * 256),
    "conv4_1": ("conv3_2", 12 * 8 * 256),
    "conv4_2": ("conv4_1", 12 * 8 * 512),
    "fc1_1": ("conv4_2", 6 * 4 * 512),  # through pool4 and flatten
    "fc1_2": ("fc1_1", 4096),
    "fc2": ("fc1_2", 4096),
    "head": ("fc2", 128),
}

# The layers whose output may be cached (jibjib embed --cut).
CACHEABLE_CUTS: tuple[str, ...] = tuple(sorted({layer for layer, floats in _LAST_FROZEN.values()
                                                if layer and floats <= MAX_FLOATS_PER_PATCH}))


@dataclasses.dataclass(frozen=True)
class CachePlan:
    """Whether a VGGish run trains from cached embeddings: the cut (last frozen layer) or why not."""

    trainable: str
    cut: str | None  # the last frozen trunk layer whose output is cached; None: no cache
    floats_per_patch: int
    reason: str | None  # why no cache is used (None when one is)

    @property
    def used(self) -> bool:
        return self.cut is not None


def cache_plan(trainable: str, embedding_cache: str | bool) -> CachePlan:
    """The cache plan of `vggish.trainable` and `vggish.embedding_cache` (auto | off; YAML's bare off is false)."""
    if trainable not in _LAST_FROZEN:
        raise ValueError(f"trainable={trainable!r} is not one of: {', '.join(_LAST_FROZEN)}")
    last_frozen, floats = _LAST_FROZEN[trainable]
    if embedding_cache in ("off", False):
        return CachePlan(trainable, None, floats, "vggish.embedding_cache is off")
    if embedding_cache != "auto":
        raise ValueError(f"embedding_cache={embedding_cache!r} is not auto or off")
    if last_frozen is None:
        return CachePlan(trainable, None, 0, f"trainable: {trainable} leaves no trunk layer frozen")
    if floats > MAX_FLOATS_PER_PATCH:
        return CachePlan(trainable, None, floats,
                         f"trainable: {trainable} freezes the trunk up to {last_frozen}, whose output of "
                         f"{floats:,} floats per patch exceeds the cache's limit of {MAX_FLOATS_PER_PATCH:,} "
                         "(the cache pays from fc1_2 on: trainable head, fc2 or fc1_2)")
    return CachePlan(trainable, last_frozen, floats, None)
