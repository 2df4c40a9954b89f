"""RegMix: domain weights by regression on small proxy runs (DESIGN.md section 5).

Liu et al., "RegMix: Data Mixture as Regression for Language Model Pre-training" (ICLR 2025).

Procedure
---------
1. Draw M mixtures (:func:`sample_mixtures`): prior p = shares^temperature / sum (temperature 0.5
   by default), a strength s log-uniform in ``strength_range`` (default [0.1, 5]) per mixture, and
   w ~ Dirichlet(p * s). With token counts n_k and the proxy run's token budget B, a mixture is
   rejected when some domain would be read more than ``max_epochs`` times (w_k B > max_epochs n_k).
2. Train one proxy model per mixture (same seed, same steps: only the mixture changes) and record
   its loss (bits per byte) on the target stream.
3. Fit a regressor from mixture to loss (:class:`MixtureRegressor`).
4. Score ``n_simulations`` further mixtures drawn the same way (so within the same epoch cap),
   keep the ``top_k`` with the *lowest* predicted loss and output their mean. The mean of
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

from ._checks import check_float, check_int
from .lm import LMConfig, _check_training, check_streams, evaluate_bpb, train_lm

__all__ = ["sample_mixtures", "MixtureRegressor", "propose_mixture", "cv_spearman", "auto_kind", "RegmixResult",
           "proxy_runs", "fit_and_propose", "run_regmix", "AUTO_MIN_RUNS", "KINDS"]

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
                    budget_tokens: float | None = None, max_epochs: float = 4.0, max_tries: int = 1000) -> np.ndarray:
    """Draw mixtures from Dirichlet(prior^temperature * s), s log-uniform, within an epoch cap.

    Parameters
    ----------
    prior : numpy.ndarray, shape (K,)
        Token shares (or counts) of the domains; domains with 0 get weight 0.
    n : int
        Mixtures wanted.
    rng : numpy.random.Generator
    temperature : float
        Exponent on the shares (> 0; 0.5 flattens them towards uniform).
    strength_range : (float, float)
        Bounds of the log-uniform Dirichlet strength s (0 < low <= high).
    tokens_per_domain : numpy.ndarray, shape (K,), optional
        Tokens available per domain; with ``budget_tokens`` enables the epoch cap.
    budget_tokens : float, optional
        Tokens a run trains on.
    max_epochs : float
        Cap on w_k * budget / tokens_k.
    max_tries : int
        Rounds of rejection sampling (each draws ``2 n`` candidates) before giving up.

    Returns
    -------
    numpy.ndarray, shape (n, K)
        Rows on the simplex.
    """
    p = _check_prior(prior)
    n = check_int(n, "n", low=1)
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy Generator, got {type(rng).__name__}")
    t = check_float(temperature, "temperature", low=0.0, strict=True)
    try:
        lo, hi = (float(v) for v in strength_range)
    except (TypeError, ValueError) as err:
        raise ValueError(f"strength_range must be two numbers (low, high), got {strength_range!r}") from err
    if not (0 < lo <= hi < np.inf):
        raise ValueError(f"strength_range must satisfy 0 < low <= high, got {strength_range!r}")
    max_tries = check_int(max_tries, "max_tries", low=1)
    cap = None
    if (tokens_per_domain is None) != (budget_tokens is None):
        raise ValueError("pass both tokens_per_domain and budget_tokens for the epoch cap, or neither")
    if tokens_per_domain is not None:
        tok = np.asarray(tokens_per_domain, dtype=np.float64)
        if tok.shape != p.shape or not np.all(np.isfinite(tok)) or np.any(tok < 0):
            raise ValueError(f"tokens_per_domain must be {p.size} finite values >= 0, got {tok.tolist()}")
        budget = check_float(budget_tokens, "budget_tokens", low=0.0, strict=True)
        cap = check_float(max_epochs, "max_epochs", low=0.0, strict=True) * tok / budget  # max weight per domain
        if cap.sum() < 1.0:
            raise ValueError(f"the epoch cap admits no mixture: max_epochs * tokens = {float(cap.sum() * budget):.0f} "
                             f"< budget {budget:.0f}; raise max_epochs or lower the budget")
    alpha = np.where(p > 0, p ** t, 0.0)
    alpha /= alpha.sum()
    support = alpha > 0
    out = np.empty((n, p.size))  # filled in place: the first n accepted candidates, in order
    got = 0
    for _ in range(max_tries):
        m = 2 * n
        s = np.exp(rng.uniform(np.log(lo), np.log(hi), size=m))
        w = np.zeros((m, p.size))
        w[:, support] = _dirichlet(alpha[support][None, :] * s[:, None], rng)
        ok = np.isfinite(w).all(1) & (w.sum(1) > 0)
        if cap is not None:
            ok &= (w <= cap[None, :] + 1e-12).all(1)
        take = np.flatnonzero(ok)[: n - got]
        out[got:got + take.size] = w[take]
        got += take.size
        del w
        if got >= n:
            return out / out.sum(1, keepdims=True)
    raise ValueError(f"only {got} of {n} mixtures passed the epoch cap in {max_tries} rounds: "
                     "raise max_epochs, lower the budget or merge tiny domains")


def _dirichlet(alpha: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rows ~ Dirichlet(alpha_row), via gamma variates in log space (stable for tiny alpha).

    For a < 1, Gamma(a) = Gamma(a + 1) * U^(1/a), so log G = log Gamma(a + 1) + log(U) / a; the
    rows are normalized with a log-sum-exp, so no row underflows to all zeros.
    """
    g = rng.standard_gamma(alpha + 1.0)
    u = rng.random(alpha.shape)
    logg = np.log(g) + np.log(u) / alpha
    logg -= logg.max(1, keepdims=True)
    w = np.exp(logg)
    return w / w.sum(1, keepdims=True)


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

    def predict(self, W) -> np.ndarray:
        """Predicted target loss of each mixture, (n,)."""
        if self.model_ is None:
            raise ValueError("call fit(W, y) before predict")
        return np.asarray(self.model_.predict(self._check_w(W)), dtype=np.float64)


def propose_mixture(regressor, prior, n_simulations: int = 100_000, top_k: int = 128,
                    rng: np.random.Generator | None = None, tokens_per_domain=None, budget_tokens=None,
                    max_epochs: float = 4.0, **sample_kwargs) -> np.ndarray:
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

    Returns
    -------
    numpy.ndarray, shape (K,)
        Sums to 1.
    """
    n_simulations = check_int(n_simulations, "n_simulations", low=1)
    top_k = check_int(top_k, "top_k", low=1, high=n_simulations)
    rng = np.random.default_rng(0) if rng is None else rng
    sims = sample_mixtures(prior, n_simulations, rng, tokens_per_domain=tokens_per_domain,
                           budget_tokens=budget_tokens, max_epochs=max_epochs, **sample_kwargs)
    pred = np.asarray(regressor.predict(sims), dtype=np.float64)
    if pred.shape != (n_simulations,) or not np.all(np.isfinite(pred)):
        raise ValueError("regressor.predict must return one finite loss per mixture")
    best = np.argsort(pred, kind="stable")[:top_k]  # lowest predicted loss first
    w = sims[best].mean(0)
    return w / w.sum()


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
                    kind: str = "auto") -> tuple[np.ndarray, dict]:
    """RegMix steps 3-4: fit the regressor on the runs and propose the mixture.

    ``tokens`` (per domain) and ``budget_tokens`` set the proposal's prior (token shares) and epoch
    cap, ``w_k * budget_tokens <= max_epochs * tokens_k``: pass the budget of the model the mixture
    is for (the curated mixture's), which is what keeps a regressor's optimum off tiny domains.

    Returns
    -------
    weights : numpy.ndarray, shape (K,)
    fit : dict
        ``kind``, ``seconds`` (choice and fit), ``spearman_cv`` (5-fold out-of-fold),
        ``spearman_cv_by_kind`` (every candidate's, with ``kind="auto"``), ``spearman_train``,
        ``runs``, ``predicted_loss`` (of the proposed mixture), ``best_run_loss``.
    """
    from scipy.stats import spearmanr

    n_simulations = check_int(n_simulations, "n_simulations", low=1)
    top_k = min(check_int(top_k, "top_k", low=1), n_simulations)
    t2 = time.perf_counter()
    scores = None
    if kind == "auto":
        kind, scores = auto_kind(mixtures, losses, seed=seed)
    reg = MixtureRegressor(kind, random_state=seed).fit(mixtures, losses)
    fit_seconds = time.perf_counter() - t2
    rho_train = spearmanr(reg.predict(mixtures), losses).statistic
    w = propose_mixture(reg, tokens, n_simulations=n_simulations, top_k=top_k, rng=np.random.default_rng(seed + 1),
                        tokens_per_domain=tokens, budget_tokens=budget_tokens, max_epochs=max_epochs)
    rho_cv = scores[kind] if scores is not None else cv_spearman(mixtures, losses, kind, seed=seed)
    fit = {"kind": reg.kind_, "seconds": fit_seconds, "spearman_cv": rho_cv, "spearman_cv_by_kind": scores or {kind: rho_cv},
           "spearman_train": float(rho_train) if np.isfinite(rho_train) else float("nan"), "runs": int(len(losses)),
           "predicted_loss": float(reg.predict(w[None, :])[0]), "best_run_loss": float(np.min(losses))}
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
