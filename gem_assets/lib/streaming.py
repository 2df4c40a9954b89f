"""Streaming over Parquet files: selected rows batch by batch, and embedding them.

The shard-level assets use these so that memory holds one batch of a shard's texts at a
time, whatever the shard's size (the vectors kept are the only thing that grows, with the
number of documents embedded, which the profile's per-shard cap bounds).
"""

from __future__ import annotations

import contextlib
import functools
from typing import Callable, Iterator, Sequence

import numpy as np
import polars as pl

from gem_assets.lib import storage

__all__ = ["parquet_num_rows", "iter_selected_rows", "embed_selected", "read_texts", "release_memory",
           "fix_mmap_threshold", "mapped_large_buffers"]

#: glibc's ``mallopt`` parameter numbers of ``M_TRIM_THRESHOLD`` and ``M_MMAP_THRESHOLD`` (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: The ceiling of glibc's dynamic mmap threshold on 64-bit (``DEFAULT_MMAP_THRESHOLD_MAX``).
_DYNAMIC_MMAP_CEILING = 32 << 20


@functools.lru_cache(maxsize=1)
def _glibc():
    """The C library as a ctypes handle, or None when it is not glibc (no ``mallopt``/``malloc_trim``).

    Looked up once per process: ``find_library`` runs ``ldconfig`` (~1.7 ms a call here), and
    ``release_memory`` / ``mapped_large_buffers`` run after every shard and around every encode."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.malloc_trim, libc.mallopt  # both are glibc extensions
    except (OSError, AttributeError):  # musl, macOS
        return None
    return libc


def fix_mmap_threshold(threshold_bytes: int = 1 << 20) -> bool:
    """Make glibc serve every allocation of at least ``threshold_bytes`` with its own ``mmap``.

    glibc starts with a 128 KiB mmap threshold and raises it to the size of every mmapped block
    that is freed (up to 32 MiB), and its trim threshold to twice that. After the first batch of
    a transformer's forward pass frees its multi-MiB activations, the next batches' activations
    therefore come from the heap, where fragmentation leaves freed pages resident: with
    all-MiniLM-L6-v2 (48 BBC articles a batch, 128 tokens) each batch's peak resident set wandered
    between 713 and 778 MiB over 30 batches, against 683-705 MiB with the threshold fixed at
    1 MiB (the resident set after each batch plateaus at ~635 MiB either way; docs/scaling.md).
    Setting the threshold turns glibc's dynamic adjustment off for the whole process (as the
    ``MALLOC_MMAP_THRESHOLD_`` environment variable does), so large buffers go back to the OS
    when freed. :func:`mapped_large_buffers` applies it to a block of work only (what
    :meth:`gem_assets.lib.embed.SentenceEncoder.encode` does).

    Parameters
    ----------
    threshold_bytes : int
        Allocations of this size or more are mmapped (glibc caps it at 32 MiB on 64-bit).

    Returns
    -------
    bool
        Whether glibc accepted the setting (False off glibc: nothing changes).

    Raises
    ------
    ValueError
        If ``threshold_bytes`` is not in [4096, 32 MiB].
    """
    import ctypes

    if isinstance(threshold_bytes, bool) or not isinstance(threshold_bytes, int) or \
            not 4096 <= threshold_bytes <= 32 << 20:
        raise ValueError(f"threshold_bytes must be an int in [4096, 33554432] (32 MiB), got {threshold_bytes!r}")
    libc = _glibc()
    if libc is None:
        return False
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, int(threshold_bytes)))


@contextlib.contextmanager
def mapped_large_buffers(threshold_bytes: int = 1 << 20):
    """Within the block, allocations of ``threshold_bytes`` or more get their own mmap; afterwards
    glibc serves buffers up to 32 MiB from its heap again.

    For a transformer's forward passes (the sentence encoder's batches): their multi-MiB activations
    are then unmapped when freed instead of fragmenting the heap (see :func:`fix_mmap_threshold`).
    Left in place for the rest of the process, the 1 MiB threshold makes every later large tensor
    a fresh mapping whose pages fault in on first touch: proxy-LM training (d_model 128, context
    256, batch 32, 60 steps) ran 1.4x slower with it (100.6 and 102.7 s against 68.8 and 73.1 s,
    9.6 million page faults against 0.2-0.3 million; 2026-11-27, machine shared) and a fresh
    100,000 x 64 float32 matrix took ~16 ms against ~2 ms. So on exit the thresholds become those
    glibc's own dynamic adjustment reaches after freeing a 32 MiB block: mmap threshold 32 MiB, trim
    threshold 64 MiB (glibc has no call that turns the dynamic adjustment back on).

    Yields whether glibc accepted the settings (False off glibc: nothing changes).
    """
    ok = fix_mmap_threshold(threshold_bytes)
    try:
        yield ok
    finally:
        if ok:
            libc = _glibc()
            libc.mallopt(_M_MMAP_THRESHOLD, _DYNAMIC_MMAP_CEILING)
            libc.mallopt(_M_TRIM_THRESHOLD, 2 * _DYNAMIC_MMAP_CEILING)


def release_memory() -> bool:
    """Collect garbage and hand the C heap's free pages back to the OS (glibc ``malloc_trim``).

    A long-lived process that runs one shard after another (``make run`` in process, a Dagster
    worker) frees each shard's buffers, but glibc keeps freed pages in its arenas, and their
    fragmentation made the resident set creep up by a few MiB per shard run with the MiniLM
    embedder (measured: 692 -> 724 MiB over 20 batches of 48 articles without, 619 -> 634 MiB
    with a trim after each; docs/scaling.md). The shard-level library calls end with this.

    Returns
    -------
    bool
        Whether ``malloc_trim`` ran (False off glibc: then only the garbage collection happened).
    """
    import ctypes
    import gc

    gc.collect()
    libc = _glibc()
    if libc is None:  # not glibc (musl, macOS): nothing to trim
        return False
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    libc.malloc_trim(0)
    return True


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
        :meth:`gem_assets.lib.embed.SentenceEncoder.encode` or the embedder resource's).
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
