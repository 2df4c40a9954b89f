"""Shard discovery, validation (every quarantine reason, every fatal error) and the default corpus."""

from __future__ import annotations

import json

import polars as pl
import pytest

from conftest import make_docs, write_jsonl, write_parquet
from gem_assets.lib.corpus import bbc, shards, validation


def _jsonl_bytes(path, lines: list[bytes]):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_discover_shards_keys_and_filters(tmp_path):
    write_jsonl(tmp_path / "c" / "x.jsonl", make_docs(2))
    write_parquet(tmp_path / "c" / "sub" / "y.parquet", make_docs(2))
    (tmp_path / "c" / "notes.txt").write_text("not a shard")
    found = shards.discover_shards(str(tmp_path / "c" / "**" / "*"))
    assert list(found) == ["sub__y.parquet", "x.jsonl"]
    assert all(p.is_absolute() and p.is_file() for p in found.values())
    assert shards.discover_shards(str(tmp_path / "nothing" / "*.jsonl")) == {}


def test_clean_shard_is_kept_whole_and_normalized(tmp_path):
    rows = make_docs(5)
    rows[0]["text"] = "  Cafe\u0301 line one\r\nline two \t"
    path = write_jsonl(tmp_path / "s.jsonl", rows)
    res = validation.validate_shard(path, source_column="source")
    assert (res.rows_in, res.n_kept, res.n_quarantined) == (5, 5, 0)
    assert res.kept.columns == ["row", "id", "text", "n_chars", "source"]
    first = res.kept.row(0, named=True)
    assert first["text"] == "Caf\u00e9 line one\nline two"  # NFC, CRLF -> LF, stripped
    assert first["n_chars"] == len(first["text"])
    assert res.kept["source"].to_list() == [r["source"] for r in rows]
    assert not res.ids_from_content


def test_every_quarantine_reason_jsonl(tmp_path):
    good = make_docs(3)
    lines = [json.dumps(r).encode() for r in good]
    lines += [
        json.dumps({"id": "n1", "text": None}).encode(),
        json.dumps({"id": "e1", "text": ""}).encode(),
        json.dumps({"id": "w1", "text": " \n\t  "}).encode(),
        json.dumps({"id": "l1", "text": "x" * 101}).encode(),
        json.dumps({"id": None, "text": "no id here"}).encode(),
        json.dumps({"id": good[0]["id"], "text": "same id again"}).encode(),
        b'{"id": "u1", "text": "bad \xff\xfe bytes"}',
        b'{"id": "t1", "text": "a line cut sho',                      # 10: truncated, not valid JSON
        b'["id", "a1"]',                                                # 11: JSON, not an object
        json.dumps({"id": "x1", "text": 12345}).encode(),               # 12: a number where the text should be
        json.dumps({"id": "x2", "text": ["a", "list"]}).encode(),
        json.dumps({"id": "m1", "body": "no text field"}).encode(),     # 14
        b'{"id": "nan1", "text": NaN}',                                 # 15: a number too (as Python's json reads it)
    ]
    path = _jsonl_bytes(tmp_path / "bad.jsonl", lines)
    res = validation.validate_shard(path, max_chars=100)
    assert res.rows_in == 16 == res.n_kept + res.n_quarantined
    assert res.n_kept == 3
    by_id = {r["id"]: r for r in res.quarantine.iter_rows(named=True) if r["id"] is not None}
    assert by_id["n1"]["reason"] == "null_text"
    assert by_id["e1"]["reason"] == "empty_text"
    assert by_id["w1"]["reason"] == "empty_text"
    assert by_id["l1"]["reason"] == "too_long" and "101 characters" in by_id["l1"]["detail"]
    assert by_id["u1"]["reason"] == "invalid_utf8" and by_id["u1"]["row"] == 9
    assert by_id["u1"]["raw"] == lines[9]
    assert by_id[good[0]["id"]]["reason"] == "duplicate_id" and "row 0" in by_id[good[0]["id"]]["detail"]
    assert by_id["x1"]["reason"] == "text_not_string" and by_id["x1"]["detail"] == "'text' is a JSON number, not a string"
    assert by_id["x1"]["text_preview"] == "12345"
    assert by_id["x2"]["reason"] == "text_not_string" and "JSON array" in by_id["x2"]["detail"]
    assert by_id["m1"]["reason"] == "missing_text" and by_id["m1"]["detail"] == "no 'text' field"
    rows = {r["row"]: r for r in res.quarantine.iter_rows(named=True)}
    assert rows[10]["reason"] == "invalid_json" and rows[10]["line"] == 11 and rows[10]["raw"] == lines[10]
    assert "Unterminated string" in rows[10]["detail"]
    assert rows[11]["reason"] == "not_an_object" and rows[11]["detail"] == "a JSON array, not an object"
    assert by_id["nan1"]["reason"] == "text_not_string" and by_id["nan1"]["text_preview"] == "NaN"
    assert rows[4]["line"] == 5 and rows[4]["raw"] is None  # read, then refused: no raw bytes
    assert res.quarantine.filter(pl.col("reason") == "missing_id")["id"].to_list() == [None]
    assert res.reasons == {"invalid_utf8": 1, "invalid_json": 1, "not_an_object": 1, "unreadable_row_group": 0,
                           "missing_text": 1, "text_not_string": 3, "null_text": 1, "empty_text": 2,
                           "too_long": 1, "missing_id": 1, "duplicate_id": 1}
    assert res.quarantine["row"].to_list() == sorted(res.quarantine["row"].to_list())
    assert res.quarantine.columns == list(validation.QUARANTINE_SCHEMA)
    # the same records alone in a batch each, or in one batch, give the same quarantine
    for batch_rows in (1, 4):
        again = validation.validate_shard(path, max_chars=100, batch_rows=batch_rows)
        assert again.quarantine.equals(res.quarantine) and again.kept.equals(res.kept)


def test_text_not_a_string_in_a_whole_batch_or_a_parquet_column(tmp_path):
    """A batch (or a Parquet column) holding only numbers: each is quarantined, not made a string."""
    path = write_jsonl(tmp_path / "n.jsonl", [{"id": "a", "text": 1}, {"id": "b", "text": 2.5},
                                             {"id": "c", "text": None}, {"id": "d"}])
    res = validation.validate_shard(path)
    assert res.quarantine["reason"].to_list() == ["text_not_string", "text_not_string", "null_text", "missing_text"]
    # mixed with strings in one batch (polars would make "12345" and "true" of them): told apart from a
    # string that looks like a number
    mixed = write_jsonl(tmp_path / "m.jsonl", [{"id": "s", "text": "12345"}, {"id": "n", "text": 12345},
                                               {"id": "t", "text": True}, {"id": "o", "text": {"a": 1}},
                                               {"id": "l", "text": "[not json]"}])
    res = validation.validate_shard(mixed)
    assert res.kept["id"].to_list() == ["s", "l"]
    assert res.quarantine.select("id", "detail", "text_preview").rows() == [
        ("n", "'text' is a JSON number, not a string", "12345"), ("t", "'text' is a JSON boolean, not a string", "true"),
        ("o", "'text' is a JSON object, not a string", '{"a": 1}')]
    pq = write_parquet(tmp_path / "n.parquet", [{"id": "a", "text": 1}, {"id": "b", "text": None}])
    res = validation.validate_shard(pq)
    assert res.quarantine.select("reason", "detail", "line").rows() == [
        ("text_not_string", "'text' is a JSON number, not a string", None), ("null_text", None, None)]


def test_unreadable_parquet_row_group_is_quarantined_and_the_others_kept(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as papq

    path = tmp_path / "rg.parquet"
    docs = make_docs(30)
    papq.write_table(pa.table({"id": [d["id"] for d in docs], "text": [d["text"] for d in docs]}), path,
                     row_group_size=10, compression="none")
    meta = papq.ParquetFile(path).metadata.row_group(1).column(1)
    data = bytearray(path.read_bytes())
    start = meta.dictionary_page_offset or meta.data_page_offset
    data[start:start + 12] = b"\xff" * 12  # the page header of row group 1's text column
    path.write_bytes(bytes(data))
    res = validation.validate_shard(path, batch_rows=4)
    assert (res.rows_in, res.n_kept, res.n_quarantined) == (30, 20, 10)
    assert res.quarantine["row"].to_list() == list(range(10, 20))
    assert set(res.quarantine["reason"]) == {"unreadable_row_group"}
    assert res.quarantine["detail"][0].startswith("row group 1 of 3 cannot be decoded")
    assert res.kept["id"].to_list() == [d["id"] for d in docs[:10] + docs[20:]]


def test_a_line_too_long_to_read_is_quarantined_from_its_first_bytes(tmp_path):
    big = json.dumps({"id": "big", "text": "y" * (validation.max_record_bytes(10) + 10)}).encode()
    path = _jsonl_bytes(tmp_path / "big.jsonl", [b'{"id": "a", "text": "ok"}', big, b'{"id": "b", "text": "ok too"}'])
    res = validation.validate_shard(path, max_chars=10)
    assert res.kept["id"].to_list() == ["a", "b"]
    row = res.quarantine.row(0, named=True)
    assert (row["row"], row["line"], row["reason"]) == (1, 2, "too_long")
    assert row["raw"] == big[:1024] and f"record of {len(big) + 1} bytes" in row["detail"]


def test_duplicate_keeps_first_valid_occurrence(tmp_path):
    rows = [{"id": "x", "text": "   "}, {"id": "x", "text": "first valid"}, {"id": "x", "text": "second"}]
    res = validation.validate_shard(write_jsonl(tmp_path / "d.jsonl", rows))
    assert res.kept["text"].to_list() == ["first valid"]
    assert res.quarantine["reason"].to_list() == ["empty_text", "duplicate_id"]


def test_invalid_utf8_in_parquet_binary_column(tmp_path):
    df = pl.DataFrame({"id": ["a", "b"], "text": [b"fine text", b"broken \xc3\x28 bytes"]},
                      schema={"id": pl.String, "text": pl.Binary})
    path = tmp_path / "bin.parquet"
    df.write_parquet(path)
    res = validation.validate_shard(path)
    assert res.kept["id"].to_list() == ["a"]
    assert res.quarantine.row(0, named=True)["reason"] == "invalid_utf8"


def test_content_ids_when_id_column_absent(tmp_path):
    rows = [{"text": "alpha beta"}, {"text": "gamma"}, {"text": "alpha beta"}]
    res = validation.validate_shard(write_parquet(tmp_path / "noid.parquet", rows))
    assert res.ids_from_content
    assert res.kept["id"].to_list() == [shards.content_id("alpha beta"), shards.content_id("gamma")]
    assert res.quarantine["reason"].to_list() == ["duplicate_id"]  # exact duplicate text


def test_integer_ids_are_strings(tmp_path):
    res = validation.validate_shard(write_jsonl(tmp_path / "i.jsonl", [{"id": 7, "text": "x"}, {"id": 8, "text": "y"}]))
    assert res.kept["id"].to_list() == ["7", "8"]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_missing_text_column_names_column_and_file(tmp_path, suffix):
    rows = [{"id": "a", "body": "text under another name"}]
    path = (write_jsonl if suffix == ".jsonl" else write_parquet)(tmp_path / f"shard{suffix}", rows)
    with pytest.raises(shards.ShardError) as err:
        validation.validate_shard(path, text_column="text")
    msg = str(err.value)
    assert "'text'" in msg and str(path) in msg and "GEM_TEXT_COLUMN" in msg and "body" in msg


def test_missing_source_column_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [{"id": "a", "text": "t"}])
    with pytest.raises(shards.ShardError, match="source column 'label' not found"):
        validation.validate_shard(path, source_column="label")


def test_corrupt_files_fail_with_clear_message(tmp_path):
    """A shard that cannot be read at all fails whole; one bad line does not."""
    import gzip

    bad_parquet = tmp_path / "broken.parquet"
    bad_parquet.write_bytes(b"PAR1 this is not parquet at all")
    with pytest.raises(shards.ShardError, match=r"corrupt shard .*broken\.parquet.*Parquet"):
        validation.validate_shard(bad_parquet)
    zipped = tmp_path / "zipped.jsonl"
    zipped.write_bytes(gzip.compress(b'{"id": "a", "text": "ok"}\n'))
    with pytest.raises(shards.ShardError, match=r"zipped\.jsonl is gzip-compressed, not JSON lines.*decompress it"):
        validation.validate_shard(zipped)
    array = tmp_path / "array.json"  # a JSON array, pretty-printed: no line is a JSON object
    array.write_text(json.dumps([{"id": "a", "text": "ok"}, {"id": "b", "text": "fine"}], indent=2))
    with pytest.raises(shards.ShardError, match=r"none of its 10 records is a JSON object \(line 1: invalid_json"):
        validation.validate_shard(array)
    with pytest.raises(shards.ShardError, match="does not exist"):
        validation.validate_shard(tmp_path / "missing.jsonl")
    truncated = _jsonl_bytes(tmp_path / "broken.jsonl", [b'{"id": "a", "text": "ok"}', b'{"id": "b", "text": '])
    res = validation.validate_shard(truncated)
    assert res.kept["id"].to_list() == ["a"] and res.quarantine["reason"].to_list() == ["invalid_json"]


def test_blank_lines_are_not_records(tmp_path):
    path = _jsonl_bytes(tmp_path / "b.jsonl", [b'{"id": "a", "text": "x"}', b"", b"   ", b'{"id": "b", "text": "y"}'])
    res = validation.validate_shard(path)
    assert res.rows_in == 2 and res.n_kept == 2


def test_default_corpus_written_once(tmp_path):
    pattern = bbc.ensure_default_corpus(tmp_path / "corpus")
    found = shards.discover_shards(pattern)
    assert len(found) == 4
    total, sources = 0, set()
    for path in found.values():
        res = validation.validate_shard(path, source_column="source")
        assert res.n_quarantined == 0
        total += res.n_kept
        sources |= set(res.kept["source"].unique().to_list())
    assert total == 2225
    assert sources == {"business", "entertainment", "politics", "sports", "tech"}
    mtimes = {k: p.stat().st_mtime_ns for k, p in found.items()}
    assert bbc.ensure_default_corpus(tmp_path / "corpus") == pattern
    assert {k: p.stat().st_mtime_ns for k, p in found.items()} == mtimes  # not rewritten
    assert not [p for p in (tmp_path / "corpus").iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_empty_and_all_bad_shards_are_accounted(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    res = validation.validate_shard(empty)
    assert (res.rows_in, res.n_kept, res.n_quarantined) == (0, 0, 0)
    allbad = _jsonl_bytes(tmp_path / "allbad.jsonl", [b'{"id": "a", "text": "\xff"}', b'{"id": "b", "text": "\xfe"}'])
    res = validation.validate_shard(allbad)
    assert (res.rows_in, res.n_kept, res.n_quarantined) == (2, 0, 2)
    assert res.quarantine["id"].to_list() == ["a", "b"] and set(res.quarantine["reason"]) == {"invalid_utf8"}


def test_bbc_news_is_decoded_as_utf8_with_a_latin1_fallback():
    from gem_assets.lib.corpus.bbc import read_bbc_news

    text = " ".join(read_bbc_news()["text"].to_list())
    assert "£" in text and "Â£" not in text   # 646 files hold a UTF-8 pound sign
