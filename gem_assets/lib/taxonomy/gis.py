"""Geometric Influence Score (GIS): which terms name a GEM domain, computed streaming over shards.

For a term w (word or bigram, :mod:`gem_assets.lib.taxonomy.terms`) and a domain k (docs/method.md)::

    GIS(w, k) = p(w | k) * post_k(w)

- ``p(w | k)``: the share of domain k's documents that contain w (document frequency inside k,
  over every labelled document of the corpus, embedded or not);
- ``post_k(w)``: the teacher's posterior for the term's own position on the sphere, with the
  uniform (decoupled) prior of the GEM objective: softmax over domains j of ``log f_j``.

Four definitions of the term's posterior are implemented (``method``); all use the embedded
documents D_w containing w and the teacher's isotropy transform (derivations in docs/method.md,
section "GIS"):

``"doc_posterior"`` (default)
    ``post_k(w) = mean_{i in D_w} Q_ik`` with ``Q_ik = softmax_k log f_k(x_i)`` the teacher's posterior
    of document i (uniform prior): the average of the documents' posteriors instead of the posterior
    of their average direction. Then ``GIS(w, k) = p(w | k) p(k | w)``: frequent in k, and found
    (by the teacher's geometry) mostly in k. A term spread over the corpus gets ``p(k | w)`` near the
    domain shares, so it scores low; averaging posteriors never credits a domain that none of the
    term's documents belongs to, which averaging directions does (the mean of documents from two
    domains can land nearest a third).
``"unit_direction"`` (the direction of the raw embeddings)
    ``e_w = normalize(sum of the raw embeddings of the embedded documents containing w)``, moved into
    the teacher's space by the teacher's own isotropy transform, then ``post_k(e_w)``.
``"mean_log_density"``
    ``post_k(w) = softmax_k( mean_{i in D_w} log f_k(x_i) )``: the posterior that the term's documents
    share one domain, tempered by their number (= the posterior at the mean resultant, not
    renormalized, because ``log f_k(x) = log C_d(kappa_k) + kappa_k mu_k^T x`` is linear in x). The
    log-normalizers do not cancel: a term spread over every domain is pulled to the broadest domain
    (smallest kappa), which then gets named by common words.
``"lift"``
    ``post_k(w) = softmax_k( mean_{i in D_w} log f_k(x_i) - mean_{all embedded j} log f_k(x_j) )``: the
    same against the corpus average, ``softmax_k(kappa_k mu_k^T (xbar_w - xbar))``; a term whose
    documents look like the corpus on average gets exactly 1/K, but domains near the corpus mean
    are penalized.

Streaming: :func:`collect_term_stats` makes two passes over the shards (a callable returning an
iterator of :class:`TermBatch`): pass 1 counts document frequencies to choose the vocabulary
(``min_df``, ``max_terms``); pass 2 accumulates, per term, its document and token counts per domain,
the sums of the raw embeddings, of the per-domain log densities and of the posteriors of the embedded
documents containing it, and keeps the highest-posterior exemplars of each domain.

Bounded memory: pass 1 counts with
:class:`gem_assets.lib.taxonomy.terms.BoundedDocumentFrequency`, which holds at most ``count_capacity`` terms
(lossy counting; exact while the corpus has fewer distinct terms), so the counting does not grow
with the corpus; the vocabulary is at most ``max_terms``; pass 2 counts exactly over that vocabulary.
Pass 2 keeps only the per-term sums the requested ``posteriors`` need: the (V, d) sum of raw
embeddings (the largest array: 150 MiB at V = 50,000, d = 384) only for ``"unit_direction"``.
Memory is then O(count_capacity + V (4K [+ d])) whatever the corpus size; one batch is held at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np

from gem_assets.lib.taxonomy import terms as T
from gem_assets.lib.util.allocator import release_memory

__all__ = ["TeacherGeometry", "TermBatch", "TermStats", "collect_term_stats", "term_posteriors", "gis_scores",
           "top_terms", "name_from_terms", "POSTERIORS"]

POSTERIORS = ("doc_posterior", "unit_direction", "mean_log_density", "lift")


def _softmax_rows(L: np.ndarray) -> np.ndarray:
    L = L - L.max(axis=1, keepdims=True)
    P = np.exp(L)
    return P / P.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class TeacherGeometry:
    """The fitted teacher's geometry in float64 numpy: what GIS and the exemplars need.

    Parameters
    ----------
    means : ndarray (K, d)
        Unit mean directions mu_k (in the isotropy-corrected space).
    concentrations : ndarray (K,)
        kappa_k > 0.
    center : ndarray (d,) or None
        Isotropy centre subtracted from unit embeddings before renormalizing (``None``: no transform).
    log_weights : ndarray (K,) or None
        The teacher's balanced log prior, used for the exemplars' posterior (the one that assigns
        documents); ``None`` means uniform.
    """

    means: np.ndarray
    concentrations: np.ndarray
    center: np.ndarray | None = None
    log_weights: np.ndarray | None = None

    def __post_init__(self):
        mu = np.asarray(self.means, dtype=np.float64)
        kappa = np.asarray(self.concentrations, dtype=np.float64)
        if mu.ndim != 2 or mu.shape[0] < 1 or mu.shape[1] < 2:
            raise ValueError(f"means must be a (K, d) array with d >= 2, got shape {mu.shape}")
        if kappa.shape != (mu.shape[0],) or not np.all(np.isfinite(kappa)) or np.any(kappa <= 0):
            raise ValueError(f"concentrations must be {mu.shape[0]} finite positive numbers, got {kappa!r}")
        if not np.all(np.isfinite(mu)) or not np.allclose(np.linalg.norm(mu, axis=1), 1.0, atol=1e-6):
            raise ValueError("means must be finite unit vectors (one row per domain)")
        object.__setattr__(self, "means", mu)
        object.__setattr__(self, "concentrations", kappa)
        if self.center is not None:
            c = np.asarray(self.center, dtype=np.float64)
            if c.shape != (mu.shape[1],) or not np.all(np.isfinite(c)):
                raise ValueError(f"center must be a finite vector of dim {mu.shape[1]}, got shape {c.shape}")
            object.__setattr__(self, "center", c)
        if self.log_weights is not None:
            w = np.asarray(self.log_weights, dtype=np.float64)
            if w.shape != kappa.shape or not np.all(np.isfinite(w)):
                raise ValueError(f"log_weights must be {mu.shape[0]} finite numbers")
            object.__setattr__(self, "log_weights", w)

    @classmethod
    def from_gem(cls, model) -> "TeacherGeometry":
        """The geometry of a fitted :class:`gem_assets.lib.teacher.gem.GEM` (its isotropy centre included)."""
        if not hasattr(model, "means_"):
            raise ValueError("the GEM model is not fitted: fit it or load a fitted one (GEM.load)")
        return cls(means=model.means_, concentrations=model.concentrations_, center=getattr(model, "center_", None),
                   log_weights=getattr(model, "log_weights_", None))

    @property
    def k(self) -> int:
        return int(self.means.shape[0])

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    def transform(self, X) -> np.ndarray:
        """Unit rows moved into the teacher's space: subtract the centre, renormalize (float64).

        Raises
        ------
        ValueError
            If X has the wrong dimension, holds NaN/inf or a zero row.
        """
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.dim:
            raise ValueError(f"embeddings must be (n, {self.dim}), got shape {X.shape}")
        norms = np.linalg.norm(X, axis=1)
        if not np.all(np.isfinite(norms)) or np.any(norms <= 1e-30):
            raise ValueError("embeddings hold NaN/inf or zero rows: drop those documents")
        X = X / norms[:, None]
        if self.center is None:
            return X
        Xc = X - self.center
        n2 = np.linalg.norm(Xc, axis=1)
        keep = n2 > 1e-12  # a point at the centre has no direction: keep its raw one (as GEM does)
        return np.where(keep[:, None], Xc / np.where(keep, n2, 1.0)[:, None], X)

    def log_densities(self, R) -> np.ndarray:
        """log f_k(r) = log C_d(kappa_k) + kappa_k mu_k^T r for rows r of R (transformed space), (n, K).

        Rows need not be unit: the expression is linear in r, so the mean of the log densities of
        several points is the log density expression at their mean.
        """
        from gem_assets.lib.teacher import vmf

        R = np.asarray(R, dtype=np.float64)
        log_c = vmf.log_normalizer(self.concentrations, self.dim)
        return R @ (self.means * self.concentrations[:, None]).T + log_c[None, :]

    def posterior(self, R, prior: bool = False) -> np.ndarray:
        """softmax_k of :meth:`log_densities` (+ the balanced log prior when ``prior``), (n, K)."""
        L = self.log_densities(R)
        if prior and self.log_weights is not None:
            L = L + self.log_weights[None, :]
        return _softmax_rows(L)


@dataclass
class TermBatch:
    """One shard (or part of one) streamed into :func:`collect_term_stats`.

    Parameters
    ----------
    ids : sequence of str
        Document ids.
    texts : sequence of str
        Document texts.
    domains : array of int (n,)
        Each document's domain (the student's label), in ``[0, K)``.
    vectors : array (m, d) or None
        Raw unit embeddings of the embedded documents of the batch (none: ``None``).
    vector_rows : array of int (m,) or None
        Position in ``texts`` of each row of ``vectors``.
    """

    ids: Sequence[str]
    texts: Sequence[str]
    domains: np.ndarray
    vectors: np.ndarray | None = None
    vector_rows: np.ndarray | None = None


@dataclass
class TermStats:
    """What GIS, c-TF-IDF and the exemplars need, accumulated over the corpus.

    Attributes
    ----------
    vocabulary : list of str
        The V terms (columns of the arrays below).
    doc_freq : ndarray (K, V) int64
        Documents of each domain containing each term.
    term_freq : ndarray (K, V) int64
        Occurrences of each term in each domain's documents (what c-TF-IDF uses).
    n_docs : ndarray (K,) int64
        Documents per domain.
    emb_doc_freq : ndarray (V,) int64
        Embedded documents containing each term.
    raw_sum : ndarray (V, d) float64 or None
        Sum of the raw unit embeddings of the embedded documents containing each term (``None`` when
        not collected: only ``"unit_direction"`` needs it).
    log_density_sum : ndarray (V, K) float64 or None
        Sum over the same documents of log f_k(transformed embedding) (``"mean_log_density"``,
        ``"lift"``).
    log_density_total : ndarray (K,) float64
        Sum of log f_k over every embedded document.
    posterior_sum : ndarray (V, K) float64 or None
        Sum over the same documents of the teacher's posterior Q_ik (uniform prior; ``"doc_posterior"``).
    exemplars : list of list of dict
        Per domain, up to ``n_exemplars`` documents of highest (balanced) posterior for it:
        ``id``, ``posterior``, ``snippet``.
    n_documents, n_embedded : int
        Documents seen (each pass) and embedded documents seen.
    counting : dict
        How pass 1 counted: ``capacity``, ``exact`` (no term forgotten), ``prunes``, ``error_bound``,
        ``peak_terms`` (see :class:`gem_assets.lib.taxonomy.terms.BoundedDocumentFrequency`).
    """

    vocabulary: list[str]
    doc_freq: np.ndarray
    term_freq: np.ndarray
    n_docs: np.ndarray
    emb_doc_freq: np.ndarray
    raw_sum: np.ndarray | None
    log_density_sum: np.ndarray | None
    log_density_total: np.ndarray | None = None
    posterior_sum: np.ndarray | None = None
    exemplars: list[list[dict]] = field(default_factory=list)
    n_documents: int = 0
    n_embedded: int = 0
    counting: dict = field(default_factory=dict)

    @property
    def k(self) -> int:
        return int(self.n_docs.size)


def _snippet(text: str, n: int) -> str:
    s = " ".join(text.split())
    return s if len(s) <= n else s[: n - 1].rstrip() + "\u2026"


def _check_batch(b: TermBatch, k: int, dim: int) -> np.ndarray:
    n = len(b.texts)
    if len(b.ids) != n:
        raise ValueError(f"a batch has {len(b.ids)} ids for {n} texts")
    dom = np.asarray(b.domains)
    if dom.shape != (n,) or (n and (not np.issubdtype(dom.dtype, np.integer) or dom.min() < 0 or dom.max() >= k)):
        raise ValueError(f"domains must be {n} integers in [0, {k}) (one per text), got shape {dom.shape}")
    if b.vectors is not None:
        rows = np.asarray(b.vector_rows if b.vector_rows is not None else [], dtype=np.int64)
        if np.ndim(b.vectors) != 2 or np.shape(b.vectors)[1] != dim or rows.shape != (np.shape(b.vectors)[0],):
            raise ValueError(f"vectors must be (m, {dim}) with one vector_rows entry per row")
        if rows.size and (rows.min() < 0 or rows.max() >= n):
            raise ValueError("vector_rows must index the batch's texts")
    return dom.astype(np.int64)


def _merge_top(best: list[list[tuple]], post: np.ndarray, ids, snippets, m: int) -> None:
    """Keep, per domain, the m (posterior, id, snippet) of highest posterior (ties: smaller id)."""
    for k in range(post.shape[1]):
        cand = best[k] + [(float(post[i, k]), ids[i], snippets[i]) for i in
                          np.argsort(-post[:, k], kind="stable")[:m]]
        cand.sort(key=lambda t: (-t[0], t[1]))
        best[k] = cand[:m]


#: The per-term sums each term posterior needs (:func:`term_posteriors`).
_NEEDS = {"doc_posterior": "posterior_sum", "unit_direction": "raw_sum", "mean_log_density": "log_density_sum",
          "lift": "log_density_sum"}


def collect_term_stats(batches: Callable[[], Iterable[TermBatch]], geometry: TeacherGeometry, *, min_df: int = 5,
                       max_terms: int | None = 50_000, bigrams: bool = True, n_exemplars: int = 5,
                       snippet_chars: int = 240, count_capacity: int | None = None,
                       posteriors: Sequence[str] | None = None, progress: bool = False) -> TermStats:
    """Stream the corpus twice and accumulate the per-term statistics of GIS and c-TF-IDF.

    Parameters
    ----------
    batches : callable returning an iterable of TermBatch
        Called once per pass; both passes must yield the same documents (e.g. one batch per shard,
        read from disk each time).
    geometry : TeacherGeometry
        The fitted teacher.
    min_df, max_terms : int
        Vocabulary: terms in at least ``min_df`` documents, the ``max_terms`` most frequent
        (:func:`gem_assets.lib.taxonomy.terms.select_vocabulary`).
    bigrams : bool
        Bigram terms as well as words.
    n_exemplars : int
        Exemplars kept per domain (highest balanced posterior among embedded documents).
    snippet_chars : int
        Length of an exemplar's snippet (whitespace collapsed).
    count_capacity : int or None
        Most distinct terms held while counting document frequencies in pass 1
        (:class:`gem_assets.lib.taxonomy.terms.BoundedDocumentFrequency`); ``None``: exact, unbounded. Must be
        at least ``2 * max_terms`` so that a prune never leaves fewer terms than the vocabulary.
    posteriors : sequence of str, optional
        The term posteriors (:data:`POSTERIORS`) the statistics must support; only their sums are
        kept (default: all four).
    progress : bool
        tqdm bars over the batches of each pass.

    Returns
    -------
    TermStats

    Raises
    ------
    ValueError
        On malformed batches, when the two passes see different numbers of documents, or when the
        vocabulary is empty (lower ``min_df``).
    """
    import scipy.sparse as sp
    from tqdm.auto import tqdm

    if isinstance(n_exemplars, bool) or not isinstance(n_exemplars, (int, np.integer)) or n_exemplars < 0:
        raise ValueError(f"n_exemplars must be an integer >= 0, got {n_exemplars!r}")
    if isinstance(snippet_chars, bool) or not isinstance(snippet_chars, (int, np.integer)) or snippet_chars < 8:
        raise ValueError(f"snippet_chars must be an integer >= 8, got {snippet_chars!r}")
    wanted = POSTERIORS if posteriors is None else tuple(posteriors)
    unknown = [m for m in wanted if m not in POSTERIORS]
    if unknown or not wanted:
        raise ValueError(f"posteriors must be a non-empty subset of {POSTERIORS}, got {list(wanted)}")
    if count_capacity is not None and max_terms is not None and isinstance(count_capacity, (int, np.integer)) \
            and not isinstance(count_capacity, bool) and count_capacity < 2 * max_terms:
        raise ValueError(f"count_capacity ({count_capacity}) must be at least 2 * max_terms ({2 * max_terms}): a prune "
                         "keeps capacity // 2 terms, which must hold the whole vocabulary")
    keep = {_NEEDS[m] for m in wanted}
    K, d = geometry.k, geometry.dim

    counter = T.BoundedDocumentFrequency(count_capacity, bigrams)
    n_pass1 = 0
    for b in tqdm(batches(), desc="GIS pass 1/2 (vocabulary)", unit="shard", disable=not progress):
        _check_batch(b, K, d)
        counter.update(b.texts)
        n_pass1 += len(b.texts)
    vocab = T.select_vocabulary(counter.counts, min_df=min_df, max_terms=max_terms)
    counting = {"capacity": counter.capacity, "exact": counter.exact, "prunes": counter.prunes,
                "error_bound": counter.error_bound, "peak_terms": counter.peak_terms}
    del counter
    release_memory()  # the counter's strings are garbage now: hand their pages back before pass 2
    if not vocab:
        raise ValueError(f"no term occurs in at least min_df={min_df} of the {n_pass1} documents: lower min_df")
    index = {t: j for j, t in enumerate(vocab)}
    V = len(vocab)
    doc_freq = np.zeros((K, V), dtype=np.int64)
    term_freq = np.zeros((K, V), dtype=np.int64)
    n_docs = np.zeros(K, dtype=np.int64)
    emb_df = np.zeros(V, dtype=np.int64)
    raw_sum = np.zeros((V, d), dtype=np.float64) if "raw_sum" in keep else None
    ld_sum = np.zeros((V, K), dtype=np.float64) if "log_density_sum" in keep else None
    ld_total = np.zeros(K, dtype=np.float64)
    q_sum = np.zeros((V, K), dtype=np.float64) if "posterior_sum" in keep else None
    best: list[list[tuple]] = [[] for _ in range(K)]
    n_pass2 = n_emb = 0
    for b in tqdm(batches(), desc="GIS pass 2/2 (statistics)", unit="shard", disable=not progress):
        dom = _check_batch(b, K, d)
        n = len(b.texts)
        n_pass2 += n
        if n == 0:
            continue
        C = T.term_matrix(b.texts, index, bigrams)                                  # (n, V) counts
        B = C.copy()
        B.data[:] = 1
        onehot = sp.csr_matrix((np.ones(n, dtype=np.int64), (dom, np.arange(n))), shape=(K, n))
        doc_freq += (onehot @ B).toarray()
        term_freq += (onehot @ C).toarray()
        n_docs += np.bincount(dom, minlength=K)
        if b.vectors is None or len(b.vector_rows) == 0:
            continue
        rows = np.asarray(b.vector_rows, dtype=np.int64)
        raw = np.asarray(b.vectors, dtype=np.float64)
        raw = raw / np.linalg.norm(raw, axis=1, keepdims=True)
        X = geometry.transform(raw)
        Be = B[rows]                                                                 # (m, V)
        emb_df += np.asarray(Be.sum(axis=0)).ravel()
        if raw_sum is not None:
            raw_sum += np.asarray(Be.T @ raw)
        L = geometry.log_densities(X)
        if ld_sum is not None:
            ld_sum += np.asarray(Be.T @ L)
        ld_total += L.sum(axis=0)
        if q_sum is not None:
            q_sum += np.asarray(Be.T @ _softmax_rows(L))
        n_emb += rows.size
        if n_exemplars:
            ids = [b.ids[i] for i in rows]
            snippets = [_snippet(b.texts[i], snippet_chars) for i in rows]
            _merge_top(best, geometry.posterior(X, prior=True), ids, snippets, n_exemplars)
    if n_pass2 != n_pass1:
        raise ValueError(f"the two passes saw {n_pass1} and {n_pass2} documents: batches() must yield the "
                         "same documents each time it is called")
    exemplars = [[{"id": i, "posterior": p, "snippet": s} for p, i, s in top] for top in best]
    release_memory()
    return TermStats(vocabulary=vocab, doc_freq=doc_freq, term_freq=term_freq, n_docs=n_docs, emb_doc_freq=emb_df,
                     raw_sum=raw_sum, log_density_sum=ld_sum, log_density_total=ld_total, posterior_sum=q_sum, exemplars=exemplars, n_documents=n_pass2,
                     n_embedded=n_emb, counting=counting)


def term_posteriors(stats: TermStats, geometry: TeacherGeometry, method: str = "doc_posterior") -> np.ndarray:
    """post_k(w) for every term, shape (V, K); rows of terms in no embedded document are 0.

    Parameters
    ----------
    stats : TermStats
    geometry : TeacherGeometry
    method : {"doc_posterior", "unit_direction", "mean_log_density", "lift"}
        See the module docstring.
    """
    if method not in POSTERIORS:
        raise ValueError(f"method must be one of {POSTERIORS}, got {method!r}")
    if getattr(stats, _NEEDS[method]) is None:
        raise ValueError(f"the statistics were collected without {_NEEDS[method]!r}, which the {method!r} posterior "
                         f"needs: pass posteriors=[{method!r}] (or None) to collect_term_stats")
    has = stats.emb_doc_freq > 0
    out = np.zeros((len(stats.vocabulary), geometry.k), dtype=np.float64)
    if not has.any():
        return out
    n_w = stats.emb_doc_freq[has][:, None]
    if method == "doc_posterior":
        out[has] = stats.posterior_sum[has] / n_w
    elif method == "unit_direction":
        e = stats.raw_sum[has]
        out[has] = geometry.posterior(geometry.transform(e / np.linalg.norm(e, axis=1, keepdims=True)))
    else:
        L = stats.log_density_sum[has] / n_w
        if method == "lift":
            L = L - stats.log_density_total[None, :] / max(stats.n_embedded, 1)
        out[has] = _softmax_rows(L)
    return out


def gis_scores(stats: TermStats, posterior: np.ndarray, groups: Sequence[Sequence[int]] | None = None) -> np.ndarray:
    """GIS(w, g) = p(w | g) * post_g(w) for each domain (or group of domains), shape (G, V).

    For a group g of domains (an internal node of the taxonomy), ``p(w | g)`` is the document
    frequency of w among the group's documents and ``post_g = sum_{k in g} post_k`` (the posterior
    of the merged domain).

    Parameters
    ----------
    stats : TermStats
    posterior : ndarray (V, K)
        From :func:`term_posteriors`.
    groups : sequence of sequences of int, optional
        Domains of each group; default one group per domain.

    Returns
    -------
    ndarray (G, V) float64
        Non-negative; 0 for terms in no embedded document and for empty groups.
    """
    K = stats.k
    P = np.asarray(posterior, dtype=np.float64)
    if P.shape != (len(stats.vocabulary), K):
        raise ValueError(f"posterior must have shape {(len(stats.vocabulary), K)}, got {P.shape}")
    groups = [[k] for k in range(K)] if groups is None else groups
    out = np.zeros((len(groups), P.shape[0]), dtype=np.float64)
    for g, members in enumerate(groups):
        idx = np.asarray(list(members), dtype=np.int64)
        if idx.size == 0 or idx.min() < 0 or idx.max() >= K:
            raise ValueError(f"group {g} must list domains in [0, {K}), got {list(members)}")
        n = stats.n_docs[idx].sum()
        if n == 0:
            continue
        out[g] = stats.doc_freq[idx].sum(axis=0) / n * P[:, idx].sum(axis=1)
    return out


def top_terms(scores: np.ndarray, vocabulary: Sequence[str], n: int = 10) -> list[list[tuple[str, float]]]:
    """The ``n`` highest-scoring terms of each row (positive scores only; ties by term).

    Returns
    -------
    list of list of (term, score)
    """
    S = np.asarray(scores, dtype=np.float64)
    if S.ndim != 2 or S.shape[1] != len(vocabulary):
        raise ValueError(f"scores must be (G, {len(vocabulary)}), got shape {S.shape}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    voc = np.asarray(vocabulary, dtype=object)
    out = []
    for row in S:
        order = np.lexsort((voc, -row))
        out.append([(str(voc[j]), float(row[j])) for j in order[:n] if row[j] > 0])
    return out


def name_from_terms(ranked: Sequence[str], n_terms: int = 3, sep: str = " / ") -> str:
    """A short name from ranked terms: the first ``n_terms`` that share no word with the name so far.

    ``["mobile", "mobile phones", "phones", "broadband"]`` -> ``"mobile / phones / broadband"``
    (the bigram repeats "mobile").
    """
    picked, words = [], set()
    for term in ranked:
        ws = set(term.split())
        if ws & words:
            continue
        picked.append(term)
        words |= ws
        if len(picked) == n_terms:
            break
    return sep.join(picked)
