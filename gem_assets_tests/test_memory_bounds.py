"""Issue 8: what grows with the corpus is bounded by documented caps (vocabulary counting, samples).

Each test checks a bound that holds whatever the corpus size: the lossy counter never holds more
than its capacity and never overcounts, a bottom-k sample is uniform, seeded, order-free and of the
cap's size, and the taxonomy statistics' working set does not grow with the number of shards.
"""

from __future__ import annotations

import string
import tracemalloc
from collections import Counter

import numpy as np
import pytest

from gem_assets.lib.util import allocator
from gem_assets.lib.taxonomy import gis
from gem_assets.lib.mixing.corpus_index import CorpusIndex, bottom_k_by_priority, corpus_index, read_index_texts
from gem_assets.lib.mixing.curated import CuratedSample, sample_curated_mixture, write_curated_parts
from gem_assets.lib.mixing.streams import document_tokens, domain_streams, proxy_streams, split_documents, texts_to_streams
from gem_assets.lib.mixing import sampling
from gem_assets.lib.io import streaming
from gem_assets.lib.taxonomy import terms
from gem_assets.lib.taxonomy.gis import TeacherGeometry, TermBatch


def _random_docs(n: int, seed: int, words_per_doc: int = 30, pool: int = 3_000) -> list[str]:
    """Documents of random letter-only words: a Zipf-like head (``w0`` ... small ids) and a long tail
    of words never seen before (a larger corpus keeps bringing new ones)."""
    rng = np.random.default_rng(seed)
    letters = np.array(list(string.ascii_lowercase))

    def word(i: int) -> str:
        out, i = [], int(i) + 26 * 26
        while i:
            out.append(letters[i % 26])
            i //= 26
        return "".join(out)

    docs = []
    for _ in range(n):
        head = rng.zipf(1.5, size=words_per_doc // 2) % pool
        tail = rng.integers(10**6, 10**9, size=words_per_doc - head.size)  # mostly new words
        docs.append(" ".join(word(i) for i in np.concatenate([head, tail])))
    return docs


# --------------------------------------------------------------------------- bounded document frequency
def test_bounded_counter_is_exact_while_under_capacity():
    docs = _random_docs(200, seed=1)
    exact = terms.count_document_frequency(docs)
    bounded = terms.BoundedDocumentFrequency(capacity=len(exact) + 1).update(docs)
    assert bounded.exact and bounded.error_bound == 0 and bounded.prunes == 0
    assert bounded.counts == exact
    assert terms.BoundedDocumentFrequency(None).update(docs).counts == exact


def test_bounded_counter_never_exceeds_capacity_and_bounds_its_error():
    docs = _random_docs(400, seed=2)
    exact = terms.count_document_frequency(docs)
    cap = 2_000
    assert len(exact) > 5 * cap  # the corpus has far more distinct terms than the counter may hold
    c = terms.BoundedDocumentFrequency(capacity=cap)
    for d in docs:  # one document at a time: the bound holds after every document
        c.update([d])
        assert len(c.counts) <= cap
    assert c.peak_terms <= cap and c.prunes > 0 and not c.exact and c.n_documents == len(docs)
    for t, n in exact.items():
        got = c.counts.get(t, 0)
        assert got <= n <= got + c.error_bound, t  # a lower bound, short by at most error_bound
    # the head of the distribution survives, so the chosen vocabulary's top equals the exact one's
    top_exact = terms.select_vocabulary(exact, min_df=1, max_terms=50)
    top_bounded = terms.select_vocabulary(c.counts, min_df=1, max_terms=50)
    assert top_bounded[:20] == top_exact[:20]


@pytest.mark.parametrize("bad", [0, 1, -5, 2.5, True, "10"])
def test_bounded_counter_refuses_bad_capacity(bad):
    with pytest.raises(ValueError, match="capacity"):
        terms.BoundedDocumentFrequency(capacity=bad)


# --------------------------------------------------------------------------- GIS statistics
def _geometry(d: int = 8, k: int = 3) -> TeacherGeometry:
    return TeacherGeometry(means=np.eye(k, d), concentrations=np.full(k, 5.0))


def _shards(n_shards: int, docs_per_shard: int = 150, d: int = 8, k: int = 3, embedded: int = 10):
    """Shards of random documents (new tail words in each), domains and a few embedded documents."""
    def make():
        for s in range(n_shards):
            texts = _random_docs(docs_per_shard, seed=100 + s)
            rng = np.random.default_rng(s)
            vec = rng.normal(size=(embedded, d))
            yield TermBatch(ids=[f"{s}-{i}" for i in range(docs_per_shard)], texts=texts,
                            domains=rng.integers(0, k, size=docs_per_shard),
                            vectors=vec / np.linalg.norm(vec, axis=1, keepdims=True),
                            vector_rows=np.arange(embedded))
    return make


def test_term_stats_keep_only_the_sums_the_posterior_needs():
    geo = _geometry()
    full = gis.collect_term_stats(_shards(2), geo, min_df=2, n_exemplars=2)
    lean = gis.collect_term_stats(_shards(2), geo, min_df=2, n_exemplars=2, posteriors=["doc_posterior"])
    assert lean.raw_sum is None and lean.log_density_sum is None and lean.posterior_sum is not None
    assert lean.vocabulary == full.vocabulary
    np.testing.assert_array_equal(lean.doc_freq, full.doc_freq)
    np.testing.assert_allclose(gis.term_posteriors(lean, geo, "doc_posterior"),
                               gis.term_posteriors(full, geo, "doc_posterior"))
    with pytest.raises(ValueError, match="raw_sum"):
        gis.term_posteriors(lean, geo, "unit_direction")
    with pytest.raises(ValueError, match="posteriors"):
        gis.collect_term_stats(_shards(1), geo, min_df=2, posteriors=["nope"])
    with pytest.raises(ValueError, match="posteriors"):
        gis.collect_term_stats(_shards(1), geo, min_df=2, posteriors=[])


def test_term_stats_with_a_large_capacity_equal_the_exact_ones():
    geo = _geometry()
    exact = gis.collect_term_stats(_shards(2), geo, min_df=2, max_terms=300, n_exemplars=0)
    bounded = gis.collect_term_stats(_shards(2), geo, min_df=2, max_terms=300, n_exemplars=0, count_capacity=10**6)
    assert bounded.counting["exact"] and exact.counting["capacity"] is None
    assert bounded.vocabulary == exact.vocabulary
    np.testing.assert_array_equal(bounded.term_freq, exact.term_freq)
    with pytest.raises(ValueError, match="count_capacity"):
        gis.collect_term_stats(_shards(1), geo, max_terms=300, count_capacity=500)


def test_term_stats_count_exactly_over_a_vocabulary_chosen_under_the_cap():
    """Pass 2 recounts the chosen terms exactly, so the statistics are exact even when pass 1 pruned."""
    geo = _geometry()
    st = gis.collect_term_stats(_shards(3), geo, min_df=2, max_terms=200, n_exemplars=0, count_capacity=1_000)
    assert not st.counting["exact"] and st.counting["peak_terms"] <= 1_000
    texts = [t for b in _shards(3)() for t in b.texts]
    df = terms.count_document_frequency(texts)
    np.testing.assert_array_equal(st.doc_freq.sum(axis=0), [df[t] for t in st.vocabulary])
    assert st.n_documents == len(texts)


def _traced_peak(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_term_stats_working_set_does_not_grow_with_the_number_of_shards():
    """With the counting capacity and the vocabulary capped, 6 shards of new words take about the
    memory of 2 (the shards' own texts are generated lazily, one at a time); uncapped, it grows."""
    geo = _geometry()

    def run(n, cap, terms_cap):
        return lambda: gis.collect_term_stats(_shards(n, docs_per_shard=40), geo, min_df=1, max_terms=terms_cap,
                                              n_exemplars=2, count_capacity=cap, posteriors=["doc_posterior"])

    run(1, 1_000, 500)()  # imports and caches before measuring
    small, large = _traced_peak(run(2, 1_000, 500)), _traced_peak(run(6, 1_000, 500))
    assert large < 1.25 * small, (small, large)
    # the same corpus counted exactly holds every distinct term: it grows with the shards
    small_exact, large_exact = _traced_peak(run(2, None, None)), _traced_peak(run(6, None, None))
    assert large_exact > 1.8 * small_exact, (small_exact, large_exact)


# --------------------------------------------------------------------------- bottom-k samples
def test_bottom_k_is_seeded_order_free_and_of_the_cap_size():
    keys = [f"shard-{i // 100}/{i}" for i in range(1_000)]
    a = sampling.BottomK(50, 3, "test").update(keys).keys()
    b = sampling.BottomK(50, 3, "test").update(list(reversed(keys))).keys()
    assert len(a) == 50 and set(a) == set(b)
    assert set(sampling.BottomK(50, 4, "test").update(keys).keys()) != set(a)
    assert set(sampling.BottomK(2_000, 3, "test").update(keys).keys()) == set(keys)
    # streamed in chunks (one shard at a time) it keeps the same sample, never more than the cap
    s = sampling.BottomK(50, seed=3, purpose="test")
    for i in range(0, 1_000, 100):
        s.update(keys[i:i + 100])
        assert len(s) <= 50
    assert set(s.keys()) == set(a)
    with pytest.raises(ValueError, match="cap"):
        sampling.BottomK(0, seed=0)


def test_bottom_k_is_uniform():
    """Every key is drawn with probability cap / N: over 400 seeds, the inclusion counts of 40 keys
    (cap 10) are within a chi-square test's range of the binomial expectation."""
    keys = [f"d{i}" for i in range(40)]
    counts = Counter()
    seeds = 400
    for seed in range(seeds):
        counts.update(sampling.BottomK(10, seed, "uniform").update(keys).keys())
    expected = seeds * 10 / 40
    obs = np.array([counts[k] for k in keys], dtype=float)
    var = seeds * 0.25 * 0.75
    chi2 = float(((obs - expected) ** 2 / var).sum())
    assert chi2 < 70.0, chi2  # chi-square with ~39 degrees of freedom: p < 0.003 above 70
    assert obs.sum() == seeds * 10


# --------------------------------------------------------------------------- evaluation windows
def test_bpb_windows_are_the_evenly_spread_subset_built_without_the_full_list():
    """lm._windows builds only the windows it keeps (memory by max_tokens, not by the stream):
    the same windows as listing every window and then picking evenly spread ones."""
    from gem_assets.lib.mixing import lm

    def reference(n, context, max_tokens):
        out = [(s, min(context, n - 1 - s)) for s in range(0, n - 1, context)]
        if max_tokens is not None and sum(length for _, length in out) > max_tokens:
            m = max(1, max_tokens // context)
            idx = np.unique(np.linspace(0, len(out) - 1, m).round().astype(int))
            out = [out[i] for i in idx]
        return out

    for n in (1, 2, 3, 32, 33, 34, 1_000, 4_097):
        for context in (1, 8, 32):
            for max_tokens in (None, 1, 31, 64, 1_024, 10_000):
                assert lm._windows(n, context, max_tokens) == reference(n, context, max_tokens), (n, context, max_tokens)


# --------------------------------------------------------------------------- mixing without the corpus in memory
def _mixing_corpus(tmp_path, n_shards=3, n=40, seed=0, spill=False, **index_args):
    """Shards of documents (ids out of order, a missing assignment) on disk, and the frame the
    in-memory path builds (every assigned document, sorted by shard and id). ``spill``: the index's
    numeric columns memory-mapped from files under ``tmp_path / "spill"``. Returns the frame, the
    index and readers of texts and of ids by index position; ``index_args`` go to corpus_index."""
    import polars as pl

    rng = np.random.default_rng(seed)
    frames = {}
    for s in range(n_shards):
        texts = [" ".join(f"w{rng.integers(0, 50)}" for _ in range(rng.integers(1, 30))) + (" é" if i % 7 == 0 else "")
                 for i in range(n)]
        ids = [f"{rng.integers(0, 10**6):06d}-{i}" for i in range(n)]
        docs = pl.DataFrame({"row": np.arange(n) * 3, "id": ids, "text": texts, "source": [f"src{i % 3}" for i in range(n)]})
        docs.write_parquet(tmp_path / f"docs-{s}.parquet", row_group_size=9)
        assign = pl.DataFrame({"id": ids[1:], "domain": rng.integers(0, 4, size=n - 1)})  # the first has none
        assign.write_parquet(tmp_path / f"assign-{s}.parquet")
        frames[f"shard-{s}"] = docs.with_columns(pl.lit(f"shard-{s}").alias("shard")).join(assign, on="id", how="inner")
    frame = pl.concat(list(frames.values())).sort("shard", "id")
    keys = list(frames)
    index = corpus_index(lambda k: pl.read_parquet(tmp_path / f"docs-{k.split('-')[1]}.parquet"),
                                 lambda k: pl.read_parquet(tmp_path / f"assign-{k.split('-')[1]}.parquet"),
                                 list(reversed(keys)), spill_dir=tmp_path / "spill" if spill else None, **index_args)

    def reader(column):
        def read_rows(key, rows):
            out = []
            for df in streaming.iter_selected_rows(tmp_path / f"docs-{key.split('-')[1]}.parquet", rows,
                                                   columns=[column], batch_rows=7):
                out += df[column].to_list()
            return out

        return lambda pos: read_index_texts(index, pos, read_rows)

    return frame, index, reader("text"), reader("id")


@pytest.mark.parametrize("spill", [False, True])
def test_corpus_index_and_texts_match_the_in_memory_frame(tmp_path, spill):
    frame, index, read, read_ids = _mixing_corpus(tmp_path, spill=spill, target_source="src1", key_seed=7,
                                                  key_purpose="t/p")
    assert len(index) == frame.height == 3 * 39
    np.testing.assert_array_equal(index.domains, frame["domain"].to_numpy())
    np.testing.assert_array_equal(index.tokens, document_tokens(frame["text"].to_list()))
    # the per-document strings' uses, as numbers: source == target, and the key's priority
    np.testing.assert_array_equal(index.is_target, (frame["source"] == "src1").to_numpy())
    assert index.is_target.dtype == np.bool_ and 0 < index.is_target.sum() < len(index)
    keys = [f"{s}/{i}" for s, i in zip(frame["shard"], frame["id"])]
    assert index.priority.dtype == np.uint64
    assert index.priority.tolist() == [sampling.key_priority(7, "t/p", k) for k in keys]
    pos = np.array([5, 0, 100, 5, 42])
    assert read(pos) == [frame["text"][int(i)] for i in pos]
    assert read_ids(pos) == [frame["id"][int(i)] for i in pos]
    assert index.keys_at(pos, read_ids) == [keys[int(i)] for i in pos]
    if spill:  # numeric columns memory-mapped read-only, their files already unlinked; no string kept
        assert all(isinstance(a, np.memmap) and not a.flags.writeable
                   for a in (index.shard, index.row, index.domains, index.tokens, index.is_target, index.priority))
        assert list((tmp_path / "spill").iterdir()) == []
        assert index.shard.dtype == np.int32 and index.row.dtype == index.tokens.dtype == np.int64
        assert index.ids is None and index.sources is None
        with pytest.raises(ValueError, match="read_ids"):
            index.keys_at(pos)
        with pytest.raises(ValueError, match="spill_dir"):
            index.document_keys()
    else:
        assert index.ids.to_list() == frame["id"].to_list() and index.sources.to_list() == frame["source"].to_list()
        assert index.keys_at(pos) == [keys[int(i)] for i in pos]
        assert [index.document_keys()[int(i)] for i in pos] == [keys[int(i)] for i in pos]
    with pytest.raises(ValueError, match="returned 1 ids for 5"):
        index.keys_at(pos, lambda p: ["x"])


def test_corpus_index_without_target_or_priority(tmp_path):
    """No target source: every document is a target; no key seed: no priority column."""
    frame, index, _, _ = _mixing_corpus(tmp_path, spill=True)
    assert index.is_target.all() and index.is_target.size == frame.height and index.priority is None
    import polars as pl

    docs = pl.DataFrame({"id": ["b", "a", "c"], "text": ["xx", "y", "zzz"], "source": ["s", None, "t"]})
    assign = pl.DataFrame({"id": ["a", "b", "c"], "domain": [0, 1, 0]})
    for spill in (None, tmp_path / "spill2"):
        small = corpus_index(lambda k: docs, lambda k: assign, ["k"], spill_dir=spill, target_source="s")
        assert small.is_target.tolist() == [False, True, False]  # ids a, b, c; a's null source never matches
        assert small.row.tolist() == [1, 0, 2] and small.tokens.tolist() == [2, 3, 4]
    with pytest.raises(ValueError, match="target_source"):
        corpus_index(lambda k: docs, lambda k: assign, ["k"], target_source=3)
    with pytest.raises(ValueError, match="key_seed"):
        corpus_index(lambda k: docs, lambda k: assign, ["k"], key_seed=-1)


def test_corpus_index_spilled_with_no_documents(tmp_path):
    import polars as pl

    empty = pl.DataFrame(schema={"id": pl.String, "text": pl.String})
    no_assign = pl.DataFrame(schema={"id": pl.String, "domain": pl.Int64})
    index = corpus_index(lambda k: empty, lambda k: no_assign, ["a", "b"], spill_dir=tmp_path / "spill",
                                 key_seed=1)
    assert len(index) == 0 and index.tokens.dtype == np.int64 and index.ids is None
    assert index.priority.dtype == np.uint64 and index.is_target.size == 0
    assert list((tmp_path / "spill").iterdir()) == []
    in_memory = corpus_index(lambda k: empty, lambda k: no_assign, ["a", "b"], key_seed=1)
    assert len(in_memory) == 0 and in_memory.ids.len() == 0 and in_memory.priority.dtype == np.uint64


def test_key_priorities_equal_key_priority():
    """The batched priorities (the mixing index's column) are sampling.key_priority's, non-ASCII keys and
    the empty key included."""
    names = ["", "a", "é", "日本/語", "x" * 300, "0001-7"]
    for seed, purpose, prefix in ((0, "", ""), (7, "mixing/proxy_target", "shard-3.jsonl/"), (2**40, "p", "ß/")):
        got = sampling.key_priorities(seed, purpose, names, prefix=prefix)
        assert got.dtype == np.uint64 and got.tolist() == [sampling.key_priority(seed, purpose, prefix + n) for n in names]
    assert sampling.key_priorities(1, "p", [], prefix="k/").shape == (0,)


def test_bottom_k_by_priority_by_hand():
    """Smallest priorities kept; a tie at the cut keeps the larger key (as BottomK does)."""
    prio = np.array([5, 1, 3, 1, 9], dtype=np.uint64)
    keys = ["a", "b", "c", "d", "e"]
    asked = []

    def key_of(pos):
        asked.append(pos.tolist())
        return [keys[i] for i in pos]

    idx = np.arange(5)
    assert bottom_k_by_priority(idx, prio, 2, key_of).tolist() == [1, 3] and asked == []
    assert bottom_k_by_priority(idx, prio, 1, key_of).tolist() == [3] and asked == [[1, 3]]  # "d" > "b"
    assert bottom_k_by_priority(idx, prio, 3, key_of).tolist() == [1, 2, 3]
    assert bottom_k_by_priority(np.array([0, 2, 4]), prio, 2, key_of).tolist() == [0, 2]
    assert bottom_k_by_priority(idx, prio, None).tolist() == [0, 1, 2, 3, 4]
    assert bottom_k_by_priority(idx, prio, 5).tolist() == [0, 1, 2, 3, 4]
    assert bottom_k_by_priority(np.zeros(0, np.int64), prio, 2).tolist() == []
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="cap"):
            bottom_k_by_priority(idx, prio, bad)
    with pytest.raises(ValueError, match="tie"):
        bottom_k_by_priority(idx, prio, 1)
    with pytest.raises(ValueError, match="uint64"):
        bottom_k_by_priority(idx, prio.astype(np.int64), 1)
    with pytest.raises(ValueError, match="increasing"):
        bottom_k_by_priority(np.array([2, 1]), prio, 1)
    with pytest.raises(ValueError, match="increasing"):
        bottom_k_by_priority(np.array([1, 5]), prio, 1)


@pytest.mark.parametrize("coarse", [False, True])
def test_target_sample_from_priorities_equals_the_key_sample(tmp_path, monkeypatch, coarse):
    """Old == new: the proxy target sample drawn from the index's priority column is the sample
    sampling.bottom_k_positions draws from the "<shard>/<id>" keys held in memory, ties included
    (``coarse``: priorities cut to 3 values, so most candidates tie and the keys decide)."""
    if coarse:  # the index's priorities and BottomK's (both sampling.key_priorities), both coarse
        fine = sampling.key_priorities

        def three(seed, purpose, names, prefix=""):
            return fine(seed, purpose, names, prefix=prefix) % np.uint64(3)

        monkeypatch.setattr(sampling, "key_priorities", three)
        monkeypatch.setattr("gem_assets.lib.mixing.corpus_index.key_priorities", three)
    frame, old, _, _ = _mixing_corpus(tmp_path, n=60)                          # ids in memory (the old index)
    _, new, _, read_ids = _mixing_corpus(tmp_path, n=60, spill=True, target_source="src1", key_seed=11,
                                         key_purpose="mixing/proxy_target")
    np.testing.assert_array_equal(new.is_target, (old.sources == "src1").fill_null(False).to_numpy())
    held = split_documents(new.domains, 0.5, 11)
    ties = []
    for mask in (held, held & new.is_target):  # GEM_MIX_TARGET unset, and set to a source
        cand = np.flatnonzero(mask)
        assert cand.size > 20
        for cap in (None, 1, 2, 7, 20, cand.size - 1, cand.size, cand.size + 3):
            want = sampling.bottom_k_positions(cand, old.document_keys(), cap, 11, "mixing/proxy_target")
            got = bottom_k_by_priority(cand, new.priority, cap,
                                               lambda p: ties.append(p.size) or new.keys_at(p, read_ids))
            np.testing.assert_array_equal(got, want)
            assert got.size == (cand.size if cap is None else min(cap, cand.size))
    # keys are read back only for candidates tied at the cut: here never with 64-bit priorities
    assert (len(ties) > 0) == coarse, ties


@pytest.mark.parametrize("spill", [False, True])
@pytest.mark.parametrize("cap", [None, 2, 50, 400])
def test_proxy_streams_equal_the_in_memory_streams(tmp_path, cap, spill):
    frame, index, read, _ = _mixing_corpus(tmp_path, spill=spill)
    texts, labels = frame["text"].to_list(), frame["domain"].to_numpy()
    names = ["0", "1", "2", "3"]
    asked = []

    def counting_read(pos):
        asked.append(len(pos))
        return read(pos)

    target_mask = split_documents(labels, 0.2, 7) & (frame["source"] == "src1").to_numpy()
    train, valid, target = proxy_streams(index, counting_read, names, 0.2, 7, cap, target_mask)
    ref_train, ref_valid = domain_streams(texts, labels, names, 0.2, 7, max_bytes_per_domain=cap)
    ref_target = texts_to_streams([texts[i] for i in np.flatnonzero(target_mask)], ["target"] * int(target_mask.sum()))
    assert train.keys() == ref_train.keys() and valid.keys() == ref_valid.keys()
    for got, ref in ((train, ref_train), (valid, ref_valid), (target, ref_target)):
        for k in ref:
            np.testing.assert_array_equal(got[k], ref[k])
    if cap is not None and cap <= 50:  # with a small cap only a few texts are read
        assert asked[0] < len(index) // 2
    # the caller's split (proxy_corpus has it already) gives the same streams; a wrong-sized one is refused
    given = proxy_streams(index, read, names, 0.2, 7, cap, target_mask,
                                  valid=split_documents(labels, 0.2, 7))
    for got, ref in zip(given, (train, valid, target)):
        assert got.keys() == ref.keys() and all(np.array_equal(got[k], ref[k]) for k in ref)
    with pytest.raises(ValueError, match="valid must have one entry per document"):
        proxy_streams(index, read, names, 0.2, 7, cap, target_mask, valid=np.zeros(3, bool))


@pytest.mark.parametrize("spill", [False, True])
@pytest.mark.parametrize("bucket_bytes, max_buckets", [(1, 512), (1, 4), (300, 512), (1 << 30, 512)])
def test_curated_parts_equal_the_in_memory_rows(tmp_path, monkeypatch, bucket_bytes, max_buckets, spill):
    import polars as pl

    from gem_assets.lib.io import storage

    opened = []

    class CountingWriter(storage.ParquetBatchWriter):
        def __init__(self, *args, **kwargs):
            opened.append(args[0])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(storage, "ParquetBatchWriter", CountingWriter)

    frame, index, read, read_ids = _mixing_corpus(tmp_path, spill=spill)
    tokens = document_tokens(frame["text"].to_list())
    labels = frame["domain"].to_numpy()
    if spill:  # the sample drawn from the memory-mapped index is the same
        np.testing.assert_array_equal(index.tokens, tokens)
        tokens, labels = index.tokens, index.domains
    sample = sample_curated_mixture(tokens, labels, np.array([0.4, 0.3, 0.2, 0.1]), int(tokens.sum() * 1.5), 3.0, 5)
    ref = (frame.select(pl.col("shard", "id", "domain", "text").gather(pl.Series(sample.indices)))
           .with_columns(pl.Series("repeat", sample.repeats), pl.Series("tokens", tokens[sample.indices]))
           .select("shard", "id", "domain", "repeat", "tokens", "text"))
    out = tmp_path / f"out-{bucket_bytes}"
    files = write_curated_parts(index, sample, read, out, rows_per_file=17, bucket_bytes=bucket_bytes,
                                        max_buckets=max_buckets, read_ids=read_ids if spill else None)
    assert files == [f"part-{i:05d}.parquet" for i in range(-(-ref.height // 17))]
    # one bucket per file with 1-token buckets, unless max_buckets caps them; one with huge buckets
    assert 1 <= len(opened) <= min(len(files), max_buckets + 1)
    if bucket_bytes == 1:
        assert len(opened) == len(files) if max_buckets == 512 else 2 <= len(opened) <= max_buckets + 1 < len(files)
    if bucket_bytes == 1 << 30:
        assert len(opened) == 1
    parts = [pl.read_parquet(out / f) for f in files]
    assert all(p.height == 17 for p in parts[:-1]) and sorted(p.name for p in out.iterdir()) == files
    got = pl.concat(parts)
    assert got.columns == ref.columns and got.equals(ref.cast(got.schema))
    if spill:  # old == new, byte for byte: ids read back by row vs the ids held in memory (the old index)
        with pytest.raises(ValueError, match="read_ids"):
            write_curated_parts(index, sample, read, tmp_path / "no-ids", 17)
        _, old, old_read, _ = _mixing_corpus(tmp_path)
        assert old.ids is not None
        old_files = write_curated_parts(old, sample, old_read, tmp_path / "old", rows_per_file=17,
                                                bucket_bytes=bucket_bytes, max_buckets=max_buckets)
        assert old_files == files
        assert all((tmp_path / "old" / f).read_bytes() == (out / f).read_bytes() for f in files)
    # an empty sample still writes one (empty) file
    empty = CuratedSample(indices=np.zeros(0, np.int64), repeats=np.zeros(0, np.int64), domains=np.zeros(0, np.int64))
    assert write_curated_parts(index, empty, read, tmp_path / "empty", 5, read_ids=read_ids) == [
        "part-00000.parquet"]
    with pytest.raises(ValueError, match="max_buckets"):
        write_curated_parts(index, empty, read, tmp_path / "bad", 5, max_buckets=1, read_ids=read_ids)
    assert pl.read_parquet(tmp_path / "empty" / "part-00000.parquet").height == 0


def test_release_memory_returns_freed_heap_pages():
    """After many small allocations are freed, release_memory hands the pages back (glibc)."""
    def rss():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) * 1024

    blocks = [bytearray(2_000) for _ in range(60_000)]  # ~120 MB in small heap blocks (below mmap's threshold)
    keep = blocks[-1:]                                  # one block at the top of the heap
    del blocks
    before = rss()
    glibc = allocator._glibc() is not None
    assert allocator.release_memory() is glibc   # off glibc: only the garbage collection, and it says so
    if not glibc:
        pytest.skip("not glibc: release_memory only collects garbage (checked above); the rest measures glibc's malloc")
    assert rss() < before - 50 * 2**20, (before, rss())   # measured with the top block still held
    del keep


_MMAP_PROBE = """
import sys
import numpy as np
from gem_assets.lib.util import allocator
if sys.argv[1] == "fix" and not allocator.fix_mmap_threshold():
    print("not-glibc")
    raise SystemExit(0)
def rss():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) * 1024
base = rss()
big = np.ones(30 << 20, np.uint8)  # mmapped, then freed: glibc's dynamic thresholds rise to 30 / 60 MiB
del big                            # (or, where imports already raised them, from the heap and kept)
a = np.ones(24 << 20, np.uint8)    # below the raised threshold: from the heap, unless the threshold is fixed
del a
print(rss() - base)
"""


def test_fix_mmap_threshold_returns_large_buffers_to_the_os():
    """With glibc's dynamic mmap threshold freed 30 and 24 MiB buffers leave at least one of them
    resident; with the threshold fixed both are unmapped on free (each case in a fresh process)."""
    import subprocess
    import sys

    from conftest import glibc_default_env

    def probe(mode: str) -> str:
        out = subprocess.run([sys.executable, "-c", _MMAP_PROBE, mode], capture_output=True, text=True, check=True,
                             env=glibc_default_env())
        return out.stdout.strip()

    fixed = probe("fix")
    if allocator._glibc() is None:           # off glibc nothing changes, and fix_mmap_threshold says so
        assert fixed == "not-glibc"
        pytest.skip("not glibc: fix_mmap_threshold is a no-op (checked above); the rest measures glibc's malloc")
    assert int(fixed) < 4 * 2**20, fixed                   # given back
    assert int(probe("default")) > 16 * 2**20              # the behaviour the fix removes: kept resident


@pytest.mark.parametrize("bad", [0, 4095, (32 << 20) + 1, 1.5, True, "1M"])
def test_fix_mmap_threshold_rejects_bad_sizes(bad):
    with pytest.raises(ValueError, match="threshold_bytes"):
        allocator.fix_mmap_threshold(bad)


def test_evaluation_key_order_is_pythons_on_arrow_strings():
    """The evaluation sorts its document keys as Arrow strings (no Python string per document): the
    order is Python's, non-ASCII keys included, and a Series gives the same splits as a list."""
    import polars as pl

    from gem_assets.lib.evaluation import splits

    rng = np.random.default_rng(0)
    alphabet = list("abzAZ09/-_éèßø日本語😀\u0100")
    keys = ["".join(rng.choice(alphabet, size=rng.integers(1, 9))) for _ in range(3_000)]
    keys = list(dict.fromkeys(keys))  # unique
    expected = np.argsort(np.asarray(keys, dtype=object), kind="stable")
    np.testing.assert_array_equal(splits._sorted_order(keys), expected)
    series = pl.Series("key", keys)
    np.testing.assert_array_equal(splits._sorted_order(series), expected)
    np.testing.assert_array_equal(splits.holdout_split(series, 0.1, 3), splits.holdout_split(keys, 0.1, 3))
    np.testing.assert_array_equal(splits.select_split(series, 0.2, 3), splits.select_split(keys, 0.2, 3))
    with pytest.raises(ValueError, match="unique"):
        splits.holdout_split(pl.Series("key", ["a", "b", "a"]), 0.5, 0)
    with pytest.raises(ValueError, match="null"):
        splits.holdout_split(pl.Series("key", ["a", None, "c"]), 0.5, 0)


def test_bottom_k_positions_in_chunks_matches_one_pass(monkeypatch):
    """Candidates are offered in chunks (bounded memory): any chunk size, and keys given as a list, a
    polars Series or the mixing index's lazy keys, give the same sample as one BottomK pass."""
    import polars as pl

    keys = [f"{s:03d}/{i}" for s in range(7) for i in range(300)]
    idx = np.arange(0, len(keys), 3, dtype=np.int64)
    one = sampling.BottomK(50, 4, "t").update((keys[i] for i in idx.tolist()), idx.tolist())
    expected = np.sort(np.fromiter(one.items().values(), dtype=np.int64))
    for chunk in (1, 7, 64, 10**6):
        monkeypatch.setattr(sampling, "KEY_CHUNK", chunk)
        np.testing.assert_array_equal(sampling.bottom_k_positions(idx, keys, 50, 4, "t"), expected)
        np.testing.assert_array_equal(sampling.bottom_k_positions(idx, pl.Series(keys), 50, 4, "t"), expected)
    index = CorpusIndex(shards=[f"{s:03d}" for s in range(7)], shard=np.repeat(np.arange(7, dtype=np.int32), 300),
                                row=np.tile(np.arange(300, dtype=np.int64), 7),
                                ids=pl.Series("id", [str(i) for _ in range(7) for i in range(300)]),
                                domains=np.zeros(2100, np.int64), tokens=np.ones(2100, np.int64),
                                sources=pl.Series("source", [None] * 2100, dtype=pl.String))
    np.testing.assert_array_equal(sampling.bottom_k_positions(idx, index.document_keys(), 50, 4, "t"), expected)
