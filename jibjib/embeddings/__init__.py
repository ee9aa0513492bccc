"""The embedding cache: the frozen part of VGGish computed once per file, so a frozen trunk's head trains fast.

`cut` decides (without TensorFlow, so the workflow can at parse time)
whether a run's `trainable` setting can use a cache; `cache` computes and
reads the per-shard caches; `dataset` feeds the head from them.
"""

from jibjib.embeddings.cut import CACHEABLE_CUTS, MAX_FLOATS_PER_PATCH, CachePlan, cache_plan

__all__ = ["CACHEABLE_CUTS", "MAX_FLOATS_PER_PATCH", "CachePlan", "cache_plan"]
