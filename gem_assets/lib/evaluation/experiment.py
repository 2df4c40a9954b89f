"""The mixture evaluation: do GEM domains make better mixtures than other bucketizations?

The experiment, for a corpus whose documents each carry one bucket per bucketization (source
labels, Euclidean k-means, GEM):

1. :func:`~gem_assets.lib.evaluation.splits.holdout_split` holds out a seeded document-level target set of the whole corpus
   *first*: each document by a seeded hash of its key, so the decision needs no other document
   (one streaming pass, :class:`~gem_assets.lib.evaluation.corpus_sample.CorpusSampler`) and a document keeps it when shards are added.
   The target set is never trained on and never used to choose weights, and it is the same
   documents for every bucketization.
2. :func:`~gem_assets.lib.evaluation.splits.select_split` cuts the remaining (training) documents once more, the same way for
   every bucketization: the *fit* documents are the pool every model reads, the *select*
   documents are the sets RegMix minimizes (never the target set).
3. Targets: (a) ``all``, the held-out documents of the whole corpus; (b) each source label in
   turn, its held-out documents, RegMix choosing on its selection documents. In (b) the source
   bucketization is an oracle upper bound; GEM against k-means is the question.
4. For every bucketization and mixer (natural byte shares, uniform, DoReMi, RegMix) the weights
   are computed (:func:`~gem_assets.lib.evaluation.backends.mixer_weights`), then for every seed a target model trains
   on a fresh draw of documents of that mixture at one token budget, below the pool's size
   (:func:`run_experiment`; byte n-grams on a CPU, transformers on a GPU), and its bits per byte
   are measured on the targets.
5. :mod:`~gem_assets.lib.evaluation.statistics`: :func:`summarize` gives the mean and the two-sided Student-t interval over seeds
   (:func:`t_interval`); :func:`paired_differences` compares each bucketization with GEM under
   the same mixer and target, seed by seed (a seed draws the same document priorities for every
   bucketization); :mod:`~gem_assets.lib.evaluation.reports` makes the tables, the picture and the report.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import polars as pl

from gem_assets.lib.evaluation.bucketize import Bucketization
from gem_assets.lib.evaluation.backends import MixerSettings
from gem_assets.lib.evaluation.corpus_sample import EvaluationSample
from gem_assets.lib.evaluation.splits import check_fraction, select_split
from gem_assets.lib.evaluation.statistics import ALL, MEAN_OF_SOURCES, paired_differences, summarize
from gem_assets.lib.util.checks import check_float, check_int

__all__ = ["MIXERS", "EvaluationConfig", "ExperimentResult", "run_experiment", "weights_json", "CorpusEvaluation",
           "evaluate_corpus"]

#: The mixers compared, in table order.
MIXERS = ("natural", "uniform", "doremi", "regmix")


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
        How DoReMi's and RegMix's weights are computed (:mod:`~gem_assets.lib.evaluation.backends`).
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
        check_fraction(self.valid_fraction, "DoReMi validation")
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


def weights_json(result: ExperimentResult) -> str:
    """The weights of every bucketization, mixer and target, and the domains' sizes, as JSON text."""
    return json.dumps({"weights": result.weights, "domain_documents": result.domains}, indent=2, sort_keys=True)


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


