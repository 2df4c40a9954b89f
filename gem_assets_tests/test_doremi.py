"""DoReMi: the weight update against hand-computed values, stratified batches, per-byte excess losses,
the step size, the procedure's invariants, and that it upweights the domain the proxy lags on."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gem_assets.lib.mixing.doremi import default_step_size, domain_excess, run_doremi, update_domain_weights
from gem_assets.lib.mixing.lm import LMConfig, batch_from_streams
from gem_assets.lib.mixing.streams import texts_to_streams

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


def test_update_raises_the_highest_excess_and_lowers_a_zero_excess():
    # uniform start, excess (0.5, 0, 0.2) nats, eta 2: alpha ∝ (e^1, e^0, e^0.4), no smoothing
    excess = np.array([0.5, 0.0, 0.2])
    log_w, smoothed = update_domain_weights(np.log(np.full(3, 1 / 3)), excess, step_size=2.0, smoothing=0.0)
    want = np.exp([1.0, 0.0, 0.4]) / np.exp([1.0, 0.0, 0.4]).sum()      # (0.5185, 0.1908, 0.2847)
    np.testing.assert_allclose(smoothed, want, rtol=1e-12)
    np.testing.assert_allclose(np.exp(log_w), want, rtol=1e-12)
    assert smoothed[0] > 1 / 3 > smoothed[2] > smoothed[1]             # highest up, zero excess down most


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
    assert w.sum() == pytest.approx(1.0)
    # the direction of the update: from uniform, step t's weights are softmax(eta * the excess summed over
    # steps 1..t), smoothed; a domain whose excess is the highest at a step gains the most weight at it
    assert r.excess.max() > 0 and np.ptp(r.excess, axis=1).min() > 0
    z = r.step_size * np.cumsum(r.excess, axis=0)
    alpha = np.exp(z - z.max(1, keepdims=True))
    alpha /= alpha.sum(1, keepdims=True)
    np.testing.assert_allclose(r.trajectory, 0.99 * alpha + 1e-2 / 3, rtol=1e-9)
    growth = np.diff(np.log((r.trajectory - 1e-2 / 3) / 0.99), axis=0)
    np.testing.assert_array_equal(growth.argmax(1), r.excess[1:].argmax(1))
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


def test_domain_excess_clips_each_byte_then_averages_over_the_domains_bytes():
    l_ref = torch.zeros(3, 2)
    l_proxy = torch.tensor([[1.0, -1.0], [2.0, -0.5], [-3.0, 0.5]])
    dom = torch.tensor([0, 0, 2])
    ex = domain_excess(l_proxy, l_ref, dom, 3)
    # domain 0: bytes (1, -1, 2, -0.5) clip to (1, 0, 2, 0): 0.75 (clipping row means first would give 0.5);
    # domain 1 has no row: 0; domain 2: (0, 0.5): 0.25
    torch.testing.assert_close(ex, torch.tensor([0.75, 0.0, 0.25]))
    l_proxy.requires_grad_(True)
    domain_excess(l_proxy, l_ref, dom, 3).sum().backward()
    torch.testing.assert_close(l_proxy.grad, torch.tensor([[0.25, 0.0], [0.25, 0.0], [0.0, 0.5]]))


@pytest.mark.parametrize("batch_size", [3, 7, 8, 12])
def test_stratified_batches_hold_every_domain_evenly(batch_size):
    streams = _streams()                                          # 3 domains
    for seed in range(20):
        x, y, dom = batch_from_streams(streams, None, batch_size, 5, np.random.default_rng(seed), stratified=True)
        counts = np.bincount(dom, minlength=3)
        assert counts.sum() == batch_size and x.shape == (batch_size, 5)
        assert set(counts.tolist()) <= {batch_size // 3, -(-batch_size // 3)} and counts.min() >= 1
        for k, key in enumerate(sorted(streams)):                 # each row is read from its own domain
            assert set(x[dom == k].ravel().tolist()) <= set(streams[key].tolist())
    # the remainder rows go to every domain in turn, not always the same one
    extra = [np.argmax(np.bincount(batch_from_streams(streams, None, 7, 5, np.random.default_rng(s),
                                                      stratified=True)[2], minlength=3)) for s in range(30)]
    assert set(extra) == {0, 1, 2}


def test_stratified_batches_reject_too_small_batches_and_weights():
    streams = _streams()
    with pytest.raises(ValueError, match="raise batch_size to at least 3"):
        batch_from_streams(streams, None, 2, 5, np.random.default_rng(0), stratified=True)
    with pytest.raises(ValueError, match="weights=None"):
        batch_from_streams(streams, {"cat": 1.0}, 6, 5, np.random.default_rng(0), stratified=True)
    with pytest.raises(ValueError, match="raise batch_size"):
        run_doremi(streams, None, TINY, steps=2, batch_size=2, device="cpu")


def test_default_step_size_scales_with_the_number_of_steps():
    assert default_step_size(400) == pytest.approx(0.05)
    assert default_step_size(100, step_scale=2.0) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="steps"):
        default_step_size(0)
    r = run_doremi(_streams(), None, TINY, steps=9, batch_size=3, device="cpu", eval_max_tokens=64)
    assert r.step_size == pytest.approx(1 / 3)
    r = run_doremi(_streams(), None, TINY, steps=2, batch_size=3, step_size=0.7, device="cpu", eval_max_tokens=64)
    assert r.step_size == 0.7


def test_run_doremi_upweights_the_hard_domain_and_not_the_trivial_one():
    # "hard": sentences of 30 random short words, 3/4 of the bytes, so the reference (natural shares)
    # sees far more of it than the proxy's even batches and stays ahead on it; "trivial": one repeated
    # byte, learnt within a few steps by both models; "cat": one repeated sentence, in between.
    rng = np.random.default_rng(0)
    words = ["".join(chr(c) for c in rng.integers(97, 123, rng.integers(2, 6))) for _ in range(30)]
    texts = ([" ".join(rng.choice(words, 60)) + "." for _ in range(40)] + ["a" * 300] * 6
             + ["the cat sat on the mat. " * 12] * 6)
    streams = texts_to_streams(texts, ["hard"] * 40 + ["trivial"] * 6 + ["cat"] * 6)
    cfg = LMConfig(n_layer=1, n_head=2, d_model=32, context=16)
    r = run_doremi(streams, None, cfg, steps=300, batch_size=12, lr=3e-2, seed=0, device="cpu", eval_max_tokens=2000)
    w = r.weights
    assert max(w, key=w.get) == "hard"
    assert w["trivial"] < 1 / 3
    assert r.trajectory[-1].max() < 0.99          # no collapse onto one domain
    assert r.reference_bpb["trivial"] < 0.5        # the trivial domain is indeed learnt
