"""Corpus shards: discovery, keys, hashing, reading, validation, the default corpus."""
