"""DoReMi: the weight update against hand-computed values, and the procedure's invariants."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gem_assets.lib.doremi import run_doremi, update_domain_weights
from gem_assets.lib.lm import LMConfig
from gem_assets.lib.mixture import texts_to_streams

TINY = LMConfig(n_layer=1, n_head=2, d_model=16, context=16)


def test_update_two_domains_by_hand():
    # alpha = (1/2, 1/2), excess (ln 3, 0), eta 1: alpha ∝ (3/2, 1/2) = (3/4, 1/4)
    log_w, smoothed = update_domain_weights(np.log([0.5, 0.5]), np.array([math.log(3.0), 0.0]), 1.0, 0.1)
    np.testing.assert_allclose(np.exp(log_w), [0.75, 0.25], rtol=1e-12)
    np.testing.assert_allclose(smoothed, [0.9 * 0.75 + 0.05, 0.9 * 0.25 + 0.05], rtol=1e-12)


def test_update_three_domains_step_size_and_unnormalized_input():
    # log weights (0, 0, 0) are 1/3 each once normalized; eta 2, excess (0, ln2/2, ln4/2): ∝ (1, 2, 4)
    log_w, smoothed = update_domain_weights(np.zeros(3), np.array([0.0, math.log(2) / 2, math.log(4) / 2]),
                                            step_size=2.0, smoothing=0.0)
    np.testing.assert_allclose(np.exp(log_w), [1 / 7, 2 / 7, 4 / 7], rtol=1e-12)
    np.testing.assert_allclose(smoothed, [1 / 7, 2 / 7, 4 / 7], rtol=1e-12)
    assert np.log(np.exp(log_w).sum()) == pytest.approx(0.0, abs=1e-12)


def test_update_is_stable_for_huge_excess_and_keeps_the_floor():
    log_w, smoothed = update_domain_weights(np.zeros(4), np.array([1e4, 0.0, 0.0, 0.0]), 1.0, 1e-3)
    assert np.all(np.isfinite(log_w)) and smoothed.sum() == pytest.approx(1.0)
    assert smoothed.min() >= 1e-3 / 4 - 1e-15
    np.testing.assert_allclose(smoothed[1:], 1e-3 / 4, rtol=1e-9)


@pytest.mark.parametrize("lw,ex,kw,match", [
    (np.zeros(2), np.zeros(3), {}, "shape"),
    (np.zeros(0), np.zeros(0), {}, "non-empty"),
    (np.array([0.0, np.nan]), np.zeros(2), {}, "NaN"),
    (np.zeros(2), np.array([-1.0, 0.0]), {}, ">= 0"),
    (np.zeros(2), np.zeros(2), {"smoothing": 1.5}, r"\[0, 1\]"),
    (np.zeros(2), np.zeros(2), {"step_size": -1.0}, "step_size"),
])
def test_update_rejects_bad_input(lw, ex, kw, match):
    with pytest.raises(ValueError, match=match):
        update_domain_weights(lw, ex, **kw)


def _streams():
    rng = np.random.default_rng(0)
    texts = (["the cat sat on the mat. " * 4] * 12 + ["0123456789 " * 8] * 6
             + ["".join(chr(c) for c in rng.integers(97, 123, 80)) for _ in range(12)])
    keys = ["cat"] * 12 + ["digits"] * 6 + ["noise"] * 12
    return texts_to_streams(texts, keys)


def test_run_doremi_invariants_and_determinism():
    streams = _streams()
    r = run_doremi(streams, None, TINY, steps=12, batch_size=6, lr=1e-2, seed=1, smoothing=1e-2, device="cpu")
    assert r.domains == ["cat", "digits", "noise"]
    assert r.trajectory.shape == (12, 3) and r.excess.shape == (12, 3)
    np.testing.assert_allclose(r.trajectory.sum(1), 1.0)
    assert r.trajectory.min() >= 1e-2 / 3 - 1e-12
    w = np.array([r.weights[k] for k in r.domains])
    np.testing.assert_allclose(w, r.trajectory.mean(0) / r.trajectory.mean(0).sum())
    assert w.sum() == pytest.approx(1.0) and (r.excess >= 0).all()
    sizes = np.array([streams[k].size for k in r.domains], dtype=float)
    np.testing.assert_allclose([r.reference_weights[k] for k in r.domains], sizes / sizes.sum())
    assert set(r.reference_bpb) == set(r.proxy_bpb) == set(r.domains)
    again = run_doremi(streams, None, TINY, steps=12, batch_size=6, lr=1e-2, seed=1, smoothing=1e-2, device="cpu")
    np.testing.assert_array_equal(again.trajectory, r.trajectory)


def test_run_doremi_zero_step_size_keeps_uniform_weights():
    r = run_doremi(_streams(), {"cat": 1.0, "digits": 1.0, "noise": 1.0}, TINY, steps=4, batch_size=4,
                   step_size=0.0, device="cpu")
    np.testing.assert_allclose(r.trajectory, 1 / 3, rtol=1e-12)
    assert r.reference_weights == pytest.approx({"cat": 1 / 3, "digits": 1 / 3, "noise": 1 / 3})


def test_run_doremi_rejects_bad_arguments():
    with pytest.raises(ValueError, match="smoothing"):
        run_doremi(_streams(), None, TINY, steps=2, smoothing=2.0, device="cpu")
    with pytest.raises(ValueError, match="no stream"):
        run_doremi(_streams(), {"other": 1.0}, TINY, steps=2, device="cpu")
