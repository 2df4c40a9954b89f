"""GIS, its tokenizer, c-TF-IDF and NPMI coherence on hand-built corpora with known answers."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from gem_assets.lib.taxonomy import coherence
from gem_assets.lib.taxonomy import ctfidf
from gem_assets.lib.taxonomy import gis
from gem_assets.lib.taxonomy import terms
from gem_assets.lib.teacher import vmf
from gem_assets.lib.taxonomy.gis import TeacherGeometry, TermBatch

# three domains with planted vocabularies; "report" and "today" occur in every document
PLANTED = {0: ["goal", "striker"], 1: ["chip", "software"], 2: ["garlic", "oven"]}
KAPPA = 10.0


def _corpus(n_per: int = 4):
    """3 x n_per documents; the embedding of a domain-k document is exactly e_k (hand-made)."""
    ids, texts, domains, vectors = [], [], [], []
    for k, words in PLANTED.items():
        for i in range(n_per):
            ids.append(f"k{k}-{i}")
            # stop words, numbers and a possessive around the planted words
            texts.append(f"The {words[0]}'s {words[1]} is in the report of 2024, today {i}3 and 7.5%.")
            domains.append(k)
            vectors.append(np.eye(3)[k])
    return ids, texts, np.array(domains), np.array(vectors)


def _geometry(center=None):
    return TeacherGeometry(means=np.eye(3), concentrations=np.full(3, KAPPA), center=center)


def _batches(split: int = 1, with_vectors: bool = True):
    ids, texts, domains, vectors = _corpus()
    cuts = np.array_split(np.arange(len(ids)), split)

    def make():
        for idx in cuts:
            yield TermBatch(ids=[ids[i] for i in idx], texts=[texts[i] for i in idx], domains=domains[idx],
                            vectors=vectors[idx] if with_vectors else None,
                            vector_rows=np.arange(idx.size) if with_vectors else None)
    return make


# --------------------------------------------------------------------------- tokenization
def test_document_terms_drop_stop_words_numbers_and_possessives():
    got = terms.document_terms("The Bank of England's interest rates rose 0.25% in 2004; mp3 sales. Mobile phones!")
    assert got == ["bank", "england", "interest", "rates", "rose", "sales", "mobile", "phones",
                   "england interest", "interest rates", "rates rose", "mobile phones"]
    # a stop word, a number or punctuation between two words breaks the bigram
    assert "bank england" not in got and "rose sales" not in got and "sales mobile" not in got
    assert terms.document_terms("don't stop 3g x y", bigrams=False) == ["stop"]
    assert all(w not in terms.STOP_WORDS for t in got for w in t.split())


def test_vocabulary_min_df_and_cap():
    df = terms.count_document_frequency(["alpha beta", "alpha gamma", "alpha beta", "delta"])
    assert df["alpha"] == 3 and df["alpha beta"] == 2 and df["delta"] == 1
    assert terms.select_vocabulary(df, min_df=2, max_terms=None) == ["alpha", "alpha beta", "beta"]
    assert terms.select_vocabulary(df, min_df=2, max_terms=1) == ["alpha"]
    with pytest.raises(ValueError, match="min_df"):
        terms.select_vocabulary(df, min_df=0)
    with pytest.raises(ValueError, match="max_terms"):
        terms.select_vocabulary(df, max_terms=0)
    with pytest.raises(ValueError, match="str"):
        terms.document_terms(3)


def test_term_matrix_counts_occurrences():
    index = {"alpha": 0, "beta": 1, "alpha beta": 2}
    m = terms.term_matrix(["alpha beta alpha beta", "beta, gamma"], index).toarray()
    np.testing.assert_array_equal(m, [[2, 2, 2], [0, 1, 0]])


# --------------------------------------------------------------------------- GIS
@pytest.mark.parametrize("method", gis.POSTERIORS)
def test_gis_names_the_planted_vocabularies(method):
    geo = _geometry()
    st = gis.collect_term_stats(_batches(), geo, min_df=2, n_exemplars=2)
    assert st.n_documents == st.n_embedded == 12
    assert set(st.vocabulary) == {"goal", "striker", "goal striker", "chip", "software", "chip software", "garlic",
                                  "oven", "garlic oven", "report", "today"}
    np.testing.assert_array_equal(st.n_docs, [4, 4, 4])
    post = gis.term_posteriors(st, geo, method)
    S = gis.gis_scores(st, post)
    tops = gis.top_terms(S, st.vocabulary, 3)
    for k, words in PLANTED.items():
        assert {t for t, _ in tops[k]} == set(words) | {" ".join(words)}
    # hand-computed: a planted word is in every document of its domain (p = 1) and its documents sit at
    # e_k, so post_k = e^kappa / (e^kappa + 2) (equal kappas: log C_d cancels)
    j = st.vocabulary.index("goal")
    assert S[0, j] == pytest.approx(math.exp(KAPPA) / (math.exp(KAPPA) + 2), rel=1e-12)
    assert post[j, 1] == pytest.approx(1 / (math.exp(KAPPA) + 2), rel=1e-9)
    assert S[1, j] == 0.0  # p(goal | 1) = 0
    # a term common to every domain has a flat posterior, hence GIS 1/3 in each
    r = st.vocabulary.index("report")
    np.testing.assert_allclose(post[r], [1 / 3] * 3, atol=1e-12)
    np.testing.assert_allclose(S[:, r], [1 / 3] * 3, atol=1e-12)


def test_gis_posteriors_against_hand_computed_values():
    """Each term posterior of GIS by hand: 'doc_posterior' (mean of the documents' posteriors),
    'mean_log_density' (softmax of their mean log density), 'lift' (the same minus the corpus mean),
    'unit_direction' (the posterior at the normalized sum)."""
    geo = TeacherGeometry(means=np.eye(3), concentrations=np.array([5.0, 10.0, 20.0]))
    X = np.array([[1.0, 0, 0], [0, 1.0, 0], [0.6, 0.8, 0]])
    b = TermBatch(ids=["a", "b", "c"], texts=["alpha beta", "alpha gamma", "alpha"], domains=np.array([0, 1, 0]),
                  vectors=X, vector_rows=np.arange(3))
    st = gis.collect_term_stats(lambda: [b], geo, min_df=1, n_exemplars=0)
    logc = vmf.log_normalizer(np.array([5.0, 10.0, 20.0]), 3)
    L = (X @ (np.eye(3) * [5.0, 10.0, 20.0]).T + logc).mean(axis=0)
    expected = np.exp(L - L.max()) / np.exp(L - L.max()).sum()
    j = st.vocabulary.index("alpha")
    np.testing.assert_allclose(gis.term_posteriors(st, geo, "mean_log_density")[j], expected, rtol=1e-12)
    # GIS = p(w | k) * post: alpha is in 2/2 documents of domain 0 and 1/1 of domain 1
    mld = gis.term_posteriors(st, geo, "mean_log_density")
    np.testing.assert_allclose(gis.gis_scores(st, mld)[:, j], expected * [1, 1, 0])
    # 'doc_posterior' (default): the mean of the documents' posteriors softmax_k log f_k(x_i)
    Q = np.exp(X @ (np.eye(3) * [5.0, 10.0, 20.0]).T + logc)
    Q /= Q.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(gis.term_posteriors(st, geo)[j], Q.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(gis.term_posteriors(st, geo)[st.vocabulary.index("beta")], Q[0], rtol=1e-12)
    # 'lift': the mean log density minus the corpus mean of log f_k: softmax_k(kappa_k mu_k . (xbar_w - xbar));
    # alpha is in every document, so xbar_w = xbar and the posterior is flat
    np.testing.assert_allclose(gis.term_posteriors(st, geo, "lift")[j], [1 / 3] * 3, atol=1e-12)
    jb = st.vocabulary.index("beta")
    Lb = (X[0] - X.mean(axis=0)) * [5.0, 10.0, 20.0]
    np.testing.assert_allclose(gis.term_posteriors(st, geo, "lift")[jb], np.exp(Lb) / np.exp(Lb).sum(), rtol=1e-12)
    # ... whereas 'mean_log_density' pulls the term found everywhere to one domain (the log-normalizers differ)
    assert gis.term_posteriors(st, geo, "mean_log_density")[j].max() > 0.5
    # 'unit_direction' (DESIGN.md as written): posterior at normalize(sum of the raw embeddings)
    e = X.sum(axis=0) / np.linalg.norm(X.sum(axis=0))
    Lu = e @ (np.eye(3) * [5.0, 10.0, 20.0]).T + logc
    np.testing.assert_allclose(gis.term_posteriors(st, geo, "unit_direction")[j], np.exp(Lu) / np.exp(Lu).sum(),
                               rtol=1e-12)


def test_gis_applies_the_teacher_isotropy_transform():
    center = np.array([0.1, 0.1, 0.1])
    geo = _geometry(center)
    x = np.array([[1.0, 0.0, 0.0]])
    t = geo.transform(x)
    np.testing.assert_allclose(t, (x - center) / np.linalg.norm(x - center))
    st = gis.collect_term_stats(_batches(), geo, min_df=2, n_exemplars=0)
    j = st.vocabulary.index("goal")
    expected = geo.posterior(geo.transform(np.eye(3)[[0]]))[0]
    np.testing.assert_allclose(gis.term_posteriors(st, geo, "mean_log_density")[j], expected, rtol=1e-12)
    np.testing.assert_allclose(gis.term_posteriors(st, geo, "unit_direction")[j], expected, rtol=1e-12)
    np.testing.assert_allclose(gis.term_posteriors(st, geo, "doc_posterior")[j], expected, rtol=1e-12)


def test_streaming_over_shards_gives_the_same_statistics():
    geo = _geometry()
    one = gis.collect_term_stats(_batches(1), geo, min_df=2, n_exemplars=3)
    three = gis.collect_term_stats(_batches(3), geo, min_df=2, n_exemplars=3)
    assert one.vocabulary == three.vocabulary
    for name in ("doc_freq", "term_freq", "n_docs", "emb_doc_freq", "raw_sum", "log_density_sum"):
        np.testing.assert_allclose(getattr(one, name), getattr(three, name), rtol=1e-12, err_msg=name)
    assert one.exemplars == three.exemplars


def test_terms_without_embedded_documents_score_zero():
    geo = _geometry()
    st = gis.collect_term_stats(_batches(with_vectors=False), geo, min_df=2, n_exemplars=2)
    assert st.n_embedded == 0 and st.exemplars == [[], [], []]
    assert not gis.gis_scores(st, gis.term_posteriors(st, geo)).any()
    assert gis.top_terms(gis.gis_scores(st, gis.term_posteriors(st, geo)), st.vocabulary, 5) == [[], [], []]


def test_rare_terms_are_left_out():
    ids, texts, domains, vectors = _corpus()
    texts[0] += " zanzibar"   # in one document only
    b = TermBatch(ids, texts, domains, vectors, np.arange(len(ids)))
    st = gis.collect_term_stats(lambda: [b], _geometry(), min_df=2, n_exemplars=0)
    assert "zanzibar" not in st.vocabulary
    st1 = gis.collect_term_stats(lambda: [b], _geometry(), min_df=1, n_exemplars=0)
    assert "zanzibar" in st1.vocabulary


def test_exemplars_are_the_highest_posterior_documents():
    geo = _geometry()
    ids, texts, domains, vectors = _corpus()
    vectors = vectors + 0.0
    vectors[1] = [0.9, 0.3, 0.1]  # k0-1 is a weaker member of domain 0
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    b = TermBatch(ids, texts, domains, vectors, np.arange(len(ids)))
    st = gis.collect_term_stats(lambda: [b], geo, min_df=2, n_exemplars=4, snippet_chars=20)
    ex = st.exemplars[0]
    assert [e["id"] for e in ex] == ["k0-0", "k0-2", "k0-3", "k0-1"]   # ties broken by id, the weak one last
    assert ex[0]["posterior"] >= ex[-1]["posterior"] and len(ex[0]["snippet"]) <= 20
    assert ex[0]["snippet"].endswith("\u2026")


def test_name_from_terms_skips_terms_that_add_no_word():
    assert gis.name_from_terms(["mobile", "mobile phones", "phones", "broadband", "tv"]) == \
        "mobile / phones / broadband"
    assert gis.name_from_terms(["tony blair", "blair", "labour"], n_terms=2, sep=", ") == "tony blair, labour"
    assert gis.name_from_terms([]) == ""


def test_gis_rejects_bad_inputs():
    geo = _geometry()
    with pytest.raises(ValueError, match="unit vectors"):
        TeacherGeometry(means=np.ones((2, 3)), concentrations=np.ones(2))
    with pytest.raises(ValueError, match="concentrations"):
        TeacherGeometry(means=np.eye(3), concentrations=np.array([1.0, -1.0, 1.0]))
    with pytest.raises(ValueError, match="center"):
        TeacherGeometry(means=np.eye(3), concentrations=np.ones(3), center=np.ones(2))
    with pytest.raises(ValueError, match="zero rows"):
        geo.transform(np.zeros((1, 3)))
    bad = TermBatch(["a"], ["goal goal"], np.array([5]))
    with pytest.raises(ValueError, match="domains"):
        gis.collect_term_stats(lambda: [bad], geo, min_df=1)
    bad = TermBatch(["a"], ["goal"], np.array([0]), np.ones((1, 4)), np.array([0]))
    with pytest.raises(ValueError, match="vectors"):
        gis.collect_term_stats(lambda: [bad], geo, min_df=1)
    with pytest.raises(ValueError, match="min_df"):
        gis.collect_term_stats(_batches(), geo, min_df=100)
    calls = Counter()

    def shrinking():  # the second pass sees fewer documents
        calls["n"] += 1
        return _batches(3)() if calls["n"] == 1 else list(_batches(3)())[:1]
    with pytest.raises(ValueError, match="two passes"):
        gis.collect_term_stats(shrinking, geo, min_df=2)
    st = gis.collect_term_stats(_batches(), geo, min_df=2)
    with pytest.raises(ValueError, match="method"):
        gis.term_posteriors(st, geo, "sideways")
    with pytest.raises(ValueError, match="posterior"):
        gis.gis_scores(st, np.zeros((2, 2)))
    with pytest.raises(ValueError, match="group"):
        gis.gis_scores(st, gis.term_posteriors(st, geo), groups=[[0, 7]])
    with pytest.raises(ValueError, match="n must be"):
        gis.top_terms(np.zeros((1, len(st.vocabulary))), st.vocabulary, 0)
    with pytest.raises(ValueError, match="n_exemplars"):
        gis.collect_term_stats(_batches(), geo, n_exemplars=-1)


# --------------------------------------------------------------------------- c-TF-IDF
def test_ctfidf_against_a_hand_computed_value():
    tf = np.array([[2, 0, 1], [0, 3, 1]])
    # row sums 3 and 4 -> A = int(3.5) = 3; f = (2, 3, 2)
    expected = np.array([[2 / 3 * math.log(1 + 3 / 2), 0.0, 1 / 3 * math.log(1 + 3 / 2)],
                         [0.0, 3 / 4 * math.log(1 + 3 / 3), 1 / 4 * math.log(1 + 3 / 2)]])
    np.testing.assert_allclose(ctfidf.ctfidf(tf), expected, rtol=1e-15)
    # an empty class and an unused term score 0
    out = ctfidf.ctfidf(np.array([[2, 0], [0, 0]]))
    assert out[1].sum() == 0 and out[0, 1] == 0
    for bad, match in ((np.zeros((2, 2)), "holds no occurrence"), (np.array([[-1, 2]]), "non-negative finite counts"),
                       (np.array([1, 2]), r"\(K classes, V terms\) array, got shape \(2,\)"),
                       (np.array([[np.nan, 1.0]]), "non-negative finite counts")):
        with pytest.raises(ValueError, match=match):
            ctfidf.ctfidf(bad)


# --------------------------------------------------------------------------- coherence
def test_npmi_against_a_hand_computed_value():
    docs = ["alpha beta", "alpha beta", "alpha", "gamma"]
    co, n = coherence.cooccurrence(lambda: [docs[:2], docs[2:]], ["alpha", "beta", "gamma"])
    assert n == 4
    np.testing.assert_array_equal(co, [[3, 2, 0], [2, 2, 0], [0, 0, 1]])
    M = coherence.npmi(co, n)
    # p(a,b) = 2/4, p(a) = 3/4, p(b) = 2/4
    assert M[0, 1] == pytest.approx(math.log((2 / 4) / (3 / 4 * 2 / 4)) / -math.log(2 / 4), rel=1e-12)
    assert M[0, 2] == -1.0 and M[1, 0] == M[0, 1]
    per = coherence.topic_coherence([["alpha", "beta"], ["alpha", "beta", "gamma"]], co,
                                    ["alpha", "beta", "gamma"], n)
    assert per[0] == pytest.approx(M[0, 1])
    assert per[1] == pytest.approx((M[0, 1] - 1 - 1) / 3)
    # both terms in every document: NPMI 1
    assert coherence.npmi(np.array([[4, 4], [4, 4]]), 4)[0, 1] == 1.0
    with pytest.raises(ValueError, match="at least 2"):
        coherence.topic_coherence([["alpha"]], co, ["alpha", "beta", "gamma"], n)
    with pytest.raises(ValueError, match="cooccurrence"):
        coherence.topic_coherence([["alpha", "delta"]], co, ["alpha", "beta", "gamma"], n)
    with pytest.raises(ValueError, match="symmetric"):
        coherence.npmi(np.array([[1, 0], [1, 1]]), 2)
    with pytest.raises(ValueError, match="exceed"):
        coherence.npmi(np.array([[1, 2], [2, 3]]), 3)
    with pytest.raises(ValueError, match="distinct"):
        coherence.cooccurrence(lambda: [docs], ["alpha", "alpha"])


def test_distinctiveness():
    assert coherence.distinctiveness([["a", "b"], ["b", "c"]]) == 0.5
    assert coherence.distinctiveness([["a", "b"], ["c", "d"]]) == 1.0
    assert coherence.distinctiveness([["a"], ["a"]]) == 0.0
    with pytest.raises(ValueError, match="distinctiveness needs at least one term"):
        coherence.distinctiveness([[], []])
