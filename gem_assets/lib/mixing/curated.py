"""The curated mixture: domain weights turned into a document sample, written out.

:func:`sample_curated_mixture` turns domain weights into a document sample of about
``budget_tokens`` tokens (tokens are UTF-8 bytes + 1, as in :mod:`~gem_assets.lib.mixing.streams`):

1. Targets: domain k gets ``T_k = w_k * budget`` tokens, capped at ``max_epochs * n_k`` (``n_k`` its
   tokens). Budget that a capped domain cannot take is handed to the uncapped domains in
   proportion to their weights, repeatedly, until none is over its cap (water-filling); when
   every domain is capped the sample is smaller than the budget (the manifest says so).
2. Documents: domain k takes ``floor(T_k / n_k)`` full passes over its documents, then the
   longest prefix of a seeded permutation of its documents whose tokens fit the remainder. A
   domain therefore never exceeds ``T_k`` tokens, hence never its epoch cap, and a document
   repeats at most ``ceil(max_epochs)`` times.
3. The selected (document, repeat) pairs are shuffled with the seed.

:func:`write_curated_parts` writes the shuffled curated mixture with a bucketed external shuffle:
each shard is read once and its selected rows are appended to the temporary file of the bucket of
output files they belong to; each bucket (about ``bucket_bytes`` of text) is then sorted in memory
and written as its output files. Memory holds one shard, or one bucket, at a time, whatever the
corpus or mixture size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from gem_assets.lib.mixing.corpus_index import CorpusIndex
from gem_assets.lib.util.checks import check_float, check_int

__all__ = ["allocate_tokens", "CuratedSample", "sample_curated_mixture", "write_curated_parts"]


def _check_weights(weights, k: int) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (k,):
        raise ValueError(f"weights must have one value per domain ({k}), got shape {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"weights must be finite, >= 0 and not all 0, got {w.tolist()}")
    return w / w.sum()


def allocate_tokens(weights, domain_tokens, budget_tokens: float, max_epochs: float) -> np.ndarray:
    """Token target per domain: ``w * budget`` capped at ``max_epochs * tokens``, by water-filling.

    Returns float64 (K,) targets; their sum is ``min(budget, sum of caps)``.
    """
    n = np.asarray(domain_tokens, dtype=np.float64)
    w = _check_weights(weights, n.size)
    if np.any(n < 0) or not np.all(np.isfinite(n)):
        raise ValueError("domain_tokens must be finite and >= 0")
    budget = check_float(budget_tokens, "budget_tokens", low=0.0, strict=True)
    epochs = check_float(max_epochs, "max_epochs", low=0.0, strict=True)
    caps = epochs * n
    target = np.zeros_like(w)
    free = (w > 0) & (caps > 0)
    remaining = budget
    while remaining > 1e-9 * budget and free.any():
        share = w * free / (w * free).sum()
        want = target + remaining * share
        over = free & (want >= caps)
        if not over.any():
            target = want
            break
        # give every capped domain its cap, take that out of the budget and start again
        remaining -= float((caps[over] - target[over]).sum())
        target[over] = caps[over]
        free &= ~over
    return target


@dataclass
class CuratedSample:
    """A curated mixture drawn by :func:`sample_curated_mixture`.

    Attributes
    ----------
    indices : numpy.ndarray of int64, shape (M,)
        Document positions, shuffled; a document appears once per pass it is drawn in.
    repeats : numpy.ndarray of int64, shape (M,)
        The pass (0-based epoch) of each entry.
    domains : numpy.ndarray of int64, shape (M,)
        Domain of each entry.
    per_domain : list of dict
        Per domain: ``domain``, ``weight`` (asked), ``target_tokens``, ``tokens``, ``documents``
        (entries), ``unique_documents``, ``available_tokens``, ``epochs`` (tokens / available),
        ``realized_weight``.
    tokens : int
        Total tokens of the sample.
    budget_tokens : float
    max_epochs : float
    """

    indices: np.ndarray
    repeats: np.ndarray
    domains: np.ndarray
    per_domain: list[dict] = field(default_factory=list)
    tokens: int = 0
    budget_tokens: float = 0.0
    max_epochs: float = 0.0


def sample_curated_mixture(doc_tokens: np.ndarray, labels: np.ndarray, weights, budget_tokens: float,
                           max_epochs: float, seed: int) -> CuratedSample:
    """Sample documents per domain weights to a token budget, never beyond an epoch cap.

    Parameters
    ----------
    doc_tokens : numpy.ndarray of int, shape (N,)
        Tokens of each document (> 0; see :func:`~gem_assets.lib.mixing.streams.document_tokens`).
    labels : numpy.ndarray of int, shape (N,)
        Domain of each document in [0, K), K = ``len(weights)``.
    weights : array-like, shape (K,)
        Domain weights (normalized here).
    budget_tokens : float
        Tokens wanted in total.
    max_epochs : float
        No domain contributes more than this many times its tokens.
    seed : int

    Returns
    -------
    CuratedSample
    """
    tok = np.asarray(doc_tokens)
    labels = np.asarray(labels)
    if tok.ndim != 1 or labels.shape != tok.shape:
        raise ValueError(f"doc_tokens {tok.shape} and labels {labels.shape} must be 1-D of the same length")
    if tok.size and (not np.issubdtype(tok.dtype, np.integer) or tok.min() <= 0):
        raise ValueError("doc_tokens must be positive integers (every document has at least its separator)")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integer domain ids, got dtype {labels.dtype}")
    w = np.asarray(weights, dtype=np.float64)
    k = w.size
    if labels.size and (labels.min() < 0 or labels.max() >= k):
        raise ValueError(f"labels must lie in [0, {k}) (one weight per domain), got [{labels.min()}, {labels.max()}]")
    seed = check_int(seed, "seed", low=0)
    tok = tok.astype(np.int64, copy=False)  # no copy of int64 inputs (a memory-mapped index stays on disk)
    labels = labels.astype(np.int64, copy=False)
    avail = np.bincount(labels, weights=tok, minlength=k).astype(np.int64)
    target = allocate_tokens(w, avail, budget_tokens, max_epochs)
    wn = w / w.sum()
    rng = np.random.default_rng(seed)
    idx_parts, rep_parts, rows = [], [], []
    for d in range(k):
        docs = np.flatnonzero(labels == d)
        full = int(math.floor(target[d] / avail[d])) if avail[d] > 0 else 0
        rest = target[d] - full * avail[d]
        perm = docs[rng.permutation(docs.size)]
        take = perm[: int(np.searchsorted(np.cumsum(tok[perm]), rest, side="right"))]
        chosen = [docs] * full + [take]
        idx = np.concatenate(chosen) if chosen else np.empty(0, np.int64)
        rep = np.concatenate([np.full(len(c), e, np.int64) for e, c in enumerate(chosen)]) if chosen else idx
        idx_parts.append(idx)
        rep_parts.append(rep)
        got = int(tok[idx].sum())
        rows.append({"domain": d, "weight": float(wn[d]), "target_tokens": float(target[d]), "tokens": got,
                     "documents": int(idx.size), "unique_documents": int(np.unique(idx).size),
                     "available_tokens": int(avail[d]), "epochs": got / int(avail[d]) if avail[d] else 0.0})
    indices = np.concatenate(idx_parts).astype(np.int64)
    repeats = np.concatenate(rep_parts).astype(np.int64)
    order = rng.permutation(indices.size)
    indices, repeats = indices[order], repeats[order]
    total = int(tok[indices].sum())
    for r in rows:
        r["realized_weight"] = r["tokens"] / total if total else 0.0
    return CuratedSample(indices=indices, repeats=repeats, domains=labels[indices], per_domain=rows, tokens=total,
                         budget_tokens=float(budget_tokens), max_epochs=float(max_epochs))


def write_curated_parts(index: CorpusIndex, sample: CuratedSample, read_texts: Callable[[np.ndarray], Sequence[str]],
                        out_dir, rows_per_file: int, bucket_bytes: int = 16 << 20, max_buckets: int = 512,
                        read_ids: Callable[[np.ndarray], Sequence[str]] | None = None) -> list[str]:
    """Write the curated mixture's rows, in the sample's (shuffled) order, as Parquet files.

    Files ``part-00000.parquet`` ... of ``rows_per_file`` rows each (the last may be shorter), columns
    ``shard``, ``id``, ``domain``, ``repeat``, ``tokens``, ``text`` (zstd). A bucketed external shuffle
    keeps memory bounded: consecutive output files are grouped into buckets of about
    ``bucket_bytes`` of tokens; one pass over the shards appends each shard's selected rows to its
    buckets' temporary files (under ``out_dir/.buckets``, removed at the end); then each bucket is
    read, put in sample order and written as its output files.

    Parameters
    ----------
    index : CorpusIndex
    sample : CuratedSample
        Entries are positions of ``index``.
    read_texts : callable
        ``read_texts(positions)`` -> texts of those index positions.
    out_dir : path
        A local folder (created if needed).
    rows_per_file : int
    bucket_bytes : int
        About this many tokens of text per bucket (the memory of the second phase; a bucket holds
        at least one output file). 16 MiB: on BBC mixtures of 43 and 86 MiB of text (20 and 40
        shards) the write peaked 113-121 and 123-130 MiB above its start, against 133 and 180 MiB
        with 256 MiB buckets.
    max_buckets : int
        Most buckets (temporary files open at once in the first phase): when the mixture holds more
        than ``max_buckets / 2 * bucket_bytes`` tokens, buckets grow to ``2 * tokens / max_buckets``
        (then memory grows with the mixture, open files do not).
    read_ids : callable, optional
        ``read_ids(positions)`` -> ids of those index positions, read with the texts shard by shard
        (e.g. :func:`read_index_texts` over the id column). Needed when the index keeps no ids in
        memory (built with ``spill_dir``); otherwise ``index.ids`` is used. Same files either way.

    Returns
    -------
    list of str
        The file names written, in order (at least one, possibly empty, file).
    """
    import contextlib
    import shutil
    from pathlib import Path

    import polars as pl

    from gem_assets.lib.io import storage

    size = check_int(rows_per_file, "rows_per_file", low=1)
    bucket_bytes = check_int(bucket_bytes, "bucket_bytes", low=1)
    max_buckets = check_int(max_buckets, "max_buckets", low=2)
    if read_ids is None:
        if index.ids is None:
            raise ValueError("this index keeps no ids in memory (built with spill_dir): pass read_ids")
        read_ids = index.ids.gather
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    m = int(sample.indices.size)
    n_files = max(1, -(-m // size))
    files = [f"part-{i:05d}.parquet" for i in range(n_files)]
    tok = index.tokens[sample.indices]
    file_tokens = np.bincount(np.arange(m) // size, weights=tok, minlength=n_files) if m else np.zeros(n_files)
    # files per bucket: consecutive files until the bucket holds about bucket_bytes tokens; two
    # consecutive buckets hold more than `per_bucket`, so there are at most max_buckets + 1
    per_bucket = max(float(bucket_bytes), 2.0 * float(file_tokens.sum()) / max_buckets)
    bucket_of_file = np.zeros(n_files, dtype=np.int64)
    b, acc = 0, 0.0
    for f in range(n_files):
        if acc > 0 and acc + file_tokens[f] > per_bucket:
            b, acc = b + 1, 0.0
        bucket_of_file[f] = b
        acc += file_tokens[f]
    n_buckets = b + 1
    entry_bucket = bucket_of_file[np.arange(m) // size] if m else np.zeros(0, np.int64)
    schema = {"pos": pl.Int64, "shard": pl.String, "id": pl.String, "domain": pl.Int64, "repeat": pl.Int64,
              "tokens": pl.Int64, "text": pl.String}
    tmp = out_dir / ".buckets"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        with contextlib.ExitStack() as stack:
            writers = [stack.enter_context(storage.ParquetBatchWriter(tmp / f"bucket-{i:05d}.parquet", schema))
                       for i in range(n_buckets)]
            entry_shard = index.shard[sample.indices] if m else np.zeros(0, np.int32)
            for s in np.unique(entry_shard):
                ent = np.flatnonzero(entry_shard == s)           # this shard's entries (positions in the sample)
                docs = sample.indices[ent]
                frame = pl.DataFrame({"pos": ent.astype(np.int64), "shard": [index.shards[int(s)]] * ent.size,
                                      "id": read_ids(docs), "domain": index.domains[docs],
                                      "repeat": sample.repeats[ent], "tokens": index.tokens[docs],
                                      "text": list(read_texts(docs))}, schema=schema)
                for bk in np.unique(entry_bucket[ent]).tolist():
                    writers[bk].write(frame.filter(pl.Series(entry_bucket[ent] == bk)))
                del frame
        for bk in range(n_buckets):
            rows = pl.read_parquet(tmp / f"bucket-{bk:05d}.parquet").sort("pos")
            for f in np.flatnonzero(bucket_of_file == bk).tolist():
                part = rows.filter((pl.col("pos") >= f * size) & (pl.col("pos") < (f + 1) * size))
                part.drop("pos").write_parquet(out_dir / files[f], compression="zstd")
            del rows
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    from gem_assets.lib.util.allocator import release_memory

    release_memory()
    return files
