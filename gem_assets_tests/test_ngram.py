"""Byte n-gram models: hand-computed Witten-Bell probabilities, normalization, documents, mixtures."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

from gem_assets.lib.mixing.ngram import CountIndex, NGramLM, mixture_multiplicity


def _b(text: bytes) -> np.ndarray:
    return np.frombuffer(text, dtype=np.uint8)


def test_witten_bell_matches_hand_computed_probabilities():
    # stream "abab" + separator, order 2. Every document starts after a separator (context only).
    # unigrams: a 2, b 2, sep 1 -> c = 5, t = 3;  P1(x) = (c(x) + 3/256) / 8
    # bigrams: (sep,a) 1, (a,b) 2, (b,a) 1, (b,sep) 1 -> context a: c 2, t 1; context b: c 2, t 2
    lm = NGramLM.fit(_b(b"abab\x00"), order=2)
    p1 = lambda c: (c + 3 / 256) / 8  # noqa: E731
    d_a = lm.distribution(_b(b"a"))
    assert d_a[ord("b")] == pytest.approx((2 + 1 * p1(2)) / 3, rel=1e-12)       # P2(b | a)
    assert d_a[ord("z")] == pytest.approx((0 + 1 * p1(0)) / 3, rel=1e-12)       # unseen after a
    d_b = lm.distribution(_b(b"b"))
    assert d_b[ord("a")] == pytest.approx((1 + 2 * p1(2)) / 4, rel=1e-12)       # P2(a | b)
    assert d_b[0] == pytest.approx((1 + 2 * p1(1)) / 4, rel=1e-12)              # P2(sep | b)
    # a context never seen backs off to the unigram distribution entirely
    np.testing.assert_allclose(lm.distribution(_b(b"q")), [p1({97: 2, 98: 2, 0: 1}.get(w, 0)) for w in range(256)])
    # the stream's first byte is predicted from the separator context: P2(a | sep) = (1 + 1 * P1(a)) / 2
    assert lm.token_probabilities(_b(b"a"))[0] == pytest.approx((1 + p1(2)) / 2, rel=1e-12)


def _naive(train: bytes, order: int):
    """Document-aware interpolated Witten-Bell with dictionaries (the reference)."""
    s = [0] + list(train)
    counts = [defaultdict(int) for _ in range(order)]
    for i in range(1, len(s)):
        j = max(k for k in range(i) if s[k] == 0)           # the last separator before i
        for n in range(1, min(order, i - j + 1) + 1):
            counts[n - 1][tuple(s[i - n + 1:i + 1])] += 1

    def prob(history, w):
        p = 1 / 256
        for n in range(1, min(order, len(history) + 1) + 1):
            h = tuple(history[len(history) - n + 1:]) if n > 1 else ()
            c_h = sum(v for g, v in counts[n - 1].items() if g[:-1] == h)
            if c_h:
                t_h = sum(1 for g in counts[n - 1] if g[:-1] == h)
                p = (counts[n - 1].get(h + (w,), 0) + t_h * p) / (c_h + t_h)
        return p

    def probabilities(test: bytes):
        t = [0] + list(test)
        out = []
        for i in range(1, len(t)):
            j = max(k for k in range(i) if t[k] == 0)
            out.append(prob(t[j:i], t[i]))
        return np.array(out)

    return probabilities


@pytest.mark.parametrize("order", [1, 2, 3, 5])
def test_matches_a_dictionary_reference(order):
    train = b"abracadabra\x00abraham\x00cadabra\x00the bard\x00"
    test = b"abrac\x00cadam\x00bra"
    got = NGramLM.fit(_b(train), order=order).token_probabilities(_b(test))
    np.testing.assert_allclose(got, _naive(train, order)(test), rtol=1e-12)


@pytest.mark.parametrize("max_grams", [None, 300])
def test_probabilities_sum_to_one_in_random_contexts(max_grams):
    rng = np.random.default_rng(0)
    words = [bytes(rng.integers(97, 103, size=rng.integers(1, 6)).astype(np.uint8)) for _ in range(40)]
    docs = [b" ".join(words[i] for i in rng.integers(0, 40, size=30)) for _ in range(60)]
    lm = NGramLM.fit(_b(b"\x00".join(docs) + b"\x00"), order=5, max_grams=max_grams)
    if max_grams is not None:
        assert len(lm.counts[4]) <= max_grams
    for _ in range(25):
        ctx = rng.integers(0, 256, size=rng.integers(0, 8)).astype(np.uint8)
        if rng.random() < 0.7:  # mostly contexts the model has seen
            d = docs[rng.integers(0, 60)]
            start = rng.integers(0, max(1, len(d) - 6))
            ctx = _b(d[start:start + rng.integers(0, 7)])
        dist = lm.distribution(ctx)
        assert dist.min() > 0
        assert dist.sum() == pytest.approx(1.0, abs=1e-12)


def test_pruned_table_keeps_the_most_frequent_grams():
    stream = _b(b"aaaa bbb cc d\x00" * 50 + b"xyzw\x00")
    idx = CountIndex({"s": stream}, order=3, max_grams=256)
    full = CountIndex({"s": stream}, order=3)
    assert idx.pruned == [0, 0, 0]                        # under the cap: exact
    assert idx.n_grams == full.n_grams
    rng = np.random.default_rng(1)
    text = _b(bytes(rng.integers(32, 127, size=20000).astype(np.uint8)))
    capped = CountIndex({"s": text}, order=3, max_grams=500)
    exact = CountIndex({"s": text}, order=3)
    assert capped.n_grams[2] == 500 and capped.pruned[2] == exact.n_grams[2] - 500
    kept = capped.fit_all().counts[2]
    assert kept.min() >= np.sort(exact.fit_all().counts[2])[-500]   # the most frequent trigrams are kept
    assert capped.fit_all().distribution(text[:2]).sum() == pytest.approx(1.0, abs=1e-12)


def test_documents_are_exchangeable():
    a, b = b"the cat sat\x00", b"on the mat\x00"
    test = _b(b"the mat sat\x00on")
    p1 = NGramLM.fit(_b(a + b), order=4).token_probabilities(test)
    p2 = NGramLM.fit(_b(b + a), order=4).token_probabilities(test)
    np.testing.assert_allclose(p1, p2, rtol=1e-12)


def test_count_index_models_equal_direct_fits():
    x, y = _b(b"the cat sat\x00on the mat\x00" * 3), _b(b"a dog ran\x00far away\x00")
    test = _b(b"the dog sat far\x00")
    idx = CountIndex({"x": x, "y": y}, order=4)
    np.testing.assert_allclose(idx.fit_all().token_probabilities(test),
                               NGramLM.fit(np.concatenate([x, y]), order=4).token_probabilities(test), rtol=1e-12)
    # all weight on x at exactly x's size: the model of x alone; twice the size: x twice
    only_x = idx.fit({"x": 1.0}, budget_tokens=x.size)
    np.testing.assert_allclose(only_x.token_probabilities(test), NGramLM.fit(x, order=4).token_probabilities(test),
                               rtol=1e-12)
    twice = idx.fit({"x": 1.0}, budget_tokens=2 * x.size)
    np.testing.assert_allclose(twice.token_probabilities(test),
                               NGramLM.fit(np.concatenate([x, x]), order=4).token_probabilities(test), rtol=1e-12)
    lk = idx.lookup(test)
    assert lk.bpb(twice) == pytest.approx(twice.bpb(test), rel=1e-12)


def test_mixture_multiplicity_reads_full_passes_then_a_prefix():
    full, prefix = mixture_multiplicity(np.array([0.5, 0.25, 0.25]), np.array([100, 400, 10]), 1000)
    # epochs 5, 0.625, 25
    np.testing.assert_array_equal(full, [5, 0, 25])
    np.testing.assert_array_equal(prefix, [0, 250, 0])
    idx = CountIndex({"a": _b(b"x" * 99 + b"\x00"), "b": _b(b"y" * 399 + b"\x00"), "c": _b(b"z" * 9 + b"\x00")},
                     order=2)
    model = idx.fit(np.array([0.5, 0.25, 0.25]), budget_tokens=1000)
    assert model.tokens == pytest.approx(1000)


def test_a_domain_like_the_target_gives_the_better_model():
    rng = np.random.default_rng(0)
    words = [b"the", b"quick", b"brown", b"fox", b"jumps", b"over", b"lazy", b"dog", b"and", b"runs", b"far"]

    def docs(n):
        return _b(b"\x00".join(b" ".join(words[i] for i in rng.integers(0, len(words), 12)) for _ in range(n)) + b"\x00")

    english, target = docs(300), docs(20)                   # the target: more documents of the same kind
    noise = rng.integers(1, 256, size=english.size).astype(np.uint8)
    idx = CountIndex({"english": english, "noise": noise}, order=5)
    lk = idx.lookup(target)
    bpb = [lk.bpb(idx.fit({"english": w, "noise": 1 - w}, english.size)) for w in (0.1, 0.5, 0.9)]
    assert bpb[0] > bpb[1] > bpb[2]
    assert bpb[2] < 2.0


@pytest.mark.parametrize("call,match", [
    (lambda: NGramLM.fit(_b(b"ab"), order=0), "order"),
    (lambda: NGramLM.fit(_b(b"ab"), order=8), "order"),
    (lambda: NGramLM.fit(np.array([1, 2, 3]), order=2), "uint8"),
    (lambda: NGramLM.fit(np.zeros((2, 2), np.uint8), order=2), "1-D"),
    (lambda: CountIndex({}, order=2), "non-empty"),
    (lambda: CountIndex({"a": _b(b"ab")}, order=2, max_grams=10), "max_grams"),
    (lambda: CountIndex({"a": _b(b"ab")}, order=2).fit({"b": 1.0}, 10), "does not hold"),
    (lambda: CountIndex({"a": _b(b"ab")}, order=2).fit({"a": -1.0}, 10), ">= 0"),
    (lambda: CountIndex({"a": _b(b"ab")}, order=2).fit({"a": 1.0}, 0), "budget_tokens"),
    (lambda: NGramLM.fit(_b(b"ab"), order=2).bpb(_b(b"")), "empty"),
])
def test_bad_inputs_say_what_to_fix(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_offsets_wrap_around_and_redraw_the_partial_pass():
    idx = CountIndex({"a": _b(b"abcdefghi\x00")}, order=1)
    m = idx.multiplicity({"a": 1.0}, budget_tokens=4, offsets=np.array([8]))
    sl = idx.positions("a")
    np.testing.assert_array_equal(np.flatnonzero(m[sl]), [0, 1, 8, 9])   # bytes 8, 9, then 0, 1
    assert m.sum() == 4
    assert idx.seeded_offsets(0).tolist() != idx.seeded_offsets(1).tolist()   # seeds redraw the partial pass


def test_segments_give_the_model_of_the_dense_multiplicity():
    rng = np.random.default_rng(4)
    streams = {k: rng.integers(97, 101, size=n).astype(np.uint8) for k, n in (("a", 300), ("b", 50), ("c", 120))}
    idx = CountIndex(streams, order=4)
    offsets = np.array([250, 10, 0])
    dense = idx.fit_positions(idx.multiplicity([0.2, 0.5, 0.3], 400, offsets))
    runs = idx.fit([0.2, 0.5, 0.3], 400, offsets)
    for a, b in zip(dense.counts, runs.counts):
        np.testing.assert_allclose(a, b)
    assert runs.tokens == pytest.approx(400, abs=1)
