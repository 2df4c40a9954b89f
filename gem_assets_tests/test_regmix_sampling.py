"""RegMix's simulated mixtures within an epoch cap: the KL projection onto the capped simplex,
sampling with many domains, and the chunked proposal."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.spatial.distance import pdist

from gem_assets.lib.mixing.regmix import _MixtureSampler, _project_log, project_to_cap, propose_mixture, \
    sample_mixtures


def _kl(q, w):
    q = np.asarray(q, dtype=np.float64)
    pos = q > 0
    return float(np.sum(q[pos] * np.log(q[pos] / w[pos])))


def _zipf(K):
    """Zipf-like token counts and a budget of their sum: the 4-epoch cap is 4 x each domain's share."""
    tok = 1e6 / np.arange(1, K + 1)
    return tok, float(tok.sum())


def _within(W, tok, budget, max_epochs=4.0):
    return bool((W * budget <= max_epochs * tok + 1e-9).all())


# --- the projection -------------------------------------------------------------------------------

def test_projection_hand_computed():
    # ratios c / w = (0.57, 2.5, 5): domain 0 is cut to 0.4 and t = (1 - 0.4) / (0.2 + 0.1) = 2
    np.testing.assert_allclose(project_to_cap([0.7, 0.2, 0.1], [0.4, 0.5, 0.5]), [0.4, 0.4, 0.2], rtol=1e-14)
    # two domains over their caps: t = (1 - 0.2 - 0.3) / 0.1 = 5
    np.testing.assert_allclose(project_to_cap([0.5, 0.4, 0.1], [0.2, 0.3, 1.0]), [0.2, 0.3, 0.5], rtol=1e-14)
    # rows at once; a row within the cap is kept; the scale of a row does not matter
    W = np.array([[0.7, 0.2, 0.1], [0.3, 0.3, 0.4], [7.0, 2.0, 1.0]])
    np.testing.assert_allclose(project_to_cap(W, [0.4, 0.5, 0.5]),
                               [[0.4, 0.4, 0.2], [0.3, 0.3, 0.4], [0.4, 0.4, 0.2]], rtol=1e-14)


def test_projection_matches_scipy_on_random_cases():
    rng = np.random.default_rng(0)
    binding = 0
    for case in range(25):
        K = int(rng.integers(3, 7))
        w = rng.dirichlet(np.full(K, 0.5))
        w = np.maximum(w, 1e-6)                          # scipy's KL needs w > 0
        w /= w.sum()
        c = rng.uniform(0.05, 1.0, K)
        c *= rng.uniform(1.05, 2.0) / c.sum()            # sum of caps in [1.05, 2]: the cap binds
        binding += bool((w > c).any())
        q = project_to_cap(w, c)
        assert np.all(q <= c) and np.all(q >= 0) and q.sum() == pytest.approx(1.0, abs=1e-14)
        x0 = c / c.sum()
        res = minimize(lambda x: float(np.sum(x * np.log(x / w))), x0,
                       jac=lambda x: np.log(x / w) + 1.0, method="SLSQP",
                       bounds=[(1e-12, ck) for ck in c],
                       constraints=[{"type": "eq", "fun": lambda x: x.sum() - 1.0, "jac": lambda x: np.ones_like(x)}],
                       options={"ftol": 1e-14, "maxiter": 500})
        assert res.success, (case, res.message)
        np.testing.assert_allclose(q, res.x, atol=2e-5, err_msg=f"case {case}")
        assert _kl(q, w) <= _kl(np.clip(res.x, 0, None), w) + 1e-10   # ours is the minimum
    assert binding >= 20                                 # (rows within the cap come back as they are)


def test_projection_weights_spanning_hundreds_of_orders_of_magnitude():
    # a sparse Dirichlet row: t must reach ~1e309 (overflows float64) for the last domain's share
    w = np.array([1.0, 1e-200, 1e-300, 1e-310])
    q = project_to_cap(w, [0.4, 0.3, 0.2, 0.5])
    np.testing.assert_allclose(q, [0.4, 0.3, 0.2, 0.1], rtol=1e-12)


def test_projection_matches_bisection_with_many_domains_and_extreme_weights():
    # log-weights with spreads up to 1e3 (weights down to exp(-3000)) and some exact zeros; reference:
    # bisection on log t of sum_k min(c_k, t w_k) = 1, evaluated in log space
    rng = np.random.default_rng(1)
    for spread in (1.0, 30.0, 1000.0):
        K = 200
        lw = rng.standard_normal((10, K)) * spread
        lw[:, 0] = np.abs(lw).max() + 1.0                 # a dominant domain in every row
        lw[rng.random((10, K)) < 0.2] = -np.inf
        c = rng.uniform(0.0, 1.0, K) ** 3
        c *= 1.5 / c.sum()
        q = _project_log(lw, c)                           # (weights below float64's range: pass their logs)
        assert np.isfinite(q).all() and (q <= c).all() and (q >= 0).all()
        np.testing.assert_allclose(q.sum(1), 1.0, atol=1e-13)
        for r in range(10):
            L = lw[r] - lw[r].max()
            lo, hi = -1e3, 1e5
            for _ in range(200):
                mid = 0.5 * (lo + hi)
                with np.errstate(over="ignore"):
                    lo, hi = (mid, hi) if np.minimum(c, np.exp(mid + L)).sum() < 1.0 else (lo, mid)
            with np.errstate(over="ignore"):
                ref = np.minimum(c, np.exp(hi + L))
            np.testing.assert_allclose(q[r], ref / ref.sum(), atol=1e-12)


def test_projection_zero_weights_take_the_rest_by_slack_and_zero_caps_get_nothing():
    # domain 0 alone cannot absorb: its cap, then 0.5 over the slack (0.3, 0.6) of the zero-weight domains
    np.testing.assert_allclose(project_to_cap([1.0, 0.0, 0.0], [0.5, 0.3, 0.6]), [0.5, 1 / 6, 1 / 3], rtol=1e-14)
    # all the weight on a domain capped at 0: the whole row goes by slack
    np.testing.assert_allclose(project_to_cap([0.0, 0.0, 1.0], [0.5, 1.5, 0.0]), [0.25, 0.75, 0.0], rtol=1e-14)
    q = project_to_cap([0.5, 0.5, 0.0], [0.3, 1.0, 0.0])
    np.testing.assert_allclose(q, [0.3, 0.7, 0.0], rtol=1e-14)


@pytest.mark.parametrize("w,cap,match", [
    ([0.5, 0.5], [0.4, 0.4], "admits no mixture"),
    ([0.5, -0.1], [1.0, 1.0], ">= 0"),
    ([0.5, np.nan], [1.0, 1.0], "finite"),
    ([[0.5, 0.5], [0.0, 0.0]], [1.0, 1.0], "positive weight"),
    ([0.5, 0.5], [1.0, 1.0, 1.0], "cap must be 2"),
    ([0.5, 0.5], [np.inf, 1.0], "cap must be"),
    (np.ones((2, 2, 2)), [1.0, 1.0], "shape"),
])
def test_projection_rejects_bad_arguments(w, cap, match):
    with pytest.raises(ValueError, match=match):
        project_to_cap(w, cap)


# --- sampling within the cap ----------------------------------------------------------------------

@pytest.mark.parametrize("K,n", [(64, 4000), (256, 2000), (1000, 300)])
def test_many_domains_within_the_cap_and_diverse(K, n):
    tok, budget = _zipf(K)
    alpha = np.sqrt(tok) / np.sqrt(tok).sum()
    cap = 4.0 * tok / budget
    # the cap binds: a Dirichlet draw of the strongest strength (5) almost never fits under it
    raw = np.random.default_rng(9).dirichlet(5.0 * alpha, size=2000)
    assert (raw <= cap).all(1).mean() < 0.02
    W = sample_mixtures(tok, n, np.random.default_rng(0), tokens_per_domain=tok, budget_tokens=budget)
    assert W.shape == (n, K) and W.dtype == np.float64 and np.isfinite(W).all() and (W >= 0).all()
    np.testing.assert_allclose(W.sum(1), 1.0, atol=1e-12)
    assert _within(W, tok, budget)
    assert (W >= cap * (1 - 1e-9)).any(1).mean() > 0.5          # most rows sit at the cap somewhere
    # diverse: distinct rows, far apart on average (a Dirichlet of strength <= 5 over K domains)
    assert len(np.unique(W, axis=0)) == n and pdist(W[:300], "cityblock").mean() > 1.0
    np.testing.assert_array_equal(W, sample_mixtures(tok, n, np.random.default_rng(0), tokens_per_domain=tok,
                                                     budget_tokens=budget))


def test_uncapped_domains_keep_the_prior_proportions():
    # four large domains whose cap (>= 1) never binds and a Zipf tail of small ones that it cuts: within
    # a row the projection scales the uncut domains by one factor t, so their renormalized shares are
    # those of the Dirichlet draw, whose mean is the prior's (a Dirichlet's sub-vector, renormalized,
    # is a Dirichlet of the sub-vector's parameters)
    K = 64
    tok = np.concatenate([[0.6e6, 0.4e6, 0.3e6, 0.25e6], 2e4 / np.arange(1, K - 3)])
    budget = 1e6
    W = sample_mixtures(tok, 20000, np.random.default_rng(1), tokens_per_domain=tok, budget_tokens=budget)
    assert _within(W, tok, budget)
    alpha = np.sqrt(tok) / np.sqrt(tok).sum()
    head = W[:, :4] / W[:, :4].sum(1, keepdims=True)
    np.testing.assert_allclose(head.mean(0), alpha[:4] / alpha[:4].sum(), atol=0.01)
    # the uncut domains only gain the mass cut from the others
    assert (W[:, :4].mean(0) > alpha[:4]).all()


def test_zero_prior_and_zero_token_domains_get_nothing():
    prior = np.array([1.0, 0.0, 1.0, 1.0])
    tok = np.array([100.0, 1000.0, 0.0, 100.0])        # domain 1: no prior; domain 2: no tokens
    W = sample_mixtures(prior, 500, np.random.default_rng(3), tokens_per_domain=tok, budget_tokens=100.0)
    assert (W[:, 1] == 0).all() and (W[:, 2] == 0).all()
    np.testing.assert_allclose(W.sum(1), 1.0)
    assert _within(W, tok, 100.0)
    # the epoch cap must be met by the prior's domains alone
    with pytest.raises(ValueError, match="admits no mixture"):
        sample_mixtures([1.0, 1.0, 0.0], 5, np.random.default_rng(0), tokens_per_domain=[10.0, 10.0, 1e6],
                        budget_tokens=100.0, max_epochs=1.0)


@pytest.mark.parametrize("strength", [1e-3, 1e3])
def test_extreme_strengths_stay_finite_and_capped(strength):
    tok, budget = _zipf(256)
    W = sample_mixtures(tok, 300, np.random.default_rng(4), strength_range=(strength, strength),
                        tokens_per_domain=tok, budget_tokens=budget)
    assert np.isfinite(W).all() and _within(W, tok, budget)
    np.testing.assert_allclose(W.sum(1), 1.0, atol=1e-12)


def test_draws_do_not_depend_on_the_block_size(monkeypatch):
    tok, budget = _zipf(64)
    kw = dict(tokens_per_domain=tok, budget_tokens=budget)
    W = sample_mixtures(tok, 700, np.random.default_rng(5), **kw)
    monkeypatch.setattr(_MixtureSampler, "block_values", 64 * 33)     # 33 rows a block
    np.testing.assert_array_equal(W, sample_mixtures(tok, 700, np.random.default_rng(5), **kw))
    np.testing.assert_array_equal(W[:100], sample_mixtures(tok, 100, np.random.default_rng(5), **kw))
    assert not np.array_equal(W[:100], sample_mixtures(tok, 100, np.random.default_rng(6), **kw))


# --- the chunked proposal -------------------------------------------------------------------------

class _LinearLoss:
    """Predicted loss sum_k cost_k w_k."""

    def __init__(self, cost):
        self.cost = np.asarray(cost, dtype=np.float64)
        self.calls = []

    def predict(self, W):
        self.calls.append(len(W))
        return np.asarray(W) @ self.cost


def test_chunked_proposal_equals_scoring_all_at_once():
    tok, budget = _zipf(12)
    cost = np.random.default_rng(0).uniform(1.0, 2.0, 12)
    kw = dict(tokens_per_domain=tok, budget_tokens=budget, max_epochs=4.0)
    reg = _LinearLoss(cost)
    small = propose_mixture(reg, tok, n_simulations=3000, top_k=40, rng=np.random.default_rng(7), chunk_size=257, **kw)
    assert reg.calls == [257] * 11 + [3000 - 11 * 257]
    whole = propose_mixture(_LinearLoss(cost), tok, n_simulations=3000, top_k=40, rng=np.random.default_rng(7),
                            chunk_size=3000, **kw)
    np.testing.assert_array_equal(small, whole)
    # and both are the mean of the 40 best rows of one sample_mixtures call with that rng
    sims = sample_mixtures(tok, 3000, np.random.default_rng(7), **kw)
    best = np.argsort(sims @ cost, kind="stable")[:40]
    np.testing.assert_allclose(small, sims[best].mean(0) / sims[best].mean(0).sum(), rtol=1e-13)


def test_running_top_k_breaks_ties_by_index_across_chunks():
    # constant predictions: a stable sort keeps the first top_k simulations, whichever the chunking
    class Flat:
        def predict(self, W):
            return np.zeros(len(W))

    sims = sample_mixtures(np.ones(5), 1000, np.random.default_rng(8))
    want = sims[:50].mean(0)
    for chunk in (7, 64, 1000):
        got = propose_mixture(Flat(), np.ones(5), n_simulations=1000, top_k=50, rng=np.random.default_rng(8),
                              chunk_size=chunk)
        np.testing.assert_allclose(got, want / want.sum(), rtol=1e-13)


def test_proposal_puts_the_cheapest_domain_at_its_cap():
    K = 64
    tok, budget = _zipf(K)
    budget *= 2.0                                      # the cap is 2 x each share: 0.42 for domain 0
    cap = 4.0 * tok / budget
    cost = np.ones(K)
    cost[0] = 0.0                                      # loss = 1 - w_0: the more of domain 0 the better
    w = propose_mixture(_LinearLoss(cost), tok, n_simulations=20000, top_k=32, rng=np.random.default_rng(0),
                        tokens_per_domain=tok, budget_tokens=budget, max_epochs=4.0, chunk_size=4096)
    assert w.shape == (K,) and w.sum() == pytest.approx(1.0) and _within(w, tok, budget)
    assert np.argmax(w) == 0 and w[0] == pytest.approx(cap[0], rel=1e-12)   # every top row has it at its cap
    assert w[1:].max() < 0.5 * w[0]


def test_proposal_rejects_bad_arguments():
    reg = _LinearLoss(np.ones(3))
    with pytest.raises(ValueError, match="chunk_size"):
        propose_mixture(reg, np.ones(3), n_simulations=10, top_k=2, chunk_size=0)
    with pytest.raises(ValueError, match="top_k"):
        propose_mixture(reg, np.ones(3), n_simulations=10, top_k=11)

    class Short:
        def predict(self, W):
            return np.zeros(len(W) - 1)

    with pytest.raises(ValueError, match="one finite loss per mixture"):
        propose_mixture(Short(), np.ones(3), n_simulations=10, top_k=2, chunk_size=4)
