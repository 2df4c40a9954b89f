"""Streaming shard I/O (issue 8): batch-by-batch validation and embedding give the same result as a
whole read, every document is counted in and out, and bad parameters are refused."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from conftest import HashingEmbedder, make_docs, write_jsonl, write_parquet
from gem_assets.lib.corpus import shards, validation
from gem_assets.lib.io import streaming


def _messy_rows() -> list[dict]:
    """Good rows with every quarantine reason spread over the file (duplicates far apart)."""
    rows = make_docs(23, seed=5)
    rows[2]["text"] = None
    rows[5]["text"] = "   "
    rows[8]["text"] = "x" * 300
    rows[11]["id"] = None
    rows[14]["id"] = rows[1]["id"]          # duplicate of a row several batches earlier
    rows[20]["id"] = rows[19]["id"]         # duplicate of the row just before (batch edge at 20 for size 4/5)
    return rows


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
@pytest.mark.parametrize("batch_rows", [1, 3, 4, 7, 1000])
def test_batched_validation_equals_whole_read(tmp_path, fmt, batch_rows):
    rows = _messy_rows()
    path = (write_jsonl if fmt == "jsonl" else write_parquet)(tmp_path / f"s.{fmt}", rows)
    whole = validation.validate_shard(path, source_column="source", max_chars=200, batch_rows=10_000)
    part = validation.validate_shard(path, source_column="source", max_chars=200, batch_rows=batch_rows)
    assert part.kept.equals(whole.kept)
    assert part.quarantine.equals(whole.quarantine)
    assert (part.rows_in, part.reasons) == (whole.rows_in, whole.reasons)
    # hand-checked against _messy_rows: 23 in, 6 quarantined, one per reason except invalid_utf8
    assert whole.rows_in == 23 and whole.n_kept == 17
    assert {r: n for r, n in whole.reasons.items() if n} == {"null_text": 1, "empty_text": 1, "too_long": 1,
                                                             "missing_id": 1, "duplicate_id": 2}
    assert list(whole.reasons) == list(validation.QUARANTINE_REASONS)
    dups = whole.quarantine.filter(pl.col("reason") == "duplicate_id")
    assert dups["row"].to_list() == [14, 20]
    assert dups["detail"].to_list() == ["id first seen at row 1", "id first seen at row 19"]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_validate_shard_to_streams_the_same_rows_to_disk(tmp_path, fmt):
    rows = _messy_rows()
    path = (write_jsonl if fmt == "jsonl" else write_parquet)(tmp_path / f"s.{fmt}", rows)
    whole = validation.validate_shard(path, source_column="source", max_chars=200)
    docs, quar = tmp_path / "out" / "docs.parquet", tmp_path / "out" / "q.parquet"
    summary = validation.validate_shard_to(path, docs, quar, source_column="source", max_chars=200, batch_rows=4)
    assert summary.batches == 6  # ceil(23 / 4)
    assert pl.read_parquet(docs).equals(whole.kept)
    assert pl.read_parquet(quar).equals(whole.quarantine)
    assert summary.rows_in == summary.n_kept + summary.n_quarantined == 23
    assert summary.kept_chars == int(whole.kept["n_chars"].sum())
    assert summary.mean_chars == pytest.approx(whole.kept["n_chars"].mean())
    assert summary.reasons == whole.reasons
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temporary files left


def test_invalid_utf8_lines_in_later_batches_keep_their_record_index(tmp_path):
    lines = [json.dumps(r).encode() for r in make_docs(6)]
    lines[4] = b'{"id": "u", "text": "bad \xff"}'
    path = tmp_path / "u.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n\n")
    for batch_rows in (1, 2, 100):
        res = validation.validate_shard(path, batch_rows=batch_rows)
        assert res.rows_in == 6 and res.n_kept == 5
        assert res.quarantine.select("row", "id", "reason").rows() == [(4, "u", "invalid_utf8")]


def test_text_key_missing_from_a_whole_batch_is_missing_text_not_an_error(tmp_path):
    rows = [{"id": "a", "body": "no text key"}, {"id": "b", "body": "none here either"},
            {"id": "c", "text": "finally a text"}]
    path = write_jsonl(tmp_path / "m.jsonl", rows)
    whole = validation.validate_shard(path)
    part = validation.validate_shard(path, batch_rows=2)  # first batch has no 'text' column at all
    assert part.kept.equals(whole.kept) and part.kept["id"].to_list() == ["c"]
    assert part.quarantine["reason"].to_list() == whole.quarantine["reason"].to_list() == ["missing_text"] * 2
    with pytest.raises(shards.ShardError, match="text column 'text' not found"):
        validation.validate_shard(write_jsonl(tmp_path / "none.jsonl", rows[:2]), batch_rows=1)


def test_failed_stream_leaves_no_output(tmp_path):
    """A shard that fails after batches were written (no record has the text column: known at its end)."""
    path = write_jsonl(tmp_path / "broken.jsonl", [{"id": f"d{i}", "body": "text under another name"}
                                                   for i in range(5)])
    docs, quar = tmp_path / "docs.parquet", tmp_path / "q.parquet"
    with pytest.raises(shards.ShardError, match="text column 'text' not found"):
        validation.validate_shard_to(path, docs, quar, batch_rows=2)
    assert list(tmp_path.iterdir()) == [path]  # neither file written, no temporary left


@pytest.mark.parametrize("bad", [0, -3])
def test_bad_batch_sizes_are_refused(tmp_path, bad):
    path = write_jsonl(tmp_path / "s.jsonl", make_docs(3))
    with pytest.raises(ValueError, match="batch_rows must be >= 1"):
        validation.validate_shard(path, batch_rows=bad)
    docs = write_parquet(tmp_path / "d.parquet", make_docs(3))
    with pytest.raises(ValueError, match="batch_rows must be >= 1"):
        list(streaming.iter_selected_rows(docs, batch_rows=bad))
    with pytest.raises(ValueError, match="max_chars must be >= 1"):
        validation.validate_shard(path, max_chars=0)


def test_iter_selected_rows_picks_exactly_the_positions(tmp_path):
    path = write_parquet(tmp_path / "d.parquet", make_docs(50))
    picks = np.array([0, 3, 4, 17, 18, 19, 49])
    got = [df for df in streaming.iter_selected_rows(path, picks, columns=["id"], batch_rows=4)]
    assert [df.height for df in got] == [2, 1, 3, 1]  # batches [0-3], [4-7], [16-19], [48-49]
    assert pl.concat(got)["id"].to_list() == [f"d{i:04d}" for i in picks]
    assert pl.concat(list(streaming.iter_selected_rows(path, None, batch_rows=7))).height == 50
    assert list(streaming.iter_selected_rows(path, [], batch_rows=7)) == []
    with pytest.raises(ValueError, match="strictly increasing"):
        list(streaming.iter_selected_rows(path, [3, 3]))
    with pytest.raises(ValueError, match="past the end"):
        list(streaming.iter_selected_rows(path, [50]))


def test_embed_selected_equals_embedding_all_at_once(tmp_path):
    rows = make_docs(37)
    path = write_parquet(tmp_path / "d.parquet", [{"row": i, **r} for i, r in enumerate(rows)])
    emb = HashingEmbedder()
    picks = np.array([1, 2, 8, 9, 10, 30, 36])
    calls = []

    def one(text):  # the hashing embedder's vector of a text alone (its output depends on batch position)
        return emb.encode([text])[0]

    def encode(texts, desc=""):
        calls.append(len(texts))
        return np.array([one(t) for t in texts], dtype=np.float32).reshape(len(texts), emb.dim)

    vectors, index = streaming.embed_selected(encode, path, picks, index_columns=("row", "id", "nope"), batch_rows=8)
    assert calls == [2, 3, 1, 1]  # one call per batch of 8 rows read, none larger than the batch
    assert index.columns == ["row", "id"] and index["row"].to_list() == picks.tolist()
    np.testing.assert_array_equal(vectors, np.array([one(rows[i]["text"]) for i in picks]))
    vectors, index = streaming.embed_selected(encode, path, [], batch_rows=8)
    assert vectors.shape == (0, emb.dim) and index.height == 0 and index.columns == ["row", "id"]
    with pytest.raises(ValueError, match="no column 'body'"):
        streaming.embed_selected(encode, path, text_column="body")


# --------------------------------------------------------------------------- device="auto"
import torch  # noqa: E402

from gem_assets.lib.teacher.embed import resolve_device  # noqa: E402
from gem_assets.lib.student.classifier import StudentClassifier  # noqa: E402

CUDA = torch.cuda.is_available()


def _student_data():
    rows = make_docs(120, seed=7)
    labels = np.array([["food", "money", "sport", "tech"].index(r["source"]) for r in rows])
    return [r["text"] for r in rows], labels


def test_device_auto_resolves_to_what_is_present():
    expected = "cuda" if CUDA else "cpu"
    assert resolve_device("auto") == expected
    texts, labels = _student_data()
    model = StudentClassifier(4, dim=8, buckets=1 << 12, epochs=2, random_state=0, device="auto").fit(texts, labels)
    assert model._embedding.weight.device.type == expected
    if not CUDA:
        with pytest.raises(ValueError, match="CUDA is not available"):
            StudentClassifier(4, dim=8, buckets=1 << 12, epochs=1, device="cuda").fit(texts, labels)
    with pytest.raises(ValueError, match="device must be 'cpu', 'cuda' or 'auto'"):
        StudentClassifier(4, device="tpu")
