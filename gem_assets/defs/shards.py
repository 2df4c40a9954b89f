"""``shard_files``: the corpus shard files as an observable source, and the ``observe_shards`` job.

Observing records one data version per ``shards`` partition: the SHA-256 of the shard file's
bytes. ``documents`` depends on it, so Dagster shows a shard's ``documents`` stale when its file
changed since it was last materialized. Observe with the ``observe_shards`` job (one
unpartitioned run records every partition); do not give ``shard_files`` an automation condition
(the daemon would launch one observation run per partition).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Mapping

from dagster import DataVersion, DataVersionsByPartition, define_asset_job, observable_source_asset

from gem_assets.defs.partitions import shards_partitions

__all__ = ["shard_files", "observe_shards", "shard_hashes", "hash_shards"]

#: ``{location: [size, version token, sha256]}`` of this process (the code server's, or a run's).
_CACHE: dict[str, list] = {}
_LOCK = threading.Lock()


def hash_shards(shards: Mapping[str, Path], cache: Mapping[str, list] | None = None) -> tuple[dict[str, str], dict[str, list]]:
    """SHA-256 of every shard, re-hashing only files whose size or version changed.

    Parameters
    ----------
    shards : mapping of str to Path
        Key to file.
    cache : mapping, optional
        ``{key: [size, version, sha256]}`` from a previous call; ``version`` is the modification
        time in ns (local files) or the object store's mtime or ETag.

    Returns
    -------
    hashes : dict of str to str
    cache : dict of str to list
        The updated cache.
    """
    from gem_assets.lib.corpus.shards import file_sha256
    from gem_assets.lib.io.storage import file_signature

    cache = dict(cache or {})
    hashes, new_cache = {}, {}
    for key, path in shards.items():
        size, version = file_signature(path)  # local: size and mtime_ns; object stores: size and mtime/ETag
        old = cache.get(key)
        sha = old[2] if old and old[0] == size and str(old[1]) == str(version) else file_sha256(path)
        hashes[key] = sha
        new_cache[key] = [size, version, sha]
    return hashes, new_cache


def shard_hashes(shards: Mapping[str, Path]) -> dict[str, str]:
    """SHA-256 of every shard file (``{key: path}``), with this process's size+mtime cache."""
    by_location = {str(path): path for path in shards.values()}
    with _LOCK:
        cached = {loc: _CACHE[loc] for loc in by_location if loc in _CACHE}
    hashes, fresh = hash_shards(by_location, cached)
    with _LOCK:
        _CACHE.update(fresh)
    return {key: hashes[str(path)] for key, path in sorted(shards.items())}


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
    files = context.resources.gem.shards()
    known = set(context.instance.get_dynamic_partitions(shards_partitions.name))
    unregistered = sorted(set(files) - known)
    if unregistered:
        context.log.info(f"{len(unregistered)} shard file(s) not registered as partitions yet: {unregistered[:10]}")
    hashes = shard_hashes({key: path for key, path in files.items() if key in known})
    return DataVersionsByPartition({key: DataVersion(sha) for key, sha in hashes.items()})


#: One unpartitioned run that records an observation of every registered shard partition.
observe_shards = define_asset_job(
    "observe_shards",
    selection=[shard_files],
    description="Observe the corpus shard files: one data version (SHA-256) per shard partition.",
)
