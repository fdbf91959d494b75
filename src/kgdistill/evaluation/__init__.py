"""Filtered link-prediction ranking over all entities: in memory or streamed from shards on disk, and its metrics."""
