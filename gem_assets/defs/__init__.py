"""Dagster definitions of the code location, split by domain.

``partitions``  the dynamic ``shards`` partitions; ``corpus``  ``documents``;
``embeddings``  ``embeddings``; ``teacher``  ``teacher_sample`` and ``teacher_clusters``;
``jobs``  ``shard_job`` and ``teacher_job``; ``state``  what is up to date (fingerprints
recorded in the instance); ``automation``  the shard sensor, the teacher sensor and the
daily backfill schedule.
"""
