"""Every torch path of the library on CUDA gives the CPU's answer: GEM (resident and streamed), the
student, the proxy LM, DoReMi and the teacher embedder.

Skipped without a CUDA device (CI has none). This module imports only the library's own needs (numpy,
torch, sentence-transformers), not conftest, polars or Dagster, so that a bare GPU machine runs it with

    python -m pytest --noconftest -p no:cacheprovider gem_assets_tests/test_cuda.py

(``benchmarks/gpu_check.py`` times the same paths at a larger size).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gem_assets.lib.mixing.doremi import run_doremi
from gem_assets.lib.teacher.embed import SentenceEncoder
from gem_assets.lib.teacher.gem import GEM
from gem_assets.lib.mixing.lm import LMConfig, evaluate_bpb, train_lm
from gem_assets.lib.student.classifier import StudentClassifier
from gem_assets.lib.teacher.synthetic import make_cone_clusters

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

TOPICS = {
    "food": "bread butter oven recipe flour sugar salt soup garlic onion pepper kitchen",
    "money": "market stock bank price profit shares bond inflation rate fund budget trade",
    "sport": "match goal team league coach score season player win cup final referee",
    "tech": "software chip data cloud code network server device battery app robot model",
}


def _texts(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    """n short documents, each drawn from one of four topic vocabularies (the label)."""
    rng = np.random.default_rng(seed)
    vocab = [v.split() for v in TOPICS.values()]
    labels = rng.integers(0, len(vocab), n)
    return [" ".join(rng.choice(vocab[y], 20)) for y in labels], labels


@pytest.fixture(scope="module")
def cone():
    # Well-conditioned on purpose: on CPU, noise of 1e-7 added to X leaves every label of these fits
    # (balance 0 and 3, random_state 3) unchanged, and the streamed fit equals the resident one. With
    # size exponent 1.5 instead, the balance-3 fit is chaotic: noise of 1e-13 changed 31% of the
    # labels on CPU alone, so CPU and CUDA cannot be compared there (an H200 run, 2026-11-27, failed so).
    X, y, _ = make_cone_clusters(3000, 32, 6, exponent=1.0, kappa=200.0, cone_spread=0.8, dtype=np.float64,
                                 random_state=5)
    return X, y


@pytest.mark.parametrize("chunk_size", [None, 257])  # resident; streamed in ragged chunks
@pytest.mark.parametrize("balance", [0.0, 3.0])
def test_gem_on_cuda_matches_cpu(cone, chunk_size, balance):
    X, _ = cone
    kw = dict(balance=balance, random_state=3, chunk_size=chunk_size)
    cpu = GEM(6, device="cpu", **kw).fit(X)
    gpu = GEM(6, device="cuda", **kw).fit(X)
    assert gpu.streamed_ == (chunk_size is not None)
    assert np.mean(cpu.labels_ == gpu.labels_) > 0.999           # float64 both; summation order differs
    np.testing.assert_allclose(gpu.objective_, cpu.objective_, rtol=1e-6)
    np.testing.assert_allclose(np.exp(gpu.log_weights_), np.exp(cpu.log_weights_), atol=1e-4)
    curve = np.array([rec["objective"] for rec in gpu.history_])
    assert np.all(np.diff(curve) >= -1e-9 * abs(gpu.objective_))   # the MM ascent holds on the GPU too
    assert GEM(6, device="auto", random_state=3).fit(X[:500]).labels_.shape == (500,)


def test_student_on_cuda_matches_cpu():
    texts, labels = _texts(400, seed=7)
    kw = dict(dim=16, buckets=1 << 14, epochs=5, random_state=0)
    cpu = StudentClassifier(4, device="cpu", **kw).fit(texts, labels)
    gpu = StudentClassifier(4, device="cuda", **kw).fit(texts, labels)
    assert gpu._embedding.weight.device.type == "cuda"
    assert StudentClassifier(4, device="auto", **kw).fit(texts[:40], labels[:40])._embedding.weight.device.type == "cuda"
    agree = float(np.mean(cpu.predict(texts) == gpu.predict(texts)))
    assert agree >= 0.95  # same data and seed; kernels differ in summation order only
    assert float(np.mean(gpu.predict(texts) == labels)) >= 0.9
    np.testing.assert_allclose(gpu.predict_proba(texts).sum(axis=1), 1.0, atol=1e-5)


def _streams(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"d{k}": rng.integers(97 + 5 * k, 102 + 5 * k, 20_000).astype(np.uint8) for k in range(3)}


def test_proxy_lm_on_cuda_matches_cpu():
    streams = _streams()
    cfg = LMConfig(n_layer=1, n_head=2, d_model=32, context=32)
    kw = dict(steps=40, batch_size=8, lr=1e-2, seed=0)
    cpu = train_lm(streams, None, cfg, device="cpu", **kw)
    gpu = train_lm(streams, None, cfg, device="cuda", **kw)
    assert next(gpu.model.parameters()).device.type == "cuda"
    b_cpu = evaluate_bpb(cpu.model, streams, max_tokens=4_000, device="cpu")
    b_gpu = evaluate_bpb(gpu.model, streams, max_tokens=4_000, device="cuda")
    # five letters per domain: an untrained model is at 8 bits per byte, a trained one near log2(5) = 2.3
    assert max(b_gpu.values()) < 4.0
    for name in streams:
        assert b_gpu[name] == pytest.approx(b_cpu[name], abs=0.05), (name, b_cpu, b_gpu)
    auto = train_lm(streams, None, cfg, steps=2, batch_size=2, seed=0, device="auto")
    assert next(auto.model.parameters()).device.type == "cuda"


def test_doremi_on_cuda_matches_cpu():
    streams = _streams(1)
    cfg = LMConfig(n_layer=1, n_head=2, d_model=16, context=16)
    kw = dict(steps=12, batch_size=6, lr=1e-2, seed=1, smoothing=1e-2)
    cpu = run_doremi(streams, None, cfg, device="cpu", **kw)
    gpu = run_doremi(streams, None, cfg, device="cuda", **kw)
    w_cpu, w_gpu = (np.array([r.weights[k] for k in streams]) for r in (cpu, gpu))
    assert w_gpu.sum() == pytest.approx(1.0) and np.all(w_gpu > 0)
    np.testing.assert_allclose(w_gpu, w_cpu, atol=0.02)


def test_embedder_on_cuda_matches_cpu():
    texts, _ = _texts(16, seed=8)
    cpu = SentenceEncoder(device="cpu", max_seq_length=64).encode(texts, progress=False)
    gpu = SentenceEncoder(device="cuda", max_seq_length=64).encode(texts, progress=False)
    assert SentenceEncoder(device="auto").device == "cuda"
    np.testing.assert_allclose(np.linalg.norm(gpu, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.einsum("ij,ij->i", cpu, gpu), 1.0, atol=1e-3)  # same directions
