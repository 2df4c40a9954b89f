"""``shard_files``: the corpus shard files as an observable source, and the ``observe_shards`` job.

Observing records one data version per ``shards`` partition: the SHA-256 of the shard file's
bytes. ``documents`` depends on it, so Dagster shows a shard's ``documents`` stale when its file
changed since it was last materialized. Observe with the ``observe_shards`` job (one
unpartitioned run records every partition); do not give ``shard_files`` an automation condition
(the daemon would launch one observation run per partition).
"""

from __future__ import annotations

import threading

from dagster import DataVersion, DataVersionsByPartition, define_asset_job, observable_source_asset

from gem_assets.defs.partitions import shards_partitions

__all__ = ["shard_files", "observe_shards", "shard_hashes"]

#: ``{location: (size, version token, sha256)}``: files re-hashed only when their size or version changed.
_CACHE: dict[str, tuple[int, str, str]] = {}
_LOCK = threading.Lock()


def shard_hashes(shards) -> dict[str, str]:
    """SHA-256 of every shard file (``{key: path}``), re-hashing only files whose size or mtime changed.

    The cache lives in the process (the code server's, or a run's), keyed by the file's location.
    """
    from gem_assets.lib.corpus.shards import file_sha256
    from gem_assets.lib.io.storage import file_signature

    out = {}
    for key, path in sorted(shards.items()):
        size, version = file_signature(path)
        with _LOCK:
            cached = _CACHE.get(str(path))
        if cached and cached[0] == size and cached[1] == str(version):
            sha = cached[2]
        else:
            sha = file_sha256(path)
            with _LOCK:
                _CACHE[str(path)] = (size, str(version), sha)
        out[key] = sha
    return out


@observable_source_asset(
    partitions_def=shards_partitions,
    required_resource_keys={"gem"},
    group_name="corpus",
    description="The corpus shard files (GEM_CORPUS): one data version per shard partition, the SHA-256 of "
    "the file's bytes. Observe with the 'observe_shards' job.",
)
def shard_files(context) -> DataVersionsByPartition:
    """Data version of every shard the corpus glob matches: the SHA-256 of its bytes.

    Only registered ``shards`` partitions are reported (the shard sensor or ``make run`` registers
    new files); a file not registered yet is logged.
    """
    gem = context.resources.gem
    hashes = shard_hashes(gem.shards())
    known = set(context.instance.get_dynamic_partitions(shards_partitions.name))
    unregistered = sorted(set(hashes) - known)
    if unregistered:
        context.log.info(f"{len(unregistered)} shard file(s) not registered as partitions yet: {unregistered[:10]}")
    return DataVersionsByPartition({key: DataVersion(sha) for key, sha in hashes.items() if key in known})


#: One unpartitioned run that records an observation of every registered shard partition.
observe_shards = define_asset_job(
    "observe_shards",
    selection=[shard_files],
    description="Observe the corpus shard files: one data version (SHA-256) per shard partition.",
)
