"""k-means++ seeding (Arthur & Vassilvitskii 2007), greedy variant, for the sphere and for R^d.

On the sphere the distance is 1 - cos(x, c) (half the squared chord), so spherical k-means++ draws
each new centre with probability proportional to 1 - max_j cos(x, c_j). Each step tries
``2 + floor(log K)`` candidates and keeps the one that lowers the total potential most, as
scikit-learn does; random draws come from a numpy Generator so results do not depend on the device.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["kmeans_plusplus"]


def _sample(weights: torch.Tensor, n: int, rng: np.random.Generator) -> torch.Tensor:
    # inverse-CDF sampling with numpy uniforms: (n,) indices drawn proportionally to weights
    cdf = torch.cumsum(weights.to(torch.float64), 0)
    total = float(cdf[-1])
    if total <= 0:  # every point coincides with a centre: fall back to uniform draws
        return torch.as_tensor(rng.integers(0, weights.numel(), size=n), device=weights.device)
    u = torch.as_tensor(rng.random(n) * total, device=cdf.device)
    return torch.searchsorted(cdf, u).clamp_(max=weights.numel() - 1)


def _dist(X: torch.Tensor, C: torch.Tensor, spherical: bool, x_sq: torch.Tensor | None) -> torch.Tensor:
    # (N, m) distances of every point to m candidate centres
    if spherical:
        return (1.0 - X @ C.T).clamp_(min=0)
    return (x_sq[:, None] - 2.0 * X @ C.T + (C * C).sum(1)[None, :]).clamp_(min=0)


def kmeans_plusplus(
    X: torch.Tensor, n_clusters: int, rng: np.random.Generator, *, spherical: bool = True
) -> torch.Tensor:
    """Choose ``n_clusters`` distinct rows of X as initial centres.

    Parameters
    ----------
    X : torch.Tensor, shape (N, d)
        Unit rows when ``spherical`` (distance 1 - cos), arbitrary rows otherwise (squared
        Euclidean distance).
    n_clusters : int
        Number of centres K <= N.
    rng : numpy.random.Generator
        Source of all randomness.

    Returns
    -------
    centers : torch.Tensor, shape (K, d), rows of X.
    """
    n = X.shape[0]
    n_trials = 2 + int(math.log(n_clusters))
    x_sq = None if spherical else (X * X).sum(1)
    idx = [int(rng.integers(n))]
    closest = _dist(X, X[idx], spherical, x_sq)[:, 0]  # (N,) distance to the nearest centre
    for _ in range(1, n_clusters):
        cand = _sample(closest, n_trials, rng)                                   # (T,)
        d_cand = torch.minimum(closest[:, None], _dist(X, X[cand], spherical, x_sq))  # (N, T)
        best = int(torch.argmin(d_cand.sum(0, dtype=torch.float64)))
        idx.append(int(cand[best]))
        closest = d_cand[:, best]
    return X[torch.as_tensor(idx, device=X.device)].clone()
