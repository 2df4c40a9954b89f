"""Corpus shards: discovery and keys (shards), batched reading (reading), validation and quarantine
(validation), the default BBC News corpus (bbc)."""
