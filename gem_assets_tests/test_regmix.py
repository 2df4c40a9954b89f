"""RegMix: mixture sampling within caps, regressor direction, proposal, the procedure end to end."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from gem_assets.lib.mixing.lm import LMConfig
from gem_assets.lib.mixing.streams import texts_to_streams
from gem_assets.lib.mixing.regmix import AUTO_MIN_RUNS, MixtureRegressor, auto_kind, cv_spearman, fit_and_propose, \
    propose_mixture, run_regmix, sample_mixtures


def test_mixtures_on_the_simplex_with_the_prior_mean():
    prior = np.array([0.64, 0.25, 0.09, 0.02])
    w = sample_mixtures(prior, 20000, np.random.default_rng(0))
    assert w.shape == (20000, 4) and (w >= 0).all()
    np.testing.assert_allclose(w.sum(1), 1.0)
    # E[Dirichlet(a * s)] = a / sum(a) whatever s: here sqrt of the shares, normalized
    want = np.array([0.8, 0.5, 0.3, 0.02 ** 0.5])
    np.testing.assert_allclose(w.mean(0), want / want.sum(), atol=0.01)
    np.testing.assert_array_equal(w[:5], sample_mixtures(prior, 20000, np.random.default_rng(0))[:5])


def test_zero_share_domains_get_no_weight_and_temperature_one_keeps_shares():
    w = sample_mixtures(np.array([3.0, 0.0, 1.0]), 5000, np.random.default_rng(1), temperature=1.0)
    assert (w[:, 1] == 0).all()
    np.testing.assert_allclose(w.mean(0), [0.75, 0.0, 0.25], atol=0.02)


def test_epoch_cap_is_respected():
    tokens = np.array([1000.0, 1000.0, 50.0])
    w = sample_mixtures(tokens, 500, np.random.default_rng(2), tokens_per_domain=tokens, budget_tokens=400.0,
                        max_epochs=2.0)
    assert (w * 400.0 <= 2.0 * tokens + 1e-9).all()   # domain 2: at most 100 of 400 tokens
    assert w[:, 2].max() <= 0.25 + 1e-12 and w[:, 2].max() > 0.1


@pytest.mark.parametrize("kwargs,match", [
    (dict(prior=[1.0]), "at least 2"),
    (dict(prior=[1.0, -1.0]), ">= 0"),
    (dict(n=0), "n must be"),
    (dict(temperature=0.0), "temperature"),
    (dict(strength_range=(5.0, 0.1)), "strength_range"),
    (dict(tokens_per_domain=[1.0, 1.0]), "both"),
    (dict(tokens_per_domain=[1.0, 1.0], budget_tokens=100.0, max_epochs=1.0), "admits no mixture"),
    (dict(tokens_per_domain=[1.0, 1.0, 1.0], budget_tokens=1.0), "tokens_per_domain"),
])
def test_sample_mixtures_rejects_bad_arguments(kwargs, match):
    args = dict(prior=[1.0, 1.0], n=3, rng=np.random.default_rng(0))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        sample_mixtures(**args)


def _linear_runs(m=200, seed=0):
    # loss = sum_k c_k w_k: domain 0 is the best (lowest cost), domain 3 the worst
    rng = np.random.default_rng(seed)
    W = sample_mixtures(np.ones(4), m, rng)
    c = np.array([1.0, 2.0, 3.0, 4.0])
    return W, W @ c + 0.01 * rng.standard_normal(m), c


@pytest.mark.parametrize("kind", ["linear", "hgb", "gp"])
def test_regressor_direction_lower_loss_is_better(kind):
    W, y, _ = _linear_runs()
    reg = MixtureRegressor(kind).fit(W, y)
    assert reg.kind_ == kind
    w = propose_mixture(reg, np.ones(4), n_simulations=5000, top_k=32, rng=np.random.default_rng(1))
    assert w.sum() == pytest.approx(1.0)
    # the proposal must favour the cheap domain; reversing the ranking would favour domain 3
    assert w[0] > 0.5 and w[0] == w.max() and w[3] < 0.1
    assert reg.predict(np.eye(4)[[0]])[0] < reg.predict(np.eye(4)[[3]])[0]


def test_proposal_respects_the_epoch_cap():
    W, y, _ = _linear_runs()
    reg = MixtureRegressor("linear").fit(W, y)
    tokens = np.array([10.0, 1000.0, 1000.0, 1000.0])  # the best domain is tiny
    w = propose_mixture(reg, tokens, n_simulations=4000, top_k=32, rng=np.random.default_rng(0),
                        tokens_per_domain=tokens, budget_tokens=100.0, max_epochs=4.0)
    assert w[0] <= 0.4 + 1e-12   # 4 epochs x 10 tokens out of 100
    assert w[1] == w.max()       # the next best domain takes the rest


def test_regressor_auto_kind_and_bad_input():
    # auto: the candidate with the best out-of-fold Spearman; trees only from AUTO_MIN_RUNS runs
    W, y, _ = _linear_runs(m=AUTO_MIN_RUNS - 1)
    kind, scores = auto_kind(W, y)
    assert set(scores) == {"gp", "linear"} and scores[kind] == max(scores.values())
    assert MixtureRegressor().fit(W, y).kind_ == kind
    W, y, _ = _linear_runs(m=AUTO_MIN_RUNS)
    assert set(auto_kind(W, y)[1]) == {"gp", "linear", "hgb"}
    # a smooth curved loss (log of each domain's share, as a learning curve): the GP beats the line
    rng = np.random.default_rng(5)
    Ws = sample_mixtures(np.ones(4), 300, rng)
    curved = -np.log(Ws + 0.01) @ np.array([1.0, 0.5, 0.25, 0.1]) + 0.01 * rng.standard_normal(300)
    k2, s2 = auto_kind(Ws, curved)
    assert s2["gp"] > s2["linear"] + 0.05 and k2 in ("gp", "hgb") and s2[k2] == max(s2.values())
    reg = MixtureRegressor("hgb").fit(W, y)
    with pytest.raises(ValueError, match="domains"):
        reg.predict(np.ones((2, 3)))
    with pytest.raises(ValueError, match="fit"):
        MixtureRegressor().predict(W)
    with pytest.raises(ValueError, match="one loss per mixture"):
        MixtureRegressor().fit(W, y[:-1])
    with pytest.raises(ValueError, match="NaN"):
        MixtureRegressor().fit(W, np.where(np.arange(y.size) == 0, np.nan, y))
    with pytest.raises(ValueError, match="kind"):
        MixtureRegressor("forest")


def test_cv_spearman_high_on_a_linear_signal_and_low_on_noise():
    W, y, _ = _linear_runs(m=80)
    assert cv_spearman(W, y, "linear") > 0.95
    # on pure noise the out-of-fold correlation is ~0 (slightly negative: each fold's fit leans away
    # from its held-out points), with a spread of ~0.16 per draw at 80 runs: averaged over 10 draws
    rho = [cv_spearman(W, np.random.default_rng(s).standard_normal(80), "linear") for s in range(10)]
    assert abs(np.mean(rho)) < 0.3


def test_run_regmix_end_to_end():
    rng = np.random.default_rng(0)
    texts = ["the cat sat on the mat. " * 4] * 10 + ["".join(chr(c) for c in rng.integers(97, 123, 80))
                                                     for _ in range(10)]
    streams = texts_to_streams(texts, ["cat"] * 10 + ["noise"] * 10)
    target = texts_to_streams(["the cat sat on the mat. " * 3], ["t"])["t"]
    seen = []
    cfg = LMConfig(n_layer=1, n_head=2, d_model=16, context=16)
    r = run_regmix(streams, target, cfg, n_runs=5, steps=6, batch_size=4, lr=1e-2, seed=0, n_simulations=500,
                   top_k=16, device="cpu", on_run=lambda i, w, loss: seen.append((i, w.copy(), loss)))
    assert r.domains == ["cat", "noise"] and r.mixtures.shape == (5, 2) and r.losses.shape == (5,)
    assert [s[0] for s in seen] == list(range(5))
    np.testing.assert_allclose([s[2] for s in seen], r.losses)
    assert np.isfinite(r.losses).all() and r.fit["kind"] in ("gp", "linear")
    # the target is cat text: the more cat a run trains on, the lower its loss, and the proposal is all cat
    assert spearmanr(r.mixtures[:, 0], r.losses).statistic < -0.9
    assert r.weights["cat"] > 0.99 and sum(r.weights.values()) == pytest.approx(1.0)
    # the total time covers the runs and the regressor's fit
    assert r.seconds >= sum(r.run_seconds) + r.fit["seconds"] and r.fit["seconds"] > 0
    assert r.budget_tokens == 6 * 4 * 16
    tokens = np.array([streams[k].size for k in r.domains])
    assert (r.mixtures * r.budget_tokens <= 4.0 * tokens + 1e-9).all()


class _OptimisticAwayFromRuns:
    """A regressor exact near its runs and optimistic away from them (how the GP failed on count proxies).

    The true loss is a quadratic bowl with its minimum at the prior p; the prediction subtracts a bonus
    that grows with the distance to the nearest run, as an extrapolating regressor does in corners no
    run covers.
    """

    def __init__(self, runs, p):
        self.runs, self.p = runs, p

    def true(self, W):
        return 10.0 * ((np.atleast_2d(W) - self.p) ** 2).sum(1)

    def predict(self, W):
        d = np.sqrt(((W[:, None, :] - self.runs[None, :, :]) ** 2).sum(2)).min(1)
        return self.true(W) - 20.0 * d ** 2


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_proposal_stays_where_the_runs_are_when_the_regressor_extrapolates(seed):
    # known answer: the loss is lowest at the prior, and runs cover the prior's neighbourhood (large
    # strengths) as well as corners (small ones). Unguarded, the top-k of the predictions are corners
    # no run covers (the regressor's optimism); with the runs' trust region the proposal is near p.
    tokens = np.random.default_rng(3).uniform(1e5, 5e5, 8)
    p = tokens / tokens.sum()
    kw = dict(tokens_per_domain=tokens, budget_tokens=1e6, temperature=1.0, strength_range=(0.1, 100.0))
    runs = sample_mixtures(tokens, 128, np.random.default_rng(seed), **kw)
    reg = _OptimisticAwayFromRuns(runs, p)
    common = dict(n_simulations=4000, top_k=32, rng=None, **kw)
    bare = propose_mixture(reg, tokens, **{**common, "rng": np.random.default_rng(seed + 1)})
    guarded = propose_mixture(reg, tokens, runs=runs, **{**common, "rng": np.random.default_rng(seed + 1)})
    best_run = reg.true(runs).min()
    assert reg.true(bare)[0] > 2 * best_run             # the failure: far worse than simply the best run
    assert reg.true(guarded)[0] < 1.5 * best_run        # the remedy: about as good as the best run, or better
    assert np.abs(guarded - p).sum() < 0.3


def test_fit_and_propose_guards_and_fallback():
    # a regressor whose out-of-fold ranking is poor (noise losses) is not used: the best run is the answer
    rng = np.random.default_rng(0)
    tokens = np.array([1e5, 2e5, 3e5, 4e5])
    W = sample_mixtures(tokens, 40, rng, tokens_per_domain=tokens, budget_tokens=1e5)
    y = rng.standard_normal(40)
    w, fit = fit_and_propose(W, y, tokens, 1e5, kind="linear", n_simulations=500, top_k=8, min_spearman=0.99)
    assert fit["fallback"] == "best_run" and np.allclose(w, W[np.argmin(y)]) and w.sum() == pytest.approx(1.0)
    # otherwise the proposal records its trust radius, its distance to the runs and the GP's std
    W, y, _ = _linear_runs(m=60)
    w, fit = fit_and_propose(W, y, np.ones(4), 4.0, kind="gp", n_simulations=2000, top_k=16)
    assert fit["fallback"] is None and fit["trust_radius"] > 0 and fit["predicted_std"] >= 0
    assert fit["nearest_run_distance"] >= 0 and fit["risk"] == 1.0   # the mean of in-region rows may lie outside
    w2, fit2 = fit_and_propose(W, y, np.ones(4), 4.0, kind="gp", n_simulations=2000, top_k=16)
    assert np.array_equal(w, w2)   # seeded
    with pytest.raises(ValueError, match="return_std"):
        MixtureRegressor("linear").fit(W, y).predict(W, return_std=True)
