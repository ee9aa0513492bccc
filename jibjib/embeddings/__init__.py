"""The embedding cache: the frozen part of VGGish computed once per file, so a frozen trunk's head trains fast.

`cut` decides (without TensorFlow, so the workflow can at parse time)
whether a run's `trainable` setting can use a cache; `trunk` splits a
classifier at the cut; `compute` writes a shard's cache (`jibjib embed`) and
`reader` reads caches back. The training input that feeds the head from them
is jibjib.training.inputs.cached.
"""

from jibjib.embeddings.cut import CACHEABLE_CUTS, MAX_FLOATS_PER_PATCH, CachePlan, cache_plan

__all__ = ["CACHEABLE_CUTS", "MAX_FLOATS_PER_PATCH", "CachePlan", "cache_plan"]
