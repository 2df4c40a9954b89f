"""Interpretability of domain names: NPMI coherence of their top terms and distinctiveness.

NPMI (Bouma 2009; the topic-coherence measure of Lau, Newman & Baldwin 2014 / Roeder et al. 2015)
with document co-occurrence estimated on the corpus::

    NPMI(a, b) = log( p(a, b) / (p(a) p(b)) ) / ( -log p(a, b) ),   p(x) = D(x) / N

with ``D(x)`` the documents containing x (and ``D(a, b)`` those containing both). NPMI is in
[-1, 1]; by convention it is -1 when the terms never co-occur and 1 when p(a, b) = 1. A name's
coherence is the mean NPMI over the pairs of its top terms.

Distinctiveness of a set of names: the share of all top-term slots whose term appears in the top
terms of exactly one domain (1: no domain shares a term with another).
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import numpy as np

__all__ = ["npmi", "cooccurrence", "topic_coherence", "distinctiveness"]


def npmi(co: np.ndarray, n_docs: int) -> np.ndarray:
    """NPMI of every pair of terms from their document co-occurrence counts.

    Parameters
    ----------
    co : array (T, T)
        ``co[a, b]`` documents containing both a and b; the diagonal holds each term's document count.
    n_docs : int
        Documents in the corpus.

    Returns
    -------
    ndarray (T, T) float64
        NPMI in [-1, 1] (diagonal included).

    Raises
    ------
    ValueError
        If ``co`` is not square, symmetric, non-negative, or a count exceeds ``n_docs``, or if a
        term occurs in no document.
    """
    C = np.asarray(co, dtype=np.float64)
    if C.ndim != 2 or C.shape[0] != C.shape[1]:
        raise ValueError(f"co must be a square (T, T) matrix, got shape {C.shape}")
    if isinstance(n_docs, bool) or not isinstance(n_docs, (int, np.integer)) or n_docs < 1:
        raise ValueError(f"n_docs must be an integer >= 1, got {n_docs!r}")
    if np.any(C < 0) or not np.allclose(C, C.T) or np.any(C > n_docs):
        raise ValueError("co must be symmetric counts between 0 and n_docs")
    d = np.diag(C)
    if np.any(d <= 0):
        raise ValueError("every term must occur in at least one document (a zero on co's diagonal)")
    if np.any(C > np.minimum.outer(d, d) + 1e-9):
        raise ValueError("co[a, b] cannot exceed the document count of a or of b")
    p = C / n_docs
    pa = d / n_docs
    out = np.full(C.shape, -1.0)
    both = C > 0
    full = both & (p >= 1.0)
    part = both & ~full
    pmi = np.log(p[part]) - np.log(np.outer(pa, pa)[part])
    out[part] = pmi / -np.log(p[part])
    out[full] = 1.0
    return np.clip(out, -1.0, 1.0)


def cooccurrence(batches: Callable[[], Iterable[Sequence[str]]], terms: Sequence[str],
                 bigrams: bool = True, progress: bool = False) -> tuple[np.ndarray, int]:
    """Document co-occurrence counts of ``terms`` over a corpus streamed in batches of texts.

    Parameters
    ----------
    batches : callable returning an iterable of sequences of str
        The corpus, one batch (e.g. a shard's texts) at a time.
    terms : sequence of str
        Terms, tokenized as in :mod:`gem_assets.lib.taxonomy.terms`.
    bigrams : bool
        Whether the tokenizer makes bigram terms (must match how ``terms`` were made).
    progress : bool
        A tqdm bar over the batches.

    Returns
    -------
    co : ndarray (T, T) int64
        Documents containing both terms (the diagonal: each term's documents).
    n_docs : int
    """
    from tqdm.auto import tqdm

    from gem_assets.lib.taxonomy.terms import term_matrix

    uniq = list(dict.fromkeys(terms))
    if len(uniq) != len(terms):
        raise ValueError("terms must be distinct")
    index = {t: j for j, t in enumerate(uniq)}
    co = np.zeros((len(uniq), len(uniq)), dtype=np.int64)
    n = 0
    for texts in tqdm(batches(), desc="co-occurrence", unit="batch", disable=not progress):
        B = term_matrix(list(texts), index, bigrams)
        B.data[:] = 1
        co += np.asarray((B.T @ B).toarray(), dtype=np.int64)
        n += B.shape[0]
    return co, n


def topic_coherence(top: Sequence[Sequence[str]], co: np.ndarray, terms: Sequence[str], n_docs: int) -> np.ndarray:
    """Mean pairwise NPMI of each name's top terms.

    Parameters
    ----------
    top : sequence of sequences of str
        Each domain's top terms (at least 2 each).
    co, terms, n_docs
        From :func:`cooccurrence` (``terms`` must contain every top term).

    Returns
    -------
    ndarray (G,) float64
    """
    index = {t: j for j, t in enumerate(terms)}
    M = npmi(co, n_docs)
    out = np.empty(len(top), dtype=np.float64)
    for g, words in enumerate(top):
        if len(words) < 2:
            raise ValueError(f"domain {g} has {len(words)} top term(s): coherence needs at least 2")
        missing = [w for w in words if w not in index]
        if missing:
            raise ValueError(f"terms {missing[:3]} have no co-occurrence counts: pass them to cooccurrence()")
        idx = np.array([index[w] for w in words])
        sub = M[np.ix_(idx, idx)]
        iu = np.triu_indices(idx.size, k=1)
        out[g] = float(sub[iu].mean())
    return out


def distinctiveness(top: Sequence[Sequence[str]]) -> float:
    """Share of top-term slots holding a term that no other domain's top terms contain.

    Parameters
    ----------
    top : sequence of sequences of str
        Each domain's top terms (a term counted once per domain).

    Returns
    -------
    float
        In [0, 1]; 1 when the lists are pairwise disjoint.
    """
    sets = [set(t) for t in top]
    slots = sum(len(s) for s in sets)
    if slots == 0:
        raise ValueError("no top terms: distinctiveness needs at least one term")
    from collections import Counter

    owners = Counter(t for s in sets for t in s)
    return float(sum(1 for s in sets for t in s if owners[t] == 1) / slots)
