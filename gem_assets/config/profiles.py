"""Profiles: the sizes of samples and fits, one table of values per ``GEM_PROFILE``.

A profile is data: :class:`Profile` declares its fields (with their defaults), :data:`PROFILES`
holds one row per name. A setting of :class:`gem_assets.config.Settings` that declares
``profile="<field>"`` falls back to that field of the selected profile when it is left unset
(:meth:`Settings.effective`).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Profile", "PROFILES"]


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
        Rounds of DoReMi on n-gram proxies (``lib.mixing.count_proxy.doremi_rounds``).
    eval_ngram_order : int
        n-gram order of the evaluation's n-gram target models and proxies.
    eval_max_epochs : float
        Epoch cap of the evaluated mixtures and of RegMix's runs and proposals.
    eval_target_config, eval_proxy_config : tuple of (name, value) pairs
        Transformer path (``GEM_PROXY=transformer``): ``lib.mixing.lm.LMConfig`` fields of the
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
        bounded lossy counter, ``lib.taxonomy.terms.BoundedDocumentFrequency``; about 130 bytes a term);
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
        Rounds of DoReMi on n-gram proxies (``lib.mixing.count_proxy.doremi_rounds``).
    mix_proxy_config : tuple of (name, value) pairs
        Transformer path (``GEM_PROXY=transformer``): ``lib.mixing.lm.LMConfig`` fields of the mixing
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
    description : str
        What the profile is for (shown with the choices of ``GEM_PROFILE``).
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
    description: str = ""


#: The profiles selectable with ``GEM_PROFILE``. ``smoke`` keeps CI fast, ``default`` embeds
#: all of the small default corpus, ``full`` is sized for a real corpus on a GPU.
PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke",
        description="tiny fits that keep CI fast",
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
        description="embeds all of the small default corpus",
        embed_cap_per_shard=None,
        teacher_sample_size=50_000,
        max_iter=100,
        tol=1e-6,
        n_init=1,
        max_chars=100_000,
    ),
    "full": Profile(
        name="full",
        description="sized for a real corpus on a GPU",
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
