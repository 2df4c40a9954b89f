"""Class-based TF-IDF (c-TF-IDF) as BERTopic defines it: the comparison for GIS names.

BERTopic (Grootendorst 2022; ``bertopic.vectorizers.ClassTfidfTransformer`` with its defaults,
``bm25_weighting=False``, ``reduce_frequent_words=False``) joins the documents of each class into one
document and scores term t for class c as::

    W(t, c) = tf(t, c) / sum_t' tf(t', c)  *  log(1 + A / f(t))

with ``tf(t, c)`` the occurrences of t in class c, ``f(t) = sum_c tf(t, c)`` and ``A`` the average
number of term occurrences per class, truncated to an integer (``int(X.sum(axis=1).mean())``).
"""

from __future__ import annotations

import numpy as np

__all__ = ["ctfidf"]


def ctfidf(term_freq) -> np.ndarray:
    """c-TF-IDF of each term for each class.

    Parameters
    ----------
    term_freq : array (K, V)
        Occurrences of each term in each class (non-negative counts).

    Returns
    -------
    ndarray (K, V) float64
        The scores; 0 for terms that never occur and for empty classes.

    Raises
    ------
    ValueError
        If the counts are not a non-negative finite 2-D array or hold no occurrence at all.
    """
    X = np.asarray(term_freq, dtype=np.float64)
    if X.ndim != 2 or X.size == 0:
        raise ValueError(f"term_freq must be a non-empty (K classes, V terms) array, got shape {X.shape}")
    if not np.all(np.isfinite(X)) or np.any(X < 0):
        raise ValueError("term_freq must hold non-negative finite counts")
    if X.sum() <= 0:
        raise ValueError("term_freq holds no occurrence: the classes have no terms of the vocabulary")
    f = X.sum(axis=0)
    avg = int(X.sum(axis=1).mean())
    idf = np.zeros_like(f)
    seen = f > 0
    idf[seen] = np.log(1.0 + avg / f[seen])
    rows = X.sum(axis=1, keepdims=True)
    tf = np.divide(X, rows, out=np.zeros_like(X), where=rows > 0)
    return tf * idf[None, :]
