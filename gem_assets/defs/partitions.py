"""Partitions: one dynamic partition per corpus shard (key: path relative to the glob root)."""

from dagster import DynamicPartitionsDefinition

__all__ = ["SHARDS", "shards_partitions"]

#: Name of the dynamic partitions definition.
SHARDS = "shards"

shards_partitions = DynamicPartitionsDefinition(name=SHARDS)
