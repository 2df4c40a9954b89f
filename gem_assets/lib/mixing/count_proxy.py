"""Mixers on count-based proxies: RegMix's runs and an iterated DoReMi on byte n-gram models.

A proxy "run" is a :class:`~gem_assets.lib.mixing.ngram.NGramLM` trained on ``budget_tokens`` bytes
drawn from the domain streams per a mixture (:meth:`CountIndex.fit`: whole passes over each
domain, then a part of one more, starting at a seeded offset in the domain's seeded document
order). One :class:`~gem_assets.lib.mixing.ngram.CountIndex` serves every run, so a run costs a few
``numpy.bincount`` calls, and every run of one seed reads the same documents of a domain up to
its share (common random numbers): two runs differ by their mixture only.

RegMix (:func:`regmix_runs`)
    M mixtures from :func:`gem_assets.lib.mixing.regmix.sample_mixtures` within the epoch cap at the
    proxy budget, one proxy each, its bits per byte on the target stream. The regressor and the
    proposal are :func:`gem_assets.lib.mixing.regmix.fit_and_propose`, as for transformer proxies.

DoReMi, iterated by rounds (:func:`doremi_rounds`)
    DoReMi (Xie et al., 2023) trains a proxy with Group DRO against a reference model. A count
    model has no gradient steps to interleave with the weight updates, so the same game is
    played in rounds:

    1. the reference weights are each domain's share of the bytes (DoReMi's remedy against
       collapse);
    2. round r draws fresh documents (seeded offsets of round r) and trains on them the
       reference model on the reference weights and the proxy on the current smoothed weights
       alpha_r (every domain is in every round's sample: the smoothing keeps each weight
       >= eps / K); reference and proxy of a round read the same documents, so the excess below
       compares mixtures, not draws, and the rounds average the draws out;
    3. the per-token excess loss of domain k is the mean over the bytes of its *validation*
       stream of max(l_proxy - l_ref, 0) in nats (per token, then averaged, as in DoReMi; on
       held-out bytes because a count model's loss on its own training bytes is memorization);
    4. the exponentiated update ``log alpha += eta * excess``, renormalized, then smoothed
       (:func:`gem_assets.lib.mixing.doremi.update_domain_weights`, the one update rule);
    5. the output is the mean of alpha over the rounds.

    The step size suits the number of updates: with R rounds and per-round excess of at most
    ``x_max`` nats, ``eta = step_scale / (sqrt(R) * x_max)`` (online mirror descent's
    1/sqrt(T) rate, scaled so that the largest excess moves a log weight by at most
    ``step_scale / sqrt(R)`` a round) unless ``step_size`` is given.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np

from gem_assets.lib.util.checks import check_float, check_int
from gem_assets.lib.mixing.ngram import CountIndex, NGramLM

__all__ = ["ProxySet", "regmix_runs", "doremi_rounds", "DoremiRounds"]


def _check_streams(streams: Mapping[str, np.ndarray], name: str) -> dict[str, np.ndarray]:
    if not isinstance(streams, Mapping) or not streams:
        raise ValueError(f"{name} must be a non-empty mapping {{domain: uint8 byte stream}}")
    out = {}
    for k, s in streams.items():
        a = np.asarray(s)
        if a.ndim != 1 or a.dtype != np.uint8 or a.size < 1:
            raise ValueError(f"{name}[{k!r}] must be a non-empty 1-D uint8 byte stream")
        out[str(k)] = a
    return out


def _document_prefix(stream: np.ndarray, max_bytes: int) -> np.ndarray:
    """The stream's leading whole documents up to ``max_bytes`` (at least its first document's bytes)."""
    if stream.size <= max_bytes:
        return stream
    ends = np.flatnonzero(stream[:max_bytes] == 0)
    return stream[: int(ends[-1]) + 1] if ends.size else stream[:max_bytes]


@dataclass
class ProxySet:
    """n-gram proxies of mixtures of domain streams at one token budget (one index, one seed).

    Parameters
    ----------
    streams : mapping of str to numpy.ndarray
        ``{domain: uint8 stream}``, documents in a seeded order (``lib.mixture``).
    budget_tokens : int
        Bytes every proxy trains on.
    order : int
        n-gram order (default 5).
    max_grams : int, optional
        Table cap per order (:class:`~gem_assets.lib.mixing.ngram.CountIndex`).
    seed : int
        Sets where each domain's partial pass starts (the same for every proxy of the set).

    A proxy reads at most ``budget_tokens`` bytes of a domain (a weight is at most 1), so each
    stream is indexed up to that many bytes: a random window of a longer stream is a random
    window of its first B bytes too (documents are in a seeded order), and the index, built once,
    stays within K * B positions whatever the corpus size. :attr:`tokens` keeps the full sizes
    (RegMix's prior and epoch cap, DoReMi's reference weights).
    """

    streams: Mapping[str, np.ndarray]
    budget_tokens: int
    order: int = 5
    max_grams: int | None = None
    seed: int = 0
    index: CountIndex = field(init=False, repr=False)
    offsets: np.ndarray = field(init=False, repr=False)

    def __post_init__(self):
        self.streams = _check_streams(self.streams, "streams")
        self.budget_tokens = check_int(self.budget_tokens, "budget_tokens", low=1)
        self._sizes = np.array([s.size for s in self.streams.values()], dtype=np.float64)
        cut = {k: s[: self.budget_tokens] for k, s in self.streams.items()}
        self.index = CountIndex(cut, order=self.order, max_grams=self.max_grams)
        self.offsets = self.index.seeded_offsets(check_int(self.seed, "seed", low=0))

    @property
    def domains(self) -> list[str]:
        return self.index.domains

    @property
    def tokens(self) -> np.ndarray:
        """Bytes per domain stream (whole, not as indexed), float64 (K,)."""
        return self._sizes.copy()

    def fit(self, weights) -> NGramLM:
        """The proxy of one mixture (``{domain: w}`` or (K,) in :attr:`domains` order)."""
        return self.index.fit(weights, self.budget_tokens, self.offsets)


def regmix_runs(streams: Mapping[str, np.ndarray], target_stream: np.ndarray, n_runs: int, budget_tokens: int, *,
                order: int = 5, max_grams: int | None = None, max_epochs: float = 4.0, seed: int = 0,
                max_target_bytes: int | None = 2_000_000, progress: bool = False,
                on_run: Callable[[int, np.ndarray, float], None] | None = None) -> dict:
    """RegMix steps 1-2 on n-gram proxies: ``n_runs`` mixtures within the epoch cap, a proxy each.

    Parameters
    ----------
    streams : mapping of str to numpy.ndarray
        ``{domain: uint8 stream}`` (training split).
    target_stream : numpy.ndarray or mapping of str to numpy.ndarray
        uint8 stream whose bits per byte each proxy is scored on; or ``{name: stream}`` to score
        every run on several targets (one set of runs serves them all).
    n_runs : int
        Proxy runs M (>= 2).
    budget_tokens : int
        Bytes each proxy trains on (at most the streams' total size); with ``max_epochs`` sets the
        cap w_k * B <= max_epochs * n_k.
    order, max_grams :
        The n-gram models (:class:`~gem_assets.lib.mixing.ngram.CountIndex`).
    max_epochs : float
    seed : int
        Seeds the mixtures and the documents every run reads.
    max_target_bytes : int, optional
        Each target is scored on its first documents up to this many bytes (target streams are
        seeded samples, so a prefix is one too; bounds the lookups' memory, ~40 bytes a byte).
    progress : bool
        A tqdm bar over the runs.
    on_run : callable, optional
        ``on_run(i, mixture, loss)`` after each run.

    Returns
    -------
    dict
        ``domains`` (list), ``mixtures`` (M, K), ``losses`` (M,) target bits per byte (a dict of
        them per target name when several targets were given), ``run_seconds`` (M,), ``tokens``
        (K,) stream lengths, ``budget_tokens``, ``index_seconds`` (the count index, built once).
    """
    from gem_assets.lib.mixing.regmix import sample_mixtures

    n_runs = check_int(n_runs, "n_runs", low=2)
    several = isinstance(target_stream, Mapping)
    targets = _check_streams(target_stream if several else {"target": target_stream}, "target_stream")
    if max_target_bytes is not None:
        targets = {k: _document_prefix(v, check_int(max_target_bytes, "max_target_bytes", low=1))
                   for k, v in targets.items()}
    t0 = time.perf_counter()
    streams = _check_streams(streams, "streams")
    # a proxy reads at most the corpus's size: on a corpus smaller than the budget the runs read it all
    budget_tokens = min(check_int(budget_tokens, "budget_tokens", low=1), int(sum(s.size for s in streams.values())))
    proxies = ProxySet(streams, budget_tokens, order=order, max_grams=max_grams, seed=seed)
    if len(proxies.domains) < 2:
        raise ValueError("RegMix needs at least 2 domains with data")
    lookups = {name: proxies.index.lookup(t) for name, t in targets.items()}
    index_seconds = time.perf_counter() - t0
    tokens = proxies.tokens
    mixtures = sample_mixtures(tokens, n_runs, np.random.default_rng(seed), tokens_per_domain=tokens,
                               budget_tokens=float(proxies.budget_tokens), max_epochs=max_epochs)
    from tqdm.auto import tqdm

    losses = {name: np.empty(n_runs) for name in targets}
    run_seconds = np.empty(n_runs)
    first = next(iter(targets))
    for i in tqdm(range(n_runs), desc="RegMix n-gram proxies", unit="run", disable=not progress):
        t1 = time.perf_counter()
        model = proxies.fit(mixtures[i])
        for name, lk in lookups.items():
            losses[name][i] = lk.bpb(model)
        run_seconds[i] = time.perf_counter() - t1
        if on_run is not None:
            on_run(i, mixtures[i], float(losses[first][i]))
    return {"domains": proxies.domains, "mixtures": mixtures, "losses": losses if several else losses["target"],
            "run_seconds": run_seconds,
            "tokens": tokens, "budget_tokens": int(proxies.budget_tokens), "index_seconds": index_seconds}


@dataclass
class DoremiRounds:
    """What :func:`doremi_rounds` produced.

    Attributes
    ----------
    weights : dict
        ``{domain: mean smoothed weight over the rounds}`` (sums to 1): the output.
    trajectory : numpy.ndarray, shape (R, K)
        The smoothed weights each round's proxy trained on.
    excess : numpy.ndarray, shape (R, K)
        Per-token excess loss (nats) of each domain in each round.
    domains : list of str
    reference_weights : dict
    reference_bpb, proxy_bpb : dict
        Validation bits per byte per domain of the reference and of the proxies, mean over rounds.
    step_size : float
        The eta used.
    seconds : float
    """

    weights: dict[str, float]
    trajectory: np.ndarray
    excess: np.ndarray
    domains: list[str]
    reference_weights: dict[str, float]
    reference_bpb: dict[str, float]
    proxy_bpb: dict[str, float]
    step_size: float
    seconds: float


def doremi_rounds(streams: Mapping[str, np.ndarray], valid_streams: Mapping[str, np.ndarray], budget_tokens: int, *,
                  rounds: int = 24, step_size: float | None = None, step_scale: float = 1.0,
                  smoothing: float = 1e-3, reference_weights: Mapping[str, float] | None = None, order: int = 5,
                  max_grams: int | None = None, seed: int = 0, max_valid_bytes: int | None = 500_000,
                  progress: bool = False) -> DoremiRounds:
    """DoReMi by rounds on n-gram proxies (see the module docstring).

    Parameters
    ----------
    streams : mapping of str to numpy.ndarray
        ``{domain: uint8 stream}`` the models train on.
    valid_streams : mapping of str to numpy.ndarray
        Held-out ``{domain: uint8 stream}`` the excess losses are measured on; every domain of
        ``streams`` needs one.
    budget_tokens : int
        Bytes the reference and every proxy train on.
    rounds : int
        R (>= 1).
    step_size : float, optional
        eta; default ``step_scale / (sqrt(R) * x_max)`` with x_max the largest excess of round 1.
    step_scale : float
        See ``step_size``.
    smoothing : float
        eps in [0, 1].
    reference_weights : mapping, optional
        Default: each domain's share of the training bytes.
    order, max_grams, seed :
        The n-gram proxies (:class:`ProxySet`).
    max_valid_bytes : int, optional
        Excess losses are measured on each domain's first held-out documents up to this many bytes.
    progress : bool

    Returns
    -------
    DoremiRounds
    """
    from gem_assets.lib.mixing.doremi import update_domain_weights

    t0 = time.perf_counter()
    rounds = check_int(rounds, "rounds", low=1)
    step_scale = check_float(step_scale, "step_scale", low=0.0)
    eps = check_float(smoothing, "smoothing", low=0.0)
    if eps > 1.0:
        raise ValueError(f"smoothing must be in [0, 1], got {smoothing}")
    if step_size is not None:
        step_size = check_float(step_size, "step_size", low=0.0)
    proxies = ProxySet(streams, budget_tokens, order=order, max_grams=max_grams, seed=seed)
    keys = proxies.domains
    valid = _check_streams(valid_streams, "valid_streams")
    missing = [k for k in keys if k not in valid]
    if missing:
        raise ValueError(f"valid_streams lacks domains {missing[:5]}: every training domain needs held-out bytes")
    if max_valid_bytes is not None:
        valid = {d: _document_prefix(v, check_int(max_valid_bytes, "max_valid_bytes", low=1)) for d, v in valid.items()}
    k = len(keys)
    if reference_weights is None:
        ref_w = proxies.tokens / proxies.tokens.sum()
    else:
        ref_w = proxies.index._weight_vector(reference_weights)
    lookups = [proxies.index.lookup(valid[d]) for d in keys]
    rng = np.random.default_rng([check_int(seed, "seed", low=0), 1])
    from tqdm.auto import tqdm

    log_w = np.full(k, -math.log(k))
    alpha = np.full(k, 1.0 / k)
    trajectory, excess_all = np.empty((rounds, k)), np.empty((rounds, k))
    ref_bpb, proxy_bpb = np.zeros(k), np.zeros(k)
    for r in tqdm(range(rounds), desc="DoReMi rounds", unit="round", disable=not progress):
        offsets = (rng.random(k) * proxies.index.lengths).astype(np.int64)   # round r's documents
        reference = proxies.index.fit(ref_w, proxies.budget_tokens, offsets)
        ref_losses = [lk.token_losses(reference) for lk in lookups]
        proxy = proxies.index.fit(alpha, proxies.budget_tokens, offsets)
        proxy_losses = [lk.token_losses(proxy) for lk in lookups]
        ref_bpb += [v.mean() for v in ref_losses]
        proxy_bpb += [v.mean() for v in proxy_losses]
        excess = np.array([np.maximum(lp - lr, 0.0).mean() for lp, lr in zip(proxy_losses, ref_losses)])
        if step_size is None:   # fixed once, from the first round's largest excess
            step_size = step_scale / (math.sqrt(rounds) * max(float(excess.max()), 1e-6))
        trajectory[r], excess_all[r] = alpha, excess
        log_w, alpha = update_domain_weights(log_w, excess, step_size, eps)
    mean = trajectory.mean(0)
    mean /= mean.sum()
    ln2 = math.log(2.0)
    return DoremiRounds(
        weights=dict(zip(keys, mean.tolist())), trajectory=trajectory, excess=excess_all, domains=keys,
        reference_weights=dict(zip(keys, ref_w.tolist())),
        reference_bpb=dict(zip(keys, (ref_bpb / rounds / ln2).tolist())),
        proxy_bpb=dict(zip(keys, (proxy_bpb / rounds / ln2).tolist())),
        step_size=float(step_size), seconds=time.perf_counter() - t0)
