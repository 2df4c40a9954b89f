"""What is up to date: fingerprints recorded in the Dagster instance against the files now.

A shard partition is up to date when the latest ``embeddings`` materialization of that
partition recorded the fingerprint expected from the shard's current bytes, the
validation and embedding parameters and the embedder; the teacher is up to date when the
latest ``teacher_clusters`` materialization recorded the fingerprint of its current
inputs. ``gem_assets.run``, the sensors and the schedule decide from these functions.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from dagster import AssetKey, AssetRecordsFilter, DagsterInstance

from gem_assets.config import Settings

__all__ = [
    "latest_metadata",
    "hash_shards",
    "stale_shards",
    "changed_shards",
    "teacher_state",
]


def latest_metadata(instance: DagsterInstance, asset: str, partition: str | None = None) -> dict | None:
    """Metadata values of the latest materialization of an asset (partition), or ``None``."""
    flt = AssetRecordsFilter(asset_key=AssetKey(asset), asset_partitions=[partition] if partition else None)
    records = instance.fetch_materializations(flt, limit=1).records
    if not records or records[0].asset_materialization is None:
        return None
    return {k: v.value for k, v in records[0].asset_materialization.metadata.items()}


def hash_shards(shards: Mapping[str, Path], cache: Mapping[str, list] | None = None) -> tuple[dict[str, str], dict[str, list]]:
    """SHA-256 of every shard, re-hashing only files whose size or mtime changed.

    Parameters
    ----------
    shards : mapping of str to Path
        Partition key to file.
    cache : mapping, optional
        ``{key: [size, version, sha256]}`` from a previous call (e.g. a sensor cursor); ``version``
        is the modification time in ns (local files) or the object store's mtime or ETag.

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
        if old and old[0] == size and str(old[1]) == version:
            sha = old[2]
        else:
            sha = file_sha256(path)
        hashes[key] = sha
        new_cache[key] = [size, version, sha]
    return hashes, new_cache


def stale_shards(instance: DagsterInstance, settings: Settings, model_id: str, hashes: Mapping[str, str]) -> dict[str, str]:
    """Shards whose ``embeddings`` are missing or out of date, with the reason.

    Compares the full fingerprint (bytes, validation and embedding parameters, embedder)
    recorded by the latest materialization, and the one in the files on disk.
    """
    from gem_assets.lib.io import artifacts

    layout = settings.layout
    out: dict[str, str] = {}
    for key, sha in hashes.items():
        expected = artifacts.embeddings_fingerprint(
            artifacts.documents_fingerprint(sha, settings.documents_params()), settings.embedding_params(), model_id
        )
        recorded = latest_metadata(instance, "embeddings", key)
        on_disk = artifacts.read_embeddings_meta(layout, key)
        if recorded is None:
            out[key] = "never materialized"
        elif recorded.get("fingerprint") != expected:
            out[key] = "shard bytes or parameters changed"
        elif on_disk is None or on_disk.get("fingerprint") != expected:
            out[key] = "embedding files missing or stale"
    return out


def changed_shards(instance: DagsterInstance, hashes: Mapping[str, str]) -> dict[str, str]:
    """Shards whose bytes differ from the latest ``embeddings`` materialization (or that have
    none), with the reason. Used by the sensor and the schedule, which never load the embedder."""
    out: dict[str, str] = {}
    for key, sha in hashes.items():
        recorded = latest_metadata(instance, "embeddings", key)
        if recorded is None:
            out[key] = "never materialized"
        elif recorded.get("shard_sha256") != sha:
            out[key] = "shard bytes changed"
    return out


def teacher_state(instance: DagsterInstance, settings: Settings, hashes: Mapping[str, str]) -> dict:
    """Whether the teacher is up to date with the embedded shards.

    Returns
    -------
    dict
        ``stale`` (bool), ``reason``, ``fingerprint`` (of the current inputs, or ``None``
        when nothing is embedded), ``included`` and ``excluded`` shards.
    """
    from gem_assets.lib.io import artifacts

    layout = settings.layout
    included, excluded = artifacts.embedded_shards(layout, hashes)
    if not included:
        return {"stale": False, "reason": "no embedded shard", "fingerprint": None,
                "included": included, "excluded": excluded}
    fp = artifacts.teacher_input_fingerprint(included, settings.teacher_params())
    recorded = latest_metadata(instance, "teacher_clusters")
    if recorded is None:
        reason, stale = "never materialized", True
    elif recorded.get("input_fingerprint") != fp:
        reason, stale = "inputs or parameters changed", True
    elif not (layout.teacher_outputs_dir / "summary.json").is_file():
        reason, stale = "outputs missing", True
    else:
        reason, stale = "up to date", False
    return {"stale": stale, "reason": reason, "fingerprint": fp, "included": included, "excluded": excluded}
