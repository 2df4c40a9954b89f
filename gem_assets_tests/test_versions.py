"""Dagster's versioning: code versions from the settings, data versions from what the assets wrote."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys

import pytest
from dagster import AssetKey, AssetRecordsFilter, Definitions, materialize

from conftest import make_resources
from gem_assets import config
from gem_assets.config import Settings
from gem_assets.defs import versions
from gem_assets.defs.corpus import documents
from gem_assets.defs.embeddings import embeddings
from gem_assets.defs.partitions import SHARDS
from gem_assets.defs.shards import manifest_version, observe_shards, shard_files, shard_manifest
from gem_assets.defs.student import domain_assignments, student_model
from gem_assets.defs.teacher import teacher_clusters, teacher_sample
from gem_assets.defs.versions import LOGIC_VERSIONS, PER_SHARD_ASSETS, UPSTREAM, code_version_for

ASSET_NAMES = sorted(n for n in LOGIC_VERSIONS if n not in ("shard_files", "shard_manifest"))

#: (environment change, the assets whose code version it changes); every other asset keeps its own.
ENV_CHANGES = [
    ({"GEM_K": "12"}, {"teacher_sample", "teacher_clusters"}),
    ({"GEM_BALANCE": "0.5"}, {"teacher_sample", "teacher_clusters"}),
    ({"GEM_ISOTROPY": "0"}, {"teacher_sample", "teacher_clusters"}),
    ({"GEM_SAMPLE_SIZE": "123"}, {"teacher_sample", "teacher_clusters"}),
    ({"GEM_MAX_CHARS": "777"}, {"documents", "embeddings"}),
    ({"GEM_TEXT_COLUMN": "body"}, {"documents", "embeddings"}),
    ({"GEM_SOURCE_COLUMN": "label"}, {"documents", "embeddings", "mixture_evaluation", "proxy_corpus"}),
    ({"GEM_EMBED_CAP": "5"}, {"embeddings"}),
    ({"GEM_EMBED_MODEL": "/models/other"}, {"embeddings"}),
    ({"GEM_EMBED_MAX_SEQ_LENGTH": "128"}, {"embeddings"}),
    ({"GEM_SEED": "3"}, {"embeddings", "teacher_sample", "teacher_clusters", "student_model", "mixture_evaluation",
                         "proxy_corpus", "doremi_weights", "regmix_runs", "regmix_weights", "curated_mixture"}),
    ({"GEM_TAXONOMY_MAX_TERMS": "1000"}, {"taxonomy"}),
    ({"GEM_EVAL_MAX_TARGET_DOCS": "99"}, {"mixture_evaluation"}),
    ({"GEM_MIX_MAX_TARGET_DOCS": "99"}, {"proxy_corpus"}),
    ({"GEM_MIX_TARGET": "tech"}, {"proxy_corpus"}),
    ({"GEM_MIXER": "doremi"}, {"curated_mixture"}),
    ({"GEM_MIXTURE_TOKENS": "5000"}, {"regmix_weights", "curated_mixture"}),
    ({"GEM_PROXY": "transformer"}, {"doremi_weights", "regmix_runs", "mixture_evaluation"}),
    ({"GEM_ON_BAD_SHARD": "fail"}, {"teacher_sample", "student_model", "domain_stats", "taxonomy", "mixture_evaluation",
                                    "proxy_corpus", "curated_mixture"}),
    # not behaviour: where things go, thresholds of warning checks, batch size
    ({"GEM_HOME": "/elsewhere"}, set()),
    ({"GEM_STUDENT_MIN_AGREEMENT": "0.5"}, set()),
    ({"GEM_STUDENT_DRIFT_KL": "0.5"}, set()),
    ({"GEM_EMBED_BATCH_SIZE": "8"}, set()),
]

#: (profile field, new value, the assets whose code version it changes)
PROFILE_CHANGES = [
    ("student_epochs", 7, {"student_model"}),
    ("max_iter", 11, {"teacher_sample", "teacher_clusters", "mixture_evaluation"}),
    ("taxonomy_top_terms", 4, {"taxonomy"}),
    ("mix_top_k", 3, {"regmix_weights", "mixture_evaluation"}),
    ("mix_ngram_order", 3, {"doremi_weights", "regmix_runs"}),
    ("mix_valid_fraction", 0.2, {"proxy_corpus"}),
    ("mixture_rows_per_shard", 7, {"curated_mixture"}),
    ("eval_seeds", 3, {"mixture_evaluation"}),
    ("embed_cap_per_shard", 5, {"embeddings"}),
    ("max_chars", 999, {"documents", "embeddings"}),
]

BASE_ENV = {"GEM_PROFILE": "smoke", "GEM_PROXY": "ngram"}


def _versions(env: dict) -> dict[str, str]:
    settings = Settings.from_env(env)
    return {name: code_version_for(name, settings, env) for name in ASSET_NAMES}


def test_every_asset_has_a_code_version_and_declared_upstream():
    from gem_assets.definitions import defs

    graph = defs.resolve_asset_graph()
    materializable = [k for k in graph.get_all_asset_keys() if graph.get(k).is_materializable]
    assert {k.to_user_string() for k in materializable} == set(ASSET_NAMES)
    for key in materializable:
        node = graph.get(key)
        name = key.to_user_string()
        assert node.code_version, f"{name} has no code version"
        assert node.code_version.startswith(LOGIC_VERSIONS[name] + "-")
        assert {p.to_user_string() for p in node.parent_keys} == set(UPSTREAM[name]), name
    assert AssetKey("shard_files") in documents.dependency_keys


@pytest.mark.parametrize("change,affected", ENV_CHANGES, ids=[",".join(c) for c, _ in ENV_CHANGES])
def test_settings_change_exactly_their_assets_code_versions(change, affected):
    before = _versions(BASE_ENV)
    after = _versions({**BASE_ENV, **change})
    changed = {name for name in ASSET_NAMES if before[name] != after[name]}
    assert changed == affected


@pytest.mark.parametrize("field,value,affected", PROFILE_CHANGES, ids=[f for f, _, _ in PROFILE_CHANGES])
def test_profile_fields_change_exactly_their_assets_code_versions(monkeypatch, field, value, affected):
    before = _versions(BASE_ENV)
    monkeypatch.setitem(config.PROFILES, "smoke", dataclasses.replace(config.PROFILES["smoke"], **{field: value}))
    after = _versions(BASE_ENV)
    assert {name for name in ASSET_NAMES if before[name] != after[name]} == affected


def test_code_version_reads_the_environment_once(monkeypatch):
    monkeypatch.setenv("GEM_K", "5")
    versions.current_settings.cache_clear()
    try:
        k5 = versions.code_version("teacher_clusters")
        monkeypatch.setenv("GEM_K", "6")
        assert versions.code_version("teacher_clusters") == k5  # read once, at load
        versions.current_settings.cache_clear()
        assert versions.code_version("teacher_clusters") != k5
    finally:
        versions.current_settings.cache_clear()


def test_code_location_loads_code_versions_from_the_environment():
    """``GEM_K=12`` at load gives ``teacher_clusters`` (only the teacher) a new code version."""
    script = ("from gem_assets.definitions import defs; g = defs.resolve_asset_graph(); "
              "print({k.to_user_string(): g.get(k).code_version for k in g.get_all_asset_keys() "
              "if g.get(k).is_materializable})")
    out = {}
    for k in ("16", "12"):
        env = {**os.environ, "GEM_K": k, "PYTHONWARNINGS": "ignore"}
        proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        out[k] = eval(proc.stdout.strip().splitlines()[-1])  # noqa: S307 (our own repr of a dict of str)
    changed = {n for n in out["16"] if out["16"][n] != out["12"][n]}
    assert changed == {"teacher_sample", "teacher_clusters"}


def test_lineage_logic_bump_changes_data_versions_downstream_only(monkeypatch):
    before = {n: versions.data_version(n, "fp") for n in LOGIC_VERSIONS}
    monkeypatch.setitem(LOGIC_VERSIONS, "teacher_clusters", "2")
    versions._lineage.cache_clear()
    try:
        after = {n: versions.data_version(n, "fp") for n in LOGIC_VERSIONS}
    finally:
        versions._lineage.cache_clear()
    changed = {n for n in LOGIC_VERSIONS if before[n] != after[n]}
    assert changed == {"teacher_clusters", "student_model", "domain_assignments", "domain_stats", "taxonomy",
                       "mixture_evaluation", "proxy_corpus", "doremi_weights", "regmix_runs", "regmix_weights",
                       "curated_mixture"}


# ------------------------------------------------------------------ recorded by a tiny pipeline
def _tags(instance, asset: str, partition: str | None = None) -> dict:
    flt = AssetRecordsFilter(asset_key=AssetKey(asset), asset_partitions=[partition] if partition else None)
    return instance.fetch_materializations(flt, limit=1).records[0].asset_materialization.tags


def _pipeline(instance, res, keys, student: bool = True) -> dict:
    for key in keys:
        assert materialize([documents, embeddings], partition_key=key, instance=instance, resources=res).success
    top = [teacher_sample, teacher_clusters] + ([student_model] if student else [])
    assert materialize(top, instance=instance, resources=res).success
    if student:
        assert materialize([domain_assignments], partition_key=keys[0], instance=instance, resources=res).success
    dv = {(a, k): _tags(instance, a, k)["dagster/data_version"] for a in ("documents", "embeddings") for k in keys}
    dv.update({(a.key.to_user_string(), None): _tags(instance, a.key.to_user_string())["dagster/data_version"]
               for a in top})
    if student:
        dv[("domain_assignments", keys[0])] = _tags(instance, "domain_assignments", keys[0])["dagster/data_version"]
    return dv


def test_pipeline_records_data_versions_and_unchanged_inputs_keep_them(tiny_corpus, gem_home, instance):
    res = make_resources(gem_home, str(tiny_corpus / "*"), k=4)
    keys = ["a.jsonl", "b.jsonl"]
    (tiny_corpus / "c.parquet").unlink()
    instance.add_dynamic_partitions(SHARDS, keys)

    # the source: one observation run records the SHA-256 of every shard file
    defs = Definitions(assets=[shard_files, shard_manifest, documents, embeddings], jobs=[observe_shards], resources=res)
    assert defs.get_job_def("observe_shards").execute_in_process(instance=instance).success
    for key in keys:
        obs = instance.fetch_observations(AssetRecordsFilter(asset_key=AssetKey("shard_files"),
                                                             asset_partitions=[key]), limit=1).records
        assert obs[0].asset_observation.tags["dagster/data_version"] == \
            hashlib.sha256((tiny_corpus / key).read_bytes()).hexdigest()

    first = _pipeline(instance, res, keys)
    assert all(v and len(v) == 16 for v in first.values())
    assert len(set(first.values())) == len(first)
    assert _tags(instance, "teacher_clusters")["dagster/code_version"] == versions.code_version("teacher_clusters")

    second = _pipeline(instance, res, keys)
    assert second == first  # unchanged inputs and parameters: the same data versions (early cutoff)

    # an edited shard: new data versions for that shard and everything built from it
    with open(tiny_corpus / "a.jsonl", "a", encoding="utf-8") as f:
        f.write('{"id": "extra", "text": "one more sport match goal team", "source": "sport"}\n')
    third = _pipeline(instance, res, ["a.jsonl"], student=False)
    assert third[("documents", "a.jsonl")] != first[("documents", "a.jsonl")]
    assert third[("teacher_clusters", None)] != first[("teacher_clusters", None)]


def _manifest(instance) -> str:
    obs = instance.fetch_observations(AssetRecordsFilter(asset_key=AssetKey("shard_manifest")), limit=1).records
    return obs[0].asset_observation.tags["dagster/data_version"]


def test_shard_manifest_hashes_every_shard_and_the_per_shard_code_versions(tiny_corpus, gem_home, instance):
    """The corpus-wide source the aggregates depend on (Dagster stops comparing the data versions of a
    partitioned input at 100 partitions): its data version is the hash of the registered shards'
    SHA-256, the registered shards without a file and the per-shard assets' code versions."""
    res = make_resources(gem_home, str(tiny_corpus / "*"), k=4)
    instance.add_dynamic_partitions(SHARDS, ["a.jsonl", "b.jsonl"])  # c.parquet not registered: not in it
    defs = Definitions(assets=[shard_files, shard_manifest], jobs=[observe_shards], resources=res)
    observe = defs.get_job_def("observe_shards")
    settings = res["gem"].settings()
    codes = {name: code_version_for(name, settings) for name in PER_SHARD_ASSETS}
    sha = {k: hashlib.sha256((tiny_corpus / k).read_bytes()).hexdigest() for k in ("a.jsonl", "b.jsonl", "c.parquet")}

    assert observe.execute_in_process(instance=instance).success
    first = _manifest(instance)
    assert first == manifest_version({k: sha[k] for k in ("a.jsonl", "b.jsonl")}, [], codes)
    assert observe.execute_in_process(instance=instance).success
    assert _manifest(instance) == first  # nothing changed: the same version, nothing downstream flagged

    instance.add_dynamic_partitions(SHARDS, ["c.parquet"])  # a new shard
    assert observe.execute_in_process(instance=instance).success
    assert _manifest(instance) == manifest_version(sha, [], codes) != first

    (tiny_corpus / "b.jsonl").unlink()  # a registered shard whose file is gone
    assert observe.execute_in_process(instance=instance).success
    assert _manifest(instance) == manifest_version({k: sha[k] for k in ("a.jsonl", "c.parquet")}, ["b.jsonl"], codes)

    # a per-shard asset's code version is part of it (a new embedder reaches the aggregates), others are not
    assert manifest_version(sha, [], {**codes, "embeddings": "2-x"}) != manifest_version(sha, [], codes)
    assert set(PER_SHARD_ASSETS) == {"documents", "embeddings", "domain_assignments"}
    for name in ("teacher_sample", "student_model", "domain_stats", "taxonomy", "mixture_evaluation"):
        assert "shard_manifest" in UPSTREAM[name]
