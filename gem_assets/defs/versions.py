"""Code versions and data versions of the assets: what Dagster's staleness compares.

``code_version(name)`` is ``<logic>-<12 hex digits>``: the hand-bumped logic version of the
asset (:data:`LOGIC_VERSIONS`: bump it when the asset's code changes what it writes) and a hash
of the settings that determine the asset's output (:func:`behaviour_params`), read from the
``GEM_*`` environment when the code location loads. ``GEM_K=12`` thus gives ``teacher_sample``
and ``teacher_clusters`` new code versions, and the UI shows them stale.

``data_version(name, *parts)`` is what an asset returns in ``MaterializeResult(data_version=...)``:
a hash of the fingerprint of its inputs and parameters that it recorded in its files, and of
the logic versions of the asset and of everything upstream of it. Re-materializing unchanged
inputs gives the same data version, so the assets downstream stay fresh (early cutoff); a
logic bump upstream reaches them once the upstream asset is re-materialized.
"""

from __future__ import annotations

import functools
import os
from typing import Mapping

from dagster import Backoff, RetryPolicy

from gem_assets.config import Settings
from gem_assets.lib.util.hashing import fingerprint

__all__ = ["LOGIC_VERSIONS", "UPSTREAM", "PER_SHARD_ASSETS", "BAD_SHARD_POLICY_ASSETS", "behaviour_params", "code_version", "code_version_for", "data_version",
           "current_settings", "STORE_RETRY", "with_code_versions"]

#: Hand-bumped logic version of each asset: bump one when its code changes what it writes.
LOGIC_VERSIONS: dict[str, str] = {
    "shard_files": "1",
    "shard_manifest": "1",
    "documents": "2",
    "embeddings": "1",
    "teacher_sample": "1",
    "teacher_clusters": "1",
    "student_model": "1",
    "domain_assignments": "1",
    "domain_stats": "1",
    "taxonomy": "1",
    "mixture_evaluation": "2",
    "proxy_corpus": "1",
    "doremi_weights": "1",
    "regmix_runs": "1",
    "regmix_weights": "2",
    "curated_mixture": "1",
}

#: Direct upstream assets of each asset (the ``deps`` of its decorator; checked by the tests).
UPSTREAM: dict[str, tuple[str, ...]] = {
    "shard_files": (),
    "shard_manifest": (),
    "documents": ("shard_files",),
    "embeddings": ("documents",),
    "teacher_sample": ("embeddings", "shard_manifest"),
    "teacher_clusters": ("teacher_sample",),
    "student_model": ("teacher_clusters", "documents", "shard_manifest"),
    "domain_assignments": ("documents", "student_model"),
    "domain_stats": ("domain_assignments", "student_model", "shard_manifest"),
    "taxonomy": ("teacher_clusters", "domain_assignments", "embeddings", "documents", "student_model",
                 "shard_manifest"),
    "mixture_evaluation": ("domain_assignments", "teacher_sample", "student_model", "shard_manifest"),
    "proxy_corpus": ("domain_stats",),
    "doremi_weights": ("proxy_corpus",),
    "regmix_runs": ("proxy_corpus",),
    "regmix_weights": ("regmix_runs",),
    "curated_mixture": ("doremi_weights", "regmix_weights"),
}

# mixing: the parameters of each asset, by proxy kind (``auto`` is resolved on the machine that runs
# the asset, so its code version holds the parameters of both kinds)
_PROXY_KEYS = {"ngram": ("proxy", "ngram_order", "proxy_tokens", "ngram_max_grams", "seed"),
               "transformer": ("proxy", "proxy_config", "batch_size", "lr", "eval_tokens", "seed")}
_DOREMI_KEYS = {"ngram": ("doremi_rounds", "doremi_smoothing"),
                "transformer": ("doremi_steps", "doremi_step_size", "doremi_smoothing")}
_REGMIX_KEYS = {"ngram": ("regmix_runs", "max_epochs"), "transformer": ("regmix_runs", "regmix_steps", "max_epochs")}
_PROXY_CORPUS_KEYS = ("valid_fraction", "max_bytes_per_domain", "target", "max_target_documents", "source_column",
                      "seed")
_REGMIX_WEIGHTS_KEYS = ("top_k", "n_simulations", "max_epochs", "mixture_tokens", "seed")
_CURATED_KEYS = ("mixer", "mixture_tokens", "max_epochs", "rows_per_shard", "seed")


def _kinds(settings: Settings) -> tuple[str, ...]:
    return ("ngram", "transformer") if settings.proxy == "auto" else (settings.proxy,)


def _mixture_params(settings: Settings) -> dict:
    """``Settings.mixture_params()`` without resolving ``auto`` (that would import torch at load)."""
    s = settings.with_(proxy="ngram") if settings.proxy == "auto" else settings
    return {**s.mixture_params(), "proxy": settings.proxy}


def _pick(params: dict, keys) -> dict:
    return {k: params[k] for k in sorted(set(keys))}


def _embedder_params(env: Mapping[str, str]) -> dict:
    """What determines the vectors besides the documents: the model and the truncation (not the batch size)."""
    return {"model": env.get("GEM_EMBED_MODEL", "").strip() or "default",
            "max_seq_length": int(env.get("GEM_EMBED_MAX_SEQ_LENGTH", "").strip() or 256)}


#: The partitioned assets, one partition per shard: their code versions are part of ``shard_manifest``'s
#: data version, so a change to them reaches the unpartitioned assets at any number of shards.
PER_SHARD_ASSETS = ("documents", "embeddings", "domain_assignments")

#: The aggregate assets that decide which shards they read, and so read ``GEM_ON_BAD_SHARD``
#: (``defs/bad_shards``): the setting is part of their code versions.
BAD_SHARD_POLICY_ASSETS = ("teacher_sample", "student_model", "domain_stats", "taxonomy", "mixture_evaluation",
                           "proxy_corpus", "curated_mixture")


def behaviour_params(name: str, settings: Settings, env: Mapping[str, str] | None = None) -> dict:
    """The settings that determine what asset ``name`` writes (thresholds of warning checks excluded),
    and, for the assets of :data:`BAD_SHARD_POLICY_ASSETS`, whether they run while a shard is failed.

    Parameters
    ----------
    name : str
        Asset name (a key of :data:`LOGIC_VERSIONS`).
    settings : Settings
    env : mapping, optional
        Environment of the embedder variables; defaults to ``os.environ``.
    """
    params = _behaviour_params(name, settings, os.environ if env is None else env)
    if name in BAD_SHARD_POLICY_ASSETS:
        params = {**params, "on_bad_shard": settings.on_bad_shard}
    return params


def _behaviour_params(name: str, settings: Settings, env: Mapping[str, str]) -> dict:
    if name in ("shard_files", "shard_manifest", "domain_assignments", "domain_stats"):
        return {}  # no parameters: what they write follows from their inputs
    if name == "documents":
        return settings.documents_params()
    if name == "embeddings":
        return {**settings.embedding_params(), "embedder": _embedder_params(env)}
    if name in ("teacher_sample", "teacher_clusters"):
        return settings.teacher_params()  # the sample's recorded fingerprint holds all of them
    if name == "student_model":
        return settings.student_params()
    if name == "taxonomy":
        return settings.taxonomy_params()
    if name == "mixture_evaluation":
        s = settings.with_(proxy="ngram") if settings.proxy == "auto" else settings
        return {**s.evaluation_params(), "proxy": settings.proxy}
    p = _mixture_params(settings)
    kinds = _kinds(settings)
    if name == "proxy_corpus":
        return _pick(p, _PROXY_CORPUS_KEYS)
    if name == "doremi_weights":
        return _pick(p, [k for kind in kinds for k in _PROXY_KEYS[kind] + _DOREMI_KEYS[kind]])
    if name == "regmix_runs":
        return _pick(p, [k for kind in kinds for k in _PROXY_KEYS[kind] + _REGMIX_KEYS[kind]])
    if name == "regmix_weights":
        return _pick(p, _REGMIX_WEIGHTS_KEYS)
    if name == "curated_mixture":
        return _pick(p, _CURATED_KEYS)
    raise KeyError(f"no code version for unknown asset {name!r}")


def code_version_for(name: str, settings: Settings, env: Mapping[str, str] | None = None) -> str:
    """``<logic version>-<hash of the behaviour-defining settings>`` of asset ``name``."""
    return f"{LOGIC_VERSIONS[name]}-{fingerprint(name, behaviour_params(name, settings, env))[:12]}"


@functools.lru_cache(maxsize=1)
def current_settings() -> Settings:
    """The settings of the ``GEM_*`` environment, read once when the code location loads."""
    return Settings.from_env()


#: Retry policy of the assets that write to ``GEM_HOME`` (possibly an object store) or to MLflow:
#: transient failures are retried (after ``GEM_RETRY_DELAY_S``, then three times as long); deterministic
#: ones raise ``Failure(..., allow_retries=False)``.
STORE_RETRY = RetryPolicy(max_retries=2, delay=current_settings().retry_delay_s, backoff=Backoff.EXPONENTIAL)


def with_code_versions(assets, settings: Settings, env: Mapping[str, str] | None = None) -> list:
    """``assets`` with the code versions of ``settings`` (those of the definitions' ``gem`` resource).

    The decorators' code versions come from the environment when the module is first imported;
    the definitions built for a resource carry that resource's settings instead, so an in-process
    driver and a webserver loading the same code location agree on what is stale.
    """
    return [a.map_asset_specs(lambda spec: spec.replace_attributes(
        code_version=code_version_for(spec.key.to_user_string(), settings, env))) for a in assets]


def code_version(name: str) -> str:
    """The code version of asset ``name`` under the environment's settings (for ``@asset(code_version=...)``)."""
    return code_version_for(name, current_settings())


@functools.lru_cache(maxsize=None)
def _lineage(name: str) -> tuple[tuple[str, str], ...]:
    """``(asset, logic version)`` of ``name`` and of everything upstream of it, sorted."""
    seen = {name: LOGIC_VERSIONS[name]}
    todo = list(UPSTREAM[name])
    while todo:
        up = todo.pop()
        if up not in seen:
            seen[up] = LOGIC_VERSIONS[up]
            todo.extend(UPSTREAM[up])
    return tuple(sorted(seen.items()))


def data_version(name: str, *parts) -> str:
    """The data version asset ``name`` reports: a hash of ``parts`` (the fingerprint of its inputs and
    parameters that it recorded) and of the logic versions of its lineage (16 hex digits)."""
    return fingerprint("data_version", name, _lineage(name), parts)[:16]
