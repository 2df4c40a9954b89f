"""Streaming over Parquet files: selected rows batch by batch, and embedding them.

The shard-level assets use these so that memory holds one batch of a shard's texts at a
time, whatever the shard's size (the vectors kept are the only thing that grows, with the
number of documents embedded, which the profile's per-shard cap bounds).
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import numpy as np
import polars as pl

from gem_assets.lib.io import storage
from gem_assets.lib.util.allocator import release_memory

__all__ = ["parquet_num_rows", "iter_selected_rows", "embed_selected", "read_texts"]


def parquet_num_rows(path) -> int:
    """Number of rows of a Parquet file, from its footer (no data is read)."""
    import pyarrow.parquet as pq

    with storage.open_binary(path) as f:
        return int(pq.ParquetFile(f).metadata.num_rows)


def iter_selected_rows(path, rows: Sequence[int] | np.ndarray | None = None, columns: Sequence[str] | None = None,
                       batch_rows: int = 8192) -> Iterator[pl.DataFrame]:
    """The rows of a Parquet file at the given positions, in batches, never the whole file.

    Parameters
    ----------
    path : path, URL or UPath
        A Parquet file.
    rows : sequence of int, optional
        Strictly increasing 0-based row positions to keep; ``None`` keeps every row.
    columns : sequence of str, optional
        Columns to read (default: all).
    batch_rows : int
        Rows read per batch (the batches yielded hold the selected rows of each).

    Yields
    ------
    DataFrame
        The selected rows of one batch, in file order (batches with none selected are skipped).

    Raises
    ------
    ValueError
        If ``rows`` is not strictly increasing, holds a negative position or one past the
        end of the file, or ``batch_rows`` < 1.
    """
    import pyarrow.parquet as pq

    if int(batch_rows) < 1:
        raise ValueError(f"batch_rows must be >= 1, got {batch_rows}")
    sel = None
    if rows is not None:
        sel = np.asarray(rows, dtype=np.int64).ravel()
        if sel.size and (sel[0] < 0 or np.any(np.diff(sel) <= 0)):
            raise ValueError("rows must be strictly increasing non-negative positions")
    with storage.open_binary(path) as f:
        pf = pq.ParquetFile(f)
        n = int(pf.metadata.num_rows)
        if sel is not None and sel.size and sel[-1] >= n:
            raise ValueError(f"row position {int(sel[-1])} is past the end of {path} ({n} rows)")
        if sel is not None and sel.size == 0:
            return
        offset = 0
        for batch in pf.iter_batches(batch_size=int(batch_rows), columns=list(columns) if columns else None):
            df = pl.from_arrow(batch)
            if sel is not None:
                lo, hi = np.searchsorted(sel, [offset, offset + df.height])
                take = sel[lo:hi] - offset
                offset += df.height
                if take.size == 0:
                    continue
                if take.size < df.height:
                    df = df[take.tolist()]
            else:
                offset += df.height
            yield df


def embed_selected(encode: Callable[..., np.ndarray], path, rows: Sequence[int] | np.ndarray | None = None, *,
                   text_column: str = "text", index_columns: Sequence[str] = ("row", "id"),
                   batch_rows: int = 4096, desc: str = "embedding") -> tuple[np.ndarray, pl.DataFrame]:
    """Embed selected rows of a Parquet file batch by batch.

    Parameters
    ----------
    encode : callable
        ``encode(texts, desc=...) -> (len(texts), d)`` float array (e.g.
        :meth:`gem_assets.lib.teacher.embed.SentenceEncoder.encode` or the embedder resource's).
    path : path, URL or UPath
        The documents Parquet file.
    rows : sequence of int, optional
        Strictly increasing positions of the rows to embed (``None``: all).
    text_column : str
        Column holding the texts.
    index_columns : sequence of str
        Columns kept beside each vector (those the file has).
    batch_rows : int
        Texts per call of ``encode`` (and rows read per batch).
    desc : str
        Progress label; each batch's label is suffixed with its number.

    Returns
    -------
    vectors : ndarray of shape (n, d), float32
        One row per selected row, in file order.
    index : DataFrame
        The ``index_columns`` of those rows.
    """
    import pyarrow.parquet as pq

    with storage.open_binary(path) as f:
        schema = pq.ParquetFile(f).schema_arrow
    schema_names = schema.names
    if text_column not in schema_names:
        raise ValueError(f"{path} has no column {text_column!r} (columns: {schema_names})")
    keep = [c for c in index_columns if c in schema_names]
    total = parquet_num_rows(path) if rows is None else len(rows)
    out: np.ndarray | None = None
    parts: list[pl.DataFrame] = []
    done = 0
    for i, df in enumerate(iter_selected_rows(path, rows, columns=list(dict.fromkeys(keep + [text_column])),
                                              batch_rows=batch_rows), 1):
        vecs = np.asarray(encode(df[text_column].to_list(), desc=f"{desc} [batch {i}]"), dtype=np.float32)
        if vecs.ndim != 2 or vecs.shape[0] != df.height:
            raise ValueError(f"encode returned shape {vecs.shape} for {df.height} texts")
        if out is None:
            out = np.empty((total, vecs.shape[1]), dtype=np.float32)
        out[done : done + df.height] = vecs
        done += df.height
        parts.append(df.select(keep))
    if out is None:  # nothing selected: ask the encoder for its dimension
        empty = np.asarray(encode([], desc=desc), dtype=np.float32)
        out = empty.reshape(0, empty.shape[1] if empty.ndim == 2 else 0)
    if done != total:
        raise ValueError(f"{done} rows read from {path} but {total} were selected")
    index = pl.concat(parts) if parts else pl.from_arrow(schema.empty_table().select(keep))
    release_memory()  # the shard's texts and the encoder's buffers are freed: give the pages back
    return out, index


def read_texts(documents_path: Callable[[str], object], rows: pl.DataFrame, *, text_column: str = "text",
               batch_rows: int = 8192) -> list[str]:
    """The texts of some documents, read shard by shard and batch by batch (never a whole shard).

    Parameters
    ----------
    documents_path : callable
        ``documents_path(shard_key)`` -> the shard's documents Parquet file (e.g. ``layout.documents_path``).
    rows : DataFrame
        ``shard`` and ``id`` of each document wanted (repeats allowed).
    text_column : str
    batch_rows : int
        Rows read at a time from a documents file.

    Returns
    -------
    list of str
        One text per row of ``rows``, in that order. Memory holds these texts and one batch.

    Raises
    ------
    ValueError
        If a document is not in its shard's documents file.
    FileNotFoundError
        If a shard has no documents file.
    """
    found: dict[tuple[str, str], str] = {}
    for shard in rows["shard"].unique(maintain_order=True).to_list():
        wanted = rows.filter(pl.col("shard") == shard)["id"].unique()
        for df in iter_selected_rows(documents_path(shard), columns=["id", text_column], batch_rows=batch_rows):
            hit = df.filter(pl.col("id").is_in(wanted.implode()))
            found.update(zip(((shard, i) for i in hit["id"].to_list()), hit[text_column].to_list()))
    pairs = list(zip(rows["shard"].to_list(), rows["id"].to_list()))
    missing = [p for p in pairs if p not in found]
    if missing:
        raise ValueError(f"{len(missing)} document(s) are not in their shard's documents file, e.g. "
                         f"{missing[0][0]}/{missing[0][1]}")
    return [found[p] for p in pairs]
