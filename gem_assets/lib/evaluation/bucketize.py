"""Bucketizations of a corpus: every document gets one bucket (a mixing domain).

The mixture evaluation compares mixers on three ways of cutting the same documents into
domains:

- :func:`from_labels`: the source/human labels (e.g. the BBC category), one bucket per
  distinct label;
- :func:`kmeans_buckets`: Euclidean k-means fitted on the teacher sample's embeddings,
  then every embedded document goes to its nearest centroid;
- :func:`from_domains`: integer domains already assigned (GEM's student labels).

A :class:`Bucketization` holds one integer bucket per document (aligned with the caller's
document order) and the bucket names; :meth:`Bucketization.key` turns a bucket into the
string key the mixing library uses for its domain streams.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from gem_assets.lib.util.checks import check_int

__all__ = ["Bucketization", "from_labels", "from_domains", "kmeans_buckets", "MISSING_LABEL"]

#: Bucket name given to documents whose label is missing (``None``).
MISSING_LABEL = "<missing>"


@dataclass(frozen=True)
class Bucketization:
    """One bucket per document.

    Parameters
    ----------
    name : str
        Name of the bucketization (``source``, ``kmeans``, ``gem``); prefixes the bucket keys.
    labels : ndarray of int64, shape (N,)
        Bucket of each document, in ``[0, K)``.
    names : tuple of str
        Name of each bucket, ``K`` entries.
    """

    name: str
    labels: np.ndarray
    names: tuple[str, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or ":" in self.name:
            raise ValueError(f"a bucketization name must be a non-empty string without ':', got {self.name!r}")
        labels = np.asarray(self.labels)
        if labels.ndim != 1:
            raise ValueError(f"labels must be 1-D (one bucket per document), got shape {labels.shape}")
        if labels.size and not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
        k = len(self.names)
        if k < 1:
            raise ValueError("a bucketization needs at least one bucket name")
        if len(set(self.names)) != k:
            raise ValueError(f"bucket names must be distinct, got {list(self.names)}")
        if labels.size and (labels.min() < 0 or labels.max() >= k):
            raise ValueError(f"labels must lie in [0, {k}) for {k} bucket names; got range "
                             f"[{labels.min()}, {labels.max()}]")
        object.__setattr__(self, "labels", labels.astype(np.int64, copy=False))
        object.__setattr__(self, "names", tuple(str(n) for n in self.names))

    @property
    def k(self) -> int:
        """Number of buckets."""
        return len(self.names)

    def key(self, bucket: int) -> str:
        """The domain key of a bucket, ``"<name>:<bucket name>"``."""
        return f"{self.name}:{self.names[bucket]}"

    def keys(self) -> list[str]:
        """Domain keys of all buckets, in bucket order."""
        return [self.key(b) for b in range(self.k)]

    def counts(self, mask: np.ndarray | None = None) -> np.ndarray:
        """Documents per bucket (of the documents where ``mask`` is true)."""
        labels = self.labels if mask is None else self.labels[np.asarray(mask, dtype=bool)]
        return np.bincount(labels, minlength=self.k).astype(np.int64)

    def subset(self, mask: np.ndarray) -> "Bucketization":
        """The same buckets for the documents where ``mask`` is true."""
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != self.labels.shape:
            raise ValueError(f"mask has shape {mask.shape} but there are {self.labels.size} documents")
        return Bucketization(self.name, self.labels[mask], self.names)


def from_labels(name: str, values: Sequence) -> Bucketization:
    """One bucket per distinct label (sorted by ``str``); ``None`` becomes :data:`MISSING_LABEL`.

    Parameters
    ----------
    name : str
        Name of the bucketization (e.g. ``"source"``).
    values : sequence
        The label of each document.

    Returns
    -------
    Bucketization

    Raises
    ------
    ValueError
        If there is no document.
    """
    labels = [MISSING_LABEL if v is None else str(v) for v in values]
    if not labels:
        raise ValueError(f"bucketization {name!r} has no document to label")
    names = sorted(set(labels))
    index = {n: i for i, n in enumerate(names)}
    return Bucketization(name, np.fromiter((index[v] for v in labels), dtype=np.int64, count=len(labels)),
                         tuple(names))


def from_domains(name: str, domains, k: int) -> Bucketization:
    """Integer domains in ``[0, k)`` (e.g. GEM's student labels), bucket names ``"0"`` … ``"k-1"``.

    Parameters
    ----------
    name : str
        Name of the bucketization (e.g. ``"gem"``).
    domains : array-like of int, shape (N,)
        Domain of each document.
    k : int
        Number of domains (buckets may be empty).

    Returns
    -------
    Bucketization
    """
    k = check_int(k, "k", low=1)
    domains = np.asarray(domains)
    if domains.size == 0:
        raise ValueError(f"bucketization {name!r} has no document to label")
    if not np.issubdtype(domains.dtype, np.integer):
        raise ValueError(f"domains must be integers in [0, {k}), got dtype {domains.dtype}")
    return Bucketization(name, domains, tuple(str(i) for i in range(k)))


def kmeans_buckets(sample_vectors, vectors, k: int, *, seed: int = 0, max_iter: int = 100, tol: float = 1e-6,
                   n_init: int = 1, name: str = "kmeans", device="cpu") -> tuple[Bucketization, np.ndarray]:
    """Euclidean k-means fitted on ``sample_vectors``; every row of ``vectors`` goes to its nearest centroid.

    Parameters
    ----------
    sample_vectors : array-like, shape (n, d)
        What k-means is fitted on (the teacher sample's embeddings, as GEM is).
    vectors : array-like, shape (N, d)
        The documents to bucket (every embedded document).
    k : int
        Number of clusters (the same K as GEM for a fair comparison).
    seed : int
        Seed of the k-means++ seeding.
    max_iter, tol, n_init
        Lloyd iterations, relative inertia tolerance, restarts (the best inertia is kept).
    name : str
        Name of the bucketization.
    device : str
        ``"cpu"``, ``"cuda"`` or ``"auto"``.

    Returns
    -------
    bucketization : Bucketization
        Buckets ``"0"`` … ``"k-1"`` of the rows of ``vectors``.
    centers : ndarray, shape (k, d)
        The fitted centroids.

    Raises
    ------
    ValueError
        If the dimensions differ, k exceeds the sample size, or an input holds NaN/inf.
    """
    from gem_assets.lib.teacher.baselines import KMeans

    k = check_int(k, "k", low=2)
    sample_vectors = np.asarray(sample_vectors)
    vectors = np.asarray(vectors)
    if sample_vectors.ndim != 2 or vectors.ndim != 2 or sample_vectors.shape[1] != vectors.shape[1]:
        raise ValueError(f"sample_vectors {sample_vectors.shape} and vectors {vectors.shape} must be 2-D with the "
                         "same number of columns (the same embedding model)")
    model = KMeans(k, max_iter=max_iter, tol=tol, n_init=n_init, random_state=seed, device=device)
    model.fit(sample_vectors)
    labels = model.predict(vectors)
    return from_domains(name, labels, k), np.asarray(model.cluster_centers_)
