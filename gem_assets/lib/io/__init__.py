"""Reading and writing: local or object-store paths, atomic writes, streamed shards, per-asset artifacts."""
