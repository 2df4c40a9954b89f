"""Baselines GEM is compared with: Euclidean k-means, spherical k-means, and vMF-EM with learned
mixing weights (Banerjee et al. 2005, the collapse-prone classic).

Each is a small scikit-learn-style estimator with ``fit(X)``, ``predict(X)``, ``labels_`` and a
``history_`` of one dict per iteration carrying at least ``objective``, ``effective_k``,
``min_share``, ``max_share``, ``n_empty`` and ``seconds``, like :class:`gem_assets.lib.teacher.gem.GEM`.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from gem_assets.lib.util.checks import as_matrix, check_float, check_int, make_rng, normalize_rows, resolve_device
from gem_assets.lib.teacher.gem import _moments, _softmax, vmf_m_step, vmf_scores
from gem_assets.lib.util.metrics import balance_stats
from gem_assets.lib.teacher.seeding import kmeans_plusplus

__all__ = ["KMeans", "SphericalKMeans", "VMFMixtureEM"]

_F64 = torch.float64


class _Base:
    """Shared parameter handling; subclasses implement ``_fit_once`` and ``_assign``."""

    spherical = True

    def __init__(self, n_clusters: int, *, max_iter: int = 100, tol: float = 1e-6, n_init: int = 1,
                 init="k-means++", random_state=None, device="cpu"):
        self.n_clusters = n_clusters
        self.init = init
        self.max_iter = max_iter
        self.tol = tol
        self.n_init = n_init
        self.random_state = random_state
        self.device = device

    def _prepare(self, X):
        dev = resolve_device(self.device)
        X = as_matrix(X, dev)
        check_int(self.n_clusters, "n_clusters", low=2)
        if self.n_clusters > X.shape[0]:
            raise ValueError(f"n_clusters={self.n_clusters} exceeds the number of documents N={X.shape[0]}")
        check_int(self.max_iter, "max_iter", low=1)
        check_float(self.tol, "tol", low=0.0)
        check_int(self.n_init, "n_init", low=1)
        if isinstance(self.init, str):
            if self.init != "k-means++":
                raise ValueError(f"init must be 'k-means++' or an array of shape (K, d), got {self.init!r}")
        elif np.shape(self.init) != (self.n_clusters, X.shape[1]):
            raise ValueError(f"init must have shape ({self.n_clusters}, {X.shape[1]}), got {np.shape(self.init)}")
        return normalize_rows(X) if self.spherical else X

    def _seed(self, X, rng):
        """Initial centres (K, d) float64: k-means++ or the given ``init`` array."""
        if isinstance(self.init, str):
            return kmeans_plusplus(X, self.n_clusters, rng, spherical=self.spherical).to(_F64)
        C = torch.as_tensor(np.asarray(self.init), dtype=_F64, device=X.device)
        return normalize_rows(C, name="init") if self.spherical else C

    def _record(self, it, objective, labels, n_empty, seconds, **extra):
        return {"iteration": it, "objective": float(objective),
                **balance_stats(labels.cpu().numpy(), self.n_clusters),
                "n_empty": int(n_empty), "seconds": float(seconds), **extra}

    def fit(self, X, y=None):
        X = self._prepare(X)
        rng = make_rng(self.random_state)
        best = None
        for _ in range(self.n_init):
            run = self._fit_once(X, np.random.default_rng(rng.integers(2**63)))
            if best is None or run["objective"] > best["objective"]:
                best = run
        for name, value in best["attrs"].items():
            setattr(self, name, value)
        self.labels_ = best["labels"].cpu().numpy().astype(np.int64)
        self.objective_ = float(best["objective"])
        self.history_ = best["history"]
        self.n_iter_ = len(self.history_)
        self.dim_ = int(X.shape[1])
        return self

    def predict(self, X) -> np.ndarray:
        if not hasattr(self, "labels_"):
            raise ValueError(f"this {type(self).__name__} instance is not fitted yet: call fit(X) first")
        X = as_matrix(X, resolve_device(self.device))
        if X.shape[1] != self.dim_:
            raise ValueError(f"X has dim {X.shape[1]} but the model was fitted on dim {self.dim_}")
        X = normalize_rows(X) if self.spherical else X
        return self._assign(X).cpu().numpy().astype(np.int64)

    def fit_predict(self, X, y=None) -> np.ndarray:
        return self.fit(X).labels_


def _relocate_empty(X, labels, centers, score, counts):
    """Move each empty cluster's centre to the worst-fitted point (lowest score), as scikit-learn does.

    Returns the number of empty clusters found; the caller records it (nothing is hidden).
    """
    empty = torch.nonzero(counts == 0).ravel()
    if empty.numel() == 0:
        return 0
    worst = torch.argsort(score)[: empty.numel()]
    centers[empty] = X[worst].to(centers.dtype)
    labels[worst] = empty
    return int(empty.numel())


class KMeans(_Base):
    """Euclidean k-means (Lloyd) with k-means++ seeding. ``objective`` is minus the inertia.

    Attributes
    ----------
    cluster_centers_ : ndarray (K, d)
    labels_, objective_, history_, n_iter_
    """

    spherical = False

    def _assign(self, X, centers=None):
        C = torch.as_tensor(self.cluster_centers_ if centers is None else centers, device=X.device).to(X.dtype)
        # argmin_k ||x - c_k||^2 = argmax_k (x.c_k - ||c_k||^2 / 2): one GEMM
        return torch.argmax(X @ C.T - 0.5 * (C * C).sum(1)[None, :], dim=1)

    def _fit_once(self, X, rng):
        K, (N, d) = self.n_clusters, X.shape
        C = self._seed(X, rng)
        x_sq = torch.linalg.vector_norm(X, dim=1, dtype=_F64) ** 2
        history, prev = [], None
        for it in range(1, self.max_iter + 1):
            t0 = time.perf_counter()
            scores = X @ C.to(X.dtype).T - 0.5 * (C * C).sum(1).to(X.dtype)[None, :]     # (N, K)
            best, labels = scores.max(dim=1)
            inertia = float((x_sq - 2.0 * best.to(_F64)).sum())
            counts = torch.bincount(labels, minlength=K)
            n_empty = _relocate_empty(X, labels, C, best.to(_F64), counts)
            sums = torch.zeros(K, d, dtype=X.dtype, device=X.device).index_add_(0, labels, X).to(_F64)
            counts = torch.bincount(labels, minlength=K).to(_F64)
            C = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], C)
            history.append(self._record(it, -inertia, labels, n_empty, time.perf_counter() - t0, inertia=inertia))
            if prev is not None and prev - inertia <= self.tol * abs(inertia):
                break
            prev = inertia
        return {"objective": -inertia, "labels": self._assign(X, C), "history": history,
                "attrs": {"cluster_centers_": C.cpu().numpy()}}


class SphericalKMeans(_Base):
    """Spherical k-means (Dhillon & Modha 2001): maximize sum_i cos(x_i, mu_{label_i}) on unit rows.

    Attributes
    ----------
    cluster_centers_ : ndarray (K, d), unit mean directions.
    labels_, objective_, history_, n_iter_
    """

    def _assign(self, X, centers=None):
        C = torch.as_tensor(self.cluster_centers_ if centers is None else centers, device=X.device).to(X.dtype)
        return torch.argmax(X @ C.T, dim=1)

    def _fit_once(self, X, rng):
        K, (N, d) = self.n_clusters, X.shape
        C = self._seed(X, rng)
        history, prev = [], None
        for it in range(1, self.max_iter + 1):
            t0 = time.perf_counter()
            best, labels = (X @ C.to(X.dtype).T).max(dim=1)                          # (N,)
            objective = float(best.sum(dtype=_F64))
            n_empty = _relocate_empty(X, labels, C, best.to(_F64), torch.bincount(labels, minlength=K))
            sums = torch.zeros(K, d, dtype=X.dtype, device=X.device).index_add_(0, labels, X).to(_F64)
            norms = torch.linalg.vector_norm(sums, dim=1)
            C = torch.where(norms[:, None] > 0, sums / norms.clamp(min=1e-300)[:, None], C)
            history.append(self._record(it, objective, labels, n_empty, time.perf_counter() - t0))
            if prev is not None and objective - prev <= self.tol * abs(objective):
                break
            prev = objective
        return {"objective": objective, "labels": self._assign(X, C), "history": history,
                "attrs": {"cluster_centers_": C.cpu().numpy()}}


class VMFMixtureEM(_Base):
    """Mixture of vMF distributions with *learned* mixing weights, fitted by EM (soft-moVMF).

    E-step Q_ik ∝ pi_k f_k(x_i); M-step pi = mean Q, mu and kappa by the exact MLE. The learned
    weights feed back into the assignments (rich get richer), so small components can starve: a
    component whose weight falls below 1e-12 is reported in ``n_empty`` and left to die, which is the
    behaviour GEM's decoupled prior is built to avoid. ``objective`` is the log-likelihood.

    Attributes
    ----------
    means_ : ndarray (K, d); concentrations_ : ndarray (K,); weights_ : ndarray (K,)
    labels_, objective_, history_, n_iter_
    """

    def _assign(self, X, params=None):
        mu, kappa, log_pi = params or (torch.as_tensor(self.means_, device=X.device),
                                       torch.as_tensor(self.concentrations_, device=X.device),
                                       torch.log(torch.as_tensor(self.weights_, device=X.device)))
        S, _ = vmf_scores(X, mu, kappa)
        return torch.argmax(S + log_pi.to(S.dtype)[None, :], dim=1)

    def _fit_once(self, X, rng):
        K, (N, d) = self.n_clusters, X.shape
        mu = self._seed(X, rng)
        hard = torch.argmax(X @ mu.to(X.dtype).T, dim=1)
        R = torch.zeros(K, d, dtype=X.dtype, device=X.device).index_add_(0, hard, X).to(_F64)
        n = torch.bincount(hard, minlength=K).to(_F64)
        mu, kappa, _ = vmf_m_step(R, n, mu, torch.ones(K, dtype=_F64, device=X.device), d)
        log_pi = torch.log(n / N).clamp(min=-700.0)
        history, prev = [], None
        for it in range(1, self.max_iter + 1):
            t0 = time.perf_counter()
            S, shift = vmf_scores(X, mu, kappa)
            Q, log_z, rho = _softmax(S, log_pi)                                     # (N, K) posteriors
            loglik = float(log_z.sum(dtype=_F64)) + N * shift
            labels = torch.argmax(Q, dim=1)
            n = rho * N
            R = _moments(X, Q)                                                     # Q^T X, (K, d)
            mu, kappa, n_empty = vmf_m_step(R, n, mu, kappa, d)
            log_pi = torch.log(n / N).clamp(min=-700.0)                             # learned weights
            history.append(self._record(it, loglik, labels, int((n / N < 1e-12).sum()), time.perf_counter() - t0,
                                        mean_kappa=float(kappa.mean())))
            if prev is not None and loglik - prev <= self.tol * abs(loglik):
                break
            prev = loglik
        return {"objective": loglik, "labels": self._assign(X, (mu, kappa, log_pi)), "history": history,
                "attrs": {"means_": mu.cpu().numpy(), "concentrations_": kappa.cpu().numpy(),
                          "weights_": torch.exp(log_pi).cpu().numpy()}}
