"""Domain streams and the curated mixture: splits by document, token allocation, epoch caps, counts."""

from __future__ import annotations

import numpy as np
import pytest

from gem_assets.lib.mixing.curated import allocate_tokens, sample_curated_mixture
from gem_assets.lib.mixing.streams import SEPARATOR, document_tokens, domain_streams, split_documents, texts_to_streams


def test_texts_to_streams_joins_documents_with_the_separator():
    s = texts_to_streams(["ab", "c", "dé"], [1, 0, 1])
    assert list(s) == ["0", "1"]
    assert s["0"].tobytes() == b"c\x00" and s["1"].tobytes() == "ab\x00dé\x00".encode()
    assert s["1"].dtype == np.uint8
    assert texts_to_streams(["a\x00b"], ["k"])["k"].tobytes() == b"a b\x00"  # NUL inside text is replaced
    np.testing.assert_array_equal(document_tokens(["ab", "dé", ""]), [3, 4, 1])
    with pytest.raises(ValueError, match="one key per text"):
        texts_to_streams(["a"], [])
    with pytest.raises(ValueError, match="not str"):
        texts_to_streams([None], ["k"])


def test_split_is_by_document_and_seeded():
    labels = np.array([0] * 10 + [1] * 3 + [2])
    v = split_documents(labels, 0.2, seed=0)
    assert v[:10].sum() == 2 and v[10:13].sum() == 1 and not v[13]  # a lone document stays in train
    np.testing.assert_array_equal(v, split_documents(labels, 0.2, seed=0))
    assert len({split_documents(labels, 0.2, seed=s).tobytes() for s in range(5)}) > 1
    assert split_documents(labels, 0.0, seed=0).sum() == 0
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        split_documents(labels, 1.0, 0)


def test_domain_streams_hold_whole_documents():
    texts = [f"doc{i:02d}" for i in range(20)]
    labels = np.array([i % 2 for i in range(20)])
    train, valid = domain_streams(texts, labels, ["even", "odd"], 0.25, seed=3)
    assert set(train) == set(valid) == {"even", "odd"}
    for name, parity in (("even", 0), ("odd", 1)):
        docs_t = train[name].tobytes().split(b"\x00")[:-1]
        docs_v = valid[name].tobytes().split(b"\x00")[:-1]
        assert len(docs_t) == 8 and len(docs_v) == 2
        assert {int(d[3:]) % 2 for d in docs_t + docs_v} == {parity}
        assert sorted(docs_t + docs_v) == sorted(t.encode() for t in texts[parity::2])
    capped, _ = domain_streams(texts, labels, 2, 0.25, seed=3, max_bytes_per_domain=10)
    assert set(capped) == {"0", "1"} and all(s.size == 10 for s in capped.values())
    with pytest.raises(ValueError, match="lie in"):
        domain_streams(texts, labels + 1, 2, 0.25, 0)
    with pytest.raises(ValueError, match="one label per text"):
        domain_streams(texts[:3], labels, 2, 0.25, 0)


def test_allocate_tokens_by_hand():
    # weights (0.5, 0.3, 0.2) of 1000 tokens; domain 0 has 100 tokens x 2 epochs = 200 cap.
    # 300 tokens left over go to domains 1 and 2 in proportion 3:2 -> 300 + 180 = 480, 200 + 120 = 320
    t = allocate_tokens([0.5, 0.3, 0.2], [100, 10_000, 10_000], 1000, 2.0)
    np.testing.assert_allclose(t, [200, 480, 320])
    # everything capped: the sample is smaller than the budget
    np.testing.assert_allclose(allocate_tokens([0.5, 0.5], [10, 20], 1000, 3.0), [30, 60])
    # a weight-0 domain gets nothing; a domain with no tokens passes its share on
    np.testing.assert_allclose(allocate_tokens([0.0, 0.5, 0.5], [100, 0, 1000], 100, 1.0), [0, 0, 100])
    with pytest.raises(ValueError, match="max_epochs"):
        allocate_tokens([1.0], [10], 10, 0.0)


def test_curated_mixture_respects_caps_and_counts_add_up():
    rng = np.random.default_rng(0)
    tok = rng.integers(5, 50, size=300)
    labels = rng.integers(0, 3, size=300)
    labels[labels == 2] = 0
    labels[:10] = 2  # domain 2: ten documents only
    s = sample_curated_mixture(tok, labels, [0.2, 0.3, 0.5], budget_tokens=5000, max_epochs=2.5, seed=4)
    avail = np.bincount(labels, weights=tok, minlength=3)
    for row in s.per_domain:
        d = row["domain"]
        sel = s.indices[s.domains == d]
        assert row["tokens"] == int(tok[sel].sum()) and row["documents"] == sel.size
        assert row["tokens"] <= 2.5 * avail[d] + 1e-9 and row["epochs"] <= 2.5
        assert row["unique_documents"] == np.unique(sel).size
        assert np.bincount(sel).max() <= 3  # ceil(2.5) passes at most
        assert row["tokens"] <= row["target_tokens"] and row["target_tokens"] - row["tokens"] < 50
    assert s.per_domain[2]["epochs"] > 2.0               # the small domain is capped ...
    assert s.tokens == int(tok[s.indices].sum()) and abs(s.tokens - 5000) < 150   # ... the rest fills the budget
    np.testing.assert_array_equal(s.domains, labels[s.indices])
    assert set(np.unique(s.repeats)) <= {0, 1, 2}
    again = sample_curated_mixture(tok, labels, [0.2, 0.3, 0.5], 5000, 2.5, seed=4)
    np.testing.assert_array_equal(again.indices, s.indices)
    assert not np.array_equal(sample_curated_mixture(tok, labels, [0.2, 0.3, 0.5], 5000, 2.5, seed=5).indices,
                              s.indices)


def test_curated_mixture_bad_input():
    with pytest.raises(ValueError, match="positive"):
        sample_curated_mixture(np.array([0, 3]), np.array([0, 1]), [0.5, 0.5], 10, 1.0, 0)
    with pytest.raises(ValueError, match="lie in"):
        sample_curated_mixture(np.array([2, 3]), np.array([0, 2]), [0.5, 0.5], 10, 1.0, 0)
    with pytest.raises(ValueError, match="one value per domain"):
        sample_curated_mixture(np.array([2, 3]), np.array([0, 1]), [[0.5, 0.5]], 10, 1.0, 0)
