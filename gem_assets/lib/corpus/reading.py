"""Reading one shard in batches of records: JSONL lines or Parquet rows, never the whole file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import polars as pl

from gem_assets.lib.corpus.shards import SHARD_SUFFIXES, ShardError
from gem_assets.lib.io import storage

__all__ = ["DEFAULT_BATCH_ROWS", "iter_shard_batches"]


#: Records per batch when a shard is streamed (JSONL lines or Parquet rows): memory holds one
#: batch of a shard at a time, whatever the shard's size.
DEFAULT_BATCH_ROWS = 65_536


def _parse_jsonl_lines(path: Path, rows: list[int], lines: list[bytes]) -> tuple[pl.DataFrame, list[dict]]:
    """Parse a batch of non-blank JSONL lines; lines that are not valid UTF-8 are returned apart.

    Parameters
    ----------
    path : Path
        The shard (for messages).
    rows : list of int
        Record index in the file of each line.
    lines : list of bytes
        The lines, without their line ending.

    Returns
    -------
    df : DataFrame
        The records from valid lines, with a ``__row`` column (record index in the file).
    bad : list of dict
        ``{"row", "obj", "detail"}`` for each record that is not valid UTF-8.
    """
    try:
        b"\n".join(lines).decode("utf-8")
        good_rows, good_lines, bad = rows, lines, []
    except UnicodeDecodeError:
        good_rows, good_lines, bad = [], [], []
        for i, ln in zip(rows, lines):
            try:
                ln.decode("utf-8")
            except UnicodeDecodeError as exc:
                try:
                    obj = json.loads(ln.decode("utf-8", errors="replace"))
                except ValueError:
                    obj = None
                bad.append({"row": i, "obj": obj, "detail": f"invalid UTF-8 byte at offset {exc.start}"})
                continue
            good_rows.append(i)
            good_lines.append(ln)
    if not good_lines:
        return pl.DataFrame({"__row": pl.Series([], dtype=pl.Int64)}), bad
    try:
        df = pl.read_ndjson(b"\n".join(good_lines), infer_schema_length=None)
    except Exception as exc:  # polars raises several error types
        for row, ln in zip(good_rows, good_lines):
            try:
                obj = json.loads(ln)
            except ValueError as jexc:
                raise ShardError(
                    f"corrupt shard {path}: record {row} is not valid JSON ({jexc})"
                ) from exc
            if not isinstance(obj, dict):
                raise ShardError(
                    f"corrupt shard {path}: record {row} is a JSON {type(obj).__name__}, not an object"
                ) from exc
        raise ShardError(f"corrupt shard {path}: cannot read it as JSON lines ({exc})") from exc
    if df.height != len(good_lines):
        raise ShardError(
            f"corrupt shard {path}: {len(good_lines)} JSON lines but {df.height} records were read"
        )
    return df.with_columns(pl.Series("__row", good_rows, dtype=pl.Int64)), bad


def _iter_jsonl(path: Path, batch_rows: int) -> Iterator[tuple[pl.DataFrame, list[dict]]]:
    """Batches of at most ``batch_rows`` records of a JSONL shard (blank lines are not records)."""
    rows: list[int] = []
    lines: list[bytes] = []
    n = 0
    with storage.open_binary(path) as f:
        for raw in f:
            ln = raw.rstrip(b"\n").rstrip(b"\r")
            if not ln.strip():
                continue
            rows.append(n)
            lines.append(ln)
            n += 1
            if len(lines) >= batch_rows:
                yield _parse_jsonl_lines(path, rows, lines)
                rows, lines = [], []
    if lines:
        yield _parse_jsonl_lines(path, rows, lines)


def _iter_parquet(path: Path, batch_rows: int) -> Iterator[tuple[pl.DataFrame, list[dict]]]:
    """Batches of at most ``batch_rows`` rows of a Parquet shard (pyarrow record batches)."""
    import pyarrow.parquet as pq

    with storage.open_binary(path) as f:
        try:
            batches = pq.ParquetFile(f).iter_batches(batch_size=batch_rows)
        except Exception as exc:
            raise ShardError(f"corrupt shard {path}: cannot read it as Parquet ({exc})") from exc
        offset = 0
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                break
            except Exception as exc:
                raise ShardError(f"corrupt shard {path}: cannot read it as Parquet ({exc})") from exc
            df = pl.from_arrow(batch)
            df = df.with_row_index("__row", offset=offset).with_columns(pl.col("__row").cast(pl.Int64))
            offset += df.height
            yield df, []


def iter_shard_batches(path, batch_rows: int = DEFAULT_BATCH_ROWS) -> Iterator[tuple[pl.DataFrame, list[dict]]]:
    """Read one shard in batches of records, never whole.

    Parameters
    ----------
    path : path or URL
        A ``.jsonl``/``.ndjson``/``.json`` or ``.parquet`` file; a local path, a ``file://`` URL
        or any fsspec URL / :class:`upath.UPath` (``s3://``, ``gs://``, ``memory://`` ...).
    batch_rows : int
        Records per batch (JSONL lines or Parquet rows).

    Yields
    ------
    df : DataFrame
        The batch's readable records, with an ``__row`` column (record index in the file).
    bad : list of dict
        Records of the batch that are not valid UTF-8 (JSONL only; Parquet binary text
        columns are checked in :func:`validate_shard`): ``{"row", "obj", "detail"}``.

    Raises
    ------
    ShardError
        If the file is missing, has an unknown suffix or cannot be parsed.
    ValueError
        If ``batch_rows`` < 1.
    """
    if int(batch_rows) < 1:
        raise ValueError(f"batch_rows must be >= 1, got {batch_rows}")
    path = storage.as_path(path)
    if not path.is_file():
        raise ShardError(f"shard {path} does not exist")
    fmt = SHARD_SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise ShardError(
            f"shard {path}: unknown suffix {path.suffix!r}; expected one of {sorted(SHARD_SUFFIXES)}"
        )
    reader = _iter_jsonl if fmt == "jsonl" else _iter_parquet
    yield from reader(path, int(batch_rows))
