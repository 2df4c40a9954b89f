"""Byte-level proxy LM: shapes, causality, batches, determinism, learning, bits per byte."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gem_assets.lib.mixing.lm import (ByteLM, LMConfig, batch_from_streams, evaluate_bpb, lr_at, normalize_weights,
                               train_lm)

TINY = LMConfig(n_layer=1, n_head=2, d_model=16, context=16)


def _stream(text: str, reps: int = 1) -> np.ndarray:
    return np.frombuffer((text * reps).encode(), dtype=np.uint8).copy()


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_layer=0), r"LMConfig\.n_layer must be >= 1, got 0"),
    (dict(n_head=0), r"LMConfig\.n_head must be >= 1, got 0"),
    (dict(d_model=30, n_head=4), r"LMConfig\.d_model \(30\) must be a multiple of n_head \(4\)"),
    (dict(context=1), r"LMConfig\.context must be >= 2, got 1"),
    (dict(dropout=1.0), r"LMConfig\.dropout must be < 1, got 1\.0"),
    (dict(dropout=-0.1), r"LMConfig\.dropout must be >= 0\.0, got -0\.1"),
    (dict(d_model=2.5), r"LMConfig\.d_model must be an integer, got 2\.5"),
])
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LMConfig(**kwargs)


def test_param_count_matches_module():
    cfg = LMConfig(n_layer=3, n_head=4, d_model=32, context=24)
    model = ByteLM(cfg)
    assert sum(p.numel() for p in model.parameters()) == cfg.n_params()


def test_forward_shape_and_causality():
    torch.manual_seed(0)
    model = ByteLM(TINY).eval()
    x = torch.randint(0, 256, (3, 10))
    logits = model(x)
    assert logits.shape == (3, 10, 256)
    x2 = x.clone()
    x2[:, 6:] = (x2[:, 6:] + 1) % 256  # change the future: earlier logits must not move
    torch.testing.assert_close(model(x2)[:, :6], logits[:, :6])
    assert not torch.allclose(model(x2)[:, 6:], logits[:, 6:])
    with pytest.raises(ValueError, match="context"):
        model(torch.zeros((1, TINY.context + 1), dtype=torch.long))


def test_batches_follow_weights_and_targets_shift():
    streams = {"a": _stream("abcdefgh", 10), "b": _stream("0123456789", 10)}
    rng = np.random.default_rng(0)
    x, y, dom = batch_from_streams(streams, {"a": 0.8, "b": 0.2}, 4000, 5, rng)
    assert x.shape == y.shape == (4000, 5) and x.dtype == np.int64 and dom.shape == (4000,)
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
    assert abs((dom == 0).mean() - 0.8) < 0.03
    a_bytes, b_bytes = set(streams["a"].tolist()), set(streams["b"].tolist())
    assert set(x[dom == 0].ravel().tolist()) <= a_bytes and set(x[dom == 1].ravel().tolist()) <= b_bytes
    # weight 0 never drawn; None gives natural token shares
    _, _, dom0 = batch_from_streams(streams, {"a": 1.0}, 500, 5, np.random.default_rng(1))
    assert (dom0 == 0).all()
    np.testing.assert_allclose(normalize_weights(None, streams), [80 / 180, 100 / 180])


def test_short_stream_wraps_cyclically():
    s = _stream("xyz")
    x, y, _ = batch_from_streams({"s": s}, None, 3, 7, np.random.default_rng(0))
    for row_x, row_y in zip(x, y):
        start = "xyz".index(chr(row_x[0]))
        want = [ord("xyz"[(start + i) % 3]) for i in range(8)]
        assert row_x.tolist() == want[:-1] and row_y.tolist() == want[1:]


@pytest.mark.parametrize("streams,weights,match", [
    ({}, None, "non-empty"),
    ({"a": np.zeros(10, dtype=np.int32)}, None, "uint8"),
    ({"a": np.zeros(1, dtype=np.uint8)}, None, ">= 2 bytes"),
    ({"a": np.zeros(10, dtype=np.uint8)}, {"b": 1.0}, "no stream"),
    ({"a": np.zeros(10, dtype=np.uint8)}, {"a": -1.0}, ">= 0"),
    ({"a": np.zeros(10, dtype=np.uint8)}, {"a": 0.0}, "sum to 0"),
])
def test_bad_streams_and_weights(streams, weights, match):
    with pytest.raises(ValueError, match=match):
        batch_from_streams(streams, weights, 2, 4, np.random.default_rng(0))


def test_bad_training_arguments():
    s = {"a": _stream("hello world ", 20)}
    for kw, match in ((dict(steps=0), "steps must be >= 1, got 0"), (dict(steps=2, batch_size=0), "batch_size must be >= 1"),
                      (dict(steps=2, lr=0.0), r"lr must be > 0\.0, got 0\.0"), (dict(steps=2, seed=-1), "seed must be >= 0")):
        with pytest.raises(ValueError, match=match):
            train_lm(s, None, TINY, device="cpu", **kw)
    with pytest.raises(ValueError, match="LMConfig"):
        train_lm(s, None, {"n_layer": 1}, 2, device="cpu")


def test_lr_schedule():
    assert lr_at(0, 100, 1.0) == pytest.approx(0.2)       # warm-up 5 steps
    assert lr_at(4, 100, 1.0) == pytest.approx(1.0)
    assert lr_at(99, 100, 1.0) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 94 / 95)))
    assert all(0.1 <= lr_at(s, 100, 1.0) <= 1.0 for s in range(100))


def test_training_is_deterministic_under_a_seed_and_learns():
    streams = {"a": _stream("the cat sat on the mat. ", 40), "b": _stream("0123456789", 60)}
    r1 = train_lm(streams, None, TINY, steps=60, batch_size=8, lr=1e-2, seed=3, device="cpu")
    r2 = train_lm(streams, None, TINY, steps=60, batch_size=8, lr=1e-2, seed=3, device="cpu")
    r3 = train_lm(streams, None, TINY, steps=60, batch_size=8, lr=1e-2, seed=4, device="cpu")
    for p1, p2 in zip(r1.model.parameters(), r2.model.parameters()):
        torch.testing.assert_close(p1, p2, rtol=0, atol=0)
    assert [h["loss"] for h in r1.history] == [h["loss"] for h in r2.history]
    assert [h["loss"] for h in r1.history] != [h["loss"] for h in r3.history]
    assert r1.tokens == 60 * 8 * 16 and r1.tokens_per_second > 0
    assert r1.history[-1]["step"] == 60 and r1.history[-1]["tokens"] == r1.tokens
    assert set(r1.history[-1]["domain_loss"]) <= {"a", "b"}
    # uniform over 256 bytes is 8 bits per byte; these repetitive streams are learnt well below that
    bpb = evaluate_bpb(r1.model, streams, device="cpu")
    assert set(bpb) == {"a", "b"} and all(v < 5.0 for v in bpb.values())
    untrained = ByteLM(TINY)
    assert evaluate_bpb(untrained, streams["a"], device="cpu") == pytest.approx(8.0, abs=0.3)


def test_evaluate_bpb_equals_manual_cross_entropy_on_every_byte():
    torch.manual_seed(0)
    model = ByteLM(LMConfig(n_layer=1, n_head=1, d_model=8, context=4)).eval()
    s = _stream("abcdefghijklmnopqrstuvwxyz")  # 26 bytes: 7 windows predict 6 x 4 + 1 bytes
    windows = [(0, 4), (4, 4), (8, 4), (12, 4), (16, 4), (20, 4), (24, 1)]
    nats = []                                  # each window's summed cross-entropy
    with torch.no_grad():
        for start, length in windows:
            seg = torch.from_numpy(s[start:start + length + 1].astype(np.int64))[None]
            logp = torch.log_softmax(model(seg[:, :-1]), -1)
            nats.append(-float(logp.gather(-1, seg[:, 1:, None]).sum()))
    assert evaluate_bpb(model, s, batch_size=1, device="cpu") == pytest.approx(sum(nats) / 25 / math.log(2), rel=1e-6)
    # max_tokens 12 keeps 12 // 4 = 3 evenly spaced windows of the 7: the first, the middle and the last
    capped = evaluate_bpb(model, s, max_tokens=12, device="cpu")
    assert capped == pytest.approx((nats[0] + nats[3] + nats[6]) / 9 / math.log(2), rel=1e-6)
    with pytest.raises(ValueError, match="ByteLM"):
        evaluate_bpb("model", s)


def test_cpu_threads_and_determinism_flags_are_restored():
    before = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())
    s = {"a": _stream("hello world ", 20)}
    r = train_lm(s, None, TINY, steps=2, batch_size=2, device="cpu", cpu_threads=1)
    evaluate_bpb(r.model, s, device="cpu", cpu_threads=1)
    assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()) == before
    with pytest.raises(ValueError, match="cpu_threads"):
        train_lm(s, None, TINY, steps=2, device="cpu", cpu_threads=0)
