"""The packed stage: each feature shard's log-mel in one contiguous float16 file, for fast training input."""

from jibjib.packing.shards import INDEX_COLUMNS, PackedFeatures, pack_shard

__all__ = ["INDEX_COLUMNS", "PackedFeatures", "pack_shard"]
