"""The corpus index: every counted document without its text.

The mixing stage does not hold the corpus's texts. :func:`corpus_index` reads one shard at a time
and keeps, per document, its shard, row, domain and token count, whether its source is the target
source and the priority of its key for the target sample (no text and, with ``spill_dir``, no
string at all: 37 bytes per document, memory-mapped from files). The ids are read back from the
documents files by row where they are needed (:func:`read_index_texts` over the id column).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

from gem_assets.lib.mixing.sampling import check_cap, key_priorities
from gem_assets.lib.util.checks import check_int

__all__ = ["CorpusIndex", "corpus_index", "bottom_k_by_priority", "read_index_texts"]


@dataclass
class CorpusIndex:
    """Every counted document of a corpus without its text, in (shard, id) order.

    Attributes
    ----------
    shards : list of str
        Shard keys (sorted).
    shard : numpy.ndarray of int32, shape (N,)
        Position in ``shards`` of each document's shard.
    row : numpy.ndarray of int64, shape (N,)
        Row of the document in its shard's documents file.
    domains : numpy.ndarray of int64, shape (N,)
        Each document's domain.
    tokens : numpy.ndarray of int64, shape (N,)
        Tokens of each document (:func:`~gem_assets.lib.mixing.streams.document_tokens`: UTF-8 bytes + 1).
    is_target : numpy.ndarray of bool, shape (N,), optional
        Whether the document's source label equals the ``target_source`` given to
        :func:`corpus_index` (every document when it was None; a null source never matches).
    priority : numpy.ndarray of uint64, shape (N,), optional
        ``sampling.key_priority(key_seed, key_purpose, "<shard>/<id>")`` of each document, when
        :func:`corpus_index` was given a ``key_seed`` (see :func:`bottom_k_by_priority`).
    ids : polars.Series of str, optional
        Document ids, kept only by the in-memory index (``spill_dir=None``); a spilled index reads
        them from the documents files when it needs them (:meth:`keys_at`, :func:`write_curated_parts`).
    sources : polars.Series of str, optional
        Each document's source label (null when absent); in-memory index only, like ``ids``.
    """

    shards: list[str]
    shard: np.ndarray
    row: np.ndarray
    domains: np.ndarray
    tokens: np.ndarray
    is_target: np.ndarray | None = None
    priority: np.ndarray | None = None
    ids: object = None
    sources: object = None

    def __len__(self) -> int:
        return int(self.domains.size)

    def document_keys(self) -> "_DocumentKeys":
        """``keys[i]`` = ``"<shard>/<id>"`` of the i-th document (unique across shards), built on demand.

        Needs the ids in memory (an index built with ``spill_dir=None``); a spilled index draws
        key-ordered samples from :attr:`priority` (:func:`bottom_k_by_priority`) instead.
        """
        if self.ids is None:
            raise ValueError("this index keeps no ids in memory (built with spill_dir): use its priority column "
                             "(bottom_k_by_priority) or keys_at(positions, read_ids)")
        return _DocumentKeys(self)

    def keys_at(self, positions, read_ids: Callable[[np.ndarray], Sequence[str]] | None = None) -> list[str]:
        """``"<shard>/<id>"`` of the documents at ``positions`` (ids from memory, else from ``read_ids``).

        Parameters
        ----------
        positions : array of int
        read_ids : callable, optional
            ``read_ids(positions)`` -> their ids (e.g. :func:`read_index_texts` over the id column);
            needed when the index keeps no ids in memory.
        """
        pos = np.asarray(positions, dtype=np.int64).ravel()
        if read_ids is not None:
            ids = list(read_ids(pos))
        elif self.ids is not None:
            ids = self.ids.gather(pos).to_list()
        else:
            raise ValueError("this index keeps no ids in memory (built with spill_dir): pass read_ids")
        if len(ids) != pos.size:
            raise ValueError(f"read_ids returned {len(ids)} ids for {pos.size} positions")
        return [f"{self.shards[int(s)]}/{i}" for s, i in zip(self.shard[pos].tolist(), ids)]


class _DocumentKeys:
    """The lazy sequence of :meth:`CorpusIndex.document_keys` (no string per document held)."""

    def __init__(self, index: CorpusIndex) -> None:
        self.index = index

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> str:
        return f"{self.index.shards[int(self.index.shard[i])]}/{self.index.ids[int(i)]}"


#: The index's numeric columns and their dtypes (what :func:`corpus_index` can keep on disk);
#: ``is_target`` (1 byte) and ``priority`` (8 bytes) only when asked for.
_NUMERIC_COLUMNS = {"shard": np.int32, "row": np.int64, "domain": np.int64, "tokens": np.int64,
                    "is_target": np.uint8, "priority": np.uint64}


def corpus_index(documents: Callable[[str], object], assignments: Callable[[str], object],
                 shards: Sequence[str], spill_dir=None, target_source: str | None = None,
                 key_seed: int | None = None, key_purpose: str = "") -> CorpusIndex:
    """Index the documents that have a domain assignment, one shard at a time.

    Parameters
    ----------
    documents : callable
        ``documents(key)`` -> a polars DataFrame of the shard's documents file with ``id``, ``text``
        and optionally ``source`` (read one shard at a time; only the text's length is kept).
    assignments : callable
        ``assignments(key)`` -> a polars DataFrame with ``id`` and ``domain``.
    shards : sequence of str
        Shard keys.
    spill_dir : path, optional
        A local folder. When given, the numeric columns (``shard``, ``row``, ``domains``,
        ``tokens``: 28 bytes per document, plus 1 for ``is_target`` and 8 for ``priority``) are
        appended shard by shard to files in a temporary folder under it and memory-mapped
        read-only, so they live in the page cache (evictable) rather than in the process's
        anonymous memory; the files are unlinked at once (the mapping keeps them until the arrays
        are freed) and the folder removed. No string per document is kept: ``ids`` and ``sources``
        are None (what they served is the ``is_target`` and ``priority`` columns, and ids are read
        back from the documents files by row). Without it every column is an in-memory array and
        ``ids`` and ``sources`` are kept as polars Series. Same values either way.
    target_source : str, optional
        The source label of the ``is_target`` column (None: every document is a target).
    key_seed : int, optional
        When given, the ``priority`` column holds ``sampling.key_priority(key_seed, key_purpose,
        "<shard>/<id>")``, computed shard by shard (no key string is kept).
    key_purpose : str

    Returns
    -------
    CorpusIndex
        Documents with an assignment (inner join on ``id``), sorted by shard key then id.
    """
    import polars as pl

    if target_source is not None and not isinstance(target_source, str):
        raise ValueError(f"target_source must be a source label (str) or None, got {target_source!r}")
    seed = None if key_seed is None else check_int(key_seed, "key_seed", low=0)
    columns = {c: d for c, d in _NUMERIC_COLUMNS.items() if c != "priority" or seed is not None}
    keys = sorted(str(k) for k in shards)
    parts = []
    spill = _ColumnSpill(spill_dir, columns) if spill_dir is not None else None
    try:
        for i, key in enumerate(keys):
            docs = documents(key)
            source = pl.col("source").cast(pl.String) if "source" in docs.columns else pl.lit(None, dtype=pl.String)
            small = docs.select(pl.int_range(pl.len(), dtype=pl.Int64).alias("row"), pl.col("id").cast(pl.String),
                (pl.col("text").str.len_bytes().cast(pl.Int64) + 1).alias("tokens"), source.alias("source"))
            del docs
            assign = assignments(key).select(pl.col("id").cast(pl.String), pl.col("domain").cast(pl.Int64))
            part = small.join(assign, on="id", how="inner").sort("id").with_columns(
                pl.lit(i, pl.Int32).alias("shard"),
                (pl.lit(True) if target_source is None else (pl.col("source") == target_source).fill_null(False))
                .cast(pl.UInt8).alias("is_target"))
            if seed is not None:
                part = part.with_columns(pl.Series("priority", key_priorities(seed, key_purpose, part["id"].to_list(),
                                                                              prefix=f"{key}/")))
            if spill is not None:
                spill.append(part)
            else:
                parts.append(part)
            del part
        if spill is not None:
            cols, ids, sources = spill.map(), None, None
        else:
            frame = pl.concat(parts) if parts else pl.DataFrame(schema={"id": pl.String, "source": pl.String})
            del parts
            cols = {c: frame[c].to_numpy().astype(dtype, copy=False) if frame.height else np.zeros(0, dtype)
                    for c, dtype in columns.items()}
            ids, sources = frame["id"], frame["source"]
    finally:
        if spill is not None:
            spill.remove()
    return CorpusIndex(shards=keys, shard=cols["shard"], row=cols["row"], domains=cols["domain"], tokens=cols["tokens"],
                       is_target=cols["is_target"].view(np.bool_), priority=cols.get("priority"), ids=ids,
                       sources=sources)


class _ColumnSpill:
    """Numeric columns appended to raw files, then memory-mapped read-only (see :func:`corpus_index`)."""

    def __init__(self, folder, columns: Mapping[str, type]) -> None:
        import tempfile
        from pathlib import Path

        Path(folder).mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix="corpus-index-", dir=str(folder)))
        self.n = 0
        self.columns = dict(columns)
        self.files = {c: open(self.dir / f"{c}.bin", "wb") for c in self.columns}

    def append(self, part) -> None:
        for c, dtype in self.columns.items():
            self.files[c].write(np.ascontiguousarray(part[c].to_numpy(), dtype=dtype).tobytes())
        self.n += part.height

    def map(self) -> dict[str, np.ndarray]:
        out = {}
        for c, dtype in self.columns.items():
            self.files[c].close()
            out[c] = np.memmap(self.dir / f"{c}.bin", dtype=dtype, mode="r", shape=(self.n,)) if self.n else \
                np.zeros(0, dtype)
        return out

    def remove(self) -> None:
        import shutil

        for f in self.files.values():
            f.close()
        shutil.rmtree(self.dir, ignore_errors=True)  # mapped files stay readable until unmapped


def bottom_k_by_priority(idx, priority: np.ndarray, cap: int | None,
                         keys: Callable[[np.ndarray], Sequence[str]] | None = None) -> np.ndarray:
    """At most ``cap`` of the positions ``idx``: those of smallest ``priority`` (a bottom-k sample).

    The same sample as ``sampling.bottom_k_positions(idx, document keys, cap, seed, purpose)`` when
    ``priority[i]`` is ``sampling.key_priority(seed, purpose, key of i)`` (the ``priority`` column of
    :func:`corpus_index`), ties included: among equal priorities :class:`~gem_assets.lib.mixing.sampling.BottomK`
    keeps the larger key, so do we. Nothing per candidate beyond two 8-byte arrays is built; keys
    are asked for only for candidates tied at the cut.

    Parameters
    ----------
    idx : array of int
        Candidate positions, increasing.
    priority : numpy.ndarray of uint64, shape (N,)
        Priority of every position (may be memory-mapped).
    cap : int or None
        Most positions kept; None keeps all.
    keys : callable, optional
        ``keys(positions)`` -> the keys of those positions (e.g. :meth:`CorpusIndex.keys_at`); needed
        only when candidates tie on priority at the cut (a ValueError says so).

    Returns
    -------
    numpy.ndarray of int64
        The kept positions, increasing (all of ``idx`` when it has at most ``cap``).
    """
    idx = np.asarray(idx, dtype=np.int64)
    cap = check_cap(cap)
    if idx.ndim != 1:
        raise ValueError(f"idx must be 1-D positions, got shape {idx.shape}")
    if priority is None or np.asarray(priority[:0]).dtype != np.uint64:
        raise ValueError("priority must be the uint64 priority column (corpus_index(..., key_seed=...))")
    if idx.size and (idx[0] < 0 or idx[-1] >= len(priority) or np.any(np.diff(idx) <= 0)):
        raise ValueError(f"idx must be increasing positions in [0, {len(priority)})")
    if cap is None or idx.size <= cap:
        return idx
    p = np.asarray(priority[idx], dtype=np.uint64)
    cut = np.partition(p, cap - 1)[cap - 1]
    below, tied = idx[p < cut], idx[p == cut]
    need = cap - below.size
    if tied.size > need:
        if keys is None:
            raise ValueError(f"{tied.size} candidates tie on priority {int(cut)} at the cut: pass keys to break the tie")
        tie_keys = list(keys(tied))
        tied = tied[sorted(range(tied.size), key=tie_keys.__getitem__, reverse=True)[:need]]
    return np.sort(np.concatenate([below, tied]))


def read_index_texts(index: CorpusIndex, positions, read_rows: Callable[[str, np.ndarray], Sequence[str]]) -> list[str]:
    """The texts of the documents at ``positions`` of the index, read shard by shard.

    Parameters
    ----------
    index : CorpusIndex
    positions : array of int
        Positions in the index (any order; repeats allowed).
    read_rows : callable
        ``read_rows(shard_key, rows)`` -> the texts of those (increasing) rows of the shard's
        documents file, in that order (e.g. with :func:`gem_assets.lib.io.streaming.iter_selected_rows`).

    Returns
    -------
    list of str
        One text per position, in the order of ``positions``.
    """
    pos = np.asarray(positions, dtype=np.int64).ravel()
    uniq = np.unique(pos)
    out: dict[int, str] = {}
    for s in np.unique(index.shard[uniq]):
        here = uniq[index.shard[uniq] == s]
        order = np.argsort(index.row[here], kind="stable")
        texts = read_rows(index.shards[int(s)], index.row[here][order])
        if len(texts) != here.size:
            raise ValueError(f"shard {index.shards[int(s)]!r}: asked for {here.size} rows, got {len(texts)}")
        out.update(zip(here[order].tolist(), texts))
    return [out[i] for i in pos.tolist()]
