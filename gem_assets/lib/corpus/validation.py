"""Validating one shard: good rows are normalized and kept, bad rows are quarantined with a reason.

Every input record is accounted for (``rows_in == kept + quarantined``): a record that cannot be
read (not UTF-8, not JSON, not a JSON object, an undecodable Parquet row group) is quarantined
like one whose text is missing, not a string, empty or too long, or whose id is missing or a
duplicate, and the rest of the shard goes on. A shard that cannot be read at all, or of which no
record has the text column, raises :class:`~gem_assets.lib.corpus.shards.ShardError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import polars as pl

from gem_assets.lib.corpus.reading import DEFAULT_BATCH_ROWS, READ_REASONS, iter_shard_batches
from gem_assets.lib.corpus.shards import ShardError, content_id
from gem_assets.lib.io import storage

__all__ = ["QUARANTINE_REASONS", "QUARANTINE_SCHEMA", "ValidationResult", "ValidationSummary", "kept_schema",
           "max_record_bytes", "validate_shard", "validate_shard_to"]


#: Reasons a record is quarantined, in the order they are tested (a record gets the first that
#: applies): the record cannot be read (:data:`~gem_assets.lib.corpus.reading.READ_REASONS`:
#: ``invalid_utf8``, ``invalid_json``, ``not_an_object``, ``unreadable_row_group``; ``too_long``
#: also for a JSON line too long to be read), then its text is missing, not a string, null,
#: empty or whitespace only, or too long, then its id is missing or was seen earlier in the shard.
QUARANTINE_REASONS = (
    "invalid_utf8",
    "invalid_json",
    "not_an_object",
    "unreadable_row_group",
    "missing_text",
    "text_not_string",
    "null_text",
    "empty_text",
    "too_long",
    "missing_id",
    "duplicate_id",
)
assert set(READ_REASONS) <= set(QUARANTINE_REASONS)

_PREVIEW_CHARS = 300
@dataclass
class ValidationResult:
    """Outcome of :func:`validate_shard`.

    Attributes
    ----------
    kept : DataFrame
        ``row`` (Int64), ``id`` (String), ``text`` (String), ``n_chars`` (Int64) and, when a
        source column is configured, ``source`` (String).
    quarantine : DataFrame
        :data:`QUARANTINE_SCHEMA`: ``row``, ``line``, ``id``, ``reason``, ``detail``,
        ``text_preview``, ``raw``.
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


#: Columns of the quarantine: the record index in the file (blank lines are not records), the
#: 1-based line number (JSON lines; null for Parquet), the id when one could be read, the reason
#: (:data:`QUARANTINE_REASONS`) and its detail, the first 300 characters of the text when there is
#: one, and the first bytes (:data:`~gem_assets.lib.corpus.reading.RAW_PREVIEW_BYTES`) of a record
#: that could not be read (null otherwise).
QUARANTINE_SCHEMA = {
    "row": pl.Int64,
    "line": pl.Int64,
    "id": pl.String,
    "reason": pl.String,
    "detail": pl.String,
    "text_preview": pl.String,
    "raw": pl.Binary,
}


def max_record_bytes(max_chars: int) -> int:
    """The longest JSON line read into memory for a ``max_chars`` text limit: 16 bytes a character
    (JSON escapes take up to 12) plus 64 KiB for the other fields, and at least 1 MiB; a longer line
    is quarantined as ``too_long`` from its first bytes."""
    return max(1 << 20, 16 * int(max_chars) + (1 << 16))


def kept_schema(with_source: bool) -> dict:
    """Column types of the kept documents (``source`` only when a source column is configured)."""
    schema = {"row": pl.Int64, "id": pl.String, "text": pl.String, "n_chars": pl.Int64}
    if with_source:
        schema["source"] = pl.String
    return schema


def _as_text(series: pl.Series) -> tuple[pl.Series, pl.Series, pl.Series, pl.Series]:
    """A text column as strings: ``(texts, utf8_error_detail, json_type_of_non_strings, shown)``.

    Strings (and categoricals) are texts; binary values are decoded as UTF-8 (an invalid one gets
    a null text and its error); any other type (a Parquet column of numbers, lists ...) gives null
    texts and, for each non-null value, the JSON type it stands for (``number``, ``boolean``,
    ``array``, ``object``): a text must be a string. ``shown`` is what the quarantine previews: the
    text, or the value written as JSON.
    """
    import json

    from gem_assets.lib.corpus.reading import _dtype_json_type

    n = series.len()
    nothing = pl.Series("x", [None] * n, dtype=pl.String)
    if series.dtype == pl.String:
        return series, nothing, nothing, series
    if series.dtype == pl.Null or isinstance(series.dtype, (pl.Categorical, pl.Enum)):
        return series.cast(pl.String), nothing, nothing, series.cast(pl.String)
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
        texts_s = pl.Series(series.name, texts, dtype=pl.String)
        return texts_s, pl.Series("x", errors, dtype=pl.String), nothing, texts_s
    kind = _dtype_json_type(series.dtype)
    types = pl.Series("x", [None if null else kind for null in series.is_null().to_list()], dtype=pl.String)
    shown = pl.Series("x", [None if v is None else json.dumps(v, ensure_ascii=False, default=str)
                            for v in series.to_list()], dtype=pl.String)
    return pl.Series(series.name, [None] * n, dtype=pl.String), nothing, types, shown


def _as_key(series: pl.Series, column: str, path: Path) -> pl.Series:
    """An id or source column as strings (numbers and booleans written as JSON writes them)."""
    if series.dtype == pl.String:
        return series
    if series.dtype == pl.Binary:
        return pl.Series(series.name, [None if b is None else b.decode("utf-8", errors="replace")
                                       for b in series.to_list()], dtype=pl.String)
    try:
        return series.cast(pl.String)
    except Exception as exc:  # lists, structs ...: not a key
        raise ShardError(f"shard {path}: column {column!r} has type {series.dtype}, expected strings or numbers") \
            from exc


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
        return _as_key(df[column], column, path)
    return pl.Series(column, [None] * df.height, dtype=pl.String)


def _validate_batch(df: pl.DataFrame, bad: list[dict], st: _StreamState) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Validate one batch of a shard; returns its (kept, quarantine) rows and updates ``st``."""
    st.batches += 1
    for c in df.columns:
        if not c.startswith("__"):
            st.columns.setdefault(c, None)
    if df.height:
        if st.ids_from_content is None:  # decided by the first batch that has records
            st.ids_from_content = st.id_column not in df.columns
        st.text_seen |= st.text_column in df.columns
        st.source_seen |= bool(st.source_column) and st.source_column in df.columns
    for b in bad:  # records read with their bad bytes replaced count as records that have their keys
        if isinstance(b.get("obj"), dict):
            for c in b["obj"]:
                st.columns.setdefault(c, None)
            st.text_seen |= st.text_column in b["obj"]
            st.source_seen |= bool(st.source_column) and st.source_column in b["obj"]
    nothing = pl.Series("x", [None] * df.height, dtype=pl.String)
    if st.text_column in df.columns:
        texts, utf8_err, text_type, shown = _as_text(df[st.text_column])
    else:
        texts, utf8_err, text_type, shown = nothing, nothing, nothing, nothing
    # JSON lines: the reader tells the records without the key and those whose value is not a string
    issue = df["__text_issue"] if "__text_issue" in df.columns else nothing
    missing = issue == "missing"
    text_type = pl.DataFrame({"i": issue, "t": text_type}).select(
        pl.when(pl.col("i").is_not_null() & (pl.col("i") != "missing")).then(pl.col("i")).otherwise(pl.col("t"))
    ).to_series()
    from_content = st.ids_from_content is not False
    ids = None if from_content else _column_or_null(df, st.id_column, st.path)
    sources = _column_or_null(df, st.source_column, st.path) if st.source_column else None

    line = df["__line"].cast(pl.Int64) if "__line" in df.columns else pl.Series("x", [None] * df.height, dtype=pl.Int64)
    frame = pl.DataFrame({"row": df["__row"].cast(pl.Int64), "line": line, "raw_text": texts,
                          "utf8_error": utf8_err, "missing_text": missing.fill_null(False), "text_type": text_type,
                          "shown_text": shown})
    # a value that is not a string has no text (polars may have made a string of it)
    frame = frame.with_columns(pl.when(pl.col("text_type").is_null() & ~pl.col("missing_text"))
                               .then(pl.col("raw_text")).otherwise(None).alias("raw_text"))
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
        .when(pl.col("missing_text")).then(pl.lit("missing_text"))
        .when(pl.col("text_type").is_not_null()).then(pl.lit("text_not_string"))
        .when(pl.col("raw_text").is_null()).then(pl.lit("null_text"))
        .when(pl.col("n_chars") == 0).then(pl.lit("empty_text"))
        .when(pl.col("n_chars") > max_chars).then(pl.lit("too_long"))
        .when(pl.col("id").is_null() | (pl.col("id").str.len_chars() == 0)).then(pl.lit("missing_id"))
        .otherwise(pl.lit(None, dtype=pl.String))
    )
    detail = (
        pl.when(pl.col("utf8_error").is_not_null()).then(pl.col("utf8_error"))
        .when(pl.col("missing_text")).then(pl.lit(f"no {st.text_column!r} field"))
        .when(pl.col("text_type").is_not_null())
        .then(pl.format("{} is a JSON {}, not a string", pl.lit(repr(st.text_column)), pl.col("text_type")))
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
        "line",
        "id",
        "reason",
        "detail",
        pl.coalesce(pl.col("text"), pl.col("shown_text")).str.slice(0, _PREVIEW_CHARS).alias("text_preview"),
        pl.lit(None, dtype=pl.Binary).alias("raw"),
    ).cast(QUARANTINE_SCHEMA)
    if bad:
        bad_rows = []
        for b in bad:
            obj = b.get("obj") if isinstance(b.get("obj"), dict) else {}
            rid = obj.get(st.id_column)
            text = obj.get(st.text_column)
            bad_rows.append(
                {
                    "row": b["row"],
                    "line": b.get("line"),
                    "id": None if rid is None or isinstance(rid, (dict, list)) else str(rid).strip() or None,
                    "reason": b["reason"],
                    "detail": b["detail"],
                    "text_preview": None if text is None else str(text)[:_PREVIEW_CHARS],
                    "raw": b.get("raw"),
                }
            )
        quarantine = pl.concat([quarantine, pl.DataFrame(bad_rows, schema=QUARANTINE_SCHEMA)]).sort("row")
    st.rows_in += frame.height + len(bad)
    st.rows_parsed += df.height + sum(1 for b in bad if b.get("obj") is not None)
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
        for df, bad in iter_shard_batches(path, batch_rows, text_column=text_column,
                                          max_record_bytes=max_record_bytes(max_chars)):
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
    quarantine = pl.concat(quarantine_parts) if quarantine_parts else pl.DataFrame(schema=QUARANTINE_SCHEMA)
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
            storage.ParquetBatchWriter(quarantine_dest, QUARANTINE_SCHEMA) as quarantine_out:
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
