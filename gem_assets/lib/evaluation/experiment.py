"""The mixture evaluation: do GEM domains make better mixtures than other bucketizations?

The experiment, for a corpus whose documents each carry one bucket per bucketization (source
labels, Euclidean k-means, GEM):

1. :func:`holdout_split` holds out a seeded document-level target set of the whole corpus
   *first*: each document by a seeded hash of its key, so the decision needs no other document
   (one streaming pass, :class:`CorpusSampler`) and a document keeps it when shards are added.
   The target set is never trained on and never used to choose weights, and it is the same
   documents for every bucketization.
2. :func:`select_split` cuts the remaining (training) documents once more, the same way for
   every bucketization: the *fit* documents are the pool every model reads, the *select*
   documents are the sets RegMix minimizes (never the target set).
3. Targets: (a) ``all``, the held-out documents of the whole corpus; (b) each source label in
   turn, its held-out documents, RegMix choosing on its selection documents. In (b) the source
   bucketization is an oracle upper bound; GEM against k-means is the question.
4. For every bucketization and mixer (natural byte shares, uniform, DoReMi, RegMix) the weights
   are computed (``lib.eval_backends.mixer_weights``), then for every seed a target model trains
   on a fresh draw of documents of that mixture at one token budget, below the pool's size
   (:func:`run_experiment`; byte n-grams on a CPU, transformers on a GPU), and its bits per byte
   are measured on the targets.
5. :func:`summarize` gives the mean and the two-sided Student-t interval over seeds
   (:func:`t_interval`); :func:`paired_differences` compares each bucketization with GEM under
   the same mixer and target, seed by seed (a seed draws the same document priorities for every
   bucketization); :func:`results_markdown`, :func:`differences_markdown` and :func:`bpb_chart`
   make the tables and the picture.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import polars as pl

from gem_assets.lib.util.checks import check_float, check_int
from gem_assets.lib.evaluation.bucketize import MISSING_LABEL, Bucketization
from gem_assets.lib.evaluation.backends import MixerSettings
from gem_assets.lib.mixing.sampling import BottomK, bottom_k_positions, check_cap, key_priorities, rng_for

__all__ = [
    "MIXERS",
    "ALL",
    "MEAN_OF_SOURCES",
    "EvaluationConfig",
    "ExperimentResult",
    "holdout_split",
    "select_split",
    "CorpusSampler",
    "EvaluationSample",
    "sample_frame",
    "sample_corpus",
    "t_interval",
    "differences_markdown",
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
#: Target (a): the held-out documents of the whole corpus.
ALL = "all"
#: The mean over the source targets of setting (b), per seed.
MEAN_OF_SOURCES = "mean_of_sources"


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
    Python's code-point comparison does), so no Python string per document is held (a
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

    Document ``key`` is held out when its priority :func:`gem_assets.lib.mixing.sampling.key_priority`
    ``(seed, "evaluation/holdout", key)``, a uniform 64-bit number, is below ``fraction * 2**64``:
    a Bernoulli(``fraction``) draw per document that needs no other document. So the split is one
    streaming pass with no per-document state (:class:`CorpusSampler`; a permutation of all keys
    took ~36 bytes a document), and a document's side does not change when shards are
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


# --------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class EvaluationConfig:
    """What one evaluation runs.

    Parameters
    ----------
    budget_tokens : int
        Bytes every target model trains on: the same for every bucketization, mixer and seed, and
        below the training pool's size so that the mixture decides what is read.
    seeds : tuple of int
        Seeds of the target models (at least 2; each redraws the documents of every mixture).
    mixing : MixerSettings
        How DoReMi's and RegMix's weights are computed (``lib.eval_backends``).
    mixers : tuple of str
        A subset of :data:`MIXERS`, in table order.
    backend : {"ngram", "transformer"}
        The target models: byte n-grams of ``order`` (CPU) or transformers (``transformer``
        settings: ``config``, ``steps``, ``batch_size``, ``lr``, ``device``, ``max_eval_tokens``).
    order : int
        n-gram order of the target models.
    max_epochs : float
        No domain is read more than this many times by a target model.
    valid_fraction : float
        Share of each domain's training documents DoReMi measures excess losses on.
    confidence : float
        Level of the intervals.
    seed : int
        Seed of the weight computations and of the DoReMi split.
    transformer : dict, optional
    device : str
        Where k-means runs (``"auto"``, ``"cpu"``, ``"cuda"``).
    """

    budget_tokens: int
    seeds: tuple[int, ...] = tuple(range(10))
    mixing: MixerSettings = field(default_factory=MixerSettings)
    mixers: tuple[str, ...] = MIXERS
    backend: str = "ngram"
    order: int = 5
    max_epochs: float = 4.0
    valid_fraction: float = 0.1
    confidence: float = 0.95
    seed: int = 0
    transformer: Any = None
    device: str = "auto"

    def __post_init__(self) -> None:
        check_int(self.budget_tokens, "budget_tokens", low=1)
        seeds = tuple(int(check_int(s, "seed")) for s in self.seeds)
        if len(seeds) < 2 or len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must hold at least 2 distinct seeds (an interval needs them), got {self.seeds}")
        object.__setattr__(self, "seeds", seeds)
        bad = [m for m in self.mixers if m not in MIXERS]
        if bad or not self.mixers or len(set(self.mixers)) != len(self.mixers):
            raise ValueError(f"mixers must be distinct names from {MIXERS}, got {self.mixers}")
        if self.backend not in ("ngram", "transformer"):
            raise ValueError(f"backend must be 'ngram' or 'transformer', got {self.backend!r}")
        if self.backend == "transformer" and not self.transformer:
            raise ValueError("backend='transformer' needs the target models' settings (transformer=...)")
        check_float(self.max_epochs, "max_epochs", low=0.0, strict=True)
        _check_fraction(self.valid_fraction, "DoReMi validation")
        t = check_float(self.confidence, "confidence", low=0.0, strict=True)
        if t >= 1.0:
            raise ValueError(f"confidence must be in (0, 1), got {self.confidence}")

    def params(self) -> dict:
        """The configuration as JSON-serialisable parameters (for tracking and reports)."""
        mix = {k: getattr(self.mixing, k) for k in ("proxy", "proxy_tokens", "regmix_runs", "doremi_rounds",
                                                     "budget_tokens", "order", "max_epochs", "seed")}
        return {"budget_tokens": self.budget_tokens, "seeds": list(self.seeds), "mixers": list(self.mixers),
                "backend": self.backend, "order": self.order, "max_epochs": self.max_epochs,
                "valid_fraction": self.valid_fraction, "confidence": self.confidence, "seed": self.seed,
                "mixing": mix}


# --------------------------------------------------------------------------- the experiment
@dataclass
class ExperimentResult:
    """Everything :func:`run_experiment` measured.

    Attributes
    ----------
    runs : polars.DataFrame
        One row per (bucketization, mixer, target, seed): ``bucketization``, ``mixer``,
        ``target``, ``seed``, ``domains``, ``tokens``, ``unique_documents``, ``train_seconds``
        and ``bpb`` (the target model's bits per byte on that target).
    weights : dict
        ``{bucketization: {mixer: {target: {domain key: weight}}}}``.
    domains : dict
        ``{bucketization: {domain key: training documents}}``.
    targets : list of str
        ``"all"`` (held-out documents of the whole corpus) then one per source label.
    target_bytes : dict
        Bytes of each target stream.
    seconds : dict
        Wall time of the weight computations and of the target models.
    max_document_tokens : int
        Tokens of the training pool's longest document (how far below the budget a sample of
        whole documents can fall, per domain).
    """

    runs: pl.DataFrame
    weights: dict
    domains: dict
    targets: list[str]
    target_bytes: dict[str, int]
    seconds: dict = field(default_factory=dict)
    max_document_tokens: int = 0


def _check_inputs(pool_texts, bucketizations, target_texts, target_labels, select_texts, select_labels) -> None:
    if not bucketizations:
        raise ValueError("pass at least one bucketization")
    names = [b.name for b in bucketizations]
    if len(set(names)) != len(names):
        raise ValueError(f"bucketization names must be distinct, got {names}")
    if not pool_texts:
        raise ValueError("there is no training document")
    for b in bucketizations:
        if b.labels.size != len(pool_texts):
            raise ValueError(f"bucketization {b.name!r} labels {b.labels.size} documents but there are "
                             f"{len(pool_texts)} training documents")
    if not target_texts:
        raise ValueError("the target set is empty: hold out at least one document")
    if target_labels is not None and len(target_labels) != len(target_texts):
        raise ValueError(f"target_labels has {len(target_labels)} entries for {len(target_texts)} target documents")
    if select_labels is not None and len(select_labels) != len(select_texts):
        raise ValueError(f"select_labels has {len(select_labels)} entries for {len(select_texts)} selection documents")


def _targets(target_texts, target_labels, select_texts, select_labels) -> tuple[dict, dict]:
    """``{target: documents}`` and ``{target: selection documents}``: ``all``, then each source label
    that has both target and selection documents (leave-one-source-out targets)."""
    targets, select = {ALL: list(target_texts)}, {ALL: list(select_texts)}
    if target_labels is not None and select_labels is not None:
        for label in sorted({str(v) for v in target_labels if v is not None}):
            if label in (ALL, MEAN_OF_SOURCES):
                raise ValueError(f"a source label may not be named {label!r}")
            t = [x for x, v in zip(target_texts, target_labels) if v is not None and str(v) == label]
            s = [x for x, v in zip(select_texts, select_labels) if v is not None and str(v) == label]
            if t and s:
                targets[label], select[label] = t, s
    return targets, select


def run_experiment(
    pool_texts: Sequence[str],
    bucketizations: Sequence[Bucketization],
    select_texts: Sequence[str],
    target_texts: Sequence[str],
    config: EvaluationConfig,
    *,
    target_labels: Sequence | None = None,
    select_labels: Sequence | None = None,
    targets_backend=None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> ExperimentResult:
    """Train target models on every (bucketization, mixer, target) mixture, seed by seed.

    Parameters
    ----------
    pool_texts : sequence of str
        The training pool: the documents target models (and the mixers' proxies) read.
    bucketizations : sequence of Bucketization
        Each labels every document of ``pool_texts`` (same order).
    select_texts : sequence of str
        Weight-selection documents: RegMix minimizes the loss on them (on those of the target's
        source, for a source target). Never the target set, never trained on.
    target_texts : sequence of str
        The held-out target documents (never trained on, never used to choose weights).
    config : EvaluationConfig
    target_labels, select_labels : sequence, optional
        Source label of each target and selection document: each label becomes a target of its
        own (its target documents, RegMix choosing on its selection documents).
    targets_backend : object, optional
        ``fit(multiplicity, seed)`` and ``bpb(model, target)`` (default from ``config.backend``:
        :class:`~gem_assets.lib.evaluation.backends.NGramTargets` or ``TransformerTargets``).
    progress : bool
    log : callable, optional

    Returns
    -------
    ExperimentResult
    """
    from tqdm.auto import tqdm

    from gem_assets.lib.evaluation.backends import NGramTargets, TransformerTargets, mixer_weights, sample_documents
    from gem_assets.lib.mixing.streams import domain_streams

    _check_inputs(pool_texts, bucketizations, target_texts, target_labels, select_texts, select_labels)
    if not select_texts and "regmix" in config.mixers:
        raise ValueError("RegMix needs a non-empty selection set (select_texts) to choose weights on")
    say = log or (lambda _msg: None)
    pool_texts = list(pool_texts)
    targets, selects = _targets(target_texts, target_labels, select_texts, select_labels)
    if targets_backend is None:
        if config.backend == "ngram":
            targets_backend = NGramTargets(pool_texts, targets, order=config.order)
        else:
            tr = config.transformer
            targets_backend = TransformerTargets(pool_texts, targets, tr["config"], tr["steps"], tr["batch_size"],
                                                 tr.get("lr", 3e-3), tr.get("device", "auto"),
                                                 tr.get("max_eval_tokens"))
    doc_tokens = targets_backend.doc_tokens
    select_streams = {t: _stream(v) for t, v in selects.items()}

    weights: dict = {}
    domains: dict = {}
    vectors: dict = {}
    t_weights = time.perf_counter()
    for b in bucketizations:
        keys = b.keys()
        train, valid = domain_streams(pool_texts, b.labels, keys, config.valid_fraction, config.seed)
        if not train:
            raise ValueError(f"bucketization {b.name!r} has no training byte")
        counts = b.counts()
        domains[b.name] = {k: int(c) for k, c in zip(keys, counts) if c > 0}
        weights[b.name], vectors[b.name] = {}, {}
        for mixer in config.mixers:
            by_target = mixer_weights(mixer, train, valid, select_streams, config.mixing, log=say)
            weights[b.name][mixer] = {t: _normalized(by_target[t], f"{b.name}/{mixer}/{t}") for t in targets}
            vectors[b.name][mixer] = {t: np.array([w.get(k, 0.0) for k in keys]) for t, w in
                                      weights[b.name][mixer].items()}
        say(f"{b.name}: weights of {len(config.mixers)} mixers computed")
    weight_seconds = time.perf_counter() - t_weights

    rows = []
    t_models = time.perf_counter()
    grid = [(seed, b, m) for seed in config.seeds for b in bucketizations for m in config.mixers]
    for seed, b, mixer in tqdm(grid, desc="target models", disable=not progress):
        priority = np.random.default_rng([int(seed), 20231]).random(len(pool_texts))   # shared by b and mixer
        # target-free mixers: one model scored on every target; RegMix: one model per target
        groups = [(t, [t]) for t in targets] if mixer == "regmix" else [(ALL, list(targets))]
        for wt, scored in groups:
            t0 = time.perf_counter()
            mult = sample_documents(doc_tokens, b.labels, vectors[b.name][mixer][wt], config.budget_tokens,
                                    config.max_epochs, priority)
            model = targets_backend.fit(mult, int(seed))
            seconds = time.perf_counter() - t0
            for t in scored:
                rows.append({"bucketization": b.name, "mixer": mixer, "target": t, "seed": int(seed),
                             "domains": len(domains[b.name]), "tokens": int((mult * doc_tokens).sum()),
                             "unique_documents": int((mult > 0).sum()), "train_seconds": seconds,
                             "bpb": float(targets_backend.bpb(model, t))})
    runs = pl.DataFrame(rows)
    bad = runs.filter(~pl.col("bpb").is_finite() | (pl.col("bpb") <= 0))
    if bad.height:
        raise ValueError(f"bits per byte must be finite and positive, got {bad.head(3).to_dicts()}")
    return ExperimentResult(runs=runs, weights=weights, domains=domains, targets=list(targets),
                            target_bytes=dict(targets_backend.target_bytes),
                            seconds={"weights": weight_seconds, "target_models": time.perf_counter() - t_models},
                            max_document_tokens=int(doc_tokens.max()))


def _stream(texts: Sequence[str]) -> np.ndarray:
    from gem_assets.lib.evaluation.backends import document_bytes

    return np.frombuffer(b"\x00".join(document_bytes(texts)) + b"\x00", dtype=np.uint8).copy()


def _normalized(w: Mapping[str, float], what: str) -> dict[str, float]:
    values = np.asarray([float(v) for v in w.values()], dtype=np.float64)
    if values.size == 0 or not np.all(np.isfinite(values)) or np.any(values < 0) or values.sum() <= 0:
        raise ValueError(f"{what}: mixture weights must be finite, non-negative and not all zero, got {dict(w)}")
    return {k: float(v) / float(values.sum()) for k, v in zip(w, values)}


# --------------------------------------------------------------------------- tables
def _with_mean_of_sources(runs: pl.DataFrame) -> pl.DataFrame:
    """``runs`` plus, when there are source targets, their mean per (bucketization, mixer, seed)."""
    sources = runs.filter(pl.col("target") != ALL)
    if sources.height == 0:
        return runs
    n = sources["target"].n_unique()
    mean = (sources.group_by("bucketization", "mixer", "seed", maintain_order=True)
            .agg(pl.col("domains").first(), pl.col("tokens").first(), pl.col("unique_documents").first(),
                 pl.col("train_seconds").sum(), pl.col("bpb").mean(), pl.len().alias("_n"))
            .filter(pl.col("_n") == n).drop("_n")
            .with_columns(pl.lit(MEAN_OF_SOURCES).alias("target")))
    return pl.concat([runs, mean.select(runs.columns)])


def summarize(runs: pl.DataFrame, confidence: float = 0.95) -> pl.DataFrame:
    """Mean and t-interval over seeds of the bits per byte, per (bucketization, mixer, target).

    Parameters
    ----------
    runs : polars.DataFrame
        :attr:`ExperimentResult.runs`.
    confidence : float

    Returns
    -------
    polars.DataFrame
        ``target``, ``bucketization``, ``mixer``, ``seeds``, ``domains``, ``tokens``,
        ``bpb_target`` (mean), ``bpb_target_low``, ``bpb_target_high``,
        ``bpb_target_half_width``; with source targets, also their mean per seed as target
        :data:`MEAN_OF_SOURCES`.
    """
    if runs.height == 0 or "bpb" not in runs.columns:
        raise ValueError("runs has no bpb column or no row")
    runs = _with_mean_of_sources(runs)
    rows = []
    for (target, name, mixer), part in runs.group_by("target", "bucketization", "mixer", maintain_order=True):
        ci = t_interval(part["bpb"].to_numpy(), confidence)
        rows.append({"target": target, "bucketization": name, "mixer": mixer, "seeds": part.height,
                     "domains": int(part["domains"][0]), "tokens": int(part["tokens"].max()),
                     "bpb_target": ci["mean"], "bpb_target_low": ci["low"], "bpb_target_high": ci["high"],
                     "bpb_target_half_width": ci["half_width"]})
    return pl.DataFrame(rows)


def paired_differences(runs: pl.DataFrame, reference: str, confidence: float = 0.95) -> pl.DataFrame:
    """``reference`` minus each other bucketization, same mixer, target and seed, with a t-interval.

    Negative: the reference bucketization gives the lower (better) bits per byte. A seed draws
    the same document priorities for every bucketization, so pairing by seed removes the draw's
    variance both share.

    Returns
    -------
    polars.DataFrame
        ``target``, ``mixer``, ``versus``, ``seeds``, ``difference``, ``low``, ``high``,
        ``half_width``; empty when the reference is the only bucketization.
    """
    if reference not in set(runs["bucketization"].to_list()):
        raise ValueError(f"reference bucketization {reference!r} is not in the runs")
    runs = _with_mean_of_sources(runs)
    ref = runs.filter(pl.col("bucketization") == reference).select("target", "mixer", "seed", pl.col("bpb").alias("_ref"))
    rows = []
    others = [b for b in runs["bucketization"].unique(maintain_order=True).to_list() if b != reference]
    for other in others:
        part = runs.filter(pl.col("bucketization") == other).select("target", "mixer", "seed", "bpb")
        joined = ref.join(part, on=["target", "mixer", "seed"], how="inner")
        for (target, mixer), d in joined.group_by("target", "mixer", maintain_order=True):
            diff = (d["_ref"] - d["bpb"]).to_numpy()
            if diff.size < 2:
                continue
            ci = t_interval(diff, confidence)
            rows.append({"target": target, "mixer": mixer, "versus": other, "seeds": int(diff.size),
                         "difference": ci["mean"], "low": ci["low"], "high": ci["high"],
                         "half_width": ci["half_width"]})
    schema = {"target": pl.String, "mixer": pl.String, "versus": pl.String, "seeds": pl.Int64,
              "difference": pl.Float64, "low": pl.Float64, "high": pl.Float64, "half_width": pl.Float64}
    return pl.DataFrame(rows, schema=schema)


def results_markdown(table: pl.DataFrame, *, confidence: float = 0.95, digits: int = 4) -> str:
    """The summary table as Markdown, one block of rows per target; the best of each (target, mixer) in bold."""
    need = {"target", "bucketization", "mixer", "bpb_target", "bpb_target_low", "bpb_target_high",
            "bpb_target_half_width"}
    if need - set(table.columns):
        raise ValueError(f"the table lacks the column(s) {sorted(need - set(table.columns))}")
    best = {k: float(g["bpb_target"].min()) for k, g in table.group_by("target", "mixer")}
    pct = f"{confidence:.0%}"
    head = ["target", "bucketization", "mixer", "domains", "seeds", f"bpb (mean ± {pct} half-width)", f"{pct} interval"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    f = f"{{:.{digits}f}}"
    for r in table.iter_rows(named=True):
        mean = f.format(r["bpb_target"])
        if r["bpb_target"] == best[(r["target"], r["mixer"])]:
            mean = f"**{mean}**"
        lines.append("| " + " | ".join([r["target"], r["bucketization"], r["mixer"], str(r["domains"]), str(r["seeds"]),
                                        f"{mean} ± {f.format(r['bpb_target_half_width'])}",
                                        f"[{f.format(r['bpb_target_low'])}, {f.format(r['bpb_target_high'])}]"]) + " |")
    return "\n".join(lines)


def differences_markdown(differences: pl.DataFrame, *, reference: str = "gem", confidence: float = 0.95) -> str:
    """The paired differences as Markdown: one row per (target, mixer, other bucketization)."""
    pct = f"{confidence:.0%}"
    lines = [f"| target | mixer | versus | seeds | {reference} − other (bpb) | {pct} interval | half-width | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for r in differences.iter_rows(named=True):
        verdict = (f"{reference} better" if r["high"] < 0 else f"{r['versus']} better" if r["low"] > 0
                   else "no difference resolved")
        lines.append(f"| {r['target']} | {r['mixer']} | {r['versus']} | {r['seeds']} | {r['difference']:+.4f} | "
                     f"[{r['low']:+.4f}, {r['high']:+.4f}] | {r['half_width']:.4f} | {verdict} |")
    return "\n".join(lines)


def bpb_chart(table: pl.DataFrame, *, confidence: float = 0.95, targets: Sequence[str] | None = None,
              title: str | None = None) -> bytes:
    """Bits per byte (mean and interval) by mixer, one marker colour per bucketization, a panel per target.

    Returns
    -------
    bytes
        PNG image.
    """
    from gem_assets.lib.util.plots import _figure, _png

    have = table["target"].unique(maintain_order=True).to_list()
    targets = [t for t in (targets or [t for t in (ALL, MEAN_OF_SOURCES) if t in have] or have[:1]) if t in have]
    if not targets:
        raise ValueError(f"none of the targets {targets} is in the table ({have})")
    mixers = table["mixer"].unique(maintain_order=True).to_list()
    names = table["bucketization"].unique(maintain_order=True).to_list()
    fig = _figure(max(4.5, 1.3 * len(mixers) + 1.5) * len(targets), 3.2)
    colors = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860"]
    width = 0.7 / max(1, len(names))
    for i, target in enumerate(targets):
        ax = fig.add_subplot(1, len(targets), i + 1)
        for j, name in enumerate(names):
            part = table.filter((pl.col("bucketization") == name) & (pl.col("target") == target))
            x = [mixers.index(m) + (j - (len(names) - 1) / 2) * width for m in part["mixer"].to_list()]
            y = part["bpb_target"].to_numpy()
            err = [y - part["bpb_target_low"].to_numpy(), part["bpb_target_high"].to_numpy() - y]
            ax.errorbar(x, y, yerr=err, fmt="o", ms=5, capsize=3, color=colors[j % len(colors)], label=name)
        ax.set_xticks(range(len(mixers)))
        ax.set_xticklabels(mixers)
        ax.set_xlabel("mixer")
        ax.set_ylabel("bits per byte (lower is better)")
        ax.set_title(f"target: {target}", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        if i == 0:
            ax.legend(fontsize=7, title="bucketization", title_fontsize=7)
    fig.suptitle(title or f"held-out bits per byte, mean and {confidence:.0%} t-interval over seeds", fontsize=9)
    return _png(fig)


def weights_json(result: ExperimentResult) -> str:
    """The weights of every bucketization, mixer and target, and the domains' sizes, as JSON text."""
    return json.dumps({"weights": result.weights, "domain_documents": result.domains}, indent=2, sort_keys=True)


# --------------------------------------------------------------------------- the corpus end to end
#: The columns of a batch offered to :class:`CorpusSampler` (and of :attr:`EvaluationSample.frame`).
SAMPLE_COLUMNS = ("key", "shard", "id", "source", "gem", "vec")


class _Kept:
    """The rows of a :class:`gem_assets.lib.mixing.sampling.BottomK` sample (all rows when ``cap`` is None)."""

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
    from gem_assets.lib.io import artifacts
    from gem_assets.lib.io import storage

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

    from gem_assets.lib.io import artifacts

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

    from gem_assets.lib.io import storage

    with storage.open_binary(layout.documents_path(key)) as f:
        names = pq.ParquetFile(f).schema_arrow.names
    return [c for c in ("id", "source") if c in names]


def read_texts(layout, rows: pl.DataFrame, batch_rows: int = 8192) -> list[str]:
    """The texts of the given documents (``shard`` and ``id`` columns), in that order, read shard by
    shard and batch by batch from the ``documents`` files (:func:`gem_assets.lib.io.streaming.read_texts`)."""
    from gem_assets.lib.io.streaming import read_texts as _read

    return _read(layout.documents_path, rows, batch_rows=batch_rows)


def capped_sample(idx: np.ndarray, keys: Sequence[str], cap: int | None, seed: int, purpose: str) -> np.ndarray:
    """:func:`gem_assets.lib.mixing.sampling.bottom_k_positions` in the evaluation's namespace (``evaluation/<purpose>``)."""
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
    targets_backend=None,
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
    4. Targets: (a) ``all``, the held-out documents; (b) with ``use_source``, each source label
       in turn (its held-out documents; RegMix chooses on its selection documents). In (b) the
       source bucketization is an oracle upper bound (it knows the target's bucket).
    5. :func:`run_experiment`, :func:`summarize`, :func:`paired_differences` against GEM.

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
    targets_backend, progress, log
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
    from gem_assets.lib.util.allocator import release_memory
    from gem_assets.lib.evaluation.bucketize import from_domains, from_labels, kmeans_buckets

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
    select_labels = frame["source"].gather(chosen).to_list() if use_source else None
    result = run_experiment(fit_texts, buckets, read(chosen), read(target_idx), config,
                            target_labels=target_labels, select_labels=select_labels,
                            targets_backend=targets_backend, progress=progress, log=log)
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
    """``results.md``: the paired differences against GEM (the answer), the table, and what was run."""
    res, c = ev.result, ev.counts
    pct = f"{config.confidence:.0%}"
    tokens = int(res.runs["tokens"].max())
    mix = config.mixing
    lines = [f"# {title}", ""]
    if ev.differences.height:
        worst = float(ev.differences.filter(pl.col("versus") == "kmeans")["half_width"].max() or float("nan"))
        lines += [f"GEM minus each other bucketization, same mixer and target, paired by seed (negative: GEM better), "
                  f"{pct} Student-t interval over {len(config.seeds)} seeds. Largest half-width of GEM − k-means: "
                  f"{worst:.4f} bits per byte.", "", differences_markdown(ev.differences, confidence=config.confidence),
                  ""]
    lines += [f"Held-out bits per byte (lower is better) of target models trained on each mixture; mean and {pct} "
              f"Student-t interval over {len(config.seeds)} seeds (each seed redraws the documents of every mixture). "
              "Bold: the best bucketization of each target and mixer. Targets: `all` = held-out documents of the "
              "whole corpus; a source name = that source's held-out documents, RegMix choosing on that source's "
              f"selection documents (the `source` bucketization is then an oracle); `{MEAN_OF_SOURCES}` = their mean.",
              "", results_markdown(ev.table, confidence=config.confidence), ""]
    lines += ["Setup:", "",
              f"- documents: {c['documents']} = {c['target']} held-out target + {c['select']} weight-selection + "
              f"{c['fit']} training + {c['unusable']} without an embedding or GEM domain (not used)"
              + (f" + {c['capped']} left out by the memory caps (target set / training pool)" if c.get("capped") else ""),
              "- target streams (bytes): " + ", ".join(f"{k} {v}" for k, v in res.target_bytes.items()),
              f"- target models: {config.backend}" + (f" order {config.order}" if config.backend == "ngram" else
                                                       f" {config.transformer.get('config')}")
              + f", {config.budget_tokens} training bytes each ({tokens} realized at most; whole documents, at most "
              f"{config.max_epochs:g} passes over a domain), seeds {list(config.seeds)}",
              f"- mixers' proxies: {mix.proxy}" + (f" order {mix.order}, {mix.proxy_tokens} bytes each" if mix.proxy == "ngram"
                                                    else "") + f"; DoReMi {mix.doremi_rounds} rounds; RegMix "
              f"{mix.regmix_runs} runs, proposal capped at {mix.max_epochs:g} epochs of the target models' budget",
              f"- wall time: weights {res.seconds.get('weights', 0.0):.1f} s, target models "
              f"{res.seconds.get('target_models', 0.0):.1f} s"]
    return "\n".join(lines) + "\n"
