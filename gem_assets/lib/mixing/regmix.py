"""RegMix: domain weights by regression on small proxy runs.

Liu et al., "RegMix: Data Mixture as Regression for Language Model Pre-training" (ICLR 2025).

Procedure
---------
1. Draw M mixtures (:func:`sample_mixtures`): prior p = shares^temperature / sum (temperature 0.5
   by default), a strength s log-uniform in ``strength_range`` (default [0.1, 5]) per mixture, and
   w ~ Dirichlet(p * s). With token counts n_k and the proxy run's token budget B, no domain may
   be read more than ``max_epochs`` times (w_k B <= max_epochs n_k): each draw is mapped onto that
   capped simplex by its KL projection (:func:`project_to_cap`; over-cap domains cut to their cap,
   the excess spread over the others in proportion to their weight), so any number of domains works.
2. Train one proxy model per mixture (same seed, same steps: only the mixture changes) and record
   its loss (bits per byte) on the target stream.
3. Fit a regressor from mixture to loss (:class:`MixtureRegressor`).
4. Score ``n_simulations`` further mixtures drawn the same way (so within the same epoch cap), in
   chunks, keep the ``top_k`` with the *lowest* predicted loss and output their mean. The mean of
   mixtures that respect the cap respects it too (the cap is a convex constraint).

Regressor choice
----------------
Three regressors from mixture to loss: gradient-boosted trees (scikit-learn's
``HistGradientBoostingRegressor``, ``kind="hgb"``; the winner on RegMix's released runs,
``benchmarks/regmix.py``), a Gaussian process with an anisotropic RBF kernel plus white noise
(``kind="gp"``: a smooth function of the mixture with one length scale per domain, fitted by
maximum marginal likelihood; suited to a few hundred runs whose loss varies smoothly, as count
proxies' losses do: on the default corpus its out-of-fold Spearman is ~0.95 where the trees reach
~0.85), and a ridge regression (``kind="linear"``). ``kind="auto"`` picks, among them, the one whose
5-fold out-of-fold Spearman correlation with the runs' losses is highest (trees only from
:data:`AUTO_MIN_RUNS` runs: they need samples to split); the fit record keeps every candidate's
score.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np

from gem_assets.lib.util.checks import check_float, check_int
from gem_assets.lib.mixing.lm import LMConfig, _check_training, check_streams, evaluate_bpb, train_lm

__all__ = ["sample_mixtures", "project_to_cap", "MixtureRegressor", "propose_mixture", "trust_radius", "cv_spearman",
           "auto_kind",
           "RegmixResult", "proxy_runs", "fit_and_propose", "run_regmix", "AUTO_MIN_RUNS", "KINDS"]

#: With ``kind="auto"``, boosted trees are a candidate from this many runs on.
AUTO_MIN_RUNS = 64
#: The regressor kinds of :class:`MixtureRegressor`.
KINDS = ("auto", "gp", "hgb", "linear")


def _check_prior(prior) -> np.ndarray:
    p = np.asarray(prior, dtype=np.float64)
    if p.ndim != 1 or p.size < 2:
        raise ValueError(f"prior must be 1-D with at least 2 domains, got shape {p.shape}")
    if not np.all(np.isfinite(p)) or np.any(p < 0) or p.sum() <= 0:
        raise ValueError(f"prior must be finite, >= 0 and not all 0 (token shares or counts), got {p.tolist()}")
    return p / p.sum()


def sample_mixtures(prior: np.ndarray, n: int, rng: np.random.Generator, temperature: float = 0.5,
                    strength_range=(0.1, 5.0), tokens_per_domain: np.ndarray | None = None,
                    budget_tokens: float | None = None, max_epochs: float = 4.0) -> np.ndarray:
    """Draw mixtures from Dirichlet(prior^temperature * s), s log-uniform, mapped into an epoch cap.

    Parameters
    ----------
    prior : numpy.ndarray, shape (K,)
        Token shares (or counts) of the domains; domains with 0 get weight 0.
    n : int
        Mixtures wanted.
    rng : numpy.random.Generator
        Source of the draws: the same seed gives the same mixtures (and the first rows of a larger
        ``n`` are the mixtures of a smaller one).
    temperature : float
        Exponent on the shares (> 0; 0.5 flattens them towards uniform).
    strength_range : (float, float)
        Bounds of the log-uniform Dirichlet strength s (0 < low <= high).
    tokens_per_domain : numpy.ndarray, shape (K,), optional
        Tokens available per domain; with ``budget_tokens`` enables the epoch cap.
    budget_tokens : float, optional
        Tokens a run trains on.
    max_epochs : float
        Cap on w_k * budget / tokens_k (> 0).

    Returns
    -------
    numpy.ndarray, shape (n, K)
        Rows on the simplex (float64), within the epoch cap when one is given.

    Raises
    ------
    ValueError
        On invalid arguments, or when the cap admits no mixture: the prior's domains cannot
        absorb the budget, sum_k max_epochs * tokens_k < budget over the domains with prior > 0.

    Notes
    -----
    With a = p^T / sum_j p_j^T over the domains with p_k > 0 (T the temperature), each row is
    drawn as::

        s ~ LogUniform(low, high),   w ~ Dirichlet(a * s)          # E[w] = a whatever s

    Small s gives mixtures concentrated on a few domains, large s mixtures close to a. Without a
    cap, w is the mixture. With a cap c_k = max_epochs * tokens_k / budget, w is mapped onto the
    capped simplex C = {q : 0 <= q_k <= c_k, sum_k q_k = 1} by its information projection
    (:func:`project_to_cap`)::

        q = argmin_{q in C} KL(q || w),   q_k = min(c_k, t * w_k),   t >= 1 such that sum_k q_k = 1

    Domains over their cap are cut to it and the excess goes to the others in proportion to their
    weight, so every draw lands in C (no rejection, whatever K) and a row already in C is kept as
    it is. The mixtures stay spread around the prior: rows keep the Dirichlet's diversity, and
    the mean moves from a only by the mass the cap moves.

    The Dirichlet is drawn in log space (log G = log Gamma(a + 1) + log(U) / a for the gamma
    variates), so rows of tiny a (large K, small s) keep the order of their domains' weights far
    below the smallest float64, which the projection needs when it spreads a capped row's mass.
    """
    sampler = _MixtureSampler(prior, temperature, strength_range, tokens_per_domain, budget_tokens, max_epochs)
    n = check_int(n, "n", low=1)
    return sampler.draw(n, sampler.streams(rng))


def project_to_cap(w, cap) -> np.ndarray:
    """Information (KL) projection of mixtures onto the capped simplex.

    Parameters
    ----------
    w : array_like, shape (K,) or (m, K)
        Non-negative weights, each row with a positive sum (rows need not be normalized: the
        projection of a * w is the projection of w).
    cap : array_like, shape (K,)
        Finite caps c_k >= 0 with sum_k c_k >= 1.

    Returns
    -------
    numpy.ndarray, same shape as w
        q = argmin KL(q || w) over C = {q : 0 <= q_k <= c_k, sum_k q_k = 1}, float64.

    Raises
    ------
    ValueError
        If w or cap are malformed, a row of w sums to 0, or sum_k c_k < 1 (C is empty).

    Notes
    -----
    The Lagrangian sum_k q_k log(q_k / w_k) + lam (sum_k q_k - 1) + sum_k mu_k (q_k - c_k), with
    mu_k >= 0 only where q_k = c_k, is stationary at q_k = w_k exp(-1 - lam - mu_k), i.e.::

        q_k = min(c_k, t * w_k),   f(t) = sum_k min(c_k, t * w_k) = 1

    f is continuous, non-decreasing and piecewise linear in t with breakpoints r_k = c_k / w_k,
    and f(1) <= sum_k w_k = 1 for a normalized row, so t >= 1 (a row within C keeps t = 1). Per
    row, with the ratios sorted ascending, r_(1) <= ... <= r_(K), on [r_(i-1), r_(i)] the first
    i - 1 domains sit at their cap::

        f(t) = C_(<i) + t * S_(>=i),      C_(<i) = sum_{l<i} c_(l),   S_(>=i) = sum_{l>=i} w_(l)
        f(r_(i)) = C_(<=i) + D_i,         D_i = r_(i) * S_(>i) = sum_{l>i} c_(l) * r_(i) / r_(l)

    The first i with f(r_(i)) >= 1 holds the root: t = (1 - C_(<i)) / S_(>=i), with
    S_(>=i) = (c_(i) + D_i) / r_(i). D is computed backwards, D_i = (r_(i) / r_(i+1)) *
    (c_(i+1) + D_(i+1)), from log-ratios: every factor is <= 1, so nothing overflows or
    underflows to a wrong t even when the weights of a row span hundreds of orders of magnitude.
    All rows are sorted and solved at once (O(m K log K)); there is no per-row Python loop.

    Where the domains with w_k > 0 cannot absorb the row's mass even at their caps
    (sum_{w_k > 0} c_k < 1, so t would be infinite), they take their caps and the remaining mass
    goes to the domains with w_k = 0 in proportion to their slack c_k. Domains with c_k = 0 get 0.

    Examples
    --------
    >>> project_to_cap([0.7, 0.2, 0.1], [0.4, 0.5, 0.5])   # t = 2
    array([0.4, 0.4, 0.2])
    """
    W = np.asarray(w, dtype=np.float64)
    one = W.ndim == 1
    W2 = W[None, :] if one else W
    if W2.ndim != 2 or W2.shape[1] < 1 or W2.shape[0] < 1:
        raise ValueError(f"w must be (K,) or (m, K) with K >= 1 and m >= 1, got shape {W.shape}")
    if not np.all(np.isfinite(W2)) or np.any(W2 < 0):
        raise ValueError("w must hold finite weights >= 0")
    tot = W2.sum(1)
    if np.any(tot <= 0):
        raise ValueError(f"every row of w needs a positive weight; rows {np.flatnonzero(tot <= 0)[:5].tolist()} "
                         "sum to 0")
    c = _check_cap(cap, W2.shape[1])
    out = np.zeros_like(W2)
    pos = c > 0
    with np.errstate(divide="ignore"):
        lw = np.log(W2[:, pos])
    out[:, pos] = _project_log(lw, c[pos])
    return out[0] if one else out


def _check_cap(cap, K: int) -> np.ndarray:
    c = np.asarray(cap, dtype=np.float64)
    if c.shape != (K,) or not np.all(np.isfinite(c)) or np.any(c < 0):
        raise ValueError(f"cap must be {K} finite values >= 0, got {np.asarray(cap).tolist()}")
    if c.sum() < 1.0:
        raise ValueError(f"the cap admits no mixture: sum of caps {float(c.sum()):.6g} < 1")
    return c


def _shift_rows(lw: np.ndarray) -> np.ndarray:
    """Per-row maxima of log-weights, (m, 1), with 0 for rows of -inf only (all weights 0)."""
    mx = lw.max(1, keepdims=True)
    return np.where(np.isfinite(mx), mx, 0.0)


def _project_log(lw: np.ndarray, c: np.ndarray) -> np.ndarray:
    """:func:`project_to_cap` of rows given by their log-weights (-inf for a weight of 0).

    lw : (m, K) log-weights, any per-row scale; c : (K,) caps > 0 with sum >= 1. Returns q, (m, K).
    Every row goes through the sort: a row within the cap comes out as w / sum(w) (t = 1 / sum w).
    """
    m, K = lw.shape
    lw = lw - _shift_rows(lw)                               # (m, K) <= 0: the largest weight of a row is 1
    logc = np.log(c)                                        # (K,)
    with np.errstate(invalid="ignore"):
        lr = logc[None, :] - lw                             # (m, K) log r_k = log(c_k / w_k); +inf where w_k = 0
    order = np.argsort(lr, axis=1)                          # (m, K) ascending r: first to reach its cap first
    cT = c[order.T]                                         # (K, m) c_(i), one column per row (contiguous loops)
    order += (np.arange(m) * K)[:, None]                    # flat indices into lr
    lrT = lr.ravel()[order.T]                               # (K, m) log r_(i)
    del order
    has_zero = bool(np.isinf(lrT[-1]).any())                # +inf ratios sort last
    with np.errstate(invalid="ignore", over="ignore"):
        decay = np.exp(lrT[:-1] - lrT[1:])                  # (K-1, m) r_(i) / r_(i+1) in [0, 1]; nan: inf - inf
    if has_zero:
        decay[np.isnan(decay)] = 0.0                        # between zero-weight domains: no mass to carry
    D = np.empty_like(cT)                                   # (K, m) D_i = sum_{l>i} c_(l) r_(i) / r_(l)
    D[-1] = 0.0
    for i in range(K - 2, -1, -1):
        np.add(cT[i + 1], D[i + 1], out=D[i])
        D[i] *= decay[i]
    del decay
    Cin = np.cumsum(cT, axis=0)                             # (K, m) C_(<=i)
    ok = np.add(Cin, D) >= 1.0                              # f(r_(i)) = C_(<=i) + D_i >= 1
    if has_zero:
        ok &= np.isfinite(lrT)                              # only a domain with weight holds the root
    found = ok.any(0)                                       # (m,)
    i = ok.argmax(0)                                        # (m,) first i with f(r_(i)) >= 1: the root's segment
    cols = np.arange(m)
    ci, lri, Di = cT[i, cols], lrT[i, cols], D[i, cols]
    # 1 - C_(<i) > 0: f(r_(i-1)) = C_(<i) + D_(i-1) < 1 (taken from the same cumulative sum, so it
    # holds in floating point too and t > 0: the row's domain i gets a positive share)
    rest = 1.0 - np.where(i > 0, Cin[np.maximum(i - 1, 0), cols], 0.0)
    del D, Cin, lrT, cT, ok
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):   # (rows not found: fixed below)
        logt = np.log(rest) - np.log(ci + Di) + lri         # log t = log(1 - C_(<i)) - log S_(>=i)
        q = np.exp(lw + logt[:, None])                      # (m, K) t * w_k
    np.minimum(q, c[None, :], out=q)
    if not found.all():                                     # the weighted domains at their caps cannot absorb
        bad = np.flatnonzero(~found)
        zero = np.isneginf(lw[bad])                         # (b, K) domains with w_k = 0
        qb = np.where(zero, 0.0, c[None, :])
        slack = np.where(zero, c[None, :], 0.0)
        need = np.maximum(1.0 - qb.sum(1, keepdims=True), 0.0)
        tot = slack.sum(1, keepdims=True)
        q[bad] = qb + slack * np.divide(need, tot, out=np.zeros_like(need), where=tot > 0)
    q /= q.sum(1, keepdims=True)
    return np.minimum(q, c[None, :], out=q)


class _MixtureSampler:
    """Validated arguments of :func:`sample_mixtures` and its draws, block by block.

    The strengths, gamma variates and uniforms come from three generators seeded from ``rng``, each
    consumed element by element in row order: the mixtures do not depend on how the rows are
    split into blocks, so :func:`propose_mixture` scoring them chunk by chunk sees the very rows of
    one :func:`sample_mixtures` call.
    """

    #: float64 values per block of rows drawn and projected at once (~8 MB per array)
    block_values = 1 << 20

    def __init__(self, prior, temperature=0.5, strength_range=(0.1, 5.0), tokens_per_domain=None,
                 budget_tokens=None, max_epochs=4.0):
        p = _check_prior(prior)
        t = check_float(temperature, "temperature", low=0.0, strict=True)
        try:
            lo, hi = (float(v) for v in strength_range)
        except (TypeError, ValueError) as err:
            raise ValueError(f"strength_range must be two numbers (low, high), got {strength_range!r}") from err
        if not (0 < lo <= hi < np.inf):
            raise ValueError(f"strength_range must satisfy 0 < low <= high, got {strength_range!r}")
        if (tokens_per_domain is None) != (budget_tokens is None):
            raise ValueError("pass both tokens_per_domain and budget_tokens for the epoch cap, or neither")
        alpha = np.where(p > 0, p ** t, 0.0)
        alpha /= alpha.sum()
        support = alpha > 0
        self.cap = None                                      # (K,) max weight per domain, or None
        if tokens_per_domain is not None:
            tok = np.asarray(tokens_per_domain, dtype=np.float64)
            if tok.shape != p.shape or not np.all(np.isfinite(tok)) or np.any(tok < 0):
                raise ValueError(f"tokens_per_domain must be {p.size} finite values >= 0, got {tok.tolist()}")
            budget = check_float(budget_tokens, "budget_tokens", low=0.0, strict=True)
            epochs = check_float(max_epochs, "max_epochs", low=0.0, strict=True)
            self.cap = np.where(support, epochs * tok / budget, 0.0)
            if self.cap.sum() < 1.0:
                raise ValueError(f"the epoch cap admits no mixture: max_epochs * tokens = "
                                 f"{float(epochs * tok[support].sum()):.0f} over the prior's domains < budget "
                                 f"{budget:.0f}; raise max_epochs or lower the budget")
            support &= self.cap > 0                          # a domain capped at 0 gets 0
        # Dirichlet aggregation: dropping domains and renormalizing a Dirichlet(a) draw is a
        # Dirichlet(a restricted) draw, so the domains capped at 0 are simply not drawn
        self.cols = np.flatnonzero(support)                  # (K',) domains drawn
        self.alpha = alpha[self.cols]                        # (K',) a_k (sums to <= 1)
        self.K = p.size
        self.log_lo, self.log_hi = np.log(lo), np.log(hi)

    @staticmethod
    def streams(rng: np.random.Generator) -> tuple[np.random.Generator, ...]:
        """Three generators (strengths, gammas, uniforms) seeded from ``rng``."""
        if not isinstance(rng, np.random.Generator):
            raise ValueError(f"rng must be a numpy Generator, got {type(rng).__name__}")
        seq = np.random.SeedSequence(rng.integers(0, 2**63, size=4).tolist())
        return tuple(np.random.default_rng(child) for child in seq.spawn(3))

    def draw(self, n: int, streams) -> np.ndarray:
        """The next n mixtures of ``streams``, (n, K)."""
        s_rng, g_rng, u_rng = streams
        out = np.zeros((n, self.K))
        k = self.cols.size
        rows = max(1, self.block_values // max(k, 1))
        for a in range(0, n, rows):
            b = min(n, a + rows)
            s = np.exp(s_rng.uniform(self.log_lo, self.log_hi, size=b - a))   # (r,) strengths
            alpha = self.alpha[None, :] * s[:, None]                          # (r, K')
            # Gamma(a) = Gamma(a + 1) * U^(1/a): log G = log Gamma(a + 1) + log(U) / a, U in (0, 1]
            lw = g_rng.standard_gamma(alpha + 1.0)
            np.log(lw, out=lw)
            u = u_rng.random(alpha.shape)
            np.negative(u, out=u)
            np.log1p(u, out=u)
            u /= alpha
            lw += u                                                           # (r, K') log-weights, unnormalized
            del u, alpha
            if self.cap is None:
                w = np.exp(lw - _shift_rows(lw))
                out[a:b, self.cols] = w / w.sum(1, keepdims=True)
            else:
                out[a:b, self.cols] = _project_log(lw, self.cap[self.cols])
        return out


class MixtureRegressor:
    """Predict a proxy run's target loss from its mixture (lower is better).

    Parameters
    ----------
    kind : {"auto", "gp", "hgb", "linear"}
        ``"hgb"``: scikit-learn HistGradientBoostingRegressor (defaults; the benchmark winner on
        RegMix's released runs); ``"gp"``: Gaussian process, constant x anisotropic RBF + white
        noise kernel, normalized targets; ``"linear"``: ridge regression (alpha 1e-6 on the
        standardized mixture; OLS in effect); ``"auto"``: the candidate with the best 5-fold
        out-of-fold Spearman (:func:`auto_kind`).
    random_state : int
        Seed of the boosted trees.
    kernel : sklearn kernel, optional
        ``kind="gp"`` only: fixed kernel hyperparameters (e.g. ``model_.kernel_`` of a fit on all
        runs, which cross-validation reuses: the out-of-fold predictions then refit everything
        but the K + 2 kernel hyperparameters).
    """

    def __init__(self, kind: str = "auto", random_state: int = 0, kernel=None):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.kind = kind
        self.kernel = kernel
        self.random_state = check_int(random_state, "random_state", low=0)
        self.model_ = None
        self.kind_ = None
        self.n_domains_ = None

    def _check_w(self, W, name: str = "W") -> np.ndarray:
        W = np.asarray(W, dtype=np.float64)
        if W.ndim != 2 or W.shape[0] == 0 or W.shape[1] < 2:
            raise ValueError(f"{name} must be (runs, domains) with at least 2 domains, got shape {W.shape}")
        if not np.all(np.isfinite(W)):
            raise ValueError(f"{name} holds NaN or inf")
        if self.n_domains_ is not None and W.shape[1] != self.n_domains_:
            raise ValueError(f"{name} has {W.shape[1]} domains but the regressor was fit on {self.n_domains_}")
        return W

    def fit(self, W, y) -> "MixtureRegressor":
        """Fit on mixtures W (M, K) and target losses y (M,)."""
        self.n_domains_ = None
        W = self._check_w(W)
        y = np.asarray(y, dtype=np.float64)
        if y.shape != (W.shape[0],):
            raise ValueError(f"y must have one loss per mixture ({W.shape[0]}), got shape {y.shape}")
        if not np.all(np.isfinite(y)):
            raise ValueError("y holds NaN or inf losses: drop the failed runs")
        if W.shape[0] < 2:
            raise ValueError("fit needs at least 2 runs")
        kind = self.kind
        if kind == "auto":
            kind = auto_kind(W, y, seed=self.random_state)[0]
        if kind == "gp":
            import warnings

            from sklearn.gaussian_process import GaussianProcessRegressor
            from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

            if self.kernel is not None:   # hyperparameters given: no marginal-likelihood search
                model = GaussianProcessRegressor(self.kernel, normalize_y=True, optimizer=None)
            else:
                kernel = (ConstantKernel(1.0, (1e-3, 1e3)) * RBF(np.ones(W.shape[1]), (1e-2, 1e3))
                          + WhiteKernel(1e-2, (1e-8, 1.0)))
                model = GaussianProcessRegressor(kernel, normalize_y=True, random_state=self.random_state)
            with warnings.catch_warnings():   # length scales at their bounds are a result, not a failure
                warnings.simplefilter("ignore")
                self.model_ = model.fit(W, y)
            self.kind_ = kind
            self.n_domains_ = W.shape[1]
            return self
        if kind == "hgb":
            from sklearn.ensemble import HistGradientBoostingRegressor

            model = HistGradientBoostingRegressor(random_state=self.random_state)
        else:
            from sklearn.linear_model import Ridge
            from sklearn.pipeline import make_pipeline
            from sklearn.preprocessing import StandardScaler

            model = make_pipeline(StandardScaler(), Ridge(alpha=1e-6))
        self.model_ = model.fit(W, y)
        self.kind_ = kind
        self.n_domains_ = W.shape[1]
        return self

    def predict(self, W, return_std: bool = False):
        """Predicted target loss of each mixture, (n,); with ``return_std`` also its standard deviation.

        The standard deviation is the Gaussian process's predictive one (``kind="gp"`` only; it
        grows away from the runs): other kinds raise ValueError when asked for it.
        """
        if self.model_ is None:
            raise ValueError("call fit(W, y) before predict")
        W = self._check_w(W)
        if not return_std:
            return np.asarray(self.model_.predict(W), dtype=np.float64)
        if self.kind_ != "gp":
            raise ValueError(f"return_std needs kind='gp', this regressor is {self.kind_!r}")
        mean, std = self.model_.predict(W, return_std=True)
        return np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64)

    @property
    def has_std(self) -> bool:
        """Whether :meth:`predict` gives a predictive standard deviation (a fitted GP)."""
        return self.kind_ == "gp"


def trust_radius(runs, scale: float = 1.0) -> float:
    """Radius of the region the runs cover: ``scale`` x the median distance from a run to its nearest other run.

    Euclidean distances between mixtures; 0 with fewer than 2 distinct runs.
    """
    R = np.asarray(runs, dtype=np.float64)
    if R.ndim != 2 or R.shape[0] < 1:
        raise ValueError(f"runs must be (M, K) mixtures, got shape {R.shape}")
    scale = check_float(scale, "trust scale", low=0.0, strict=True)
    if R.shape[0] < 2:
        return 0.0
    D = _sq_distances(R, R)
    np.fill_diagonal(D, np.inf)
    return float(scale * np.median(np.sqrt(D.min(1))))


def _sq_distances(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances between the rows of A (n, K) and B (m, K), (n, m), >= 0."""
    D = (A * A).sum(1)[:, None] + (B * B).sum(1)[None, :] - 2.0 * (A @ B.T)
    return np.maximum(D, 0.0, out=D)


def _nearest_run(sims: np.ndarray, runs: np.ndarray, block: int = 1 << 22) -> np.ndarray:
    """Euclidean distance from each simulated mixture to its nearest run, (n,)."""
    out = np.empty(sims.shape[0])
    rows = max(1, block // max(runs.shape[0], 1))
    for a in range(0, sims.shape[0], rows):
        out[a:a + rows] = np.sqrt(_sq_distances(sims[a:a + rows], runs).min(1))
    return out


def propose_mixture(regressor, prior, n_simulations: int = 100_000, top_k: int = 128,
                    rng: np.random.Generator | None = None, tokens_per_domain=None, budget_tokens=None,
                    max_epochs: float = 4.0, chunk_size: int = 8192, runs=None, radius: float | None = None,
                    risk: float = 0.0, **sample_kwargs) -> np.ndarray:
    """Mean of the ``top_k`` simulated mixtures with the lowest predicted loss.

    Parameters
    ----------
    regressor : object with ``predict(W) -> (n,)`` predicted losses (lower is better)
    prior : numpy.ndarray, shape (K,)
        Token shares for :func:`sample_mixtures`.
    n_simulations, top_k : int
        Candidates scored and candidates averaged (top_k <= n_simulations).
    rng : numpy.random.Generator, optional
        Default: ``default_rng(0)``.
    tokens_per_domain, budget_tokens, max_epochs :
        The epoch cap, as in :func:`sample_mixtures`.
    chunk_size : int
        Simulations drawn and scored at once (>= 1). The result does not depend on it.
    runs : numpy.ndarray, shape (M, K), optional
        The mixtures the regressor was fitted on. With them, a trust region: simulations farther
        than ``radius`` (Euclidean) from every run rank after all those within it (and among
        themselves by that distance, nearest first), so the proposal averages mixtures the runs
        cover instead of where the regressor extrapolates.
    radius : float, optional
        The trust region's radius (>= 0); default :func:`trust_radius` of ``runs``.
    risk : float
        c >= 0: rank by the pessimistic bound mean + c * std, where the regressor gives a
        predictive standard deviation (``predict(W, return_std=True)`` of a fitted GP,
        :attr:`MixtureRegressor.has_std`); ignored for a regressor without one. 0: by the mean.
    **sample_kwargs
        ``temperature`` and ``strength_range`` of :func:`sample_mixtures`.

    Returns
    -------
    numpy.ndarray, shape (K,)
        Sums to 1; within the epoch cap when one is given.

    Notes
    -----
    The simulations are the rows of ``sample_mixtures(prior, n_simulations, rng, ...)``, drawn and
    scored ``chunk_size`` rows at a time while a running top-k keeps the best rows seen so far,
    ordered by (predicted loss, row index) as a stable sort of all the predictions would order
    them. Memory is O(chunk_size * K + top_k * K) instead of O(n_simulations * K) (800 MB for
    100,000 simulations of 1,000 domains).

    With ``runs`` and ``risk``, the order is (outside the trust region, score, row index) where
    the score is mean + risk * std inside the region and the distance to the nearest run outside.
    Both guard against the same failure: the top 0.1 % of 100,000 predictions is where a
    regressor's errors are most optimistic, and on count proxies with K = 16 domains an
    unguarded Gaussian process put up to 0.57 of the weight on one domain, predicting a loss
    0.2 bits below every run while the real loss was 0.4 bits above the natural shares'
    (docs/method.md, section 8).
    """
    n_simulations = check_int(n_simulations, "n_simulations", low=1)
    top_k = check_int(top_k, "top_k", low=1, high=n_simulations)
    chunk_size = check_int(chunk_size, "chunk_size", low=1)
    risk = check_float(risk, "risk", low=0.0)
    rng = np.random.default_rng(0) if rng is None else rng
    sampler = _MixtureSampler(prior, tokens_per_domain=tokens_per_domain, budget_tokens=budget_tokens,
                              max_epochs=max_epochs, **sample_kwargs)
    run_rows = None
    if runs is not None:
        run_rows = np.asarray(runs, dtype=np.float64)
        if run_rows.ndim != 2 or run_rows.shape[1] != sampler.K or run_rows.shape[0] < 1 \
                or not np.all(np.isfinite(run_rows)):
            raise ValueError(f"runs must be finite (M, {sampler.K}) mixtures, got shape {run_rows.shape}")
        radius = trust_radius(run_rows) if radius is None else check_float(radius, "radius", low=0.0)
    use_std = risk > 0 and bool(getattr(regressor, "has_std", False))
    streams = sampler.streams(rng)
    best_out = np.empty(0, dtype=bool)                       # (<= top_k,) running top-k: outside the region
    best_pred = np.empty(0)                                  # (<= top_k,) their score, best first
    best_idx = np.empty(0, dtype=np.int64)                   # (<= top_k,) their simulation index
    best_rows = np.empty((0, sampler.K))                     # (<= top_k, K)
    for start in range(0, n_simulations, chunk_size):
        r = min(chunk_size, n_simulations - start)
        sims = sampler.draw(r, streams)                      # (r, K)
        if use_std:
            mean, std = regressor.predict(sims, return_std=True)
            pred = np.asarray(mean, dtype=np.float64) + risk * np.asarray(std, dtype=np.float64)
        else:
            pred = np.asarray(regressor.predict(sims), dtype=np.float64)
        if pred.shape != (r,) or not np.all(np.isfinite(pred)):
            raise ValueError("regressor.predict must return one finite loss per mixture")
        out = np.zeros(r, dtype=bool)
        if run_rows is not None:
            dist = _nearest_run(sims, run_rows)
            out = dist > radius
            pred = np.where(out, dist, pred)                 # outside: nearest to the runs first
        cand_out = np.concatenate([best_out, out])
        cand_pred = np.concatenate([best_pred, pred])
        cand_idx = np.concatenate([best_idx, np.arange(start, start + r)])
        keep = np.lexsort((cand_idx, cand_pred, cand_out))[:top_k]   # inside first, lowest score, ties by index
        old = keep < best_pred.size
        rows = np.empty((keep.size, sampler.K))
        rows[old] = best_rows[keep[old]]
        rows[~old] = sims[keep[~old] - best_pred.size]
        best_out, best_pred, best_idx, best_rows = cand_out[keep], cand_pred[keep], cand_idx[keep], rows
    w = best_rows.mean(0)
    w /= w.sum()
    return w if sampler.cap is None else np.minimum(w, sampler.cap)


def auto_kind(W: np.ndarray, y: np.ndarray, seed: int = 0) -> tuple[str, dict[str, float]]:
    """The regressor kind with the best 5-fold out-of-fold Spearman, and every candidate's score.

    Candidates: ``gp`` and ``linear``, and ``hgb`` from :data:`AUTO_MIN_RUNS` runs. Ties (or all
    NaN, e.g. constant losses) go to the first candidate in that order.
    """
    W = np.asarray(W, dtype=np.float64)
    candidates = ["gp", "linear"] + (["hgb"] if W.shape[0] >= AUTO_MIN_RUNS else [])
    scores = {k: cv_spearman(W, y, k, seed=seed) for k in candidates}
    best = max(candidates, key=lambda k: (np.nan_to_num(scores[k], nan=-2.0), -candidates.index(k)))
    return best, scores


def cv_spearman(W: np.ndarray, y: np.ndarray, kind: str = "auto", folds: int = 5, seed: int = 0) -> float:
    """Spearman correlation of out-of-fold predictions with the losses (k-fold, seeded).

    With ``kind="auto"`` the kind is chosen once on all runs (:func:`auto_kind`) and that score
    returned.
    """
    from scipy.stats import spearmanr

    W = np.asarray(W, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    m = y.size
    folds = min(check_int(folds, "folds", low=2), m)
    if m < 4:
        return float("nan")
    if kind == "auto":
        best, scores = auto_kind(W, y, seed=seed)
        return scores[best]
    assign = np.random.default_rng(seed).permutation(m) % folds
    pred = np.empty(m)
    kernel = None
    if kind == "gp":   # the kernel's K + 2 hyperparameters are fitted once, on all runs; each fold refits the rest
        kernel = MixtureRegressor("gp", random_state=seed).fit(W, y).model_.kernel_
    for f in range(folds):
        test = assign == f
        reg = MixtureRegressor(kind, random_state=seed, kernel=kernel).fit(W[~test], y[~test])
        pred[test] = reg.predict(W[test])
    rho = spearmanr(pred, y).statistic
    return float(rho) if np.isfinite(rho) else float("nan")


@dataclass
class RegmixResult:
    """What :func:`run_regmix` produced.

    Attributes
    ----------
    weights : dict
        ``{domain: proposed weight}`` (sums to 1).
    mixtures : numpy.ndarray, shape (M, K)
        The proxy runs' mixtures.
    losses : numpy.ndarray, shape (M,)
        Target bits per byte of each run.
    domains : list of str
    fit : dict
        ``kind``, ``spearman_cv`` (out-of-fold), ``spearman_train``, ``seconds`` (regressor fit).
    seconds : float
        Wall time of the whole procedure.
    run_seconds : list of float
    budget_tokens : int
        Tokens each proxy run trained on.
    """

    weights: dict[str, float]
    mixtures: np.ndarray
    losses: np.ndarray
    domains: list[str]
    fit: dict
    seconds: float
    run_seconds: list = field(default_factory=list)
    budget_tokens: int = 0


def proxy_runs(streams: Mapping[str, np.ndarray], target_stream: np.ndarray, config: LMConfig, n_runs: int,
               steps: int, batch_size: int = 16, lr: float = 3e-3, seed: int = 0, max_epochs: float = 4.0,
               device: str = "auto", progress: bool = False,
               on_run: Callable[[int, np.ndarray, float], None] | None = None, eval_max_tokens: int | None = 65536,
               cpu_threads: int | None = 1) -> dict:
    """RegMix steps 1-2: draw ``n_runs`` mixtures within the epoch cap and train a proxy on each.

    Returns
    -------
    dict
        ``domains`` (list), ``mixtures`` (M, K), ``losses`` (M,) target bits per byte,
        ``run_seconds`` (M,), ``tokens`` (K,) stream lengths, ``budget_tokens`` (per run).
    """
    streams = check_streams(streams)
    (target_stream,) = check_streams({"target": target_stream}, name="target_stream").values()
    steps, batch_size, lr, seed = _check_training(config, steps, batch_size, lr, seed)
    n_runs = check_int(n_runs, "n_runs", low=2)
    keys = list(streams)
    if len(keys) < 2:
        raise ValueError("RegMix needs at least 2 domains with data")
    tokens = np.array([streams[k].size for k in keys], dtype=np.float64)
    budget = steps * batch_size * config.context
    mixtures = sample_mixtures(tokens, n_runs, np.random.default_rng(seed), tokens_per_domain=tokens,
                               budget_tokens=budget, max_epochs=max_epochs)
    from tqdm.auto import tqdm

    losses = np.empty(n_runs)
    run_seconds = np.empty(n_runs)
    for i in tqdm(range(n_runs), desc="RegMix proxy runs", unit="run", disable=not progress):
        t1 = time.perf_counter()
        res = train_lm(streams, dict(zip(keys, mixtures[i].tolist())), config, steps, batch_size=batch_size, lr=lr,
                       seed=seed, device=device, cpu_threads=cpu_threads)
        losses[i] = evaluate_bpb(res.model, target_stream, max_tokens=eval_max_tokens, device=device,
                                 cpu_threads=cpu_threads)
        run_seconds[i] = time.perf_counter() - t1
        if on_run is not None:
            on_run(i, mixtures[i], float(losses[i]))
    return {"domains": keys, "mixtures": mixtures, "losses": losses, "run_seconds": run_seconds, "tokens": tokens,
            "budget_tokens": int(budget)}


def fit_and_propose(mixtures: np.ndarray, losses: np.ndarray, tokens: np.ndarray, budget_tokens: float,
                    max_epochs: float = 4.0, top_k: int = 128, n_simulations: int = 100_000, seed: int = 0,
                    kind: str = "auto", trust: float | None = 1.0, risk: float = 1.0,
                    min_spearman: float | None = 0.5) -> tuple[np.ndarray, dict]:
    """RegMix steps 3-4: fit the regressor on the runs and propose the mixture.

    ``tokens`` (per domain) and ``budget_tokens`` set the proposal's prior (token shares) and epoch
    cap, ``w_k * budget_tokens <= max_epochs * tokens_k``: pass the budget of the model the mixture
    is for (the curated mixture's), which is what keeps a regressor's optimum off tiny domains.

    Guards (docs/method.md, section 8; each can be turned off):

    - ``trust``: the proposal averages only simulated mixtures within ``trust`` x the runs' median
      nearest-neighbour distance of some run (:func:`propose_mixture`'s trust region; None: off);
    - ``risk``: a Gaussian process ranks them by mean + ``risk`` x predictive std (0: by the mean);
    - ``min_spearman``: a regressor whose 5-fold out-of-fold Spearman is below it (or NaN) is not
      used: the proposal is the best run's mixture, brought into the proposal's cap (None: off).

    Returns
    -------
    weights : numpy.ndarray, shape (K,)
    fit : dict
        ``kind``, ``seconds`` (choice and fit), ``spearman_cv`` (5-fold out-of-fold),
        ``spearman_cv_by_kind`` (every candidate's, with ``kind="auto"``), ``spearman_train``,
        ``runs``, ``predicted_loss`` (of the proposed mixture), ``predicted_std`` (GP only, else
        None), ``best_run_loss``, ``trust_radius`` (None when off), ``nearest_run_distance`` (of the
        proposal), ``risk``, ``fallback`` (None, or ``"best_run"``).
    """
    from scipy.stats import spearmanr

    n_simulations = check_int(n_simulations, "n_simulations", low=1)
    top_k = min(check_int(top_k, "top_k", low=1), n_simulations)
    risk = check_float(risk, "risk", low=0.0)
    mixtures = np.asarray(mixtures, dtype=np.float64)
    losses = np.asarray(losses, dtype=np.float64)
    t2 = time.perf_counter()
    scores = None
    if kind == "auto":
        kind, scores = auto_kind(mixtures, losses, seed=seed)
    reg = MixtureRegressor(kind, random_state=seed).fit(mixtures, losses)
    fit_seconds = time.perf_counter() - t2
    rho_train = spearmanr(reg.predict(mixtures), losses).statistic
    rho_cv = scores[kind] if scores is not None else cv_spearman(mixtures, losses, kind, seed=seed)
    radius = None if trust is None else trust_radius(mixtures, trust)
    fallback = None
    if min_spearman is not None and not (np.isfinite(rho_cv) and rho_cv >= float(min_spearman)):
        fallback = "best_run"
        cap = _MixtureSampler(tokens, tokens_per_domain=tokens, budget_tokens=budget_tokens, max_epochs=max_epochs).cap
        w = project_to_cap(mixtures[int(np.argmin(losses))], cap)
    else:
        w = propose_mixture(reg, tokens, n_simulations=n_simulations, top_k=top_k,
                            rng=np.random.default_rng(seed + 1), tokens_per_domain=tokens, budget_tokens=budget_tokens,
                            max_epochs=max_epochs, runs=None if trust is None else mixtures, radius=radius, risk=risk)
    std = float(reg.predict(w[None, :], return_std=True)[1][0]) if reg.has_std else None
    fit = {"kind": reg.kind_, "seconds": fit_seconds, "spearman_cv": rho_cv, "spearman_cv_by_kind": scores or {kind: rho_cv},
           "spearman_train": float(rho_train) if np.isfinite(rho_train) else float("nan"), "runs": int(len(losses)),
           "predicted_loss": float(reg.predict(w[None, :])[0]), "predicted_std": std,
           "best_run_loss": float(np.min(losses)), "trust_radius": radius,
           "nearest_run_distance": float(_nearest_run(w[None, :], mixtures)[0]), "risk": risk if reg.has_std else 0.0,
           "fallback": fallback}
    return w, fit


def run_regmix(streams: Mapping[str, np.ndarray], target_stream: np.ndarray, config: LMConfig, n_runs: int,
               steps: int, batch_size: int = 16, lr: float = 3e-3, seed: int = 0, max_epochs: float = 4.0,
               top_k: int = 128, n_simulations: int = 100_000, device: str = "auto", progress: bool = False,
               on_run: Callable[[int, np.ndarray, float], None] | None = None, kind: str = "auto",
               eval_max_tokens: int | None = 65536, cpu_threads: int | None = 1,
               proposal_budget_tokens: float | None = None) -> RegmixResult:
    """Domain weights by RegMix (:func:`proxy_runs`, then :func:`fit_and_propose`).

    Parameters
    ----------
    streams : mapping of str to numpy.ndarray
        ``{domain: uint8 byte stream}`` (training split).
    target_stream : numpy.ndarray
        uint8 stream whose bits per byte the mixture should minimize.
    config : LMConfig
    n_runs : int
        Proxy runs M (>= 2).
    steps, batch_size, lr, seed :
        Each proxy run (all runs share the seed: only the mixture differs).
    max_epochs : float
        Epoch cap of the sampled and proposed mixtures (budget = steps * batch_size * context).
    top_k, n_simulations : int
        See :func:`propose_mixture` (top_k is lowered to n_simulations if larger).
    device : str
    progress : bool
    on_run : callable, optional
        ``on_run(i, mixture, loss)`` after each proxy run.
    kind : str
        :class:`MixtureRegressor` kind.
    eval_max_tokens : int, optional
        Cap on the target bytes evaluated per run.
    cpu_threads : int, optional
        torch threads on CPU (see ``lm.train_lm``).
    proposal_budget_tokens : float, optional
        Token budget of the model the proposed mixture is for: the proposal's epoch cap is
        ``w_k * proposal_budget_tokens <= max_epochs * tokens_k``. Default: a proxy run's budget.

    Returns
    -------
    RegmixResult
    """
    t0 = time.perf_counter()
    runs = proxy_runs(streams, target_stream, config, n_runs, steps, batch_size=batch_size, lr=lr, seed=seed,
                      max_epochs=max_epochs, device=device, progress=progress, on_run=on_run,
                      eval_max_tokens=eval_max_tokens, cpu_threads=cpu_threads)
    budget = runs["budget_tokens"] if proposal_budget_tokens is None else proposal_budget_tokens
    w, fit = fit_and_propose(runs["mixtures"], runs["losses"], runs["tokens"], budget,
                             max_epochs=max_epochs, top_k=top_k, n_simulations=n_simulations, seed=seed, kind=kind)
    return RegmixResult(weights=dict(zip(runs["domains"], w.tolist())), mixtures=runs["mixtures"],
                        losses=runs["losses"], domains=runs["domains"], fit=fit, seconds=time.perf_counter() - t0,
                        run_seconds=runs["run_seconds"].tolist(), budget_tokens=runs["budget_tokens"])
