"""The mixture evaluation: do GEM domains make better mixtures than other bucketizations?

The experiment (DESIGN.md section 6), for a corpus whose documents each carry one bucket
per bucketization (source labels, Euclidean k-means, GEM):

1. :func:`holdout_split` holds out a seeded document-level target set of the whole corpus
   *first*: each document by a seeded hash of its key, so the decision needs no other document
   (one streaming pass, :class:`CorpusSampler`) and a document keeps it when shards are added.
   The target set is never trained on and never used to choose weights, and it is the same
   documents for every bucketization.
2. :func:`select_split` cuts the remaining (training) documents once more, the same way for
   every bucketization: the *fit* documents feed the byte streams every model trains on, the
   *select* documents are the validation set RegMix minimizes (a natural-distribution
   sample of the training pool, never the target set).
3. For every bucketization and every mixer (natural byte shares, uniform, DoReMi, RegMix)
   the mixture weights are computed (or reused when given), then target language models,
   larger than the proxies, are trained on that mixture with several seeds at the same
   token budget (:func:`run_experiment`), and their bits per byte are measured on the
   target set and on each source label of it.
4. :func:`summarize` gives the mean and the two-sided Student-t interval over seeds
   (:func:`t_interval`); :func:`paired_differences` compares each bucketization with a
   reference one under the same mixer, seed by seed; :func:`results_markdown` and
   :func:`bpb_chart` make the table and the picture.

The language models are reached through a :class:`MixingBackend` (by default the project's
``lib/lm.py``, ``lib/doremi.py``, ``lib/regmix.py`` and ``lib/mixture.py``), so tests can
inject fast fakes.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import polars as pl

from ._checks import check_float, check_int
from .bucketize import MISSING_LABEL, Bucketization
from .sampling import BottomK, bottom_k_positions, check_cap, key_priorities, rng_for

__all__ = [
    "MIXERS",
    "TARGET",
    "EvaluationConfig",
    "MixingBackend",
    "ExperimentResult",
    "holdout_split",
    "select_split",
    "CorpusSampler",
    "EvaluationSample",
    "sample_frame",
    "sample_corpus",
    "t_interval",
    "natural_weights",
    "uniform_weights",
    "run_experiment",
    "summarize",
    "paired_differences",
    "results_markdown",
    "bpb_chart",
    "weights_json",
    "read_texts",
    "capped_sample",
    "CorpusEvaluation",
    "evaluate_corpus",
    "report_markdown",
]

#: The mixers compared, in table order.
MIXERS = ("natural", "uniform", "doremi", "regmix")
#: Name of the whole held-out target set in the per-stream results.
TARGET = "target"


# --------------------------------------------------------------------------- splits
def _check_fraction(fraction: float, purpose: str) -> None:
    check_float(fraction, f"{purpose} fraction", low=0.0, strict=True)
    if fraction >= 1.0:
        raise ValueError(f"the {purpose} fraction must be in (0, 1), got {fraction}")


def _key_series(keys: Sequence[str] | pl.Series) -> pl.Series:
    """The keys as a polars String series (Arrow strings: no Python string per document)."""
    s = keys.cast(pl.String) if isinstance(keys, pl.Series) else pl.Series("key", [str(k) for k in keys], dtype=pl.String)
    if s.null_count():
        raise ValueError("document keys must not be null (e.g. '<shard>/<id>')")
    return s


def _sorted_order(keys: Sequence[str] | pl.Series) -> np.ndarray:
    """Positions of the keys in sorted order. Sorted as Arrow strings (UTF-8 bytes, which orders as
    Python's code-point comparison does), so no Python string per document is held (issue 8: a
    Python list, set and object array of the keys took ~100 bytes per document)."""
    s = _key_series(keys)
    if s.n_unique() != s.len():
        raise ValueError("document keys must be unique (e.g. '<shard>/<id>'); found duplicates")
    return s.arg_sort().to_numpy().astype(np.int64, copy=False)


def _seeded_mask(keys: Sequence[str] | pl.Series, fraction: float, seed: int, purpose: str) -> np.ndarray:
    """``round(fraction * N)`` (at least 1 and at most N - 1) documents, drawn by a permutation of
    the sorted keys: the draw depends on the set of keys and the seed, not on their order (the
    selection split of the training pool, which the caps keep small)."""
    n = len(keys)
    _check_fraction(fraction, purpose)
    if n < 2:
        raise ValueError(f"the {purpose} split needs at least 2 documents, got {n}")
    order = _sorted_order(keys)
    m = min(n - 1, max(1, int(round(fraction * n))))
    pick = rng_for(seed, "evaluation", purpose).permutation(n)[:m]
    mask = np.zeros(n, dtype=bool)
    mask[order[pick]] = True
    return mask


def holdout_split(keys: Sequence[str] | pl.Series, fraction: float, seed: int) -> np.ndarray:
    """The held-out target set: each document held out by a seeded hash of its key.

    Document ``key`` is held out when its priority :func:`gem_assets.lib.sampling.key_priority`
    ``(seed, "evaluation/holdout", key)``, a uniform 64-bit number, is below ``fraction * 2**64``:
    a Bernoulli(``fraction``) draw per document that needs no other document. So the split is one
    streaming pass with no per-document state (:class:`CorpusSampler`; a permutation of all keys
    took ~36 bytes a document, issue 8), and a document's side does not change when shards are
    added to the corpus: evaluations of a growing corpus keep their old target documents.

    Parameters
    ----------
    keys : sequence of str or polars Series of str
        A unique key per document (e.g. ``"<shard>/<id>"``).
    fraction : float
        Probability that a document is held out, in (0, 1). The number held out is binomial
        (``fraction * N`` on average); it can be 0 for a tiny corpus, which
        :func:`evaluate_corpus` reports as an error.
    seed : int
        Seed of the draw.

    Returns
    -------
    ndarray of bool, shape (N,)
        True for held-out documents, whatever the order of ``keys``.
    """
    _check_fraction(fraction, "holdout")
    s = _key_series(keys)
    if s.n_unique() != s.len():
        raise ValueError("document keys must be unique (e.g. '<shard>/<id>'); found duplicates")
    return key_priorities(seed, "evaluation/holdout", s.to_list()) < np.uint64(int(fraction * 2**64))


def select_split(keys: Sequence[str] | pl.Series, fraction: float, seed: int) -> np.ndarray:
    """The weight-selection set: a seeded sample of the *training* documents (not the target set).

    RegMix chooses its weights by the loss on these documents; nothing is trained on them.
    Exactly ``round(fraction * N)`` of the N keys (at least 1, at most N - 1), drawn by a seeded
    permutation of the sorted keys: the same set whatever the keys' order.
    """
    return _seeded_mask(keys, fraction, seed, "select")


# --------------------------------------------------------------------------- statistics
def t_interval(values, confidence: float = 0.95) -> dict[str, float]:
    """Mean and two-sided Student-t confidence interval of the mean.

    ``mean ± t_{(1 + confidence) / 2, n - 1} * s / sqrt(n)`` with ``s`` the sample standard
    deviation (``ddof=1``), computed in float64.

    Parameters
    ----------
    values : array-like of float, at least 2 finite values
    confidence : float
        In (0, 1).

    Returns
    -------
    dict
        ``n``, ``mean``, ``std``, ``half_width``, ``low``, ``high``.

    Raises
    ------
    ValueError
        With fewer than two values (no interval exists) or a NaN/inf value.
    """
    from scipy.stats import t as student_t

    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size < 2:
        raise ValueError(f"a confidence interval needs at least 2 values (seeds), got {x.size}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"values must be finite, got {x.tolist()}")
    confidence = check_float(confidence, "confidence", low=0.0, strict=True)
    if confidence >= 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    n = x.size
    mean = float(np.mean(x))
    std = float(np.std(x, ddof=1))
    half = float(student_t.ppf(0.5 + confidence / 2.0, n - 1) * std / math.sqrt(n))
    return {"n": int(n), "mean": mean, "std": std, "half_width": half, "low": mean - half, "high": mean + half}


# --------------------------------------------------------------------------- simple mixers
def natural_weights(streams: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Each domain's share of the training bytes (what sampling documents at random gives)."""
    sizes = {k: int(np.asarray(v).size) for k, v in streams.items()}
    total = sum(sizes.values())
    if total <= 0:
        raise ValueError("the domain streams hold no byte: nothing to mix")
    return {k: s / total for k, s in sizes.items()}


def uniform_weights(streams: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Equal weight on every domain."""
    if not streams:
        raise ValueError("no domain stream: nothing to mix")
    return {k: 1.0 / len(streams) for k in streams}


# --------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class EvaluationConfig:
    """What one evaluation runs.

    Parameters
    ----------
    target : object
        Configuration of the target language models (``lib.lm.LMConfig``); must be larger
        than ``proxy`` (no fewer layers and no narrower, and larger in one of the two).
    proxy : object
        Configuration of the proxy models DoReMi and RegMix train.
    steps : int
        Training steps of every target model (the token budget is ``steps * batch_size *
        context``, the same for every bucketization and mixer).
    seeds : tuple of int
        Seeds of the target models (at least 2; 3 or more for a meaningful interval).
    batch_size, lr : int, float
        Target models' batch size and learning rate.
    doremi_steps : int
        Steps of DoReMi's reference and proxy models.
    regmix_runs, regmix_steps : int
        Number of RegMix proxy runs and steps of each.
    proxy_batch_size, proxy_lr : int, float
        Proxy models' batch size and learning rate.
    max_eval_tokens : int or None
        At most this many bytes of each evaluated stream (the target set, each source
        label); ``None``: all of them.
    mixers : tuple of str
        A subset of :data:`MIXERS`, in table order.
    confidence : float
        Level of the intervals.
    seed : int
        Seed of the weight computations.
    device : str
        ``"auto"``, ``"cpu"`` or ``"cuda"``.
    """

    target: Any
    proxy: Any
    steps: int
    seeds: tuple[int, ...] = (0, 1, 2)
    batch_size: int = 16
    lr: float = 3e-3
    doremi_steps: int = 100
    regmix_runs: int = 16
    regmix_steps: int = 50
    proxy_batch_size: int = 16
    proxy_lr: float = 3e-3
    max_eval_tokens: int | None = None
    mixers: tuple[str, ...] = MIXERS
    confidence: float = 0.95
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        check_int(self.steps, "steps", low=1)
        seeds = tuple(int(check_int(s, "seed")) for s in self.seeds)
        if len(seeds) < 2 or len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must hold at least 2 distinct seeds (an interval needs them), got {self.seeds}")
        object.__setattr__(self, "seeds", seeds)
        check_int(self.batch_size, "batch_size", low=1)
        check_float(self.lr, "lr", low=0.0, strict=True)
        check_int(self.doremi_steps, "doremi_steps", low=1)
        check_int(self.regmix_runs, "regmix_runs", low=2)
        check_int(self.regmix_steps, "regmix_steps", low=1)
        check_int(self.proxy_batch_size, "proxy_batch_size", low=1)
        check_float(self.proxy_lr, "proxy_lr", low=0.0, strict=True)
        if self.max_eval_tokens is not None:
            check_int(self.max_eval_tokens, "max_eval_tokens", low=2)
        bad = [m for m in self.mixers if m not in MIXERS]
        if bad or not self.mixers or len(set(self.mixers)) != len(self.mixers):
            raise ValueError(f"mixers must be distinct names from {MIXERS}, got {self.mixers}")
        t = check_float(self.confidence, "confidence", low=0.0, strict=True)
        if t >= 1.0:
            raise ValueError(f"confidence must be in (0, 1), got {self.confidence}")
        shape = lambda c: (int(getattr(c, "n_layer")), int(getattr(c, "d_model")))  # noqa: E731
        (tl, td), (pl_, pd) = shape(self.target), shape(self.proxy)
        if tl < pl_ or td < pd or (tl, td) == (pl_, pd):
            raise ValueError(f"the target models must be larger than the proxies: target n_layer={tl}, "
                             f"d_model={td} vs proxy n_layer={pl_}, d_model={pd}; raise the target's layers "
                             "or width")

    def params(self) -> dict:
        """The configuration as JSON-serialisable parameters (for fingerprints and tracking)."""
        as_dict = lambda c: {k: getattr(c, k) for k in ("n_layer", "n_head", "d_model", "context", "dropout")  # noqa: E731
                             if hasattr(c, k)}
        return {"target": as_dict(self.target), "proxy": as_dict(self.proxy), "steps": self.steps,
                "seeds": list(self.seeds), "batch_size": self.batch_size, "lr": self.lr,
                "doremi_steps": self.doremi_steps, "regmix_runs": self.regmix_runs,
                "regmix_steps": self.regmix_steps, "proxy_batch_size": self.proxy_batch_size,
                "proxy_lr": self.proxy_lr, "max_eval_tokens": self.max_eval_tokens, "mixers": list(self.mixers),
                "confidence": self.confidence, "seed": self.seed}

    def mixer_params(self, mixer: str) -> dict:
        """What determines the weights of one mixer on one bucketization (besides the data)."""
        proxy = self.params()["proxy"]
        if mixer == "doremi":
            return {"proxy": proxy, "steps": self.doremi_steps, "batch_size": self.proxy_batch_size,
                    "lr": self.proxy_lr, "seed": self.seed}
        if mixer == "regmix":
            return {"proxy": proxy, "n_runs": self.regmix_runs, "steps": self.regmix_steps,
                    "batch_size": self.proxy_batch_size, "lr": self.proxy_lr, "seed": self.seed}
        return {}


@dataclass(frozen=True)
class MixingBackend:
    """The language-model functions the experiment calls (see ``lib/lm.py`` and friends).

    ``streams(texts, keys)`` builds ``{key: uint8 byte stream}`` from documents and their
    domain keys; ``train(streams, weights, config, steps, batch_size, lr, seed)`` returns an
    object with ``model`` and ``tokens``; ``bpb(model, {name: stream}, max_tokens)`` returns
    ``{name: bits per byte}``; ``doremi(streams, config, steps, batch_size, lr, seed)`` and
    ``regmix(streams, target_stream, config, n_runs, steps, batch_size, lr, seed, budget)`` return
    ``{key: weight}`` (``budget``: the bytes the target models train on, which sets the epoch
    cap of RegMix's proposal).
    """

    streams: Callable[..., dict[str, np.ndarray]]
    train: Callable[..., Any]
    bpb: Callable[..., dict[str, float]]
    doremi: Callable[..., dict[str, float]]
    regmix: Callable[..., dict[str, float]]

    @classmethod
    def default(cls, device: str = "auto", eval_max_tokens: int | None = 65536,
                report_max_tokens: int = 4096) -> "MixingBackend":
        """The project's proxy LM, DoReMi, RegMix and stream builder.

        ``eval_max_tokens`` caps the bytes RegMix scores each proxy run on;
        ``report_max_tokens`` the bytes per domain DoReMi reports its two models' bits per byte
        on (a by-product the weights do not depend on).
        """
        from . import doremi as _doremi
        from . import lm as _lm
        from . import mixture as _mixture
        from . import regmix as _regmix

        def streams(texts, keys):
            return _mixture.texts_to_streams(texts, keys)

        def train(streams, weights, config, steps, batch_size, lr, seed):
            return _lm.train_lm(streams, weights, config, steps, batch_size=batch_size, lr=lr, seed=seed,
                                device=device)

        def bpb(model, streams, max_tokens):
            return _lm.evaluate_bpb(model, dict(streams), max_tokens=max_tokens, device=device)

        def doremi(streams, config, steps, batch_size, lr, seed):
            return dict(_doremi.run_doremi(streams, None, config, steps, batch_size=batch_size, lr=lr, seed=seed,
                                           device=device, eval_max_tokens=report_max_tokens).weights)

        def regmix(streams, target, config, n_runs, steps, batch_size, lr, seed, budget):
            return dict(_regmix.run_regmix(streams, target, config, n_runs, steps, batch_size=batch_size, lr=lr,
                                           seed=seed, device=device, eval_max_tokens=eval_max_tokens,
                                           proposal_budget_tokens=budget).weights)

        return cls(streams=streams, train=train, bpb=bpb, doremi=doremi, regmix=regmix)


# --------------------------------------------------------------------------- the experiment
@dataclass
class ExperimentResult:
    """Everything :func:`run_experiment` measured.

    Attributes
    ----------
    runs : polars.DataFrame
        One row per (bucketization, mixer, seed): ``bucketization``, ``mixer``, ``seed``,
        ``domains``, ``tokens``, ``train_seconds`` and one ``bpb_<stream>`` column per
        evaluated stream (``bpb_target`` and one per source label).
    weights : dict
        ``{bucketization: {mixer: {domain key: weight}}}``.
    weight_sources : dict
        ``{bucketization: {mixer: "computed" | "given"}}``.
    domains : dict
        ``{bucketization: {domain key: fit bytes}}`` (empty buckets left out).
    streams : list of str
        The evaluated streams (``target`` first), with their sizes in ``stream_bytes``.
    seconds : dict
        Wall time of the weight computations and of the target models.
    """

    runs: pl.DataFrame
    weights: dict
    weight_sources: dict
    domains: dict
    streams: list[str]
    stream_bytes: dict[str, int]
    seconds: dict = field(default_factory=dict)


def _check_inputs(fit_texts, bucketizations, target_texts, target_labels) -> None:
    if not bucketizations:
        raise ValueError("pass at least one bucketization")
    names = [b.name for b in bucketizations]
    if len(set(names)) != len(names):
        raise ValueError(f"bucketization names must be distinct, got {names}")
    for b in bucketizations:
        if b.labels.size != len(fit_texts):
            raise ValueError(f"bucketization {b.name!r} labels {b.labels.size} documents but there are "
                             f"{len(fit_texts)} training documents")
    if not fit_texts:
        raise ValueError("there is no training document")
    if not target_texts:
        raise ValueError("the target set is empty: hold out at least one document")
    if target_labels is not None and len(target_labels) != len(target_texts):
        raise ValueError(f"target_labels has {len(target_labels)} entries for {len(target_texts)} target documents")


def _eval_streams(backend: MixingBackend, target_texts, target_labels) -> dict[str, np.ndarray]:
    """The target set as one stream, and one stream per source label of it."""
    out = dict(backend.streams(list(target_texts), [TARGET] * len(target_texts)))
    if target_labels is not None:
        keys = [MISSING_LABEL if v is None else str(v) for v in target_labels]
        per = backend.streams(list(target_texts), keys)
        for label in sorted(per):
            if label == TARGET:
                raise ValueError(f"a source label may not be named {TARGET!r}")
            out[label] = per[label]
    return out


def run_experiment(
    fit_texts: Sequence[str],
    bucketizations: Sequence[Bucketization],
    select_texts: Sequence[str],
    target_texts: Sequence[str],
    config: EvaluationConfig,
    *,
    target_labels: Sequence | None = None,
    given_weights: Mapping[str, Mapping[str, Mapping[str, float]]] | None = None,
    backend: MixingBackend | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> ExperimentResult:
    """Train target models on every (bucketization, mixer) mixture and measure held-out bits per byte.

    Parameters
    ----------
    fit_texts : sequence of str
        The training documents (the training pool less the selection set).
    bucketizations : sequence of Bucketization
        Each labels every document of ``fit_texts`` (same order).
    select_texts : sequence of str
        The weight-selection documents: RegMix's target loss is measured on them. Never the
        target set.
    target_texts : sequence of str
        The held-out target set (never trained on, never used to choose weights).
    config : EvaluationConfig
        Models, budgets, seeds, mixers.
    target_labels : sequence, optional
        Source label of each target document: bits per byte are also reported per label.
    given_weights : mapping, optional
        ``{bucketization: {mixer: {domain key: weight}}}`` to reuse instead of computing
        (e.g. GEM's weights from the mixing assets when they were made the same way).
        Keys must be exactly the bucketization's non-empty domain keys.
    backend : MixingBackend, optional
        Default :meth:`MixingBackend.default`.
    progress : bool
        A tqdm bar over the target models.
    log : callable, optional
        Receives one line per finished step.

    Returns
    -------
    ExperimentResult
    """
    from tqdm.auto import tqdm

    _check_inputs(fit_texts, bucketizations, target_texts, target_labels)
    if not select_texts and "regmix" in config.mixers:
        raise ValueError("RegMix needs a non-empty selection set (select_texts) to choose weights on")
    backend = backend or MixingBackend.default(config.device, config.max_eval_tokens)
    say = log or (lambda _msg: None)
    given_weights = given_weights or {}
    fit_texts = list(fit_texts)

    evals = _eval_streams(backend, target_texts, target_labels)
    stream_bytes = {k: int(np.asarray(v).size) for k, v in evals.items()}
    select_stream = None
    if "regmix" in config.mixers:
        select_stream = backend.streams(list(select_texts), ["select"] * len(select_texts))["select"]

    weights: dict = {}
    sources: dict = {}
    domains: dict = {}
    streams_by_b: dict = {}
    t_weights = time.perf_counter()
    for b in bucketizations:
        keys = b.keys()
        streams = backend.streams(fit_texts, [keys[i] for i in b.labels])
        streams = {k: streams[k] for k in keys if k in streams and np.asarray(streams[k]).size > 0}
        if not streams:
            raise ValueError(f"bucketization {b.name!r} has no training byte")
        streams_by_b[b.name] = streams
        domains[b.name] = {k: int(np.asarray(v).size) for k, v in streams.items()}
        weights[b.name], sources[b.name] = {}, {}
        for mixer in config.mixers:
            given = given_weights.get(b.name, {}).get(mixer)
            if given is not None:
                if set(given) != set(streams):
                    raise ValueError(f"the given {mixer} weights of {b.name!r} have domains {sorted(given)} but its "
                                     f"non-empty domains are {sorted(streams)}")
                w, src = {k: float(given[k]) for k in streams}, "given"
            else:
                t0 = time.perf_counter()
                w, src = _mixer_weights(mixer, streams, select_stream, config, backend), "computed"
                say(f"{b.name}/{mixer}: weights computed in {time.perf_counter() - t0:.1f} s")
            weights[b.name][mixer] = _normalized(w, f"{b.name}/{mixer}")
            sources[b.name][mixer] = src
    weight_seconds = time.perf_counter() - t_weights

    rows = []
    grid = [(b.name, m, s) for b in bucketizations for m in config.mixers for s in config.seeds]
    t_models = time.perf_counter()
    for name, mixer, seed in tqdm(grid, desc="target models", disable=not progress):
        t0 = time.perf_counter()
        trained = backend.train(streams_by_b[name], weights[name][mixer], config.target, config.steps,
                                config.batch_size, config.lr, seed)
        train_seconds = time.perf_counter() - t0
        bpb = backend.bpb(trained.model, evals, config.max_eval_tokens)
        missing = set(evals) - set(bpb)
        if missing:
            raise ValueError(f"the evaluator returned no bits per byte for {sorted(missing)}")
        values = {f"bpb_{k}": float(bpb[k]) for k in evals}
        bad = {k: v for k, v in values.items() if not np.isfinite(v) or v <= 0}
        if bad:
            raise ValueError(f"{name}/{mixer} seed {seed}: bits per byte must be finite and positive, got {bad}")
        rows.append({"bucketization": name, "mixer": mixer, "seed": int(seed), "domains": len(streams_by_b[name]),
                     "tokens": int(trained.tokens), "train_seconds": train_seconds, **values})
        say(f"{name}/{mixer} seed {seed}: target bpb {values['bpb_' + TARGET]:.4f} ({train_seconds:.1f} s)")
    runs = pl.DataFrame(rows)
    return ExperimentResult(runs=runs, weights=weights, weight_sources=sources, domains=domains,
                            streams=list(evals), stream_bytes=stream_bytes,
                            seconds={"weights": weight_seconds, "target_models": time.perf_counter() - t_models})


def _mixer_weights(mixer: str, streams, select_stream, config: EvaluationConfig, backend: MixingBackend) -> dict:
    if mixer == "natural":
        return natural_weights(streams)
    if mixer == "uniform":
        return uniform_weights(streams)
    if len(streams) < 2:  # one domain: there is nothing to optimize
        return {k: 1.0 for k in streams}
    if mixer == "doremi":
        return backend.doremi(streams, config.proxy, config.doremi_steps, config.proxy_batch_size, config.proxy_lr,
                              config.seed)
    budget = config.steps * config.batch_size * int(config.target.context)   # what each target model trains on
    return backend.regmix(streams, select_stream, config.proxy, config.regmix_runs, config.regmix_steps,
                          config.proxy_batch_size, config.proxy_lr, config.seed, budget)


def _normalized(w: Mapping[str, float], what: str) -> dict[str, float]:
    values = np.asarray([float(v) for v in w.values()], dtype=np.float64)
    if values.size == 0 or not np.all(np.isfinite(values)) or np.any(values < 0) or values.sum() <= 0:
        raise ValueError(f"{what}: mixture weights must be finite, non-negative and not all zero, got {dict(w)}")
    return {k: float(v) / float(values.sum()) for k, v in zip(w, values)}


# --------------------------------------------------------------------------- tables
def summarize(runs: pl.DataFrame, confidence: float = 0.95) -> pl.DataFrame:
    """Mean and t-interval over seeds of every ``bpb_*`` column, per (bucketization, mixer).

    Parameters
    ----------
    runs : polars.DataFrame
        :attr:`ExperimentResult.runs`.
    confidence : float
        Interval level.

    Returns
    -------
    polars.DataFrame
        ``bucketization``, ``mixer``, ``seeds``, ``domains``, ``tokens``, then for each
        stream ``s``: ``bpb_s`` (mean), ``bpb_s_low``, ``bpb_s_high``, ``bpb_s_half_width``;
        rows in the order the pairs first appear in ``runs``.
    """
    cols = [c for c in runs.columns if c.startswith("bpb_")]
    if not cols:
        raise ValueError("runs has no bpb_* column")
    pairs = runs.select("bucketization", "mixer").unique(maintain_order=True)
    rows = []
    for name, mixer in pairs.iter_rows():
        part = runs.filter((pl.col("bucketization") == name) & (pl.col("mixer") == mixer))
        tokens = part["tokens"].unique()
        row = {"bucketization": name, "mixer": mixer, "seeds": part.height, "domains": int(part["domains"][0]),
               "tokens": int(tokens.max())}
        for c in cols:
            ci = t_interval(part[c].to_numpy(), confidence)
            row.update({c: ci["mean"], f"{c}_low": ci["low"], f"{c}_high": ci["high"],
                        f"{c}_half_width": ci["half_width"]})
        rows.append(row)
    return pl.DataFrame(rows)


def paired_differences(runs: pl.DataFrame, reference: str, column: str = f"bpb_{TARGET}",
                       confidence: float = 0.95) -> pl.DataFrame:
    """``reference`` minus each other bucketization, same mixer and seed, with a t-interval.

    Negative: the reference bucketization gives the lower (better) bits per byte. Seeds
    pair the models (same initialization and batch draws where the backend makes them so),
    which removes the seed-to-seed variance both share.

    Returns
    -------
    polars.DataFrame
        ``mixer``, ``versus``, ``seeds``, ``difference``, ``low``, ``high``; empty when the
        reference is the only bucketization.
    """
    if reference not in set(runs["bucketization"].to_list()):
        raise ValueError(f"reference bucketization {reference!r} is not in the runs")
    ref = runs.filter(pl.col("bucketization") == reference).select("mixer", "seed", pl.col(column).alias("_ref"))
    rows = []
    others = [b for b in runs["bucketization"].unique(maintain_order=True).to_list() if b != reference]
    for other in others:
        part = runs.filter(pl.col("bucketization") == other).select("mixer", "seed", column)
        joined = ref.join(part, on=["mixer", "seed"], how="inner")
        for mixer in joined["mixer"].unique(maintain_order=True).to_list():
            d = joined.filter(pl.col("mixer") == mixer)
            diff = (d["_ref"] - d[column]).to_numpy()
            if diff.size < 2:
                continue
            ci = t_interval(diff, confidence)
            rows.append({"mixer": mixer, "versus": other, "seeds": int(diff.size), "difference": ci["mean"],
                         "low": ci["low"], "high": ci["high"]})
    schema = {"mixer": pl.String, "versus": pl.String, "seeds": pl.Int64, "difference": pl.Float64,
              "low": pl.Float64, "high": pl.Float64}
    return pl.DataFrame(rows, schema=schema)


def results_markdown(table: pl.DataFrame, *, confidence: float = 0.95, digits: int = 4) -> str:
    """The summary table as Markdown: target bits per byte with its interval, then per-label means.

    The lowest mean target bits per byte of each mixer is in bold.
    """
    streams = [c[len("bpb_"):] for c in table.columns
               if c.startswith("bpb_") and not c.endswith(("_low", "_high", "_half_width"))]
    if TARGET not in streams:
        raise ValueError(f"the table has no bpb_{TARGET} column")
    labels = [s for s in streams if s != TARGET]
    best = {m: float(table.filter(pl.col("mixer") == m)[f"bpb_{TARGET}"].min())
            for m in table["mixer"].unique().to_list()}
    pct = f"{confidence:.0%}"
    head = ["bucketization", "mixer", "domains", "seeds", f"target bpb (mean ± {pct} half-width)", f"{pct} interval"]
    head += [f"{s} bpb" for s in labels]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    f = f"{{:.{digits}f}}"
    for r in table.iter_rows(named=True):
        mean = f.format(r[f"bpb_{TARGET}"])
        if r[f"bpb_{TARGET}"] == best[r["mixer"]]:
            mean = f"**{mean}**"
        cells = [r["bucketization"], r["mixer"], str(r["domains"]), str(r["seeds"]),
                 f"{mean} ± {f.format(r[f'bpb_{TARGET}_half_width'])}",
                 f"[{f.format(r[f'bpb_{TARGET}_low'])}, {f.format(r[f'bpb_{TARGET}_high'])}]"]
        cells += [f.format(r[f"bpb_{s}"]) for s in labels]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bpb_chart(table: pl.DataFrame, *, confidence: float = 0.95, stream: str = TARGET,
              title: str | None = None) -> bytes:
    """Bits per byte (mean and interval) by mixer, one marker colour per bucketization.

    Returns
    -------
    bytes
        PNG image.
    """
    from .plots import _figure, _png

    col = f"bpb_{stream}"
    if col not in table.columns:
        raise ValueError(f"the table has no {col} column")
    mixers = table["mixer"].unique(maintain_order=True).to_list()
    names = table["bucketization"].unique(maintain_order=True).to_list()
    fig = _figure(max(4.5, 1.3 * len(mixers) + 1.5), 3.2)
    ax = fig.add_subplot()
    width = 0.7 / max(1, len(names))
    colors = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860"]
    for j, name in enumerate(names):
        part = table.filter(pl.col("bucketization") == name)
        x, y, lo, hi = [], [], [], []
        for r in part.iter_rows(named=True):
            x.append(mixers.index(r["mixer"]) + (j - (len(names) - 1) / 2) * width)
            y.append(r[col])
            lo.append(r[col] - r[f"{col}_low"])
            hi.append(r[f"{col}_high"] - r[col])
        ax.errorbar(x, y, yerr=[lo, hi], fmt="o", ms=5, capsize=3, color=colors[j % len(colors)], label=name)
    ax.set_xticks(range(len(mixers)))
    ax.set_xticklabels(mixers)
    ax.set_xlabel("mixer")
    ax.set_ylabel(f"{stream} bits per byte (lower is better)")
    ax.set_title(title or f"held-out bits per byte, mean and {confidence:.0%} t-interval over seeds", fontsize=9)
    ax.legend(fontsize=7, title="bucketization", title_fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def weights_json(result: ExperimentResult) -> str:
    """The weights of every bucketization and mixer, and where they came from, as JSON text."""
    return json.dumps({"weights": result.weights, "sources": result.weight_sources, "domain_bytes": result.domains},
                      indent=2, sort_keys=True)


# --------------------------------------------------------------------------- the corpus end to end
#: The columns of a batch offered to :class:`CorpusSampler` (and of :attr:`EvaluationSample.frame`).
SAMPLE_COLUMNS = ("key", "shard", "id", "source", "gem", "vec")


class _Kept:
    """The rows of a :class:`gem_assets.lib.sampling.BottomK` sample (all rows when ``cap`` is None)."""

    def __init__(self, cap: int | None, seed: int, purpose: str) -> None:
        cap = check_cap(cap, purpose)
        self.pick = BottomK(cap, seed, purpose) if cap is not None else None
        self.rows: list[tuple] = []
        self.offered = 0

    def update(self, rows: list[tuple]) -> None:
        self.offered += len(rows)
        if self.pick is None:
            self.rows.extend(rows)
        else:
            self.pick.update([r[0] for r in rows], rows)

    def frame(self, target: bool, with_text: bool) -> pl.DataFrame:
        rows = self.rows if self.pick is None else list(self.pick.items().values())
        schema = {"key": pl.String, "shard": pl.String, "id": pl.String, "source": pl.String, "gem": pl.Int64,
                  "vec": pl.Int64, **({"text": pl.String} if with_text else {})}
        return (pl.DataFrame(rows, schema=schema, orient="row").sort("key")
                .with_columns(pl.lit(target).alias("target")))


@dataclass
class EvaluationSample:
    """The documents the evaluation uses, drawn in one pass over the corpus (:class:`CorpusSampler`).

    Attributes
    ----------
    frame : polars.DataFrame
        ``key``, ``shard``, ``id``, ``source``, ``gem``, ``vec`` (row of ``vectors``; null for target
        documents), ``text`` (only when the offered batches had one) and ``target`` (True: held-out
        target document; False: training pool), sorted by key within each part (target first). At
        most the two caps of rows, whatever the corpus size.
    vectors : ndarray (M, d) float32
        The embeddings of the training-pool documents.
    counts : dict
        ``documents`` (all offered), ``held_out``, ``target`` (after the cap), ``pool_available``,
        ``pool`` (after the cap), ``unusable`` (not held out, and no GEM domain or no embedding),
        ``with_source`` (documents with a source label).
    """

    frame: pl.DataFrame
    vectors: np.ndarray
    counts: dict


class CorpusSampler:
    """One pass over a corpus's documents, batch by batch: the held-out decision of each document
    (:func:`holdout_split`), then bottom-k samples of the target set and of the training pool.

    Memory holds the two samples (at most ``max_target_documents`` and ``max_train_documents``
    rows without texts or vectors) and counters, not per-document arrays: a corpus of 10^9
    documents needs what one of 10^5 needs. The samples are the same whatever the batches and
    their order (each decision and priority depends only on the document's key and the seed).

    Parameters
    ----------
    holdout : float
        Probability that a document is held out as a target document, in (0, 1).
    seed : int
        Seed of the split and of the samples.
    max_target_documents, max_train_documents : int or None
        Caps of the target set and of the training pool (``None``: keep all).
    """

    def __init__(self, holdout: float, seed: int, max_target_documents: int | None = None,
                 max_train_documents: int | None = None) -> None:
        _check_fraction(holdout, "holdout")
        self.holdout, self.seed = float(holdout), int(seed)
        self._target = _Kept(max_target_documents, self.seed, "evaluation/target")
        self._pool = _Kept(max_train_documents, self.seed, "evaluation/pool")
        self.counts = {"documents": 0, "held_out": 0, "unusable": 0, "with_source": 0}
        self._with_text: bool | None = None

    def offer(self, batch: pl.DataFrame) -> None:
        """Offer documents: a frame with the :data:`SAMPLE_COLUMNS` (``vec``: where the document's
        embedding is, null when it has none; ``gem``: its domain, null when it has none) and
        optionally ``text`` (kept for the sampled documents; every batch or none). Keys must be
        unique across the whole pass."""
        missing = [c for c in SAMPLE_COLUMNS if c not in batch.columns]
        if missing:
            raise ValueError(f"a batch offered to the sampler lacks the column(s) {missing}")
        with_text = "text" in batch.columns
        if self._with_text is not None and with_text != self._with_text:
            raise ValueError("every batch offered to the sampler must have a 'text' column, or none")
        self._with_text = with_text
        batch = batch.select(pl.col("key").cast(pl.String), pl.col("shard").cast(pl.String),
                             pl.col("id").cast(pl.String), pl.col("source").cast(pl.String),
                             pl.col("gem").cast(pl.Int64), pl.col("vec").cast(pl.Int64),
                             *([pl.col("text").cast(pl.String)] if with_text else []))
        held = holdout_split(batch["key"], self.holdout, self.seed)
        usable = (batch["gem"].is_not_null() & batch["vec"].is_not_null()).to_numpy()
        self.counts["documents"] += batch.height
        self.counts["held_out"] += int(held.sum())
        self.counts["unusable"] += int((~held & ~usable).sum())
        self.counts["with_source"] += int(batch["source"].is_not_null().sum())
        mask = pl.Series(held)
        self._target.update(batch.filter(mask).with_columns(pl.lit(None, pl.Int64).alias("vec")).rows())
        self._pool.update(batch.filter(~mask & pl.Series(usable)).rows())

    def sample(self, vectors_of: Callable[[pl.DataFrame], np.ndarray]) -> EvaluationSample:
        """The samples drawn, with the pool's embeddings from ``vectors_of(pool_rows)`` (a frame with
        ``shard`` and ``vec``; returns their vectors in that order)."""
        text = bool(self._with_text)
        target, pool = self._target.frame(True, text), self._pool.frame(False, text)
        vectors = np.asarray(vectors_of(pool.select("shard", "vec")), dtype=np.float32)
        if vectors.shape[0] != pool.height:
            raise ValueError(f"{vectors.shape[0]} vectors for {pool.height} training-pool documents")
        pool = pool.with_columns(pl.int_range(pool.height, dtype=pl.Int64).alias("vec"))
        counts = {**self.counts, "target": target.height, "pool_available": self._pool.offered,
                  "pool": pool.height}
        return EvaluationSample(frame=pl.concat([target, pool]), vectors=vectors, counts=counts)


def sample_frame(frame: pl.DataFrame, vectors: np.ndarray, *, holdout: float, seed: int,
                 max_target_documents: int | None = None,
                 max_train_documents: int | None = None) -> EvaluationSample:
    """:class:`CorpusSampler` over a corpus held in memory: ``frame`` with the
    :data:`SAMPLE_COLUMNS` (``vec``: row of ``vectors``), e.g. in tests or for a small corpus."""
    sampler = CorpusSampler(holdout, seed, max_target_documents, max_train_documents)
    sampler.offer(frame)
    vectors = np.asarray(vectors, dtype=np.float32)
    return sampler.sample(lambda rows: vectors[rows["vec"].to_numpy().astype(np.int64)])


def _shard_frame(layout, key: str) -> pl.DataFrame:
    """One shard's documents without texts, with their GEM domain and the row of their embedding in
    the shard's vectors (null when the document was not embedded); the vectors are not read."""
    from . import artifacts, storage

    if not layout.documents_path(key).is_file() or not layout.documents_meta_path(key).is_file():
        raise FileNotFoundError(f"no documents for shard {key!r}: materialize the 'documents' partition first")
    docs = storage.read_parquet(layout.documents_path(key), columns=_non_text_columns(layout, key))
    apath = layout.assignments_path(key)
    if not apath.is_file():
        raise FileNotFoundError(f"no GEM assignments for shard {key!r} ({apath}): materialize "
                                "'domain_assignments' first")
    assign = storage.read_parquet(apath, columns=["id", "domain"]).rename({"domain": "gem"})
    index = artifacts.read_embeddings_index(layout, key).select("id").with_row_index("vec").with_columns(pl.col("vec").cast(pl.Int64))
    source = pl.col("source").cast(pl.String) if "source" in docs.columns else pl.lit(None, dtype=pl.String)
    frame = (docs.select(pl.lit(key).alias("shard"), pl.col("id").cast(pl.String), source.alias("source"))
             .join(assign.with_columns(pl.col("id").cast(pl.String), pl.col("gem").cast(pl.Int64)), on="id", how="left")
             .join(index.with_columns(pl.col("id").cast(pl.String)), on="id", how="left")
             .with_columns((pl.col("shard") + "/" + pl.col("id")).alias("key")))
    return frame.select(*SAMPLE_COLUMNS)


def sample_corpus(layout, keys: Sequence[str], *, holdout: float, seed: int,
                  max_target_documents: int | None = None, max_train_documents: int | None = None,
                  progress: bool = False) -> EvaluationSample:
    """:class:`CorpusSampler` over the pipeline's shards, one shard at a time, without texts.

    Reads each shard's ``documents`` (ids and sources), ``domain_assignments`` and ``embeddings``
    index; at the end, the embeddings of the sampled training-pool documents, shard by shard. Memory
    holds one shard's columns and the samples, whatever the number of shards.

    Parameters
    ----------
    layout : gem_assets.config.Layout
        Where the pipeline's artifacts live.
    keys : sequence of str
        Shard keys.
    holdout, seed, max_target_documents, max_train_documents
        See :class:`CorpusSampler`.

    Raises
    ------
    FileNotFoundError
        When a shard's documents, embeddings or assignments are missing, or there is no shard.
    """
    from tqdm.auto import tqdm

    from . import artifacts

    keys = list(keys)
    if not keys:
        raise FileNotFoundError("no shard to evaluate")
    sampler = CorpusSampler(holdout, seed, max_target_documents, max_train_documents)
    for key in tqdm(keys, desc="evaluation sample", unit="shard", disable=not progress, mininterval=1.0):
        sampler.offer(_shard_frame(layout, key))

    def vectors_of(rows: pl.DataFrame) -> np.ndarray:
        if rows.height == 0:
            return np.zeros((0, 0), np.float32)
        out, dim = None, None
        order = rows.with_row_index("pos")
        for (shard,), part in order.group_by("shard", maintain_order=True):
            vectors = np.asarray(artifacts.read_embeddings(layout, shard)[0], dtype=np.float32)
            if out is None:
                dim = vectors.shape[1]
                out = np.empty((rows.height, dim), np.float32)
            out[part["pos"].to_numpy()] = vectors[part["vec"].to_numpy()]
        return out

    return sampler.sample(vectors_of)


def _non_text_columns(layout, key: str) -> list[str]:
    """The documents file's ``id`` and ``source`` columns (those it has), from its schema."""
    import pyarrow.parquet as pq

    from . import storage

    with storage.open_binary(layout.documents_path(key)) as f:
        names = pq.ParquetFile(f).schema_arrow.names
    return [c for c in ("id", "source") if c in names]


def read_texts(layout, rows: pl.DataFrame, batch_rows: int = 8192) -> list[str]:
    """The texts of the given documents (``shard`` and ``id`` columns), in that order, read shard by
    shard and batch by batch from the ``documents`` files (:func:`gem_assets.lib.streaming.read_texts`)."""
    from .streaming import read_texts as _read

    return _read(layout.documents_path, rows, batch_rows=batch_rows)


def capped_sample(idx: np.ndarray, keys: Sequence[str], cap: int | None, seed: int, purpose: str) -> np.ndarray:
    """:func:`gem_assets.lib.sampling.bottom_k_positions` in the evaluation's namespace (``evaluation/<purpose>``)."""
    return bottom_k_positions(idx, keys, cap, seed, f"evaluation/{purpose}")


@dataclass
class CorpusEvaluation:
    """What :func:`evaluate_corpus` produced: the experiment, its tables and the split counts."""

    result: ExperimentResult
    table: pl.DataFrame
    differences: pl.DataFrame
    counts: dict
    bucket_counts: dict


def evaluate_corpus(
    sample: EvaluationSample,
    sample_vectors: np.ndarray,
    k: int,
    config: EvaluationConfig,
    *,
    select: float,
    use_source: bool,
    kmeans: Mapping[str, Any] | None = None,
    given_weights: Mapping | None = None,
    backend: MixingBackend | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    texts: Callable[[pl.DataFrame], Sequence[str]] | None = None,
) -> CorpusEvaluation:
    """The whole evaluation on the documents :func:`sample_corpus` (or :func:`sample_frame`) drew.

    1. The target set: the held-out documents (:func:`holdout_split`: a seeded hash of each key),
       a seeded uniform sample of at most the sampler's ``max_target_documents`` of them.
    2. The training pool: the other documents that have a GEM domain and an embedding (k-means
       needs one), capped the same way at ``max_train_documents``; ``select`` of it is set aside
       for RegMix's weight choice, the rest are the fit documents.
    3. Bucketizations of the fit documents: the source labels (``use_source``), Euclidean
       k-means with K clusters fitted on ``sample_vectors`` (the teacher sample, as GEM
       was) with each document at its nearest centroid, and GEM's domains.
    4. :func:`run_experiment`, :func:`summarize`, :func:`paired_differences` against GEM.

    Parameters
    ----------
    sample : EvaluationSample
        From :func:`sample_corpus` or :func:`sample_frame`.
    sample_vectors : ndarray (n, d)
        The teacher sample's embeddings.
    k : int
        GEM's number of domains (k-means gets the same).
    config : EvaluationConfig
        Models, budgets, seeds.
    select : float
        Fraction of the training pool set aside for the weight choice.
    use_source : bool
        Whether the source labels are a bucketization (and the target set is scored per label).
    kmeans : mapping, optional
        ``max_iter``, ``tol``, ``n_init`` of k-means.
    given_weights, backend, progress, log
        See :func:`run_experiment`.
    texts : callable, optional
        ``texts(rows)`` -> the texts of the documents of ``rows`` (a frame of ``shard`` and ``id``),
        e.g. ``lambda rows: read_texts(layout, rows)``; required when the sample's frame has no
        ``text`` column. Only the texts of the target, selection and fit documents are read.

    Returns
    -------
    CorpusEvaluation
        ``counts``: ``documents`` = ``target`` + ``select`` + ``fit`` + ``unusable`` + ``capped``.

    Raises
    ------
    ValueError
        When no document is held out, fewer than 2 training documents are usable, or
        ``use_source`` is set and no document has a source label.
    """
    from .allocator import release_memory
    from .bucketize import from_domains, from_labels, kmeans_buckets

    release_memory()  # a long-lived process (make run) starts the stage with what earlier ones freed returned
    k = check_int(k, "k", low=2)
    frame, vectors, c = sample.frame, sample.vectors, sample.counts
    if "text" not in frame.columns and texts is None:
        raise ValueError("the sample has no 'text' column: pass texts= (e.g. lambda rows: read_texts(layout, rows))")
    if c["held_out"] == 0:
        raise ValueError(f"no document of {c['documents']} was held out as a target document: the corpus is too "
                         "small for the holdout fraction (add documents or raise the evaluation's holdout)")
    is_target = frame["target"].to_numpy()
    target_idx, pool = np.flatnonzero(is_target), np.flatnonzero(~is_target)
    capped = int(c["held_out"] - c["target"] + c["pool_available"] - c["pool"])
    if pool.size < 2:
        raise ValueError(f"only {pool.size} training document(s) have both a GEM domain and an embedding; the "
                         "evaluation needs at least 2 (embed more documents: GEM_EMBED_CAP)")
    sel = select_split(frame["key"].gather(pool), select, config.seed)
    fit, chosen = pool[~sel], pool[sel]
    if use_source and c["with_source"] == 0:
        raise ValueError("use_source is set but no document has a source label")
    if "text" in frame.columns:
        def read(idx):
            return frame["text"].gather(idx).to_list()
    else:
        def read(idx):
            return list(texts(frame.select("shard", "id").gather(idx)))
    fit_texts = read(fit)
    buckets = []
    if use_source:
        buckets.append(from_labels("source", frame["source"].gather(fit).to_list()))
    km = dict(kmeans or {})
    kb, _ = kmeans_buckets(sample_vectors, vectors[frame["vec"].gather(fit).to_numpy()], k, seed=config.seed,
                           max_iter=int(km.get("max_iter", 100)), tol=float(km.get("tol", 1e-6)),
                           n_init=int(km.get("n_init", 1)), device=config.device)
    buckets.append(kb)
    buckets.append(from_domains("gem", frame["gem"].gather(fit).to_numpy(), k))
    target_labels = frame["source"].gather(target_idx).to_list() if use_source else None
    result = run_experiment(fit_texts, buckets, read(chosen), read(target_idx), config,
                            target_labels=target_labels, given_weights=given_weights, backend=backend,
                            progress=progress, log=log)
    del fit_texts
    release_memory()
    table = summarize(result.runs, config.confidence)
    differences = paired_differences(result.runs, "gem", confidence=config.confidence)
    counts = {"documents": c["documents"], "target": int(target_idx.size), "select": int(chosen.size),
              "fit": int(fit.size), "unusable": c["unusable"], "capped": capped}
    bucket_counts = {b.name: dict(zip(b.keys(), b.counts().tolist())) for b in buckets}
    return CorpusEvaluation(result=result, table=table, differences=differences, counts=counts,
                            bucket_counts=bucket_counts)


def report_markdown(ev: CorpusEvaluation, config: EvaluationConfig, *, title: str = "Mixture evaluation") -> str:
    """``results.md``: the table, the paired differences against GEM, and what was run."""
    res, c = ev.result, ev.counts
    pct = f"{config.confidence:.0%}"
    tokens = int(res.runs["tokens"].max())
    lines = [f"# {title}", "",
             f"Held-out bits per byte (lower is better) of target models trained on each mixture; mean and {pct} "
             f"Student-t interval over {len(config.seeds)} seeds. Bold: the best bucketization of each mixer.", "",
             results_markdown(ev.table, confidence=config.confidence), ""]
    if ev.differences.height:
        lines += [f"GEM minus the other bucketization, same mixer, paired by seed (negative: GEM better), {pct} "
                  "interval:", "",
                  "| mixer | versus | seeds | GEM − other (bpb) | interval |", "|---|---|---|---|---|"]
        for r in ev.differences.iter_rows(named=True):
            lines.append(f"| {r['mixer']} | {r['versus']} | {r['seeds']} | {r['difference']:+.4f} | "
                         f"[{r['low']:+.4f}, {r['high']:+.4f}] |")
        lines.append("")
    lines += ["Setup:", "",
              f"- documents: {c['documents']} = {c['target']} held-out target + {c['select']} weight-selection + "
              f"{c['fit']} training + {c['unusable']} without an embedding or GEM domain (not used)"
              + (f" + {c['capped']} left out by the memory caps (target set / training pool)" if c.get("capped") else ""),
              "- evaluated streams (bytes): " + ", ".join(f"{k} {v}" for k, v in res.stream_bytes.items())
              + (f"; at most {config.max_eval_tokens} bytes of each" if config.max_eval_tokens else ""),
              f"- target models: {config.params()['target']}, {config.steps} steps x batch {config.batch_size} "
              f"= {tokens} training bytes each, seeds {list(config.seeds)}",
              f"- proxies (DoReMi, RegMix): {config.params()['proxy']}; DoReMi {config.doremi_steps} steps; "
              f"RegMix {config.regmix_runs} runs x {config.regmix_steps} steps",
              "- weights: " + "; ".join(f"{b}: " + ", ".join(f"{m} {s}" for m, s in by.items())
                                       for b, by in res.weight_sources.items()),
              f"- wall time: weights {res.seconds.get('weights', 0.0):.1f} s, target models "
              f"{res.seconds.get('target_models', 0.0):.1f} s"]
    return "\n".join(lines) + "\n"
