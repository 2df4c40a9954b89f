"""Synthetic anisotropic data on the sphere: Zipf-sized vMF clusters inside a narrow cone.

This mimics sentence embeddings (all vectors share a dominant direction; domains have very unequal
sizes) with a known ground truth, for tests and benchmarks.
"""

from __future__ import annotations

import numpy as np

from gem_assets.lib.teacher import vmf

__all__ = ["zipf_sizes", "make_cone_clusters"]


def zipf_sizes(n_samples: int, n_clusters: int, exponent: float = 1.1) -> np.ndarray:
    """Cluster sizes proportional to rank^-exponent, summing exactly to ``n_samples``."""
    w = np.arange(1, n_clusters + 1, dtype=np.float64) ** -exponent
    sizes = np.floor(n_samples * w / w.sum()).astype(np.int64)
    sizes[: n_samples - sizes.sum()] += 1  # hand out the remainder to the largest clusters
    return sizes


def make_cone_clusters(n_samples: int = 100_000, dim: int = 384, n_clusters: int = 24, *,
                       exponent: float = 1.1, cone_spread: float = 0.35, kappa: float = 600.0,
                       dtype=np.float32, random_state=0):
    """Sample Zipf-sized vMF clusters whose means lie in a narrow cone around a common axis.

    Parameters
    ----------
    n_samples, dim, n_clusters : int
        N points on S^{dim-1} in ``n_clusters`` true clusters.
    exponent : float
        Zipf exponent of the cluster sizes (largest / smallest = n_clusters ** exponent).
    cone_spread : float
        Cluster mean = normalize(axis + cone_spread * g), g a unit vector orthogonal to the axis
        scaled by a standard normal radius: small values give the narrow cone of embedders.
    kappa : float
        Concentration of every cluster.

    Returns
    -------
    X : ndarray (n_samples, dim), unit rows, shuffled.
    y : ndarray (n_samples,) int64, the true cluster of each row (0 = largest).
    means : ndarray (n_clusters, dim), the true mean directions.
    """
    rng = np.random.default_rng(random_state)
    axis = rng.standard_normal(dim)
    axis /= np.linalg.norm(axis)
    g = rng.standard_normal((n_clusters, dim))
    g -= (g @ axis)[:, None] * axis[None, :]
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    radius = np.abs(rng.standard_normal(n_clusters))[:, None] * 0.5 + 0.75
    means = axis[None, :] + cone_spread * radius * g
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    sizes = zipf_sizes(n_samples, n_clusters, exponent)
    X = np.empty((n_samples, dim), dtype=dtype)
    y = np.empty(n_samples, dtype=np.int64)
    start = 0
    for c, size in enumerate(sizes):
        X[start:start + size] = vmf.sample_vmf(means[c], kappa, int(size), rng)
        y[start:start + size] = c
        start += size
    perm = rng.permutation(n_samples)
    return X[perm], y[perm], means
