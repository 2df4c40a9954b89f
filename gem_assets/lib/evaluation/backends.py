"""What the mixture evaluation trains: document samples per seed, target models, mixer weights.

Target models
-------------
Every target model trains on ``budget_tokens`` bytes of *documents* drawn from the training pool
per the mixture (:func:`sample_documents`): each domain's byte target ``w_k * B`` capped at
``max_epochs`` passes over its documents (``lib.mixing.curated.allocate_tokens``), filled with whole
passes, then with documents in the order of a per-seed priority. The priority of a document is
the same for every bucketization and mixer of one seed (common random numbers): two mixtures of
one seed that want the same documents get the same ones, so paired differences between
bucketizations carry the mixture's effect, not the draw's. Each seed redraws every priority.

- :class:`NGramTargets` (the CPU backend): one :class:`~gem_assets.lib.mixing.ngram.CountIndex` over the
  pool's documents; a model is a weighted count (document multiplicities), scored on looked-up
  target streams. Exact: n-grams never cross a document, so the order of the sample is irrelevant.
- :class:`TransformerTargets` (the GPU backend): the sampled documents, shuffled by the seed, as
  one byte stream; a ``lib/mixing/lm.py`` transformer trained on it for ``steps`` steps.

Mixer weights
-------------
:func:`mixer_weights` gives ``{target: {domain: weight}}`` for one bucketization: natural byte
shares and uniform (the same for every target); DoReMi (target-free: the same for every target)
by rounds on n-gram proxies or online on a transformer proxy; RegMix per target, minimizing the
loss on that target's *selection* documents (never the target documents): on n-gram proxies one
set of runs is scored on every selection stream, so the targets share the runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from gem_assets.lib.util.checks import check_float, check_int

__all__ = ["sample_documents", "NGramTargets", "TransformerTargets", "MixerSettings", "mixer_weights",
           "document_bytes"]


def document_bytes(texts: Sequence[str]) -> list[bytes]:
    """UTF-8 bytes of each text, NUL bytes replaced by spaces (byte 0 separates documents)."""
    from gem_assets.lib.mixing.streams import _encode

    return _encode(texts)


def sample_documents(doc_tokens: np.ndarray, labels: np.ndarray, weights, budget_tokens: float,
                     max_epochs: float, priority: np.ndarray) -> np.ndarray:
    """How many times each document enters a sample of ``budget_tokens`` tokens drawn per ``weights``.

    Parameters
    ----------
    doc_tokens : numpy.ndarray of int, shape (N,)
        Tokens of each document (bytes + 1 separator), > 0.
    labels : numpy.ndarray of int, shape (N,)
        Domain of each document in [0, K).
    weights : array-like, shape (K,)
        Mixture weights (normalized here).
    budget_tokens : float
    max_epochs : float
        No domain is read more than this many times (the rest of the budget goes to the others).
    priority : numpy.ndarray of float, shape (N,)
        Order in which a domain's documents fill its partial pass (lowest first).

    Returns
    -------
    numpy.ndarray of int64, shape (N,)
    """
    from gem_assets.lib.mixing.curated import allocate_tokens

    tok = np.asarray(doc_tokens, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    priority = np.asarray(priority, dtype=np.float64)
    if tok.ndim != 1 or labels.shape != tok.shape or priority.shape != tok.shape:
        raise ValueError(f"doc_tokens {tok.shape}, labels {labels.shape} and priority {priority.shape} must be "
                         "1-D of one length")
    if tok.size and tok.min() <= 0:
        raise ValueError("doc_tokens must be positive (every document has at least its separator)")
    w = np.asarray(weights, dtype=np.float64)
    k = w.size
    if labels.size and (labels.min() < 0 or labels.max() >= k):
        raise ValueError(f"labels must lie in [0, {k}) (one weight per domain)")
    avail = np.bincount(labels, weights=tok, minlength=k)
    target = allocate_tokens(w, avail, budget_tokens, max_epochs)
    mult = np.zeros(tok.size, dtype=np.int64)
    for d in np.flatnonzero(target > 0):
        docs = np.flatnonzero(labels == d)
        full = int(np.floor(target[d] / avail[d] + 1e-12))
        rest = target[d] - full * avail[d]
        order = docs[np.argsort(priority[docs], kind="stable")]
        take = order[: int(np.searchsorted(np.cumsum(tok[order]), rest, side="right"))]
        mult[docs] += full
        mult[take] += 1
    return mult


class NGramTargets:
    """Target models as byte n-grams over the training pool (see the module docstring).

    Parameters
    ----------
    pool_texts : sequence of str
        The documents target models are drawn from.
    targets : mapping of str to sequence of str
        ``{target name: documents}`` each model is scored on.
    order : int
    max_grams : int, optional
    """

    kind = "ngram"

    def __init__(self, pool_texts: Sequence[str], targets: Mapping[str, Sequence[str]], order: int = 5,
                 max_grams: int | None = None):
        from gem_assets.lib.mixing.ngram import CountIndex

        enc = document_bytes(pool_texts)
        self.doc_tokens = np.fromiter((len(b) + 1 for b in enc), dtype=np.int64, count=len(enc))
        pool = np.frombuffer(b"\x00".join(enc) + b"\x00", dtype=np.uint8)
        self.index = CountIndex({"pool": pool}, order=order, max_grams=max_grams)
        self._start = self.index.positions("pool").start
        self.lookups = {name: self.index.lookup(_stream(texts)) for name, texts in targets.items()}
        self.target_bytes = {name: lk.size for name, lk in self.lookups.items()}

    def fit(self, multiplicity: np.ndarray, seed: int):
        m = np.zeros(self.index._positions)
        per_byte = np.repeat(np.asarray(multiplicity, dtype=np.float64), self.doc_tokens)   # a document's bytes + its separator
        m[self._start:self._start + per_byte.size] = per_byte
        return self.index.fit_positions(m)

    def bpb(self, model, target: str) -> float:
        return self.lookups[target].bpb(model)


class TransformerTargets:
    """Target models as byte transformers (``lib/mixing/lm.py``) trained on each sample's documents.

    Parameters
    ----------
    pool_texts, targets :
        As :class:`NGramTargets`.
    config : lib.mixing.lm.LMConfig
    steps, batch_size : int
        Each model trains ``steps`` steps of ``batch_size`` rows of ``config.context`` bytes.
    lr : float
    device : str
    max_eval_tokens : int, optional
        Bytes of each target stream scored.
    """

    kind = "transformer"

    def __init__(self, pool_texts: Sequence[str], targets: Mapping[str, Sequence[str]], config, steps: int,
                 batch_size: int, lr: float = 3e-3, device: str = "auto", max_eval_tokens: int | None = None):
        self.enc = document_bytes(pool_texts)
        self.doc_tokens = np.fromiter((len(b) + 1 for b in self.enc), dtype=np.int64, count=len(self.enc))
        self.targets = {name: _stream(texts) for name, texts in targets.items()}
        self.target_bytes = {name: int(s.size) for name, s in self.targets.items()}
        self.config, self.steps, self.batch_size, self.lr = config, steps, batch_size, lr
        self.device, self.max_eval_tokens = device, max_eval_tokens

    def fit(self, multiplicity: np.ndarray, seed: int):
        from gem_assets.lib.mixing.lm import train_lm

        idx = np.repeat(np.arange(len(self.enc)), np.asarray(multiplicity, dtype=np.int64))
        idx = idx[np.random.default_rng(seed).permutation(idx.size)]
        stream = np.frombuffer(b"\x00".join(self.enc[i] for i in idx) + b"\x00", dtype=np.uint8)
        return train_lm({"sample": stream}, None, self.config, self.steps, batch_size=self.batch_size, lr=self.lr,
                        seed=seed, device=self.device).model

    def bpb(self, model, target: str) -> float:
        from gem_assets.lib.mixing.lm import evaluate_bpb

        return float(evaluate_bpb(model, self.targets[target], max_tokens=self.max_eval_tokens, device=self.device))


def _stream(texts: Sequence[str]) -> np.ndarray:
    enc = document_bytes(texts)
    return np.frombuffer(b"\x00".join(enc) + b"\x00", dtype=np.uint8).copy()


@dataclass(frozen=True)
class MixerSettings:
    """How the DoReMi and RegMix weights of the evaluation are computed.

    Parameters
    ----------
    proxy : {"ngram", "transformer"}
    proxy_tokens : int
        Bytes each n-gram proxy trains on.
    regmix_runs, doremi_rounds : int
        RegMix's proxy runs; DoReMi's rounds (n-gram proxies).
    budget_tokens : int
        Bytes the target models train on: the epoch cap of RegMix's proposal.
    order : int
        n-gram order of the proxies.
    max_epochs : float
    seed : int
    n_simulations, top_k : int
        RegMix's proposal: simulated mixtures scored, and the best ones averaged.
    transformer : dict, optional
        For ``proxy="transformer"``: ``config`` (LMConfig), ``doremi_steps``, ``regmix_steps``,
        ``batch_size``, ``lr``, ``device``, ``eval_max_tokens``.
    """

    proxy: str = "ngram"
    proxy_tokens: int = 500_000
    regmix_runs: int = 128
    doremi_rounds: int = 24
    budget_tokens: int = 1_000_000
    order: int = 5
    max_epochs: float = 4.0
    seed: int = 0
    n_simulations: int = 100_000
    top_k: int = 128
    transformer: Any = None

    def __post_init__(self):
        if self.proxy not in ("ngram", "transformer"):
            raise ValueError(f"proxy must be 'ngram' or 'transformer', got {self.proxy!r}")
        check_int(self.proxy_tokens, "proxy_tokens", low=1)
        check_int(self.regmix_runs, "regmix_runs", low=2)
        check_int(self.doremi_rounds, "doremi_rounds", low=1)
        check_int(self.budget_tokens, "budget_tokens", low=1)
        check_float(self.max_epochs, "max_epochs", low=0.0, strict=True)
        if self.proxy == "transformer" and not self.transformer:
            raise ValueError("proxy='transformer' needs the transformer settings (config, steps, batch size)")


def mixer_weights(mixer: str, train: Mapping[str, np.ndarray], valid: Mapping[str, np.ndarray],
                  select: Mapping[str, np.ndarray], settings: MixerSettings, log=None) -> dict[str, dict[str, float]]:
    """``{target: {domain: weight}}`` of one mixer on one bucketization.

    Parameters
    ----------
    mixer : {"natural", "uniform", "doremi", "regmix"}
    train, valid : mapping of str to numpy.ndarray
        The bucketization's domain streams (training documents; held-out documents per domain,
        DoReMi's excess losses).
    select : mapping of str to numpy.ndarray
        ``{target: selection stream}``: RegMix minimizes each target's selection loss.
    settings : MixerSettings
    log : callable, optional
    """
    say = log or (lambda _m: None)
    names = list(select)
    keys = list(train)
    if mixer in ("natural", "uniform") or len(keys) < 2:
        if mixer == "uniform":
            w = {k: 1.0 / len(keys) for k in keys}
        else:
            total = float(sum(train[k].size for k in keys))
            w = {k: train[k].size / total for k in keys}
        return {t: dict(w) for t in names}
    t0 = time.perf_counter()
    if mixer == "doremi":
        if settings.proxy == "ngram":
            from gem_assets.lib.mixing.count_proxy import doremi_rounds

            v = {k: valid[k] if k in valid and valid[k].size else train[k] for k in keys}
            w = doremi_rounds(train, v, settings.proxy_tokens, rounds=settings.doremi_rounds, order=settings.order,
                              seed=settings.seed).weights
        else:
            from gem_assets.lib.mixing.doremi import run_doremi

            tr = settings.transformer
            w = run_doremi(train, None, tr["config"], tr["doremi_steps"], batch_size=tr["batch_size"], lr=tr["lr"],
                           seed=settings.seed, device=tr["device"], eval_max_tokens=4096).weights
        say(f"doremi weights in {time.perf_counter() - t0:.1f} s")
        return {t: dict(w) for t in names}
    if mixer != "regmix":
        raise ValueError(f"unknown mixer {mixer!r}")
    from gem_assets.lib.mixing.regmix import fit_and_propose

    out = {}
    if settings.proxy == "ngram":
        from gem_assets.lib.mixing.count_proxy import regmix_runs

        runs = regmix_runs(train, dict(select), settings.regmix_runs, settings.proxy_tokens, order=settings.order,
                           max_epochs=settings.max_epochs, seed=settings.seed)
        # the proposal's cap at the target models' budget, which never reads more than the pool
        budget = min(settings.budget_tokens, float(runs["tokens"].sum()))
        for t in names:
            w, _fit = fit_and_propose(runs["mixtures"], runs["losses"][t], runs["tokens"], budget,
                                      max_epochs=settings.max_epochs, seed=settings.seed, top_k=settings.top_k,
                                      n_simulations=settings.n_simulations)
            out[t] = dict(zip(runs["domains"], w.tolist()))
    else:
        from gem_assets.lib.mixing.regmix import run_regmix

        tr = settings.transformer
        for t in names:
            res = run_regmix(train, select[t], tr["config"], settings.regmix_runs, tr["regmix_steps"],
                             batch_size=tr["batch_size"], lr=tr["lr"], seed=settings.seed, device=tr["device"],
                             eval_max_tokens=tr["eval_max_tokens"], proposal_budget_tokens=settings.budget_tokens,
                             max_epochs=settings.max_epochs, top_k=settings.top_k,
                             n_simulations=settings.n_simulations)
            out[t] = dict(res.weights)
    say(f"regmix weights for {len(names)} target(s) in {time.perf_counter() - t0:.1f} s")
    return out
