"""The evaluation's documents, drawn from the corpus in one streaming pass.

:class:`CorpusSampler` holds out the target set (:func:`~gem_assets.lib.evaluation.splits.holdout_split`),
then keeps bottom-k samples of the target set and of the training pool, whatever the corpus size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import polars as pl

from gem_assets.lib.evaluation.splits import check_fraction, holdout_split
from gem_assets.lib.mixing.sampling import BottomK, bottom_k_positions, check_cap

if TYPE_CHECKING:
    from gem_assets.lib.io.artifacts import ArtifactPaths

__all__ = ["SAMPLE_COLUMNS", "CorpusSampler", "EvaluationSample", "sample_frame", "sample_corpus", "read_texts"]


#: The columns of a batch offered to :class:`CorpusSampler` (and of :attr:`EvaluationSample.frame`).
SAMPLE_COLUMNS = ("key", "shard", "id", "source", "gem", "vec")


class _Kept:
    """The rows of a :class:`gem_assets.lib.mixing.sampling.BottomK` sample (all rows when ``cap`` is None)."""

    def __init__(self, cap: int | None, seed: int, purpose: str) -> None:
        cap = check_cap(cap, purpose)
        self.pick = BottomK(cap, seed, purpose) if cap is not None else None
        self.rows: list[tuple] = []
        self.offered = 0

    def update(self, rows: list[tuple]) -> None:
        self.offered += len(rows)
        if self.pick is None:
            self.rows.extend(rows)
        else:
            self.pick.update([r[0] for r in rows], rows)

    def frame(self, target: bool, with_text: bool) -> pl.DataFrame:
        rows = self.rows if self.pick is None else list(self.pick.items().values())
        schema = {"key": pl.String, "shard": pl.String, "id": pl.String, "source": pl.String, "gem": pl.Int64,
                  "vec": pl.Int64, **({"text": pl.String} if with_text else {})}
        return (pl.DataFrame(rows, schema=schema, orient="row").sort("key")
                .with_columns(pl.lit(target).alias("target")))


@dataclass
class EvaluationSample:
    """The documents the evaluation uses, drawn in one pass over the corpus (:class:`CorpusSampler`).

    Attributes
    ----------
    frame : polars.DataFrame
        ``key``, ``shard``, ``id``, ``source``, ``gem``, ``vec`` (row of ``vectors``; null for target
        documents), ``text`` (only when the offered batches had one) and ``target`` (True: held-out
        target document; False: training pool), sorted by key within each part (target first). At
        most the two caps of rows, whatever the corpus size.
    vectors : ndarray (M, d) float32
        The embeddings of the training-pool documents.
    counts : dict
        ``documents`` (all offered), ``held_out``, ``target`` (after the cap), ``pool_available``,
        ``pool`` (after the cap), ``unusable`` (not held out, and no GEM domain or no embedding),
        ``with_source`` (documents with a source label).
    """

    frame: pl.DataFrame
    vectors: np.ndarray
    counts: dict


class CorpusSampler:
    """One pass over a corpus's documents, batch by batch: the held-out decision of each document
    (:func:`holdout_split`), then bottom-k samples of the target set and of the training pool.

    Memory holds the two samples (at most ``max_target_documents`` and ``max_train_documents``
    rows without texts or vectors) and counters, not per-document arrays: a corpus of 10^9
    documents needs what one of 10^5 needs. The samples are the same whatever the batches and
    their order (each decision and priority depends only on the document's key and the seed).

    Parameters
    ----------
    holdout : float
        Probability that a document is held out as a target document, in (0, 1).
    seed : int
        Seed of the split and of the samples.
    max_target_documents, max_train_documents : int or None
        Caps of the target set and of the training pool (``None``: keep all).
    """

    def __init__(self, holdout: float, seed: int, max_target_documents: int | None = None,
                 max_train_documents: int | None = None) -> None:
        check_fraction(holdout, "holdout")
        self.holdout, self.seed = float(holdout), int(seed)
        self._target = _Kept(max_target_documents, self.seed, "evaluation/target")
        self._pool = _Kept(max_train_documents, self.seed, "evaluation/pool")
        self.counts = {"documents": 0, "held_out": 0, "unusable": 0, "with_source": 0}
        self._with_text: bool | None = None

    def offer(self, batch: pl.DataFrame) -> None:
        """Offer documents: a frame with the :data:`SAMPLE_COLUMNS` (``vec``: where the document's
        embedding is, null when it has none; ``gem``: its domain, null when it has none) and
        optionally ``text`` (kept for the sampled documents; every batch or none). Keys must be
        unique across the whole pass."""
        missing = [c for c in SAMPLE_COLUMNS if c not in batch.columns]
        if missing:
            raise ValueError(f"a batch offered to the sampler lacks the column(s) {missing}")
        with_text = "text" in batch.columns
        if self._with_text is not None and with_text != self._with_text:
            raise ValueError("every batch offered to the sampler must have a 'text' column, or none")
        self._with_text = with_text
        batch = batch.select(pl.col("key").cast(pl.String), pl.col("shard").cast(pl.String),
                             pl.col("id").cast(pl.String), pl.col("source").cast(pl.String),
                             pl.col("gem").cast(pl.Int64), pl.col("vec").cast(pl.Int64),
                             *([pl.col("text").cast(pl.String)] if with_text else []))
        held = holdout_split(batch["key"], self.holdout, self.seed)
        usable = (batch["gem"].is_not_null() & batch["vec"].is_not_null()).to_numpy()
        self.counts["documents"] += batch.height
        self.counts["held_out"] += int(held.sum())
        self.counts["unusable"] += int((~held & ~usable).sum())
        self.counts["with_source"] += int(batch["source"].is_not_null().sum())
        mask = pl.Series(held)
        self._target.update(batch.filter(mask).with_columns(pl.lit(None, pl.Int64).alias("vec")).rows())
        self._pool.update(batch.filter(~mask & pl.Series(usable)).rows())

    def sample(self, vectors_of: Callable[[pl.DataFrame], np.ndarray]) -> EvaluationSample:
        """The samples drawn, with the pool's embeddings from ``vectors_of(pool_rows)`` (a frame with
        ``shard`` and ``vec``; returns their vectors in that order)."""
        text = bool(self._with_text)
        target, pool = self._target.frame(True, text), self._pool.frame(False, text)
        vectors = np.asarray(vectors_of(pool.select("shard", "vec")), dtype=np.float32)
        if vectors.shape[0] != pool.height:
            raise ValueError(f"{vectors.shape[0]} vectors for {pool.height} training-pool documents")
        pool = pool.with_columns(pl.int_range(pool.height, dtype=pl.Int64).alias("vec"))
        counts = {**self.counts, "target": target.height, "pool_available": self._pool.offered,
                  "pool": pool.height}
        return EvaluationSample(frame=pl.concat([target, pool]), vectors=vectors, counts=counts)


def sample_frame(frame: pl.DataFrame, vectors: np.ndarray, *, holdout: float, seed: int,
                 max_target_documents: int | None = None,
                 max_train_documents: int | None = None) -> EvaluationSample:
    """:class:`CorpusSampler` over a corpus held in memory: ``frame`` with the
    :data:`SAMPLE_COLUMNS` (``vec``: row of ``vectors``), e.g. in tests or for a small corpus."""
    sampler = CorpusSampler(holdout, seed, max_target_documents, max_train_documents)
    sampler.offer(frame)
    vectors = np.asarray(vectors, dtype=np.float32)
    return sampler.sample(lambda rows: vectors[rows["vec"].to_numpy().astype(np.int64)])


def _shard_frame(layout: ArtifactPaths, key: str, skip=None) -> pl.DataFrame:
    """One shard's documents without texts (less the ids ``skip`` names), with their GEM domain and the
    row of their embedding in the shard's vectors (null when the document was not embedded); the
    vectors are not read."""
    from gem_assets.lib.io import artifacts
    from gem_assets.lib.io import storage

    if not layout.documents_path(key).is_file() or not layout.documents_meta_path(key).is_file():
        raise FileNotFoundError(f"no documents for shard {key!r}: materialize the 'documents' partition first")
    docs = storage.read_parquet(layout.documents_path(key), columns=_non_text_columns(layout, key))
    if skip:
        docs = docs.filter(~pl.col("id").cast(pl.String).is_in(pl.Series(sorted(skip), dtype=pl.String).implode()))
    apath = layout.assignments_path(key)
    if not apath.is_file():
        raise FileNotFoundError(f"no GEM assignments for shard {key!r} ({apath}): materialize "
                                "'domain_assignments' first")
    assign = storage.read_parquet(apath, columns=["id", "domain"]).rename({"domain": "gem"})
    index = artifacts.read_embeddings_index(layout, key).select("id").with_row_index("vec").with_columns(pl.col("vec").cast(pl.Int64))
    source = pl.col("source").cast(pl.String) if "source" in docs.columns else pl.lit(None, dtype=pl.String)
    frame = (docs.select(pl.lit(key).alias("shard"), pl.col("id").cast(pl.String), source.alias("source"))
             .join(assign.with_columns(pl.col("id").cast(pl.String), pl.col("gem").cast(pl.Int64)), on="id", how="left")
             .join(index.with_columns(pl.col("id").cast(pl.String)), on="id", how="left")
             .with_columns((pl.col("shard") + "/" + pl.col("id")).alias("key")))
    return frame.select(*SAMPLE_COLUMNS)


def sample_corpus(layout: ArtifactPaths, keys: Sequence[str], *, holdout: float, seed: int,
                  max_target_documents: int | None = None, max_train_documents: int | None = None,
                  progress: bool = False, skip=None) -> EvaluationSample:
    """:class:`CorpusSampler` over the pipeline's shards, one shard at a time, without texts.

    Reads each shard's ``documents`` (ids and sources), ``domain_assignments`` and ``embeddings``
    index; at the end, the embeddings of the sampled training-pool documents, shard by shard. Memory
    holds one shard's columns and the samples, whatever the number of shards.

    Parameters
    ----------
    layout : ArtifactPaths
        Where the pipeline's artifacts live (:class:`gem_assets.lib.io.artifacts.ArtifactPaths`).
    keys : sequence of str
        Shard keys.
    holdout, seed, max_target_documents, max_train_documents
        See :class:`CorpusSampler`.
    skip : mapping of str to collection of str, optional
        Shard key to the ids of documents left out (the cross-shard duplicates).

    Raises
    ------
    FileNotFoundError
        When a shard's documents, embeddings or assignments are missing, or there is no shard.
    """
    from tqdm.auto import tqdm

    from gem_assets.lib.io import artifacts

    keys = list(keys)
    if not keys:
        raise FileNotFoundError("no shard to evaluate")
    sampler = CorpusSampler(holdout, seed, max_target_documents, max_train_documents)
    for key in tqdm(keys, desc="evaluation sample", unit="shard", disable=not progress, mininterval=1.0):
        sampler.offer(_shard_frame(layout, key, (skip or {}).get(key)))

    def vectors_of(rows: pl.DataFrame) -> np.ndarray:
        if rows.height == 0:
            return np.zeros((0, 0), np.float32)
        out, dim = None, None
        order = rows.with_row_index("pos")
        for (shard,), part in order.group_by("shard", maintain_order=True):
            vectors = np.asarray(artifacts.read_embeddings(layout, shard)[0], dtype=np.float32)
            if out is None:
                dim = vectors.shape[1]
                out = np.empty((rows.height, dim), np.float32)
            out[part["pos"].to_numpy()] = vectors[part["vec"].to_numpy()]
        return out

    return sampler.sample(vectors_of)


def _non_text_columns(layout: ArtifactPaths, key: str) -> list[str]:
    """The documents file's ``id`` and ``source`` columns (those it has), from its schema."""
    import pyarrow.parquet as pq

    from gem_assets.lib.io import storage

    with storage.open_binary(layout.documents_path(key)) as f:
        names = pq.ParquetFile(f).schema_arrow.names
    return [c for c in ("id", "source") if c in names]


def read_texts(layout: ArtifactPaths, rows: pl.DataFrame, batch_rows: int = 8192) -> list[str]:
    """The texts of the given documents (``shard`` and ``id`` columns), in that order, read shard by
    shard and batch by batch from the ``documents`` files (:func:`gem_assets.lib.io.streaming.read_texts`)."""
    from gem_assets.lib.io.streaming import read_texts as _read

    return _read(layout.documents_path, rows, batch_rows=batch_rows)
