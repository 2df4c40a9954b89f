"""The corpus shard files as observable sources, and the ``observe_shards`` job that observes both.

``shard_files`` records one data version per ``shards`` partition: the SHA-256 of the shard
file's bytes. ``documents`` depends on it, so Dagster shows a shard's ``documents`` stale when its
file changed since it was last materialized.

``shard_manifest`` records one data version for the whole corpus: a hash of every registered
shard's SHA-256 and of the code versions of the per-shard assets. The unpartitioned assets that
read every shard (``teacher_sample``, ``student_model``, ``domain_stats``, ``taxonomy``,
``mixture_evaluation``) depend on it. Dagster compares the data versions of a partitioned input
only while it has fewer than 100 partitions (``SKIP_PARTITION_DATA_VERSION_DEPENDENCY_THRESHOLD``
in Dagster 1.13); from 100 shards on, a new or edited shard would leave those assets "fresh" in the
UI and in ``make run``. Through the manifest they are flagged at any number of shards. The
automation conditions ignore it (``defs/automation.py``): they react to the per-shard assets'
updates, which Dagster tracks at any number of partitions.

Observe with the ``observe_shards`` job (one unpartitioned run records every partition and the
manifest; ``make run`` and the shard sensor launch it); do not give the sources an automation
condition (the daemon would launch one observation run per partition).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Mapping

from dagster import DataVersion, DataVersionsByPartition, define_asset_job, observable_source_asset

from gem_assets.defs.partitions import shards_partitions
from gem_assets.defs.versions import PER_SHARD_ASSETS, code_version_for
from gem_assets.lib.util.hashing import fingerprint

__all__ = ["shard_files", "shard_manifest", "observe_shards", "shard_hashes", "hash_shards", "manifest_version"]

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


def manifest_version(hashes: Mapping[str, str], vanished: list[str], code_versions: Mapping[str, str]) -> str:
    """The manifest's data version: a hash of the shards' content hashes, the registered shards
    whose file is gone, and the code versions of the per-shard assets (any change gives a new one)."""
    return fingerprint("shard_manifest", dict(sorted(hashes.items())), sorted(vanished), dict(sorted(code_versions.items())))


@observable_source_asset(
    required_resource_keys={"gem"},
    group_name="corpus",
    description="The whole corpus in one data version: a hash of every registered shard's SHA-256 and of the "
    "per-shard assets' code versions. The assets that read every shard depend on it, so a new or edited shard "
    "flags them stale at any number of shards. Observe with the 'observe_shards' job.",
)
def shard_manifest(context) -> DataVersion:
    """Data version of the registered shards as a whole (:func:`manifest_version`)."""
    gem = context.resources.gem
    files = gem.shards()
    known = sorted(context.instance.get_dynamic_partitions(shards_partitions.name))
    hashes = shard_hashes({key: files[key] for key in known if key in files})
    vanished = [key for key in known if key not in files]
    settings = gem.settings()
    versions = {name: code_version_for(name, settings) for name in PER_SHARD_ASSETS}
    version = manifest_version(hashes, vanished, versions)
    context.log.info(f"shard manifest {version[:12]}: {len(hashes)} shard(s), {len(vanished)} registered without a file")
    return DataVersion(version)


#: One unpartitioned run that records an observation of every registered shard partition and of the manifest.
observe_shards = define_asset_job(
    "observe_shards",
    selection=[shard_files, shard_manifest],
    description="Observe the corpus shard files: one data version (SHA-256) per shard partition, and the "
    "manifest of them all.",
)
