"""Many proxy LMs at once: the batched forward, training and evaluation against one model at a time."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gem_assets.lib.mixing.lm import (ByteLM, LMConfig, _Rows, batched_logits, evaluate_bpb, evaluate_bpb_batch,
                               stack_models, train_lm, train_lm_batch)

TINY = LMConfig(n_layer=2, n_head=2, d_model=16, context=16)


def _stream(text: str, reps: int = 1) -> np.ndarray:
    return np.frombuffer((text * reps).encode(), dtype=np.uint8).copy()


def _streams() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"a": _stream("the cat sat on the mat. ", 40), "b": _stream("0123456789", 60),
            "c": rng.integers(0, 256, 3000).astype(np.uint8)}


MIXTURES = np.array([[1.0, 0.0, 0.0], [0.2, 0.3, 0.5], [0.0, 1.0, 0.0]])


def test_batched_logits_equal_each_models_forward():
    torch.manual_seed(0)
    models = [ByteLM(TINY).eval() for _ in range(3)]
    params, cfg = stack_models(models)
    assert cfg == TINY and params["tok.weight"].shape == (3, 256, 16)
    idx = torch.randint(0, 256, (3, 4, 11))
    with torch.no_grad():
        got = batched_logits(params, cfg, idx)
        for m, model in enumerate(models):
            torch.testing.assert_close(got[m], model(idx[m]), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="context"):
        batched_logits(params, cfg, torch.zeros((3, 1, TINY.context + 1), dtype=torch.long))


def test_batch_matches_training_the_models_one_at_a_time():
    streams = _streams()
    seeds = [3, 4, 5]
    kw = dict(steps=40, batch_size=6, lr=1e-2, device="cpu", log_every=1)
    res = train_lm_batch(streams, MIXTURES, TINY, seeds=seeds, target_stream=streams["a"], **kw)
    assert res.n_models == 3 and res.domains == ["a", "b", "c"] and res.seeds == seeds
    assert res.tokens == 3 * 40 * 6 * 16 and res.tokens_per_second > 0
    batch_curves = np.array([h["loss"] for h in res.history])           # (steps, M)
    assert batch_curves.shape == (40, 3)
    for m in range(3):
        one = train_lm(streams, dict(zip(streams, MIXTURES[m])), TINY, seed=seeds[m], **kw)
        curve = np.array([h["loss"] for h in one.history])
        # the same initial weights and batches: the curves differ by float rounding only
        np.testing.assert_allclose(batch_curves[:, m], curve, rtol=0, atol=1e-4)
        assert res.target_bpb[m] == pytest.approx(evaluate_bpb(one.model, streams["a"], device="cpu"), abs=1e-4)
    # each model read its own mixture: the model trained on "a" alone is the best on "a", the worst on "b"
    on_b = evaluate_bpb_batch(res, streams["b"], device="cpu")
    assert np.argmin(res.target_bpb) == 0 and np.argmax(on_b) == 0 and np.argmin(on_b) == 2
    assert batch_curves[-1].max() < batch_curves[0].min()               # all of them learn


def test_batch_is_reproducible_and_the_seed_matters():
    streams = _streams()
    kw = dict(steps=8, batch_size=4, lr=1e-2, device="cpu")
    for sampler in ("exact", "fast"):
        r1 = train_lm_batch(streams, MIXTURES, TINY, seed=1, sampler=sampler, **kw)
        r2 = train_lm_batch(streams, MIXTURES, TINY, seed=1, sampler=sampler, **kw)
        r3 = train_lm_batch(streams, MIXTURES, TINY, seed=2, sampler=sampler, **kw)
        for name, p in r1.params.items():
            torch.testing.assert_close(p, r2.params[name], rtol=0, atol=0)
        assert r1.history[-1]["loss"] == r2.history[-1]["loss"] != r3.history[-1]["loss"]
        assert r1.seeds == [1, 1, 1]
    # model m as an ordinary ByteLM: the same function as slice m of the stack
    model = r1.model(1)
    x = torch.randint(0, 256, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(model(x), batched_logits(r1.params, TINY, x.expand(3, -1, -1))[1],
                                   rtol=1e-5, atol=1e-5)


def test_fast_sampler_gives_each_model_rows_of_its_own_mixture_only():
    streams = _streams()
    p = np.array([[0.0, 0.0, 1.0], [0.7, 0.3, 0.0]])
    rows = _Rows(streams, p, [0, 0], 20_000, 8, "fast", torch.device("cpu"))
    dom, start = rows.draw()
    assert dom.shape == start.shape == (2, 20_000)
    assert (dom[0] == 2).all() and set(np.unique(dom[1]).tolist()) == {0, 1}
    assert abs((dom[1] == 0).mean() - 0.7) < 0.02
    sizes = np.array([s.size for s in streams.values()])
    assert (start >= 0).all() and (start < sizes[dom]).all()
    x, y = rows.gather(dom[:, :50], start[:, :50])
    np.testing.assert_array_equal(x[..., 1:].numpy(), y[..., :-1].numpy())
    a, b = set(streams["a"].tolist()), set(streams["b"].tolist())
    assert set(x[1][torch.from_numpy(dom[1, :50] == 0)].ravel().tolist()) <= a
    assert set(x[1][torch.from_numpy(dom[1, :50] == 1)].ravel().tolist()) <= b


def test_fast_sampler_models_do_not_depend_on_the_others():
    streams = _streams()
    kw = dict(steps=10, batch_size=4, lr=1e-2, device="cpu", sampler="fast", log_every=1)
    together = train_lm_batch(streams, MIXTURES, TINY, seeds=[7, 8, 9], **kw)
    alone = train_lm_batch(streams, MIXTURES[1:2], TINY, seeds=[8], **kw)
    np.testing.assert_allclose([h["loss"][1] for h in together.history], [h["loss"][0] for h in alone.history],
                               rtol=0, atol=1e-5)


def test_evaluate_bpb_batch_equals_evaluate_bpb_per_model():
    torch.manual_seed(0)
    cfg = LMConfig(n_layer=1, n_head=1, d_model=8, context=4)
    models = [ByteLM(cfg) for _ in range(3)]
    s = _stream("abcdefghij")                                          # windows predict 4 + 4 + 1 bytes
    got = evaluate_bpb_batch(models, s, batch_size=1, device="cpu")
    want = [evaluate_bpb(m, s, batch_size=1, device="cpu") for m in models]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    long = _streams()
    got = evaluate_bpb_batch(models, long, max_tokens=200, batch_size=5, device="cpu")
    assert set(got) == set(long)
    for name, stream in long.items():
        np.testing.assert_allclose(got[name], [evaluate_bpb(m, stream, max_tokens=200, device="cpu") for m in models],
                                   rtol=1e-6)


@pytest.mark.parametrize("weights,kw,match", [
    (np.ones((2, 2)), {}, r"shape \(M, K\)"),
    (np.ones(3), {}, r"shape \(M, K\)"),
    ({"a": 1.0}, {}, "list of M"),
    (np.array([[1.0, -1.0, 0.0]]), {}, ">= 0"),
    (np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]), {}, r"rows \[1\] sum to 0"),
    ([{"zz": 1.0}], {}, "no stream"),
    (MIXTURES, {"seeds": [1, 2]}, "one seed per mixture"),
    (MIXTURES, {"sampler": "slow"}, "sampler"),
    (MIXTURES, {"steps": 0}, "steps"),
])
def test_train_lm_batch_rejects_bad_arguments(weights, kw, match):
    args = dict(steps=2, batch_size=2, device="cpu")
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        train_lm_batch(_streams(), weights, TINY, **args)


def test_dropout_is_refused_and_models_must_share_a_config():
    with pytest.raises(ValueError, match="dropout"):
        train_lm_batch(_streams(), MIXTURES, LMConfig(n_layer=1, n_head=2, d_model=16, context=16, dropout=0.1),
                       2, device="cpu")
    with pytest.raises(ValueError, match="same LMConfig"):
        stack_models([ByteLM(TINY), ByteLM(LMConfig(n_layer=1, n_head=2, d_model=16, context=16))])
    with pytest.raises(ValueError, match="ByteLM"):
        evaluate_bpb_batch([], _stream("hello"), device="cpu")


def test_weight_mappings_and_flags_restored():
    before = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())
    streams = _streams()
    res = train_lm_batch(streams, [{"a": 2.0, "b": 2.0}, None], TINY, 2, batch_size=2, device="cpu")
    sizes = np.array([s.size for s in streams.values()], dtype=float)
    np.testing.assert_allclose(res.weights, [[0.5, 0.5, 0.0], sizes / sizes.sum()])
    assert res.target_bpb is None and len(res.models()) == 2
    assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()) == before
