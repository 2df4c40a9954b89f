"""Balance and agreement metrics of a bucketization (a partition of a corpus into K domains).

All functions take plain numpy arrays and return Python floats/ints so they can go straight into
metadata, MLflow or a table.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "shares_from_labels",
    "share_entropy",
    "normalized_share_entropy",
    "effective_k",
    "dead_domains",
    "max_share",
    "nmi",
    "balance_stats",
]


def shares_from_labels(labels, n_clusters: int) -> np.ndarray:
    """Share of the documents in each of ``n_clusters`` domains.

    Parameters
    ----------
    labels : array-like of int, shape (N,)
        Domain of each document, in ``[0, n_clusters)``.
    n_clusters : int
        Number of domains K; domains with no document get share 0.

    Returns
    -------
    shares : ndarray of float64, shape (K,), summing to 1.
    """
    labels = np.asarray(labels).ravel()
    if labels.size == 0:
        raise ValueError("labels is empty: cannot compute domain shares of zero documents")
    if labels.min() < 0 or labels.max() >= n_clusters:
        raise ValueError(f"labels must lie in [0, {n_clusters}); got range [{labels.min()}, {labels.max()}]")
    counts = np.bincount(labels.astype(np.int64), minlength=n_clusters).astype(np.float64)
    return counts / counts.sum()


def _check_shares(shares) -> np.ndarray:
    p = np.asarray(shares, dtype=np.float64).ravel()
    if p.size < 1 or not np.all(np.isfinite(p)) or np.any(p < 0) or p.sum() <= 0:
        raise ValueError("shares must be a non-empty vector of finite, non-negative numbers with a positive sum")
    return p / p.sum()


def share_entropy(shares) -> float:
    """Shannon entropy H(p) = -sum_k p_k log p_k of the domain shares, in nats (0 log 0 = 0)."""
    p = _check_shares(shares)
    nz = p[p > 0]
    return float(-(nz * np.log(nz)).sum())


def normalized_share_entropy(shares) -> float:
    """H(p) / log K in [0, 1]: 1 means perfectly equal domains, 0 one domain holding everything."""
    p = _check_shares(shares)
    if p.size == 1:
        return 1.0
    return share_entropy(p) / float(np.log(p.size))


def effective_k(shares) -> float:
    """Effective number of domains exp(H(p)): K for equal shares, 1 for a single domain."""
    return float(np.exp(share_entropy(shares)))


def dead_domains(shares, threshold: float | None = None) -> int:
    """Number of domains whose share is below ``threshold`` (default 1 / (10 K))."""
    p = _check_shares(shares)
    if threshold is None:
        threshold = 1.0 / (10.0 * p.size)
    return int((p < threshold).sum())


def max_share(shares) -> float:
    """Largest domain share."""
    return float(_check_shares(shares).max())


def nmi(labels_a, labels_b) -> float:
    """Normalized mutual information I(A; B) / ((H(A) + H(B)) / 2) of two labelings of the same documents.

    scikit-learn's ``normalized_mutual_info_score`` with ``average_method="arithmetic"`` (its default,
    named here so that a change of default cannot change the recorded values). Two single-cluster
    labelings give 1.0 (scikit-learn's convention); the labels may be of any hashable type (e.g.
    domain numbers against source names). Kept as a function of this module for its callers
    (the teacher's summary, the benchmarks).

    Raises
    ------
    ValueError
        If the labelings are empty or differ in length.
    """
    from sklearn.metrics import normalized_mutual_info_score

    a = np.asarray(labels_a).ravel()
    b = np.asarray(labels_b).ravel()
    if a.size == 0 or b.size == 0:
        raise ValueError("labelings are empty")
    return float(normalized_mutual_info_score(a, b, average_method="arithmetic"))


def balance_stats(labels, n_clusters: int) -> dict:
    """Per-iteration balance statistics of a hard labeling, as recorded in every ``history_``.

    Returns a dict with ``effective_k``, ``min_share``, ``max_share`` and ``dead_domains``.
    """
    p = shares_from_labels(labels, n_clusters)
    return {
        "effective_k": effective_k(p),
        "min_share": float(p.min()),
        "max_share": float(p.max()),
        "dead_domains": dead_domains(p),
    }
