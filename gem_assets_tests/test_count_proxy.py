"""Mixers on n-gram proxies do their job: RegMix finds the domain like the target, DoReMi the hard one."""

from __future__ import annotations

import numpy as np
import pytest

from gem_assets.lib.mixing.count_proxy import ProxySet, doremi_rounds, regmix_runs
from gem_assets.lib.mixing.regmix import fit_and_propose


def _docs(rng, vocab, n_docs, words=12) -> np.ndarray:
    docs = [b" ".join(vocab[i] for i in rng.integers(0, len(vocab), words)) for _ in range(n_docs)]
    return np.frombuffer(b"\x00".join(docs) + b"\x00", dtype=np.uint8)


def _vocab(rng, n, letters):
    return [bytes(rng.choice(np.frombuffer(letters, np.uint8), size=rng.integers(2, 7))) for _ in range(n)]


@pytest.fixture(scope="module")
def three_languages():
    rng = np.random.default_rng(0)
    langs = {"lang_a": _vocab(rng, 60, b"abcdefgh"), "lang_b": _vocab(rng, 60, b"mnopqrst"),
             "lang_c": _vocab(rng, 60, b"uvwxyz01")}
    train = {k: _docs(rng, v, 150) for k, v in langs.items()}
    valid = {k: _docs(rng, v, 100) for k, v in langs.items()}
    return langs, train, valid, rng


def test_regmix_gives_the_largest_weight_to_the_domain_like_the_target(three_languages):
    langs, train, _, rng = three_languages
    target = _docs(rng, langs["lang_b"], 40)            # new documents of lang_b
    runs = regmix_runs(train, target, 48, budget_tokens=int(sum(s.size for s in train.values()) // 3), seed=0)
    assert runs["mixtures"].shape == (48, 3)
    # a run with more lang_b scores better on the target
    from scipy.stats import spearmanr

    assert spearmanr(runs["mixtures"][:, 1], runs["losses"]).statistic < -0.9
    w, fit = fit_and_propose(runs["mixtures"], runs["losses"], runs["tokens"], float(runs["tokens"].sum()),
                             max_epochs=4.0, top_k=16, n_simulations=2000, seed=0)
    assert int(np.argmax(w)) == runs["domains"].index("lang_b")
    assert w[1] > 0.6 and fit["spearman_cv"] > 0.8


def test_doremi_raises_the_hard_domain_and_lowers_one_without_excess():
    rng = np.random.default_rng(1)
    hard = _docs(rng, _vocab(rng, 400, b"abcdefghijklmnop"), 300)      # many words: more data keeps helping
    medium = _docs(rng, _vocab(rng, 40, b"qrstuvwxyz"), 300)
    trivial = np.frombuffer(b"\x00".join([b"la la la la la la"] * 400) + b"\x00", dtype=np.uint8)  # learnt at once
    train = {"hard": hard, "medium": medium, "trivial": trivial}
    valid = {"hard": _docs(rng, _vocab(np.random.default_rng(1), 400, b"abcdefghijklmnop"), 40),
             "medium": medium[:2000].copy(), "trivial": trivial[:500].copy()}
    res = doremi_rounds(train, valid, budget_tokens=20_000, rounds=12, seed=0)
    w = res.weights
    assert res.excess[:, 2].max() < 1e-3                # the trivial domain: no excess loss
    assert res.excess[0, 0] == res.excess[0].max()      # the hard domain has the highest
    assert w["hard"] > 1 / 3 > w["trivial"]
    assert w["hard"] == max(w.values())
    np.testing.assert_allclose(sum(w.values()), 1.0)
    # the weights the proxies trained on moved the same way round by round
    assert res.trajectory[-1, 0] > res.trajectory[0, 0] and res.trajectory[-1, 2] < res.trajectory[0, 2]


def test_doremi_is_stable_across_seeds(three_languages):
    _, train, valid, _ = three_languages
    a = doremi_rounds(train, valid, budget_tokens=15_000, rounds=16, seed=0).weights
    b = doremi_rounds(train, valid, budget_tokens=15_000, rounds=16, seed=1).weights
    assert sum(abs(a[k] - b[k]) for k in a) < 0.1


def test_proxy_set_runs_share_their_documents():
    rng = np.random.default_rng(2)
    streams = {"x": _docs(rng, _vocab(rng, 30, b"abc"), 50), "y": _docs(rng, _vocab(rng, 30, b"xyz"), 50)}
    ps = ProxySet(streams, budget_tokens=streams["x"].size // 2, seed=3)
    m1 = ps.index.multiplicity({"x": 1.0}, ps.budget_tokens, ps.offsets)
    m2 = ps.index.multiplicity({"x": 0.5, "y": 0.5}, ps.budget_tokens, ps.offsets)
    # the half-weight run reads a prefix of what the full-weight run reads in x
    assert np.all(m2[ps.index.positions("x")] <= m1[ps.index.positions("x")])
    assert m2[ps.index.positions("x")].sum() == pytest.approx(ps.budget_tokens / 2, abs=1)


@pytest.mark.parametrize("call,match", [
    (lambda t: regmix_runs(t, np.zeros(0, np.uint8), 4, 100), "target_stream"),
    (lambda t: regmix_runs(t, t["lang_a"], 1, 100), "n_runs"),
    (lambda t: regmix_runs({"a": t["lang_a"]}, t["lang_a"], 4, 100), "at least 2 domains"),
    (lambda t: doremi_rounds(t, {"lang_a": t["lang_a"]}, 100), "valid_streams lacks"),
    (lambda t: doremi_rounds(t, t, 100, rounds=0), "rounds"),
    (lambda t: doremi_rounds(t, t, 100, smoothing=2.0), "smoothing"),
])
def test_bad_arguments_say_what_to_fix(three_languages, call, match):
    with pytest.raises(ValueError, match=match):
        call(three_languages[1])


def test_regmix_runs_score_several_targets_at_once(three_languages):
    langs, train, _, rng = three_languages
    targets = {"a": _docs(rng, langs["lang_a"], 20), "c": _docs(rng, langs["lang_c"], 20)}
    runs = regmix_runs(train, targets, 12, budget_tokens=9000, seed=0)
    one = regmix_runs(train, targets["c"], 12, budget_tokens=9000, seed=0)
    np.testing.assert_allclose(runs["losses"]["c"], one["losses"])
    # each target's best run leans on its own language
    assert runs["mixtures"][np.argmin(runs["losses"]["a"]), 0] > runs["mixtures"][np.argmin(runs["losses"]["c"]), 0]


def test_regmix_runs_on_a_corpus_smaller_than_the_budget_read_it_all(three_languages):
    _, train, _, rng = three_languages
    total = sum(s.size for s in train.values())
    runs = regmix_runs(train, train["lang_a"], 4, budget_tokens=10 * total, seed=0)
    assert runs["budget_tokens"] == total and np.isfinite(runs["losses"]).all()
