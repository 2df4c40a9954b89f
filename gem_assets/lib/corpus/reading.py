"""Reading one shard in batches of records: JSONL lines or Parquet rows, never the whole file.

A record that cannot be read does not stop its shard: it is returned apart, with its record
index, its line number, its first bytes and a reason (``invalid_utf8``, ``invalid_json``,
``not_an_object``, ``too_long``, ``unreadable_row_group``), and the other records go on. Only a
shard that cannot be read at all raises :class:`~gem_assets.lib.corpus.shards.ShardError`: a
missing file, an unknown suffix, a compressed or binary file under a JSON-lines suffix, a JSON-lines
file of which no line is a JSON object (a JSON array file, say), a file that is not Parquet, or
a Parquet file none of whose row groups can be decoded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import polars as pl

from gem_assets.lib.corpus.shards import SHARD_SUFFIXES, ShardError
from gem_assets.lib.io import storage

__all__ = ["DEFAULT_BATCH_ROWS", "RAW_PREVIEW_BYTES", "READ_REASONS", "iter_shard_batches", "json_type"]


#: Records per batch when a shard is streamed (JSONL lines or Parquet rows): memory holds one
#: batch of a shard at a time, whatever the shard's size.
DEFAULT_BATCH_ROWS = 65_536

#: Bytes of an unreadable record kept with it in the quarantine (its ``raw`` column).
RAW_PREVIEW_BYTES = 1024

#: Reasons a record cannot be read, in the order they are tested.
READ_REASONS = ("invalid_utf8", "invalid_json", "not_an_object", "too_long", "unreadable_row_group")

#: First bytes of files that are not JSON lines, whatever their suffix says.
_MAGIC = (
    (b"\x1f\x8b", "gzip-compressed"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed"),
    (b"BZh", "bzip2-compressed"),
    (b"\xfd7zXZ\x00", "xz-compressed"),
    (b"PK\x03\x04", "a zip archive"),
    (b"PAR1", "a Parquet file"),
    (b"\xff\xfe", "UTF-16 text"),
    (b"\xfe\xff", "UTF-16 text"),
)

_BOM = b"\xef\xbb\xbf"

# the strings polars makes of JSON values that are not strings, when a column mixes them with strings
# (12345 -> "12345", true -> "true", [1, 2] -> "[1, 2]", {"a": 1} -> '{"a": 1}'): candidates re-read with json
_COERCED = r"(?s)^(-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?|true|false|\[.*\]|\{.*\})$"


def json_type(value) -> str:
    """The JSON name of a parsed value's type: ``string``, ``number``, ``boolean``, ``array``,
    ``object`` or ``null``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _dtype_json_type(dtype) -> str:
    """The JSON type a polars column of ``dtype`` was read from."""
    if dtype == pl.Boolean:
        return "boolean"
    if dtype.is_numeric():
        return "number"
    if isinstance(dtype, (pl.List, pl.Array)):
        return "array"
    if isinstance(dtype, pl.Struct):
        return "object"
    return str(dtype)


def _bad(row: int, line: int | None, reason: str, detail: str, raw: bytes | None, obj=None) -> dict:
    return {"row": row, "line": line, "reason": reason, "detail": detail,
            "raw": None if raw is None else bytes(raw[:RAW_PREVIEW_BYTES]), "obj": obj}


def _read_ndjson(lines: list[bytes]) -> pl.DataFrame:
    return pl.read_ndjson(b"\n".join(lines), infer_schema_length=None)


def _frame_from_objects(objs: list[dict]) -> pl.DataFrame:
    """A frame of parsed JSON objects, one column a key, whatever types its values mix: a column of
    strings, of integers, of numbers or of booleans keeps its type; any other mix is written as
    strings (JSON for the values that are not strings), as polars does when it can."""
    keys: dict[str, None] = {}
    for o in objs:
        for k in o:
            keys.setdefault(k, None)
    cols = []
    for k in keys:
        vals = [o.get(k) for o in objs]
        kinds = {json_type(v) for v in vals if v is not None}
        series = None
        if kinds <= {"string"}:
            series = pl.Series(k, vals, dtype=pl.String if kinds else pl.Null)
        elif kinds == {"boolean"}:
            series = pl.Series(k, vals, dtype=pl.Boolean)
        elif kinds == {"number"}:
            try:
                series = pl.Series(k, vals, dtype=pl.Int64 if all(isinstance(v, int) for v in vals if v is not None)
                                   else pl.Float64)
            except (OverflowError, TypeError, ValueError):
                series = None
        if series is None:
            series = pl.Series(k, [v if v is None or isinstance(v, str) else json.dumps(v, ensure_ascii=False)
                                   for v in vals], dtype=pl.String)
        cols.append(series)
    return pl.DataFrame(cols) if cols else pl.DataFrame(height=len(objs))


def _text_issues(df: pl.DataFrame, lines: list[bytes], text_column: str) -> pl.Series:
    """Per record: ``None``, ``"missing"`` (no ``text_column`` key) or the JSON type of a text value
    that is not a string (``number``, ``boolean``, ``array``, ``object``)."""
    n = df.height
    if text_column not in df.columns:
        return pl.Series("__text_issue", ["missing"] * n, dtype=pl.String)
    col = df[text_column]
    issues: list[str | None] = [None] * n
    if col.dtype == pl.String:
        check = (col.is_null() | col.str.contains(_COERCED)).to_list()
    elif col.dtype == pl.Null:
        check = [True] * n
    else:  # the whole batch holds one non-string JSON type: only nulls need a second look
        kind = _dtype_json_type(col.dtype)
        check = col.is_null().to_list()
        issues = [None if c else kind for c in check]
    for i, again in enumerate(check):
        if again:
            obj = json.loads(lines[i])
            if text_column not in obj:
                issues[i] = "missing"
            elif obj[text_column] is not None and not isinstance(obj[text_column], str):
                issues[i] = json_type(obj[text_column])
    return pl.Series("__text_issue", issues, dtype=pl.String)


def _parse_jsonl_lines(path: Path, rows: list[int], line_nos: list[int], lines: list[bytes | None],
                       oversize: dict[int, int], text_column: str | None,
                       max_record_bytes: int | None) -> tuple[pl.DataFrame, list[dict], int]:
    """Parse a batch of non-blank JSONL lines; records that cannot be read are returned apart.

    Parameters
    ----------
    path : Path
        The shard (for messages).
    rows, line_nos : list of int
        Record index in the file, and 1-based line number, of each line.
    lines : list of bytes
        The lines without their line ending (the first bytes of an over-long one).
    oversize : dict of int to int
        Position in ``lines`` to the length in bytes of lines longer than ``max_record_bytes``.
    text_column : str, optional
        When given, ``__text_issue`` tells the records without that key or whose value is not a
        JSON string (:func:`_text_issues`).

    Returns
    -------
    df : DataFrame
        The records that are JSON objects, with ``__row`` (record index) and ``__line`` (line
        number) and, given ``text_column``, ``__text_issue``.
    bad : list of dict
        ``{"row", "line", "reason", "detail", "raw", "obj"}`` of each record that is not valid
        UTF-8 (``obj``: the object read with the bad bytes replaced, or ``None``), not valid JSON,
        not a JSON object or longer than ``max_record_bytes``.
    objects : int
        Records that are JSON objects (those of ``df`` and the invalid UTF-8 records whose
        replaced text reads as one).
    """
    bad: list[dict] = []
    good: list[int] = []
    for j, ln in enumerate(lines):
        if j in oversize:
            bad.append(_bad(rows[j], line_nos[j], "too_long",
                            f"record of {oversize[j]} bytes > {max_record_bytes} bytes read per record", ln))
        else:
            good.append(j)
    try:
        b"\n".join(lines[j] for j in good).decode("utf-8")
    except UnicodeDecodeError:
        still = []
        for j in good:
            try:
                lines[j].decode("utf-8")
            except UnicodeDecodeError as exc:
                try:
                    obj = json.loads(lines[j].decode("utf-8", errors="replace"))
                except ValueError:
                    obj = None
                bad.append(_bad(rows[j], line_nos[j], "invalid_utf8", f"invalid UTF-8 byte at offset {exc.start}",
                                lines[j], obj if isinstance(obj, dict) else None))
                continue
            still.append(j)
        good = still
    objects = sum(1 for b in bad if b["obj"] is not None)

    df = None
    kept = good
    issues = None
    if good:
        try:
            df = _read_ndjson([lines[j] for j in good])
        except Exception:  # polars raises several error types: read the batch with json, record by record
            kept, objs = [], []
            for j in good:
                try:
                    obj = json.loads(lines[j])
                except ValueError as exc:
                    msg = getattr(exc, "msg", str(exc))
                    col = getattr(exc, "colno", None)
                    bad.append(_bad(rows[j], line_nos[j], "invalid_json",
                                    f"{msg} (column {col})" if col is not None else msg, lines[j]))
                    continue
                if not isinstance(obj, dict):
                    bad.append(_bad(rows[j], line_nos[j], "not_an_object", f"a JSON {json_type(obj)}, not an object",
                                    lines[j]))
                    continue
                kept.append(j)
                objs.append(obj)
            df = _frame_from_objects(objs)
            if text_column is not None:
                issues = pl.Series("__text_issue", [
                    "missing" if text_column not in o else
                    None if o[text_column] is None or isinstance(o[text_column], str) else json_type(o[text_column])
                    for o in objs], dtype=pl.String)
        if df.height != len(kept):
            raise ShardError(f"corrupt shard {path}: {len(kept)} JSON lines but {df.height} records were read")
    else:
        df = pl.DataFrame()
    objects += df.height
    df = df.with_columns(pl.Series("__row", [rows[j] for j in kept], dtype=pl.Int64),
                         pl.Series("__line", [line_nos[j] for j in kept], dtype=pl.Int64))
    if text_column is not None:
        df = df.with_columns(issues if issues is not None else _text_issues(df, [lines[j] for j in kept], text_column))
    bad.sort(key=lambda b: b["row"])
    return df, bad, objects


def _check_head(path: Path, head: bytes) -> None:
    """Raise for a file under a JSON-lines suffix whose first bytes say it is something else."""
    for magic, what in _MAGIC:
        if head.startswith(magic):
            hint = ("rename it with the .parquet suffix" if what == "a Parquet file"
                    else "re-encode it as UTF-8" if what == "UTF-16 text"
                    else "decompress it (JSON-lines shards are read uncompressed)")
            raise ShardError(f"shard {path} is {what}, not JSON lines (its first bytes are {head[:len(magic)]!r}): "
                             f"{hint}")


def _iter_jsonl(path: Path, batch_rows: int, text_column: str | None,
                max_record_bytes: int | None) -> Iterator[tuple[pl.DataFrame, list[dict]]]:
    """Batches of at most ``batch_rows`` records of a JSONL shard (blank lines are not records)."""
    rows: list[int] = []
    line_nos: list[int] = []
    lines: list[bytes] = []
    oversize: dict[int, int] = {}
    n = line_no = objects = 0
    first_bad: dict | None = None
    limit = int(max_record_bytes) if max_record_bytes else None

    def flush():
        nonlocal objects, first_bad
        df, bad, k = _parse_jsonl_lines(path, rows, line_nos, lines, oversize, text_column, limit)
        objects += k
        if first_bad is None and bad:
            first_bad = bad[0]
        return df, bad

    with storage.open_binary(path) as f:
        head = f.read(8)
        _check_head(path, head)
        f.seek(0)
        while True:
            raw = f.readline(limit + 1) if limit else f.readline()
            if not raw:
                break
            line_no += 1
            if line_no == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM):]
            size = None
            if limit and len(raw) > limit and not raw.endswith(b"\n"):
                size = len(raw)  # over-long: keep its first bytes, skip the rest of the line
                while more := f.readline(1 << 20):
                    size += len(more)
                    if more.endswith(b"\n"):
                        break
                raw = raw[:RAW_PREVIEW_BYTES]
            ln = raw.rstrip(b"\n").rstrip(b"\r")
            if size is None and not ln.strip():
                continue
            if size is not None:
                oversize[len(lines)] = size
            rows.append(n)
            line_nos.append(line_no)
            lines.append(ln)
            n += 1
            if len(lines) >= batch_rows:
                yield flush()
                rows, line_nos, lines, oversize = [], [], [], {}
    if lines:
        yield flush()
    if n and not objects:
        b = first_bad or {}
        raise ShardError(f"corrupt shard {path}: none of its {n} records is a JSON object (line {b.get('line')}: "
                         f"{b.get('reason')}, {b.get('detail')}); a JSON-lines shard holds one JSON object a line")


def _iter_parquet(path: Path, batch_rows: int, text_column: str | None,
                  max_record_bytes: int | None) -> Iterator[tuple[pl.DataFrame, list[dict]]]:
    """Batches of at most ``batch_rows`` rows of a Parquet shard (pyarrow record batches), one row
    group at a time: the rows of a row group that cannot be decoded are returned apart
    (``unreadable_row_group``) and the next row group is read."""
    import pyarrow.parquet as pq

    with storage.open_binary(path) as f:
        try:
            pf = pq.ParquetFile(f)
            groups = [pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)]
        except Exception as exc:
            raise ShardError(f"corrupt shard {path}: cannot read it as Parquet ({exc})") from exc
        offset = 0
        readable = 0
        first_error = None
        for rg, n_rows in enumerate(groups):
            start, end = offset, offset + n_rows
            try:
                for batch in pf.iter_batches(batch_size=batch_rows, row_groups=[rg]):
                    df = pl.from_arrow(batch)
                    df = df.with_row_index("__row", offset=offset).with_columns(pl.col("__row").cast(pl.Int64))
                    offset += df.height
                    yield df, []
                readable += 1
            except Exception as exc:
                first_error = first_error or exc
                detail = f"row group {rg} of {len(groups)} cannot be decoded: {str(exc).strip().splitlines()[0]}"
                while offset < end:  # the rows of the group not read yet, a batch at a time
                    stop = min(end, offset + batch_rows)
                    yield pl.DataFrame({"__row": pl.Series([], dtype=pl.Int64)}), [
                        _bad(r, None, "unreadable_row_group", detail, None) for r in range(offset, stop)]
                    offset = stop
            offset = end
        if groups and not readable and sum(groups):
            raise ShardError(f"corrupt shard {path}: none of its {len(groups)} row groups can be decoded "
                             f"({first_error})")


def iter_shard_batches(path, batch_rows: int = DEFAULT_BATCH_ROWS, text_column: str | None = None,
                       max_record_bytes: int | None = None) -> Iterator[tuple[pl.DataFrame, list[dict]]]:
    """Read one shard in batches of records, never whole.

    Parameters
    ----------
    path : path or URL
        A ``.jsonl``/``.ndjson``/``.json`` or ``.parquet`` file; a local path, a ``file://`` URL
        or any fsspec URL / :class:`upath.UPath` (``s3://``, ``gs://``, ``memory://`` ...).
    batch_rows : int
        Records per batch (JSONL lines or Parquet rows).
    text_column : str, optional
        JSONL: add ``__text_issue`` to each batch, telling the records without this key
        (``"missing"``) and those whose value is not a JSON string (its JSON type: ``number``,
        ``boolean``, ``array``, ``object``), which polars would otherwise turn into strings.
    max_record_bytes : int, optional
        JSONL: a line longer than this is not held in memory: its first bytes are returned as a
        ``too_long`` record.

    Yields
    ------
    df : DataFrame
        The batch's readable records, with an ``__row`` column (record index in the file) and,
        for JSONL, ``__line`` (1-based line number; blank lines are not records) and, given
        ``text_column``, ``__text_issue``.
    bad : list of dict
        The batch's records that cannot be read: ``{"row", "line", "reason", "detail", "raw",
        "obj"}`` with ``reason`` one of :data:`READ_REASONS`, ``raw`` the first
        :data:`RAW_PREVIEW_BYTES` bytes of the record (JSONL) and ``obj`` the object read from an
        invalid UTF-8 line with its bad bytes replaced (``None`` otherwise). Parquet binary text
        columns are checked for UTF-8 in :func:`~gem_assets.lib.corpus.validation.validate_shard`.

    Raises
    ------
    ShardError
        If the file is missing, has an unknown suffix or cannot be read at all (see the module).
    ValueError
        If ``batch_rows`` < 1.
    """
    if int(batch_rows) < 1:
        raise ValueError(f"batch_rows must be >= 1, got {batch_rows}")
    if max_record_bytes is not None and int(max_record_bytes) < 1:
        raise ValueError(f"max_record_bytes must be >= 1, got {max_record_bytes}")
    path = storage.as_path(path)
    if not path.is_file():
        raise ShardError(f"shard {path} does not exist")
    fmt = SHARD_SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise ShardError(
            f"shard {path}: unknown suffix {path.suffix!r}; expected one of {sorted(SHARD_SUFFIXES)}"
        )
    reader = _iter_jsonl if fmt == "jsonl" else _iter_parquet
    yield from reader(path, int(batch_rows), text_column, max_record_bytes)
