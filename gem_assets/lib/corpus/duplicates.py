"""Duplicate ids across shards: the shard whose key sorts first keeps an id, the later ones lose it.

Within a shard, :mod:`~gem_assets.lib.corpus.validation` keeps an id's first occurrence and
quarantines the others (``duplicate_id``). Across shards, which shard comes first is decided by
their keys (sorted, as everywhere in the pipeline), and a document whose id a shard with an earlier
key already kept is quarantined as ``duplicate_id_across_shards``: the aggregate stages leave it
out, so that a document present in two shards is counted, mixed and evaluated once.

:func:`cross_shard_duplicates` reads the kept ids of one shard at a time and holds 16 bytes per
document (a 64-bit hash, the shard's index and the document's position); only the ids whose hashes
collide are read again as strings, to compare them exactly.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import polars as pl

__all__ = ["CROSS_SHARD_REASON", "CROSS_SHARD_SCHEMA", "cross_shard_duplicates"]

#: The quarantine reason of a document whose id a shard with an earlier key kept.
CROSS_SHARD_REASON = "duplicate_id_across_shards"

#: Columns of the cross-shard quarantine: the shard and record index (``row`` of its documents) of
#: the document left out, its id, the reason and where the id was kept.
CROSS_SHARD_SCHEMA = {"shard": pl.String, "row": pl.Int64, "id": pl.String, "reason": pl.String,
                      "detail": pl.String, "first_shard": pl.String, "first_row": pl.Int64}

_SEED = 0x6A09E667


def cross_shard_duplicates(keys: Sequence[str], read_ids: Callable[[str], pl.DataFrame]) -> pl.DataFrame:
    """The documents whose id a shard with an earlier key kept.

    Parameters
    ----------
    keys : sequence of str
        Shard keys (sorted here).
    read_ids : callable
        ``read_ids(key)`` -> the shard's kept documents with ``row`` and ``id`` columns, ids unique
        within the shard (``documents``).

    Returns
    -------
    DataFrame
        :data:`CROSS_SHARD_SCHEMA`, sorted by shard key then row; empty when every id is in one
        shard only.
    """
    keys = sorted(str(k) for k in keys)
    hashes, shard_of, pos_of = [], [], []
    for i, key in enumerate(keys):
        ids = read_ids(key)["id"].cast(pl.String)
        hashes.append(ids.hash(seed=_SEED).to_numpy().astype(np.uint64, copy=False))
        shard_of.append(np.full(ids.len(), i, dtype=np.uint32))
        pos_of.append(np.arange(ids.len(), dtype=np.uint32))
    empty = pl.DataFrame(schema=CROSS_SHARD_SCHEMA)
    if not hashes:
        return empty
    h = np.concatenate(hashes)
    shard = np.concatenate(shard_of)
    pos = np.concatenate(pos_of)
    del hashes, shard_of, pos_of
    order = np.lexsort((pos, shard, h))
    hs = h[order]
    same = np.zeros(hs.size, dtype=bool)
    if hs.size > 1:
        eq = hs[1:] == hs[:-1]
        same[1:] |= eq
        same[:-1] |= eq
    if not same.any():
        return empty
    cand = order[same]
    parts = []
    for i in np.unique(shard[cand]):  # read the candidates' ids again, exactly
        picked = np.sort(pos[cand][shard[cand] == i]).astype(np.int64)
        docs = read_ids(keys[i]).select(pl.col("row").cast(pl.Int64), pl.col("id").cast(pl.String))[picked.tolist()]
        parts.append(docs.with_columns(pl.lit(int(i), pl.Int64).alias("order"), pl.lit(keys[i]).alias("shard")))
    cands = pl.concat(parts).sort("order", "row")
    firsts = cands.group_by("id", maintain_order=True).first().select(
        "id", pl.col("shard").alias("first_shard"), pl.col("row").alias("first_row"), pl.col("order").alias("first"))
    dups = cands.join(firsts, on="id").filter(pl.col("order") != pl.col("first"))
    return dups.select(
        "shard", "row", "id", pl.lit(CROSS_SHARD_REASON).alias("reason"),
        pl.format("id kept by shard {} (row {}), whose key sorts first", pl.col("first_shard"), pl.col("first_row"))
        .alias("detail"),
        "first_shard", "first_row",
    ).sort("shard", "row").cast(CROSS_SHARD_SCHEMA)
